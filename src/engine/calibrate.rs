//! Calibration of the int8 KV cache (`build --int8-kv`): the model runs with fp16 keys and
//! values on calibration audio while the backend records the largest |K| and |V| per (kind,
//! layer, head) (see [`crate::kv_quant`]); this module finds the audio and drives the model.
//!
//! Each file gives its first 30 s window, as transcribe would see it; the model decodes it
//! greedily from the English transcription prompt (plain argmax, until end of text or
//! [`CALIB_TOKENS`] tokens), so the self-attention cache sees the keys and values of real
//! transcripts. The decoding rules (suppressed tokens, timestamps) are left out: they change
//! which token is picked, not the range of the keys and values.
use crate::backends::Backend;
use crate::model::ModelConfig;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Most tokens decoded per calibration window.
pub const CALIB_TOKENS: usize = 96;

const AUDIO_EXTENSIONS: [&str; 6] = ["flac", "wav", "mp3", "ogg", "m4a", "webm"];

/// The default calibration audio: the shared LibriSpeech clips (`$WHISPER_TRT_SHARED`, else
/// `../shared`), or a clear error when they are not there.
pub fn default_dir() -> Result<PathBuf> {
    let dir = crate::paths::shared_dir().join("data").join("librispeech");
    if !dir.is_dir() {
        bail!(
            "--int8-kv needs calibration audio: {} not found; pass --calib DIR (any folder of audio files)",
            dir.display()
        );
    }
    Ok(dir)
}

/// The first `max` audio files under `dir` (searched recursively, in path order).
pub fn audio_files(dir: &Path, max: usize) -> Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        bail!("{}: calibration folder not found", dir.display());
    }
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).with_context(|| format!("{}: cannot read calibration folder", d.display()))?;
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().and_then(|x| x.to_str()).is_some_and(|x| AUDIO_EXTENSIONS.contains(&x.to_ascii_lowercase().as_str())) {
                files.push(p);
            }
        }
    }
    files.sort();
    files.truncate(max);
    if files.is_empty() {
        bail!("{}: no audio files ({}) to calibrate on", dir.display(), AUDIO_EXTENSIONS.join(", "));
    }
    Ok(files)
}

/// The first 30 s window of each file's log-mel, `[n_mels][3000]`.
pub fn windows(files: &[PathBuf], n_mels: usize) -> Result<Vec<Vec<f32>>> {
    files
        .iter()
        .map(|f| {
            let samples = crate::audio::load_audio(f)?;
            let w = crate::audio::transcribe_windows(&samples, n_mels).with_context(|| format!("{}: calibration audio", f.display()))?;
            Ok(w.into_iter().next().map(|w| w.mel.data).unwrap_or_default())
        })
        .collect()
}

/// Runs `model` over the calibration windows: encoder, cross K/V, then greedy argmax decoding
/// from the English transcription prompt. The backend records what it was told to record.
/// Returns the number of tokens decoded.
pub fn run<B: Backend>(model: &B, mels: &[Vec<f32>]) -> Result<usize> {
    let c = model.config();
    let prompt = crate::bench::workload::prompt(c)?;
    let eot = c.special_tokens.eot;
    let max_tokens = CALIB_TOKENS.min(c.n_text_ctx - prompt.len());
    let mut decoded = 0;
    for mel in mels {
        let features = model.encode(mel)?;
        let mut session = model.session(&features, 1)?;
        let mut feed = prompt.clone();
        for _ in 0..max_tokens {
            let logits = session.forward(&[feed.as_slice()])?;
            let last = &logits[logits.len() - c.n_vocab..];
            let next = crate::decoding::greedy::argmax(last) as u32;
            decoded += 1;
            if next == eot {
                break;
            }
            feed = vec![next];
        }
    }
    Ok(decoded)
}

/// What a calibration used, for the build's report.
pub fn describe(files: &[PathBuf], c: &ModelConfig) -> String {
    format!("{} files, first 30 s window each, greedy up to {} tokens ({} decoder layers x {} heads)", files.len(), CALIB_TOKENS, c.n_text_layer, c.n_text_head)
}
