//! The GPU measurements of `whisper-trt bench`: the ceilings (copy bandwidth, GEMM rate), the
//! encoder per window and the decoder step. Every figure is timed with CUDA events on the
//! model's stream after warm-up, and is the median of its repetitions.
use crate::backends::cuda::context::Gpu;
use crate::backends::cuda::gemm::{self, Epilogue, GemmShape, Out};
use crate::backends::cuda::{CudaFeatures, CudaModel};
use anyhow::{anyhow, Result};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaEvent;
use rayon::prelude::*;

pub fn event(gpu: &Gpu) -> Result<CudaEvent> {
    gpu.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(|e| anyhow!("CUDA event: {e:?}"))
}

pub fn record(gpu: &Gpu, e: &CudaEvent) -> Result<()> {
    e.record(&gpu.stream).map_err(|e| anyhow!("CUDA event: {e:?}"))
}

pub fn elapsed(a: &CudaEvent, b: &CudaEvent) -> Result<f64> {
    Ok(a.elapsed_ms(b).map_err(|e| anyhow!("CUDA event: {e:?}"))? as f64)
}

pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Times `reps` runs of `f` (after `warmup`), each between two events, all queued back to back
/// and read after one synchronisation: the median in ms.
fn time_queued(gpu: &Gpu, warmup: usize, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..warmup {
        f()?;
    }
    gpu.sync()?;
    let events: Vec<CudaEvent> = (0..reps + 1).map(|_| event(gpu)).collect::<Result<_>>()?;
    record(gpu, &events[0])?;
    for e in &events[1..] {
        f()?;
        record(gpu, e)?;
    }
    gpu.sync()?;
    let mut ms: Vec<f64> = events.windows(2).map(|w| elapsed(&w[0], &w[1])).collect::<Result<_>>()?;
    Ok(median(&mut ms))
}

/// Values in [-1, 1), seeded (never zeros: a GEMM on zeros runs faster than on real data).
pub fn random_f16(n: usize, seed: u64) -> Vec<half::f16> {
    let mut out = vec![half::f16::ZERO; n];
    out.par_chunks_mut(1 << 16).enumerate().for_each(|(i, chunk)| {
        let mut r = (seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
        for v in chunk {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            *v = half::f16::from_f32((r >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0);
        }
    });
    out
}

/// Log-mel-like random values in [-1, 1) for `n` windows.
pub fn random_mels(model: &CudaModel, n: usize) -> Vec<Vec<f32>> {
    let c = model.config();
    (0..n)
        .map(|w| random_f16(c.n_mels * c.n_frames(), 1000 + w as u64).iter().map(|v| v.to_f32()).collect())
        .collect()
}

#[derive(Clone, Copy, Debug)]
pub struct Ceilings {
    pub copy_bytes: usize,
    pub copy_ms: f64,
    /// (bytes read + bytes written) / time.
    pub copy_gb_s: f64,
    pub gemm_size: usize,
    pub gemm_ms: f64,
    pub gemm_tflop_s: f64,
}

/// Device-to-device copy of 1 GiB (cuMemcpyDtoDAsync, bytes read plus written) and an fp16
/// 8192^3 GEMM with f32 accumulation through cuBLASLt, the fastest of the heuristic's candidates
/// (gemm.rs's tactic timing), on random data: medians of 20 after 3 warm-ups.
pub fn ceilings(gpu: &Gpu) -> Result<Ceilings> {
    let bytes = 1usize << 30;
    let (src, dst) = (gpu.alloc(bytes)?, gpu.alloc(bytes)?);
    // SAFETY: the range is the whole of `src`.
    unsafe { cudarc::driver::result::memset_d8_async(src.ptr(), 0x5a, bytes, gpu.stream.cu_stream()) }.map_err(|e| anyhow!("memset: {e:?}"))?;
    let copy_ms = time_queued(gpu, 3, 20, || {
        // SAFETY: both buffers hold `bytes` bytes and do not overlap.
        unsafe { cudarc::driver::result::memcpy_dtod_async(dst.ptr(), src.ptr(), bytes, gpu.stream.cu_stream()) }
            .map_err(|e| anyhow!("device copy: {e:?}"))
    })?;
    drop((src, dst));

    let m = 8192;
    let shape = GemmShape::linear(m, m, m, Out::F16, Epilogue::None, false);
    let tactics = gemm::pick_tactics(gpu, &[shape])?;
    let g = gemm::Gemm::new(gpu, &tactics)?;
    let x = gpu.upload(&random_f16(m * m, 1))?;
    let w = gpu.upload(&random_f16(m * m, 2))?;
    let y = gpu.alloc(m * m * 2)?;
    let gemm_ms = time_queued(gpu, 3, 20, || g.run(&shape, w.ptr(), x.ptr(), None, y.ptr()))?;
    Ok(Ceilings {
        copy_bytes: bytes,
        copy_ms,
        copy_gb_s: 2.0 * bytes as f64 / copy_ms / 1e6,
        gemm_size: m,
        gemm_ms,
        gemm_tflop_s: 2.0 * (m as f64).powi(3) / gemm_ms / 1e9,
    })
}

/// Encoder figures of one batch size, ms per window (medians).
#[derive(Clone, Copy, Debug)]
pub struct EncoderTimes {
    pub batch: usize,
    /// Encoder proper: mel upload, conv front end, blocks, final LayerNorm.
    pub encoder_ms: f64,
    /// The cross-attention K/V GEMM of every decoder layer, per window.
    pub cross_kv_ms: f64,
    /// Both, as the pipeline runs them (`encode_batch`).
    pub total_ms: f64,
}

/// Times the encoder over `batch` windows (distinct random mels): each repetition queues the
/// encoder, an event, the cross K/V of every window and another event.
pub fn encoder(model: &CudaModel, mels: &[Vec<f32>], batch: usize) -> Result<EncoderTimes> {
    let gpu = model.gpu();
    let refs: Vec<&[f32]> = mels.iter().take(batch).map(|m| m.as_slice()).collect();
    for _ in 0..2 {
        drop(model.encode_batch(&refs)?);
    }
    gpu.sync()?;
    // Enough repetitions for about half a second of work (at least 5, at most 100): small models
    // finish a batch in a few ms, and a median of few such runs moved by 5-11% between runs.
    let t0 = std::time::Instant::now();
    drop(model.encode_batch(&refs)?);
    gpu.sync()?;
    let once = t0.elapsed().as_secs_f64().max(1e-4);
    let reps = ((0.5 / once).ceil() as usize).clamp(5, 100);
    let mut marks = Vec::with_capacity(reps);
    let mut keep: Vec<Vec<CudaFeatures>> = Vec::new();
    for _ in 0..reps {
        let e: [CudaEvent; 3] = [event(gpu)?, event(gpu)?, event(gpu)?];
        record(gpu, &e[0])?;
        let out = model.bench_encoder(&refs)?;
        record(gpu, &e[1])?;
        keep.push(model.bench_cross_kv(&out)?);
        record(gpu, &e[2])?;
        marks.push(e);
        // Back to the pool: the next repetition reuses the same buffers, as the pipeline does.
        keep.clear();
    }
    gpu.sync()?;
    let per = |a: usize, b: usize| -> Result<f64> {
        let mut v: Vec<f64> = marks.iter().map(|e| elapsed(&e[a], &e[b])).collect::<Result<_>>()?;
        Ok(median(&mut v) / batch as f64)
    };
    Ok(EncoderTimes { batch, encoder_ms: per(0, 1)?, cross_kv_ms: per(1, 2)?, total_ms: per(0, 2)? })
}

/// Tokens in the cache when a timed decoder step starts: the median of [`STEP_POSITIONS`] steps
/// timed per session, after a prompt of `POSITION - 2 - STEP_POSITIONS / 2` tokens and 2 untimed
/// steps (the first one-token step of a shape captures its graph).
pub const POSITION: usize = 50;
const STEP_POSITIONS: usize = 5;

/// How a decoder step is run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepPath {
    /// Launch by launch, captured as a CUDA graph per shape (the default: on sm_90 with
    /// Programmatic Dependent Launch and, at one row, the GEMV kernel; `WHISPER_TRT_PDL=0` for
    /// cuBLASLt without PDL).
    Graphs,
    /// The fused decoder-block kernel (decoder_step.cu) inside the graph, at most 8 sequences.
    Fused,
    /// Launch by launch without graphs.
    Launches,
    /// Launch by launch in a CUDA graph with the dense layers through the GEMV kernel (the
    /// baseline of `Pdl`).
    Gemv,
    /// As `Gemv`, with Programmatic Dependent Launch (sm_90+; `WHISPER_TRT_PDL`).
    Pdl,
}

/// The median ms of a one-token decoder step of `features.len()` sequences (each attending to
/// its own window) at about [`POSITION`] tokens in, logits left on the GPU, `steps` steps timed;
/// `None` when `path` cannot run this batch (the fused kernel takes at most 8 rows) or this GPU
/// (PDL needs compute capability 9.0).
pub fn decoder_step(model: &CudaModel, features: &[CudaFeatures], path: StepPath, steps: usize) -> Result<Option<f64>> {
    let gpu = model.gpu();
    let batch = features.len();
    if path == StepPath::Fused && model.fused_step_check(batch).is_err() {
        return Ok(None);
    }
    if path == StepPath::Pdl && !model.pdl_supported() {
        return Ok(None);
    }
    model.set_fused(path == StepPath::Fused)?;
    model.set_cuda_graphs(path != StepPath::Launches)?;
    if matches!(path, StepPath::Gemv | StepPath::Pdl) {
        model.set_gemv(true)?;
        model.set_pdl(path == StepPath::Pdl)?;
    }
    let refs: Vec<&CudaFeatures> = features.iter().collect();
    let prefill = POSITION - 2 - STEP_POSITIONS / 2;
    let mut times = Vec::with_capacity(steps);
    let mut tok = 1000u32;
    let result = (|| -> Result<()> {
        while times.len() < steps {
            let mut s = model.session_many(&refs, 1)?;
            let mut filled = 0;
            while filled < prefill {
                let t = gemm::PROMPT_TOKENS.min(prefill - filled);
                let ids: Vec<u32> = (0..t as u32).map(|i| 220 + i).collect();
                s.step_on_device(&vec![ids.as_slice(); batch])?;
                filled += t;
            }
            for _ in 0..2 {
                tok += 1;
                s.step_on_device(&vec![&[tok][..]; batch])?;
            }
            gpu.sync()?;
            for _ in 0..STEP_POSITIONS.min(steps - times.len()) {
                let (a, b) = (event(gpu)?, event(gpu)?);
                tok += 1;
                record(gpu, &a)?;
                s.step_on_device(&vec![&[tok][..]; batch])?;
                record(gpu, &b)?;
                // As decoding does: the host waits for every step (it needs the tokens).
                gpu.sync()?;
                times.push(elapsed(&a, &b)?);
            }
        }
        Ok(())
    })();
    // Back to the defaults whatever happened.
    model.set_fused(crate::backends::cuda::step::fused_enabled())?;
    model.set_cuda_graphs(true)?;
    model.set_gemv(crate::backends::cuda::decoder::gemv_enabled())?;
    model.set_pdl(crate::backends::cuda::decoder::pdl_enabled())?;
    result?;
    Ok(Some(median(&mut times)))
}
