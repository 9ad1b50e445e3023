//! The audio encoder on the GPU, for a batch of 30 s windows at once, and the cross-attention
//! K/V of every decoder layer (one GEMM per window) that the decoder sessions attend to.
use super::context::{DeviceBuffer, Gpu};
use super::gemm::{Epilogue, GemmShape, Out};
use super::weights::Block;
use super::CudaModel;
use crate::model::ModelConfig;
use anyhow::{bail, Result};
use cudarc::driver::sys::CUdeviceptr;

/// Scratch of one encoder pass over up to `max_batch` windows, allocated once.
pub struct EncoderBuffers {
    pub max_batch: usize,
    /// f32 `[batch][n_mels][n_frames]`.
    mel: DeviceBuffer,
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
            mel: gpu.alloc(b * nm * nf * 4)?,
            x: gpu.alloc(rows * n * 4)?,
            h: gpu.alloc(rows * n * 2)?,
            qkv: gpu.alloc((rows * 3 * n).max(b * nf * n) * 2)?,
            att: gpu.alloc(rows * n * 2)?,
            u: gpu.alloc((rows * 4 * n).max(b * nf * 3 * nm).max(rows * 3 * n) * 2)?,
        })
    }
}

impl CudaModel {
    /// `x += mlp(mlp_ln(x))` over `rows` rows; `h` (fp16 `[rows][n]`) and `u` (`[rows][4n]`) are scratch.
    pub(super) fn mlp(&self, b: &Block, x: CUdeviceptr, h: CUdeviceptr, u: CUdeviceptr, rows: usize, n: usize) -> Result<()> {
        self.kernels.layernorm(x, b.mlp_ln.g, b.mlp_ln.b, h, rows, n, n)?;
        self.gemm.run(&GemmShape::linear(rows, 4 * n, n, Out::F16, Epilogue::Bias, false), b.fc1.w, h, Some(b.fc1.b), u)?;
        self.kernels.gelu_f16(u, rows * 4 * n)?;
        self.gemm.run(&GemmShape::linear(rows, n, 4 * n, Out::F32, Epilogue::Bias, true), b.fc2.w, u, Some(b.fc2.b), x)
    }

    /// Runs the encoder over `mels` (each `[n_mels][n_frames]` f32) and leaves its output, fp16
    /// `[windows * n_audio_ctx][n]`, in the encoder's `h` buffer, whose address it returns.
    pub(super) fn run_encoder(&self, buf: &EncoderBuffers, mels: &[&[f32]]) -> Result<CUdeviceptr> {
        let c = &self.config;
        let (n, t, nf, nm) = (c.n_audio_state, c.n_audio_ctx, c.n_frames(), c.n_mels);
        let batch = mels.len();
        if batch == 0 || batch > buf.max_batch {
            bail!("the encoder takes 1 to {} windows at once, not {batch}", buf.max_batch);
        }
        for (i, mel) in mels.iter().enumerate() {
            if mel.len() != nm * nf {
                bail!("mel has {} values, expected {nm} x {nf} = {}", mel.len(), nm * nf);
            }
            if mel.iter().any(|v| !v.is_finite()) {
                bail!("mel contains NaN or infinite values");
            }
            self.gpu.copy_to(&buf.mel, i * nm * nf * 4, mel)?;
        }
        let (k, g, w) = (&self.kernels, &self.gemm, &self.enc);
        let rows = batch * t;
        let (x, h, qkv, att, u) = (buf.x.ptr(), buf.h.ptr(), buf.qkv.ptr(), buf.att.ptr(), buf.u.ptr());

        // Front end: conv1 output (fp16, bias) lands in `qkv`, the im2col matrices in `u`.
        k.im2col_conv1(buf.mel.ptr(), u, batch, nm, nf)?;
        g.run(&GemmShape::linear(batch * nf, n, 3 * nm, Out::F16, Epilogue::Bias, false), w.conv1.w, u, Some(w.conv1.b), qkv)?;
        k.im2col_conv2_gelu(qkv, u, batch, nf, n)?;
        g.run(&GemmShape::linear(rows, n, 3 * n, Out::F32, Epilogue::Bias, false), w.conv2.w, u, Some(w.conv2.b), x)?;
        k.gelu_pos(x, w.pos, batch, t, n)?;

        for b in &w.blocks {
            k.layernorm(x, b.attn_ln.g, b.attn_ln.b, h, rows, n, n)?;
            g.run(&GemmShape::linear(rows, 3 * n, n, Out::F16, Epilogue::Bias, false), b.qkv.w, h, Some(b.qkv.b), qkv)?;
            k.flash_attention(qkv, att, batch, t, n, c.n_audio_head)?;
            g.run(&GemmShape::linear(rows, n, n, Out::F32, Epilogue::Bias, true), b.out.w, att, Some(b.out.b), x)?;
            self.mlp(b, x, h, u, rows, n)?;
        }
        k.layernorm(x, w.ln_post.g, w.ln_post.b, h, rows, n, n)?;
        Ok(h)
    }

    /// The cross-attention keys and values of every decoder layer for one window's encoder
    /// output (fp16 `[n_audio_ctx][n]` at `features`): fp16 `[n_audio_ctx][L * 2n]` at `out`.
    pub(super) fn cross_kv(&self, features: CUdeviceptr, out: CUdeviceptr) -> Result<()> {
        let c = &self.config;
        let (n, t) = (c.n_text_state, c.n_audio_ctx);
        let shape = GemmShape::linear(t, c.n_text_layer * 2 * n, n, Out::F16, Epilogue::Bias, false);
        self.gemm.run(&shape, self.dec.cross_kv.w, features, Some(self.dec.cross_kv.b), out)
    }
}
