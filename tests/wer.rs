//! Word error rate against the reference runs: per-utterance edits and word counts, and the
//! corpus WER per subset in summary.json.

use std::collections::BTreeMap;
use std::path::PathBuf;

use whisper_trt::text::wer::{word_count, word_edits, WerStats};

fn shared() -> PathBuf {
    std::env::var("WHISPER_TRT_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared")))
}

fn read_json_lines(path: &PathBuf) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("jsonl line"))
        .collect()
}

#[test]
fn edit_distance_basics() {
    assert_eq!(word_edits("", ""), 0);
    assert_eq!(word_edits("a b c", "a b c"), 0);
    assert_eq!(word_edits("a b c", "a x c"), 1);
    assert_eq!(word_edits("a b c", "a c"), 1);
    assert_eq!(word_edits("a c", "a b c"), 1);
    assert_eq!(word_edits("a b c", ""), 3);
    assert_eq!(word_edits("", "a b"), 2);
    assert_eq!(word_edits("kitten sat on mat", "sitting sat mat on"), 3);
    assert_eq!(word_edits("  a   b ", "a b"), 0);
    assert_eq!(word_count(" one  two three "), 3);

    let mut s = WerStats::default();
    assert_eq!(s.wer(), 0.0);
    s.add("a b c d", "a x c");
    s.add("e f", "e f");
    assert_eq!(
        s,
        WerStats {
            edits: 2,
            ref_words: 6
        }
    );
    assert!((s.wer() - 2.0 / 6.0).abs() < 1e-12);
}

#[test]
fn reference_runs_and_summary() {
    let base = shared().join("data/reference");
    let summary_path = base.join("summary.json");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary_path).expect("read summary.json"))
            .expect("parse summary.json");

    let mut compared = 0;
    for model in ["tiny.en", "base"] {
        for mode in ["greedy", "beam5"] {
            let lines = read_json_lines(&base.join(model).join(format!("{mode}.jsonl")));
            let mut per_subset: BTreeMap<String, (WerStats, usize)> = BTreeMap::new();
            for v in &lines {
                let r = v["normalized_ref"].as_str().expect("normalized_ref");
                let h = v["normalized_hyp"].as_str().expect("normalized_hyp");
                let id = v["id"].as_str().unwrap_or("?");
                assert_eq!(
                    word_edits(r, h) as u64,
                    v["word_edits"].as_u64().expect("word_edits"),
                    "{model} {mode} {id}: word_edits"
                );
                assert_eq!(
                    word_count(r) as u64,
                    v["ref_words"].as_u64().expect("ref_words"),
                    "{model} {mode} {id}: ref_words"
                );
                let entry = per_subset
                    .entry(v["subset"].as_str().expect("subset").to_string())
                    .or_default();
                entry.0.add(r, h);
                entry.1 += 1;
            }

            let expected = summary[model][mode]
                .as_object()
                .expect("summary model/mode");
            let got: Vec<&String> = per_subset.keys().collect();
            let want: Vec<&String> = expected.keys().collect();
            assert_eq!(got, want, "{model} {mode}: subsets");
            for (subset, (stats, utterances)) in &per_subset {
                let e = &expected[subset];
                println!(
                    "{model} {mode} {subset}: {:?} WER {:.3}%",
                    stats,
                    stats.wer() * 100.0
                );
                assert_eq!(
                    *utterances as u64,
                    e["utterances"].as_u64().unwrap(),
                    "{model} {mode} {subset}"
                );
                assert_eq!(
                    stats.edits as u64,
                    e["word_errors"].as_u64().unwrap(),
                    "{model} {mode} {subset}"
                );
                assert_eq!(
                    stats.ref_words as u64,
                    e["ref_words"].as_u64().unwrap(),
                    "{model} {mode} {subset}"
                );
                let want_pct = e["wer_percent"].as_f64().unwrap();
                assert!(
                    (stats.wer() * 100.0 - want_pct).abs() <= 0.0005 + 1e-9,
                    "{model} {mode} {subset}: WER {} vs {want_pct}",
                    stats.wer() * 100.0
                );
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 14, "subsets compared");
}
