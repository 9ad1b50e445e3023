//! Where fetched models and runtime assets live.
use std::path::PathBuf;

/// The models folder `scripts/fetch-model.sh` fills: `$WHISPER_TRT_MODELS`, else `./models` when it
/// exists, else `models/` of the checkout the binary was built in (`<repo>/target/<profile>/whisper-trt`).
pub fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("WHISPER_TRT_MODELS") {
        return PathBuf::from(dir);
    }
    let local = PathBuf::from("models");
    if local.is_dir() {
        return local;
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(repo) = exe.parent().and_then(|p| p.parent()).and_then(|p| p.parent()) {
            let dir = repo.join("models");
            if dir.is_dir() {
                return dir;
            }
        }
    }
    local
}

/// The model `transcribe` uses when no `--model` is given.
pub fn default_model() -> PathBuf {
    models_dir().join("tiny.en")
}

/// openai-whisper's British-to-American spelling table, installed by `scripts/fetch-model.sh`.
pub fn english_spelling() -> PathBuf {
    models_dir().join("assets").join("english.json")
}

/// The shared test data folder (LibriSpeech clips and transcripts): `$WHISPER_TRT_SHARED`, else
/// `../shared`.
pub fn shared_dir() -> PathBuf {
    std::env::var_os("WHISPER_TRT_SHARED").map_or_else(|| PathBuf::from("../shared"), PathBuf::from)
}
