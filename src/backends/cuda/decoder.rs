//! Decoder sessions on the GPU: a preallocated self-attention KV cache of `max_seqs` slots, the
//! utterance's cross-attention K/V (computed once by the encoder's last GEMM), and per step
//! embedding, the decoder blocks and the tied logits. A slot table maps sequences to cache
//! slots, so beam reordering remaps slots and copies (filled positions only) just where one
//! source continues into several beams.
use super::context::{DeviceBuffer, Gpu};
use super::gemm::{Epilogue, GemmShape, Out, PROMPT_TOKENS};
use super::kernels::{gemv_fits, gemv_fuses_ln, CrossKv, GemvOut, KvAppend, G1_MAX_K, SPLIT_KEYS, SPLIT_PART};
use super::step::{fused_enabled, FusedMode, FusedStep, StepBuffers};
use super::weights::Ln;
use super::{CudaFeatures, CudaModel};
use crate::decoding::{select_on_host, DecoderSession, Select};
use crate::model::ModelConfig;
use anyhow::{anyhow, bail, Result};
use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, PinnedHostSlice};
use std::cell::RefMut;
use std::collections::HashMap;

/// Whether decode steps run as captured CUDA graphs (`WHISPER_TRT_CUDA_GRAPHS=0` turns it off).
fn graphs_enabled() -> bool {
    std::env::var("WHISPER_TRT_CUDA_GRAPHS").map_or(true, |v| v != "0")
}

/// Whether decoder attention splits the keys over blocks (flash decoding): the default, since on
/// an H100 it made the large-v2 step 2.4x faster at batch 1 (2.80 vs 6.64 ms);
/// `WHISPER_TRT_SPLIT_ATTENTION=0` selects one block per (row, head).
fn split_enabled() -> bool {
    std::env::var("WHISPER_TRT_SPLIT_ATTENTION").map_or(true, |v| v != "0")
}

/// Whether decode steps of at most [`super::kernels::GEMV_MAX_M`] rows run their dense layers
/// through the GEMV kernel (LayerNorm and GELU fused) instead of cuBLASLt, whatever
/// [`pdl_enabled`] decides: `WHISPER_TRT_GEMV=1`. Off by default: without Programmatic Dependent
/// Launch the captured step measured a little faster than cuBLASLt's at batch 1 and much slower
/// at batch 8 (H100, large-v2, same runs: 2.67-2.69 vs 2.81-2.85 ms at batch 1, 6.00 vs 3.54 ms
/// at batch 8).
pub fn gemv_enabled() -> bool {
    std::env::var("WHISPER_TRT_GEMV").is_ok_and(|v| v == "1")
}

/// Whether the launch-by-launch step uses Programmatic Dependent Launch (compute capability 9.0
/// or newer; elsewhere it changes nothing): on by default, `WHISPER_TRT_PDL=0` turns it off.
/// Every kernel of kernels/*.cu after the step's first (the embedding, which reads what a host
/// copy wrote) is launched with the programmatic attribute (cuBLASLt and gelu_f16 as before), so
/// its blocks are scheduled while the previous kernel finishes, and reads its weights (GEMV) or
/// cross keys and values (cross-attention) before it waits for the previous kernel's results.
/// Steps of at most [`pdl_gemv_rows`] rows then run their dense layers through the GEMV kernel
/// (cuBLASLt's kernels do not wait). H100, large-v2, one run (`whisper-trt bench --batch
/// 1,2,4,8`, ms per step): this default 2.40 / 2.81 / 3.02 / 3.53 at batch 1 / 2 / 4 / 8, against
/// 2.85 / 2.84 / 3.02 / 3.54 for the cuBLASLt graph without PDL (`WHISPER_TRT_PDL=0`).
pub fn pdl_enabled() -> bool {
    std::env::var("WHISPER_TRT_PDL").map_or(true, |v| v != "0")
}

/// Rows up to which Programmatic Dependent Launch also selects the GEMV kernel
/// (`WHISPER_TRT_PDL_GEMV_ROWS`, default [`PDL_GEMV_ROWS`]; at most GEMV_MAX_M).
pub fn pdl_gemv_rows() -> usize {
    std::env::var("WHISPER_TRT_PDL_GEMV_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(PDL_GEMV_ROWS)
}

/// See [`pdl_gemv_rows`]. H100, large-v2, one run, GEMV + PDL against cuBLASLt + PDL: 2.79 vs
/// 2.81 ms at batch 2 (a tie), 3.52 vs 3.02 at 4, 5.71 vs 3.53 at 8; at batch 1 GEMV + PDL ran
/// 2.40-2.43 ms against 2.85 for the cuBLASLt graph without PDL.
const PDL_GEMV_ROWS: usize = 1;

/// What a dense layer of the decoder writes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dense {
    /// fp16 with bias.
    F16,
    /// fp16 with bias, then exact GELU.
    F16Gelu,
    /// Added into the f32 residual stream, with bias.
    Residual,
    /// f32, no bias (the logits).
    Logits,
}

/// Device memory of the decoder, sized once by the engine's build options.
pub struct DecoderState {
    /// Cache slots (sequences a session may hold).
    pub max_seqs: usize,
    /// Rows (sequences x tokens) one step runs at most.
    pub max_rows: usize,
    /// Positions per cache slot.
    pub ctx: usize,
    x: DeviceBuffer,
    h: DeviceBuffer,
    qkv: DeviceBuffer,
    att: DeviceBuffer,
    u: DeviceBuffer,
    logits: DeviceBuffer,
    tokens: DeviceBuffer,
    /// i32: positions filled before the step (kernels read it, so graphs replay unchanged).
    len: DeviceBuffer,
    slots: DeviceBuffer,
    /// u64 per sequence: the address of the cross K/V of that sequence's utterance (see CrossKv).
    cross_table: DeviceBuffer,
    pairs: DeviceBuffer,
    /// fp16 (int8 with `--int8-kv`: `kv_elem` 1) `[layer][slot][ctx][n]` each.
    k_cache: DeviceBuffer,
    v_cache: DeviceBuffer,
    /// Bytes per cached value.
    kv_elem: usize,
    /// Captured one-token steps by number of sequences: everything a step reads lives at fixed
    /// addresses (tokens, len, slot table, cross K/V table), so a graph replays for any later
    /// step of the same shape.
    graphs: HashMap<usize, CudaGraph>,
    use_graphs: bool,
    /// Partial results of the split attention kernels, f32 `[max_rows][n_head][splits][66]`,
    /// and their arrival counters, u32 `[max_rows][n_head]` (zero between kernels: the last
    /// block of a (row, head) merges the splits and resets its counter).
    part: DeviceBuffer,
    counters: DeviceBuffer,
    /// Splits covering the self-attention cache.
    self_splits: usize,
    use_split: bool,
    use_gemv: bool,
    /// Programmatic Dependent Launch for the launch-by-launch step (see [`pdl_enabled`]).
    use_pdl: bool,
    /// Rows up to which PDL selects the GEMV kernel (see [`pdl_gemv_rows`]).
    pdl_gemv_rows: usize,
    ablate: Ablate,
    /// The fused one-token step (decoder_step.cu), prepared at the first step that wants it;
    /// `fused_tried` once that was attempted (a model or GPU it does not fit keeps the old path).
    fused: Option<FusedStep>,
    fused_tried: bool,
    use_fused: bool,
    /// How the fused step streams its weights (development; `None`: the default).
    fused_mode: Option<FusedMode>,
    /// Page-locked host copy of the logits (a pageable copy runs at a fraction of the speed);
    /// `None` if the host refused it, then logits go straight to pageable memory.
    host_logits: Option<PinnedHostSlice<f32>>,
}

impl DecoderState {
    /// `kv_elem`: bytes per cached key or value (2: fp16, 1: int8).
    pub fn new(gpu: &Gpu, c: &ModelConfig, max_seqs: usize, kv_elem: usize) -> Result<Self> {
        let max_seqs = max_seqs.max(1);
        let max_rows = max_seqs * PROMPT_TOKENS;
        let (n, ctx) = (c.n_text_state, c.n_text_ctx);
        let cache = c.n_text_layer * max_seqs * ctx * n * kv_elem;
        let (self_splits, cross_splits) = (ctx.div_ceil(SPLIT_KEYS), c.n_audio_ctx.div_ceil(SPLIT_KEYS));
        let part = max_rows * c.n_text_head * self_splits.max(cross_splits) * SPLIT_PART * 4;
        Ok(DecoderState {
            max_seqs,
            max_rows,
            ctx,
            x: gpu.alloc(max_rows * n * 4)?,
            h: gpu.alloc(max_rows * n * 2)?,
            qkv: gpu.alloc(max_rows * 3 * n * 2)?,
            att: gpu.alloc(max_rows * n * 2)?,
            u: gpu.alloc(max_rows * 4 * n * 2)?,
            logits: gpu.alloc(max_rows * c.n_vocab * 4)?,
            tokens: gpu.alloc(max_rows * 4)?,
            len: gpu.alloc(4)?,
            slots: gpu.alloc(max_seqs * 4)?,
            cross_table: gpu.alloc(max_seqs * 8)?,
            pairs: gpu.alloc(2 * max_seqs * 4)?,
            k_cache: gpu.alloc(cache)?,
            v_cache: gpu.alloc(cache)?,
            kv_elem,
            graphs: HashMap::new(),
            use_graphs: graphs_enabled(),
            part: gpu.alloc(part)?,
            counters: gpu.alloc(max_rows * c.n_text_head * 4)?,
            self_splits,
            use_split: split_enabled(),
            use_gemv: gemv_enabled(),
            use_pdl: pdl_enabled(),
            pdl_gemv_rows: pdl_gemv_rows(),
            ablate: Ablate::from_env(),
            fused: None,
            fused_tried: false,
            use_fused: fused_enabled(),
            fused_mode: std::env::var("WHISPER_TRT_FUSED_MODE").ok().and_then(|v| FusedMode::parse(&v)),
            // SAFETY: f32 has no invalid bit patterns; the buffer is only read after a copy
            // into it completed (copy_from waits for the stream).
            host_logits: unsafe { gpu.ctx.alloc_pinned_with_flags::<f32>(max_rows * c.n_vocab, 0) }.ok(),
        })
    }
}

/// Timing experiments on the launch-by-launch step (the results are garbage): which kernels of
/// each block to leave out, `WHISPER_TRT_STEP_SKIP` = comma-separated names of [`Ablate::NAMES`],
/// and by how much to divide the output features of every dense layer, `WHISPER_TRT_STEP_SHRINK`
/// (weights read fall with it; the chain of kernels stays).
#[derive(Default)]
struct Ablate {
    skip: u32,
    shrink: usize,
}

impl Dense {
    fn out(self) -> GemvOut {
        match self {
            Dense::F16 => GemvOut::F16,
            Dense::F16Gelu => GemvOut::F16Gelu,
            Dense::Residual => GemvOut::F32Add,
            Dense::Logits => GemvOut::F32,
        }
    }
}

impl Ablate {
    const NAMES: [&str; 8] = ["qkv", "self", "out", "crossq", "cross", "crossout", "fc1", "fc2"];

    fn from_env() -> Self {
        let skip = std::env::var("WHISPER_TRT_STEP_SKIP")
            .map(|v| v.split(',').filter_map(|name| Self::NAMES.iter().position(|&n| n == name.trim())).fold(0, |m, i| m | 1 << i))
            .unwrap_or(0);
        let shrink = std::env::var("WHISPER_TRT_STEP_SHRINK").ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(1).max(1);
        Ablate { skip, shrink }
    }
}

impl DecoderState {
    /// Forgets the captured steps (they are captured again when next needed).
    pub fn clear_graphs(&mut self) {
        self.graphs.clear();
    }

    pub fn set_graphs(&mut self, on: bool) {
        self.use_graphs = on;
        self.graphs.clear();
    }

    pub fn set_split(&mut self, on: bool) {
        self.use_split = on;
        self.graphs.clear();
    }

    pub fn set_gemv(&mut self, on: bool) {
        self.use_gemv = on;
        self.graphs.clear();
    }

    /// Programmatic Dependent Launch for the launch-by-launch step (see [`pdl_enabled`]); it
    /// implies the GEMV kernel for dense layers of at most [`pdl_gemv_rows`] rows.
    pub fn set_pdl(&mut self, on: bool) {
        self.use_pdl = on;
        self.graphs.clear();
    }

    pub fn set_fused(&mut self, on: bool) {
        self.use_fused = on;
        self.graphs.clear();
    }

    pub fn set_fused_mode(&mut self, mode: Option<FusedMode>) {
        self.fused_mode = mode;
        self.graphs.clear();
    }

    /// The fused step, once a step prepared it.
    pub fn fused(&self) -> Option<&FusedStep> {
        self.fused.as_ref()
    }
}

/// A decoder session on the GPU: see [`DecoderSession`].
pub struct CudaSession<'a> {
    model: &'a CudaModel,
    /// The utterances whose cross K/V the table points at, borrowed so they outlive the session.
    _features: Vec<&'a CudaFeatures>,
    st: RefMut<'a, DecoderState>,
    n_seq: usize,
    /// Positions filled in every sequence.
    len: usize,
    /// Cache slot of each sequence.
    slots: Vec<usize>,
    /// The cross K/V address of each sequence's utterance (what `DecoderState.cross_table` holds):
    /// indexed by sequence, so it follows reorders and retires.
    cross: Vec<u64>,
    /// A failure inside `reorder` (which cannot return one), reported by the next `forward`.
    error: Option<anyhow::Error>,
}

impl CudaModel {
    /// Programmatic Dependent Launch for the decoder's launch-by-launch step (see
    /// [`DecoderState::set_pdl`]); the default comes from `WHISPER_TRT_PDL` (on unless "0").
    /// On a GPU below compute capability 9.0 it changes nothing.
    pub fn set_pdl(&self, on: bool) -> Result<()> {
        let mut st = self.dec_state.try_borrow_mut().map_err(|_| anyhow!("a decoder session is active"))?;
        st.set_pdl(on);
        Ok(())
    }

    /// Whether this GPU launches with Programmatic Dependent Launch when asked (compute
    /// capability 9.0 or newer).
    pub fn pdl_supported(&self) -> bool {
        self.kernels.pdl_supported()
    }

    /// A session of `features.len() * per` sequences; sequence `s` attends to `features[s / per]`.
    pub(super) fn new_session<'a>(&'a self, features: &[&'a CudaFeatures], per: usize) -> Result<CudaSession<'a>> {
        let st = self
            .dec_state
            .try_borrow_mut()
            .map_err(|_| anyhow!("the CUDA backend runs one decoder session at a time; drop the other first"))?;
        let n_seq = features.len() * per;
        if n_seq == 0 || n_seq > st.max_seqs {
            bail!(
                "a decoder session of {n_seq} sequences does not fit this engine (1 to {}: rebuild with a larger --beam-width or --max-batch)",
                st.max_seqs
            );
        }
        if let Some(f) = features.iter().find(|f| f.bytes != self.features_bytes()) {
            bail!("audio features of another model ({} bytes, expected {})", f.bytes, self.features_bytes());
        }
        let slots: Vec<usize> = (0..n_seq).collect();
        let table: Vec<i32> = slots.iter().map(|&s| s as i32).collect();
        self.gpu.copy_to(&st.slots, 0, &table)?;
        let cross: Vec<u64> = (0..n_seq).map(|s| features[s / per].ptr()).collect();
        self.gpu.copy_to(&st.cross_table, 0, &cross)?;
        Ok(CudaSession { model: self, _features: features.to_vec(), st, n_seq, len: 0, slots, cross, error: None })
    }
}

impl CudaSession<'_> {
    /// Tokens every sequence holds so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, tokens: &[&[u32]]) -> Result<usize> {
        let c = &self.model.config;
        if tokens.len() != self.n_seq {
            bail!("forward got {} token sequences, the session has {}", tokens.len(), self.n_seq);
        }
        let t = tokens[0].len();
        if t == 0 || tokens.iter().any(|s| s.len() != t) {
            bail!("forward needs the same non-zero number of tokens for every sequence");
        }
        if self.len + t > self.st.ctx {
            bail!("{} + {t} tokens exceed the text context of {}", self.len, self.st.ctx);
        }
        if let Some(&bad) = tokens.iter().flat_map(|s| s.iter()).find(|&&id| id as usize >= c.n_vocab) {
            bail!("token id {bad} is outside the vocabulary of {}", c.n_vocab);
        }
        Ok(t)
    }

    /// One step over `tc` tokens of every sequence (`ids` sequence-major); logits stay on the GPU.
    /// One-token steps run as a CUDA graph, captured the first time their shape comes.
    fn step(&mut self, ids: &[i32], tc: usize) -> Result<()> {
        let m = self.model;
        m.gpu.copy_to(&self.st.tokens, 0, ids)?;
        m.gpu.copy_to(&self.st.len, 0, &[self.len as i32])?;
        let rows = ids.len();
        // Prepared outside any capture (it uploads a table). A model or GPU the fused kernel
        // does not fit (n_state > 1280, too little shared memory) keeps the launch-by-launch step.
        if tc == 1 && self.st.use_fused && !self.st.fused_tried {
            self.st.fused_tried = true;
            self.st.fused = FusedStep::new(m).ok();
        }
        if tc == 1 && self.st.use_graphs {
            let key = rows;
            if !self.st.graphs.contains_key(&key) {
                let stream = &m.gpu.stream;
                stream
                    .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
                    .map_err(|e| anyhow!("CUDA graph capture: {e:?}"))?;
                let queued = self.enqueue(rows, tc);
                let graph = stream.end_capture(CUgraphInstantiate_flags(0));
                queued?;
                let graph = graph.map_err(|e| anyhow!("CUDA graph capture: {e:?}"))?;
                let graph = graph.ok_or_else(|| anyhow!("CUDA graph capture gave no graph"))?;
                self.st.graphs.insert(key, graph);
            }
            let graph = self.st.graphs.get(&key).ok_or_else(|| anyhow!("internal: graph missing"))?;
            graph.launch().map_err(|e| anyhow!("CUDA graph launch: {e:?}"))?;
        } else {
            self.enqueue(rows, tc)?;
        }
        self.len += tc;
        Ok(())
    }

    /// `y (+)= LN(x) · wᵀ (+ b)` (`ln` given: x is the f32 residual stream) or `y (+)= x · wᵀ (+ b)`
    /// (x fp16) over `rows` rows of `k` inputs and `n_out` outputs: the GEMV kernel with LayerNorm
    /// and GELU fused when the rows are few (and GEMV or PDL is on), else the LayerNorm kernel
    /// (into `h`), cuBLASLt and the GELU kernel. `kv`: the GEMV kernel also appends the keys and
    /// values of this QKV projection to the cache; the answer says whether it did (else the
    /// caller runs kv_append).
    #[allow(clippy::too_many_arguments)]
    fn dense(
        &self,
        rows: usize,
        n_out: usize,
        k: usize,
        ln: Option<&Ln>,
        x: u64,
        w: (u64, u64),
        b: Option<u64>,
        y: u64,
        how: Dense,
        kv: Option<KvAppend>,
    ) -> Result<bool> {
        // w: (weight, row scales of an int8 weight or 0 for fp16).
        let (w, ws) = w;
        let m = self.model;
        let h = self.st.h.ptr();
        let pdl_gemv = self.st.use_pdl && m.kernels.pdl_supported() && rows <= self.st.pdl_gemv_rows;
        // int8 weights at up to 8 rows: the tensor-core GEMV (gemv_mma_i8), built for those
        // rows, rather than the tiled W8A16 GEMM, whose smallest tiles leave most of the GPU idle.
        let int8_gemv = ws != 0 && k.is_multiple_of(32) && k <= G1_MAX_K;
        if (self.st.use_gemv || pdl_gemv || int8_gemv) && gemv_fits(rows, k) {
            let out = how.out();
            match ln {
                Some(l) if gemv_fuses_ln(rows, k) => m.kernels.gemv_q(w, ws, x, Some((l.g, l.b)), b, y, rows, n_out, k, k, n_out, out, kv)?,
                Some(l) => {
                    m.kernels.layernorm(x, l.g, l.b, h, rows, k, k)?;
                    m.kernels.gemv_q(w, ws, h, None, b, y, rows, n_out, k, k, n_out, out, kv)?
                }
                None => m.kernels.gemv_q(w, ws, x, None, b, y, rows, n_out, k, k, n_out, out, kv)?,
            }
            return Ok(kv.is_some());
        }
        let input = match ln {
            Some(l) => {
                m.kernels.layernorm(x, l.g, l.b, h, rows, k, k)?;
                h
            }
            None => x,
        };
        if ws != 0 {
            // int8 weights: the tiled W8A16 kernel (exact GELU in its epilogue).
            m.kernels.gemm_w8(w, ws, input, b, y, rows, n_out, k, k, n_out, how.out())?;
            return Ok(false);
        }
        let shape = match how {
            Dense::F16 | Dense::F16Gelu => GemmShape::linear(rows, n_out, k, Out::F16, Epilogue::Bias, false),
            Dense::Residual => GemmShape::linear(rows, n_out, k, Out::F32, Epilogue::Bias, true),
            Dense::Logits => GemmShape::linear(rows, n_out, k, Out::F32, Epilogue::None, false),
        };
        m.gemm.run(&shape, w, input, b, y)?;
        if how == Dense::F16Gelu {
            m.kernels.gelu_f16(y, rows * n_out)?;
        }
        Ok(false)
    }

    /// Queues one step over the tokens and position already on the device: the decoder blocks
    /// (one fused kernel for one-token steps of few sequences, else launch by launch), then the
    /// final LayerNorm and the logits.
    fn enqueue(&self, rows: usize, tc: usize) -> Result<()> {
        let m = self.model;
        let c = &m.config;
        let st = &self.st;
        let n = c.n_text_state;
        let x = st.x.ptr();
        match st.fused.as_ref().filter(|f| tc == 1 && st.use_fused && f.fits(rows) && m.kv_stats_ptr() == 0) {
            Some(f) => {
                let b = StepBuffers {
                    x,
                    q: st.qkv.ptr(),
                    att: st.att.ptr(),
                    u: st.u.ptr(),
                    k_cache: st.k_cache.ptr(),
                    v_cache: st.v_cache.ptr(),
                    cache_layer: st.max_seqs * st.ctx * n,
                    tokens: st.tokens.ptr(),
                    len: st.len.ptr(),
                    slots: st.slots.ptr(),
                    cross_table: st.cross_table.ptr(),
                };
                f.enqueue(&m.gpu, &b, rows, st.fused_mode)?;
                let _pdl = m.kernels.pdl_scope(st.use_pdl);
                self.dense(rows, c.n_vocab, n, Some(&m.dec.ln), x, (m.dec.tok_emb, m.dec.tok_scale), None, st.logits.ptr(), Dense::Logits, None)?;
            }
            None => self.blocks(rows, tc)?,
        }
        Ok(())
    }

    /// The embedding, decoder blocks and logits of a step, kernel by kernel.
    fn blocks(&self, rows: usize, tc: usize) -> Result<()> {
        let m = self.model;
        let c = &m.config;
        let (k, w, st) = (&m.kernels, &m.dec, &self.st);
        let n = c.n_text_state;
        let len = st.len.ptr();
        let (x, qkv, att, u) = (st.x.ptr(), st.qkv.ptr(), st.att.ptr(), st.u.ptr());
        // Launched plainly: it reads the tokens and position a host copy just wrote.
        k.embed_tokens(st.tokens.ptr(), w.tok_emb, w.tok_scale, w.pos, x, rows, n, tc, len)?;
        let _pdl = k.pdl_scope(st.use_pdl);
        let layer_bytes = (st.max_seqs * st.ctx * n * st.kv_elem) as u64;
        let kv_ld = c.n_text_layer * 2 * n;
        // int8 KV cache: keys and values are quantized by kv_append_i8 (not appended by the GEMV)
        // and read by the _i8 split attention kernels. Calibration records the fp16 ones.
        let int8_kv = m.int8_kv();
        let stats = m.kv_stats_ptr();
        use crate::kv_quant::{CROSS_K, CROSS_V, SELF_K, SELF_V};
        let merge = Some((st.counters.ptr(), att));
        // Timing only (results garbage): kernels left out and output features cut (see Ablate).
        let ab = &st.ablate;
        let on = |i: usize| ab.skip & (1 << i) == 0;
        let cut = |n_out: usize| (n_out / ab.shrink).max(1);
        for (l, b) in w.blocks.iter().enumerate() {
            let (kc, vc) = (st.k_cache.ptr() + l as u64 * layer_bytes, st.v_cache.ptr() + l as u64 * layer_bytes);
            // Causal self-attention over the cache (the GEMV kernel appends the new keys and
            // values itself).
            let append = KvAppend { k_cache: kc, v_cache: vc, slots: st.slots.ptr(), len, t: tc, ctx: st.ctx };
            let append = (!int8_kv && stats == 0).then_some(append);
            if on(0) && !self.dense(rows, 3 * cut(n), n, Some(&b.base.attn_ln), x, (b.base.qkv.w, b.base.qkv.s), Some(b.base.qkv.b), qkv, Dense::F16, append)? {
                if int8_kv {
                    let scales = (m.kv_scale_ptr(SELF_K, l), m.kv_scale_ptr(SELF_V, l));
                    k.kv_append_i8(qkv, kc, vc, st.slots.ptr(), rows, n, tc, len, st.ctx, scales)?;
                } else {
                    k.kv_append(qkv, kc, vc, st.slots.ptr(), rows, n, tc, len, st.ctx)?;
                }
            }
            if stats != 0 {
                k.kv_absmax(qkv + (n * 2) as u64, rows, 3 * n, 2 * n, n, c.n_text_layer, (SELF_K, l), stats)?;
            }
            if on(1) && int8_kv {
                let scales = (m.kv_scale_ptr(SELF_K, l), m.kv_scale_ptr(SELF_V, l));
                let dims = (rows, n, c.n_text_head, tc);
                let splits = st.ctx.div_ceil(crate::backends::cuda::kernels::SPLIT_KEYS_I8);
                k.decoder_self_attention_split_i8(qkv, kc, vc, st.slots.ptr(), st.part.ptr(), dims, len, st.ctx, splits, merge, scales)?;
            } else if on(1) && st.use_split {
                let part = st.part.ptr();
                k.decoder_self_attention_split(qkv, kc, vc, st.slots.ptr(), part, rows, n, c.n_text_head, tc, len, st.ctx, st.self_splits, merge)?;
            } else if on(1) {
                k.decoder_self_attention(qkv, kc, vc, st.slots.ptr(), att, rows, n, c.n_text_head, tc, len, st.ctx)?;
            }
            if on(2) {
                self.dense(rows, cut(n), n, None, att, (b.base.out.w, b.base.out.s), Some(b.base.out.b), x, Dense::Residual, None)?;
            }
            // Cross-attention over the utterance's keys and values (query in `qkv`, stride n).
            if on(3) {
                self.dense(rows, cut(n), n, Some(&b.cross_ln), x, (b.cross_q.w, b.cross_q.s), Some(b.cross_q.b), qkv, Dense::F16, None)?;
            }
            let kv = CrossKv { table: st.cross_table.ptr(), offset: l * 2 * n, tokens: tc };
            if on(4) && int8_kv {
                let scales = (m.kv_scale_ptr(CROSS_K, l), m.kv_scale_ptr(CROSS_V, l));
                k.cross_attention_split_i8(qkv, n, kv, kv_ld, c.n_audio_ctx, st.part.ptr(), (rows, n, c.n_text_head), merge, scales)?;
            } else if on(4) && st.use_split {
                k.cross_attention_split(qkv, n, kv, kv_ld, c.n_audio_ctx, st.part.ptr(), rows, n, c.n_text_head, merge)?;
            } else if on(4) {
                k.cross_attention(qkv, n, kv, kv_ld, c.n_audio_ctx, att, rows, n, c.n_text_head)?;
            }
            if on(5) {
                self.dense(rows, cut(n), n, None, att, (b.cross_out.w, b.cross_out.s), Some(b.cross_out.b), x, Dense::Residual, None)?;
            }
            // MLP.
            if on(6) {
                self.dense(rows, cut(4 * n), n, Some(&b.base.mlp_ln), x, (b.base.fc1.w, b.base.fc1.s), Some(b.base.fc1.b), u, Dense::F16Gelu, None)?;
            }
            if on(7) {
                self.dense(rows, cut(n), 4 * n, None, u, (b.base.fc2.w, b.base.fc2.s), Some(b.base.fc2.b), x, Dense::Residual, None)?;
            }
        }
        self.dense(rows, c.n_vocab, n, Some(&w.ln), x, (w.tok_emb, w.tok_scale), None, st.logits.ptr(), Dense::Logits, None)?;
        Ok(())
    }

    fn run(&mut self, tokens: &[&[u32]]) -> Result<Vec<f32>> {
        if let Some(e) = self.error.take() {
            return Err(e.context("an earlier beam reorder failed"));
        }
        let t = self.check(tokens)?;
        let v = self.model.config.n_vocab;
        let n_seq = self.n_seq;
        // Long inputs run in chunks of tokens (causal attention over the cache makes that exact).
        let chunk = (self.st.max_rows / n_seq).max(1);
        let mut out = vec![0f32; n_seq * t * v];
        let mut c0 = 0;
        while c0 < t {
            let tc = chunk.min(t - c0);
            let ids: Vec<i32> = tokens.iter().flat_map(|s| s[c0..c0 + tc].iter().map(|&id| id as i32)).collect();
            self.step(&ids, tc)?;
            let count = n_seq * tc * v;
            let src = self.st.logits.ptr();
            let gpu = &self.model.gpu;
            let pageable: Vec<f32>;
            let logits: &[f32] = match self.st.host_logits.as_mut() {
                Some(pinned) => {
                    let host = pinned.as_mut_slice().map_err(|e| anyhow!("pinned logits buffer: {e:?}"))?;
                    let host = host.get_mut(..count).ok_or_else(|| anyhow!("internal: pinned logits buffer too small"))?;
                    gpu.copy_from(src, host)?;
                    host
                }
                None => {
                    let mut p = vec![0f32; count];
                    gpu.copy_from(src, &mut p)?;
                    pageable = p;
                    &pageable
                }
            };
            for s in 0..n_seq {
                let dst = (s * t + c0) * v;
                out[dst..dst + tc * v].copy_from_slice(&logits[s * tc * v..(s + 1) * tc * v]);
            }
            c0 += tc;
        }
        Ok(out)
    }

    /// One step of `tokens` (the same count per sequence, at most one step's rows) whose logits
    /// stay on the GPU: for measuring a step without the host copy of the logits. Queued only;
    /// the caller synchronises.
    pub fn step_on_device(&mut self, tokens: &[&[u32]]) -> Result<()> {
        if let Some(e) = self.error.take() {
            return Err(e.context("an earlier beam reorder failed"));
        }
        let t = self.check(tokens)?;
        if t * self.n_seq > self.st.max_rows {
            bail!("{} sequences x {t} tokens exceed one step's {} rows", self.n_seq, self.st.max_rows);
        }
        let ids: Vec<i32> = tokens.iter().flat_map(|s| s.iter().map(|&id| id as i32)).collect();
        self.step(&ids, t)
    }

    /// Like [`DecoderSession::reorder`], but reports bad input instead of ignoring it.
    pub fn try_reorder(&mut self, source: &[usize]) -> Result<()> {
        let n_seq = self.n_seq;
        if source.len() != n_seq || source.iter().any(|&s| s >= n_seq) {
            bail!("reorder source {source:?} is not {n_seq} indices below {n_seq}");
        }
        let (new, pairs) = reorder_slots(&self.slots, source, self.st.max_seqs);
        if !pairs.is_empty() {
            let flat: Vec<i32> = pairs.iter().flat_map(|&(s, d)| [s as i32, d as i32]).collect();
            let m = self.model;
            let c = &m.config;
            let st = &self.st;
            m.gpu.copy_to(&st.pairs, 0, &flat)?;
            m.kernels.kv_copy(
                st.k_cache.ptr(),
                st.v_cache.ptr(),
                st.pairs.ptr(),
                pairs.len(),
                c.n_text_layer,
                st.max_seqs,
                st.ctx,
                // kv_copy moves fp16 units: an int8 row of n values is n / 2 of them.
                c.n_text_state * st.kv_elem / 2,
                self.len,
            )?;
        }
        let table: Vec<i32> = new.iter().map(|&s| s as i32).collect();
        self.model.gpu.copy_to(&self.st.slots, 0, &table)?;
        self.slots = new;
        let cross: Vec<u64> = source.iter().map(|&s| self.cross[s]).collect();
        if cross != self.cross {
            self.model.gpu.copy_to(&self.st.cross_table, 0, &cross)?;
            self.cross = cross;
        }
        Ok(())
    }

    /// See [`DecoderSession::retain`]: the slot and cross K/V tables are compacted (no cache
    /// copies); the dropped sequences' slots become free.
    pub fn try_retain(&mut self, keep: &[usize]) -> Result<()> {
        if let Some(e) = self.error.take() {
            return Err(e.context("an earlier beam reorder failed"));
        }
        let n_seq = self.n_seq;
        if keep.is_empty() || keep.windows(2).any(|w| w[0] >= w[1]) || keep.iter().any(|&s| s >= n_seq) {
            bail!("retain {keep:?} is not increasing indices below {n_seq}");
        }
        self.slots = keep.iter().map(|&s| self.slots[s]).collect();
        self.cross = keep.iter().map(|&s| self.cross[s]).collect();
        let table: Vec<i32> = self.slots.iter().map(|&s| s as i32).collect();
        self.model.gpu.copy_to(&self.st.slots, 0, &table)?;
        self.model.gpu.copy_to(&self.st.cross_table, 0, &self.cross)?;
        self.n_seq = keep.len();
        Ok(())
    }

    /// [`DecoderSession::forward_select`] with the masks and the selection on the GPU, for
    /// one-token steps; other feeds go through the host.
    fn select_on_device(&mut self, tokens: &[&[u32]], select: &Select) -> Result<Vec<Vec<(u32, f32)>>> {
        if tokens.first().is_none_or(|t| t.len() != 1) || !super::select::fits(select) || !self.model.device_select() {
            return select_on_host(self, tokens, select);
        }
        if let Some(e) = self.error.take() {
            return Err(e.context("an earlier beam reorder failed"));
        }
        self.check(tokens)?;
        let ids: Vec<i32> = tokens.iter().map(|s| s[0] as i32).collect();
        self.step(&ids, 1)?;
        self.model.select_rows(self.st.logits.ptr(), self.n_seq, select)
    }
}

/// The new slot of every sequence when sequence `i` continues from `source[i]`, and the
/// (from, to) slot copies that needs. A source kept by one sequence hands over its slot (itself
/// first); every further user of a source gets a free slot and a copy.
pub fn reorder_slots(slots: &[usize], source: &[usize], n_slots: usize) -> (Vec<usize>, Vec<(usize, usize)>) {
    let n = slots.len();
    let mut new: Vec<Option<usize>> = vec![None; n];
    let mut taken = vec![false; n]; // source s's slot is already handed over
    for i in 0..n {
        if source[i] == i {
            new[i] = Some(slots[i]);
            taken[i] = true;
        }
    }
    for i in 0..n {
        let s = source[i];
        if new[i].is_none() && !taken[s] {
            new[i] = Some(slots[s]);
            taken[s] = true;
        }
    }
    // Free: slots of sources nobody continues, and slots no sequence held.
    let used: Vec<usize> = (0..n).filter(|&s| taken[s]).map(|s| slots[s]).collect();
    let mut free = (0..n_slots).filter(|s| !used.contains(s));
    let mut pairs = Vec::new();
    let out = (0..n)
        .map(|i| match new[i] {
            Some(s) => s,
            None => {
                let f = free.next().expect("n sequences never need more than n slots");
                pairs.push((slots[source[i]], f));
                f
            }
        })
        .collect();
    (out, pairs)
}

impl DecoderSession for CudaSession<'_> {
    fn n_seq(&self) -> usize {
        self.n_seq
    }

    fn n_vocab(&self) -> usize {
        self.model.config.n_vocab
    }

    fn forward(&mut self, tokens: &[&[u32]]) -> Result<Vec<f32>> {
        self.run(tokens)
    }

    /// Bad input or a failed copy is kept and reported by the next `forward` (the trait gives
    /// `reorder` no way to report it); [`CudaSession::try_reorder`] reports it at once.
    fn reorder(&mut self, source: &[usize]) {
        if let Err(e) = self.try_reorder(source) {
            self.error.get_or_insert(e);
        }
    }

    fn retain(&mut self, keep: &[usize]) -> Result<()> {
        self.try_retain(keep)
    }

    fn forward_select(&mut self, tokens: &[&[u32]], select: &Select) -> Result<Vec<Vec<(u32, f32)>>> {
        self.select_on_device(tokens, select)
    }
}

#[cfg(test)]
mod tests {
    use super::reorder_slots;

    /// Simulates the cache: each slot holds the history of one sequence.
    fn check(slots: &[usize], source: &[usize], n_slots: usize) {
        let mut content: Vec<Option<usize>> = vec![None; n_slots];
        for (i, &s) in slots.iter().enumerate() {
            content[s] = Some(i);
        }
        let (new, pairs) = reorder_slots(slots, source, n_slots);
        // Copies read slots that are not written by any copy (so order does not matter).
        for &(from, to) in &pairs {
            assert!(pairs.iter().all(|&(_, t)| t != from), "copy source {from} is also written");
            content[to] = content[from];
        }
        let mut seen = vec![false; n_slots];
        for (i, &s) in new.iter().enumerate() {
            assert!(!seen[s], "slot {s} given twice in {new:?}");
            seen[s] = true;
            assert_eq!(content[s], Some(source[i]), "sequence {i} should continue from {}", source[i]);
        }
        // Only duplicates cost a copy.
        let distinct = {
            let mut d = source.to_vec();
            d.sort();
            d.dedup();
            d.len()
        };
        assert_eq!(pairs.len(), source.len() - distinct);
    }

    #[test]
    fn reorder_moves_slots_and_copies_only_duplicates() {
        check(&[0, 1, 2, 3, 4], &[0, 1, 2, 3, 4], 5);
        check(&[0, 1, 2, 3, 4], &[4, 3, 2, 1, 0], 5);
        check(&[0, 1, 2, 3, 4], &[0, 0, 0, 0, 0], 5);
        check(&[3, 0, 4, 1, 2], &[1, 1, 3, 0, 3], 5);
        check(&[2, 0], &[1, 1], 4);
        check(&[5, 1, 3], &[2, 0, 2], 8);
        let mut seed = 7u32;
        for _ in 0..200 {
            let n = 1 + (seed % 6) as usize;
            let n_slots = n + (seed / 7 % 3) as usize;
            let mut perm: Vec<usize> = (0..n_slots).collect();
            let mut source = vec![0; n];
            for i in 0..n_slots {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                perm.swap(i, (seed as usize) % n_slots);
            }
            for s in source.iter_mut() {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                *s = (seed as usize) % n;
            }
            check(&perm[..n], &source, n_slots);
        }
    }
}
