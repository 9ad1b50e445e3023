//! `whisper-trt eval` end to end through the binary, on the CPU backend with tiny.en: the WER bar
//! against openai-whisper, kill and `--resume`, `--compare`, `trans.txt` folders and bad input.
mod common;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_whisper-trt"));
    c.env("WHISPER_TRT_MODELS", common::models());
    c
}

fn librispeech() -> PathBuf {
    common::shared().join("data/librispeech")
}

/// `eval` on the CPU with tiny.en and the shared spelling table, plus `extra`.
fn eval_cmd(data: &Path, extra: &[&str]) -> Command {
    let mut c = bin();
    c.arg("eval")
        .arg("--librispeech")
        .arg(data)
        .arg("--model")
        .arg(common::model_dir("tiny.en"))
        .args(["--device", "cpu", "--spelling"])
        .arg(common::shared().join("data/whisper/english.json"))
        .args(extra);
    c
}

fn ok(out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "eval failed ({:?}): {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Exit status 1 with exactly one `error:` line on stderr, naming `name`, and no panic.
fn clean_failure(out: &Output, name: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "stderr {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one error line, got {stderr:?}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(lines[0].contains(name), "error does not name {name}: {stderr}");
    stderr
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn result_lines(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The accuracy fields of a summary (per subset and total); times differ from run to run.
fn accuracy(summary: &Value) -> Value {
    let keep = |s: &Value| {
        let mut m = serde_json::Map::new();
        for k in [
            "utterances",
            "ref_words",
            "substitutions",
            "deletions",
            "insertions",
            "word_errors",
            "wer_percent",
            "audio_seconds",
            "decoded_tokens",
        ] {
            m.insert(k.into(), s[k].clone());
        }
        Value::Object(m)
    };
    let subsets: serde_json::Map<String, Value> =
        summary["subsets"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), keep(v))).collect();
    serde_json::json!({"complete": summary["complete"], "failures": summary["failures"],
        "decoding": summary["decoding"], "subsets": subsets, "total": keep(&summary["total"])})
}

#[test]
fn librispeech_wer_matches_openai_whisper() {
    let dir = common::temp_dir("eval-bar");
    let openai = common::shared().join("data/reference/tiny.en/greedy.jsonl");
    let stdout = ok(eval_cmd(&librispeech(), &["--output", dir.to_str().unwrap(), "--compare", openai.to_str().unwrap()])
        .output()
        .unwrap());
    println!("{stdout}");
    // Side by side with openai-whisper's own outputs: the tokens match on at least 98% of these
    // utterances (tests/reference_bars.rs), so at most one hypothesis may differ.
    let differ: usize = stdout
        .lines()
        .find_map(|l| l.strip_prefix("normalized hypotheses differ on "))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no comparison in {stdout}"));
    assert!(differ <= 1, "{differ} hypotheses differ from openai-whisper's: {stdout}");
    assert!(stdout.contains("WER on the 61 utterances both have"), "{stdout}");
    let ours = read_json(&dir.join("summary.json"));
    let reference = read_json(&common::shared().join("data/reference/summary.json"));
    assert_eq!(ours["complete"], true);
    assert_eq!(ours["total"]["utterances"], 61);
    for subset in ["test-clean", "test-other"] {
        let (o, r) = (&ours["subsets"][subset], &reference["tiny.en"]["greedy"][subset]);
        assert_eq!(o["utterances"], r["utterances"], "{subset}");
        assert_eq!(o["ref_words"], r["ref_words"], "{subset}");
        let (ow, rw) = (o["wer_percent"].as_f64().unwrap(), r["wer_percent"].as_f64().unwrap());
        println!("{subset}: WER {ow:.3}% (openai-whisper {rw:.3}%)");
        assert!((ow - rw).abs() <= 0.1, "{subset}: WER {ow:.3}% vs openai-whisper {rw:.3}%");
        // The kinds add up to the errors, and the errors to the WER.
        let sdi: u64 = ["substitutions", "deletions", "insertions"].iter().map(|k| o[*k].as_u64().unwrap()).sum();
        assert_eq!(sdi, o["word_errors"].as_u64().unwrap());
        let wer = 100.0 * sdi as f64 / o["ref_words"].as_f64().unwrap();
        assert!((wer - ow).abs() < 1e-3, "{subset}: {wer} vs {ow}");
    }
    // Every line of results.jsonl holds what the issue lists, and its counts are its own.
    let lines = result_lines(&dir);
    assert_eq!(lines.len(), 61);
    for l in &lines {
        for k in ["id", "subset", "reference", "hypothesis", "normalized_ref", "normalized_hyp"] {
            assert!(l[k].is_string(), "{k} in {l}");
        }
        let n = |k: &str| l[k].as_u64().unwrap_or_else(|| panic!("{k} in {l}"));
        assert_eq!(n("substitutions") + n("deletions") + n("insertions"), n("word_edits"));
        assert_eq!(n("ref_words") as usize, l["normalized_ref"].as_str().unwrap().split_whitespace().count());
        assert!(l["audio_seconds"].as_f64().unwrap() > 1.0);
    }
    assert!(stdout.contains("test-other") && stdout.contains("peak GPU memory n/a"), "{stdout}");
}

/// Runs eval on 8 test-other utterances into `dir`; with `kill_after`, kills it once that many
/// lines are in results.jsonl.
fn eval_run(dir: &Path, resume: bool, kill_after: Option<usize>) {
    // Two utterances in flight at a time: results come two by two, so a kill lands mid-run.
    let mut args = vec!["--subset", "test-other", "--limit", "8", "--max-batch", "2", "--output", dir.to_str().unwrap()];
    if resume {
        args.push("--resume");
    }
    let mut cmd = eval_cmd(&librispeech(), &args);
    let Some(k) = kill_after else {
        ok(cmd.output().unwrap());
        return;
    };
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    loop {
        let n = std::fs::read_to_string(dir.join("results.jsonl")).map_or(0, |s| s.lines().count());
        if n >= k {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "eval ended before {k} results were written");
        assert!(start.elapsed() < Duration::from_secs(300), "no {k} results after 300 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(child.try_wait().unwrap().is_none(), "eval finished before it could be killed");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn killed_then_resumed_gives_the_same_summary() {
    let whole = common::temp_dir("eval-whole");
    eval_run(&whole, false, None);
    let cut = common::temp_dir("eval-killed");
    eval_run(&cut, false, Some(2));
    let before = std::fs::read_to_string(cut.join("results.jsonl")).unwrap();
    let done = before.lines().count();
    assert!((2..8).contains(&done), "{done} results after the kill");
    // A kill during a write leaves a torn last line: add one by hand.
    let mut torn = before.clone();
    torn.push_str(r#"{"id":"1688-142285-0007","subset":"test-other","audio":"/x"#);
    std::fs::write(cut.join("results.jsonl"), &torn).unwrap();

    // Without --resume the earlier results are not overwritten.
    let out = eval_cmd(&librispeech(), &["--subset", "test-other", "--limit", "8", "--output", cut.to_str().unwrap()])
        .output()
        .unwrap();
    clean_failure(&out, "results.jsonl");

    eval_run(&cut, true, None);
    let after = std::fs::read_to_string(cut.join("results.jsonl")).unwrap();
    assert!(after.starts_with(&before), "the resumed run rewrote earlier results");
    let ids: Vec<String> = result_lines(&cut).iter().map(|l| l["id"].as_str().unwrap().to_string()).collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((ids.len(), unique.len()), (8, 8), "{ids:?}");

    let (a, b) = (read_json(&whole.join("summary.json")), read_json(&cut.join("summary.json")));
    assert_eq!(accuracy(&a), accuracy(&b), "uninterrupted vs killed and resumed");
    assert_eq!(a["total"]["utterances"], 8);
    assert_eq!(a["complete"], true);

    // Resuming a finished run transcribes nothing and leaves the results as they are.
    eval_run(&cut, true, None);
    assert_eq!(std::fs::read_to_string(cut.join("results.jsonl")).unwrap(), after);
    assert_eq!(accuracy(&read_json(&cut.join("summary.json"))), accuracy(&a));

    // A damaged line that is not the last one is an error naming the file, not a panic.
    let mut lines: Vec<&str> = after.lines().collect();
    lines[1] = "{not json";
    std::fs::write(cut.join("results.jsonl"), lines.join("\n") + "\n").unwrap();
    let out = eval_cmd(
        &librispeech(),
        &["--subset", "test-other", "--limit", "8", "--output", cut.to_str().unwrap(), "--resume"],
    )
    .output()
    .unwrap();
    clean_failure(&out, "results.jsonl line 2");
}

fn write_results(dir: &Path, rows: &[(&str, &str, &str, &str)], summary: Option<Value>) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut text = String::new();
    for (subset, id, r, h) in rows {
        let line = serde_json::json!({"id": id, "subset": subset, "normalized_ref": r, "normalized_hyp": h,
            "audio_seconds": 2.0});
        text.push_str(&format!("{line}\n"));
    }
    std::fs::write(dir.join("results.jsonl"), text).unwrap();
    if let Some(s) = summary {
        std::fs::write(dir.join("summary.json"), s.to_string()).unwrap();
    }
    dir.join("results.jsonl")
}

#[test]
fn compare_two_results_files() {
    let root = common::temp_dir("eval-compare");
    let a = root.join("ours");
    let b = root.join("theirs");
    write_results(
        &a,
        &[
            ("test-clean", "u1", "the cat sat", "the cat sat"),
            ("test-clean", "u2", "on the mat", "on a mat"),
            ("test-other", "u3", "a b c d", "a b c d"),
        ],
        Some(serde_json::json!({"system": {"name": "fast-system", "gpu": "Test GPU"},
            "total": {"wall_seconds": 12.5, "real_time_factor": 0.25, "tokens_per_second": 100.0},
            "peak_gpu_memory_bytes": 3u64 << 30})),
    );
    let other = write_results(
        &b,
        &[
            ("test-clean", "u1", "the cat sat", "the cat sat"),
            ("test-clean", "u2", "on the mat", "on the mat"),
            ("test-other", "u3", "a b c d", "a x c"),
            ("test-other", "u4", "only here", "only here"),
        ],
        None,
    );
    let out = bin()
        .args(["eval", "--output", a.to_str().unwrap(), "--compare", other.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = ok(out);
    println!("{stdout}");
    assert!(stdout.contains("WER on the 3 utterances both have (0 only in fast-system, 1 only in theirs/results.jsonl)"), "{stdout}");
    let row = |sys: &str, subset: &str| -> Vec<String> {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(sys) && l.split_whitespace().nth(1) == Some(subset))
            .unwrap_or_else(|| panic!("no {sys} {subset} row in {stdout}"));
        line.split_whitespace().map(str::to_string).collect()
    };
    // system subset utts words WER S D I
    assert_eq!(row("fast-system", "test-clean")[2..], ["2", "6", "16.67", "1", "0", "0"]);
    assert_eq!(row("theirs/results.jsonl", "test-clean")[2..], ["2", "6", "0.00", "0", "0", "0"]);
    assert_eq!(row("theirs/results.jsonl", "test-other")[2..], ["1", "4", "50.00", "1", "1", "0"]);
    assert_eq!(row("fast-system", "total")[2..], ["3", "10", "10.00", "1", "0", "0"]);
    assert_eq!(row("theirs/results.jsonl", "total")[2..], ["3", "10", "20.00", "1", "1", "0"]);
    // Time and memory from the summary beside each file; none beside the other one.
    let speed = stdout.lines().find(|l| l.starts_with("fast-system") && l.contains("MiB")).unwrap();
    assert!(speed.contains("12.50") && speed.contains("3072 MiB") && speed.contains("Test GPU"), "{speed}");
    assert!(stdout.contains("no summary.json"), "{stdout}");
    // The differing utterances, with both hypotheses.
    assert!(stdout.contains("normalized hypotheses differ on 2 of 3 utterances"), "{stdout}");
    assert!(stdout.contains("test-clean/u2: 1 errors vs 0") && stdout.contains("test-other/u3: 0 errors vs 2"), "{stdout}");
    assert!(!stdout.contains("test-clean/u1:"), "{stdout}");

    // A results file with a line that is not one names the file and line.
    std::fs::write(&other, "{\"id\": \"u1\"}\n").unwrap();
    let out = bin()
        .args(["eval", "--output", a.to_str().unwrap(), "--compare", other.to_str().unwrap()])
        .output()
        .unwrap();
    clean_failure(&out, "results.jsonl line 1");
}

/// A folder with trans.txt and its audio named by id (LJSpeech's layout: audio in wavs/).
#[test]
fn trans_txt_folder() {
    let root = common::temp_dir("eval-ljs").join("my-set");
    std::fs::create_dir_all(root.join("wavs")).unwrap();
    let lj = common::shared().join("data/ljspeech");
    let all = std::fs::read_to_string(lj.join("trans.txt")).unwrap();
    let picked: Vec<&str> = all.lines().take(2).collect();
    for line in &picked {
        let id = line.split(' ').next().unwrap();
        std::os::unix::fs::symlink(lj.join(format!("wavs/{id}.flac")), root.join(format!("wavs/{id}.flac"))).unwrap();
    }
    std::fs::write(root.join("trans.txt"), picked.join("\n") + "\n").unwrap();
    let out_dir = root.parent().unwrap().join("out");
    let stdout = ok(eval_cmd(&root, &["--output", out_dir.to_str().unwrap()]).output().unwrap());
    let s = read_json(&out_dir.join("summary.json"));
    assert_eq!(s["subsets"]["my-set"]["utterances"], 2, "{stdout}");
    assert!(s["total"]["wer_percent"].as_f64().unwrap() < 25.0, "{stdout}");
    assert!(s["total"]["audio_seconds"].as_f64().unwrap() > 5.0);

    // A listed id without audio is an error naming trans.txt.
    std::fs::write(root.join("trans.txt"), format!("{}\nLJ999-0001 NO AUDIO\n", picked[0])).unwrap();
    clean_failure(&eval_cmd(&root, &[]).output().unwrap(), "trans.txt line 2");
}

/// A LibriSpeech tree with one bad audio file: one error line naming it, exit status 1, the
/// other utterances still scored; bad paths give one error line.
#[test]
fn bad_input() {
    let root = common::temp_dir("eval-bad");
    let chapter = root.join("test-x/1089/134686");
    std::fs::create_dir_all(&chapter).unwrap();
    let src = librispeech().join("LibriSpeech/test-clean/1089/134686/1089-134686-0000.flac");
    std::os::unix::fs::symlink(&src, chapter.join("1089-134686-0000.flac")).unwrap();
    std::fs::write(chapter.join("1089-134686-0001.flac"), b"fLaC not really").unwrap();
    std::fs::write(
        chapter.join("1089-134686.trans.txt"),
        "1089-134686-0000 HE HOPED THERE WOULD BE STEW FOR DINNER\n1089-134686-0001 SOMETHING\n",
    )
    .unwrap();
    let out_dir = root.join("out");
    let out = eval_cmd(&root, &["--output", out_dir.to_str().unwrap()]).output().unwrap();
    clean_failure(&out, "1089-134686-0001.flac");
    assert_eq!(result_lines(&out_dir).len(), 1);
    let s = read_json(&out_dir.join("summary.json"));
    assert_eq!((s["failures"].as_u64(), s["complete"].as_bool()), (Some(1), Some(false)));
    assert_eq!(s["subsets"]["test-x"]["utterances"], 1);

    clean_failure(&eval_cmd(Path::new("/nonexistent/ls-root"), &[]).output().unwrap(), "/nonexistent/ls-root");
    clean_failure(&eval_cmd(&root, &["--subset", "test-y"]).output().unwrap(), "test-y");
    let missing = root.join("nothing/results.jsonl");
    clean_failure(
        &eval_cmd(&root, &["--compare", missing.to_str().unwrap()]).output().unwrap(),
        "nothing/results.jsonl",
    );
}
