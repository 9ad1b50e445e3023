//! The binary end to end: jfk.flac, output files, and bad input giving one clear error line,
//! a non-zero exit and no panic.
mod common;
use std::path::Path;
use std::process::{Command, Output};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_whisper-trt"));
    c.env("WHISPER_TRT_MODELS", common::models());
    c
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("run whisper-trt")
}

/// The run failed with exactly one line on stderr, naming `name`, and no panic.
fn assert_clean_failure(out: &Output, name: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "exit status {:?}, stderr {stderr}", out.status);
    assert_eq!(out.status.code(), Some(1), "stderr {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // Without a GPU engine, `--device auto` adds one "note:" line saying it runs on the CPU.
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("note: ")).collect();
    assert!(stderr.lines().count() - lines.len() <= 1, "{stderr}");
    assert_eq!(lines.len(), 1, "expected one error line, got {stderr:?}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(lines[0].contains(name), "error does not name {name}: {stderr}");
    stderr
}

fn model(name: &str) -> String {
    common::model_dir(name).display().to_string()
}

#[test]
fn jfk_with_default_model() {
    let jfk = common::shared().join("data/whisper/jfk.flac");
    let out = run(&["transcribe", jfk.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "And so my fellow Americans ask not what your country can do for you ask what you can do for your country."
    );
}

/// `--stats`: one line on stderr with the phases' seconds (on the CPU: no device memory).
#[test]
fn stats_line() {
    let jfk = common::shared().join("data/whisper/jfk.flac");
    let out = run(&["transcribe", jfk.to_str().unwrap(), "--device", "cpu", "--stats"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let line = stderr.lines().find(|l| l.starts_with("stats: ")).unwrap_or_else(|| panic!("no stats line: {stderr}"));
    assert!(line.contains("1 files") && line.contains("cpu backend") && line.contains("encoder") && line.contains("decoder"), "{line}");
    // The phases took time: the encoder of one window is not free.
    let enc: f64 = line.split("encoder ").nth(1).and_then(|s| s.split(' ').next()).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    assert!(enc > 0.0, "{line}");
}

#[test]
fn json_output_file_with_run_alias() {
    let dir = common::temp_dir("cli-json");
    let jfk = common::shared().join("data/whisper/jfk.flac");
    let out = run(&[
        "run",
        jfk.to_str().unwrap(),
        "--model",
        &model("base"),
        "--language",
        "en",
        "--output-format",
        "json",
        "--output-dir",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("jfk.json")).unwrap()).unwrap();
    assert_eq!(
        v["text"].as_str().unwrap().trim(),
        "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country."
    );
    assert!(v["tokens"].as_array().unwrap().len() > 10);
    assert!(v["time_taken"].as_f64().unwrap() > 0.0);
    // Nothing else (no temporary file) is left in the output directory.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
}

fn temp_file(tag: &str, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let path = common::temp_dir(tag).join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn missing_audio_file() {
    let out = run(&["transcribe", "/nonexistent/nothing-here.wav"]);
    assert_clean_failure(&out, "nothing-here.wav");
}

#[test]
fn not_audio() {
    let path = temp_file("cli-notaudio", "notes.wav", b"this is not audio at all, just text\n");
    assert_clean_failure(&run(&["transcribe", path.to_str().unwrap()]), "notes.wav");
}

#[test]
fn truncated_flac() {
    let src = common::shared().join("data/librispeech/LibriSpeech/test-clean/1089/134686/1089-134686-0000.flac");
    let bytes = std::fs::read(src).unwrap();
    let path = temp_file("cli-trunc", "cut.flac", &bytes[..bytes.len() / 2]);
    assert_clean_failure(&run(&["transcribe", path.to_str().unwrap()]), "cut.flac");
}

#[test]
fn zero_length_audio() {
    let dir = common::temp_dir("cli-empty");
    let path = dir.join("empty.wav");
    let spec = hound::WavSpec { channels: 1, sample_rate: 16000, bits_per_sample: 16, sample_format: hound::SampleFormat::Int };
    hound::WavWriter::create(&path, spec).unwrap().finalize().unwrap();
    assert_clean_failure(&run(&["transcribe", path.to_str().unwrap()]), "empty.wav");
}

#[test]
fn failed_file_leaves_no_output_and_others_still_run() {
    let dir = common::temp_dir("cli-mixed");
    let bad = temp_file("cli-mixed-in", "bad.wav", b"RIFF....garbage");
    let jfk = common::shared().join("data/whisper/jfk.flac");
    let out = run(&["transcribe", bad.to_str().unwrap(), jfk.to_str().unwrap(), "-o", dir.to_str().unwrap()]);
    assert_clean_failure(&out, "bad.wav");
    assert!(dir.join("jfk.txt").is_file());
    assert!(!dir.join("bad.txt").exists());
}

fn convert_fails(input: &Path, extra: &[&str], name: &str) -> String {
    let outdir = common::temp_dir("cli-convert").join("out");
    let mut args = vec!["convert", input.to_str().unwrap(), "--output", outdir.to_str().unwrap()];
    args.extend(extra);
    let out = bin().env("WHISPER_TRT_MODELS", common::temp_dir("cli-novocab")).args(&args).output().unwrap();
    let msg = assert_clean_failure(&out, name);
    assert!(!outdir.exists(), "a failed convert left {}", outdir.display());
    msg
}

#[test]
fn truncated_model_bin() {
    let src = common::models().join("src/tiny.en");
    let dir = common::temp_dir("cli-ct2").join("tiny");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let bytes = std::fs::read(src.join("model.bin")).unwrap();
    std::fs::write(dir.join("model.bin"), &bytes[..bytes.len() / 3]).unwrap();
    convert_fails(&dir, &[], "model.bin");
}

#[test]
fn pt_with_forbidden_global() {
    // A torch.save-style zip whose pickle asks for os.system: PROTO 2, GLOBAL, arg, TUPLE1, REDUCE, STOP.
    let mut pickle = vec![0x80, 2];
    pickle.extend(b"cos\nsystem\n");
    pickle.push(b'X');
    pickle.extend(4u32.to_le_bytes());
    pickle.extend(b"echo");
    pickle.extend([0x85, b'R', b'.']);
    let path = common::temp_dir("cli-pt").join("evil.pt");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("evil/data.pkl", opts).unwrap();
    std::io::Write::write_all(&mut zip, &pickle).unwrap();
    zip.finish().unwrap();
    let msg = convert_fails(&path, &[], "evil.pt");
    assert!(msg.contains("os.system"), "{msg}");
}

#[test]
fn missing_tokenizer() {
    let pt = common::shared().join("data/fixtures/tiny_random_openai.pt");
    let msg = convert_fails(&pt, &[], "tiny_random_openai.pt");
    assert!(msg.contains("--tokenizer") && msg.contains("fetch-model.sh"), "{msg}");
}

#[test]
fn wrong_shapes_in_a_model_dir() {
    // A converted model whose config claims more mel bins than the weights have.
    let dir = common::temp_dir("cli-shape").join("m");
    let src = common::model_dir("tiny.en");
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let config = std::fs::read_to_string(src.join("config.json")).unwrap().replace("\"n_mels\": 80", "\"n_mels\": 128");
    std::fs::write(dir.join("config.json"), config).unwrap();
    let jfk = common::shared().join("data/whisper/jfk.flac");
    let out = run(&["transcribe", jfk.to_str().unwrap(), "--model", dir.to_str().unwrap()]);
    let msg = assert_clean_failure(&out, "model.safetensors");
    assert!(msg.contains("encoder.conv1.weight"), "{msg}");
}

#[test]
fn missing_model_dir() {
    let out = run(&["transcribe", "x.wav", "--model", "/nonexistent/model-dir"]);
    assert_clean_failure(&out, "/nonexistent/model-dir");
}

/// On a machine without CUDA (CI), auto falls back to the CPU and says so once, and
/// `--device cuda` is one clear error.
#[test]
fn no_gpu_fallback_is_said_once() {
    let jfk = common::shared().join("data/whisper/jfk.flac");
    let j = jfk.to_str().unwrap();
    let out = run(&["transcribe", j, j]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("note: ") && stderr.contains("transcribing on the CPU"), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    let out = run(&["transcribe", j, "--device", "cuda"]);
    assert_clean_failure(&out, "CUDA");
    let out = run(&["bench", "--synthetic", "tiny"]);
    assert_clean_failure(&out, "bench needs a CUDA GPU");
}
