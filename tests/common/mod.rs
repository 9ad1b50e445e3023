//! Helpers shared by the integration tests.
#![allow(dead_code)]
use std::path::PathBuf;

/// `../shared` (read-only test data), or `$WHISPER_TRT_SHARED`.
pub fn shared() -> PathBuf {
    std::env::var_os("WHISPER_TRT_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared")))
}

/// The models folder that `scripts/fetch-model.sh` fills, or `$WHISPER_TRT_MODELS`.
pub fn models() -> PathBuf {
    std::env::var_os("WHISPER_TRT_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/models")))
}

/// A fetched model directory; a missing one fails the test with the command that fetches it.
pub fn model_dir(name: &str) -> PathBuf {
    let dir = models().join(name);
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} is missing: run scripts/fetch-model.sh {name}",
        dir.display()
    );
    dir
}

/// A fresh empty directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "whisper-trt-test-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// A shared LibriSpeech utterance by id, from test-clean if it is there, else test-other.
pub fn librispeech(id: &str) -> PathBuf {
    let clean = reference_audio("test-clean", id);
    if clean.is_file() {
        clean
    } else {
        reference_audio("test-other", id)
    }
}

/// The audio file of a line of `reference/<model>/*.jsonl`, by its subset and id.
pub fn reference_audio(subset: &str, id: &str) -> PathBuf {
    let data = shared().join("data");
    match subset {
        "ljspeech" => data.join(format!("ljspeech/wavs/{id}.flac")),
        "smoke" => data.join("whisper/jfk.flac"),
        split => {
            let parts: Vec<&str> = id.split('-').collect();
            data.join(format!("librispeech/LibriSpeech/{split}/{}/{}/{id}.flac", parts[0], parts[1]))
        }
    }
}
