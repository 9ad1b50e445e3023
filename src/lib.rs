//! whisper-trt: Whisper checkpoints into inference engines, and the code that runs them.
//!
//! Module map (one concern each):
//! - [`checkpoint`]: readers for CTranslate2, OpenAI `.pt` and Hugging Face checkpoints, and the
//!   writer of the canonical model directory (`convert`).
//! - [`audio`]: decoding, resampling to 16 kHz mono, log-mel spectrogram.
//! - [`text`]: tokenizer, special tokens, English text normalizer, WER.
//! - [`model`]: model configuration and canonical weights.
//! - [`backends`]: the compute backends (`cpu` is the f32 reference).
//! - [`decoding`]: openai-whisper's decoding rules, greedy and beam search.
//! - [`kv_quant`]: the int8 KV cache's scales and calibration statistics.
//! - [`quant`]: weight-only quantization schemes (int8 per channel, int4 per group of 128).
//! - [`transcribe`]: audio file in, text out.
//! - [`cli`]: the command line.

pub mod audio;
pub mod backends;
pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod decoding;
pub mod engine;
pub mod eval;
pub mod model;
pub mod paths;
pub mod kv_quant;
pub mod quant;
pub mod text;
pub mod transcribe;
