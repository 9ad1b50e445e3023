//! `whisper-trt convert`: the three checkpoint readers and the model directory writer.
//! Needs ../shared (fixtures) and the real CTranslate2 models that `scripts/fetch-model.sh`
//! installs under $WHISPER_TRT_MODELS (default ./models): models/src/tiny.en and models/src/base.
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use whisper_trt::checkpoint::convert_with_models_dir;
use whisper_trt::model::ModelConfig;

fn shared() -> PathBuf {
    std::env::var_os("WHISPER_TRT_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared")))
}

fn fixtures() -> PathBuf {
    shared().join("data/fixtures")
}

fn models() -> PathBuf {
    std::env::var_os("WHISPER_TRT_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/models")))
}

/// A real CTranslate2 model; missing is a failure (CI runs the fetch script first).
fn real_model(name: &str) -> PathBuf {
    let dir = models().join("src").join(name);
    assert!(
        dir.join("model.bin").is_file(),
        "{} is missing: run `scripts/fetch-model.sh {name}` first",
        dir.display()
    );
    dir
}

fn english_tokenizer() -> PathBuf {
    real_model("tiny.en").join("tokenizer.json")
}

/// A fresh, empty scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("whisper-trt-convert-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Removes a scratch directory when the test ends.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An empty models dir: no installed vocabularies.
fn no_vocab(dir: &Path) -> PathBuf {
    let m = dir.join("empty-models");
    std::fs::create_dir_all(&m).unwrap();
    m
}

struct Loaded {
    config: ModelConfig,
    tensors: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>,
}

fn load_output(dir: &Path) -> Loaded {
    let config = ModelConfig::load(&dir.join("config.json")).unwrap();
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    assert!(dir.join("tokenizer.json").is_file());
    Loaded { config, tensors }
}

fn dims(c: &ModelConfig) -> [usize; 10] {
    [
        c.n_mels,
        c.n_audio_ctx,
        c.n_audio_state,
        c.n_audio_head,
        c.n_audio_layer,
        c.n_vocab,
        c.n_text_ctx,
        c.n_text_state,
        c.n_text_head,
        c.n_text_layer,
    ]
}

fn f16s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
        .collect()
}

/// Fixture dims from data/fixtures/README.txt.
const FIXTURE_DIMS: [usize; 10] = [80, 1500, 64, 2, 2, 51864, 448, 64, 2, 2];

#[test]
fn pt_and_hf_fixtures_convert_to_identical_tensors() {
    let dir = scratch("fixtures");
    let _cleanup = Cleanup(dir.clone());
    let empty = no_vocab(&dir);
    let tok = english_tokenizer();
    let pt_out = dir.join("from-pt");
    let hf_out = dir.join("from-hf");
    let c1 = convert_with_models_dir(&fixtures().join("tiny_random_openai.pt"), &pt_out, Some(&tok), &empty).unwrap();
    let c2 = convert_with_models_dir(&fixtures().join("tiny_random_hf"), &hf_out, Some(&tok), &empty).unwrap();
    let (pt, hf) = (load_output(&pt_out), load_output(&hf_out));
    assert_eq!(pt.config, c1);
    assert_eq!(hf.config, c2);
    assert_eq!(dims(&c1), FIXTURE_DIMS);
    assert_eq!(dims(&c2), FIXTURE_DIMS);
    assert_eq!(c1.source_format, "openai-pt");
    assert_eq!(c2.source_format, "huggingface");
    assert!(!c1.multilingual);
    assert_eq!(
        (
            c1.special_tokens.eot,
            c1.special_tokens.sot,
            c1.special_tokens.no_timestamps
        ),
        (50256, 50257, 50362)
    );
    assert_eq!(pt.tensors.len(), 89, "README: 89 tensors");
    assert_eq!(
        pt.tensors.keys().collect::<Vec<_>>(),
        hf.tensors.keys().collect::<Vec<_>>()
    );
    for (name, (dtype, shape, data)) in &pt.tensors {
        let (hdtype, hshape, hdata) = &hf.tensors[name];
        assert_eq!(*dtype, Dtype::F16, "{name}");
        assert_eq!((dtype, shape), (hdtype, hshape), "{name}");
        assert!(data == hdata, "{name}: .pt and HF conversions differ");
    }
    // Spot-check the HF renaming against the source file itself.
    let src = std::fs::read(fixtures().join("tiny_random_hf/model.safetensors")).unwrap();
    let src = SafeTensors::deserialize(&src).unwrap();
    for (hf_name, canonical) in [
        (
            "model.decoder.layers.1.encoder_attn.k_proj.weight",
            "decoder.blocks.1.cross_attn.key.weight",
        ),
        ("model.encoder.layers.0.fc2.weight", "encoder.blocks.0.mlp.2.weight"),
        ("model.encoder.embed_positions.weight", "encoder.positional_embedding"),
    ] {
        assert_eq!(
            src.tensor(hf_name).unwrap().data(),
            hf.tensors[canonical].2.as_slice(),
            "{canonical}"
        );
    }
}

#[test]
fn installed_vocabulary_is_found_by_n_vocab() {
    let dir = scratch("vocab");
    let _cleanup = Cleanup(dir.clone());
    let models = dir.join("models");
    std::fs::create_dir_all(models.join("vocab/english")).unwrap();
    std::fs::copy(english_tokenizer(), models.join("vocab/english/tokenizer.json")).unwrap();
    let out = dir.join("out");
    let c = convert_with_models_dir(&fixtures().join("tiny_random_hf"), &out, None, &models).unwrap();
    assert_eq!(c.special_tokens.eot, 50256);
    assert_eq!(
        std::fs::read(out.join("tokenizer.json")).unwrap(),
        std::fs::read(english_tokenizer()).unwrap()
    );
}

/// openai-whisper's `sinusoids(length, channels)`.
fn sinusoids(length: usize, channels: usize) -> Vec<f32> {
    let half = channels / 2;
    let inc = (10000f64).ln() / (half as f64 - 1.0);
    let mut out = vec![0f32; length * channels];
    for t in 0..length {
        for i in 0..half {
            let x = t as f64 * (-inc * i as f64).exp();
            out[t * channels + i] = x.sin() as f32;
            out[t * channels + half + i] = x.cos() as f32;
        }
    }
    out
}

fn check_real(name: &str, want_dims: [usize; 10], multilingual: bool) -> Loaded {
    let src = real_model(name);
    let dir = scratch(&format!("real-{name}"));
    let _cleanup = Cleanup(dir.clone());
    let out = dir.join(name);
    let c = convert_with_models_dir(&src, &out, None, &no_vocab(&dir)).unwrap();
    let loaded = load_output(&out);
    assert_eq!(loaded.config, c);
    assert_eq!(dims(&c), want_dims, "{name}");
    assert_eq!(c.multilingual, multilingual);
    assert_eq!(c.source_format, "ctranslate2");
    // Alignment heads come from CTranslate2's config.json.
    let ct2_config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let want: Vec<[usize; 2]> = serde_json::from_value(ct2_config["alignment_heads"].clone()).unwrap();
    assert_eq!(c.alignment_heads.as_ref(), Some(&want));
    for (n, (dtype, _, _)) in &loaded.tensors {
        assert_eq!(*dtype, Dtype::F16, "{n}: dtype must be kept");
    }
    // The stored encoder positional table is fp16(sinusoids) up to fp32-vs-f64 rounding.
    let (_, shape, data) = &loaded.tensors["encoder.positional_embedding"];
    assert_eq!(shape, &vec![want_dims[1], want_dims[2]]);
    let want = sinusoids(shape[0], shape[1]);
    let got = f16s(data);
    let close = got.iter().zip(&want).filter(|(g, w)| (*g - *w).abs() <= 1e-3).count();
    assert!(
        close as f64 >= 0.99 * want.len() as f64,
        "{name}: only {close}/{} sinusoid entries match",
        want.len()
    );
    loaded
}

#[test]
fn ct2_tiny_en_converts() {
    let m = check_real("tiny.en", [80, 1500, 384, 6, 4, 51864, 448, 384, 6, 4], false);
    let st = &m.config.special_tokens;
    assert_eq!((st.eot, st.sot, st.no_timestamps), (50256, 50257, 50362));
    // Split pieces have the right sizes and are not all zero.
    let (_, shape, data) = &m.tensors["decoder.blocks.3.attn.key.weight"];
    assert_eq!(shape, &vec![384, 384]);
    assert!(f16s(data).iter().any(|&v| v != 0.0));
}

#[test]
fn ct2_base_converts() {
    let m = check_real("base", [80, 1500, 512, 8, 6, 51865, 448, 512, 8, 6], true);
    let st = &m.config.special_tokens;
    assert_eq!((st.eot, st.sot, st.no_timestamps), (50257, 50258, 50363));
}

// ---------------------------------------------------------------------------------------------
// A synthetic CTranslate2 model.bin built from the fixture (the format of CTranslate2's
// ModelSpec._serialize), to check the fused-projection splitting bit for bit.

struct Ct2Var {
    name: String,
    shape: Vec<usize>,
    dtype: u8,
    data: Vec<u8>,
}

fn ct2_string(out: &mut Vec<u8>, s: &str) {
    out.extend(((s.len() + 1) as u16).to_le_bytes());
    out.extend(s.as_bytes());
    out.push(0);
}

fn ct2_model_bin(vars: &mut [Ct2Var], aliases: &[(&str, &str)]) -> Vec<u8> {
    vars.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Vec::new();
    out.extend(6u32.to_le_bytes());
    ct2_string(&mut out, "WhisperSpec");
    out.extend(3u32.to_le_bytes());
    out.extend((vars.len() as u32).to_le_bytes());
    for v in vars.iter() {
        ct2_string(&mut out, &v.name);
        out.push(v.shape.len() as u8);
        for d in &v.shape {
            out.extend((*d as u32).to_le_bytes());
        }
        out.push(v.dtype);
        out.extend((v.data.len() as u32).to_le_bytes());
        out.extend(&v.data);
    }
    out.extend((aliases.len() as u32).to_le_bytes());
    for (a, t) in aliases {
        ct2_string(&mut out, a);
        ct2_string(&mut out, t);
    }
    out
}

/// CTranslate2 variables for a canonical fp16 model (as its Whisper converter lays them out).
fn to_ct2_vars(t: &BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>, n_layers: usize, key_bias: f32) -> Vec<Ct2Var> {
    let get = |n: &str| t[n].2.clone();
    let shape = |n: &str| t[n].1.clone();
    let var = |name: String, shape: Vec<usize>, data: Vec<u8>| Ct2Var {
        name,
        shape,
        dtype: 4,
        data,
    };
    let key_bias_bytes = |n: usize| half::f16::from_f32(key_bias).to_le_bytes().repeat(n);
    let mut v = Vec::new();
    let plain = [
        ("encoder/conv1/weight", "encoder.conv1.weight"),
        ("encoder/conv1/bias", "encoder.conv1.bias"),
        ("encoder/conv2/weight", "encoder.conv2.weight"),
        ("encoder/conv2/bias", "encoder.conv2.bias"),
        ("encoder/position_encodings/encodings", "encoder.positional_embedding"),
        ("encoder/layer_norm/gamma", "encoder.ln_post.weight"),
        ("encoder/layer_norm/beta", "encoder.ln_post.bias"),
        ("decoder/embeddings/weight", "decoder.token_embedding.weight"),
        ("decoder/position_encodings/encodings", "decoder.positional_embedding"),
        ("decoder/layer_norm/gamma", "decoder.ln.weight"),
        ("decoder/layer_norm/beta", "decoder.ln.bias"),
    ];
    for (c, o) in plain {
        v.push(var(c.into(), shape(o), get(o)));
    }
    for side in ["encoder", "decoder"] {
        for i in 0..n_layers {
            let c = format!("{side}/layer_{i}");
            let o = format!("{side}.blocks.{i}");
            let n = shape(&format!("{o}.attn.query.bias"))[0];
            let mut w = get(&format!("{o}.attn.query.weight"));
            w.extend(get(&format!("{o}.attn.key.weight")));
            w.extend(get(&format!("{o}.attn.value.weight")));
            v.push(var(format!("{c}/self_attention/linear_0/weight"), vec![3 * n, n], w));
            let mut b = get(&format!("{o}.attn.query.bias"));
            b.extend(key_bias_bytes(n));
            b.extend(get(&format!("{o}.attn.value.bias")));
            v.push(var(format!("{c}/self_attention/linear_0/bias"), vec![3 * n], b));
            let mut pairs = vec![
                ("self_attention/linear_1/weight", "attn.out.weight"),
                ("self_attention/linear_1/bias", "attn.out.bias"),
                ("self_attention/layer_norm/gamma", "attn_ln.weight"),
                ("self_attention/layer_norm/beta", "attn_ln.bias"),
                ("ffn/linear_0/weight", "mlp.0.weight"),
                ("ffn/linear_0/bias", "mlp.0.bias"),
                ("ffn/linear_1/weight", "mlp.2.weight"),
                ("ffn/linear_1/bias", "mlp.2.bias"),
                ("ffn/layer_norm/gamma", "mlp_ln.weight"),
                ("ffn/layer_norm/beta", "mlp_ln.bias"),
            ];
            if side == "decoder" {
                pairs.extend([
                    ("attention/linear_0/weight", "cross_attn.query.weight"),
                    ("attention/linear_0/bias", "cross_attn.query.bias"),
                    ("attention/linear_2/weight", "cross_attn.out.weight"),
                    ("attention/linear_2/bias", "cross_attn.out.bias"),
                    ("attention/layer_norm/gamma", "cross_attn_ln.weight"),
                    ("attention/layer_norm/beta", "cross_attn_ln.bias"),
                ]);
                let mut w = get(&format!("{o}.cross_attn.key.weight"));
                w.extend(get(&format!("{o}.cross_attn.value.weight")));
                v.push(var(format!("{c}/attention/linear_1/weight"), vec![2 * n, n], w));
                let mut b = key_bias_bytes(n);
                b.extend(get(&format!("{o}.cross_attn.value.bias")));
                v.push(var(format!("{c}/attention/linear_1/bias"), vec![2 * n], b));
            }
            for (cn, on) in pairs {
                let on = format!("{o}.{on}");
                v.push(var(format!("{c}/{cn}"), shape(&on), get(&on)));
            }
        }
        v.push(Ct2Var {
            name: format!("{side}/num_heads"),
            shape: vec![],
            dtype: 2,
            data: 2i16.to_le_bytes().to_vec(),
        });
    }
    v.push(Ct2Var {
        name: "decoder/scale_embeddings".into(),
        shape: vec![],
        dtype: 1,
        data: vec![0],
    });
    v
}

fn write_ct2_dir(dir: &Path, vars: &mut [Ct2Var]) {
    std::fs::create_dir_all(dir).unwrap();
    let bin = ct2_model_bin(vars, &[("decoder/projection/weight", "decoder/embeddings/weight")]);
    std::fs::write(dir.join("model.bin"), bin).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"alignment_heads": [[1, 0], [1, 1]], "lang_ids": []}"#,
    )
    .unwrap();
    std::fs::copy(english_tokenizer(), dir.join("tokenizer.json")).unwrap();
}

#[test]
fn synthetic_ct2_splits_fused_projections_exactly() {
    let dir = scratch("synthetic-ct2");
    let _cleanup = Cleanup(dir.clone());
    let empty = no_vocab(&dir);
    let pt_out = dir.join("from-pt");
    convert_with_models_dir(
        &fixtures().join("tiny_random_openai.pt"),
        &pt_out,
        Some(&english_tokenizer()),
        &empty,
    )
    .unwrap();
    let pt = load_output(&pt_out);

    let ct2_dir = dir.join("ct2");
    write_ct2_dir(&ct2_dir, &mut to_ct2_vars(&pt.tensors, 2, 0.0));
    let out = dir.join("from-ct2");
    let c = convert_with_models_dir(&ct2_dir, &out, None, &empty).unwrap();
    assert_eq!(dims(&c), FIXTURE_DIMS);
    assert_eq!(c.alignment_heads, Some(vec![[1, 0], [1, 1]]));
    let ct2 = load_output(&out);
    assert_eq!(
        ct2.tensors.keys().collect::<Vec<_>>(),
        pt.tensors.keys().collect::<Vec<_>>()
    );
    for (name, t) in &pt.tensors {
        assert!(
            ct2.tensors[name] == *t,
            "{name}: CTranslate2 conversion differs from the .pt's"
        );
    }

    // A non-zero key bias cannot be dropped silently.
    let bad_dir = dir.join("ct2-key-bias");
    write_ct2_dir(&bad_dir, &mut to_ct2_vars(&pt.tensors, 2, 0.5));
    let err = convert_with_models_dir(&bad_dir, &dir.join("bad-out"), None, &empty).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("key bias") && msg.contains("model.bin"), "{msg}");
    assert!(!dir.join("bad-out").exists());
}

// ---------------------------------------------------------------------------------------------
// Errors: each is an Err whose message names the offending file.

fn expect_err(input: &Path, out: &Path, tokenizer: Option<&Path>, models: &Path, names: &str) -> String {
    let err = convert_with_models_dir(input, out, tokenizer, models).expect_err("convert should fail");
    let msg = err.to_string();
    eprintln!("expected error: {msg}");
    assert!(msg.contains(names), "error should name {names}: {msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
    assert!(!out.exists(), "a failed convert left {}", out.display());
    msg
}

#[test]
fn truncated_model_bin_is_an_error() {
    let dir = scratch("truncated-bin");
    let _cleanup = Cleanup(dir.clone());
    let src = real_model("tiny.en");
    let bin = std::fs::read(src.join("model.bin")).unwrap();
    for cut in [3usize, 40, 1_000_000, bin.len() - 1] {
        let ct2 = dir.join(format!("cut-{cut}"));
        std::fs::create_dir_all(&ct2).unwrap();
        std::fs::write(ct2.join("model.bin"), &bin[..cut]).unwrap();
        std::fs::copy(src.join("config.json"), ct2.join("config.json")).unwrap();
        std::fs::copy(src.join("tokenizer.json"), ct2.join("tokenizer.json")).unwrap();
        let path = ct2.join("model.bin");
        let msg = expect_err(
            &ct2,
            &dir.join("out"),
            None,
            &no_vocab(&dir),
            &path.display().to_string(),
        );
        assert!(msg.contains("truncated"), "{msg}");
    }
}

fn write_zip(path: &Path, entries: &[(&str, &[u8])]) {
    let file = std::fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in entries {
        zip.start_file(*name, opts).unwrap();
        zip.write_all(data).unwrap();
    }
    zip.finish().unwrap();
}

#[test]
fn pickle_with_forbidden_global_is_refused() {
    let dir = scratch("evil-pt");
    let _cleanup = Cleanup(dir.clone());
    // PROTO 2; GLOBAL os.system; BINUNICODE "echo pwned"; TUPLE1; REDUCE; STOP
    let mut pkl = vec![0x80, 2];
    pkl.extend(b"cos\nsystem\n");
    pkl.push(b'X');
    pkl.extend(10u32.to_le_bytes());
    pkl.extend(b"echo pwned");
    pkl.extend([0x85, b'R', b'.']);
    let pt = dir.join("evil.pt");
    write_zip(
        &pt,
        &[
            ("evil/data.pkl", &pkl),
            ("evil/byteorder", b"little"),
            ("evil/version", b"3\n"),
        ],
    );
    let msg = expect_err(
        &pt,
        &dir.join("out"),
        Some(&english_tokenizer()),
        &no_vocab(&dir),
        &pt.display().to_string(),
    );
    assert!(msg.contains("forbidden global 'os.system'"), "{msg}");

    // A pickle that stops half-way is an error too.
    let bad = dir.join("bad.pt");
    write_zip(&bad, &[("bad/data.pkl", &pkl[..8]), ("bad/byteorder", b"little")]);
    let msg = expect_err(
        &bad,
        &dir.join("out"),
        Some(&english_tokenizer()),
        &no_vocab(&dir),
        &bad.display().to_string(),
    );
    assert!(msg.contains("pickle"), "{msg}");
}

#[test]
fn truncated_pt_zip_is_an_error() {
    let dir = scratch("truncated-pt");
    let _cleanup = Cleanup(dir.clone());
    let bytes = std::fs::read(fixtures().join("tiny_random_openai.pt")).unwrap();
    for cut in [100usize, bytes.len() / 2, bytes.len() - 30] {
        let pt = dir.join(format!("cut-{cut}.pt"));
        std::fs::write(&pt, &bytes[..cut]).unwrap();
        expect_err(
            &pt,
            &dir.join("out"),
            Some(&english_tokenizer()),
            &no_vocab(&dir),
            &pt.display().to_string(),
        );
    }
}

#[test]
fn missing_tokenizer_says_how_to_get_one() {
    let dir = scratch("no-tokenizer");
    let _cleanup = Cleanup(dir.clone());
    let hf = fixtures().join("tiny_random_hf");
    let msg = expect_err(&hf, &dir.join("out"), None, &no_vocab(&dir), &hf.display().to_string());
    assert!(
        msg.contains("--tokenizer") && msg.contains("fetch-model.sh tiny.en"),
        "{msg}"
    );
    let missing = dir.join("nope.json");
    expect_err(
        &hf,
        &dir.join("out"),
        Some(&missing),
        &no_vocab(&dir),
        &missing.display().to_string(),
    );
}

#[test]
fn wrong_shape_is_an_error() {
    let dir = scratch("wrong-shape");
    let _cleanup = Cleanup(dir.clone());
    let src = fixtures().join("tiny_random_hf");
    let hf = dir.join("hf");
    std::fs::create_dir_all(&hf).unwrap();
    std::fs::copy(src.join("config.json"), hf.join("config.json")).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let victim = "model.encoder.layers.0.fc1.weight";
    let views: Vec<(String, safetensors::tensor::TensorView)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            if n == victim {
                let s = v.shape().to_vec();
                let t = safetensors::tensor::TensorView::new(v.dtype(), vec![s[1], s[0]], v.data()).unwrap();
                (n, t)
            } else {
                (n, v)
            }
        })
        .collect();
    let file = hf.join("model.safetensors");
    safetensors::tensor::serialize_to_file(views, None, &file).unwrap();
    let msg = expect_err(
        &hf,
        &dir.join("out"),
        Some(&english_tokenizer()),
        &no_vocab(&dir),
        &file.display().to_string(),
    );
    assert!(
        msg.contains("tensor encoder.blocks.0.mlp.0.weight has shape [64, 256], expected [256, 64]"),
        "{msg}"
    );
}

#[test]
fn not_a_checkpoint_is_an_error() {
    let dir = scratch("not-a-checkpoint");
    let _cleanup = Cleanup(dir.clone());
    let empty = dir.join("empty-dir");
    std::fs::create_dir_all(&empty).unwrap();
    expect_err(
        &empty,
        &dir.join("out"),
        None,
        &no_vocab(&dir),
        &empty.display().to_string(),
    );
    let text = dir.join("notes.txt");
    std::fs::write(&text, "hello").unwrap();
    expect_err(
        &text,
        &dir.join("out"),
        None,
        &no_vocab(&dir),
        &text.display().to_string(),
    );
    let missing = dir.join("missing");
    expect_err(
        &missing,
        &dir.join("out"),
        None,
        &no_vocab(&dir),
        &missing.display().to_string(),
    );
}

#[test]
fn output_is_replaced_only_when_it_is_a_model_dir() {
    let dir = scratch("output");
    let _cleanup = Cleanup(dir.clone());
    let hf = fixtures().join("tiny_random_hf");
    let tok = english_tokenizer();
    let models = no_vocab(&dir);
    // Non-empty foreign directory: refused and left alone.
    let foreign = dir.join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("thesis.tex"), "precious").unwrap();
    let err = convert_with_models_dir(&hf, &foreign, Some(&tok), &models).unwrap_err();
    assert!(err.to_string().contains(&foreign.display().to_string()), "{err}");
    assert_eq!(std::fs::read_to_string(foreign.join("thesis.tex")).unwrap(), "precious");
    // Empty directory, then a previous model directory: both replaced.
    let out = dir.join("model");
    std::fs::create_dir_all(&out).unwrap();
    convert_with_models_dir(&hf, &out, Some(&tok), &models).unwrap();
    std::fs::write(out.join("stale.txt"), "old").unwrap();
    convert_with_models_dir(&fixtures().join("tiny_random_openai.pt"), &out, Some(&tok), &models).unwrap();
    assert!(!out.join("stale.txt").exists());
    assert_eq!(load_output(&out).config.source_format, "openai-pt");
    // No temporary directories are left next to it.
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // A canonical model directory is not an input.
    let err = convert_with_models_dir(&out, &dir.join("again"), Some(&tok), &models).unwrap_err();
    assert!(err.to_string().contains("already a whisper-trt model"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// The restricted unpickler on hostile or damaged input: errors, never panics or crashes.

fn fixture_pickle() -> Vec<u8> {
    use std::io::Read;
    let file = std::fs::File::open(fixtures().join("tiny_random_openai.pt")).unwrap();
    let mut zip = zip::ZipArchive::new(file).unwrap();
    let mut entry = zip.by_name("tiny_random_openai/data.pkl").unwrap();
    let mut buf = Vec::new();
    entry.read_to_end(&mut buf).unwrap();
    buf
}

#[test]
fn damaged_pickles_are_errors() {
    use whisper_trt::checkpoint::pickle::load;
    let pkl = fixture_pickle();
    let root = load(&pkl, "fixture").unwrap();
    assert_eq!(root.get("model_state_dict").unwrap().str_items().unwrap().len(), 89);
    for cut in 0..pkl.len() {
        let err = load(&pkl[..cut], "cut.pkl").unwrap_err().to_string();
        assert!(err.starts_with("cut.pkl: "), "{err}");
    }
    // Deterministic byte flips: any outcome but a panic.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for _ in 0..3000 {
        let mut bad = pkl.clone();
        for _ in 0..3 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x % bad.len() as u64) as usize;
            bad[i] = (x >> 32) as u8;
        }
        let _ = load(&bad, "flipped.pkl");
    }
}

#[test]
fn hostile_pickle_shapes_are_bounded() {
    use whisper_trt::checkpoint::pickle::load;
    // 200k nested 1-tuples: refused instead of overflowing the stack.
    let mut deep = vec![0x80, 2, b'N'];
    deep.extend(std::iter::repeat_n(0x85u8, 200_000));
    deep.push(b'.');
    let err = load(&deep, "deep.pkl").unwrap_err().to_string();
    assert!(err.contains("nested"), "{err}");
    // (x, x) doubled 60 times: shared, not copied (2^60 leaves otherwise).
    let mut laughs = vec![0x80, 2, b'N'];
    for _ in 0..60 {
        laughs.extend([b'2', 0x86]);
    }
    laughs.push(b'.');
    assert!(load(&laughs, "laughs.pkl").is_ok());
    // A dict that contains itself.
    let mut cyc = vec![0x80, 2, b'}', b'q', 0, b'X'];
    cyc.extend(1u32.to_le_bytes());
    cyc.extend([b'a', b'h', 0, b's', b'.']);
    let v = load(&cyc, "cycle.pkl").unwrap();
    assert!(v.get("a").is_some());
}
