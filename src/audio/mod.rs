//! Audio front end: decode any supported file to mono 16 kHz f32, and the log-mel spectrogram.
//!
//! [`load_audio`] mimics openai-whisper's `load_audio` (ffmpeg to mono 16 kHz s16, then /32768);
//! [`log_mel_spectrogram`] and [`transcribe_windows`] port `whisper/audio.py` and the window
//! slicing of `whisper/transcribe.py`.

mod decode;
mod mel;
mod resample;

use std::path::Path;

use anyhow::{anyhow, Result};

pub use mel::{log_mel_spectrogram, mel_filters, transcribe_windows, Mel, Window};

/// Sample rate of every model input.
pub const SAMPLE_RATE: u32 = 16000;
/// STFT window length.
pub const N_FFT: usize = 400;
/// STFT hop: 10 ms at 16 kHz.
pub const HOP_LENGTH: usize = 160;
/// Frames in one 30 s model window.
pub const N_FRAMES: usize = 3000;
/// Samples in one 30 s model window.
pub const N_SAMPLES: usize = 480000;

/// Decode any supported file (wav, flac, mp3, ogg/vorbis) into mono 16 kHz f32 in [-1, 1].
///
/// Channels are averaged, other rates are resampled with a windowed-sinc filter, and the result
/// is rounded to int16 and divided by 32768, as ffmpeg's s16 output is in openai-whisper.
/// 16 kHz input is not resampled. A truncated lossless file (fewer samples than its header
/// declares) is an error. Errors name the file.
pub fn load_audio(path: &Path) -> Result<Vec<f32>> {
    // One self-contained line: the file name and what is wrong, whether shown with {} or {:#}.
    let fail = |e: anyhow::Error| anyhow!("cannot load audio {}: {e:#}", path.display());
    let decoded = decode::decode_file(path).map_err(fail)?;
    if decoded.samples.is_empty() {
        return Err(fail(anyhow!("the file contains no audio samples")));
    }
    let mut samples =
        resample::resample_to_16k(decoded.samples, decoded.sample_rate).map_err(fail)?;
    if samples.is_empty() {
        return Err(fail(anyhow!(
            "the file contains no audio samples after resampling to 16 kHz"
        )));
    }
    resample::quantize_s16(&mut samples);
    Ok(samples)
}
