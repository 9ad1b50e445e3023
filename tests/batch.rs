//! Batched transcription (`Transcriber::transcribe_many`) on the CPU backend against the plainest
//! way there is: one window at a time, one decoder session per window, host logits and every rule
//! (`Decoder::run_reference`). Real clips of different lengths (so windows retire at different
//! steps), one input longer than 30 s, and bad inputs among good ones.
mod common;
use std::path::{Path, PathBuf};
use whisper_trt::audio;
use whisper_trt::backends::cpu::CpuModel;
use whisper_trt::backends::Backend;
use whisper_trt::decoding::{DecodeOptions, Decoder};
use whisper_trt::text::Tokenizer;
use whisper_trt::transcribe::{Audio, Transcriber, Transcript, LOGPROB_THRESHOLD, NO_SPEECH_THRESHOLD};

fn transcriber(model: &str, beam_size: Option<usize>, language: Option<&str>) -> Transcriber<CpuModel> {
    let dir = common::model_dir(model);
    let options = DecodeOptions { beam_size, language: language.map(String::from), ..DecodeOptions::default() };
    Transcriber::new(CpuModel::load(&dir).unwrap(), Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap(), options)
}

/// Per window: (tokens, avg_logprob, no_speech_prob), and the language.
type Windows = (Vec<(Vec<u32>, f32, f32)>, String);

/// One window at a time, each on its own session, through the reference decoding loop.
fn one_by_one(t: &Transcriber<CpuModel>, samples: &[f32]) -> Windows {
    let config = t.backend.config();
    let windows = audio::transcribe_windows(samples, config.n_mels).unwrap();
    let mut options = t.options.clone();
    let mut decoder: Option<Decoder> = None;
    let mut out = vec![];
    for w in &windows {
        let features = t.backend.encode(&w.mel.data).unwrap();
        if decoder.is_none() {
            if options.language.is_none() {
                options.language = Some(if config.multilingual {
                    let mut s = Backend::session(&t.backend, &features, 1).unwrap();
                    Decoder::detect_language(&t.tokenizer, s.as_mut()).unwrap()
                } else {
                    "en".into()
                });
            }
            decoder = Some(Decoder::new(config, &t.tokenizer, &options).unwrap());
        }
        let d = decoder.as_ref().unwrap();
        let mut s = Backend::session(&t.backend, &features, d.n_seq()).unwrap();
        let r = d.run_reference(s.as_mut()).unwrap();
        let silent = r.no_speech_prob > NO_SPEECH_THRESHOLD && r.avg_logprob <= LOGPROB_THRESHOLD;
        out.push((if silent { vec![] } else { r.tokens }, r.avg_logprob, r.no_speech_prob));
    }
    (out, options.language.unwrap())
}

fn windows_of(t: &Transcript) -> Windows {
    (t.segments.iter().map(|s| (s.tokens.clone(), s.avg_logprob, s.no_speech_prob)).collect(), t.language.clone())
}

/// Tokens and language exactly; the log-probabilities and no-speech probabilities to 1e-5: the CPU
/// backend's matrix products sum in an order that depends on how many rows they run (a batch of
/// windows runs more), which moves them in the last bits.
fn same(got: &Windows, want: &Windows, tag: &str) {
    assert_eq!(got.1, want.1, "{tag}: language");
    let tokens = |w: &Windows| w.0.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    assert_eq!(tokens(got), tokens(want), "{tag}: tokens differ from one window at a time");
    for (g, w) in got.0.iter().zip(&want.0) {
        assert!((g.1 - w.1).abs() <= 1e-5 && (g.2 - w.2).abs() <= 1e-5, "{tag}: {g:?} vs {w:?}");
    }
}

fn samples_of(path: &Path) -> Vec<f32> {
    audio::load_audio(path).unwrap()
}

/// Runs `transcribe_many` and checks the callback contract: every input once, in input order.
fn many(t: &Transcriber<CpuModel>, inputs: &[Audio<'_>], max_batch: usize) -> Vec<anyhow::Result<Transcript>> {
    let mut got = vec![];
    t.transcribe_many(inputs, max_batch, |i, r| {
        assert_eq!(i, got.len(), "inputs reported out of order");
        got.push(r);
        Ok(())
    })
    .unwrap();
    assert_eq!(got.len(), inputs.len());
    got
}

fn check(model: &str, beam_size: Option<usize>, language: Option<&str>, ids: &[&str], max_batch: usize) {
    let t = transcriber(model, beam_size, language);
    let tag = format!("{model} beam {beam_size:?}");
    let jfk = common::shared().join("data/whisper/jfk.flac");
    let mut paths: Vec<PathBuf> = vec![jfk];
    paths.extend(ids.iter().map(|id| common::librispeech(id)));
    // Longer than 30 s: two clips back to back, given as samples.
    let mut long = samples_of(&common::librispeech("2609-156975-0007"));
    long.extend(samples_of(&common::librispeech("1998-15444-0000")));
    assert!(long.len() > audio::N_SAMPLES, "the long input should be over 30 s");
    let dir = common::temp_dir("batch");
    let garbage = dir.join("not-audio.flac");
    std::fs::write(&garbage, b"this is not a flac file at all").unwrap();
    let missing = dir.join("missing.wav");

    let mut inputs: Vec<Audio<'_>> = vec![Audio::File(&paths[0]), Audio::File(&garbage)];
    inputs.extend(paths[1..].iter().map(|p| Audio::File(p)));
    inputs.insert(3, Audio::Samples(&long));
    inputs.push(Audio::File(&missing));
    let got = many(&t, &inputs, max_batch);

    let mut windows_total = 0;
    for (i, (input, r)) in inputs.iter().zip(&got).enumerate() {
        match input {
            Audio::File(p) if *p == garbage.as_path() || *p == missing.as_path() => {
                let e = r.as_ref().err().unwrap_or_else(|| panic!("{tag}: bad input {} gave a transcript", p.display()));
                let msg = format!("{e:#}");
                assert!(msg.contains(&p.display().to_string()), "{tag}: error does not name the file: {msg}");
            }
            _ => {
                let samples = match input {
                    Audio::File(p) => samples_of(p),
                    Audio::Samples(s) => s.to_vec(),
                };
                let want = one_by_one(&t, &samples);
                let tr = r.as_ref().unwrap_or_else(|e| panic!("{tag}: input {i}: {e:#}"));
                same(&windows_of(tr), &want, &format!("{tag}: input {i}"));
                assert_eq!(tr.tokens, want.0.iter().flat_map(|w| w.0.clone()).collect::<Vec<u32>>());
                assert_eq!(tr.text, t.tokenizer.decode(&tr.tokens).unwrap());
                assert!(!tr.tokens.is_empty(), "{tag}: input {i} gave no tokens");
                windows_total += want.0.len();
            }
        }
    }
    assert!(windows_total > max_batch, "{tag}: the inputs should need several batches");
    // One input alone (its two windows batched together) gives the same.
    let alone = t.transcribe_samples(&long).unwrap();
    same(&windows_of(&alone), &windows_of(got[3].as_ref().unwrap()), &format!("{tag}: long input alone"));
    assert_eq!(alone.segments.len(), 2);
}

#[test]
fn tiny_en_greedy_batched_equals_one_by_one() {
    check("tiny.en", None, None, &["1089-134691-0000", "1998-15444-0007", "2033-164914-0003", "1688-142285-0007"], 3);
}

#[test]
fn tiny_en_beam5_batched_equals_one_by_one() {
    check("tiny.en", Some(5), None, &["1089-134691-0000", "2033-164914-0003"], 3);
}

/// A multilingual model detects the language per input on its first window.
#[test]
fn base_greedy_detects_language_per_input() {
    check("base", None, None, &["8455-210777-0068"], 3);
}

#[test]
fn on_done_error_stops_the_work() {
    let t = transcriber("tiny.en", None, None);
    let jfk = common::shared().join("data/whisper/jfk.flac");
    let inputs = vec![Audio::File(&jfk); 4];
    let mut calls = 0;
    let r = t.transcribe_many(&inputs, 2, |_, _| {
        calls += 1;
        anyhow::bail!("stop here")
    });
    assert_eq!(calls, 1);
    assert_eq!(format!("{:#}", r.unwrap_err()), "stop here");
}
