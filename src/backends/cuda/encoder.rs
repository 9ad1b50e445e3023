//! The audio encoder on the GPU, for a batch of 30 s windows at once, and the cross-attention
//! K/V of every decoder layer (one GEMM per window) that the decoder sessions attend to.
use super::context::{DeviceBuffer, Gpu};
use super::gemm::{Epilogue, GemmShape, Out};
use super::kernels::GemvOut;
use super::weights::Lin;
use super::CudaModel;
use crate::model::ModelConfig;
use anyhow::{bail, Result};
use cudarc::driver::sys::CUdeviceptr;
use std::cell::RefCell;

/// Scratch of one encoder pass over up to `max_batch` windows, allocated once.
pub struct EncoderBuffers {
    pub max_batch: usize,
    /// fp16 `[batch][n_mels][n_frames]`.
    mel: DeviceBuffer,
    /// The mels on their way up, in page-locked memory.
    staging: RefCell<Staging>,
    /// The residual stream, f32 `[batch * ctx][n]`.
    x: DeviceBuffer,
    /// LayerNorm output, fp16 `[batch * ctx][n]`; the encoder's output at the end.
    h: DeviceBuffer,
    /// fp16 `[batch * ctx][3n]`; conv1's output (`[batch * n_frames][n]`) before the blocks.
    qkv: DeviceBuffer,
    /// Attention output, fp16 `[batch * ctx][n]`.
    att: DeviceBuffer,
    /// MLP hidden, fp16 `[batch * ctx][4n]`; the im2col matrices of both convolutions before.
    u: DeviceBuffer,
}

impl EncoderBuffers {
    pub fn new(gpu: &Gpu, c: &ModelConfig, max_batch: usize) -> Result<Self> {
        let (b, n, t, nf, nm) = (max_batch.max(1), c.n_audio_state, c.n_audio_ctx, c.n_frames(), c.n_mels);
        let rows = b * t;
        Ok(EncoderBuffers {
            max_batch: b,
            mel: gpu.alloc(b * nm * nf * 2)?,
            staging: RefCell::new(Staging::new(gpu, b * nm * nf)?),
            x: gpu.alloc(rows * n * 4)?,
            h: gpu.alloc(rows * n * 2)?,
            qkv: gpu.alloc((rows * 3 * n).max(b * nf * n) * 2)?,
            att: gpu.alloc(rows * n * 2)?,
            u: gpu.alloc((rows * 4 * n).max(b * nf * 3 * nm).max(rows * 3 * n) * 2)?,
        })
    }
}

impl CudaModel {
    /// Runs the encoder over `mels` (each `[n_mels][n_frames]` f32) and leaves its output, fp16
    /// `[windows * n_audio_ctx][n]`, in the encoder's `h` buffer, whose address it returns.
    /// With `WHISPER_TRT_ENC_PROFILE=1` it prints the GPU time of each kind of step (CUDA events
    /// between launches) per window on stderr.
    pub(super) fn run_encoder(&self, buf: &EncoderBuffers, mels: &[&[f32]]) -> Result<CUdeviceptr> {
        let c = &self.config;
        let (n, t, nf, nm) = (c.n_audio_state, c.n_audio_ctx, c.n_frames(), c.n_mels);
        let batch = mels.len();
        if batch == 0 || batch > buf.max_batch {
            bail!("the encoder takes 1 to {} windows at once, not {batch}", buf.max_batch);
        }
        let mut prof = Profile::new(&self.gpu, std::time::Instant::now())?;
        for mel in mels {
            if mel.len() != nm * nf {
                bail!("mel has {} values, expected {nm} x {nf} = {}", mel.len(), nm * nf);
            }
        }
        buf.staging.borrow_mut().upload(&self.gpu, mels, buf.mel.ptr())?;
        let (k, g, w) = (&self.kernels, &self.gemm, &self.enc);
        let rows = batch * t;
        let (x, h, qkv, att, u) = (buf.x.ptr(), buf.h.ptr(), buf.qkv.ptr(), buf.att.ptr(), buf.u.ptr());

        // Front end: conv1 output (fp16, bias) lands in `qkv`, the im2col matrices in `u`.
        prof.mark("copy")?;
        k.im2col_conv1(buf.mel.ptr(), u, batch, nm, nf)?;
        g.run(&GemmShape::linear(batch * nf, n, 3 * nm, Out::F16, Epilogue::Bias, false), w.conv1.w, u, Some(w.conv1.b), qkv)?;
        k.im2col_conv2_gelu(qkv, u, batch, nf, n)?;
        g.run(&GemmShape::linear(rows, n, 3 * n, Out::F32, Epilogue::Bias, false), w.conv2.w, u, Some(w.conv2.b), x)?;
        k.gelu_pos(x, w.pos, batch, t, n)?;
        prof.mark("conv")?;

        for b in &w.blocks {
            k.layernorm(x, b.attn_ln.g, b.attn_ln.b, h, rows, n, n)?;
            prof.mark("layernorm")?;
            self.linear(&GemmShape::linear(rows, 3 * n, n, Out::F16, Epilogue::Bias, false), &b.qkv, h, qkv)?;
            prof.mark("gemm qkv")?;
            k.flash_attention(qkv, att, batch, t, n, c.n_audio_head)?;
            prof.mark("attention")?;
            self.linear(&GemmShape::linear(rows, n, n, Out::F32, Epilogue::Bias, true), &b.out, att, x)?;
            prof.mark("gemm out")?;
            k.layernorm(x, b.mlp_ln.g, b.mlp_ln.b, h, rows, n, n)?;
            prof.mark("layernorm")?;
            if !exact_gelu() {
                self.linear(&GemmShape::linear(rows, 4 * n, n, Out::F16, Epilogue::BiasGelu, false), &b.fc1, h, u)?;
                prof.mark("gemm fc1")?;
            } else {
                self.linear(&GemmShape::linear(rows, 4 * n, n, Out::F16, Epilogue::Bias, false), &b.fc1, h, u)?;
                prof.mark("gemm fc1")?;
                k.gelu_f16(u, rows * 4 * n)?;
                prof.mark("gelu")?;
            }
            self.linear(&GemmShape::linear(rows, n, 4 * n, Out::F32, Epilogue::Bias, true), &b.fc2, u, x)?;
            prof.mark("gemm fc2")?;
        }
        k.layernorm(x, w.ln_post.g, w.ln_post.b, h, rows, n, n)?;
        prof.mark("layernorm")?;
        prof.report(batch)?;
        Ok(h)
    }

    /// The cross-attention keys and values of every decoder layer for one window's encoder
    /// output (fp16 `[n_audio_ctx][n]` at `features`): fp16 `[n_audio_ctx][L * 2n]` at `out`.
    /// With the int8 KV cache, the GEMM writes fp16 to a scratch buffer and `out` gets them
    /// quantized (int8, same layout). While calibrating, their ranges are recorded.
    pub(super) fn cross_kv(&self, features: CUdeviceptr, out: CUdeviceptr) -> Result<()> {
        let c = &self.config;
        let (n, t, l) = (c.n_text_state, c.n_audio_ctx, c.n_text_layer);
        let shape = GemmShape::linear(t, l * 2 * n, n, Out::F16, Epilogue::Bias, false);
        let dst = self.cross_scratch.as_ref().map_or(out, |b| b.ptr());
        self.linear(&shape, &self.dec.cross_kv, features, dst)?;
        let stats = self.kv_stats_ptr();
        if stats != 0 {
            self.kernels.kv_absmax(dst, t, l * 2 * n, l * 2 * n, n, l, (crate::kv_quant::CROSS_K, 0), stats)?;
        }
        if self.cross_scratch.is_some() {
            self.kernels.quantize_cross_kv(dst, out, t, n, l, self.kv_scales)?;
        }
        Ok(())
    }

    /// `y (+)= x · wᵀ + b` of linear layer `lin` in the shape `s` says: cuBLASLt for an fp16
    /// weight, the W8A16 kernel (gemm_w8.cu) for an int8 one, whose epilogue computes the exact
    /// erf GELU where `s` asks for cuBLASLt's bias+GELU.
    pub(super) fn linear(&self, s: &GemmShape, lin: &Lin, x: CUdeviceptr, y: CUdeviceptr) -> Result<()> {
        if lin.s == 0 {
            return self.gemm.run(s, lin.w, x, Some(lin.b), y);
        }
        let out = match (s.out, s.epilogue, s.accumulate) {
            (Out::F16, Epilogue::BiasGelu, _) => GemvOut::F16Gelu,
            (Out::F16, _, _) => GemvOut::F16,
            (Out::F32, _, true) => GemvOut::F32Add,
            (Out::F32, _, false) => GemvOut::F32,
        };
        self.kernels.gemm_w8(lin.w, lin.s, x, Some(lin.b), y, s.m, s.n, s.k, s.ldx, s.ldy, out)
    }
}

/// The encoder MLP's GELU is the exact erf form by default, as the model defines it and the CPU
/// backend computes it: a separate 16-byte kernel after the fc1 GEMM (H100, large-v2, batch 32:
/// about 0.4 ms per window more than the fused epilogue). `WHISPER_TRT_ENC_FAST_GELU=1` uses
/// cuBLASLt's bias+GELU epilogue instead, the tanh form TensorRT-LLM's Whisper computes (within
/// 4.8e-4 of erf). Measured on the H100 against the CPU backend (248 reference clips, greedy):
/// exact GELU gave tiny.en 247/248 equal transcripts with identical WER and base 248/248; the tanh
/// form gave 246/248 for each, WER +0.095 (tiny.en) and -0.023 (base).
fn exact_gelu() -> bool {
    !std::env::var("WHISPER_TRT_ENC_FAST_GELU").is_ok_and(|v| v == "1")
}

/// Page-locked host memory for one batch of mels as fp16, and the event after the last copy out
/// of it. The mels are checked and converted (f32 -> fp16, as conv1's fp16 GEMM reads them
/// anyway) in parallel pieces, then copied in one piece: half the bytes of f32 and no pageable
/// staging. (H100 host, batch 32: a pageable f32 copy per window, or a serial conversion, kept
/// the GPU waiting about 0.28 ms per window.)
struct Staging {
    host: cudarc::driver::PinnedHostSlice<half::f16>,
    done: cudarc::driver::CudaEvent,
}

/// Values per piece of the parallel conversion.
const PIECE: usize = 1 << 15;

impl Staging {
    fn new(gpu: &Gpu, values: usize) -> Result<Self> {
        let err = |e: cudarc::driver::DriverError| anyhow::anyhow!("cannot allocate {} MB of page-locked memory: {e:?}", (values * 2) >> 20);
        // SAFETY: the memory is written (by `upload`) before anything reads it.
        let host = unsafe { gpu.ctx.alloc_pinned::<half::f16>(values.max(1)) }.map_err(err)?;
        let done = gpu.ctx.new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DISABLE_TIMING)).map_err(err)?;
        Ok(Staging { host, done })
    }

    /// Converts `mels` (each of the same length) into the staging memory and queues their copy
    /// to `dst` (fp16, one after another) on the GPU's stream.
    fn upload(&mut self, gpu: &Gpu, mels: &[&[f32]], dst: CUdeviceptr) -> Result<()> {
        use rayon::prelude::*;
        let cuda = |e: cudarc::driver::DriverError| anyhow::anyhow!("mel upload: {e:?}");
        // The previous batch's copy must have left the memory before it is overwritten.
        self.done.synchronize().map_err(cuda)?;
        let per = mels.first().map_or(0, |m| m.len());
        let total = per * mels.len();
        let host = self.host.as_mut_slice().map_err(cuda)?;
        let host = host.get_mut(..total).ok_or_else(|| anyhow::anyhow!("internal: mel staging too small"))?;
        let finite = host.par_chunks_mut(PIECE).enumerate().all(|(i, out)| {
            let at = i * PIECE;
            // A piece may straddle two windows.
            let mut done = 0;
            while done < out.len() {
                let (w, o) = ((at + done) / per, (at + done) % per);
                let n = (per - o).min(out.len() - done);
                let src = &mels[w][o..o + n];
                if src.iter().any(|v| !v.is_finite()) {
                    return false;
                }
                half::slice::HalfFloatSliceExt::convert_from_f32_slice(&mut out[done..done + n], src);
                done += n;
            }
            true
        });
        if !finite {
            bail!("mel contains NaN or infinite values");
        }
        // SAFETY: `host` is page-locked and stays untouched until `done` has passed; the
        // destination holds max_batch mels (checked by the caller).
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, &host[..], gpu.stream.cu_stream()) }.map_err(cuda)?;
        self.done.record(&gpu.stream).map_err(cuda)
    }
}

/// GPU time per kind of encoder step, from CUDA events recorded between launches; off (no
/// events, no syncs) unless `WHISPER_TRT_ENC_PROFILE=1`.
struct Profile<'a> {
    gpu: &'a Gpu,
    host0: std::time::Instant,
    events: Vec<(&'static str, cudarc::driver::CudaEvent)>,
}

impl<'a> Profile<'a> {
    fn new(gpu: &'a Gpu, host0: std::time::Instant) -> Result<Self> {
        let mut p = Profile { gpu, host0, events: Vec::new() };
        if std::env::var("WHISPER_TRT_ENC_PROFILE").is_ok_and(|v| v == "1") {
            p.push("start")?;
        }
        Ok(p)
    }

    fn push(&mut self, label: &'static str) -> Result<()> {
        let e = self
            .gpu
            .ctx
            .new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|e| anyhow::anyhow!("CUDA event: {e:?}"))?;
        e.record(&self.gpu.stream).map_err(|e| anyhow::anyhow!("CUDA event: {e:?}"))?;
        self.events.push((label, e));
        Ok(())
    }

    /// The work queued since the last mark counts as `label`.
    fn mark(&mut self, label: &'static str) -> Result<()> {
        if self.events.is_empty() {
            return Ok(());
        }
        self.push(label)
    }

    fn report(&self, batch: usize) -> Result<()> {
        if self.events.is_empty() {
            return Ok(());
        }
        self.gpu.sync()?;
        let wall = self.host0.elapsed().as_secs_f64() * 1000.0;
        let mut sums: Vec<(&'static str, f64)> = Vec::new();
        for pair in self.events.windows(2) {
            let ms = pair[0].1.elapsed_ms(&pair[1].1).map_err(|e| anyhow::anyhow!("CUDA event: {e:?}"))? as f64;
            match sums.iter_mut().find(|(l, _)| *l == pair[1].0) {
                Some((_, v)) => *v += ms,
                None => sums.push((pair[1].0, ms)),
            }
        }
        let gpu: f64 = sums.iter().map(|(_, v)| v).sum();
        let parts: Vec<String> = sums.iter().map(|(l, v)| format!("{l} {:.3}", v / batch as f64)).collect();
        eprintln!(
            "encoder profile, batch {batch}, ms per window: {} | GPU {:.3}, wall from mel copy {:.3}",
            parts.join(", "),
            gpu / batch as f64,
            wall / batch as f64
        );
        Ok(())
    }
}
