//! The command line. Flags follow openai-whisper's CLI where the two overlap (its underscore
//! spellings are accepted as aliases).
use crate::backends::cpu::CpuModel;
use crate::backends::cuda::CudaModel;
use crate::backends::Backend;
use crate::decoding::{DecodeOptions, Task};
use crate::text::Tokenizer;
use crate::transcribe::{Transcriber, Transcript};
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(name = "whisper-trt", version, about = "Run OpenAI Whisper: convert checkpoints and transcribe audio")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Convert a CTranslate2, OpenAI .pt or Hugging Face checkpoint into a model directory
    Convert {
        /// Checkpoint: a CTranslate2 or Hugging Face directory, or an OpenAI .pt file
        input: PathBuf,
        /// Model directory to write
        #[arg(short, long)]
        output: PathBuf,
        /// tokenizer.json to use (needed for .pt checkpoints without an installed vocabulary)
        #[arg(long)]
        tokenizer: Option<PathBuf>,
    },
    /// Build a GPU engine (fp16) of a model for GPU 0
    Build(crate::engine::builder::BuildArgs),
    /// Transcribe audio files (wav, flac, mp3, ogg)
    #[command(alias = "run")]
    Transcribe(TranscribeArgs),
    /// Word error rate, speed and memory on LibriSpeech-layout data
    Eval(crate::eval::EvalArgs),
    /// GPU engine speed with seeded random weights of an official shape (needs a CUDA GPU)
    Bench(crate::bench::BenchArgs),
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
pub enum Device {
    /// The GPU engine when this GPU has one built for the model, else the CPU (saying so once)
    Auto,
    Cpu,
    /// The GPU engine built by `whisper-trt build`; an error when there is none
    Cuda,
}

/// A transcriber on whichever backend the flags chose.
pub enum AnyTranscriber {
    // Boxed: a transcriber (tokenizer, model) is a few KB and the variants differ in size.
    Cpu(Box<Transcriber<CpuModel>>),
    Cuda(Box<Transcriber<CudaModel>>),
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum OutputFormat {
    Txt,
    Json,
}

#[derive(clap::Args, Clone)]
pub struct ModelArgs {
    /// Model directory made by `whisper-trt convert` (default: the tiny.en model fetched by setup)
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Where to run the model
    #[arg(long, value_enum, default_value = "auto")]
    pub device: Device,
    /// Engine file for --device cuda/auto (default: the one `whisper-trt build` wrote for the model)
    #[arg(long)]
    pub engine: Option<PathBuf>,
    /// Beams for beam search; greedy decoding when not given
    #[arg(long = "beam-size", alias = "beam_size")]
    pub beam_size: Option<usize>,
    /// Beam search patience (openai-whisper's --patience)
    #[arg(long, default_value_t = 1.0)]
    pub patience: f32,
    /// Language code spoken in the audio (detected when not given, multilingual models only)
    #[arg(long)]
    pub language: Option<String>,
    /// Transcribe, or translate into English (multilingual models only)
    #[arg(long, value_enum, default_value = "transcribe")]
    pub task: TaskArg,
    /// CPU threads (default: all cores)
    #[arg(long)]
    pub threads: Option<usize>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum TaskArg {
    Transcribe,
    Translate,
}

#[derive(clap::Args)]
struct TranscribeArgs {
    /// Audio files
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    /// txt prints the text; json also gives tokens and time taken
    #[arg(short = 'f', long = "output-format", alias = "output_format", value_enum, default_value = "txt")]
    output_format: OutputFormat,
    /// Write <name>.<format> for each input here instead of printing
    #[arg(short = 'o', long = "output-dir", alias = "output_dir")]
    output_dir: Option<PathBuf>,
    /// 30 s windows transcribed at once, across files (default: the engine's max batch on the
    /// GPU, 8 on the CPU)
    #[arg(long = "batch-size", alias = "batch_size")]
    batch_size: Option<usize>,
    /// Print time per phase and peak GPU memory on stderr at the end
    #[arg(long)]
    stats: bool,
}

/// Runs the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Convert { input, output, tokenizer } => convert(&input, &output, tokenizer.as_deref()),
        Command::Build(args) => crate::engine::builder::run(&args),
        Command::Transcribe(args) => transcribe(args),
        Command::Eval(args) => crate::eval::run(args),
        Command::Bench(args) => crate::bench::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            1
        }
    }
}

/// An error and its causes on one line, outermost first.
pub fn one_line(e: &anyhow::Error) -> String {
    e.chain().map(|c| c.to_string()).collect::<Vec<_>>().join(": ")
}

fn convert(input: &Path, output: &Path, tokenizer: Option<&Path>) -> Result<i32> {
    let config = crate::checkpoint::convert(input, output, tokenizer)?;
    println!(
        "wrote {}: {} layers x {} (encoder), {} layers x {} (decoder), vocabulary {}{}",
        output.display(),
        config.n_audio_layer,
        config.n_audio_state,
        config.n_text_layer,
        config.n_text_state,
        config.n_vocab,
        if config.multilingual { ", multilingual" } else { ", English-only" }
    );
    Ok(0)
}

/// Loads the model and tokenizer the flags name, on the backend they choose.
pub fn load_transcriber(args: &ModelArgs) -> Result<AnyTranscriber> {
    if let Some(n) = args.threads {
        // Ignore the error of a pool already built (only possible when called twice).
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n.max(1)).build_global();
    }
    let dir = args.model.clone().unwrap_or_else(crate::paths::default_model);
    if !dir.join("config.json").is_file() {
        if args.model.is_none() {
            bail!("{}: no model here; run scripts/fetch-model.sh tiny.en or pass --model DIR", dir.display());
        }
        bail!("{}: not a model directory (no config.json); make one with `whisper-trt convert`", dir.display());
    }
    let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
    let options = DecodeOptions {
        task: match args.task {
            TaskArg::Transcribe => Task::Transcribe,
            TaskArg::Translate => Task::Translate,
        },
        language: args.language.clone(),
        beam_size: args.beam_size,
        patience: args.patience,
        ..DecodeOptions::default()
    };
    let cuda = match args.device {
        Device::Cpu => None,
        Device::Cuda => Some(load_cuda(&dir, args.engine.as_deref())?),
        Device::Auto => match load_cuda(&dir, args.engine.as_deref()) {
            Ok(m) => Some(m),
            Err(e) => {
                eprintln!("note: {}; transcribing on the CPU", one_line(&e));
                None
            }
        },
    };
    let t = match cuda {
        Some(m) => AnyTranscriber::Cuda(Box::new(Transcriber::new(m, tokenizer, options))),
        None => AnyTranscriber::Cpu(Box::new(Transcriber::new(CpuModel::load(&dir)?, tokenizer, options))),
    };
    // Checks the options against the model once, before any audio is read.
    let (config, tokenizer, options) = match &t {
        AnyTranscriber::Cpu(t) => (t.backend.config(), &t.tokenizer, &t.options),
        AnyTranscriber::Cuda(t) => (t.backend.config(), &t.tokenizer, &t.options),
    };
    if options.language.is_some() || !config.multilingual {
        crate::decoding::Decoder::new(config, tokenizer, options)?;
    }
    Ok(t)
}

/// The engine `whisper-trt build` made for the model in `dir` and this GPU (or `engine`).
fn load_cuda(dir: &Path, engine: Option<&Path>) -> Result<CudaModel> {
    let path = match engine {
        Some(p) => p.to_path_buf(),
        None => {
            let gpu = crate::backends::cuda::context::Gpu::new(0)?;
            let path = crate::engine::builder::default_engine_path(dir, gpu.compute_capability);
            if !path.is_file() {
                bail!("no engine for {} on this GPU at {}: run `whisper-trt build`", dir.display(), path.display());
            }
            path
        }
    };
    CudaModel::load(&path)
}

/// A bar on a terminal, nothing in a pipe (indicatif hides itself when stderr is not a terminal).
pub fn progress(n: usize) -> ProgressBar {
    let bar = ProgressBar::new(n as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {elapsed_precise} eta {eta} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn transcribe(args: TranscribeArgs) -> Result<i32> {
    match load_transcriber(&args.model)? {
        AnyTranscriber::Cpu(t) => transcribe_with(&*t, &args),
        AnyTranscriber::Cuda(t) => transcribe_with(&*t, &args),
    }
}

fn transcribe_with<B: Backend>(transcriber: &Transcriber<B>, args: &TranscribeArgs) -> Result<i32> {
    if let Some(dir) = &args.output_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create output directory", dir.display()))?;
    }
    if args.batch_size == Some(0) {
        bail!("--batch-size must be at least 1");
    }
    let batch = args.batch_size.unwrap_or_else(|| transcriber.default_batch());
    let bar = progress(args.files.len());
    let start = std::time::Instant::now();
    let mut failures = 0;
    // Windows of all files are batched; results come back in input order.
    transcriber.transcribe_files(&args.files, batch, |i, result| {
        let path = &args.files[i];
        if let Err(e) = result.and_then(|t| emit(args, path, &t, &bar)) {
            failures += 1;
            bar.suspend(|| eprintln!("error: {}", one_line(&e)));
        }
        bar.inc(1);
        Ok(())
    })?;
    bar.finish_and_clear();
    if args.stats {
        let p = transcriber.phase_times();
        eprintln!(
            "stats: {} files in {:.2} s on the {} backend: audio loading and log-mel {:.2} s (loader threads, overlapping the rest), encoder {:.2} s, decoder {:.2} s; {}",
            args.files.len(),
            start.elapsed().as_secs_f64(),
            transcriber.backend.name(),
            p.load_s,
            p.encode_s,
            p.decode_s,
            transcriber.backend.device_memory().unwrap_or_else(|| "no device memory".into())
        );
    }
    Ok(if failures > 0 { 1 } else { 0 })
}

#[derive(serde::Serialize)]
struct JsonOut<'a> {
    file: String,
    #[serde(flatten)]
    transcript: &'a Transcript,
}

fn emit(args: &TranscribeArgs, path: &Path, t: &Transcript, bar: &ProgressBar) -> Result<()> {
    let body = match args.output_format {
        OutputFormat::Txt => format!("{}\n", t.text.trim()),
        OutputFormat::Json => {
            serde_json::to_string(&JsonOut { file: path.display().to_string(), transcript: t })? + "\n"
        }
    };
    match &args.output_dir {
        None => bar.suspend(|| {
            let mut out = std::io::stdout().lock();
            out.write_all(body.as_bytes()).and_then(|_| out.flush())
        })?,
        Some(dir) => {
            let ext = if args.output_format == OutputFormat::Json { "json" } else { "txt" };
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "audio".into());
            write_atomic(&dir.join(format!("{stem}.{ext}")), body.as_bytes())?;
        }
    }
    Ok(())
}

/// Writes through a temporary file and a rename, so a failure never leaves a complete-looking file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot write", path.display()))
}
