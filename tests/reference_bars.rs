//! The foundation's bars: the CPU backend against openai-whisper's own outputs
//! (`../shared/data/reference/<model>/{greedy,beam5}.jsonl`), token for token, and WER.
//! Each test prints a table; the numbers go into the closing note.
mod common;
use std::collections::BTreeMap;
use std::path::PathBuf;
use whisper_trt::backends::cpu::CpuModel;
use whisper_trt::decoding::DecodeOptions;
use whisper_trt::text::normalizer::EnglishTextNormalizer;
use whisper_trt::text::wer::word_edits;
use whisper_trt::text::Tokenizer;
use whisper_trt::transcribe::Transcriber;

struct Row {
    id: String,
    subset: String,
    tokens: Vec<u32>,
    normalized_ref: String,
}

fn reference(model: &str, mode: &str) -> Vec<Row> {
    let path = common::shared().join(format!("data/reference/{model}/{mode}.jsonl"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Row {
                id: v["id"].as_str().unwrap().to_string(),
                subset: v["subset"].as_str().unwrap().to_string(),
                tokens: v["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect(),
                normalized_ref: v["normalized_ref"].as_str().unwrap().to_string(),
            }
        })
        .collect()
}

fn audio_path(row: &Row) -> PathBuf {
    common::reference_audio(&row.subset, &row.id)
}

/// Reference WER in percent per subset, from summary.json.
fn reference_wer(model: &str, mode: &str) -> BTreeMap<String, f64> {
    let path = common::shared().join("data/reference/summary.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v[model][mode]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, s)| (k.clone(), s["wer_percent"].as_f64().unwrap()))
        .collect()
}

#[derive(Default)]
struct Subset {
    utterances: usize,
    token_matches: usize,
    edits: usize,
    ref_words: usize,
}

struct Report {
    subsets: BTreeMap<String, Subset>,
    texts: BTreeMap<String, String>,
}

fn run(model: &str, mode: &str, beam_size: Option<usize>) -> Report {
    let dir = common::model_dir(model);
    let backend = CpuModel::load(&dir).unwrap();
    let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap();
    let options = DecodeOptions { language: Some("en".into()), beam_size, ..DecodeOptions::default() };
    let t = Transcriber::new(backend, tokenizer, options);
    let normalizer =
        EnglishTextNormalizer::from_json_file(&common::shared().join("data/whisper/english.json")).unwrap();
    let rows = reference(model, mode);
    let start = std::time::Instant::now();
    let mut report = Report { subsets: BTreeMap::new(), texts: BTreeMap::new() };
    for row in &rows {
        let out = t.transcribe_file(&audio_path(row)).unwrap();
        let s = report.subsets.entry(row.subset.clone()).or_default();
        s.utterances += 1;
        s.token_matches += (out.tokens == row.tokens) as usize;
        let hyp = normalizer.normalize(&out.text);
        s.edits += word_edits(&row.normalized_ref, &hyp);
        s.ref_words += row.normalized_ref.split_whitespace().count();
        report.texts.insert(row.id.clone(), out.text.trim().to_string());
    }
    let wall = start.elapsed().as_secs_f64();
    let refs = reference_wer(model, mode);
    println!("{model} {mode}: {} utterances in {wall:.1} s", rows.len());
    println!("{:<12} {:>6} {:>14} {:>9} {:>9}", "subset", "utts", "token match", "WER %", "ref WER %");
    for (name, s) in &report.subsets {
        println!(
            "{:<12} {:>6} {:>7} ({:>5.1}%) {:>9.3} {:>9.3}",
            name,
            s.utterances,
            s.token_matches,
            100.0 * s.token_matches as f64 / s.utterances as f64,
            100.0 * s.edits as f64 / s.ref_words as f64,
            refs.get(name).copied().unwrap_or(f64::NAN)
        );
    }
    report
}

fn librispeech_match(r: &Report) -> f64 {
    let (m, n) = ["test-clean", "test-other"]
        .iter()
        .filter_map(|k| r.subsets.get(*k))
        .fold((0, 0), |(m, n), s| (m + s.token_matches, n + s.utterances));
    assert!(n > 0, "no LibriSpeech utterances ran");
    m as f64 / n as f64
}

/// WER of `subset` within 0.2 percentage points of openai-whisper's.
fn assert_wer_close(r: &Report, model: &str, mode: &str, subset: &str) {
    let s = &r.subsets[subset];
    let ours = 100.0 * s.edits as f64 / s.ref_words as f64;
    let theirs = reference_wer(model, mode)[subset];
    assert!((ours - theirs).abs() <= 0.2, "{model} {mode} {subset}: WER {ours:.3}% vs reference {theirs:.3}%");
}

fn check_greedy(model: &str, jfk: &str) {
    let r = run(model, "greedy", None);
    let m = librispeech_match(&r);
    assert!(m >= 0.98, "{model} greedy: tokens match on {:.1}% of LibriSpeech, need 98%", 100.0 * m);
    for subset in ["test-clean", "test-other", "ljspeech", "smoke"] {
        assert_wer_close(&r, model, "greedy", subset);
    }
    assert_eq!(r.texts["jfk"], jfk);
}

fn check_beam5(model: &str) {
    let r = run(model, "beam5", Some(5));
    let m = librispeech_match(&r);
    assert!(m >= 0.95, "{model} beam5: tokens match on {:.1}% of LibriSpeech, need 95%", 100.0 * m);
}

#[test]
fn tiny_en_greedy() {
    check_greedy(
        "tiny.en",
        "And so my fellow Americans ask not what your country can do for you ask what you can do for your country.",
    );
}

#[test]
fn tiny_en_beam5() {
    check_beam5("tiny.en");
}

#[test]
fn base_greedy() {
    check_greedy(
        "base",
        "And so my fellow Americans, ask not what your country can do for you, ask what you can do for your country.",
    );
}

#[test]
fn base_beam5() {
    check_beam5("base");
}
