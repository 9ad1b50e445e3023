//! Decoding an audio file with symphonia into one mono channel at the file's own sample rate.

use std::fs::File;
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use symphonia::core::codecs::audio::AudioDecoderOptions;
use symphonia::core::errors::Error as SymError;
use symphonia::core::formats::probe::Hint;
use symphonia::core::formats::well_known::{FORMAT_ID_FLAC, FORMAT_ID_WAVE};
use symphonia::core::formats::{FormatOptions, TrackType};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;

/// Mono audio as decoded: the channel average (f32 holds 16- and 24-bit samples exactly).
pub(crate) struct Decoded {
    pub samples: Vec<f32>,
    pub sample_rate: u32,
}

/// Decode the first audio track of `path`. Errors are plain messages; the caller adds the file name.
pub(crate) fn decode_file(path: &Path) -> Result<Decoded> {
    let file = File::open(path).map_err(|e| anyhow!("cannot open: {e}"))?;
    let mss = MediaSourceStream::new(Box::new(file), Default::default());

    let mut hint = Hint::new();
    if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(ext);
    }
    let mut format = symphonia::default::get_probe()
        .probe(
            &hint,
            mss,
            FormatOptions::default(),
            MetadataOptions::default(),
        )
        .map_err(|e| anyhow!("not a supported audio file ({})", describe(&e)))?;

    let track = format
        .default_track(TrackType::Audio)
        .ok_or_else(|| anyhow!("no audio track"))?;
    let track_id = track.id;
    let declared_frames = track.num_frames;
    let params = track
        .codec_params
        .as_ref()
        .and_then(|p| p.audio())
        .ok_or_else(|| anyhow!("no audio codec parameters"))?
        .clone();
    // Lossless containers declare an exact frame count: fewer decoded frames means a cut file.
    let exact_count = [FORMAT_ID_FLAC, FORMAT_ID_WAVE].contains(&format.format_info().format);

    let mut decoder = symphonia::default::get_codecs()
        .make_audio_decoder(&params, &AudioDecoderOptions::default())
        .map_err(|e| anyhow!("unsupported codec ({})", describe(&e)))?;

    let mut sample_rate = params.sample_rate;
    let mut channels = params.channels.as_ref().map(|c| c.count());
    let mut mono: Vec<f32> = Vec::new();
    let mut planes: Vec<Vec<f32>> = Vec::new();
    loop {
        let packet = match format.next_packet() {
            Ok(Some(p)) => p,
            Ok(None) => break,
            // A chained OGG stream starts over with new parameters: keep the first stream only.
            Err(SymError::ResetRequired) => break,
            Err(e) => bail!("corrupt or truncated audio stream ({})", describe(&e)),
        };
        if packet.track_id != track_id {
            continue;
        }
        let buf = decoder
            .decode(&packet)
            .map_err(|e| anyhow!("corrupt audio stream ({})", describe(&e)))?;
        let spec = buf.spec();
        let rate = spec.rate();
        let n_ch = spec.channels().count();
        if *sample_rate.get_or_insert(rate) != rate || *channels.get_or_insert(n_ch) != n_ch {
            bail!("the sample rate or channel count changes mid-stream");
        }
        if n_ch == 0 {
            bail!("audio stream has no channels");
        }
        buf.copy_to_vecs_planar::<f32>(&mut planes);
        let frames = buf.frames();
        let start = mono.len();
        mono.resize(start + frames, 0.0);
        let out = &mut mono[start..];
        for plane in &planes {
            for (o, s) in out.iter_mut().zip(plane) {
                *o += *s;
            }
        }
        if n_ch > 1 {
            let scale = 1.0 / n_ch as f32;
            out.iter_mut().for_each(|o| *o *= scale);
        }
    }

    if exact_count {
        if let Some(declared) = declared_frames {
            if (mono.len() as u64) < declared {
                bail!(
                    "truncated audio stream: decoded {} of the {} samples its header declares",
                    mono.len(),
                    declared
                );
            }
        }
    }
    let sample_rate = match sample_rate {
        Some(r) if r > 0 => r,
        _ => bail!("unknown sample rate"),
    };
    Ok(Decoded {
        samples: mono,
        sample_rate,
    })
}

fn describe(e: &SymError) -> String {
    match e {
        SymError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
            "unexpected end of file".to_string()
        }
        other => other.to_string(),
    }
}
