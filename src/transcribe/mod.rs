//! Audio in, text out: openai-whisper's `transcribe()` with `temperature=0`,
//! `condition_on_previous_text=False` and `without_timestamps=True`, window by window.
use crate::audio;
use crate::backends::Backend;
use crate::decoding::{DecodeOptions, Decoder};
use crate::text::Tokenizer;
use anyhow::{Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Instant;

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
}

impl<B: Backend> Transcriber<B> {
    pub fn new(backend: B, tokenizer: Tokenizer, options: DecodeOptions) -> Self {
        Transcriber { backend, tokenizer, options }
    }

    /// Transcribes many inputs, batching 30 s windows across them: up to `max_batch` windows go
    /// through the encoder and the decoder together. `on_done(i, result)` is called once per input,
    /// in input order, as soon as input `i` (and every input before it) is done; a bad input is
    /// reported as its error and the others go on. An error returned by `on_done` stops the work
    /// and is returned. Results are exactly those of [`Transcriber::transcribe_file`] one by one.
    pub fn transcribe_many(
        &self,
        inputs: &[Audio<'_>],
        max_batch: usize,
        mut on_done: impl FnMut(usize, Result<Transcript>) -> Result<()>,
    ) -> Result<()> {
        let _ = max_batch;
        for (i, input) in inputs.iter().enumerate() {
            let r = match *input {
                Audio::File(p) => self.transcribe_file(p),
                Audio::Samples(s) => self.transcribe_samples(s),
            };
            on_done(i, r)?;
        }
        Ok(())
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

    pub fn transcribe_file(&self, path: &Path) -> Result<Transcript> {
        let start = Instant::now();
        let samples = audio::load_audio(path)?;
        let mut t = self.transcribe_samples(&samples).with_context(|| path.display().to_string())?;
        t.time_taken = start.elapsed().as_secs_f64();
        Ok(t)
    }

    /// Transcribes mono 16 kHz samples.
    pub fn transcribe_samples(&self, samples: &[f32]) -> Result<Transcript> {
        let start = Instant::now();
        let config = self.backend.config();
        let windows = audio::transcribe_windows(samples, config.n_mels)?;
        let mut options = self.options.clone();
        let mut decoder: Option<Decoder> = None;
        let mut segments = Vec::new();
        let mut tokens = Vec::new();
        for window in &windows {
            let features = self.backend.encode(&window.mel.data)?;
            // transcribe() detects the language once, on the first window; the prompt and rules
            // then stay the same for every window.
            if decoder.is_none() {
                if options.language.is_none() {
                    options.language = Some(if config.multilingual {
                        let mut session = self.backend.session(&features, 1)?;
                        Decoder::detect_language(&self.tokenizer, session.as_mut())?
                    } else {
                        "en".to_string()
                    });
                }
                decoder = Some(Decoder::new(config, &self.tokenizer, &options)?);
            }
            let decoder = decoder.as_ref().expect("set above");
            let mut session = self.backend.session(&features, decoder.n_seq())?;
            let result = decoder.run(session.as_mut())?;
            let start_s = window.start_frame as f64 * audio::HOP_LENGTH as f64 / audio::SAMPLE_RATE as f64;
            let end_s = (window.start_frame + window.content_frames) as f64 * audio::HOP_LENGTH as f64
                / audio::SAMPLE_RATE as f64;
            // transcribe() skips a window that looks like silence.
            let silent = result.no_speech_prob > NO_SPEECH_THRESHOLD && result.avg_logprob <= LOGPROB_THRESHOLD;
            let seg_tokens = if silent { vec![] } else { result.tokens.clone() };
            let text = self.tokenizer.decode(&seg_tokens)?;
            tokens.extend(&seg_tokens);
            segments.push(Segment {
                start: start_s,
                end: end_s,
                text,
                tokens: seg_tokens,
                avg_logprob: result.avg_logprob,
                no_speech_prob: result.no_speech_prob,
            });
        }
        Ok(Transcript {
            text: self.tokenizer.decode(&tokens)?,
            tokens,
            language: options.language.unwrap_or_default(),
            segments,
            duration: samples.len() as f64 / audio::SAMPLE_RATE as f64,
            time_taken: start.elapsed().as_secs_f64(),
        })
    }
}
