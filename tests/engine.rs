//! The engine file format: round trip, and one clear line for every kind of bad file.
use std::path::{Path, PathBuf};
use whisper_trt::engine::format::{ALIGN, MAGIC};
use whisper_trt::engine::{
    nvrtc, synthetic, BuildOptions, Dtype, Engine, EngineHeader, EngineTensor, GemmTactic, FORMAT_VERSION,
};

/// A scratch folder removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("whisper-trt-engine-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tensor(name: &str, dtype: Dtype, shape: &[usize], seed: u8) -> EngineTensor {
    let n = shape.iter().product::<usize>() * dtype.size();
    let data = (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
    EngineTensor {
        name: name.into(),
        dtype,
        shape: shape.to_vec(),
        data,
    }
}

fn sample() -> Engine {
    let config = synthetic::config("tiny").unwrap();
    Engine {
        header: EngineHeader {
            format_version: FORMAT_VERSION,
            config,
            options: BuildOptions {
                dtype: "fp16".into(),
                max_batch: 16,
                beam_width: 5,
                max_new_tokens: 224,
                weight_only: None,
                int8_kv: false,
            },
            gpu_name: "NVIDIA H100 80GB HBM3".into(),
            compute_capability: (9, 0),
            driver_version: 13000,
            kernel_hash: nvrtc::kernel_hash(),
            tactics: vec![
                GemmTactic {
                    key: "m1500_n1152_k384_bias".into(),
                    algo: (0..64).collect(),
                    micros: 12.375,
                },
                GemmTactic {
                    key: "m5_n51865_k384".into(),
                    algo: vec![0xff; 64],
                    micros: 0.1,
                },
            ],
        },
        modules: vec![
            ("conv".into(), vec![0x7f, b'E', b'L', b'F', 1, 2, 3]),
            ("layernorm".into(), vec![9; 300]),
        ],
        tensors: vec![
            tensor("encoder.qkv.weight", Dtype::F16, &[3, 7, 5], 1),
            tensor("scale", Dtype::F32, &[1], 2),
            tensor("encoder.ln.bias", Dtype::F32, &[257], 3),
            tensor("quant", Dtype::I8, &[2, 3], 4),
            tensor("empty", Dtype::F16, &[0, 4], 5),
        ],
        path: None,
    }
}

fn saved(dir: &Path) -> PathBuf {
    let path = dir.join("tiny-sm_90-fp16.engine");
    sample().save(&path).unwrap();
    path
}

/// `what` as the CLI prints it: every cause on one line.
fn line(e: anyhow::Error) -> String {
    let msg = format!("{e:#}");
    assert!(!msg.contains('\n'), "not one line: {msg}");
    msg
}

fn load_err(path: &Path) -> String {
    match Engine::load(path) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => line(e),
    }
}

#[test]
fn round_trip_keeps_everything() {
    let dir = Scratch::new("round-trip");
    let path = saved(&dir.0);
    let original = sample();
    let loaded = Engine::load(&path).unwrap();
    assert_eq!(loaded.header, original.header);
    assert_eq!(loaded.modules, original.modules);
    assert_eq!(loaded.tensors, original.tensors);
    assert_eq!(loaded.path.as_deref(), Some(path.as_path()));
    assert_eq!(EngineHeader::read(&path).unwrap(), original.header);
    assert_eq!(loaded.module("layernorm"), Some(&[9u8; 300][..]));
    assert!(loaded.tensor("scale", Dtype::F32, &[1]).is_ok());
    let wrong = line(loaded.tensor("scale", Dtype::F16, &[1]).unwrap_err());
    assert!(wrong.contains("scale") && wrong.contains("rebuild"), "{wrong}");
    loaded.check_compatible(9, 0).unwrap();

    // The preamble, and every blob on a 256-byte boundary (found by its bytes).
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[..8], MAGIC);
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), FORMAT_VERSION);
    let blob = &original.tensors[2].data;
    let at = bytes.windows(blob.len()).position(|w| w == &blob[..]).unwrap();
    assert_eq!(at as u64 % ALIGN, 0);
    // Nothing else left in the folder (the temporary file was renamed).
    let names: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[test]
fn save_replaces_an_existing_file_and_refuses_bad_tensors() {
    let dir = Scratch::new("replace");
    let path = saved(&dir.0);
    let mut engine = sample();
    engine.header.gpu_name = "NVIDIA A10".into();
    engine.header.compute_capability = (8, 6);
    engine.save(&path).unwrap();
    assert_eq!(EngineHeader::read(&path).unwrap().gpu_name, "NVIDIA A10");

    engine.tensors[0].data.pop();
    let msg = line(engine.save(&path).unwrap_err());
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("encoder.qkv.weight"),
        "{msg}"
    );
    // The failed save left the previous engine in place.
    assert_eq!(EngineHeader::read(&path).unwrap().gpu_name, "NVIDIA A10");

    let missing = dir.0.join("no-such-dir").join("x.engine");
    let msg = line(sample().save(&missing).unwrap_err());
    assert!(msg.contains("no-such-dir"), "{msg}");
    assert!(!missing.parent().unwrap().exists());
}

#[test]
fn truncated_files_are_refused() {
    let dir = Scratch::new("truncated");
    let path = saved(&dir.0);
    let full = std::fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(full[12..20].try_into().unwrap()) as usize;
    // Inside the preamble, inside the JSON header, inside the last blob.
    for cut in [0, 5, 19, 20 + header_len / 2, full.len() - 1] {
        std::fs::write(&path, &full[..cut]).unwrap();
        let msg = load_err(&path);
        assert!(msg.contains(&path.display().to_string()), "cut {cut}: {msg}");
        assert!(
            msg.contains("truncated") || msg.contains("not a whisper-trt engine"),
            "cut {cut}: {msg}"
        );
        assert!(msg.contains("rebuild"), "cut {cut}: {msg}");
    }
}

#[test]
fn bad_magic_is_refused() {
    let dir = Scratch::new("magic");
    let path = saved(&dir.0);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[..8].copy_from_slice(b"GGUF\0\0\0\0");
    std::fs::write(&path, &bytes).unwrap();
    let msg = load_err(&path);
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("not a whisper-trt engine"),
        "{msg}"
    );
    assert!(EngineHeader::read(&path).is_err());
}

#[test]
fn other_format_version_is_refused() {
    let dir = Scratch::new("version");
    let path = saved(&dir.0);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[8..12].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let msg = load_err(&path);
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(
        msg.contains(&format!("format version {}", FORMAT_VERSION + 1)) && msg.contains("rebuild"),
        "{msg}"
    );

    // An engine in memory that claims another version is refused by the compatibility check too.
    let mut engine = sample();
    engine.header.format_version = FORMAT_VERSION + 1;
    assert!(line(engine.check_compatible(9, 0).unwrap_err()).contains("rebuild"));
}

#[test]
fn corrupt_header_is_refused() {
    let dir = Scratch::new("corrupt");
    let path = saved(&dir.0);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[20] = b'#'; // the JSON header's opening brace
    std::fs::write(&path, &bytes).unwrap();
    let msg = load_err(&path);
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("corrupt") && msg.contains("rebuild"),
        "{msg}"
    );

    // An absurd header length is corruption, not an allocation.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
    std::fs::write(&path, &bytes).unwrap();
    let msg = load_err(&path);
    assert!(msg.contains("corrupt") && msg.contains("header length"), "{msg}");
}

#[test]
fn other_compute_capability_is_refused() {
    let dir = Scratch::new("cc");
    let path = saved(&dir.0);
    let engine = Engine::load(&path).unwrap();
    let msg = line(engine.check_compatible(8, 6).unwrap_err());
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(
        msg.contains("sm_90") && msg.contains("sm_86") && msg.contains("rebuild"),
        "{msg}"
    );
    // 9.0 vs 9.0a-capable 10.0 and minor-only differences are refused alike.
    assert!(engine.check_compatible(9, 1).is_err());
    assert!(engine.check_compatible(10, 0).is_err());
}

#[test]
fn other_kernels_are_refused() {
    let dir = Scratch::new("hash");
    let path = dir.0.join("old.engine");
    let mut engine = sample();
    engine.header.kernel_hash = "0123456789abcdef".into();
    assert_ne!(engine.header.kernel_hash, nvrtc::kernel_hash());
    engine.save(&path).unwrap();
    let loaded = Engine::load(&path).unwrap();
    let msg = line(loaded.check_compatible(9, 0).unwrap_err());
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(
        msg.contains("other kernels") && msg.contains("0123456789abcdef") && msg.contains("rebuild"),
        "{msg}"
    );
}

#[test]
fn missing_file_is_one_line() {
    let dir = Scratch::new("missing");
    let path = dir.0.join("nothing.engine");
    let msg = load_err(&path);
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("cannot open"),
        "{msg}"
    );
}

mod synthetic_weights {
    use super::*;
    use whisper_trt::model::weights::canonical_shapes;

    #[test]
    fn every_size_has_the_official_dimensions() {
        let dims = |s: &str| {
            let c = synthetic::config(s).unwrap();
            (
                c.n_mels,
                c.n_audio_state,
                c.n_audio_head,
                c.n_audio_layer,
                c.n_text_layer,
                c.n_vocab,
            )
        };
        assert_eq!(dims("tiny"), (80, 384, 6, 4, 4, 51865));
        assert_eq!(dims("base"), (80, 512, 8, 6, 6, 51865));
        assert_eq!(dims("small"), (80, 768, 12, 12, 12, 51865));
        assert_eq!(dims("medium"), (80, 1024, 16, 24, 24, 51865));
        assert_eq!(dims("large-v2"), (80, 1280, 20, 32, 32, 51865));
        assert_eq!(dims("large-v3"), (128, 1280, 20, 32, 32, 51866));
        for size in synthetic::SIZES {
            let c = synthetic::config(size).unwrap();
            assert_eq!(
                (c.n_audio_ctx, c.n_text_ctx, c.n_text_state),
                (1500, 448, c.n_audio_state)
            );
            assert!(c.multilingual);
        }
        let params: usize = canonical_shapes(&synthetic::config("large-v2").unwrap())
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        // Counted by hand from openai-whisper's modules (N = 1280, 32 + 32 layers, 80 mels):
        // encoder block 12N²+12N, decoder block 16N²+17N, convs, embeddings and final norms.
        let (n, l) = (1280, 32);
        let expected = l * (12 * n * n + 12 * n)
            + l * (16 * n * n + 17 * n)
            + (n * 80 * 3 + n)
            + (3 * n * n + n)
            + 1500 * n
            + 2 * n
            + 51865 * n
            + 448 * n
            + 2 * n;
        assert_eq!(params, expected);
        assert_eq!(params, 1_543_304_960);
        let msg = line(synthetic::config("huge").unwrap_err());
        assert!(msg.contains("huge") && msg.contains("large-v3"), "{msg}");
    }

    #[test]
    fn tiny_weights_are_canonical_seeded_and_laid_out() {
        let (config, w) = synthetic::synthetic("tiny", 7).unwrap();
        w.check_canonical(&config).unwrap();
        let q = "decoder.blocks.3.attn.query.weight";
        let a = w.get(q, &[384, 384]).unwrap().data.clone();
        let (_, again) = synthetic::synthetic("tiny", 7).unwrap();
        assert_eq!(a, again.get(q, &[384, 384]).unwrap().data);
        let (_, other) = synthetic::synthetic("tiny", 8).unwrap();
        assert_ne!(a, other.get(q, &[384, 384]).unwrap().data);
        assert!(a.iter().all(|v| v.is_finite() && v.abs() < 0.1));
        // The CUDA layout accepts them (no GPU needed), and the engine file round-trips them.
        let tensors = whisper_trt::backends::cuda::layout::engine_tensors(&config, &w, None).unwrap();
        assert!(tensors
            .iter()
            .all(|t| t.dtype != Dtype::F16 || t.data.len() == 2 * t.shape.iter().product::<usize>()));
        let dir = Scratch::new("synthetic");
        let path = dir.0.join("tiny.engine");
        let mut engine = sample();
        engine.header.config = config;
        engine.tensors = tensors;
        engine.save(&path).unwrap();
        let loaded = Engine::load(&path).unwrap();
        assert_eq!(loaded.tensors, engine.tensors);
    }

    /// `--weight-only int8`: every linear layer's weight and the token embedding become int8 with
    /// fp16 row scales (the convolutions stay fp16), and dequantized they equal the CPU
    /// reference's round trip of the same tensor.
    #[test]
    fn int8_layout_quantizes_the_linear_layers() {
        use whisper_trt::backends::cuda::layout::engine_tensors;
        use whisper_trt::quant::{round_trip, WeightQuant};
        let (config, w) = synthetic::synthetic("tiny", 3).unwrap();
        let fp16 = engine_tensors(&config, &w, None).unwrap();
        let int8 = engine_tensors(&config, &w, Some(WeightQuant::Int8)).unwrap();
        let find = |ts: &[whisper_trt::engine::EngineTensor], name: &str| ts.iter().find(|t| t.name == name).cloned();
        let (n, layers) = (config.n_text_state, config.n_audio_layer + config.n_text_layer);
        // qkv, out, fc1, fc2 per layer; cross_q and cross_out per decoder layer; the fused cross
        // K/V and the token embedding.
        let want = 4 * layers + 2 * config.n_text_layer + 2;
        assert_eq!(int8.iter().filter(|t| t.dtype == Dtype::I8).count(), want);
        for t in int8.iter().filter(|t| t.dtype == Dtype::I8) {
            let s = find(&int8, &whisper_trt::backends::cuda::layout::scale_name(&t.name)).unwrap_or_else(|| panic!("{}: no scales", t.name));
            assert_eq!((s.dtype, s.shape.clone()), (Dtype::F16, vec![t.shape[0]]), "{}", t.name);
            assert_eq!(find(&fp16, &t.name).unwrap().shape, t.shape, "{}", t.name);
        }
        for name in ["enc.conv1.w", "enc.conv2.w", "enc.pos", "dec.pos"] {
            assert_eq!(find(&int8, name).unwrap().dtype, Dtype::F16, "{name}");
        }
        // The token embedding against quant's round trip of the canonical tensor.
        let emb = find(&int8, "dec.tok_emb").unwrap();
        let scales = find(&int8, "dec.tok_emb.s").unwrap();
        let rt = round_trip(w.get("decoder.token_embedding.weight", &[config.n_vocab, n]).unwrap(), WeightQuant::Int8).unwrap();
        for row in [0, 17, config.n_vocab - 1] {
            let s = half::f16::from_le_bytes([scales.data[2 * row], scales.data[2 * row + 1]]).to_f32();
            for c in 0..n {
                assert_eq!(emb.data[row * n + c] as i8 as f32 * s, rt.data[row * n + c], "row {row} column {c}");
            }
        }
        // Half the bytes, give or take the fp16 parts.
        let bytes = |ts: &[whisper_trt::engine::EngineTensor]| ts.iter().map(|t| t.data.len()).sum::<usize>() as f64;
        let ratio = bytes(&int8) / bytes(&fp16);
        assert!((0.5..0.56).contains(&ratio), "int8 engine tensors are {ratio:.3} of fp16's");
    }
}

mod build_command {
    use super::*;
    use clap::Parser;
    use whisper_trt::engine::builder::{self, check_options, default_engine_path, BuildArgs, NO_GPU};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        build: BuildArgs,
    }

    fn parse(args: &[&str]) -> Result<BuildArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("build").chain(args.iter().copied())).map(|c| c.build)
    }

    #[test]
    fn flags_and_defaults() {
        assert_eq!(parse(&[]).unwrap(), BuildArgs::defaults());
        let a = parse(&[
            "--synthetic",
            "large-v2",
            "--seed",
            "3",
            "--max-batch",
            "32",
            "--beam-width",
            "1",
            "-o",
            "x.engine",
        ])
        .unwrap();
        assert_eq!(
            (a.synthetic.as_deref(), a.seed, a.max_batch, a.beam_width),
            (Some("large-v2"), 3, 32, 1)
        );
        assert_eq!(a.output.as_deref(), Some(Path::new("x.engine")));
        assert_eq!(
            parse(&["--max-new-tokens", "100", "--dtype", "fp16"])
                .unwrap()
                .max_new_tokens,
            100
        );
        assert!(parse(&["--synthetic", "huge"]).is_err());
        // --weight-only alone means int8, as `build --int8-kv --weight-only` is typed.
        assert_eq!(parse(&["--weight-only"]).unwrap().weight_only.as_deref(), Some("int8"));
        assert_eq!(parse(&["--weight-only", "int4"]).unwrap().weight_only.as_deref(), Some("int4"));
        assert!(parse(&["--weight-only", "int3"]).is_err());
        // The line users type, in either order.
        for line in [["--int8-kv", "--weight-only"], ["--weight-only", "--int8-kv"]] {
            let a = parse(&line).unwrap();
            assert!(a.int8_kv, "{line:?}");
            assert_eq!(a.weight_only.as_deref(), Some("int8"), "{line:?}");
            assert_eq!((a.calib.as_deref(), a.calib_files), (None, 32));
        }
        let a = parse(&["--int8-kv", "--calib", "clips", "--calib-files", "8"]).unwrap();
        assert_eq!((a.calib.as_deref(), a.calib_files), (Some(Path::new("clips")), 8));
        assert!(parse(&["--calib", "clips"]).is_err(), "--calib only goes with --int8-kv");
        assert!(parse(&["--dtype", "fp32"]).is_err());
        assert!(parse(&["--seed", "1"]).is_err(), "--seed only goes with --synthetic");
        assert!(parse(&["--synthetic", "tiny", "--model", "m"]).is_err());
    }

    #[test]
    fn default_path_names_model_and_arch() {
        let p = default_engine_path(Path::new("models/tiny.en"), (9, 0));
        assert!(p.ends_with("engines/tiny.en-sm_90-fp16.engine"), "{}", p.display());
        assert_eq!(p.parent().unwrap().parent().unwrap(), whisper_trt::paths::models_dir());
        let p = default_engine_path(Path::new("/somewhere/base/"), (8, 6));
        assert!(p.ends_with("engines/base-sm_86-fp16.engine"), "{}", p.display());
        let p = builder::engine_path_with("base", (9, 0), Some(whisper_trt::quant::WeightQuant::Int8), true);
        assert!(p.ends_with("engines/base-sm_90-fp16-w8-kv8.engine"), "{}", p.display());
        let p = builder::engine_path_with("base", (9, 0), None, true);
        assert!(p.ends_with("engines/base-sm_90-fp16-kv8.engine"), "{}", p.display());
    }

    /// A missing calibration folder, or one with no audio, fails before any GPU work, naming it.
    #[test]
    fn int8_kv_calibration_audio_is_checked_first() {
        let missing = Scratch::new("calib").0.join("nowhere");
        let args = BuildArgs { synthetic: Some("tiny".into()), int8_kv: true, calib: Some(missing.clone()), ..BuildArgs::defaults() };
        let msg = line(builder::build(&args).unwrap_err());
        assert!(msg.contains(&missing.display().to_string()) && msg.contains("not found"), "{msg}");
        let empty = Scratch::new("calib-empty");
        std::fs::write(empty.0.join("notes.txt"), "no audio here").unwrap();
        let args = BuildArgs { calib: Some(empty.0.clone()), ..args };
        let msg = line(builder::build(&args).unwrap_err());
        assert!(msg.contains(&empty.0.display().to_string()) && msg.contains("no audio files"), "{msg}");
    }

    #[test]
    fn options_are_checked_against_the_model() {
        let config = synthetic::config("tiny").unwrap();
        let ok = BuildOptions {
            dtype: "fp16".into(),
            max_batch: 16,
            beam_width: 5,
            max_new_tokens: 224,
            weight_only: None,
            int8_kv: false,
        };
        check_options(&ok, &config).unwrap();
        let msg = line(
            check_options(
                &BuildOptions {
                    max_new_tokens: 225,
                    ..ok.clone()
                },
                &config,
            )
            .unwrap_err(),
        );
        assert!(msg.contains("225") && msg.contains("224"), "{msg}");
        assert!(check_options(
            &BuildOptions {
                max_batch: 0,
                ..ok.clone()
            },
            &config
        )
        .is_err());
        assert!(check_options(
            &BuildOptions {
                dtype: "int8".into(),
                ..ok
            },
            &config
        )
        .is_err());
    }

    #[test]
    fn bad_model_dir_fails_before_the_gpu() {
        let dir = Scratch::new("not-a-model");
        let args = BuildArgs {
            model: Some(dir.0.clone()),
            ..BuildArgs::defaults()
        };
        let msg = line(builder::build(&args).unwrap_err());
        assert!(
            msg.contains(&dir.0.display().to_string()) && msg.contains("config.json"),
            "{msg}"
        );
    }

    /// Without a GPU (CI, this machine) build says so in one line; on a GPU it builds a valid engine.
    #[test]
    fn synthetic_tiny_builds_or_says_no_gpu() {
        let dir = Scratch::new("build");
        let output = dir.0.join("tiny.engine");
        let args = BuildArgs {
            synthetic: Some("tiny".into()),
            output: Some(output.clone()),
            ..BuildArgs::defaults()
        };
        match builder::build(&args) {
            Err(e) => {
                assert_eq!(line(e), NO_GPU);
                assert!(!output.exists());
            }
            Ok(path) => {
                assert_eq!(path, output);
                let engine = Engine::load(&path).unwrap();
                let (m, n) = engine.header.compute_capability;
                engine.check_compatible(m, n).unwrap();
                assert_eq!(engine.modules.len(), whisper_trt::engine::kernels::KERNEL_SOURCES.len());
                assert!(!engine.header.tactics.is_empty());
            }
        }
    }
}
