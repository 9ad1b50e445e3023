//! The engine's weights, laid out the way the CUDA backend reads them (format version 1).
//!
//! - Linear weights stay `[out][in]` (torch's layout; cuBLASLt reads them transposed), fp16.
//! - Self-attention: query, key and value fused into one `[3n][n]` weight and `[3n]` bias (zeros
//!   for the key, which has none). The attention scale d_head^-1/2 is folded into the query
//!   weight and bias, as the CPU backend does (exact for d_head = 64: a power of two).
//! - Cross-attention: the key/value weights of every decoder layer fused into one `[L*2n][n]`
//!   weight (layer l: keys in rows l*2n..l*2n+n, values in the next n), so that one GEMM per
//!   window computes all of them.
//! - Convolutions as im2col GEMMs: `[out][tap][in]` (tap-major), i.e. `[n][3 * n_in]`.
//! - Weight-only int8 (`--weight-only int8`): every linear layer's weight and the token embedding
//!   become `NAME.w` int8 `[out][in]` plus `NAME.ws`, one fp16 scale per output row (see
//!   [`crate::quant`]), quantized after the fusions and the query scaling above (a power of two:
//!   the same levels, the scales divided exactly). The convolutions stay fp16.
//! - Biases of GEMMs that write fp16 are fp16; of those that add into the f32 residual stream
//!   (attention out, MLP out, conv2), f32. LayerNorm parameters are f32. Embeddings are fp16.
use super::kernels::D_HEAD;
use crate::engine::{Dtype, EngineTensor};
use crate::model::{ModelConfig, Weights};
use crate::quant::{quantize_int8, WeightQuant};
use anyhow::{bail, Result};

/// Engine tensor names of one residual block, prefix `enc.{i}` or `dec.{i}`.
pub fn block(prefix: &str, part: &str) -> String {
    format!("{prefix}.{part}")
}

fn f16_tensor(name: String, shape: Vec<usize>, data: &[f32]) -> EngineTensor {
    let bytes = data.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
    EngineTensor { name, dtype: Dtype::F16, shape, data: bytes }
}

fn f32_tensor(name: String, shape: Vec<usize>, data: &[f32]) -> EngineTensor {
    let bytes = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    EngineTensor { name, dtype: Dtype::F32, shape, data: bytes }
}

/// The int8 KV cache's calibrated scales as the engine tensor `kv.scales`, f32
/// `[4][n_layer][n_head]`.
pub fn kv_scales_tensor(s: &crate::kv_quant::KvScales) -> EngineTensor {
    f32_tensor(crate::kv_quant::SCALES_TENSOR.into(), vec![crate::kv_quant::KINDS, s.n_layer, s.n_head], &s.scales)
}

/// The engine name of the row scales of quantized weight `name` (`X.w` -> `X.ws`, `dec.tok_emb`
/// -> `dec.tok_emb.s`).
pub fn scale_name(name: &str) -> String {
    match name.strip_suffix(".w") {
        Some(stem) => format!("{stem}.ws"),
        None => format!("{name}.s"),
    }
}

/// Checks what the kernels assume of the dimensions.
pub fn check_dims(c: &ModelConfig) -> Result<()> {
    if c.n_audio_state != c.n_text_state {
        bail!("n_audio_state {} differs from n_text_state {}: cross-attention needs them equal", c.n_audio_state, c.n_text_state);
    }
    let n = c.n_audio_state;
    if n != c.n_audio_head * D_HEAD || n != c.n_text_head * D_HEAD {
        bail!("the CUDA backend needs 64-wide attention heads; this model has n_state {n}, heads {} and {}", c.n_audio_head, c.n_text_head);
    }
    if !n.is_multiple_of(8) {
        bail!("the CUDA backend needs n_state divisible by 8, not {n}");
    }
    if c.n_audio_ctx < 64 {
        bail!("the CUDA backend needs n_audio_ctx of at least 64, not {}", c.n_audio_ctx);
    }
    Ok(())
}

struct Builder<'a> {
    w: &'a Weights,
    out: Vec<EngineTensor>,
    quant: Option<WeightQuant>,
}

impl Builder<'_> {
    /// A quantizable 2-D weight `[rows][cols]` as `name`: fp16, or (weight-only int8) int8 plus
    /// its fp16 row scales under [`scale_name`].
    fn weight(&mut self, name: String, rows: usize, cols: usize, data: &[f32]) -> Result<()> {
        match self.quant {
            None => self.out.push(f16_tensor(name, vec![rows, cols], data)),
            Some(WeightQuant::Int8) => {
                let q = quantize_int8(data, rows, cols)?;
                let scales: Vec<u8> = q.scales.iter().flat_map(|s| s.to_le_bytes()).collect();
                let bytes = q.q.iter().map(|&v| v as u8).collect();
                self.out.push(EngineTensor { name: scale_name(&name), dtype: Dtype::F16, shape: vec![rows], data: scales });
                self.out.push(EngineTensor { name, dtype: Dtype::I8, shape: vec![rows, cols], data: bytes });
            }
            Some(WeightQuant::Int4) => bail!("int4 engines are not supported yet"),
        }
        Ok(())
    }

    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        Ok(self.w.get(name, shape)?.data.clone())
    }

    fn norm(&mut self, src: &str, dst: &str, n: usize) -> Result<()> {
        let g = self.get(&format!("{src}.weight"), &[n])?;
        let b = self.get(&format!("{src}.bias"), &[n])?;
        self.out.push(f32_tensor(format!("{dst}.g"), vec![n], &g));
        self.out.push(f32_tensor(format!("{dst}.b"), vec![n], &b));
        Ok(())
    }

    /// A linear layer `src` (`[n_out][n_in]` + optional bias) as `dst.w`, `dst.b`.
    fn linear(&mut self, src: &str, dst: &str, n_in: usize, n_out: usize, f32_bias: bool) -> Result<()> {
        let w = self.get(&format!("{src}.weight"), &[n_out, n_in])?;
        let b = self.get(&format!("{src}.bias"), &[n_out])?;
        self.weight(format!("{dst}.w"), n_out, n_in, &w)?;
        self.out.push(if f32_bias { f32_tensor(format!("{dst}.b"), vec![n_out], &b) } else { f16_tensor(format!("{dst}.b"), vec![n_out], &b) });
        Ok(())
    }

    /// The scaled query of attention `src` (`...attn` or `...cross_attn`): weight and bias.
    fn query(&self, src: &str, n: usize, scale: f32) -> Result<(Vec<f32>, Vec<f32>)> {
        let mut w = self.get(&format!("{src}.query.weight"), &[n, n])?;
        let mut b = self.get(&format!("{src}.query.bias"), &[n])?;
        w.iter_mut().chain(b.iter_mut()).for_each(|v| *v *= scale);
        Ok((w, b))
    }

    /// Self-attention and MLP of block `src` (canonical prefix) as `dst.*`.
    fn self_block(&mut self, src: &str, dst: &str, n: usize, n_head: usize) -> Result<()> {
        let scale = ((n / n_head) as f32).powf(-0.5);
        self.norm(&format!("{src}.attn_ln"), &block(dst, "attn_ln"), n)?;
        let (mut w, mut b) = self.query(&format!("{src}.attn"), n, scale)?;
        w.extend(self.get(&format!("{src}.attn.key.weight"), &[n, n])?);
        w.extend(self.get(&format!("{src}.attn.value.weight"), &[n, n])?);
        b.extend(std::iter::repeat_n(0.0, n));
        b.extend(self.get(&format!("{src}.attn.value.bias"), &[n])?);
        self.weight(block(dst, "qkv.w"), 3 * n, n, &w)?;
        self.out.push(f16_tensor(block(dst, "qkv.b"), vec![3 * n], &b));
        self.linear(&format!("{src}.attn.out"), &block(dst, "out"), n, n, true)?;
        self.norm(&format!("{src}.mlp_ln"), &block(dst, "mlp_ln"), n)?;
        self.linear(&format!("{src}.mlp.0"), &block(dst, "fc1"), n, 4 * n, false)?;
        self.linear(&format!("{src}.mlp.2"), &block(dst, "fc2"), 4 * n, n, true)?;
        Ok(())
    }
}

/// torch's conv weight `[out][in][k]` -> `[out][k][in]`.
fn conv_weight(w: &[f32], n_out: usize, n_in: usize, k: usize) -> Vec<f32> {
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

/// Every tensor of an engine for `config`, from canonical weights (shapes checked).
pub fn engine_tensors(config: &ModelConfig, w: &Weights, quant: Option<WeightQuant>) -> Result<Vec<EngineTensor>> {
    let c = config;
    check_dims(c)?;
    w.check_canonical(c)?;
    let (n, n_mels) = (c.n_audio_state, c.n_mels);
    let mut b = Builder { w, out: Vec::new(), quant };

    let conv1 = conv_weight(&b.get("encoder.conv1.weight", &[n, n_mels, 3])?, n, n_mels, 3);
    b.out.push(f16_tensor("enc.conv1.w".into(), vec![n, 3 * n_mels], &conv1));
    let bias = b.get("encoder.conv1.bias", &[n])?;
    b.out.push(f16_tensor("enc.conv1.b".into(), vec![n], &bias));
    let conv2 = conv_weight(&b.get("encoder.conv2.weight", &[n, n, 3])?, n, n, 3);
    b.out.push(f16_tensor("enc.conv2.w".into(), vec![n, 3 * n], &conv2));
    let bias = b.get("encoder.conv2.bias", &[n])?;
    b.out.push(f32_tensor("enc.conv2.b".into(), vec![n], &bias));
    let pos = b.get("encoder.positional_embedding", &[c.n_audio_ctx, n])?;
    b.out.push(f16_tensor("enc.pos".into(), vec![c.n_audio_ctx, n], &pos));
    for i in 0..c.n_audio_layer {
        b.self_block(&format!("encoder.blocks.{i}"), &format!("enc.{i}"), n, c.n_audio_head)?;
    }
    b.norm("encoder.ln_post", "enc.ln_post", n)?;

    let (v, l) = (c.n_vocab, c.n_text_layer);
    let emb = b.get("decoder.token_embedding.weight", &[v, n])?;
    b.weight("dec.tok_emb".into(), v, n, &emb)?;
    let pos = b.get("decoder.positional_embedding", &[c.n_text_ctx, n])?;
    b.out.push(f16_tensor("dec.pos".into(), vec![c.n_text_ctx, n], &pos));
    let scale = ((n / c.n_text_head) as f32).powf(-0.5);
    let mut kv_w = Vec::with_capacity(l * 2 * n * n);
    let mut kv_b = Vec::with_capacity(l * 2 * n);
    for i in 0..l {
        let (src, dst) = (format!("decoder.blocks.{i}"), format!("dec.{i}"));
        b.self_block(&src, &dst, n, c.n_text_head)?;
        b.norm(&format!("{src}.cross_attn_ln"), &block(&dst, "cross_ln"), n)?;
        let (qw, qb) = b.query(&format!("{src}.cross_attn"), n, scale)?;
        b.weight(block(&dst, "cross_q.w"), n, n, &qw)?;
        b.out.push(f16_tensor(block(&dst, "cross_q.b"), vec![n], &qb));
        b.linear(&format!("{src}.cross_attn.out"), &block(&dst, "cross_out"), n, n, true)?;
        kv_w.extend(b.get(&format!("{src}.cross_attn.key.weight"), &[n, n])?);
        kv_w.extend(b.get(&format!("{src}.cross_attn.value.weight"), &[n, n])?);
        kv_b.extend(std::iter::repeat_n(0.0, n));
        kv_b.extend(b.get(&format!("{src}.cross_attn.value.bias"), &[n])?);
    }
    b.weight("dec.cross_kv.w".into(), l * 2 * n, n, &kv_w)?;
    b.out.push(f16_tensor("dec.cross_kv.b".into(), vec![l * 2 * n], &kv_b));
    b.norm("decoder.ln", "dec.ln", n)?;
    Ok(b.out)
}
