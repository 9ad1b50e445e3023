//! `eval --compare OTHER/results.jsonl`: two systems in one table (WER on the utterances both
//! have, time and memory from each side's summary.json), then the utterances whose normalized
//! hypotheses differ. The other side may be any results file with `id`, `subset`,
//! `normalized_ref` and `normalized_hyp` per line: ours, `scripts/reference_pytorch.py`'s, or
//! openai-whisper's reference outputs in `../shared/data/reference/`.
use super::align::{align, Edits};
use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

pub struct Row {
    pub normalized_ref: String,
    pub normalized_hyp: String,
    pub audio_seconds: f64,
}

pub struct Side {
    pub name: String,
    pub rows: BTreeMap<(String, String), Row>,
    pub summary: Option<Value>,
}

/// Reads a results file and the summary.json beside it, if any.
pub fn load_side(path: &Path) -> Result<Side> {
    if path.is_dir() {
        bail!("{}: is a directory; name its results.jsonl", path.display());
    }
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read results", path.display()))?;
    // A torn last line (a run killed mid-write) is left out, as --resume does.
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let text = std::str::from_utf8(&bytes[..complete]).with_context(|| format!("{}: not UTF-8", path.display()))?;
    let mut rows = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).with_context(|| format!("{} line {}: not JSON", path.display(), i + 1))?;
        let field = |k: &str| -> Result<String> {
            match v.get(k).and_then(Value::as_str) {
                Some(s) => Ok(s.to_string()),
                None => bail!("{} line {}: no {k:?} string", path.display(), i + 1),
            }
        };
        let id = field("id")?;
        let subset = v.get("subset").and_then(Value::as_str).unwrap_or("default").to_string();
        let audio_seconds = v
            .get("audio_seconds")
            .and_then(Value::as_f64)
            .or_else(|| v.get("audio_samples").and_then(Value::as_f64).map(|n| n / 16000.0))
            .unwrap_or(0.0);
        let row = Row { normalized_ref: field("normalized_ref")?, normalized_hyp: field("normalized_hyp")?, audio_seconds };
        if rows.insert((subset.clone(), id.clone()), row).is_some() {
            bail!("{} line {}: {subset}/{id} appears twice", path.display(), i + 1);
        }
    }
    if rows.is_empty() {
        bail!("{}: no results in it", path.display());
    }
    let summary_path = path.with_file_name("summary.json");
    let summary = match std::fs::read_to_string(&summary_path) {
        Ok(s) => Some(serde_json::from_str(&s).with_context(|| format!("{}: not JSON", summary_path.display()))?),
        Err(_) => None,
    };
    let name = summary
        .as_ref()
        .and_then(|s: &Value| s.pointer("/system/name").and_then(Value::as_str).map(str::to_string))
        .or_else(|| {
            let parent = path.parent()?.file_name()?.to_string_lossy().into_owned();
            Some(format!("{parent}/{}", path.file_name()?.to_string_lossy()))
        })
        .unwrap_or_else(|| path.display().to_string());
    Ok(Side { name, rows, summary })
}

fn num(s: &Option<Value>, pointer: &str) -> Option<f64> {
    s.as_ref()?.pointer(pointer)?.as_f64()
}

fn text(s: &Option<Value>, pointer: &str) -> Option<String> {
    s.as_ref()?.pointer(pointer)?.as_str().map(str::to_string)
}

fn mib(b: Option<f64>) -> String {
    b.map_or_else(|| "n/a".into(), |b| format!("{:.0} MiB", b / (1u64 << 20) as f64))
}

/// The comparison report of `a` (this run) and `b` (the other).
pub fn report(a: &Side, b: &Side) -> String {
    let mut out = String::new();
    let common: Vec<&(String, String)> = a.rows.keys().filter(|k| b.rows.contains_key(*k)).collect();
    let only_a = a.rows.len() - common.len();
    let only_b = b.rows.len() - common.len();
    let width = a.name.len().max(b.name.len()).clamp(6, 40);
    let _ = writeln!(
        out,
        "WER on the {} utterances both have{}",
        common.len(),
        if only_a + only_b > 0 { format!(" ({only_a} only in {}, {only_b} only in {})", a.name, b.name) } else { String::new() }
    );
    let _ = writeln!(
        out,
        "{:<width$} {:<12} {:>6} {:>7} {:>7} {:>5} {:>5} {:>5}",
        "system", "subset", "utts", "words", "WER %", "S", "D", "I"
    );
    // Per subset, then the total, each side's row under the other's.
    let mut subsets: BTreeMap<&str, (Edits, Edits, usize)> = BTreeMap::new();
    for k in &common {
        let (ra, rb) = (&a.rows[*k], &b.rows[*k]);
        let e = subsets.entry(k.0.as_str()).or_default();
        e.0.add(&align(&ra.normalized_ref, &ra.normalized_hyp));
        e.1.add(&align(&rb.normalized_ref, &rb.normalized_hyp));
        e.2 += 1;
    }
    let mut rows: Vec<(String, Edits, Edits, usize)> =
        subsets.into_iter().map(|(k, (ea, eb, n))| (k.to_string(), ea, eb, n)).collect();
    if rows.len() > 1 {
        let mut t = ("total".to_string(), Edits::default(), Edits::default(), 0);
        for (_, ea, eb, n) in &rows {
            t.1.add(ea);
            t.2.add(eb);
            t.3 += n;
        }
        rows.push(t);
    }
    for (name, ea, eb, n) in rows {
        for (sys, e) in [(&a.name, ea), (&b.name, eb)] {
            let _ = writeln!(
                out,
                "{:<width$} {:<12} {:>6} {:>7} {:>7.2} {:>5} {:>5} {:>5}",
                sys, name, n, e.ref_words, e.wer_percent(), e.substitutions, e.deletions, e.insertions
            );
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<width$} {:>9} {:>8} {:>8} {:>15} {:>15}  device",
        "system", "wall s", "RTF", "tok/s", "peak GPU mem", "torch alloc"
    );
    for side in [a, b] {
        let s = &side.summary;
        let audio: f64 = side.rows.values().map(|r| r.audio_seconds).sum();
        let wall = num(s, "/total/wall_seconds");
        let rtf = num(s, "/total/real_time_factor").or_else(|| wall.map(|w| w / audio.max(1e-9)));
        let device = text(s, "/system/gpu")
            .filter(|g| g != "n/a")
            .or_else(|| text(s, "/system/backend"))
            .unwrap_or_else(|| "n/a (no summary.json)".into());
        let _ = writeln!(
            out,
            "{:<width$} {:>9} {:>8} {:>8} {:>15} {:>15}  {}",
            side.name,
            wall.map_or_else(|| "n/a".into(), |w| format!("{w:.2}")),
            rtf.map_or_else(|| "n/a".into(), |r| format!("{r:.4}")),
            num(s, "/total/tokens_per_second").map_or_else(|| "n/a".into(), |t| format!("{t:.1}")),
            mib(num(s, "/peak_gpu_memory_bytes")),
            mib(num(s, "/torch_max_memory_allocated_bytes")),
            device
        );
    }
    let differ: Vec<&&(String, String)> =
        common.iter().filter(|k| a.rows[**k].normalized_hyp != b.rows[**k].normalized_hyp).collect();
    let _ = writeln!(out);
    let _ = writeln!(out, "normalized hypotheses differ on {} of {} utterances", differ.len(), common.len());
    for k in differ {
        let (ra, rb) = (&a.rows[*k], &b.rows[*k]);
        let (ea, eb) = (align(&ra.normalized_ref, &ra.normalized_hyp), align(&rb.normalized_ref, &rb.normalized_hyp));
        let _ = writeln!(out, "{}/{}: {} errors vs {}", k.0, k.1, ea.errors(), eb.errors());
        let _ = writeln!(out, "  {:<width$} {}", "reference", ra.normalized_ref);
        let _ = writeln!(out, "  {:<width$} {}", a.name, ra.normalized_hyp);
        let _ = writeln!(out, "  {:<width$} {}", b.name, rb.normalized_hyp);
    }
    out
}
