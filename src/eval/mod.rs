//! `whisper-trt eval`: word error rate, speed and memory on LibriSpeech-layout data.
//!
//! - [`dataset`]: the utterances of a LibriSpeech tree or a `trans.txt` folder.
//! - [`align`]: substitutions, deletions and insertions of one utterance.
//! - [`results`]: `results.jsonl`, appended as utterances complete; `--resume` reads it back.
//! - [`summary`]: `summary.json` and the printed table.
//! - [`compare`]: `--compare OTHER/results.jsonl`.
pub mod align;
pub mod compare;
pub mod dataset;
pub mod results;
pub mod summary;

use crate::backends::Backend;
use crate::cli::{load_transcriber, one_line, progress, write_atomic, AnyTranscriber, ModelArgs, TaskArg};
use crate::text::normalizer::EnglishTextNormalizer;
use crate::transcribe::{Transcriber, Transcript};
use anyhow::{bail, Context, Result};
use dataset::Utterance;
use results::Record;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;
use summary::{Decoding, Summary, System};

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A LibriSpeech-layout directory (subsets such as test-clean as folders below it), or any
    /// folder holding `trans.txt` (`<id> <text>` lines) with audio named by id
    #[arg(long)]
    pub librispeech: Option<PathBuf>,
    /// Only these subsets, comma-separated (default: every one found)
    #[arg(long)]
    pub subset: Option<String>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// openai-whisper's english.json spelling table (default: the one setup installed)
    #[arg(long)]
    pub spelling: Option<PathBuf>,
    /// Only the first N utterances (sorted by subset, then id)
    #[arg(long)]
    pub limit: Option<usize>,
    /// 30 s windows transcribed together (default: the engine's max batch on the GPU, 8 on the
    /// CPU); a kill loses at most the utterances in flight
    #[arg(long = "max-batch", alias = "max_batch")]
    pub max_batch: Option<usize>,
    /// Directory for results.jsonl (one line per utterance as it completes) and summary.json
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// Go on with the results.jsonl in --output: skip the utterances it already has
    #[arg(long)]
    pub resume: bool,
    /// Another system's results.jsonl (summary.json beside it gives its time and memory): print
    /// both in one table and the utterances where they differ. Without --librispeech, compares
    /// the finished run in --output with it and transcribes nothing.
    #[arg(long)]
    pub compare: Option<PathBuf>,
}

pub fn run(args: EvalArgs) -> Result<i32> {
    let started = Instant::now();
    let Some(root) = args.librispeech.clone() else {
        return compare_only(&args);
    };
    if args.resume && args.output.is_none() {
        bail!("--resume needs --output DIR (the folder of the run to go on with)");
    }
    if args.max_batch == Some(0) {
        bail!("--max-batch must be at least 1");
    }
    // Read the other side first: a bad --compare path fails before any transcription.
    let other = args.compare.as_deref().map(compare::load_side).transpose()?;
    let spelling = args.spelling.clone().unwrap_or_else(crate::paths::english_spelling);
    let normalizer = EnglishTextNormalizer::from_json_file(&spelling)
        .with_context(|| "the English normalizer needs english.json: run scripts/fetch-model.sh tiny.en or pass --spelling")?;
    let mut utts = dataset::discover(&root)?;
    if let Some(s) = &args.subset {
        utts = dataset::select_subsets(utts, s, &root)?;
    }
    if let Some(n) = args.limit {
        utts.truncate(n);
    }
    let model_dir = args.model.model.clone().unwrap_or_else(crate::paths::default_model);
    let decoding = Decoding {
        model: model_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        beam_size: args.model.beam_size,
        patience: args.model.patience,
        language: args.model.language.clone(),
        task: match args.model.task {
            TaskArg::Transcribe => "transcribe".into(),
            TaskArg::Translate => "translate".into(),
        },
    };
    let mut summary = Summary { dataset: root.display().to_string(), decoding, ..Summary::default() };

    let out = match &args.output {
        Some(dir) => Some(Output::open(dir, args.resume, &summary.decoding)?),
        None => None,
    };
    // Results already written for this selection; lines of other utterances stay in the file.
    let selected: HashSet<(String, String)> = utts.iter().map(Utterance::key).collect();
    let mut done: Vec<Record> = match &out {
        Some(o) => o.previous.iter().filter(|r| selected.contains(&r.key())).cloned().collect(),
        None => Vec::new(),
    };
    let have: HashSet<(String, String)> = done.iter().map(Record::key).collect();
    let todo: Vec<&Utterance> = utts.iter().filter(|u| !have.contains(&u.key())).collect();

    let mut writer = match &out {
        Some(o) => Some(results::Writer::open(&o.results, args.resume)?),
        None => None,
    };
    if todo.is_empty() {
        // Nothing left to run: keep what the earlier run said about its system.
        if let Some(prev) = out.as_ref().and_then(|o| o.previous_summary.clone()) {
            summary.system = prev.system;
            summary.peak_gpu_memory_bytes = prev.peak_gpu_memory_bytes;
            summary.gpu_memory = prev.gpu_memory;
        }
    } else {
        let mut ctx = RunCtx {
            summary: &mut summary,
            out: out.as_ref(),
            writer: writer.as_mut(),
            normalizer: &normalizer,
            records: &mut done,
            total: utts.len(),
        };
        match load_transcriber(&args.model)? {
            AnyTranscriber::Cpu(t) => {
                let system = system_info(&*t, &model_dir, args.max_batch, None);
                run_with(&*t, system, &todo, &mut ctx, &|| None)?
            }
            AnyTranscriber::Cuda(t) => {
                let engine = args.model.engine.clone().unwrap_or_else(|| {
                    crate::engine::builder::default_engine_path(&model_dir, t.backend.gpu().compute_capability)
                });
                let mut options = serde_json::to_value(t.backend.options())?;
                if let Some(o) = options.as_object_mut() {
                    o.insert("path".into(), engine.display().to_string().into());
                }
                let mut system = system_info(&t, &model_dir, args.max_batch, Some(options));
                system.gpu = t.backend.gpu().name.clone();
                let used = || t.backend.gpu().mem_info().ok().map(|(free, total)| total.saturating_sub(free) as u64);
                run_with(&t, system, &todo, &mut ctx, &used)?
            }
        }
    }
    drop(writer);

    let (subsets, total) = summary::tally(&done);
    summary.subsets = subsets;
    summary.total = total;
    summary.complete = done.len() == utts.len();
    summary.peak_host_memory = peak_host_memory();
    summary.run_wall_seconds = started.elapsed().as_secs_f64();
    if let Some(o) = &out {
        o.write_summary(&summary)?;
    }
    print!("{}", summary::table(&summary));
    if let Some(other) = other {
        // This run's side: its results file, or what it holds in memory without --output.
        let ours = match &out {
            Some(o) => compare::load_side(&o.results)?,
            None => side_of(&summary, &done)?,
        };
        println!();
        print!("{}", compare::report(&ours, &other));
    }
    Ok(if summary.failures > 0 { 1 } else { 0 })
}

/// `eval --output A --compare B/results.jsonl`: two finished runs, nothing transcribed.
fn compare_only(args: &EvalArgs) -> Result<i32> {
    let (Some(other), Some(dir)) = (&args.compare, &args.output) else {
        bail!("eval needs --librispeech DIR (or --output DIR --compare OTHER/results.jsonl to compare two finished runs)");
    };
    let ours = compare::load_side(&dir.join("results.jsonl"))?;
    let theirs = compare::load_side(other)?;
    print!("{}", compare::report(&ours, &theirs));
    Ok(0)
}

/// This run as a comparison side (when no --output was given).
fn side_of(summary: &Summary, records: &[Record]) -> Result<compare::Side> {
    Ok(compare::Side {
        name: summary.system.name.clone(),
        rows: records
            .iter()
            .map(|r| {
                let row = compare::Row {
                    normalized_ref: r.normalized_ref.clone(),
                    normalized_hyp: r.normalized_hyp.clone(),
                    audio_seconds: r.audio_seconds,
                };
                (r.key(), row)
            })
            .collect(),
        summary: Some(serde_json::to_value(summary)?),
    })
}

/// The --output folder.
struct Output {
    results: PathBuf,
    summary: PathBuf,
    previous: Vec<Record>,
    previous_summary: Option<Summary>,
}

impl Output {
    fn open(dir: &Path, resume: bool, decoding: &Decoding) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create output directory", dir.display()))?;
        let results = dir.join("results.jsonl");
        let summary = dir.join("summary.json");
        let (mut previous, mut previous_summary) = (Vec::new(), None);
        if resume {
            previous = results::read(&results, true)?;
            if summary.is_file() {
                let text = std::fs::read_to_string(&summary).with_context(|| format!("{}: cannot read", summary.display()))?;
                let s: Summary = serde_json::from_str(&text)
                    .with_context(|| format!("{}: not a whisper-trt eval summary", summary.display()))?;
                if &s.decoding != decoding {
                    bail!(
                        "{}: the results here were made with {} and this run asks for {}: use another --output",
                        summary.display(),
                        serde_json::to_string(&s.decoding)?,
                        serde_json::to_string(decoding)?
                    );
                }
                previous_summary = Some(s);
            } else if !previous.is_empty() {
                bail!("{}: missing, so the decoding settings of {} are unknown", summary.display(), results.display());
            }
        }
        Ok(Output { results, summary, previous, previous_summary })
    }

    fn write_summary(&self, s: &Summary) -> Result<()> {
        let text = serde_json::to_string_pretty(s)? + "\n";
        write_atomic(&self.summary, text.as_bytes())
    }
}

struct RunCtx<'a> {
    summary: &'a mut Summary,
    out: Option<&'a Output>,
    writer: Option<&'a mut results::Writer>,
    normalizer: &'a EnglishTextNormalizer,
    /// Results so far, the earlier run's included.
    records: &'a mut Vec<Record>,
    total: usize,
}

fn system_info<B: Backend>(
    t: &Transcriber<B>,
    model_dir: &Path,
    max_batch: Option<usize>,
    engine: Option<serde_json::Value>,
) -> System {
    System {
        name: format!("whisper-trt {}", env!("CARGO_PKG_VERSION")),
        backend: t.backend.name().to_string(),
        model_dir: model_dir.display().to_string(),
        gpu: "n/a".into(),
        engine,
        cpu_threads: rayon::current_num_threads(),
        max_batch: max_batch.unwrap_or_else(|| t.default_batch()),
    }
}

/// Transcribes `utts`, `max_batch` windows at a time, and calls `done` once for each utterance, in
/// order, as it completes.
fn transcribe_each<B: Backend>(
    t: &Transcriber<B>,
    utts: &[&Utterance],
    max_batch: usize,
    done: &mut dyn FnMut(&Utterance, Result<Transcript>) -> Result<()>,
) -> Result<()> {
    let paths: Vec<&Path> = utts.iter().map(|u| u.audio.as_path()).collect();
    t.transcribe_files(&paths, max_batch, |i, r| done(utts[i], r))
}

fn run_with<B: Backend>(
    t: &Transcriber<B>,
    system: System,
    todo: &[&Utterance],
    ctx: &mut RunCtx,
    gpu_memory_used: &dyn Fn() -> Option<u64>,
) -> Result<()> {
    ctx.summary.system = system;
    let prev = ctx.out.and_then(|o| o.previous_summary.as_ref());
    let mut peak = prev.and_then(|p| p.peak_gpu_memory_bytes);
    let sample = |peak: &mut Option<u64>| {
        if let Some(used) = gpu_memory_used() {
            *peak = Some(peak.map_or(used, |p| p.max(used)));
        }
    };
    sample(&mut peak);
    // Written at the start too, so that a killed run leaves its settings for --resume.
    if let Some(o) = ctx.out {
        let (subsets, total) = summary::tally(ctx.records.iter());
        o.write_summary(&Summary { subsets, total, ..ctx.summary.clone() })?;
    }
    let bar = progress(ctx.total);
    bar.set_position(ctx.records.len() as u64);
    let mut running = summary::tally(ctx.records.iter()).1.edits;
    let mut failures = 0;
    let mut last = Instant::now();
    let (normalizer, writer, records) = (ctx.normalizer, &mut ctx.writer, &mut *ctx.records);
    let max_batch = ctx.summary.system.max_batch;
    transcribe_each(t, todo, max_batch, &mut |u, result| {
        let now = Instant::now();
        let wall_seconds = now.duration_since(last).as_secs_f64();
        last = now;
        sample(&mut peak);
        bar.inc(1);
        let tr = match result {
            Ok(tr) => tr,
            Err(e) => {
                failures += 1;
                bar.suspend(|| eprintln!("error: {}", one_line(&e)));
                return Ok(());
            }
        };
        let (normalized_ref, normalized_hyp) = (normalizer.normalize(&u.reference), normalizer.normalize(&tr.text));
        let e = align::align(&normalized_ref, &normalized_hyp);
        running.add(&e);
        let r = Record {
            id: u.id.clone(),
            subset: u.subset.clone(),
            audio: u.audio.display().to_string(),
            reference: u.reference.clone(),
            hypothesis: tr.text.trim().to_string(),
            normalized_ref,
            normalized_hyp,
            edits: e,
            word_edits: e.errors(),
            audio_seconds: tr.duration,
            tokens: tr.tokens,
            wall_seconds,
        };
        if let Some(w) = writer.as_mut() {
            w.append(&r)?;
        }
        records.push(r);
        bar.set_message(format!("WER {:.2}%", running.wer_percent()));
        Ok(())
    })?;
    bar.finish_and_clear();
    ctx.summary.failures = failures;
    ctx.summary.peak_gpu_memory_bytes = peak;
    ctx.summary.gpu_memory = t.backend.device_memory();
    Ok(())
}

/// Peak resident memory of this process, from /proc (Linux), as text.
fn peak_host_memory() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l[6..].trim().to_string()))
        .unwrap_or_else(|| "unknown".into())
}
