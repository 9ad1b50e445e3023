//! The English normalizer against openai-whisper's outputs: the 6,202-line reference TSV,
//! the hypotheses and dataset transcripts of the reference runs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use whisper_trt::text::normalizer::{BasicTextNormalizer, EnglishTextNormalizer};

fn shared() -> PathBuf {
    std::env::var("WHISPER_TRT_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared")))
}

fn normalizer() -> EnglishTextNormalizer {
    let path = shared().join("data/whisper/english.json");
    EnglishTextNormalizer::from_json_file(&path).expect("load english.json")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Lines of `<model>/<mode>.jsonl` as JSON objects.
fn reference_lines() -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    for file in [
        "tiny.en/greedy.jsonl",
        "tiny.en/beam5.jsonl",
        "base/greedy.jsonl",
        "base/beam5.jsonl",
    ] {
        let path = shared().join("data/reference").join(file);
        for line in read(&path).lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).expect("jsonl line");
            out.push((file.to_string(), v));
        }
    }
    out
}

fn field<'a>(v: &'a serde_json::Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("missing string field {key} in {v}"))
}

/// Reports mismatches (first 20) and asserts there are none.
fn check_all(what: &str, cases: &[(String, String, String)]) {
    let bad: Vec<_> = cases.iter().filter(|(_, got, want)| got != want).collect();
    println!("{what}: {} cases, {} mismatches", cases.len(), bad.len());
    for (input, got, want) in bad.iter().take(20) {
        println!("  input {input:?}\n    got  {got:?}\n    want {want:?}");
    }
    assert!(
        bad.is_empty(),
        "{what}: {} of {} mismatch",
        bad.len(),
        cases.len()
    );
}

#[test]
fn reference_tsv_matches_exactly() {
    let norm = normalizer();
    let path = shared().join("data/reference/normalizer/english_normalizer.tsv");
    let text = read(&path);
    // One case per "\n"-terminated line; the input is everything before the first tab and
    // the expected output everything after it, spaces included (no escaping in the file).
    let lines: Vec<&str> = text.split('\n').filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len(), 6202, "{}: line count", path.display());
    let start = Instant::now();
    let cases: Vec<(String, String, String)> = lines
        .iter()
        .map(|line| {
            let (input, want) = line.split_once('\t').expect("tab in every line");
            (input.to_string(), norm.normalize(input), want.to_string())
        })
        .collect();
    println!("normalized {} lines in {:?}", cases.len(), start.elapsed());
    check_all("english_normalizer.tsv", &cases);
}

#[test]
fn hypotheses_match_reference_runs() {
    let norm = normalizer();
    let cases: Vec<_> = reference_lines()
        .iter()
        .map(|(_, v)| {
            let text = field(v, "text");
            (
                text.to_string(),
                norm.normalize(text),
                field(v, "normalized_hyp").to_string(),
            )
        })
        .collect();
    assert!(
        cases.len() > 600,
        "too few reference lines: {}",
        cases.len()
    );
    check_all("normalized_hyp", &cases);
}

/// `<id> <text>` transcript lines of LibriSpeech (full test sets and per-chapter files) and
/// LJSpeech.
fn transcripts() -> HashMap<String, String> {
    let mut files = vec![
        shared().join("data/librispeech/transcripts/test-clean.trans.txt"),
        shared().join("data/librispeech/transcripts/test-other.trans.txt"),
        shared().join("data/ljspeech/trans.txt"),
    ];
    let mut stack = vec![shared().join("data/librispeech/LibriSpeech")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)
            .expect("read LibriSpeech dir")
            .flatten()
        {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(".trans.txt") {
                files.push(p);
            }
        }
    }
    let mut map = HashMap::new();
    for file in files {
        for line in read(&file).lines() {
            if let Some((id, text)) = line.split_once(' ') {
                let old = map.insert(id.to_string(), text.to_string());
                if let Some(old) = old {
                    assert_eq!(old, text, "{id}: transcripts disagree between files");
                }
            }
        }
    }
    map
}

#[test]
fn dataset_transcripts_match_normalized_refs() {
    let norm = normalizer();
    let trans = transcripts();
    let lines = reference_lines();
    let mut cases = Vec::new();
    let mut without_transcript = Vec::new();
    for (file, v) in &lines {
        let id = field(v, "id");
        match trans.get(id) {
            Some(text) => cases.push((
                text.clone(),
                norm.normalize(text),
                field(v, "normalized_ref").to_string(),
            )),
            None => without_transcript.push(format!("{file}:{id}")),
        }
    }
    // Only jfk (the "smoke" subset) has no transcript file; its reference is in the README.
    assert!(
        without_transcript.iter().all(|s| s.ends_with(":jfk")),
        "no transcript for {without_transcript:?}"
    );
    assert!(
        cases.len() + 4 >= lines.len(),
        "checked {} of {}",
        cases.len(),
        lines.len()
    );
    check_all("normalized_ref", &cases);
}

#[test]
fn spot_checks_and_errors() {
    let norm = normalizer();
    // Outputs of openai-whisper 20250625's EnglishTextNormalizer.
    for (input, want) in [
        ("", ""),
        ("   ", ""),
        ("one point five percent", "one.5%"),
        (
            "nine hundred and ninety nine decillion",
            "999000000000000000000000000000000000",
        ),
        (
            "twelve thousand three hundred forty five quintillion",
            "345000000000000012000",
        ),
        ("12345678901234567890123 million", "12345678901234690890000"),
        ("the ninth and the nineth", "the ninth and the 9th"),
        ("one two three", "123"),
        ("1.0", "one"),
        ("two and a half dollars", "$2.5"),
        ("zero point five million", "500000"),
        ("point five million", "500000"),
        ("one point two point three million", "one.2.3 1000000"),
        ("Ⅻ ٣ ٣.٥ x²", "xii 3 3 5 x 2"),
        ("\u{1C}a\u{1D}b", "a b"),
    ] {
        assert_eq!(norm.normalize(input), want, "input {input:?}");
    }

    let err = EnglishTextNormalizer::from_json_file(Path::new("/nonexistent/english.json"))
        .err()
        .expect("missing file must fail");
    assert!(
        format!("{err:#}").contains("/nonexistent/english.json"),
        "{err:#}"
    );
}

#[test]
fn basic_normalizer_matches_python() {
    // Outputs of openai-whisper 20250625's BasicTextNormalizer.
    let cases = [
        (
            false,
            false,
            "Héllo, [noise] (aside) Wörld!  ½",
            "héllo wörld 1 2",
        ),
        (
            true,
            false,
            "Héllo, Wörld! Æsir œuvre",
            "hello world aesir oeuvre",
        ),
        (false, true, "Ça va?", "ç a v a "),
    ];
    for (remove_diacritics, split_letters, input, want) in cases {
        let n = BasicTextNormalizer::new(remove_diacritics, split_letters);
        assert_eq!(n.normalize(input), want, "input {input:?}");
    }
}
