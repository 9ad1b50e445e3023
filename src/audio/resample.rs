//! Resampling to 16 kHz with rubato's sinc resampler, set up to resemble ffmpeg's swresample
//! defaults (which openai-whisper's `load_audio` goes through), and the int16 round trip.

use anyhow::{anyhow, Result};
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{
    Async, FixedAsync, Resampler, SincInterpolationParameters, SincInterpolationType,
    WindowFunction,
};

use super::SAMPLE_RATE;

/// swresample's default filter: a windowed sinc whose cutoff is 0.97 of the lower Nyquist
/// frequency (capped at the input's), 32 taps at that cutoff's scale, Kaiser window (beta 9).
/// Rubato has no Kaiser window; Blackman has the same main-lobe width (so a similar transition
/// band) and was the closest to ffmpeg's output of rubato's windows on speech and noise.
const FILTER_TAPS: f64 = 32.0;
const CUTOFF: f64 = 0.97;
const WINDOW: WindowFunction = WindowFunction::Blackman;
const CHUNK: usize = 8192;
/// Sample rates outside this range are refused (the sinc table grows with the rate).
const MIN_RATE: u32 = 1000;
const MAX_RATE: u32 = 768_000;

/// Resample mono `input` at `rate` Hz to 16 kHz. The output has as many samples as ffmpeg gives
/// (see [`ffmpeg_output_len`]) and output sample `j` sits exactly at input position
/// `j * rate / 16000` (no delay), as with ffmpeg. At 16 kHz the input is returned unchanged.
/// Takes the input by value to reuse its buffer: long files are large.
pub(crate) fn resample_to_16k(mut input: Vec<f32>, rate: u32) -> Result<Vec<f32>> {
    if rate == SAMPLE_RATE || input.is_empty() {
        return Ok(input);
    }
    if !(MIN_RATE..=MAX_RATE).contains(&rate) {
        return Err(anyhow!("unsupported sample rate {rate} Hz"));
    }
    let rate_u = rate as usize;
    let ratio = SAMPLE_RATE as f64 / rate as f64;
    // swresample: cutoff factor f = min(0.97 * ratio, 1) of the input Nyquist, ceil(32 / f) taps
    // rounded up to even. Rubato scales its cutoff by the ratio itself when downsampling.
    let factor = (CUTOFF * ratio).min(1.0);
    let ffmpeg_taps = ((FILTER_TAPS / factor).ceil() as usize).next_multiple_of(2);
    // Rubato's length: a multiple of 8 at or below ffmpeg's + 2 (of the choices, the closest to
    // ffmpeg's output on speech and noise at 22.05, 44.1 and 48 kHz).
    let taps = ((ffmpeg_taps + 2) / 8 * 8).max(8);
    let cutoff = (factor / ratio.min(1.0)) as f32;
    let n = input.len();
    let out_len = ffmpeg_output_len(n, rate, ffmpeg_taps);

    // Output sample j sits at input position j * rate / 16000, whose fractional part takes
    // `phases` = 16000 / gcd(rate, 16000) values. A sinc table with exactly that many phases and
    // nearest-phase lookup makes rubato an exact polyphase filter, as swresample's is.
    let g = gcd(rate, SAMPLE_RATE) as usize;
    let phases = SAMPLE_RATE as usize / g;
    let params = SincInterpolationParameters::new(taps, WINDOW)
        .f_cutoff(cutoff)
        .oversampling_factor(phases)
        .interpolation(SincInterpolationType::Nearest);
    let mut resampler = Async::<f32>::new_sinc(ratio, 1.0, &params, CHUNK, 1, FixedAsync::Input)
        .map_err(|e| anyhow!("cannot build resampler for {rate} Hz: {e}"))?;

    // Rubato's own delay compensation leaves a fractional offset. In its untrimmed output, sample
    // k (0-based) is taken at input position (k + 1) * rate / 16000 - taps / 2 + 1 / phases (read
    // off rubato 5.1's sinc tables and start index, and checked by the tests). Choose the output
    // index m - 1 that lands exactly on an input sample, and shift the input by `lead` samples so
    // that this sample is the first real one: (m * rate + g) / 16000 - taps / 2 = lead. The lead
    // covers at least half a filter, so that the first outputs see the mirrored start.
    let skipped = resampler.output_delay(); // outputs that process_all trims itself
    let m = (skipped + 1..)
        .find(|&m| {
            (m * rate_u + g).is_multiple_of(SAMPLE_RATE as usize)
                && m * rate_u + g >= SAMPLE_RATE as usize * (taps + 1)
        })
        .ok_or_else(|| anyhow!("no resampler alignment for {rate} Hz"))?;
    let lead = (m * rate_u + g) / SAMPLE_RATE as usize - taps / 2;
    let first = m - 1 - skipped;

    // Like swresample, extend the signal by mirror images rather than silence: before the start
    // about the first sample (x[-i] = x[i]), after the end about the last half-sample
    // (x[n + j] = x[n - 1 - j]) for about half a filter length; zeros beyond.
    let head: Vec<f32> = (0..lead)
        .map(|i| input.get(lead - i).copied().unwrap_or(0.0))
        .collect();
    let reflect = ffmpeg_taps.div_ceil(2).min(n);
    input.reserve(lead + reflect + taps + 2);
    input.splice(0..0, head);
    input.extend_from_within(lead + n - reflect..lead + n);
    input[lead + n..].reverse();
    input.resize(lead + n + taps + 2, 0.0); // flushes the filter's tail
    let padded = input;

    let adapter = InterleavedSlice::new(&padded, 1, padded.len())
        .map_err(|e| anyhow!("resampler input: {e}"))?;
    let out = resampler
        .process_all(&adapter, padded.len(), None)
        .map_err(|e| anyhow!("resampling from {rate} Hz failed: {e}"))?;
    drop(padded);
    let mut out = out.take_data();
    out.drain(..first.min(out.len()));
    out.resize(out_len, 0.0);
    Ok(out)
}

/// How many samples `ffmpeg -ar 16000` returns for `n` input samples at `rate` through a filter
/// of `taps` (even) taps. Usually ceil(n * 16000 / rate), but one less when the last output
/// would need more than the half-filter of mirrored samples swresample appends when flushing.
/// The model follows swresample's `multiple_resample` and `resample_flush`; it was checked
/// against ffmpeg 5 for 9 rates and ~1000 lengths, and against openai-whisper's reference
/// lengths. Inputs of under two filter lengths (a few ms), where ffmpeg returns little or
/// nothing, get ceil(n * 16000 / rate).
fn ffmpeg_output_len(n: usize, rate: u32, taps: usize) -> usize {
    let (n, rate, out, taps) = (n as i128, rate as i128, SAMPLE_RATE as i128, taps as i128);
    let ceil_div = |a: i128, b: i128| -((-a).div_euclid(b));
    if n < 2 * taps {
        return ceil_div(n * out, rate).max(0) as usize;
    }
    // Output j reads input samples floor(j * rate / 16000) - center .. + taps.
    let center = (taps - 1) / 2;
    // First output that needs samples past the end: the flush starts there.
    let first_short = ceil_div((n - taps + center + 1) * out, rate).max(0);
    let buffered = n - ((first_short * rate).div_euclid(out) - center);
    let reflection = (buffered.min(taps) + 1) / 2;
    ceil_div((n + reflection - taps + center + 1) * out, rate).max(0) as usize
}

/// openai-whisper reads ffmpeg's s16 output and divides by 32768: round to the int16 grid
/// (ties to even, like lrint), clamp, and scale.
pub(crate) fn quantize_s16(samples: &mut [f32]) {
    for x in samples {
        let q = if x.is_nan() {
            0.0
        } else {
            (*x * 32768.0).round_ties_even().clamp(-32768.0, 32767.0)
        };
        *x = q / 32768.0;
    }
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}
