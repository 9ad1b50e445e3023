//! What the benchmark's figures are measured against: FLOPs of the encoder and of the
//! cross-attention K/V projection, bytes a decoder step must move, and the token count of every
//! utterance of the test-clean-shaped workload. Pure arithmetic on the model's dimensions (no GPU),
//! unit-tested.
use crate::model::ModelConfig;
use crate::text::Tokenizer;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// FLOPs (a multiply-add counts 2) of the encoder proper for one 30 s window: what HF's
/// `model.model.encoder` computes (conv front end, blocks, final LayerNorm), without the
/// cross-attention K/V of the decoder layers ([`cross_kv_flops`]).
///
/// With F = n_frames (3000), T = n_audio_ctx (1500), n = n_audio_state, M = n_mels, L = n_audio_layer:
/// - conv1 (kernel 3, stride 1): 2 * F * n * 3M
/// - conv2 (kernel 3, stride 2): 2 * T * n * 3n
/// - per block, the linear layers QKV (n -> 3n), out (n -> n), fc1 (n -> 4n), fc2 (4n -> n):
///   2 * T * n * (3n + n + 4n + 4n) = 24 * T * n^2
/// - per block, attention: Q K^T and P V over all heads, 2 * T * T * n each: 4 * T^2 * n
///
/// Total: 2F*n*3M + 2T*n*3n + L * (24 T n^2 + 4 T^2 n). LayerNorm, GELU, softmax and the residual
/// adds are not counted (a few FLOPs per element, under 0.1% of the total).
pub fn encoder_flops(c: &ModelConfig) -> f64 {
    let (f, t, n, m, l) = (c.n_frames() as f64, c.n_audio_ctx as f64, c.n_audio_state as f64, c.n_mels as f64, c.n_audio_layer as f64);
    let conv = 2.0 * f * n * 3.0 * m + 2.0 * t * n * 3.0 * n;
    let block = 24.0 * t * n * n + 4.0 * t * t * n;
    conv + l * block
}

/// FLOPs of the cross-attention keys and values of every decoder layer for one window: one GEMM
/// of `[T x n_audio_state]` by `[n_audio_state x L_text * 2 * n_text_state]`, 2 * T * n_a * 2 L n_t
/// (HF computes the same products inside its first decoder step).
pub fn cross_kv_flops(c: &ModelConfig) -> f64 {
    2.0 * c.n_audio_ctx as f64 * c.n_audio_state as f64 * (c.n_text_layer * 2 * c.n_text_state) as f64
}

/// Bytes one decoder step must read at least, split by where they come from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepBytes {
    /// Every decoder weight a step reads, once per step whatever the batch: per layer the self
    /// QKV (3n^2), self out (n^2), cross query (n^2), cross out (n^2), fc1 (4n^2), fc2 (4n^2)
    /// matrices with their biases and the three LayerNorms, the final LayerNorm and the tied
    /// token embedding (the logits matrix, n_vocab x n), all fp16. The cross K/V weights are not
    /// read by a step (they run once per window).
    pub weights: f64,
    /// Self-attention keys and values of `position` earlier tokens, every layer, every sequence:
    /// batch * L * position * 2n * 2 bytes.
    pub self_kv: f64,
    /// Cross-attention keys and values of every sequence's window, every layer:
    /// batch * L * n_audio_ctx * 2n * 2 bytes (each sequence attends to its own utterance).
    pub cross_kv: f64,
}

impl StepBytes {
    pub fn total(&self) -> f64 {
        self.weights + self.self_kv + self.cross_kv
    }
}

/// [`StepBytes`] of a one-token step of `batch` sequences with `position` tokens already in the
/// cache (activations, the new K/V row, embeddings rows and the logits written are not counted:
/// under 0.5% at the sizes benchmarked).
/// `int8`: the matrices and the token embedding are int8 with an fp16 scale per row
/// (`--weight-only int8`); else everything is counted at 2 bytes.
/// `int8`: weight-only int8 weights; `int8_kv`: the int8 KV cache (one byte per cached key or
/// value; its scales are too few to count).
pub fn decoder_step_bytes(c: &ModelConfig, batch: usize, position: usize, int8: bool, int8_kv: bool) -> StepBytes {
    let (n, l, v) = (c.n_text_state as f64, c.n_text_layer as f64, c.n_vocab as f64);
    // Per layer: matrices of 3n + n + n + n + 4n + n rows of n (14 n^2), as many biases (11n) and
    // 3 LayerNorms (2n each); then the token embedding (v rows of n) and the final LayerNorm.
    let (matrices, rows) = (l * 14.0 * n * n + v * n, l * 11.0 * n + v);
    let small = l * (11.0 * n + 6.0 * n) + 2.0 * n;
    let weights = if int8 { matrices + 2.0 * rows + 2.0 * small } else { 2.0 * (matrices + small) };
    let b = batch as f64;
    let elem = if int8_kv { 1.0 } else { 2.0 };
    StepBytes {
        weights,
        self_kv: b * l * position as f64 * 2.0 * n * elem,
        cross_kv: b * l * c.n_audio_ctx as f64 * 2.0 * n * elem,
    }
}

/// One utterance of the workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Utterance {
    pub id: String,
    /// Tokens the decoder samples: the transcript's tokens plus the end of text.
    pub sampled: usize,
}

/// The workload of a LibriSpeech `*.trans.txt` file (`<id> <TEXT>` per line): each utterance
/// samples as many tokens as `tokenizer` gives for `" " + TEXT` (as written), plus the end of
/// text. Blank lines are skipped; a line with no text is an error naming the file and line.
pub fn workload(transcripts: &Path, tokenizer: &Tokenizer) -> Result<Vec<Utterance>> {
    let text = std::fs::read_to_string(transcripts).with_context(|| format!("{}: cannot read the transcripts", transcripts.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((id, words)) = line.split_once(' ') else {
            bail!("{}:{}: expected `<id> <transcript>`", transcripts.display(), i + 1);
        };
        let tokens = tokenizer.encode(&format!(" {}", words.trim())).with_context(|| format!("{}:{}", transcripts.display(), i + 1))?;
        out.push(Utterance { id: id.to_string(), sampled: tokens.len() + 1 });
    }
    if out.is_empty() {
        bail!("{}: no transcript lines", transcripts.display());
    }
    Ok(out)
}
