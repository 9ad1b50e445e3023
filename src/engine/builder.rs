//! `whisper-trt build`: a model directory (or seeded synthetic weights) into one engine file for
//! GPU 0: weights laid out for the kernels, every kernel compiled for the GPU's compute capability,
//! and a cuBLASLt tactic timed for every GEMM shape.
use super::format::{BuildOptions, Engine, EngineHeader, FORMAT_VERSION};
use super::{nvrtc, synthetic};
use crate::backends::cuda::context::Gpu;
use crate::backends::cuda::{gemm, layout};
use crate::model::{ModelConfig, Weights};
use crate::quant::WeightQuant;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub const NO_GPU: &str = "no CUDA GPU found: build needs one (transcribe still works on the CPU)";

/// The flags of `whisper-trt build`.
#[derive(clap::Args, Clone, Debug, PartialEq)]
pub struct BuildArgs {
    /// Model directory made by `whisper-trt convert` (default: the tiny.en model fetched by setup)
    #[arg(long, conflicts_with = "synthetic")]
    pub model: Option<PathBuf>,
    /// Engine file to write (default: <models>/engines/<model>-sm_XY-fp16.engine, where transcribe looks)
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Precision of weights and activations
    #[arg(long, default_value = "fp16", value_parser = ["fp16"])]
    pub dtype: String,
    /// Most audio windows encoded (and sequences decoded) at once; device memory is sized by it
    #[arg(long = "max-batch", alias = "max_batch", default_value_t = 16)]
    pub max_batch: usize,
    /// Most beams per sequence
    #[arg(long = "beam-width", alias = "beam_width", default_value_t = 5)]
    pub beam_width: usize,
    /// Most tokens sampled per window (openai-whisper's sample_len, at most n_text_ctx / 2)
    #[arg(long = "max-new-tokens", alias = "max_new_tokens", default_value_t = 224)]
    pub max_new_tokens: usize,
    /// Weight-only quantization of every linear layer and the token embedding: int8 (per output
    /// channel; the default when no value is given) or int4 (groups of 128 inputs)
    #[arg(long = "weight-only", alias = "weight_only", num_args = 0..=1, default_missing_value = "int8", value_parser = ["int8", "int4"])]
    pub weight_only: Option<String>,
    /// Store the decoder's self-attention cache and the cross-attention K/V in int8, with a scale
    /// per layer and head calibrated by running the engine on --calib audio
    #[arg(long = "int8-kv", alias = "int8_kv")]
    pub int8_kv: bool,
    /// Folder of calibration audio for --int8-kv, searched recursively (default: the shared
    /// LibriSpeech clips, ../shared/data/librispeech, when present)
    #[arg(long, requires = "int8_kv")]
    pub calib: Option<PathBuf>,
    /// Most calibration files used (the first ones in path order)
    #[arg(long = "calib-files", default_value_t = 32, requires = "int8_kv")]
    pub calib_files: usize,
    /// Seeded random weights of an official size instead of a model (for benchmarks)
    #[arg(long, value_parser = synthetic::SIZES)]
    pub synthetic: Option<String>,
    /// Seed of --synthetic weights
    #[arg(long, default_value_t = 0, requires = "synthetic")]
    pub seed: u64,
}

impl BuildArgs {
    /// The flags' defaults, as `whisper-trt build` with no flags.
    pub fn defaults() -> BuildArgs {
        BuildArgs {
            model: None,
            output: None,
            dtype: "fp16".into(),
            max_batch: 16,
            beam_width: 5,
            max_new_tokens: 224,
            synthetic: None,
            seed: 0,
            weight_only: None,
            int8_kv: false,
            calib: None,
            calib_files: 32,
        }
    }

    fn options(&self) -> BuildOptions {
        BuildOptions {
            dtype: self.dtype.clone(),
            max_batch: self.max_batch,
            beam_width: self.beam_width,
            max_new_tokens: self.max_new_tokens,
            weight_only: self.weight_only.as_deref().map(|w| match w {
                "int4" => WeightQuant::Int4,
                _ => WeightQuant::Int8,
            }),
            int8_kv: self.int8_kv,
        }
    }
}

/// Where `build` writes, and `transcribe` looks for, the engine of `model_dir` on a GPU of compute
/// capability `cc`: `<models>/engines/<model dir name>-sm_XY-fp16.engine`.
pub fn default_engine_path(model_dir: &Path, cc: (u32, u32)) -> PathBuf {
    engine_path_for(&model_name(model_dir), cc)
}

/// A model directory's name (its last component, also for "." or "models/tiny.en/").
fn model_name(model_dir: &Path) -> String {
    model_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .or_else(|| {
            model_dir
                .canonicalize()
                .ok()?
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "model".into())
}

fn engine_path_for(model_name: &str, (major, minor): (u32, u32)) -> PathBuf {
    engine_path_with(model_name, (major, minor), None, false)
}

/// The default engine path of a build with weight-only quantization `wq` and int8 KV or not
/// (fp16 engines keep the name transcribe looks for; quantized ones add `-w8` / `-w4` and
/// `-kv8`).
pub fn engine_path_with(model_name: &str, (major, minor): (u32, u32), wq: Option<WeightQuant>, int8_kv: bool) -> PathBuf {
    let tag = match wq {
        None => "",
        Some(WeightQuant::Int8) => "-w8",
        Some(WeightQuant::Int4) => "-w4",
    };
    let tag = if int8_kv { format!("{tag}-kv8") } else { tag.to_string() };
    crate::paths::models_dir()
        .join("engines")
        .join(format!("{model_name}-sm_{major}{minor}-fp16{tag}.engine"))
}

/// The name a synthetic model's engine is saved under by default.
pub fn synthetic_name(size: &str, seed: u64) -> String {
    format!("synthetic-{size}-seed{seed}")
}

/// Checks the options against the model before any GPU work.
pub fn check_options(options: &BuildOptions, config: &ModelConfig) -> Result<()> {
    if options.dtype != "fp16" {
        bail!("--dtype {}: only fp16 engines can be built", options.dtype);
    }
    if options.weight_only == Some(WeightQuant::Int4) {
        bail!("--weight-only int4: int4 engines cannot be built yet (the W4A16 kernels are not written); use --weight-only int8");
    }
    if options.max_batch == 0 || options.beam_width == 0 || options.max_new_tokens == 0 {
        bail!("--max-batch, --beam-width and --max-new-tokens must be at least 1");
    }
    if options.max_new_tokens > config.n_text_ctx / 2 {
        bail!(
            "--max-new-tokens {} is more than this model's n_text_ctx / 2 = {} (openai-whisper's longest sample)",
            options.max_new_tokens,
            config.n_text_ctx / 2
        );
    }
    Ok(())
}

/// GPU 0, or the one-line error every machine without a usable GPU gives.
fn open_gpu() -> Result<Gpu> {
    // SAFETY: is_culib_present only tries to dlopen candidate names and drops the handles.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        bail!("{NO_GPU}");
    }
    match cudarc::driver::CudaContext::device_count() {
        Ok(n) if n > 0 => {}
        _ => bail!("{NO_GPU}"),
    }
    Gpu::new(0).context("cannot use GPU 0")
}

fn driver_version() -> Result<i32> {
    let mut v = 0;
    // SAFETY: the driver library is loaded (open_gpu checked it); v is a valid out-pointer.
    let r = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
    if r != cudarc::driver::sys::CUresult::CUDA_SUCCESS {
        bail!("cuDriverGetVersion failed: {r:?}");
    }
    Ok(v)
}

/// Prints one build step's time on stderr.
fn step<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let t = Instant::now();
    let out = f()?;
    eprintln!("build: {what} ({:.1} s)", t.elapsed().as_secs_f64());
    Ok(out)
}

enum Source<'a> {
    Synthetic(&'a str),
    Dir(PathBuf),
}

/// Builds the engine the flags describe and returns where it was written.
pub fn build(args: &BuildArgs) -> Result<PathBuf> {
    let options = args.options();
    // The model's config first: bad flags and missing models fail before any GPU or weight work.
    let (name, config, source) = match &args.synthetic {
        Some(size) => (
            synthetic_name(size, args.seed),
            synthetic::config(size)?,
            Source::Synthetic(size),
        ),
        None => {
            let dir = args.model.clone().unwrap_or_else(crate::paths::default_model);
            let config_path = dir.join("config.json");
            if !config_path.is_file() {
                if args.model.is_none() {
                    bail!(
                        "{}: no model here; run scripts/fetch-model.sh tiny.en or pass --model DIR",
                        dir.display()
                    );
                }
                bail!(
                    "{}: not a model directory (no config.json); make one with `whisper-trt convert`",
                    dir.display()
                );
            }
            (model_name(&dir), ModelConfig::load(&config_path)?, Source::Dir(dir))
        }
    };
    check_options(&options, &config)?;
    // Calibration audio before any GPU work, so that a missing folder fails at once.
    let calib_files = match options.int8_kv {
        true => {
            let dir = match &args.calib {
                Some(d) => d.clone(),
                None => super::calibrate::default_dir()?,
            };
            super::calibrate::audio_files(&dir, args.calib_files.max(1))?
        }
        false => Vec::new(),
    };

    let gpu = open_gpu()?;
    let cc = gpu.compute_capability;
    nvrtc::ensure_nvrtc()?;
    let output = match &args.output {
        Some(p) => p.clone(),
        None => engine_path_with(&name, cc, options.weight_only, options.int8_kv),
    };
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create engine folder", dir.display()))?;
    }
    eprintln!(
        "build: {name} for {} (sm_{}{}), max batch {}, beam width {}, max new tokens {}",
        gpu.name, cc.0, cc.1, options.max_batch, options.beam_width, options.max_new_tokens
    );

    let weights: Weights = match source {
        Source::Synthetic(size) => step(&format!("synthetic {size} weights, seed {}", args.seed), || {
            Ok(synthetic::synthetic(size, args.seed)?.1)
        })?,
        Source::Dir(dir) => step("read weights", || Weights::load(&dir.join("model.safetensors")))?,
    };
    let tensors = step("lay out weights", || layout::engine_tensors(&config, &weights, options.weight_only))?;
    drop(weights);
    let modules = step("compile kernels", || nvrtc::compile_all(cc.0, cc.1))?;
    let shapes = gemm::gemm_shapes(&config, &options);
    let tactics = step(&format!("time GEMM tactics for {} shapes", shapes.len()), || {
        gemm::pick_tactics(&gpu, &shapes)
    })?;
    let mut tensors = tensors;
    if options.int8_kv {
        let scales = step(&format!("calibrate the int8 KV cache on {}", super::calibrate::describe(&calib_files, &config)), || {
            calibrate_kv(&gpu, &config, &options, &modules, &tensors, &tactics, &calib_files)
        })?;
        tensors.push(layout::kv_scales_tensor(&scales));
    }

    let engine = Engine {
        header: EngineHeader {
            format_version: FORMAT_VERSION,
            config,
            options,
            gpu_name: gpu.name.clone(),
            compute_capability: cc,
            driver_version: driver_version()?,
            kernel_hash: nvrtc::kernel_hash(),
            tactics,
        },
        modules,
        tensors,
        path: None,
    };
    let weight_bytes: usize = engine.tensors.iter().map(|t| t.data.len()).sum();
    eprintln!(
        "build: weights {:.1} MB ({}); KV cache and cross K/V {}",
        weight_bytes as f64 / 1e6,
        match engine.header.options.weight_only {
            None => "fp16",
            Some(WeightQuant::Int8) => "int8 weight-only: linear layers and token embedding int8 per output channel, the rest fp16/f32",
            Some(WeightQuant::Int4) => "int4 weight-only",
        },
        if engine.header.options.int8_kv { "int8 with a calibrated scale per layer and head" } else { "fp16" }
    );
    step(&format!("write {}", output.display()), || engine.save(&output))?;
    Ok(output)
}

/// The int8 KV cache's scales: the engine being built, with fp16 keys and values and batch 1,
/// runs on the calibration audio while recording their ranges.
fn calibrate_kv(
    gpu: &Gpu,
    config: &ModelConfig,
    options: &BuildOptions,
    modules: &[(String, Vec<u8>)],
    tensors: &[crate::engine::EngineTensor],
    tactics: &[crate::engine::GemmTactic],
    files: &[PathBuf],
) -> Result<crate::kv_quant::KvScales> {
    let mels = super::calibrate::windows(files, config.n_mels)?;
    let fp16_kv = BuildOptions { int8_kv: false, max_batch: 1, beam_width: 1, ..options.clone() };
    let model = crate::backends::cuda::CudaModel::from_parts(gpu.clone(), config.clone(), fp16_kv, modules, tensors, tactics)?;
    model.start_kv_stats()?;
    let tokens = super::calibrate::run(&model, &mels)?;
    let stats = model.take_kv_stats()?.ok_or_else(|| anyhow::anyhow!("internal: no calibration statistics"))?;
    eprintln!("build: calibration decoded {tokens} tokens; |K|, |V| per head: {}", stats.summary());
    stats.scales()
}

/// `whisper-trt build`: builds and says where the engine went. Returns the exit code.
pub fn run(args: &BuildArgs) -> Result<i32> {
    let t = Instant::now();
    let path = build(args)?;
    let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "wrote {} ({:.1} MB, {:.1} s)",
        path.display(),
        bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );
    Ok(0)
}
