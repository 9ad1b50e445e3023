//! The audio encoder (openai-whisper's `AudioEncoder`) and the residual block it shares with the decoder.
use super::attention::attention;
use super::ops::{gelu_inplace, Linear, Norm, View};
use crate::model::config::ModelConfig;
use crate::model::weights::Weights;
use anyhow::Result;
use rayon::prelude::*;

/// Removes `name` from `w` (shape checked) and returns its data.
pub(super) fn take(w: &mut Weights, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    Ok(w.take(name, shape)?.data)
}

pub(super) fn norm(w: &mut Weights, prefix: &str, n: usize) -> Result<Norm> {
    Ok(Norm { gamma: take(w, &format!("{prefix}.weight"), &[n])?, beta: take(w, &format!("{prefix}.bias"), &[n])? })
}

pub(super) fn linear(w: &mut Weights, prefix: &str, n_in: usize, n_out: usize, bias: bool) -> Result<Linear> {
    let weight = take(w, &format!("{prefix}.weight"), &[n_out, n_in])?;
    let b = if bias { take(w, &format!("{prefix}.bias"), &[n_out])? } else { Vec::new() };
    Ok(Linear::new(weight, b, n_in, n_out))
}

/// The query projection with openai's attention scale folded in: it scales q and k each by
/// d_head^-1/4, i.e. the scores by d_head^-1/2; for d_head = 64 that is 1/8, exact in f32.
pub(super) fn query(w: &mut Weights, prefix: &str, n: usize, n_head: usize) -> Result<Linear> {
    let mut q = linear(w, &format!("{prefix}.query"), n, n, true)?;
    let scale = ((n / n_head) as f32).powf(-0.5);
    q.w.iter_mut().chain(q.b.iter_mut()).for_each(|v| *v *= scale);
    Ok(q)
}

/// Stacks linear layers with the same input into one `[sum n_out][n_in]` layer.
pub(super) fn stack(parts: Vec<Linear>) -> Linear {
    let n_in = parts[0].n_in;
    let n_out = parts.iter().map(|p| p.n_out).sum();
    let mut w = Vec::with_capacity(n_in * n_out);
    let mut b = Vec::with_capacity(n_out);
    for p in parts {
        w.extend_from_slice(&p.w);
        b.extend_from_slice(&p.b);
    }
    Linear::new(w, b, n_in, n_out)
}

/// Self-attention (q, k, v stacked into one projection) and the MLP of a residual block.
pub(super) struct SelfBlock {
    pub attn_ln: Norm,
    /// `[3n][n]`: rows 0..n give the (pre-scaled) query, n..2n the key, 2n..3n the value.
    pub qkv: Linear,
    pub out: Linear,
    pub mlp_ln: Norm,
    pub fc1: Linear,
    pub fc2: Linear,
}

impl SelfBlock {
    pub fn load_attn(w: &mut Weights, p: &str, n: usize, n_head: usize) -> Result<(Norm, Linear, Linear)> {
        let q = query(w, &format!("{p}.attn"), n, n_head)?;
        let k = linear(w, &format!("{p}.attn.key"), n, n, false)?;
        let v = linear(w, &format!("{p}.attn.value"), n, n, true)?;
        let out = linear(w, &format!("{p}.attn.out"), n, n, true)?;
        Ok((norm(w, &format!("{p}.attn_ln"), n)?, stack(vec![q, k, v]), out))
    }

    pub fn load_mlp(w: &mut Weights, p: &str, n: usize) -> Result<(Norm, Linear, Linear)> {
        Ok((
            norm(w, &format!("{p}.mlp_ln"), n)?,
            linear(w, &format!("{p}.mlp.0"), n, 4 * n, true)?,
            linear(w, &format!("{p}.mlp.2"), 4 * n, n, true)?,
        ))
    }

    fn load(w: &mut Weights, p: &str, n: usize, n_head: usize) -> Result<Self> {
        let (attn_ln, qkv, out) = Self::load_attn(w, p, n, n_head)?;
        let (mlp_ln, fc1, fc2) = Self::load_mlp(w, p, n)?;
        Ok(SelfBlock { attn_ln, qkv, out, mlp_ln, fc1, fc2 })
    }

    /// `x += mlp(mlp_ln(x))` for `m` rows; `h` and `u` are scratch of `m*n` and `m*4n` values.
    pub fn mlp(&self, x: &mut [f32], m: usize, h: &mut [f32], u: &mut [f32]) {
        let n = self.fc1.n_in;
        self.mlp_ln.forward(x, h);
        self.fc1.forward(View::new(h, m, n), u);
        gelu_inplace(&mut u[..m * 4 * n]);
        self.fc2.forward_add(View::new(u, m, 4 * n), x);
    }
}

/// Scratch buffers of one encoder pass.
struct Scratch {
    h: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    u: Vec<f32>,
}

pub(super) struct Encoder {
    n_mels: usize,
    n_frames: usize,
    n_ctx: usize,
    n_state: usize,
    n_head: usize,
    /// conv1 as a linear layer over 3 consecutive frames: `[n][3][n_mels]` (tap-major).
    conv1: Linear,
    /// conv2 likewise: `[n][3][n]`.
    conv2: Linear,
    pos: Vec<f32>,
    blocks: Vec<SelfBlock>,
    ln_post: Norm,
}

/// torch's conv weight `[out][in][k]` to `[out][k][in]`, so that the k taps of a time-major
/// input are one contiguous row (im2col without copying).
fn conv_weight(w: Vec<f32>, n_out: usize, n_in: usize, k: usize) -> Vec<f32> {
    let mut t = vec![0.0; w.len()];
    for o in 0..n_out {
        for i in 0..n_in {
            for j in 0..k {
                t[(o * k + j) * n_in + i] = w[(o * n_in + i) * k + j];
            }
        }
    }
    t
}

impl Encoder {
    pub fn load(w: &mut Weights, c: &ModelConfig) -> Result<Self> {
        let (n, n_mels) = (c.n_audio_state, c.n_mels);
        let conv1 = conv_weight(take(w, "encoder.conv1.weight", &[n, n_mels, 3])?, n, n_mels, 3);
        let conv1 = Linear::new(conv1, take(w, "encoder.conv1.bias", &[n])?, 3 * n_mels, n);
        let conv2 = conv_weight(take(w, "encoder.conv2.weight", &[n, n, 3])?, n, n, 3);
        let conv2 = Linear::new(conv2, take(w, "encoder.conv2.bias", &[n])?, 3 * n, n);
        let pos = take(w, "encoder.positional_embedding", &[c.n_audio_ctx, n])?;
        let blocks = (0..c.n_audio_layer)
            .map(|i| SelfBlock::load(w, &format!("encoder.blocks.{i}"), n, c.n_audio_head))
            .collect::<Result<Vec<_>>>()?;
        let ln_post = norm(w, "encoder.ln_post", n)?;
        Ok(Encoder {
            n_mels,
            n_frames: c.n_frames(),
            n_ctx: c.n_audio_ctx,
            n_state: n,
            n_head: c.n_audio_head,
            conv1,
            conv2,
            pos,
            blocks,
            ln_post,
        })
    }

    /// `mel`: `[n_mels][n_frames]` (checked by the caller) -> `[n_ctx][n_state]`.
    pub fn forward(&self, mel: &[f32]) -> Vec<f32> {
        let (nf, nm, n, t) = (self.n_frames, self.n_mels, self.n_state, self.n_ctx);
        // conv1 (k3, pad 1): time-major mel with one zero frame on each side; row f of the
        // im2col matrix is padded frames f..f+3, i.e. a strided view.
        let mut xp = vec![0.0f32; (nf + 2) * nm];
        xp[nm..(nf + 1) * nm].par_chunks_mut(nm * 64).enumerate().for_each(|(b, chunk)| {
            for (i, row) in chunk.chunks_exact_mut(nm).enumerate() {
                let f = b * 64 + i;
                for (c, v) in row.iter_mut().enumerate() {
                    *v = mel[c * nf + f];
                }
            }
        });
        let mut h1 = vec![0.0f32; (nf + 2) * n];
        let im2col = View { data: &xp, rows: nf, cols: 3 * nm, rs: nm, cs: 1 };
        self.conv1.forward(im2col, &mut h1[n..(nf + 1) * n]);
        gelu_inplace(&mut h1[n..(nf + 1) * n]);
        drop(xp);
        // conv2 (k3, stride 2, pad 1): output t reads padded rows 2t..2t+3.
        let mut x = vec![0.0f32; t * n];
        let im2col = View { data: &h1, rows: t, cols: 3 * n, rs: 2 * n, cs: 1 };
        self.conv2.forward(im2col, &mut x);
        drop(h1);
        gelu_inplace(&mut x);
        x.par_chunks_mut(n * 64).zip(self.pos.par_chunks(n * 64)).for_each(|(x, p)| {
            x.iter_mut().zip(p).for_each(|(x, p)| *x += p);
        });

        let mut s = Scratch { h: vec![0.0; t * n], qkv: vec![0.0; t * 3 * n], att: vec![0.0; t * n], u: vec![0.0; t * 4 * n] };
        for block in &self.blocks {
            self.block(block, &mut x, &mut s);
        }
        self.ln_post.forward(&x, &mut s.h);
        s.h
    }

    fn block(&self, b: &SelfBlock, x: &mut [f32], s: &mut Scratch) {
        let (t, n) = (self.n_ctx, self.n_state);
        b.attn_ln.forward(x, &mut s.h);
        b.qkv.forward(View::new(&s.h, t, n), &mut s.qkv);
        let qkv = View::new(&s.qkv, t, 3 * n);
        attention(qkv.cols(0, n), qkv.cols(n, n), qkv.cols(2 * n, n), self.n_head, None, &mut s.att, true);
        b.out.forward_add(View::new(&s.att, t, n), x);
        b.mlp(x, t, &mut s.h, &mut s.u);
    }
}
