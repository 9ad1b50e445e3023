//! The CPU backend against openai-whisper's outputs on the random fixture model
//! (shared/data/fixtures, see its README.txt). Run: `cargo test --release --test cpu_backend`.
mod common;
use anyhow::{anyhow, bail, Context, Result};
use safetensors::SafeTensors;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use whisper_trt::backends::cpu::CpuModel;
use whisper_trt::decoding::DecoderSession;
use whisper_trt::model::config::{ModelConfig, SpecialTokens};
use whisper_trt::model::weights::{to_f32, Tensor, Weights};

fn fixtures() -> PathBuf {
    let shared = std::env::var("WHISPER_TRT_SHARED").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../shared").into());
    Path::new(&shared).join("data/fixtures")
}

/// The fixture's dimensions (README.txt) with the English-only special tokens.
fn fixture_config() -> ModelConfig {
    ModelConfig {
        n_mels: 80,
        n_audio_ctx: 1500,
        n_audio_state: 64,
        n_audio_head: 2,
        n_audio_layer: 2,
        n_vocab: 51864,
        n_text_ctx: 448,
        n_text_state: 64,
        n_text_head: 2,
        n_text_layer: 2,
        multilingual: false,
        special_tokens: SpecialTokens {
            eot: 50256,
            sot: 50257,
            translate: 50357,
            transcribe: 50358,
            sot_lm: 50359,
            sot_prev: 50360,
            no_speech: 50361,
            no_timestamps: 50362,
            timestamp_begin: 50363,
            languages: vec![],
        },
        alignment_heads: None,
        source_format: "huggingface".into(),
    }
}

/// Hugging Face tensor name -> openai-whisper's (the mapping in the fixture's README.txt).
/// Private to this test until the checkpoint converter can be used here.
fn canonical_name(hf: &str) -> Result<String> {
    let name = hf.strip_prefix("model.").ok_or_else(|| anyhow!("unexpected HF tensor {hf}"))?;
    let whole = [
        ("encoder.embed_positions.weight", "encoder.positional_embedding"),
        ("decoder.embed_positions.weight", "decoder.positional_embedding"),
        ("decoder.embed_tokens.weight", "decoder.token_embedding.weight"),
        ("encoder.layer_norm.weight", "encoder.ln_post.weight"),
        ("encoder.layer_norm.bias", "encoder.ln_post.bias"),
        ("decoder.layer_norm.weight", "decoder.ln.weight"),
        ("decoder.layer_norm.bias", "decoder.ln.bias"),
    ];
    if let Some((_, to)) = whole.iter().find(|(from, _)| *from == name) {
        return Ok(to.to_string());
    }
    let parts = [
        (".layers.", ".blocks."),
        (".self_attn_layer_norm.", ".attn_ln."),
        (".encoder_attn_layer_norm.", ".cross_attn_ln."),
        (".final_layer_norm.", ".mlp_ln."),
        (".self_attn.", ".attn."),
        (".encoder_attn.", ".cross_attn."),
        (".q_proj.", ".query."),
        (".k_proj.", ".key."),
        (".v_proj.", ".value."),
        (".out_proj.", ".out."),
        (".fc1.", ".mlp.0."),
        (".fc2.", ".mlp.2."),
    ];
    Ok(parts.iter().fold(name.to_string(), |s, (from, to)| s.replace(from, to)))
}

fn fixture_tensors() -> Result<HashMap<String, Tensor>> {
    let path = fixtures().join("tiny_random_hf/model.safetensors");
    let bytes = std::fs::read(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let mut map = HashMap::new();
    for (name, view) in st.tensors() {
        let data = to_f32(view.dtype(), view.data())?;
        map.insert(canonical_name(&name)?, Tensor::new(view.shape().to_vec(), data));
    }
    Ok(map)
}

fn model() -> &'static CpuModel {
    static MODEL: OnceLock<CpuModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let tensors = fixture_tensors().expect("fixture weights");
        let weights = Weights::from_map(Path::new("tiny_random_hf(renamed)"), tensors);
        CpuModel::new(fixture_config(), weights).expect("fixture model")
    })
}

/// A little-endian f32 C-order .npy file: (shape, data).
fn read_npy(path: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        bail!("{}: not a .npy file", path.display());
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len])?;
    if !header.contains("'descr': '<f4'") || !header.contains("'fortran_order': False") {
        bail!("{}: expected little-endian f32 in C order, header {header}", path.display());
    }
    let shape_text = header.split("'shape': (").nth(1).and_then(|s| s.split(')').next()).context("no shape")?;
    let shape = shape_text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(|s| s.parse()).collect::<Result<Vec<usize>, _>>()?;
    let data = to_f32(safetensors::Dtype::F32, &bytes[start + header_len..])?;
    if data.len() != shape.iter().product::<usize>() {
        bail!("{}: {} values for shape {shape:?}", path.display(), data.len());
    }
    Ok((shape, data))
}

fn expected() -> Value {
    let path = fixtures().join("tiny_random_expected.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect()
}

fn encoded() -> &'static Tensor {
    static FEATURES: OnceLock<Tensor> = OnceLock::new();
    FEATURES.get_or_init(|| {
        let (shape, mel) = read_npy(&fixtures().join("jfk_mel_80x3000_f32.npy")).unwrap();
        assert_eq!(shape, [80, 3000]);
        model().encode(&mel).unwrap()
    })
}

#[test]
fn encoder_matches_openai_whisper() {
    let (shape, want) = read_npy(&fixtures().join("tiny_random_encoder_out_1500x64_f32.npy")).unwrap();
    assert_eq!(shape, [1500, 64]);
    let got = encoded();
    assert_eq!(got.shape, shape);
    let max_diff = got.data.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    eprintln!("encoder max abs diff {max_diff:e} (max |value| {scale})");
    assert!(max_diff <= 1e-4 * scale.max(1.0), "encoder differs by {max_diff}");
}

#[test]
fn teacher_forced_logits_match_openai_whisper() {
    let exp = expected();
    let tokens = ids(&exp["tokens_with_prompt"]);
    let prompt = ids(&exp["prompt_tokens"]);
    let suppress = ids(&exp["suppress_tokens"]);
    let steps = exp["steps"].as_array().unwrap();
    assert_eq!(tokens.len(), prompt.len() + steps.len());
    let n_vocab = model().config().n_vocab;
    let mut session = model().session(encoded(), 1).unwrap();

    let mut max_diff = 0.0f32;
    for (i, step) in steps.iter().enumerate() {
        // Step 0 feeds the prompt; every later step feeds the previous step's token.
        let feed = if i == 0 { &tokens[..prompt.len()] } else { &tokens[prompt.len() + i - 1..prompt.len() + i] };
        let logits = session.forward(&[feed]).unwrap();
        assert_eq!(logits.len(), feed.len() * n_vocab);
        let last = &logits[(feed.len() - 1) * n_vocab..];
        for pair in step["raw_top5"].as_array().unwrap() {
            let (id, want) = (pair[0].as_u64().unwrap() as usize, pair[1].as_f64().unwrap() as f32);
            let diff = (last[id] - want).abs();
            max_diff = max_diff.max(diff);
            assert!(diff < 1e-4, "step {i} token {id}: logit {} vs {want}", last[id]);
        }
        // openai-whisper's filters: SuppressBlank at step 0, SuppressTokens always.
        let mut filtered = last.to_vec();
        for &id in &suppress {
            filtered[id as usize] = f32::NEG_INFINITY;
        }
        if i == 0 {
            filtered[220] = f32::NEG_INFINITY;
            filtered[model().config().special_tokens.eot as usize] = f32::NEG_INFINITY;
        }
        let argmax = (0..n_vocab).fold(0, |best, j| if filtered[j] > filtered[best] { j } else { best });
        assert_eq!(argmax as u64, step["token"].as_u64().unwrap(), "step {i}");
        assert_eq!(argmax as u32, tokens[prompt.len() + i]);
    }
    eprintln!("teacher-forced top-5 logits: max abs diff {max_diff:e} over {} steps", steps.len());
}

#[test]
fn sessions_keep_sequences_apart_and_reorder() {
    let exp = expected();
    let tokens = ids(&exp["tokens_with_prompt"]);
    let (prompt, rest) = tokens.split_at(2);
    let n_vocab = model().config().n_vocab;

    // Two sequences fed the same tokens give identical logits, equal to a single sequence's.
    let mut single = model().session(encoded(), 1).unwrap();
    let mut pair = model().session(encoded(), 2).unwrap();
    let one = single.forward(&[prompt]).unwrap();
    let two = pair.forward(&[prompt, prompt]).unwrap();
    assert_eq!(two.len(), 2 * one.len());
    assert_eq!(&two[..one.len()], &two[one.len()..]);
    let diff = one.iter().zip(&two).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff < 1e-5, "batched logits differ from single ones by {diff}");
    for &tok in &rest[..3] {
        let one = single.forward(&[&[tok]]).unwrap();
        let two = pair.forward(&[&[tok], &[tok]]).unwrap();
        assert_eq!(&two[..n_vocab], &two[n_vocab..]);
        let diff = one.iter().zip(&two).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-5, "batched logits differ from single ones by {diff}");
    }

    // Diverge: sequence 1 gets different tokens (what `alone` sees), sequence 0 others.
    let mut alone = model().session(encoded(), 1).unwrap();
    alone.forward(&[prompt]).unwrap();
    let mut pair = model().session(encoded(), 2).unwrap();
    pair.forward(&[prompt, prompt]).unwrap();
    for (a, b) in [(100u32, 200u32), (300, 400), (500, 600)] {
        pair.forward(&[&[a], &[b]]).unwrap();
        alone.forward(&[&[b]]).unwrap();
    }
    pair.reorder(&[1, 1]);
    for &tok in &rest[..4] {
        let want = alone.forward(&[&[tok]]).unwrap();
        let got = pair.forward(&[&[tok], &[tok]]).unwrap();
        assert_eq!(&got[..n_vocab], &got[n_vocab..], "reordered sequences differ");
        let diff = want.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(diff < 1e-5, "reordered sequence differs from the original by {diff}");
    }
    // Swapping is a permutation: after [1, 0] each sequence continues the other's history.
    let mut pair = model().session(encoded(), 2).unwrap();
    let mut first = model().session(encoded(), 1).unwrap();
    pair.forward(&[&[50257, 100], &[50257, 200]]).unwrap();
    first.forward(&[&[50257, 100]]).unwrap();
    pair.reorder(&[1, 0]);
    let got = pair.forward(&[&[7], &[7]]).unwrap();
    let want = first.forward(&[&[7]]).unwrap();
    let diff = want.iter().zip(&got[n_vocab..]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff < 1e-5, "swapped sequence differs by {diff}");
    assert!(got[..n_vocab] != got[n_vocab..]);
    // Bad reorders are refused without changing anything.
    assert!(pair.try_reorder(&[0, 2]).is_err());
    assert!(pair.try_reorder(&[0]).is_err());
}

#[test]
fn bad_input_is_an_error() {
    let m = model();
    let mut s = m.session(encoded(), 2).unwrap();
    assert!(s.forward(&[&[50257]]).is_err(), "wrong number of sequences");
    assert!(s.forward(&[&[50257], &[50257, 1]]).is_err(), "ragged sequences");
    assert!(s.forward(&[&[51864], &[0]]).is_err(), "token outside the vocabulary");
    let long = vec![0u32; 449];
    assert!(s.forward(&[&long, &long]).is_err(), "beyond the text context");
    assert!(m.encode(&[0.0; 10]).is_err());
    assert!(m.session(&Tensor::new(vec![10, 64], vec![0.0; 640]), 1).is_err());
    assert!(m.session(encoded(), 0).is_err());
}

#[test]
fn converted_fixture_loads_like_the_renamed_one() {
    // The converter's model directory, through CpuModel::load, computes exactly what the
    // hand-renamed weights above compute (same f16 values, same code).
    let tokenizer = common::model_dir("tiny.en").join("tokenizer.json");
    let dir = common::temp_dir("cpu-backend");
    let no_vocab = dir.join("no-vocab");
    std::fs::create_dir_all(&no_vocab).unwrap();
    let out = dir.join("model");
    let hf = fixtures().join("tiny_random_hf");
    let config = whisper_trt::checkpoint::convert_with_models_dir(&hf, &out, Some(&tokenizer), &no_vocab).unwrap();
    let loaded = CpuModel::load(&out).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(loaded.config(), &config);
    let (_, mel) = read_npy(&fixtures().join("jfk_mel_80x3000_f32.npy")).unwrap();
    assert!(loaded.encode(&mel).unwrap() == *encoded(), "encoder outputs differ");
    let mut a = loaded.session(encoded(), 1).unwrap();
    let mut b = model().session(encoded(), 1).unwrap();
    let prompt = [50257, 50362];
    assert!(a.forward(&[&prompt]).unwrap() == b.forward(&[&prompt]).unwrap(), "logits differ");
}

#[test]
fn wrong_shape_is_an_error_naming_the_tensor() {
    let mut tensors = fixture_tensors().unwrap();
    let name = "decoder.blocks.1.cross_attn.value.weight";
    tensors.insert(name.into(), Tensor::new(vec![64, 63], vec![0.0; 64 * 63]));
    let err = CpuModel::new(fixture_config(), Weights::from_map(Path::new("bad.safetensors"), tensors)).err().expect("an error");
    let text = format!("{err:#}");
    eprintln!("wrong shape: {text}");
    assert!(text.contains(name), "error does not name the tensor: {text}");

    let mut tensors = fixture_tensors().unwrap();
    tensors.remove("encoder.conv2.bias");
    let err = CpuModel::new(fixture_config(), Weights::from_map(Path::new("bad.safetensors"), tensors)).err().expect("an error");
    assert!(format!("{err:#}").contains("encoder.conv2.bias"), "{err:#}");
}

/// The int8 KV cache on the CPU reference (`build --int8-kv`): calibration records a maximum
/// for every (kind, layer, head); with the calibrated scales the logits move a little (the round
/// trip is applied), with scales 20 times too small (saturation) they move far more.
#[test]
fn int8_kv_round_trip_follows_calibrated_scales() {
    use whisper_trt::kv_quant::KvScales;
    let tokens = ids(&expected()["tokens_with_prompt"]);
    let weights = Weights::from_map(Path::new("tiny_random_hf(renamed)"), fixture_tensors().unwrap());
    let mut m = CpuModel::new(fixture_config(), weights).unwrap();
    let run = |m: &CpuModel| -> Vec<f32> {
        let mut s = m.session(encoded(), 1).unwrap();
        s.forward(&[&tokens[..2]]).unwrap();
        tokens[2..8].iter().flat_map(|&t| s.forward(&[&[t]]).unwrap()).collect()
    };
    m.start_kv_stats();
    let exact = run(&m);
    let stats = m.take_kv_stats().unwrap();
    assert!(stats.amax.iter().all(|&a| a > 0.0), "a head with no recorded values: {:?}", stats.amax);
    let rel = |a: &[f32]| {
        let num: f32 = a.iter().zip(&exact).map(|(x, y)| (x - y).powi(2)).sum();
        (num / exact.iter().map(|y| y * y).sum::<f32>()).sqrt()
    };
    let scales = stats.scales().unwrap();
    m.set_kv_scales(Some(scales.clone())).unwrap();
    let calibrated = rel(&run(&m));
    let small = KvScales::new(scales.n_layer, scales.n_head, scales.scales.iter().map(|s| s / 20.0).collect()).unwrap();
    m.set_kv_scales(Some(small)).unwrap();
    let saturated = rel(&run(&m));
    println!("int8 KV logits relative error: calibrated {calibrated:.2e}, saturated {saturated:.2e}");
    assert!(calibrated > 0.0 && calibrated < 2e-2, "calibrated int8 KV: relative error {calibrated:.3e}");
    assert!(saturated > 10.0 * calibrated, "saturated {saturated:.3e} vs calibrated {calibrated:.3e}");
    let wrong = KvScales::new(scales.n_layer + 1, scales.n_head, vec![0.1; 4 * (scales.n_layer + 1) * scales.n_head]).unwrap();
    assert!(m.set_kv_scales(Some(wrong)).is_err());
}
