//! `summary.json` and the printed table: WER with its kinds, speed and memory per subset.
use super::align::Edits;
use super::results::Record;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Totals of one subset (or of all of them).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    pub utterances: usize,
    /// Flattened: the JSON keys are `substitutions`, `deletions`, `insertions`, `ref_words`.
    #[serde(flatten)]
    pub edits: Edits,
    pub word_errors: usize,
    pub wer_percent: f64,
    pub audio_seconds: f64,
    pub audio_hours: f64,
    pub decoded_tokens: usize,
    /// Sum of the utterances' `wall_seconds` (decoding time; model loading excluded).
    pub wall_seconds: f64,
    pub real_time_factor: f64,
    pub tokens_per_second: f64,
}

impl Stats {
    pub fn add(&mut self, r: &Record) {
        self.edits.add(&r.edits);
        self.utterances += 1;
        self.word_errors = self.edits.errors();
        self.wer_percent = round(self.edits.wer_percent(), 4);
        self.audio_seconds += r.audio_seconds;
        self.audio_hours = self.audio_seconds / 3600.0;
        self.decoded_tokens += r.tokens.len();
        self.wall_seconds += r.wall_seconds;
        self.real_time_factor = ratio(self.wall_seconds, self.audio_seconds);
        self.tokens_per_second = ratio(self.decoded_tokens as f64, self.wall_seconds);
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

fn round(x: f64, digits: i32) -> f64 {
    if !x.is_finite() {
        return x;
    }
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

/// Per-subset and total statistics of some records.
pub fn tally<'a>(records: impl IntoIterator<Item = &'a Record>) -> (BTreeMap<String, Stats>, Stats) {
    let mut subsets: BTreeMap<String, Stats> = BTreeMap::new();
    let mut total = Stats::default();
    for r in records {
        subsets.entry(r.subset.clone()).or_default().add(r);
        total.add(r);
    }
    (subsets, total)
}

/// What ran: recorded in summary.json, and checked on `--resume` so that one results file never
/// mixes decoding settings.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Decoding {
    pub model: String,
    pub beam_size: Option<usize>,
    pub patience: f32,
    pub language: Option<String>,
    pub task: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct System {
    /// "whisper-trt 0.1.0", or the other system's name in its own summary.
    pub name: String,
    /// "cpu" or "cuda".
    pub backend: String,
    pub model_dir: String,
    /// GPU name, or "n/a" on the CPU.
    pub gpu: String,
    /// The engine file and the options it was built with (GPU only).
    pub engine: Option<serde_json::Value>,
    pub cpu_threads: usize,
    pub max_batch: usize,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// False while the run is going (written at the start), true once every selected utterance
    /// has a result.
    pub complete: bool,
    pub dataset: String,
    pub decoding: Decoding,
    pub system: System,
    pub subsets: BTreeMap<String, Stats>,
    pub total: Stats,
    /// Utterances that failed in the last run (not in results.jsonl; a --resume tries them again).
    pub failures: usize,
    /// Largest device memory in use seen after any utterance (cuMemGetInfo: the whole GPU, this
    /// process's context included), in bytes; None on the CPU.
    pub peak_gpu_memory_bytes: Option<u64>,
    /// The backend's own report at the end (weights and buffers), when on a GPU.
    pub gpu_memory: Option<String>,
    /// Peak resident memory of the last run's process (VmHWM).
    pub peak_host_memory: String,
    /// Wall time of the last run's process, model loading included.
    pub run_wall_seconds: f64,
}

pub fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// The table `eval` prints.
pub fn table(s: &Summary) -> String {
    let mut out = String::new();
    let head = format!(
        "{:<12} {:>6} {:>7} {:>7} {:>5} {:>5} {:>5} {:>8} {:>8} {:>7} {:>8}\n",
        "subset", "utts", "words", "WER %", "S", "D", "I", "audio h", "wall s", "RTF", "tok/s"
    );
    out.push_str(&head);
    let row = |name: &str, t: &Stats| {
        format!(
            "{:<12} {:>6} {:>7} {:>7.2} {:>5} {:>5} {:>5} {:>8.4} {:>8.2} {:>7.4} {:>8.1}\n",
            name,
            t.utterances,
            t.edits.ref_words,
            t.wer_percent,
            t.edits.substitutions,
            t.edits.deletions,
            t.edits.insertions,
            t.audio_hours,
            t.wall_seconds,
            t.real_time_factor,
            t.tokens_per_second
        )
    };
    for (name, t) in &s.subsets {
        out.push_str(&row(name, t));
    }
    if s.subsets.len() > 1 {
        out.push_str(&row("total", &s.total));
    }
    let d = &s.decoding;
    let mode = match d.beam_size {
        Some(n) => format!("beam {n} (patience {})", d.patience),
        None => "greedy".into(),
    };
    out.push_str(&format!(
        "model {} ({}), {mode}, {} on {}\n",
        d.model,
        s.system.model_dir,
        s.system.backend,
        if s.system.backend == "cpu" { format!("{} threads", s.system.cpu_threads) } else { s.system.gpu.clone() }
    ));
    if let Some(e) = &s.system.engine {
        out.push_str(&format!("engine {e}\n"));
    }
    out.push_str(&format!(
        "peak GPU memory {}{}; peak host memory {}; run wall time {:.1} s\n",
        s.peak_gpu_memory_bytes.map_or_else(|| "n/a".to_string(), mib),
        s.gpu_memory.as_ref().map(|m| format!(" ({m} at the end)")).unwrap_or_default(),
        s.peak_host_memory,
        s.run_wall_seconds
    ));
    if s.failures > 0 {
        out.push_str(&format!("{} utterances failed (run again with --resume to retry them)\n", s.failures));
    }
    out
}
