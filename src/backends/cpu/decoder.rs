//! The text decoder (openai-whisper's `TextDecoder`) and its KV-cached sessions.
use super::attention::attention;
use super::encoder::{linear, norm, query, stack, take, SelfBlock};
use super::ops::{matmul, Linear, Norm, View};
use crate::decoding::DecoderSession;
use crate::kv_quant::{KvScales, KvStats, CROSS_K, CROSS_V, SELF_K, SELF_V};
use crate::model::config::ModelConfig;
use crate::model::weights::{Tensor, Weights};
use anyhow::{bail, Result};
use rayon::prelude::*;
use std::sync::Mutex;

pub(super) struct DecoderBlock {
    /// Causal self-attention and MLP.
    base: SelfBlock,
    cross_ln: Norm,
    /// Pre-scaled cross-attention query.
    cross_q: Linear,
    /// `[2n][n]`: cross key (rows 0..n) and value (n..2n), applied to the audio features once.
    cross_kv: Linear,
    cross_out: Linear,
}

pub(super) struct Decoder {
    n_vocab: usize,
    n_ctx: usize,
    n_state: usize,
    n_head: usize,
    n_audio_ctx: usize,
    /// `[n_vocab][n]`; also the output projection (tied): logits = x · Eᵀ.
    token_embedding: Vec<f32>,
    pos: Vec<f32>,
    blocks: Vec<DecoderBlock>,
    ln: Norm,
    /// int8 KV cache: self and cross keys and values go through the int8 round trip.
    pub(super) kv_scales: Option<KvScales>,
    /// Calibration: the largest |K| and |V| per (kind, layer, head) seen so far.
    pub(super) kv_stats: Option<Mutex<KvStats>>,
}

impl Decoder {
    pub fn load(w: &mut Weights, c: &ModelConfig) -> Result<Self> {
        let n = c.n_text_state;
        let token_embedding = take(w, "decoder.token_embedding.weight", &[c.n_vocab, n])?;
        let pos = take(w, "decoder.positional_embedding", &[c.n_text_ctx, n])?;
        let mut blocks = Vec::with_capacity(c.n_text_layer);
        for i in 0..c.n_text_layer {
            let p = format!("decoder.blocks.{i}");
            let (attn_ln, qkv, out) = SelfBlock::load_attn(w, &p, n, c.n_text_head)?;
            let cross_q = query(w, &format!("{p}.cross_attn"), n, c.n_text_head)?;
            let k = linear(w, &format!("{p}.cross_attn.key"), n, n, false)?;
            let v = linear(w, &format!("{p}.cross_attn.value"), n, n, true)?;
            let cross_out = linear(w, &format!("{p}.cross_attn.out"), n, n, true)?;
            let cross_ln = norm(w, &format!("{p}.cross_attn_ln"), n)?;
            let (mlp_ln, fc1, fc2) = SelfBlock::load_mlp(w, &p, n)?;
            blocks.push(DecoderBlock {
                base: SelfBlock { attn_ln, qkv, out, mlp_ln, fc1, fc2 },
                cross_ln,
                cross_q,
                cross_kv: stack(vec![k, v]),
                cross_out,
            });
        }
        let ln = norm(w, "decoder.ln", n)?;
        Ok(Decoder {
            n_vocab: c.n_vocab,
            n_ctx: c.n_text_ctx,
            n_state: n,
            n_head: c.n_text_head,
            n_audio_ctx: c.n_audio_ctx,
            token_embedding,
            pos,
            blocks,
            ln,
            kv_scales: None,
            kv_stats: None,
        })
    }

    /// A session of `features.len() * per` sequences; sequence `s` attends to `features[s / per]`.
    pub fn session(&self, features: &[&Tensor], per: usize) -> Result<CpuSession<'_>> {
        let (t, n) = (self.n_audio_ctx, self.n_state);
        if let Some(f) = features.iter().find(|f| f.shape != [t, n] || f.data.len() != t * n) {
            bail!("audio features have shape {:?}, expected [{t}, {n}]", f.shape);
        }
        let n_seq = features.len() * per;
        if n_seq == 0 {
            bail!("a decoder session needs at least one sequence");
        }
        let cross = features
            .iter()
            .map(|f| {
                let x = View::new(&f.data, t, n);
                self.blocks
                    .iter()
                    .enumerate()
                    .map(|(l, b)| {
                        let mut kv = vec![0.0f32; t * 2 * n];
                        b.cross_kv.forward(x, &mut kv);
                        self.cross_kv_quant(l, &mut kv);
                        kv
                    })
                    .collect()
            })
            .collect();
        // Zeroed allocations are lazy: untouched cache pages cost nothing.
        let per_seq = self.blocks.len() * self.n_ctx * n;
        let caches = (0..n_seq).map(|_| SeqCache { k: vec![0.0; per_seq], v: vec![0.0; per_seq] }).collect();
        let utt = (0..n_seq).map(|s| s / per).collect();
        Ok(CpuSession { dec: self, cross, utt, caches, len: 0 })
    }
}

impl Decoder {
    /// Calibration statistics and the int8 round trip of one layer's cross K/V, `[t][2n]`.
    fn cross_kv_quant(&self, l: usize, kv: &mut [f32]) {
        let n = self.n_state;
        if let Some(st) = &self.kv_stats {
            let mut st = st.lock().unwrap_or_else(|e| e.into_inner());
            for row in kv.chunks(2 * n) {
                st.record(CROSS_K, l, &row[..n], n);
                st.record(CROSS_V, l, &row[n..], n);
            }
        }
        if let Some(q) = &self.kv_scales {
            for row in kv.chunks_mut(2 * n) {
                let (k, v) = row.split_at_mut(n);
                q.round_trip_rows(CROSS_K, l, k, n);
                q.round_trip_rows(CROSS_V, l, v, n);
            }
        }
    }

    /// The same for the new self-attention keys and values of layer `l` (rows of `[q k v]`).
    fn self_kv_quant(&self, l: usize, qkv: &mut [f32]) {
        let n = self.n_state;
        if let Some(st) = &self.kv_stats {
            let mut st = st.lock().unwrap_or_else(|e| e.into_inner());
            for row in qkv.chunks(3 * n) {
                st.record(SELF_K, l, &row[n..2 * n], n);
                st.record(SELF_V, l, &row[2 * n..], n);
            }
        }
        if let Some(q) = &self.kv_scales {
            for row in qkv.chunks_mut(3 * n) {
                q.round_trip_rows(SELF_K, l, &mut row[n..2 * n], n);
                q.round_trip_rows(SELF_V, l, &mut row[2 * n..], n);
            }
        }
    }
}

/// One sequence's self-attention keys and values: `[n_layer][n_text_ctx][n_state]` each.
struct SeqCache {
    k: Vec<f32>,
    v: Vec<f32>,
}

/// A decoder session on the CPU: see [`DecoderSession`].
pub struct CpuSession<'a> {
    dec: &'a Decoder,
    /// Per utterance, per layer `[n_audio_ctx][2n]`: cross keys in columns 0..n, values in n..2n.
    cross: Vec<Vec<Vec<f32>>>,
    /// The utterance of each sequence (an index into `cross`).
    utt: Vec<usize>,
    caches: Vec<SeqCache>,
    /// Positions filled in every sequence.
    len: usize,
}

impl CpuSession<'_> {
    /// Tokens every sequence holds so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// [`DecoderSession::forward`] input checks.
    fn check(&self, tokens: &[&[u32]]) -> Result<usize> {
        let d = self.dec;
        if tokens.len() != self.caches.len() {
            bail!("forward got {} token sequences, the session has {}", tokens.len(), self.caches.len());
        }
        let t = tokens[0].len();
        if t == 0 || tokens.iter().any(|s| s.len() != t) {
            bail!("forward needs the same non-zero number of tokens for every sequence");
        }
        if self.len + t > d.n_ctx {
            bail!("{} + {t} tokens exceed the text context of {}", self.len, d.n_ctx);
        }
        if let Some(&bad) = tokens.iter().flat_map(|s| s.iter()).find(|&&id| id as usize >= d.n_vocab) {
            bail!("token id {bad} is outside the vocabulary of {}", d.n_vocab);
        }
        Ok(t)
    }

    /// Like [`DecoderSession::reorder`], but reports bad input instead of ignoring it.
    pub fn try_reorder(&mut self, source: &[usize]) -> Result<()> {
        let n_seq = self.caches.len();
        if source.len() != n_seq || source.iter().any(|&s| s >= n_seq) {
            bail!("reorder source {source:?} is not {n_seq} indices below {n_seq}");
        }
        // Buffers move where possible; a source used more than once is copied, filled part only.
        let mut old: Vec<Option<SeqCache>> = std::mem::take(&mut self.caches).into_iter().map(Some).collect();
        let mut new: Vec<Option<SeqCache>> = (0..n_seq).map(|_| None).collect();
        let mut home = vec![usize::MAX; n_seq]; // where source s's data now lives in `new`
        for i in 0..n_seq {
            if source[i] == i {
                new[i] = old[i].take();
                home[i] = i;
            }
        }
        for i in 0..n_seq {
            let s = source[i];
            if new[i].is_none() && home[s] == usize::MAX {
                new[i] = old[s].take();
                home[s] = i;
            }
        }
        let mut spares = old.into_iter().flatten();
        let row = self.dec.n_ctx * self.dec.n_state;
        let filled = self.len * self.dec.n_state;
        for i in 0..n_seq {
            if new[i].is_some() {
                continue;
            }
            let Some(mut buf) = spares.next() else { bail!("reorder: internal buffer count mismatch") };
            let Some(src) = new[home[source[i]]].as_ref() else { bail!("reorder: internal error") };
            for l in 0..self.dec.blocks.len() {
                let r = l * row..l * row + filled;
                buf.k[r.clone()].copy_from_slice(&src.k[r.clone()]);
                buf.v[r.clone()].copy_from_slice(&src.v[r]);
            }
            new[i] = Some(buf);
        }
        self.caches = new.into_iter().flatten().collect();
        self.utt = source.iter().map(|&s| self.utt[s]).collect();
        Ok(())
    }

    /// See [`DecoderSession::retain`]: the other sequences' caches are dropped.
    pub fn try_retain(&mut self, keep: &[usize]) -> Result<()> {
        let n_seq = self.caches.len();
        if keep.is_empty() || keep.windows(2).any(|w| w[0] >= w[1]) || keep.iter().any(|&s| s >= n_seq) {
            bail!("retain {keep:?} is not increasing indices below {n_seq}");
        }
        let mut keep_it = keep.iter().peekable();
        let mut i = 0;
        self.caches.retain(|_| {
            let k = keep_it.peek() == Some(&&i);
            if k {
                keep_it.next();
            }
            i += 1;
            k
        });
        self.utt = keep.iter().map(|&s| self.utt[s]).collect();
        Ok(())
    }

    /// Runs of consecutive sequences that share an utterance: (first, end, utterance).
    fn utterance_runs(&self) -> Vec<(usize, usize, usize)> {
        let mut runs: Vec<(usize, usize, usize)> = Vec::new();
        for (s, &u) in self.utt.iter().enumerate() {
            match runs.last_mut() {
                Some(r) if r.2 == u => r.1 = s + 1,
                _ => runs.push((s, s + 1, u)),
            }
        }
        runs
    }

    fn run(&mut self, tokens: &[&[u32]]) -> Result<Vec<f32>> {
        let t = self.check(tokens)?;
        let d = self.dec;
        let (n, n_seq, len) = (d.n_state, self.caches.len(), self.len);
        let m = n_seq * t;
        let mut x = vec![0.0f32; m * n];
        for (s, seq) in tokens.iter().enumerate() {
            for (i, &tok) in seq.iter().enumerate() {
                let row = &mut x[(s * t + i) * n..(s * t + i + 1) * n];
                let emb = &d.token_embedding[tok as usize * n..(tok as usize + 1) * n];
                let pos = &d.pos[(len + i) * n..(len + i + 1) * n];
                for ((x, e), p) in row.iter_mut().zip(emb).zip(pos) {
                    *x = e + p;
                }
            }
        }
        let (mut h, mut qkv, mut att, mut u) = (vec![0.0; m * n], vec![0.0; m * 3 * n], vec![0.0; m * n], vec![0.0; m * 4 * n]);
        let threads = rayon::current_num_threads();
        let runs = self.utterance_runs();
        for (l, b) in d.blocks.iter().enumerate() {
            // Causal self-attention over the cache.
            b.base.attn_ln.forward(&x, &mut h);
            b.base.qkv.forward(View::new(&h, m, n), &mut qkv);
            // int8 KV: the new keys and values are stored as the int8 cache holds them (the
            // query stays fp32, as on the GPU, where only the cache is int8).
            d.self_kv_quant(l, &mut qkv);
            for (s, cache) in self.caches.iter_mut().enumerate() {
                for i in 0..t {
                    let src = &qkv[(s * t + i) * 3 * n..(s * t + i + 1) * 3 * n];
                    let dst = (l * d.n_ctx + len + i) * n;
                    cache.k[dst..dst + n].copy_from_slice(&src[n..2 * n]);
                    cache.v[dst..dst + n].copy_from_slice(&src[2 * n..]);
                }
            }
            let qkv_view = View::new(&qkv, m, 3 * n);
            let self_attn = |s: usize, cache: &SeqCache, out: &mut [f32], parallel: bool| {
                let q = qkv_view.rows(s * t, t).cols(0, n);
                let layer = &cache.k[l * d.n_ctx * n..];
                let k = View::new(&layer[..(len + t) * n], len + t, n);
                let layer = &cache.v[l * d.n_ctx * n..];
                let v = View::new(&layer[..(len + t) * n], len + t, n);
                attention(q, k, v, d.n_head, Some(len), out, parallel);
            };
            if n_seq >= threads {
                att.par_chunks_mut(t * n).zip(self.caches.par_iter()).enumerate().for_each(|(s, (out, c))| {
                    self_attn(s, c, out, false);
                });
            } else {
                for (s, (out, c)) in att.chunks_mut(t * n).zip(&self.caches).enumerate() {
                    self_attn(s, c, out, true);
                }
            }
            b.base.out.forward_add(View::new(&att, m, n), &mut x);

            // Cross-attention: each sequence's queries against its utterance's audio keys/values.
            b.cross_ln.forward(&x, &mut h);
            b.cross_q.forward(View::new(&h, m, n), &mut qkv[..m * n]);
            let q_all = View::new(&qkv[..m * n], m, n);
            let mut outs: Vec<(&mut [f32], usize, usize, usize)> = Vec::with_capacity(runs.len());
            let mut rest = &mut att[..m * n];
            for &(s0, s1, u) in &runs {
                let (head, tail) = rest.split_at_mut((s1 - s0) * t * n);
                outs.push((head, s0, s1, u));
                rest = tail;
            }
            let cross_attn = |(out, s0, s1, u): (&mut [f32], usize, usize, usize), parallel: bool| {
                let kv = View::new(&self.cross[u][l], d.n_audio_ctx, 2 * n);
                let q = q_all.rows(s0 * t, (s1 - s0) * t);
                attention(q, kv.cols(0, n), kv.cols(n, n), d.n_head, None, out, parallel);
            };
            if runs.len() >= threads {
                outs.into_par_iter().for_each(|o| cross_attn(o, false));
            } else {
                outs.into_iter().for_each(|o| cross_attn(o, true));
            }
            b.cross_out.forward_add(View::new(&att, m, n), &mut x);

            b.base.mlp(&mut x, m, &mut h, &mut u);
        }
        d.ln.forward(&x, &mut h);
        let mut logits = vec![0.0f32; m * d.n_vocab];
        matmul(&mut logits, d.n_vocab, View::new(&h, m, n), View::new(&d.token_embedding, d.n_vocab, n).t(), false);
        self.len += t;
        Ok(logits)
    }
}

impl DecoderSession for CpuSession<'_> {
    fn n_seq(&self) -> usize {
        self.caches.len()
    }

    fn n_vocab(&self) -> usize {
        self.dec.n_vocab
    }

    fn forward(&mut self, tokens: &[&[u32]]) -> Result<Vec<f32>> {
        self.run(tokens)
    }

    /// A `source` of the wrong length or with an index out of range leaves the session unchanged
    /// (the trait gives no way to report it); [`CpuSession::try_reorder`] reports it.
    fn reorder(&mut self, source: &[usize]) {
        let _ = self.try_reorder(source);
    }

    fn retain(&mut self, keep: &[usize]) -> Result<()> {
        self.try_retain(keep)
    }
}
