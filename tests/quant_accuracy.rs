//! Issue 4's accuracy bars for the weight-only schemes, measured on the CPU reference before any
//! quantized kernel exists: the same greedy decoding with every covered weight replaced by its
//! quantize-dequantize round trip (`quant::fake_quantize`: what a W8A16 / W4A16 GEMM computes
//! with, up to the fp16 rounding of its activations), WER with the project's normalizer on the
//! shared reference clips, against the unquantized weights in the same run.
//! Bars (absolute WER, percentage points): int8 within +0.3, int4 within +1.5.
//! Each test prints its table. Ignored in `cargo test`: the two take about 20 minutes of CPU on
//! two cores, and with round-to-nearest scales (src/quant.rs) both fail today, as measured
//! 2026-12-04 (`cargo test --release --test quant_accuracy -- --ignored --nocapture
//! --test-threads=1`):
//!
//! | model | as stored | int8 | int4 |
//! |---|---|---|---|
//! | tiny.en | 7.316 | 7.623 (+0.307) | 18.173 (+10.857) |
//! | base | 6.207 | 6.136 (-0.071) | 12.226 (+6.018) |
//!
//! They stay as the check issue 4's quantizer must pass.
//!
//! The int8 KV cache (bar +0.2), CPU-calibrated on the first 32 shared LibriSpeech clips (which
//! are among the 248 scored), measured 2026-12-05 (`cargo test --release --test quant_accuracy
//! int8_kv -- --ignored --nocapture --test-threads=1`, 860 s): tiny.en 7.316 -> 7.411 (+0.094),
//! base 6.207 -> 6.207 (+0.000).
mod common;
use whisper_trt::backends::cpu::CpuModel;
use whisper_trt::decoding::DecodeOptions;
use whisper_trt::model::config::ModelConfig;
use whisper_trt::model::weights::Weights;
use whisper_trt::quant::{fake_quantize, WeightQuant};
use whisper_trt::text::normalizer::EnglishTextNormalizer;
use whisper_trt::text::wer::word_edits;
use whisper_trt::text::Tokenizer;
use whisper_trt::transcribe::Transcriber;

struct Clip {
    audio: std::path::PathBuf,
    normalized_ref: String,
}

/// Every clip of openai-whisper's greedy reference for `model` (LibriSpeech, LJSpeech, smoke).
fn clips(model: &str) -> Vec<Clip> {
    let path = common::shared().join(format!("data/reference/{model}/greedy.jsonl"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let (subset, id) = (v["subset"].as_str().unwrap(), v["id"].as_str().unwrap());
            Clip { audio: common::reference_audio(subset, id), normalized_ref: v["normalized_ref"].as_str().unwrap().to_string() }
        })
        .collect()
}

/// Corpus WER in percent of greedy decoding with `scheme` applied to the weights (None: as stored).
fn wer(model: &str, scheme: Option<WeightQuant>, clips: &[Clip], normalizer: &EnglishTextNormalizer) -> f64 {
    let dir = common::model_dir(model);
    let config = ModelConfig::load(&dir.join("config.json")).unwrap();
    let mut weights = Weights::load(&dir.join("model.safetensors")).unwrap();
    if let Some(s) = scheme {
        let n = fake_quantize(&mut weights, s).unwrap();
        let want = 1 + config.n_audio_layer * 6 + config.n_text_layer * 10;
        assert_eq!(n, want, "{model}: {s:?} replaced {n} tensors, expected every linear weight and the token embedding ({want})");
    }
    let backend = CpuModel::new(config, weights).unwrap();
    let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let options = DecodeOptions { language: Some("en".into()), ..DecodeOptions::default() };
    let t = Transcriber::new(backend, tokenizer, options);
    let (mut edits, mut words) = (0usize, 0usize);
    for c in clips {
        let out = t.transcribe_file(&c.audio).unwrap();
        edits += word_edits(&c.normalized_ref, &normalizer.normalize(&out.text));
        words += c.normalized_ref.split_whitespace().count();
    }
    100.0 * edits as f64 / words as f64
}

fn check(model: &str) {
    let normalizer = EnglishTextNormalizer::from_json_file(&common::shared().join("data/whisper/english.json")).unwrap();
    let clips = clips(model);
    let start = std::time::Instant::now();
    let base = wer(model, None, &clips, &normalizer);
    let int8 = wer(model, Some(WeightQuant::Int8), &clips, &normalizer);
    let int4 = wer(model, Some(WeightQuant::Int4), &clips, &normalizer);
    println!("{model} greedy, {} clips, CPU f32, {:.1} s", clips.len(), start.elapsed().as_secs_f64());
    println!("{:<24} {:>8} {:>8}", "weights", "WER %", "delta");
    for (name, w) in [("as stored (fp16)", base), ("int8 per channel", int8), ("int4 groups of 128", int4)] {
        println!("{name:<24} {w:>8.3} {:>+8.3}", w - base);
    }
    assert!(int8 - base <= 0.3, "{model}: int8 weights raise WER by {:.3} points (bar 0.3)", int8 - base);
    assert!(int4 - base <= 1.5, "{model}: int4 weights raise WER by {:.3} points (bar 1.5)", int4 - base);
}

#[test]
#[ignore = "20 minutes of CPU; fails today (int4 round to nearest), see the module notes"]
fn tiny_en_weight_only_quantization_within_bars() {
    check("tiny.en");
}

#[test]
#[ignore = "20 minutes of CPU; fails today (int4 round to nearest), see the module notes"]
fn base_weight_only_quantization_within_bars() {
    check("base");
}

/// Corpus WER with the int8 KV cache on the CPU reference: scales calibrated by the CPU itself
/// (`engine::calibrate`, the build's procedure) on the first 32 shared LibriSpeech clips, then
/// every self and cross key and value through the int8 round trip; as stored against int8 KV.
fn check_kv8(model: &str) {
    use whisper_trt::engine::calibrate;
    let normalizer = EnglishTextNormalizer::from_json_file(&common::shared().join("data/whisper/english.json")).unwrap();
    let clips = clips(model);
    let start = std::time::Instant::now();
    let base = wer(model, None, &clips, &normalizer);
    let dir = common::model_dir(model);
    let config = ModelConfig::load(&dir.join("config.json")).unwrap();
    let mut backend = CpuModel::new(config.clone(), Weights::load(&dir.join("model.safetensors")).unwrap()).unwrap();
    let files = calibrate::audio_files(&common::shared().join("data/librispeech"), 32).unwrap();
    backend.start_kv_stats();
    calibrate::run(&backend, &calibrate::windows(&files, config.n_mels).unwrap()).unwrap();
    let stats = backend.take_kv_stats().unwrap();
    println!("{model}: calibrated on {} files: {}", files.len(), stats.summary());
    backend.set_kv_scales(Some(stats.scales().unwrap())).unwrap();
    let t = Transcriber::new(backend, Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap(), DecodeOptions { language: Some("en".into()), ..DecodeOptions::default() });
    let (mut edits, mut words) = (0usize, 0usize);
    for c in &clips {
        let out = t.transcribe_file(&c.audio).unwrap();
        edits += word_edits(&c.normalized_ref, &normalizer.normalize(&out.text));
        words += c.normalized_ref.split_whitespace().count();
    }
    let kv8 = 100.0 * edits as f64 / words as f64;
    println!("{model} greedy, {} clips, CPU f32, {:.1} s: WER as stored {base:.3}%, int8 KV {kv8:.3}% ({:+.3})", clips.len(), start.elapsed().as_secs_f64(), kv8 - base);
    assert!(kv8 - base <= 0.2, "{model}: int8 KV raises WER by {:.3} points (bar 0.2)", kv8 - base);
}

#[test]
#[ignore = "about 10 minutes of CPU"]
fn tiny_en_int8_kv_within_bar() {
    check_kv8("tiny.en");
}

#[test]
#[ignore = "about 10 minutes of CPU"]
fn base_int8_kv_within_bar() {
    check_kv8("base");
}
