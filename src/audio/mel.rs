//! The log-mel spectrogram exactly as openai-whisper computes it, the slaney mel filterbank
//! (as librosa builds it), and the 30 s model windows of `transcribe()`.

use std::sync::{Arc, OnceLock};

use anyhow::{bail, Result};
use rayon::prelude::*;
use realfft::{RealFftPlanner, RealToComplex};

use super::{HOP_LENGTH, N_FFT, N_FRAMES, N_SAMPLES, SAMPLE_RATE};

const N_BINS: usize = N_FFT / 2 + 1;
/// Frames per rayon task: large enough to amortise the per-task buffers.
const FRAMES_PER_TASK: usize = 250;

/// Log-mel as a row-major `[n_mels][n_frames]` f32 array.
#[derive(Debug, Clone, PartialEq)]
pub struct Mel {
    pub n_mels: usize,
    pub n_frames: usize,
    pub data: Vec<f32>,
}

impl Mel {
    /// Row `m` (one mel bin over all frames).
    pub fn row(&self, m: usize) -> &[f32] {
        &self.data[m * self.n_frames..(m + 1) * self.n_frames]
    }
}

/// One 30 s model input window as openai-whisper's `transcribe()` builds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    /// `n_mels x N_FRAMES`; columns from `content_frames` on are 0.0 (padding in the mel domain).
    pub mel: Mel,
    /// First frame of this window in the whole-audio spectrogram (10 ms per frame).
    pub start_frame: usize,
    /// How many columns of this window hold audio (`N_FRAMES` except in the last window).
    pub content_frames: usize,
}

/// One mel filter restricted to its non-zero FFT bins.
struct SparseFilter {
    first_bin: usize,
    weights: Vec<f32>,
}

struct Filterbank {
    dense: Vec<f32>,
    sparse: Vec<SparseFilter>,
}

fn check_n_mels(n_mels: usize) -> Result<()> {
    if n_mels != 80 && n_mels != 128 {
        bail!("unsupported number of mel bins {n_mels} (Whisper uses 80 or 128)");
    }
    Ok(())
}

fn filterbank(n_mels: usize) -> Result<&'static Filterbank> {
    static MEL_80: OnceLock<Filterbank> = OnceLock::new();
    static MEL_128: OnceLock<Filterbank> = OnceLock::new();
    check_n_mels(n_mels)?;
    let cell = if n_mels == 80 { &MEL_80 } else { &MEL_128 };
    Ok(cell.get_or_init(|| {
        let dense = slaney_filters(n_mels);
        let sparse = dense
            .chunks(N_BINS)
            .map(|row| {
                let first = row.iter().position(|&w| w != 0.0).unwrap_or(0);
                let last = row.iter().rposition(|&w| w != 0.0).map_or(first, |l| l + 1);
                SparseFilter {
                    first_bin: first,
                    weights: row[first..last].to_vec(),
                }
            })
            .collect();
        Filterbank { dense, sparse }
    }))
}

/// The mel filterbank, `[n_mels][N_FFT/2+1]` row-major, for `n_mels` 80 or 128: what
/// `librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels)` returns (slaney mel scale and
/// slaney area normalisation), which is how whisper's `mel_filters.npz` was made.
pub fn mel_filters(n_mels: usize) -> Result<Vec<f32>> {
    Ok(filterbank(n_mels)?.dense.clone())
}

/// librosa's `hz_to_mel(htk=False)`: linear below 1 kHz, logarithmic above.
fn hz_to_mel(hz: f64) -> f64 {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    let min_log_mel = MIN_LOG_HZ / F_SP;
    let logstep = 6.4f64.ln() / 27.0;
    if hz >= MIN_LOG_HZ {
        min_log_mel + (hz / MIN_LOG_HZ).ln() / logstep
    } else {
        hz / F_SP
    }
}

/// librosa's `mel_to_hz(htk=False)`.
fn mel_to_hz(mel: f64) -> f64 {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    let min_log_mel = MIN_LOG_HZ / F_SP;
    let logstep = 6.4f64.ln() / 27.0;
    if mel >= min_log_mel {
        MIN_LOG_HZ * (logstep * (mel - min_log_mel)).exp()
    } else {
        F_SP * mel
    }
}

/// librosa.filters.mel with fmin 0, fmax sr/2, norm "slaney", computed in f64.
fn slaney_filters(n_mels: usize) -> Vec<f32> {
    let sr = SAMPLE_RATE as f64;
    let fft_freqs: Vec<f64> = (0..N_BINS).map(|k| k as f64 * sr / N_FFT as f64).collect();
    // n_mels + 2 points evenly spaced on the mel scale (np.linspace), back in Hz.
    let (mel_lo, mel_hi) = (hz_to_mel(0.0), hz_to_mel(sr / 2.0));
    let n_pts = n_mels + 2;
    let mel_f: Vec<f64> = (0..n_pts)
        .map(|i| {
            let step = (mel_hi - mel_lo) / (n_pts - 1) as f64;
            let m = if i == n_pts - 1 {
                mel_hi
            } else {
                mel_lo + i as f64 * step
            };
            mel_to_hz(m)
        })
        .collect();
    let mut weights = vec![0f32; n_mels * N_BINS];
    for m in 0..n_mels {
        let (f0, f1, f2) = (mel_f[m], mel_f[m + 1], mel_f[m + 2]);
        let enorm = 2.0 / (f2 - f0);
        for (k, &f) in fft_freqs.iter().enumerate() {
            let lower = (f - f0) / (f1 - f0);
            let upper = (f2 - f) / (f2 - f1);
            // librosa stores the triangle in the float32 array, then scales it in float32.
            let tri = lower.min(upper).max(0.0) as f32;
            weights[m * N_BINS + k] = (tri as f64 * enorm) as f32;
        }
    }
    weights
}

fn fft_plan() -> Arc<dyn RealToComplex<f32>> {
    static PLAN: OnceLock<Arc<dyn RealToComplex<f32>>> = OnceLock::new();
    PLAN.get_or_init(|| RealFftPlanner::<f32>::new().plan_fft_forward(N_FFT))
        .clone()
}

/// torch.hann_window(400): the periodic Hann window.
fn hann_window() -> &'static [f32; N_FFT] {
    static WINDOW: OnceLock<[f32; N_FFT]> = OnceLock::new();
    WINDOW.get_or_init(|| {
        let mut w = [0f32; N_FFT];
        for (j, v) in w.iter_mut().enumerate() {
            *v = (0.5 - 0.5 * (2.0 * std::f64::consts::PI * j as f64 / N_FFT as f64).cos()) as f32;
        }
        w
    })
}

/// openai-whisper's `log_mel_spectrogram(audio, n_mels, padding)`: `padding` zero samples are
/// appended, then an STFT (n_fft 400, hop 160, periodic Hann, centred with reflect padding, last
/// frame dropped), power spectrum, mel filters, `log10(max(x, 1e-10))`, floor at the maximum
/// minus 8, and `(x + 4) / 4`. The result has `(len + padding) / 160` frames.
pub fn log_mel_spectrogram(samples: &[f32], n_mels: usize, padding: usize) -> Result<Mel> {
    let filters = filterbank(n_mels)?;
    let total = samples.len() + padding;
    let half = N_FFT / 2;
    if total <= half {
        bail!(
            "audio too short for a spectrogram: {total} samples (with padding), need more than {half}"
        );
    }
    let n_frames = total / HOP_LENGTH;

    // log10 of the mel power spectrum, frame-major [n_frames][n_mels], in parallel chunks of frames.
    let mut frame_major = vec![0f32; n_frames * n_mels];
    let plan = fft_plan();
    let window = hann_window();
    let log_floor = 1e-10f32.log10();
    frame_major
        .par_chunks_mut(FRAMES_PER_TASK * n_mels)
        .enumerate()
        .for_each(|(task, out)| {
            let mut input = plan.make_input_vec();
            let mut spectrum = plan.make_output_vec();
            let mut scratch = plan.make_scratch_vec();
            let mut power = [0f32; N_BINS];
            for (i, mel_out) in out.chunks_mut(n_mels).enumerate() {
                let t = task * FRAMES_PER_TASK + i;
                if !fill_frame(samples, total, t * HOP_LENGTH, window, &mut input) {
                    mel_out.fill(log_floor); // all-zero frame
                    continue;
                }
                // Lengths are fixed by the plan, so this cannot fail.
                if plan
                    .process_with_scratch(&mut input, &mut spectrum, &mut scratch)
                    .is_err()
                {
                    mel_out.fill(log_floor);
                    continue;
                }
                for (p, c) in power.iter_mut().zip(spectrum.iter()) {
                    *p = c.norm_sqr();
                }
                apply_filters(&filters.sparse, &power, mel_out);
                for v in mel_out.iter_mut() {
                    *v = v.max(1e-10).log10();
                }
            }
        });

    // Transpose to [n_mels][n_frames], in groups of 16 mel rows so that each frame's values
    // (one cache line) are read once.
    const ROWS: usize = 16;
    let mut data = vec![0f32; n_mels * n_frames];
    data.par_chunks_mut(ROWS * n_frames)
        .enumerate()
        .for_each(|(group, rows)| {
            let m0 = group * ROWS;
            let nm = rows.len() / n_frames;
            for (t, frame) in frame_major.chunks_exact(n_mels).enumerate() {
                for (k, &v) in frame[m0..m0 + nm].iter().enumerate() {
                    rows[k * n_frames + t] = v;
                }
            }
        });
    drop(frame_major);
    let max = data
        .par_iter()
        .copied()
        .reduce(|| f32::NEG_INFINITY, f32::max);
    let floor = max - 8.0;
    data.par_iter_mut()
        .for_each(|v| *v = (v.max(floor) + 4.0) / 4.0);
    Ok(Mel {
        n_mels,
        n_frames,
        data,
    })
}

#[inline]
fn apply_filters(filters: &[SparseFilter], power: &[f32; N_BINS], out: &mut [f32]) {
    for (f, o) in filters.iter().zip(out.iter_mut()) {
        let p = &power[f.first_bin..f.first_bin + f.weights.len()];
        *o = f.weights.iter().zip(p).map(|(w, x)| w * x).sum();
    }
}

/// Write the windowed frame starting at `start` of the reflect-padded signal (`samples`
/// followed by zeros up to `total`, then reflected by N_FFT/2 at both ends) into `frame`.
/// Returns false when the frame is all zeros.
fn fill_frame(
    samples: &[f32],
    total: usize,
    start: usize,
    window: &[f32; N_FFT],
    frame: &mut [f32],
) -> bool {
    let half = N_FFT / 2;
    let n = samples.len();
    // Position in the unpadded signal of frame[0] is start - half.
    if start >= half && start - half + N_FFT <= n {
        let src = &samples[start - half..start - half + N_FFT];
        for ((f, s), w) in frame.iter_mut().zip(src).zip(window) {
            *f = s * w;
        }
        return true;
    }
    // Entirely inside the appended zeros (and clear of the end reflection): nothing to do.
    if start >= half + n && start + half <= total {
        return false;
    }
    let mut any = false;
    for (j, (f, w)) in frame.iter_mut().zip(window).enumerate() {
        let mut pos = start as isize + j as isize - half as isize;
        if pos < 0 {
            pos = -pos;
        } else if pos >= total as isize {
            pos = 2 * (total as isize - 1) - pos;
        }
        let s = samples.get(pos as usize).copied().unwrap_or(0.0);
        any |= s != 0.0;
        *f = s * w;
    }
    any
}

/// `transcribe()`'s model windows: the log-mel of the audio followed by 30 s of zeros
/// (`padding = N_SAMPLES`), cut into consecutive 3000-frame segments over the frames that hold
/// audio (`len / 160`), each zero-padded in the mel domain (value 0.0) to 3000 frames.
pub fn transcribe_windows(samples: &[f32], n_mels: usize) -> Result<Vec<Window>> {
    if samples.is_empty() {
        bail!("audio contains no samples");
    }
    if samples.len() < HOP_LENGTH {
        bail!(
            "audio too short: {} samples, at least {HOP_LENGTH} (10 ms at 16 kHz) are needed",
            samples.len()
        );
    }
    let mel = log_mel_spectrogram(samples, n_mels, N_SAMPLES)?;
    let content_frames = mel.n_frames - N_FRAMES;
    let mut windows = Vec::with_capacity(content_frames.div_ceil(N_FRAMES));
    let mut seek = 0;
    while seek < content_frames {
        let size = N_FRAMES.min(content_frames - seek);
        let mut data = vec![0f32; n_mels * N_FRAMES];
        for (m, row) in data.chunks_mut(N_FRAMES).enumerate() {
            row[..size].copy_from_slice(&mel.row(m)[seek..seek + size]);
        }
        windows.push(Window {
            mel: Mel {
                n_mels,
                n_frames: N_FRAMES,
                data,
            },
            start_frame: seek,
            content_frames: size,
        });
        seek += size;
    }
    Ok(windows)
}
