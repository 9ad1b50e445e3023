//! `whisper-trt eval`: word error rate and speed on LibriSpeech-layout data
//! (`<spk>/<chapter>/<spk>-<chapter>-<utt>.flac` beside `<spk>-<chapter>.trans.txt`).
use crate::backends::Backend;
use crate::cli::{load_transcriber, one_line, progress, AnyTranscriber, ModelArgs};
use crate::transcribe::Transcriber;
use crate::text::normalizer::EnglishTextNormalizer;
use crate::text::wer::{word_edits, WerStats};
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A LibriSpeech-layout directory (a split such as test-clean, or any folder above the speakers)
    #[arg(long)]
    pub librispeech: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    /// openai-whisper's english.json spelling table (default: the one setup installed)
    #[arg(long)]
    pub spelling: Option<PathBuf>,
    /// Only the first N utterances (sorted by id)
    #[arg(long)]
    pub limit: Option<usize>,
    /// Write one JSON line per utterance here
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// One utterance: its id, audio file and reference transcript.
pub struct Utterance {
    pub id: String,
    pub audio: PathBuf,
    pub reference: String,
}

/// Every utterance under `root`, sorted by id. A transcript line without its audio is an error.
pub fn librispeech_utterances(root: &Path) -> Result<Vec<Utterance>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).with_context(|| format!("{}: cannot read directory", dir.display()))?;
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.to_string_lossy().ends_with(".trans.txt") {
                let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    let (id, reference) = line.split_once(' ').unwrap_or((line, ""));
                    let audio = dir.join(format!("{id}.flac"));
                    if !audio.is_file() {
                        bail!("{}: lists {id}, but {} is missing", path.display(), audio.display());
                    }
                    out.push(Utterance { id: id.to_string(), audio, reference: reference.to_string() });
                }
            }
        }
    }
    if out.is_empty() {
        bail!("{}: no LibriSpeech transcripts (*.trans.txt) found", root.display());
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

pub fn run(args: EvalArgs) -> Result<i32> {
    let spelling = args.spelling.clone().unwrap_or_else(crate::paths::english_spelling);
    let normalizer = EnglishTextNormalizer::from_json_file(&spelling)
        .with_context(|| "the English normalizer needs english.json: run scripts/fetch-model.sh tiny.en or pass --spelling")?;
    let mut utts = librispeech_utterances(&args.librispeech)?;
    if let Some(n) = args.limit {
        utts.truncate(n);
    }
    match load_transcriber(&args.model)? {
        AnyTranscriber::Cpu(t) => run_with(&t, &args, &normalizer, &utts),
        AnyTranscriber::Cuda(t) => run_with(&t, &args, &normalizer, &utts),
    }
}

fn run_with<B: Backend>(
    transcriber: &Transcriber<B>,
    args: &EvalArgs,
    normalizer: &EnglishTextNormalizer,
    utts: &[Utterance],
) -> Result<i32> {
    let mut log = match &args.output {
        Some(p) => Some(std::fs::File::create(p).with_context(|| format!("{}: cannot create", p.display()))?),
        None => None,
    };
    let bar = progress(utts.len());
    let (mut stats, mut audio_s, mut failures) = (WerStats::default(), 0.0, 0);
    let start = Instant::now();
    for u in utts {
        match transcriber.transcribe_file(&u.audio) {
            Ok(t) => {
                let (r, h) = (normalizer.normalize(&u.reference), normalizer.normalize(&t.text));
                let edits = word_edits(&r, &h);
                stats.add(&r, &h);
                audio_s += t.duration;
                if let Some(f) = log.as_mut() {
                    let line = serde_json::json!({"id": u.id, "text": t.text, "tokens": t.tokens,
                        "normalized_hyp": h, "normalized_ref": r, "word_edits": edits,
                        "ref_words": r.split_whitespace().count(), "time_taken": t.time_taken});
                    writeln!(f, "{line}")?;
                }
            }
            Err(e) => {
                failures += 1;
                bar.suspend(|| eprintln!("error: {}", one_line(&e)));
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let wall = start.elapsed().as_secs_f64();
    println!(
        "WER {:.2}% ({} edits / {} words) on {} utterances, {:.1} s of audio in {:.1} s (real-time factor {:.3}), peak host memory {}",
        100.0 * stats.wer(),
        stats.edits,
        stats.ref_words,
        utts.len() - failures,
        audio_s,
        wall,
        wall / audio_s.max(1e-9),
        peak_memory()
    );
    if let Some(m) = transcriber.backend.device_memory() {
        println!("{m}");
    }
    Ok(if failures > 0 { 1 } else { 0 })
}

/// Peak resident memory of this process, from /proc (Linux), as text.
fn peak_memory() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l[6..].trim().to_string()))
        .unwrap_or_else(|| "unknown".into())
}
