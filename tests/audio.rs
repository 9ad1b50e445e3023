//! Tests of the audio front end: decoding, resampling, mel filters, log-mel and model windows.

use std::f64::consts::PI;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use whisper_trt::audio::{
    load_audio, log_mel_spectrogram, mel_filters, transcribe_windows, HOP_LENGTH, N_FFT, N_FRAMES,
    N_SAMPLES, SAMPLE_RATE,
};

fn shared() -> PathBuf {
    match std::env::var("WHISPER_TRT_SHARED") {
        Ok(p) => PathBuf::from(p),
        Err(_) => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared")),
    }
}

fn test_data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// A fresh directory under the system temp dir, unique per process and call.
fn temp_dir(tag: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!(
        "whisper-trt-audio-{}-{tag}-{n}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Parse a little-endian float32 C-order .npy file; returns (shape, data).
fn parse_npy_f32(bytes: &[u8]) -> (Vec<usize>, Vec<f32>) {
    assert_eq!(&bytes[..6], b"\x93NUMPY", "not a .npy file");
    let major = bytes[6];
    let (header_len, start) = if major == 1 {
        (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
    } else {
        (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        )
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).unwrap();
    assert!(
        header.contains("'descr': '<f4'"),
        "unexpected dtype in {header}"
    );
    assert!(
        header.contains("'fortran_order': False"),
        "unexpected order in {header}"
    );
    let shape_str = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = shape_str
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    let data: Vec<f32> = bytes[start + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(data.len(), shape.iter().product::<usize>());
    (shape, data)
}

fn read_f32_le(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn mel_filters_match_whisper_npz() {
    let path = shared().join("data/whisper/mel_filters.npz");
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&path).unwrap()).unwrap();
    for n_mels in [80usize, 128] {
        let mut bytes = Vec::new();
        zip.by_name(&format!("mel_{n_mels}.npy"))
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        let (shape, want) = parse_npy_f32(&bytes);
        assert_eq!(shape, vec![n_mels, N_FFT / 2 + 1]);
        let got = mel_filters(n_mels).unwrap();
        let diff = max_abs_diff(&got, &want);
        println!("mel_{n_mels}: max abs diff {diff:e}");
        assert!(diff <= 1e-6, "mel_{n_mels} filters differ by {diff}");
    }
    assert!(mel_filters(64).is_err());
}

#[test]
fn log_mel_matches_openai_whisper() {
    let dir = shared().join("data/reference/mel");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("mel_reference.json")).unwrap())
            .unwrap();
    let entries = meta.as_object().unwrap();
    assert!(entries.len() >= 4);
    for (name, info) in entries {
        let source = shared().join(info["source"].as_str().unwrap());
        let n_mels = info["shape"][0].as_u64().unwrap() as usize;
        let frames = info["shape"][1].as_u64().unwrap() as usize;
        assert_eq!(frames, N_FRAMES);
        let want = read_f32_le(&dir.join(name));
        assert_eq!(want.len(), n_mels * frames);

        let audio = load_audio(&source).unwrap();
        let t0 = Instant::now();
        let mel = log_mel_spectrogram(&audio, n_mels, N_SAMPLES).unwrap();
        let elapsed = t0.elapsed();
        assert_eq!(mel.n_mels, n_mels);
        assert_eq!(mel.n_frames, (audio.len() + N_SAMPLES) / HOP_LENGTH);
        let mut got = Vec::with_capacity(n_mels * frames);
        for m in 0..n_mels {
            got.extend_from_slice(&mel.row(m)[..frames]);
        }
        let diff = max_abs_diff(&got, &want);
        println!(
            "{name}: {} samples, {} frames in {:.1} ms, max abs diff {diff:e}",
            audio.len(),
            mel.n_frames,
            elapsed.as_secs_f64() * 1e3
        );
        assert!(diff <= 1e-3, "{name}: log-mel differs by {diff}");
    }
}

#[test]
fn jfk_resampled_like_ffmpeg() {
    let ours = load_audio(&shared().join("data/whisper/jfk.flac")).unwrap();
    let mut reader = hound::WavReader::open(shared().join("data/whisper/jfk_16k.wav")).unwrap();
    assert_eq!(reader.spec().sample_rate, 16000);
    let theirs: Vec<f32> = reader
        .samples::<i16>()
        .map(|s| s.unwrap() as f32 / 32768.0)
        .collect();
    assert_eq!(theirs.len(), 176000);
    assert_eq!(ours.len(), theirs.len());
    let rms = |v: &mut dyn Iterator<Item = f64>| {
        let (s, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x * x, n + 1));
        (s / n as f64).sqrt()
    };
    let diff = rms(&mut ours.iter().zip(&theirs).map(|(a, b)| (a - b) as f64));
    let signal = rms(&mut theirs.iter().map(|&b| b as f64));
    let max = max_abs_diff(&ours, &theirs);
    println!("jfk vs ffmpeg: RMS diff {diff:e} (signal RMS {signal:e}), max abs diff {max:e}");
    // Measured: RMS 6.1e-6 and max 6.1e-5 (2 LSB of int16) with rubato's Blackman-windowed sinc
    // against swresample's Kaiser window.
    assert!(
        diff < 3e-5,
        "RMS difference to ffmpeg's resampling is {diff}"
    );
    assert!(max < 5e-4, "max difference to ffmpeg's resampling is {max}");
    assert!(signal > 0.05);
}

#[test]
fn lengths_match_openai_whisper_load_audio() {
    // audio_samples of every clip in the reference run: ffmpeg's output length, ceil(n * 16000 / rate).
    let base = shared().join("data");
    let text = std::fs::read_to_string(base.join("reference/tiny.en/greedy.jsonl")).unwrap();
    let mut checked = std::collections::BTreeMap::<String, usize>::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let rec: serde_json::Value = serde_json::from_str(line).unwrap();
        let id = rec["id"].as_str().unwrap();
        let subset = rec["subset"].as_str().unwrap();
        let path = match subset {
            "ljspeech" => base.join(format!("ljspeech/wavs/{id}.flac")),
            "smoke" => base.join("whisper/jfk.flac"),
            _ => {
                let parts: Vec<&str> = id.split('-').collect();
                base.join(format!(
                    "librispeech/LibriSpeech/{subset}/{}/{}/{id}.flac",
                    parts[0], parts[1]
                ))
            }
        };
        let want = rec["audio_samples"].as_u64().unwrap() as usize;
        let got = load_audio(&path).unwrap().len();
        assert_eq!(got, want, "{id}: {got} samples, openai-whisper had {want}");
        *checked.entry(subset.to_string()).or_default() += 1;
    }
    println!("lengths checked: {checked:?}");
    assert!(checked.get("ljspeech").copied().unwrap_or(0) >= 100);
    assert!(checked.values().sum::<usize>() >= 200);
}

/// Decode a FLAC's int16 samples directly (no resampling or scaling) to compare against.
fn flac_int16(path: &Path) -> (u32, Vec<i16>) {
    use symphonia::core::codecs::audio::AudioDecoderOptions;
    use symphonia::core::formats::probe::Hint;
    use symphonia::core::formats::{FormatOptions, TrackType};
    use symphonia::core::io::MediaSourceStream;
    let mss = MediaSourceStream::new(
        Box::new(std::fs::File::open(path).unwrap()),
        Default::default(),
    );
    let mut format = symphonia::default::get_probe()
        .probe(
            &Hint::new(),
            mss,
            FormatOptions::default(),
            Default::default(),
        )
        .unwrap();
    let track = format.default_track(TrackType::Audio).unwrap();
    let params = track
        .codec_params
        .as_ref()
        .unwrap()
        .audio()
        .unwrap()
        .clone();
    assert_eq!(params.bits_per_sample, Some(16));
    assert_eq!(params.channels.as_ref().unwrap().count(), 1);
    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .unwrap();
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while let Some(packet) = format.next_packet().unwrap() {
        decoder
            .decode(&packet)
            .unwrap()
            .copy_to_vec_interleaved::<i16>(&mut buf);
        out.extend_from_slice(&buf);
    }
    (params.sample_rate.unwrap(), out)
}

#[test]
fn librispeech_16k_flac_is_bit_exact() {
    let path =
        shared().join("data/librispeech/LibriSpeech/test-clean/1089/134686/1089-134686-0000.flac");
    let (rate, ints) = flac_int16(&path);
    assert_eq!(rate, 16000);
    let ours = load_audio(&path).unwrap();
    assert_eq!(ours.len(), ints.len());
    let mismatches = ours
        .iter()
        .zip(&ints)
        .filter(|(a, &b)| **a != b as f32 / 32768.0)
        .count();
    assert_eq!(
        mismatches, 0,
        "{mismatches} samples differ from int16/32768"
    );
}

#[test]
fn wav_16k_16bit_is_bit_exact() {
    let dir = temp_dir("exact");
    let path = dir.join("noise16k.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&path, spec).unwrap();
    // Deterministic pseudo-random values over the whole int16 range, extremes included.
    let mut state = 12345u32;
    let mut ints: Vec<i16> = (0..20000)
        .map(|_| {
            state = state.wrapping_mul(1664525).wrapping_add(1013904223);
            (state >> 16) as u16 as i16
        })
        .collect();
    ints.extend([i16::MIN, i16::MAX, 0, -1, 1]);
    for &s in &ints {
        w.write_sample(s).unwrap();
    }
    w.finalize().unwrap();
    let ours = load_audio(&path).unwrap();
    let want: Vec<f32> = ints.iter().map(|&s| s as f32 / 32768.0).collect();
    assert_eq!(ours, want);
    std::fs::remove_dir_all(&dir).ok();
}

/// Delay in output samples of the tone of frequency `freq` in `x` against sin(2 pi f k / 16000).
fn tone_delay(x: &[f32], freq: f64) -> f64 {
    let edge = 200.min(x.len() / 10);
    let (mut s, mut c) = (0.0, 0.0);
    for (k, &v) in x.iter().enumerate().take(x.len() - edge).skip(edge) {
        let ph = 2.0 * PI * freq * k as f64 / SAMPLE_RATE as f64;
        s += v as f64 * ph.sin();
        c += v as f64 * ph.cos();
    }
    // x ~ a sin(ph - d): s ~ a cos(d), c ~ -a sin(d)
    (-c).atan2(s) / (2.0 * PI * freq) * SAMPLE_RATE as f64
}

/// Correlation at lag 0 of `x` with `a*sin(2 pi f k / 16000)`, and the least-squares amplitude a.
fn tone_fit(x: &[f32], freq: f64) -> (f64, f64) {
    // Leave out the edges, where the resampler sees the tone start and stop abruptly.
    let edge = 200.min(x.len() / 10);
    let (mut xy, mut xx, mut yy) = (0.0, 0.0, 0.0);
    for (k, &v) in x.iter().enumerate().take(x.len() - edge).skip(edge) {
        let y = (2.0 * PI * freq * k as f64 / SAMPLE_RATE as f64).sin();
        xy += v as f64 * y;
        xx += v as f64 * v as f64;
        yy += y * y;
    }
    (xy / (xx * yy).sqrt(), xy / yy)
}

/// ffmpeg's output length is ceil(n * 16000 / rate), or one less when its flush runs short
/// (the exact rule is checked against openai-whisper's lengths above).
fn length_ok(got: usize, n: usize, rate: u32) -> bool {
    let ceil = (n as u64 * 16000).div_ceil(rate as u64) as usize;
    got == ceil || (rate != 16000 && got + 1 == ceil)
}

#[test]
fn wav_formats_rates_and_channels() {
    let dir = temp_dir("wav");
    let freq = 1000.0;
    let (amp_l, amp_r) = (0.6, 0.2);
    let formats: [(u16, hound::SampleFormat); 5] = [
        (8, hound::SampleFormat::Int),
        (16, hound::SampleFormat::Int),
        (24, hound::SampleFormat::Int),
        (32, hound::SampleFormat::Int),
        (32, hound::SampleFormat::Float),
    ];
    for rate in [8000u32, 16000, 22050, 44100, 48000] {
        for channels in [1u16, 2] {
            for (bits, fmt) in formats {
                let n = (rate as f64 * 0.7) as usize + 3; // a fractional number of output samples
                let path = dir.join(format!("tone_{rate}_{channels}ch_{bits}{fmt:?}.wav"));
                let spec = hound::WavSpec {
                    channels,
                    sample_rate: rate,
                    bits_per_sample: bits,
                    sample_format: fmt,
                };
                let mut w = hound::WavWriter::create(&path, spec).unwrap();
                for i in 0..n {
                    let s = (2.0 * PI * freq * i as f64 / rate as f64).sin();
                    let chans = if channels == 1 {
                        vec![amp_l * s]
                    } else {
                        vec![amp_l * s, amp_r * s]
                    };
                    for v in chans {
                        match (bits, fmt) {
                            (_, hound::SampleFormat::Float) => w.write_sample(v as f32).unwrap(),
                            (8, _) => w.write_sample((v * 127.0).round() as i8).unwrap(),
                            (16, _) => w.write_sample((v * 32767.0).round() as i16).unwrap(),
                            (24, _) => w.write_sample((v * 8388607.0).round() as i32).unwrap(),
                            _ => w.write_sample((v * 2147483647.0).round() as i32).unwrap(),
                        }
                    }
                }
                w.finalize().unwrap();

                let audio = load_audio(&path).unwrap_or_else(|e| panic!("{e:#}"));
                let label = path.file_name().unwrap().to_string_lossy().to_string();
                assert!(
                    length_ok(audio.len(), n, rate),
                    "{label}: length {} for {n} samples",
                    audio.len()
                );
                assert!(audio.iter().all(|v| v.abs() <= 1.0));
                let (corr, amp) = tone_fit(&audio, freq);
                let want_amp = if channels == 1 {
                    amp_l
                } else {
                    (amp_l + amp_r) / 2.0
                };
                let delay = tone_delay(&audio, freq);
                assert!(
                    corr > 0.999,
                    "{label}: correlation with the expected tone {corr}"
                );
                assert!(
                    delay.abs() < 0.02,
                    "{label}: tone delayed by {delay} samples"
                );
                assert!(
                    (amp / want_amp - 1.0).abs() < 0.02,
                    "{label}: amplitude {amp}, expected {want_amp}"
                );
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn mp3_and_ogg_vorbis_decode() {
    // 1 s 440 Hz tones of amplitude 0.5 made with ffmpeg (libmp3lame 64 kb/s stereo 44.1 kHz;
    // libvorbis mono 22.05 kHz). The decoders drop the codec's priming and padding (gapless).
    // Amplitudes as ffmpeg decodes the files (its mono-to-stereo upmix lowered the mp3's level).
    for (name, want_amp) in [
        ("tone440_44k_stereo.mp3", 0.335),
        ("tone440_22k_mono.ogg", 0.5),
    ] {
        let audio = load_audio(&test_data(name)).unwrap_or_else(|e| panic!("{e:#}"));
        let (corr, amp) = tone_fit(&audio, 440.0);
        let delay = tone_delay(&audio, 440.0);
        let rms =
            |v: &[f32]| (v.iter().map(|x| (x * x) as f64).sum::<f64>() / v.len() as f64).sqrt();
        let (head, tail) = (rms(&audio[..300]), rms(&audio[audio.len() - 300..]));
        println!(
            "{name}: {} samples, tone correlation {corr:.5}, amplitude {amp:.3}, delay {delay:.3}, \
             RMS of first/last 300 samples {head:.3}/{tail:.3}",
            audio.len()
        );
        assert!(
            audio.len().abs_diff(16000) <= 1,
            "{name}: {} samples, expected 16000",
            audio.len()
        );
        assert!(corr > 0.99, "{name}: tone correlation {corr}");
        assert!(
            (amp / want_amp - 1.0).abs() < 0.05,
            "{name}: amplitude {amp}, expected {want_amp}"
        );
        assert!(delay.abs() < 1.0, "{name}: tone delayed by {delay} samples");
        // The tone fills the clip: a shift by whole periods would leave silence at one end.
        let full = want_amp / 2f64.sqrt();
        assert!(
            head > 0.7 * full && tail > 0.7 * full,
            "{name}: tone missing at an end: {head} {tail}"
        );
    }
}

fn assert_err_names_file(path: &Path, what: &str) {
    let err = match load_audio(path) {
        Ok(a) => panic!("{what}: expected an error, got {} samples", a.len()),
        // Plain Display: the message must be complete without the {:#} chain.
        Err(e) => e.to_string(),
    };
    let file = path.file_name().unwrap().to_string_lossy();
    println!("{what}: {err}");
    assert!(
        err.contains(&*file),
        "{what}: error does not name the file: {err}"
    );
    assert!(!err.contains('\n'), "{what}: error is not one line: {err}");
}

#[test]
fn load_errors_name_the_file() {
    let dir = temp_dir("errors");
    assert_err_names_file(&dir.join("does_not_exist.wav"), "missing file");

    let text = dir.join("not_audio.wav");
    std::fs::write(&text, "this is a text file, not audio\n".repeat(50)).unwrap();
    assert_err_names_file(&text, "text file");

    let flac = std::fs::read(shared().join("data/whisper/jfk.flac")).unwrap();
    let cut = dir.join("jfk_truncated.flac");
    std::fs::write(&cut, &flac[..flac.len() / 2]).unwrap();
    assert_err_names_file(&cut, "truncated flac");

    let wav = dir.join("tone.wav");
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 44100,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&wav, spec).unwrap();
    for i in 0..44100 {
        w.write_sample(((i as f64 * 0.05).sin() * 10000.0) as i16)
            .unwrap();
    }
    w.finalize().unwrap();
    assert_eq!(load_audio(&wav).unwrap().len(), 8000);
    let bytes = std::fs::read(&wav).unwrap();
    let cut_wav = dir.join("tone_truncated.wav");
    std::fs::write(&cut_wav, &bytes[..bytes.len() / 2]).unwrap();
    assert_err_names_file(&cut_wav, "truncated wav");
    // Cut at a sample-frame boundary: the stream ends cleanly, but short of what the header says.
    let data_start = bytes.windows(4).position(|w| w == b"data").unwrap() + 8;
    let cut_clean = dir.join("tone_cut_clean.wav");
    std::fs::write(&cut_clean, &bytes[..data_start + 4 * 10000]).unwrap();
    assert_err_names_file(&cut_clean, "wav cut at a frame boundary");
    assert!(load_audio(&cut_clean)
        .unwrap_err()
        .to_string()
        .contains("truncated"));

    let empty = dir.join("empty.wav");
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: 16000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    hound::WavWriter::create(&empty, spec)
        .unwrap()
        .finalize()
        .unwrap();
    assert_err_names_file(&empty, "zero-length wav");
    let err = load_audio(&empty).unwrap_err().to_string();
    assert!(err.contains("contains no audio samples"), "{err}");

    let zero_bytes = dir.join("zero_bytes.flac");
    std::fs::write(&zero_bytes, b"").unwrap();
    assert_err_names_file(&zero_bytes, "empty file");
    std::fs::remove_dir_all(&dir).ok();
}

fn test_signal(n: usize) -> Vec<f32> {
    // A chirp plus a little deterministic noise: every mel bin gets some energy.
    let mut state = 7u32;
    (0..n)
        .map(|i| {
            state = state.wrapping_mul(1664525).wrapping_add(1013904223);
            let t = i as f64 / SAMPLE_RATE as f64;
            let noise = ((state >> 8) as f64 / (1u32 << 24) as f64 - 0.5) * 0.01;
            (0.3 * (2.0 * PI * (100.0 + 300.0 * t) * t).sin() + noise) as f32
        })
        .collect()
}

#[test]
fn transcribe_windows_short_clip() {
    for n_mels in [80, 128] {
        let audio = test_signal(5 * 16000 + 77);
        let windows = transcribe_windows(&audio, n_mels).unwrap();
        assert_eq!(windows.len(), 1);
        let w = &windows[0];
        let full = log_mel_spectrogram(&audio, n_mels, N_SAMPLES).unwrap();
        let content = full.n_frames - N_FRAMES;
        assert_eq!(content, audio.len() / HOP_LENGTH);
        assert_eq!(w.start_frame, 0);
        assert_eq!(w.content_frames, content);
        assert_eq!((w.mel.n_mels, w.mel.n_frames), (n_mels, N_FRAMES));
        assert_eq!(w.mel.data.len(), n_mels * N_FRAMES);
        for m in 0..n_mels {
            let row = w.mel.row(m);
            assert_eq!(&row[..content], &full.row(m)[..content], "mel bin {m}");
            assert!(
                row[content..].iter().all(|&v| v == 0.0),
                "mel bin {m}: padding is not 0.0"
            );
            // The spectrogram of the zero padding itself is not 0.0, so the check above bites.
            assert!(full.row(m)[content + 10] != 0.0);
        }
    }
}

#[test]
fn transcribe_windows_long_clip_and_errors() {
    let audio = test_signal(65 * 16000);
    let t0 = Instant::now();
    let windows = transcribe_windows(&audio, 80).unwrap();
    println!(
        "65 s: {} windows in {:.1} ms",
        windows.len(),
        t0.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(windows.len(), 3);
    let full = log_mel_spectrogram(&audio, 80, N_SAMPLES).unwrap();
    let starts: Vec<usize> = windows.iter().map(|w| w.start_frame).collect();
    let sizes: Vec<usize> = windows.iter().map(|w| w.content_frames).collect();
    assert_eq!(starts, vec![0, 3000, 6000]);
    assert_eq!(sizes, vec![3000, 3000, 500]);
    for w in &windows {
        for m in [0, 40, 79] {
            let row = w.mel.row(m);
            assert_eq!(
                &row[..w.content_frames],
                &full.row(m)[w.start_frame..w.start_frame + w.content_frames]
            );
            assert!(row[w.content_frames..].iter().all(|&v| v == 0.0));
        }
    }

    let err = transcribe_windows(&[], 80).unwrap_err().to_string();
    assert!(err.contains("no samples"), "{err}");
    let err = transcribe_windows(&[0.1; 159], 80).unwrap_err().to_string();
    assert!(err.contains("too short"), "{err}");
    assert_eq!(transcribe_windows(&[0.1; 160], 80).unwrap().len(), 1);
    assert!(transcribe_windows(&audio[..16000], 64).is_err());
    assert!(log_mel_spectrogram(&[0.5; 200], 80, 0).is_err());
    assert_eq!(log_mel_spectrogram(&[0.5; 201], 80, 0).unwrap().n_frames, 1);
}
