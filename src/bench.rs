//! `whisper-trt bench`: speed of the GPU engine, measured the way the bar is stated
//! (encoder per 30 s window at a batch size, decoder step at batch 1), with seeded random weights
//! of an official shape (speed does not depend on weight values). It prints figures and asserts
//! nothing; the baselines of each figure (the decoder step launch by launch with and without CUDA
//! graphs against the fused step of decoder_step.cu) are measured in the same run, since machines
//! are noisy. `WHISPER_TRT_FUSED_PROFILE=1` adds the fused step's per-phase timings.
use crate::backends::cuda::step::FusedMode;
use crate::backends::cuda::{CudaFeatures, CudaModel};
use crate::backends::Backend;
use crate::decoding::DecoderSession;
use crate::engine::builder::{build, BuildArgs};
use anyhow::{bail, Result};
use std::time::Instant;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Model shape with seeded random weights
    #[arg(long, default_value = "large-v2", value_parser = clap::builder::PossibleValuesParser::new(crate::engine::synthetic::SIZES))]
    pub synthetic: String,
    /// Windows encoded at once for the batched encoder figure
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Decoder steps timed per figure
    #[arg(long, default_value_t = 100)]
    pub steps: usize,
}

pub fn run(args: &BenchArgs) -> Result<i32> {
    if args.batch == 0 || args.steps == 0 {
        bail!("--batch and --steps must be positive");
    }
    crate::backends::cuda::context::check_libraries().map_err(|e| anyhow::anyhow!("bench needs a CUDA GPU: {e}"))?;
    // The real path: build an engine file (timed tactics, cubins), then load it.
    let path = std::env::temp_dir().join(format!("whisper-trt-bench-{}.engine", std::process::id()));
    let build_args = BuildArgs {
        synthetic: Some(args.synthetic.clone()),
        output: Some(path.clone()),
        max_batch: args.batch,
        ..BuildArgs::defaults()
    };
    let t0 = Instant::now();
    build(&build_args)?;
    let model = CudaModel::load(&path);
    let _ = std::fs::remove_file(&path);
    let model = model?;
    println!(
        "{}: engine built and loaded in {:.1} s on {}, {:.2} GB of weights",
        args.synthetic,
        t0.elapsed().as_secs_f64(),
        model.gpu().name,
        model.weight_bytes() as f64 / 1e9
    );
    encoder(&model, args)?;
    decoder(&model, args)?;
    Ok(0)
}

fn encoder(model: &CudaModel, args: &BenchArgs) -> Result<()> {
    let c = model.config();
    // Values in the range of a real log-mel; they do not change the work done.
    let mel: Vec<f32> = (0..c.n_mels * c.n_frames()).map(|i| ((i * 7919) % 2000) as f32 / 1000.0 - 1.0).collect();
    let mels: Vec<&[f32]> = vec![mel.as_slice(); args.batch];
    for b in [1, args.batch] {
        drop(model.encode_batch(&mels[..b])?);
        model.gpu().sync()?;
        let reps = 5;
        let t0 = Instant::now();
        for _ in 0..reps {
            drop(model.encode_batch(&mels[..b])?);
            model.gpu().sync()?;
        }
        let ms = t0.elapsed().as_secs_f64() * 1000.0 / reps as f64;
        println!("encoder, batch {b}: {:.2} ms per window ({ms:.2} ms per batch)", ms / b as f64);
    }
    Ok(())
}

/// Decoder steps of `n_seq` sequences after a 4-token prompt: ms per step with the logits copied
/// to the host, and with the logits left on the GPU (synchronised after every step).
fn time_steps(model: &CudaModel, features: &CudaFeatures, prompt: &[u32], n_seq: usize, steps: usize) -> Result<(f64, f64)> {
    let mut s = model.session(features, n_seq)?;
    s.forward(&vec![prompt; n_seq])?;
    let mut tok = 1000u32;
    // Two warm-up steps (the first one-token step captures the graph).
    for _ in 0..2 {
        tok += 1;
        s.forward(&vec![&[tok][..]; n_seq])?;
    }
    let t0 = Instant::now();
    for _ in 0..steps {
        tok += 1;
        s.forward(&vec![&[tok][..]; n_seq])?;
    }
    let to_host = t0.elapsed().as_secs_f64() * 1000.0 / steps as f64;
    let t0 = Instant::now();
    for _ in 0..steps {
        tok += 1;
        s.step_on_device(&vec![&[tok][..]; n_seq])?;
        model.gpu().sync()?;
    }
    Ok((to_host, t0.elapsed().as_secs_f64() * 1000.0 / steps as f64))
}

fn decoder(model: &CudaModel, args: &BenchArgs) -> Result<()> {
    let c = model.config();
    let mel = vec![0.0f32; c.n_mels * c.n_frames()];
    let features = Backend::encode(model, &mel)?;
    let st = &c.special_tokens;
    let mut prompt = vec![st.sot];
    if let Some(&(_, en)) = st.languages.first() {
        prompt.extend([en, st.transcribe]);
    }
    prompt.push(st.no_timestamps);
    // Kernel development: other ways of streaming the fused step's weights, timed too
    // (WHISPER_TRT_FUSED_MODES=1,0,2; see CudaModel::set_fused_mode).
    let modes: Vec<FusedMode> = std::env::var("WHISPER_TRT_FUSED_MODES")
        .map(|v| v.split(',').filter_map(FusedMode::parse).collect())
        .unwrap_or_default();
    // The fused step (one persistent kernel for the decoder blocks) and the launch-by-launch
    // step, both as CUDA graphs, and the latter without graphs, in the same run.
    for n_seq in [1usize, 5] {
        if let Err(e) = model.fused_step_check(n_seq) {
            println!("decoder step, {n_seq} sequence(s): the fused step cannot run here: {e:#}");
        }
        let mut figures = Vec::new();
        for (fused, graphs) in [(true, true), (false, true), (false, false)] {
            model.set_fused(fused)?;
            model.set_cuda_graphs(graphs)?;
            figures.push(time_steps(model, &features, &prompt, n_seq, args.steps)?);
            if fused {
                if let Some(report) = model.fused_profile()? {
                    print!("fused step, {n_seq} sequence(s), last step:\n{report}");
                }
            }
        }
        for &mode in &modes {
            model.set_fused(true)?;
            model.set_fused_mode(Some(mode))?;
            let (_, ms) = time_steps(model, &features, &prompt, n_seq, args.steps)?;
            println!("fused step, {n_seq} sequence(s), {mode:?}: {ms:.3} ms (logits on the GPU)");
            if let Some(report) = model.fused_profile()? {
                print!("{report}");
            }
        }
        model.set_fused_mode(None)?;
        model.set_fused(crate::backends::cuda::step::fused_enabled())?;
        model.set_cuda_graphs(true)?;
        let (f, g, l) = (figures[0], figures[1], figures[2]);
        println!(
            "decoder step, {n_seq} sequence(s), logits on the GPU: {:.3} ms fused, {:.3} ms launch by launch with CUDA graphs ({:.2}x), {:.3} ms without graphs",
            f.1,
            g.1,
            g.1 / f.1,
            l.1
        );
        println!(
            "decoder step, {n_seq} sequence(s), logits to host: {:.3} ms fused, {:.3} ms launch by launch with CUDA graphs ({:.2}x), {:.3} ms without graphs",
            f.0,
            g.0,
            g.0 / f.0,
            l.0
        );
    }
    Ok(())
}
