//! Audio in, text out: openai-whisper's `transcribe()` with `temperature=0`,
//! `condition_on_previous_text=False` and `without_timestamps=True`. Windows are independent, so
//! the 30 s windows of many inputs are batched together ([`batch`]).
mod batch;

use crate::backends::Backend;
use crate::decoding::DecodeOptions;
use crate::text::Tokenizer;
use anyhow::Result;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// transcribe()'s defaults: a window whose <|nospeech|> probability is above this, and whose average
/// log-probability is not above `LOGPROB_THRESHOLD`, is taken as silence.
pub const NO_SPEECH_THRESHOLD: f32 = 0.6;
pub const LOGPROB_THRESHOLD: f32 = -1.0;

/// One 30 s window's result.
#[derive(Clone, Debug, Serialize)]
pub struct Segment {
    pub start: f64,
    pub end: f64,
    pub text: String,
    pub tokens: Vec<u32>,
    pub avg_logprob: f32,
    pub no_speech_prob: f32,
}

#[derive(Clone, Debug, Serialize)]
pub struct Transcript {
    pub text: String,
    /// All sampled tokens of all windows, without prompts and end of text.
    pub tokens: Vec<u32>,
    pub language: String,
    pub segments: Vec<Segment>,
    /// Seconds of audio.
    pub duration: f64,
    /// Seconds spent, decoding the file included.
    pub time_taken: f64,
}

/// One input of [`Transcriber::transcribe_many`]: an audio file, or mono 16 kHz samples.
#[derive(Clone, Copy, Debug)]
pub enum Audio<'a> {
    File(&'a Path),
    Samples(&'a [f32]),
}

impl<'a> From<&'a Path> for Audio<'a> {
    fn from(p: &'a Path) -> Self {
        Audio::File(p)
    }
}

impl<'a> From<&'a PathBuf> for Audio<'a> {
    fn from(p: &'a PathBuf) -> Self {
        Audio::File(p)
    }
}

impl<'a> From<&'a [f32]> for Audio<'a> {
    fn from(s: &'a [f32]) -> Self {
        Audio::Samples(s)
    }
}

impl<'a> From<&'a Vec<f32>> for Audio<'a> {
    fn from(s: &'a Vec<f32>) -> Self {
        Audio::Samples(s)
    }
}

pub struct Transcriber<B: Backend> {
    pub backend: B,
    pub tokenizer: Tokenizer,
    pub options: DecodeOptions,
    /// Seconds spent per phase so far (`transcribe --stats`).
    pub times: std::sync::Mutex<PhaseTimes>,
}

/// Wall seconds per phase of the batched transcription. Audio loading runs on loader threads
/// (its seconds add up over threads and overlap the GPU work); encoding and decoding run one
/// after the other on the caller's thread.
#[derive(Clone, Copy, Debug, Default)]
pub struct PhaseTimes {
    /// Decoding, resampling and log-mel of the inputs.
    pub load_s: f64,
    /// The encoder (and, on the GPU, the cross-attention K/V) of every window.
    pub encode_s: f64,
    /// Language detection and decoding of every window.
    pub decode_s: f64,
}

impl<B: Backend> Transcriber<B> {
    pub fn new(backend: B, tokenizer: Tokenizer, options: DecodeOptions) -> Self {
        Transcriber { backend, tokenizer, options, times: Default::default() }
    }

    /// The seconds per phase so far.
    pub fn phase_times(&self) -> PhaseTimes {
        self.times.lock().map(|t| *t).unwrap_or_default()
    }

    fn add_time(&self, f: impl FnOnce(&mut PhaseTimes)) {
        if let Ok(mut t) = self.times.lock() {
            f(&mut t);
        }
    }

    /// [`Transcriber::transcribe_many`] over files.
    pub fn transcribe_files<P: AsRef<Path>>(
        &self,
        paths: &[P],
        max_batch: usize,
        on_done: impl FnMut(usize, Result<Transcript>) -> Result<()>,
    ) -> Result<()> {
        let inputs: Vec<Audio<'_>> = paths.iter().map(|p| Audio::File(p.as_ref())).collect();
        self.transcribe_many(&inputs, max_batch, on_done)
    }

    /// The batch size (windows at once) this backend runs best with: the engine's max batch on
    /// the GPU, 8 on the CPU.
    pub fn default_batch(&self) -> usize {
        self.backend.max_batch().unwrap_or(8)
    }

    /// Transcribes one file (its windows batched together, up to [`Transcriber::default_batch`]).
    pub fn transcribe_file(&self, path: &Path) -> Result<Transcript> {
        self.transcribe_one(Audio::File(path))
    }

    /// Transcribes mono 16 kHz samples.
    pub fn transcribe_samples(&self, samples: &[f32]) -> Result<Transcript> {
        self.transcribe_one(Audio::Samples(samples))
    }

    fn transcribe_one(&self, input: Audio<'_>) -> Result<Transcript> {
        let mut out = None;
        self.transcribe_many(&[input], self.default_batch(), |_, r| {
            out = Some(r);
            Ok(())
        })?;
        out.unwrap_or_else(|| Err(anyhow::anyhow!("internal: no transcript")))
    }
}
