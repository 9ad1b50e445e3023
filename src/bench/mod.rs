//! `whisper-trt bench`: speed of the GPU engine against the hardware's ceilings measured in the
//! same run, with seeded random weights of an official shape (speed does not depend on weight
//! values) or a built engine. It measures, on GPU 0, with CUDA events after warm-up, medians:
//!
//! 1. ceilings: device-to-device copy bandwidth (bytes read plus written) and the fp16 cuBLASLt
//!    GEMM rate on an 8192^3 product ([`gpu::ceilings`]);
//! 2. the encoder per 30 s window at each `--batch`: the encoder proper (what HF's
//!    `model.model.encoder` computes) and the cross-attention K/V of the decoder layers (one GEMM
//!    per window; HF runs it inside its first decoder step) apart and together, with achieved
//!    TFLOP/s ([`counts::encoder_flops`]) against the GEMM ceiling;
//! 3. the decoder step at each `--batch` (every sequence its own window) at 50 tokens in, logits
//!    on the GPU, with the bytes it must move ([`counts::decoder_step_bytes`]) against the copy
//!    ceiling; the default path (CUDA graphs), the fused step (decoder_step.cu, at most 8
//!    sequences), launch by launch without graphs, and in graphs with the GEMV kernel alone and
//!    with Programmatic Dependent Launch (`pdl`, sm_90+);
//! 4. the test-clean-shaped workload ([`workload`]).
//!
//! It prints one table at the end and writes everything to `--json`. Development toggles:
//! `WHISPER_TRT_FUSED_PROFILE=1` prints the fused step's phases, `WHISPER_TRT_FUSED_MODES=1,0,2`
//! times other ways of streaming the fused step's weights (see `FusedMode`); the other
//! `WHISPER_TRT_*` switches of the CUDA backend apply as everywhere and are recorded in the JSON.
pub mod counts;
pub mod gpu;
pub mod workload;

use crate::backends::cuda::step::FusedMode;
use crate::backends::cuda::CudaModel;
use crate::backends::Backend;
use crate::engine::builder::{build, BuildArgs};
use crate::text::Tokenizer;
use anyhow::{anyhow, bail, Context, Result};
use gpu::StepPath;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Model shape with seeded random weights (default: large-v2 unless --engine is given)
    #[arg(long, conflicts_with = "engine", value_parser = clap::builder::PossibleValuesParser::new(crate::engine::synthetic::SIZES))]
    pub synthetic: Option<String>,
    /// A built engine file instead (its max batch must cover the largest --batch)
    #[arg(long)]
    pub engine: Option<PathBuf>,
    /// Batch sizes of the encoder and decoder figures; the largest is the workload's max batch
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub batch: Vec<usize>,
    /// Decoder steps timed per figure
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
    /// Write every figure here as JSON
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// LibriSpeech test-clean transcripts for the workload (default:
    /// $WHISPER_TRT_SHARED/data/librispeech/transcripts/test-clean.trans.txt, WHISPER_TRT_SHARED
    /// defaulting to ../shared)
    #[arg(long)]
    pub transcripts: Option<PathBuf>,
    /// English tokenizer.json that counts the workload's tokens (default: <models>/tiny.en/tokenizer.json)
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Build the synthetic engine with weight-only quantization (int8; as `build --weight-only`)
    #[arg(long = "weight-only", num_args = 0..=1, default_missing_value = "int8", value_parser = ["int8", "int4"], conflicts_with = "engine")]
    pub weight_only: Option<String>,
    /// Build the synthetic engine with the int8 KV cache (as `build --int8-kv`)
    #[arg(long = "int8-kv", conflicts_with = "engine")]
    pub int8_kv: bool,
    /// Calibration audio for --int8-kv (as `build --calib`)
    #[arg(long, requires = "int8_kv")]
    pub calib: Option<PathBuf>,
    /// Skip the test-clean-shaped workload
    #[arg(long = "no-workload")]
    pub no_workload: bool,
}

fn default_transcripts() -> PathBuf {
    crate::paths::shared_dir().join("data/librispeech/transcripts/test-clean.trans.txt")
}

/// The workload's utterances and the tokenizer that counted them, checked before any GPU work.
fn load_workload(args: &BenchArgs) -> Result<Option<(Vec<counts::Utterance>, Tokenizer)>> {
    if args.no_workload {
        return Ok(None);
    }
    let transcripts = args.transcripts.clone().unwrap_or_else(default_transcripts);
    if !transcripts.is_file() {
        bail!(
            "{}: transcripts not found (give --transcripts FILE, set WHISPER_TRT_SHARED, or --no-workload)",
            transcripts.display()
        );
    }
    let tok_path = args.tokenizer.clone().unwrap_or_else(|| crate::paths::models_dir().join("tiny.en").join("tokenizer.json"));
    if !tok_path.is_file() {
        bail!(
            "{}: tokenizer not found (give --tokenizer an English tokenizer.json, run scripts/fetch-model.sh tiny.en, or --no-workload)",
            tok_path.display()
        );
    }
    let tokenizer = Tokenizer::from_file(&tok_path)?;
    let utts = counts::workload(&transcripts, &tokenizer)?;
    Ok(Some((utts, tokenizer)))
}

pub fn run(args: &BenchArgs) -> Result<i32> {
    let mut batches = args.batch.clone();
    batches.sort_unstable();
    batches.dedup();
    if batches.is_empty() || batches[0] == 0 || args.steps == 0 {
        bail!("--batch needs positive sizes and --steps a positive count");
    }
    let max_batch = *batches.last().unwrap_or(&1);
    let work = load_workload(args)?;
    crate::backends::cuda::context::check_libraries().map_err(|e| anyhow!("bench needs a CUDA GPU: {e}"))?;

    // The real path: build an engine file (timed tactics, cubins), then load it.
    let t0 = Instant::now();
    let (model, source) = match &args.engine {
        Some(path) => (CudaModel::load(path)?, format!("engine {}", path.display())),
        None => {
            let size = args.synthetic.clone().unwrap_or_else(|| "large-v2".into());
            let path = std::env::temp_dir().join(format!("whisper-trt-bench-{}.engine", std::process::id()));
            // Greedy only (beam width 1): the KV cache is sized for max_batch sequences.
            let build_args =
                BuildArgs {
                    synthetic: Some(size.clone()),
                    output: Some(path.clone()),
                    max_batch,
                    beam_width: 1,
                    weight_only: args.weight_only.clone(),
                    int8_kv: args.int8_kv,
                    calib: args.calib.clone(),
                    ..BuildArgs::defaults()
                };
            build(&build_args)?;
            let model = CudaModel::load(&path);
            let _ = std::fs::remove_file(&path);
            (model?, format!("synthetic {size} (seed 0)"))
        }
    };
    let load_s = t0.elapsed().as_secs_f64();
    if model.options().max_batch < max_batch {
        bail!("the engine's max batch is {}, below --batch {max_batch}: rebuild it with --max-batch {max_batch}", model.options().max_batch);
    }
    let c = model.config().clone();
    let gpu = model.gpu();
    eprintln!("bench: {source}: engine ready in {load_s:.1} s on {}, {:.2} GB of weights", gpu.name, model.weight_bytes() as f64 / 1e9);

    let used = |gpu: &crate::backends::cuda::context::Gpu| gpu.mem_info().map(|(free, total)| total - free);
    let loaded = (gpu.allocated().0, used(gpu)?);
    eprintln!("bench: ceilings");
    let ceil = gpu::ceilings(gpu)?;
    // The figures' peak, without the ceilings' own buffers.
    gpu.reset_peak();
    eprintln!("bench: copy {:.0} GB/s, GEMM {:.0} TFLOP/s", ceil.copy_gb_s, ceil.gemm_tflop_s);

    let mels = gpu::random_mels(&model, max_batch);
    let (enc_flops, kv_flops) = (counts::encoder_flops(&c), counts::cross_kv_flops(&c));
    let mut enc = Vec::new();
    for &b in &batches {
        let e = gpu::encoder(&model, &mels, b)?;
        eprintln!("bench: encoder batch {b}: {:.3} + {:.3} = {:.3} ms per window", e.encoder_ms, e.cross_kv_ms, e.total_ms);
        enc.push(e);
    }

    let mut dec = Vec::new();
    for &b in &batches {
        let refs: Vec<&[f32]> = mels[..b].iter().map(|m| m.as_slice()).collect();
        let features = Backend::encode_batch(&model, &refs)?;
        let mut row = Vec::new();
        // Kernel development (profiling one path under ncu): `WHISPER_TRT_BENCH_PATHS=gemv,pdl`
        // times only the named paths; the others print as n/a.
        let only = std::env::var("WHISPER_TRT_BENCH_PATHS").ok();
        for path in [StepPath::Graphs, StepPath::Fused, StepPath::Launches, StepPath::Gemv, StepPath::Pdl] {
            let name = format!("{path:?}").to_lowercase();
            if only.as_ref().is_some_and(|o| !o.split(',').any(|p| p == name)) {
                row.push(None);
                continue;
            }
            row.push(gpu::decoder_step(&model, &features, path, args.steps)?);
            if path == StepPath::Fused && row[1].is_some() {
                if let Some(report) = model.fused_profile()? {
                    eprint!("bench: fused step, batch {b}, last step:\n{report}");
                }
            }
        }
        fused_modes(&model, &features, args.steps)?;
        let fmt = |v: Option<f64>| v.map_or("n/a".to_string(), |x| format!("{x:.3}"));
        eprintln!(
            "bench: decoder step batch {b}: {} ms graphs, {} fused, {} launches, {} GEMV, {} GEMV + PDL",
            fmt(row[0]),
            fmt(row[1]),
            fmt(row[2]),
            fmt(row[3]),
            fmt(row[4])
        );
        dec.push((b, row));
    }

    let mem = Memory { loaded: loaded.0, loaded_driver: loaded.1, peak: gpu.allocated().1, driver: used(gpu)? };
    let wl = match &work {
        Some((utts, tokenizer)) => {
            eprintln!("bench: workload, {} utterances, max batch {max_batch}", utts.len());
            let r = workload::run(&model, tokenizer, utts, max_batch, &mels)?;
            let want: usize = utts.iter().map(|u| u.sampled.min(c.n_text_ctx / 2)).sum();
            if r.sampled_tokens != want {
                bail!("internal: the workload sampled {} tokens, forced {want}", r.sampled_tokens);
            }
            Some(r)
        }
        None => None,
    };

    let report = Report { source: &source, model: &model, load_s, ceil, batches: &batches, enc, dec, wl, enc_flops, kv_flops, mem };
    println!("{}", report.table());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report.json()?)?;
        std::fs::write(path, text + "\n").with_context(|| format!("{}: cannot write the JSON", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(0)
}

/// Kernel development: other ways of streaming the fused step's weights, timed too
/// (`WHISPER_TRT_FUSED_MODES=1,0,2`; see `CudaModel::set_fused_mode`), printed on stderr.
fn fused_modes(model: &CudaModel, features: &[crate::backends::cuda::CudaFeatures], steps: usize) -> Result<()> {
    let modes: Vec<FusedMode> =
        std::env::var("WHISPER_TRT_FUSED_MODES").map(|v| v.split(',').filter_map(FusedMode::parse).collect()).unwrap_or_default();
    for mode in modes {
        model.set_fused_mode(Some(mode))?;
        let ms = gpu::decoder_step(model, features, StepPath::Fused, steps);
        model.set_fused_mode(None)?;
        match ms? {
            Some(ms) => eprintln!("bench: fused step, batch {}, {mode:?}: {ms:.3} ms", features.len()),
            None => eprintln!("bench: fused step, batch {}: cannot run", features.len()),
        }
        if let Some(report) = model.fused_profile()? {
            eprint!("{report}");
        }
    }
    Ok(())
}

/// GPU memory in bytes: what whisper-trt allocated after loading the engine and at most while
/// the encoder and decoder figures ran ([`Gpu::allocated`]), and what the driver reports in use
/// on the GPU then (CUDA context, cuBLASLt and allocator slack included; after the figures, also
/// memory the ceilings freed into the driver's pool).
///
/// [`Gpu::allocated`]: crate::backends::cuda::context::Gpu::allocated
struct Memory {
    loaded: usize,
    loaded_driver: usize,
    peak: usize,
    driver: usize,
}

struct Report<'a> {
    mem: Memory,
    source: &'a str,
    model: &'a CudaModel,
    load_s: f64,
    ceil: gpu::Ceilings,
    batches: &'a [usize],
    enc: Vec<gpu::EncoderTimes>,
    /// Per batch: ms of the graphs, fused, launch-by-launch, GEMV and GEMV + PDL steps.
    dec: Vec<(usize, Vec<Option<f64>>)>,
    wl: Option<workload::WorkloadResult>,
    enc_flops: f64,
    kv_flops: f64,
}

fn driver_version() -> String {
    let mut v = 0i32;
    // SAFETY: the driver library is loaded (the model runs on it); v is a valid out-pointer.
    let r = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) };
    if r != cudarc::driver::sys::CUresult::CUDA_SUCCESS {
        return "unknown".into();
    }
    format!("CUDA {}.{}", v / 1000, (v % 1000) / 10)
}

/// UTC date and time of now, `YYYY-MM-DD HH:MM UTC` (days to civil date: Howard Hinnant's algorithm).
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rem / 3600, rem % 3600 / 60)
}

impl Report<'_> {
    fn step_bytes(&self, b: usize) -> counts::StepBytes {
        counts::decoder_step_bytes(self.model.config(), b, gpu::POSITION, self.model.options().weight_only.is_some(), self.model.int8_kv())
    }

    fn table(&self) -> String {
        let m = self.model;
        let c = m.config();
        let o = m.options();
        let mut out = String::new();
        let gb = |b: f64| b / 1e9;
        out += &format!(
            "\nwhisper-trt bench: {}, {} (sm_{}{}, {}), {}\nengine: {} max batch {} beam width {}; {} weights {:.2} GB\n",
            self.source,
            m.gpu().name,
            m.gpu().compute_capability.0,
            m.gpu().compute_capability.1,
            driver_version(),
            utc_now(),
            o.dtype,
            o.max_batch,
            o.beam_width,
            match (o.weight_only.is_some(), o.int8_kv) {
                (false, false) => "fp16",
                (true, false) => "int8 weight-only",
                (false, true) => "int8 KV cache, fp16",
                (true, true) => "int8 KV cache, int8 weight-only",
            },
            gb(m.weight_bytes() as f64)
        );
        out += &format!(
            "ceilings: device copy {:.0} GB/s (1 GiB, read + written, {:.3} ms); cuBLASLt fp16 {}^3 GEMM {:.0} TFLOP/s ({:.3} ms)\n",
            self.ceil.copy_gb_s, self.ceil.copy_ms, self.ceil.gemm_size, self.ceil.gemm_tflop_s, self.ceil.gemm_ms
        );
        let mut rows: Vec<(String, Vec<String>)> = Vec::new();
        let tf = |flops: f64, ms: f64| flops / ms / 1e9;
        let pct = |x: f64, of: f64| format!("{:.0}%", 100.0 * x / of);
        let enc_row = |name: &str, f: &dyn Fn(&gpu::EncoderTimes) -> String| (name.to_string(), self.enc.iter().map(f).collect());
        rows.push(enc_row("encoder ms/window", &|e| format!("{:.3}", e.encoder_ms)));
        rows.push(enc_row("  TFLOP/s, % of GEMM", &|e| {
            let t = tf(self.enc_flops, e.encoder_ms);
            format!("{t:.0}, {}", pct(t, self.ceil.gemm_tflop_s))
        }));
        rows.push(enc_row("cross K/V ms/window", &|e| format!("{:.3}", e.cross_kv_ms)));
        rows.push(enc_row("  TFLOP/s, % of GEMM", &|e| {
            let t = tf(self.kv_flops, e.cross_kv_ms);
            format!("{t:.0}, {}", pct(t, self.ceil.gemm_tflop_s))
        }));
        rows.push(enc_row("encoder + cross K/V ms/window", &|e| format!("{:.3}", e.total_ms)));
        rows.push(enc_row("  TFLOP/s, % of GEMM", &|e| {
            let t = tf(self.enc_flops + self.kv_flops, e.total_ms);
            format!("{t:.0}, {}", pct(t, self.ceil.gemm_tflop_s))
        }));
        let fmt = |v: Option<f64>| v.map_or("n/a".to_string(), |x| format!("{x:.3}"));
        rows.push(("decoder step ms (graphs)".into(), self.dec.iter().map(|(_, r)| fmt(r[0])).collect()));
        rows.push(("  GB moved/step".into(), self.dec.iter().map(|&(b, _)| format!("{:.2}", gb(self.step_bytes(b).total()))).collect()));
        rows.push((
            "  GB/s, % of copy".into(),
            self.dec
                .iter()
                .map(|(b, r)| match r[0] {
                    Some(ms) => {
                        let bw = self.step_bytes(*b).total() / ms / 1e6;
                        format!("{bw:.0}, {}", pct(bw, self.ceil.copy_gb_s))
                    }
                    None => "n/a".into(),
                })
                .collect(),
        ));
        rows.push(("decoder step ms (fused)".into(), self.dec.iter().map(|(_, r)| fmt(r[1])).collect()));
        rows.push(("decoder step ms (no graphs)".into(), self.dec.iter().map(|(_, r)| fmt(r[2])).collect()));
        rows.push(("decoder step ms (gemv)".into(), self.dec.iter().map(|(_, r)| fmt(r[3])).collect()));
        rows.push(("decoder step ms (pdl)".into(), self.dec.iter().map(|(_, r)| fmt(r[4])).collect()));
        let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(6);
        let cols: Vec<usize> = (0..self.batches.len())
            .map(|i| rows.iter().map(|r| r.1.get(i).map_or(0, |s| s.len())).max().unwrap_or(0).max(format!("batch {}", self.batches[i]).len()))
            .collect();
        out += &format!("{:<w0$}", "figure");
        for (i, b) in self.batches.iter().enumerate() {
            out += &format!(" | {:>w$}", format!("batch {b}"), w = cols[i]);
        }
        out += "\n";
        out += &"-".repeat(w0 + cols.iter().map(|w| w + 3).sum::<usize>());
        out += "\n";
        for (name, cells) in &rows {
            out += &format!("{name:<w0$}");
            for (i, cell) in cells.iter().enumerate() {
                out += &format!(" | {cell:>w$}", w = cols[i]);
            }
            out += "\n";
        }
        out += &format!(
            "encoder: {:.3} TFLOP per window, cross K/V {:.3} TFLOP; decoder step bytes at {} tokens in: weights {:.2} GB + per sequence {:.1} MB self K/V + {:.1} MB cross K/V, compared with the copy's read + written rate\n",
            self.enc_flops / 1e12,
            self.kv_flops / 1e12,
            gpu::POSITION,
            gb(self.step_bytes(1).weights),
            self.step_bytes(1).self_kv / 1e6,
            self.step_bytes(1).cross_kv / 1e6
        );
        let mem = &self.mem;
        out += &format!(
            "GPU memory: allocated by whisper-trt {:.3} GB after load, {:.3} GB at most during the figures above; driver-reported in use {:.3} GB after load, {:.3} GB after the figures\n",
            gb(mem.loaded as f64),
            gb(mem.peak as f64),
            gb(mem.loaded_driver as f64),
            gb(mem.driver as f64)
        );
        if let Some(w) = &self.wl {
            out += &format!(
                "workload (test-clean shape): {} utterances, {} tokens sampled in {} steps, max batch {}: {:.1} s, RTF {:.5} (against 5.4 h), {:.0} tokens/s, peak GPU memory {:.2} GiB{}\n",
                w.utterances,
                w.sampled_tokens,
                w.steps,
                w.max_batch,
                w.wall_s,
                w.rtf,
                w.tokens_per_s,
                w.peak_gpu_bytes as f64 / (1u64 << 30) as f64,
                if w.clipped > 0 { format!(" ({} utterances cut to {} tokens)", w.clipped, c.n_text_ctx / 2) } else { String::new() }
            );
        }
        out
    }

    fn json(&self) -> Result<Value> {
        let m = self.model;
        let c = m.config();
        let o = m.options();
        let env: serde_json::Map<String, Value> =
            std::env::vars().filter(|(k, _)| k.starts_with("WHISPER_TRT_")).map(|(k, v)| (k, Value::String(v))).collect();
        let encoder: Vec<Value> = self
            .enc
            .iter()
            .map(|e| {
                json!({
                    "batch": e.batch,
                    "encoder_ms_per_window": e.encoder_ms,
                    "encoder_tflop_s": self.enc_flops / e.encoder_ms / 1e9,
                    "cross_kv_ms_per_window": e.cross_kv_ms,
                    "cross_kv_tflop_s": self.kv_flops / e.cross_kv_ms / 1e9,
                    "total_ms_per_window": e.total_ms,
                    "total_tflop_s": (self.enc_flops + self.kv_flops) / e.total_ms / 1e9,
                    "encoder_fraction_of_gemm": self.enc_flops / e.encoder_ms / 1e9 / self.ceil.gemm_tflop_s,
                })
            })
            .collect();
        let decoder: Vec<Value> = self
            .dec
            .iter()
            .map(|(b, r)| {
                let bytes = self.step_bytes(*b);
                json!({
                    "batch": b,
                    "position": gpu::POSITION,
                    "step_ms_graphs": r[0],
                    "step_ms_fused": r[1],
                    "step_ms_no_graphs": r[2],
                    "step_ms_gemv": r[3],
                    "step_ms_pdl": r[4],
                    "bytes": {"weights": bytes.weights, "self_kv": bytes.self_kv, "cross_kv": bytes.cross_kv, "total": bytes.total()},
                    "gb_s_graphs": r[0].map(|ms| bytes.total() / ms / 1e6),
                    "fraction_of_copy_graphs": r[0].map(|ms| bytes.total() / ms / 1e6 / self.ceil.copy_gb_s),
                })
            })
            .collect();
        let wl = self.wl.as_ref().map(|w| {
            json!({
                "utterances": w.utterances,
                "max_batch": w.max_batch,
                "sampled_tokens": w.sampled_tokens,
                "clipped": w.clipped,
                "steps": w.steps,
                "wall_s": w.wall_s,
                "rtf": w.rtf,
                "audio_s": workload::TEST_CLEAN_SECONDS,
                "tokens_per_s": w.tokens_per_s,
                "peak_gpu_bytes": w.peak_gpu_bytes,
            })
        });
        Ok(json!({
            "system": "whisper-trt",
            "version": env!("CARGO_PKG_VERSION"),
            "date": utc_now(),
            "source": self.source,
            "gpu": m.gpu().name,
            "compute_capability": format!("{}.{}", m.gpu().compute_capability.0, m.gpu().compute_capability.1),
            "driver": driver_version(),
            "build_options": {"dtype": o.dtype, "max_batch": o.max_batch, "beam_width": o.beam_width, "max_new_tokens": o.max_new_tokens, "weight_only": o.weight_only, "int8_kv": o.int8_kv},
            "engine_ready_s": self.load_s,
            "weight_bytes": m.weight_bytes(),
            "env": env,
            "model": {"n_mels": c.n_mels, "n_audio_state": c.n_audio_state, "n_audio_layer": c.n_audio_layer, "n_text_state": c.n_text_state, "n_text_layer": c.n_text_layer, "n_vocab": c.n_vocab},
            "ceilings": {
                "copy_bytes": self.ceil.copy_bytes, "copy_ms": self.ceil.copy_ms, "copy_gb_s": self.ceil.copy_gb_s,
                "gemm_size": self.ceil.gemm_size, "gemm_ms": self.ceil.gemm_ms, "gemm_tflop_s": self.ceil.gemm_tflop_s,
            },
            "flops": {"encoder_per_window": self.enc_flops, "cross_kv_per_window": self.kv_flops},
            "encoder": encoder,
            "decoder": decoder,
            "workload": wl,
            "memory": {
                "allocated_after_load": self.mem.loaded, "allocated_peak_figures": self.mem.peak,
                "driver_used_after_load": self.mem.loaded_driver, "driver_used_after_figures": self.mem.driver,
            },
        }))
    }
}
