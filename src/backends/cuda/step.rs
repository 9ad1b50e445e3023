//! The fused decoder step: every decoder block of a one-token step for a few sequences in one
//! persistent kernel (kernels/decoder_step.cu), one block per multiprocessor with grid barriers
//! between dependent phases and the weights streaming into shared memory ahead of use (a
//! producer warp per block, a bounded number of copies in flight). It replaces the ~11 launches
//! per layer of [`super::decoder`]'s step (the final LayerNorm and the logits stay there).
//!
//! Opt-in (`WHISPER_TRT_FUSED_STEP=1` or [`CudaModel::set_fused`]): on an H100 at large-v2 and
//! batch 1 it takes 2.54-2.58 ms per step against 2.41-2.44 ms for the launch-by-launch step in
//! CUDA graphs.
//! Its phases are latency-bound (grid barriers and global round trips between them: 1.75 ms
//! with no weight traffic at all); `WHISPER_TRT_FUSED_PROFILE=1` prints where the time goes.
use super::context::{DeviceBuffer, Gpu};
use super::CudaModel;
use anyhow::{anyhow, bail, Result};
use cudarc::driver::sys::{self, CUdevice_attribute, CUfunction_attribute_enum};
use cudarc::driver::CudaFunction;
use std::ffi::c_void;

/// Rows (sequences x one token) the fused kernel takes at most (`DS_RMAX`).
pub const FUSED_MAX_ROWS: usize = 8;
/// Threads per block (`DS_THREADS`).
const THREADS: u32 = 512;
/// Attention splits per (row, head) at most, f32 values per partial (`DS_SPLITS`, `DS_PART`).
const SPLITS: usize = 32;
const PART: usize = 66;
/// Keys one attention work item takes at most (`DS_KEYS`: 8 x 480 consumer threads / 8).
const KEYS: usize = 480;
/// Widest n_state whose LayerNorm rows the kernel keeps in registers (32 x 4 x `DS_LN_VEC`).
const MAX_STATE: usize = 1280;
/// Layers, bias values of one block's weight slice, residual columns of one block, at most
/// (`DS_LAYERS`, `DS_BIAS`, `DS_OWN`).
const MAX_LAYERS: usize = 32;
const MAX_BIAS: usize = 192;
const MAX_OWN: usize = 64;

/// Whether one-token steps of few sequences run the fused kernel: only with
/// `WHISPER_TRT_FUSED_STEP=1` (see the module notes for why it is not the default).
pub fn fused_enabled() -> bool {
    std::env::var("WHISPER_TRT_FUSED_STEP").is_ok_and(|v| v == "1")
}

/// One layer's weight addresses (`LayerW` in decoder_step.cu).
#[repr(C)]
#[derive(Clone, Copy)]
struct LayerW([u64; 18]);

/// The kernel's only argument (`StepParams` in decoder_step.cu), passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
struct StepParams {
    layers: u64,
    tok_emb: u64,
    pos_emb: u64,
    tokens: u64,
    len: u64,
    slots: u64,
    cross_table: u64,
    x: u64,
    q: u64,
    att: u64,
    u: u64,
    part: u64,
    k_cache: u64,
    v_cache: u64,
    sync: u64,
    prof: u64,
    cache_layer: i64,
    kv_ld: i64,
    rows: i32,
    n: i32,
    n_head: i32,
    n_layer: i32,
    ctx: i32,
    n_audio_ctx: i32,
    ring_bytes: i32,
    mode: i32,
    ahead: i32,
    l2_ahead: i32,
}

/// How the fused step streams its weights (kernel development; see `StepParams` in
/// decoder_step.cu): `mode` 0 the producer warp's cp.async with an L2 evict-first policy and L2
/// prefetch of the next attention inputs, LayerNorm parameters and biases; 1 the same without
/// the policy and the prefetches; 2 no weights (timing only: results are garbage); `ahead` 4 KB
/// pieces in flight per block (1 to 12); `l2_ahead` unused. Written `mode/ahead/l2_ahead`
/// (`WHISPER_TRT_FUSED_MODE`, the benchmark's `WHISPER_TRT_FUSED_MODES`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FusedMode {
    pub mode: i32,
    pub ahead: i32,
    pub l2_ahead: i32,
}

impl FusedMode {
    /// `mode/ahead/l2_ahead`, the last two optional (defaults of [`FusedStep`]).
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.trim().split('/').map(|v| v.trim().parse::<i32>());
        let mode = it.next()?.ok()?;
        let ahead = it.next().map_or(Some(DEFAULT_AHEAD), |v| v.ok())?;
        let l2_ahead = it.next().map_or(Some(DEFAULT_L2_AHEAD), |v| v.ok())?;
        ((0..=2).contains(&mode) && (1..=12).contains(&ahead) && l2_ahead >= 0).then_some(FusedMode { mode, ahead, l2_ahead })
    }
}

/// The default streaming: mode 0, 4 pieces (16 KB) in flight per block (on an H100, large-v2
/// batch 1: 2.53 ms, against 2.56 with 2, 3 or 6 pieces, 2.61 with 8 and 2.72 with 12).
const DEFAULT_MODE: i32 = 0;
const DEFAULT_AHEAD: i32 = 4;
const DEFAULT_L2_AHEAD: i32 = 0;

/// The decoder's device buffers a step reads and writes (see `DecoderState`).
pub struct StepBuffers {
    /// f32 `[rows][n]` residual stream.
    pub x: u64,
    /// fp16 `[rows][n]` query scratch.
    pub q: u64,
    /// fp16 `[rows][n]` attention output scratch.
    pub att: u64,
    /// fp16 `[rows][4n]` MLP hidden scratch.
    pub u: u64,
    pub k_cache: u64,
    pub v_cache: u64,
    /// Elements of one layer of the KV cache (slots x ctx x n).
    pub cache_layer: usize,
    pub tokens: u64,
    pub len: u64,
    pub slots: u64,
    pub cross_table: u64,
}

pub struct FusedStep {
    func: CudaFunction,
    /// `LayerW` per layer.
    table: DeviceBuffer,
    /// The grid barrier's counter, the per-head counters of attention inputs computed and the
    /// attention split counters, u32 `[1 + 2 heads + rows * heads]` (zeroed before every launch).
    sync: DeviceBuffer,
    /// Attention partials, f32 `[FUSED_MAX_ROWS][n_head][SPLITS][PART]`.
    part: DeviceBuffer,
    /// Phase timestamps of the last step (`WHISPER_TRT_FUSED_PROFILE=1`), u64
    /// `[L * 8][4][grid]` and `[grid][4]` (see `StepParams::prof` in decoder_step.cu).
    prof: Option<DeviceBuffer>,
    grid: u32,
    /// Dynamic shared memory of every launch (the most a block may have).
    smem: usize,
    /// The largest weight slice one block streams for one dense layer (bytes, rows padded).
    max_chunk: usize,
    tok_emb: u64,
    pos_emb: u64,
    n: usize,
    n_head: usize,
    n_layer: usize,
    ctx: usize,
    n_audio_ctx: usize,
    kv_ld: usize,
}

fn attr(gpu: &Gpu, a: CUdevice_attribute) -> Result<usize> {
    let v = gpu.ctx.attribute(a).map_err(|e| anyhow!("CUDA device attribute {a:?}: {e:?}"))?;
    usize::try_from(v).map_err(|_| anyhow!("CUDA device attribute {a:?} is {v}"))
}

impl FusedStep {
    /// Prepares the fused step for `model`, or says why this model or GPU cannot take it
    /// (then the step runs launch by launch as before).
    pub fn new(model: &CudaModel) -> Result<Self> {
        let c = &model.config;
        let gpu = &model.gpu;
        let n = c.n_text_state;
        if model.int8_kv() {
            bail!("the fused decoder step takes an fp16 KV cache only, not --int8-kv");
        }
        if model.dec.tok_scale != 0 {
            bail!("the fused decoder step takes fp16 weights only, not weight-only int8");
        }
        if !n.is_multiple_of(64) || n > MAX_STATE || c.n_text_head * 64 != n {
            bail!("the fused decoder step needs n_state a multiple of 64 up to {MAX_STATE} in 64-wide heads, not {n}");
        }
        if c.n_audio_ctx > KEYS * SPLITS || c.n_text_ctx > KEYS * SPLITS {
            bail!("the fused decoder step attends to at most {} keys", KEYS * SPLITS);
        }
        if c.n_text_layer > MAX_LAYERS {
            bail!("the fused decoder step takes at most {MAX_LAYERS} layers, not {}", c.n_text_layer);
        }
        let func = model.kernels.decoder_step.clone();
        let grid = attr(gpu, CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?.max(1);
        let optin = attr(gpu, CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?;
        let fattr = |a| func.get_attribute(a).map_err(|e| anyhow!("decoder_step attribute {a:?}: {e:?}"));
        let static_smem = fattr(CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)? as usize;
        let smem = optin.saturating_sub(static_smem) / 16 * 16;
        func.set_attribute(CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32)
            .map_err(|e| anyhow!("decoder_step: cannot allow {smem} bytes of shared memory: {e:?}"))?;
        let per_sm = func
            .occupancy_max_active_blocks_per_multiprocessor(THREADS, smem, None)
            .map_err(|e| anyhow!("decoder_step occupancy: {e:?}"))?;
        if per_sm < 1 {
            bail!("decoder_step does not fit a multiprocessor ({THREADS} threads, {smem} bytes of shared memory)");
        }
        if (4 * n).div_ceil(grid) > MAX_BIAS || n.div_ceil(grid) > MAX_OWN {
            bail!("the fused decoder step needs more multiprocessors for n_state {n} than {grid}");
        }
        let max_chunk = [(3 * n, n), (n, n), (4 * n, n), (n, 4 * n)]
            .iter()
            .map(|&(rows, k)| rows.div_ceil(grid) * (2 * k + 16))
            .max()
            .unwrap_or(0);

        let w = &model.dec;
        let layers: Vec<LayerW> = w
            .blocks
            .iter()
            .map(|b| {
                let s = &b.base;
                LayerW([
                    s.attn_ln.g,
                    s.attn_ln.b,
                    s.qkv.w,
                    s.qkv.b,
                    s.out.w,
                    s.out.b,
                    b.cross_ln.g,
                    b.cross_ln.b,
                    b.cross_q.w,
                    b.cross_q.b,
                    b.cross_out.w,
                    b.cross_out.b,
                    s.mlp_ln.g,
                    s.mlp_ln.b,
                    s.fc1.w,
                    s.fc1.b,
                    s.fc2.w,
                    s.fc2.b,
                ])
            })
            .collect();
        let flat: Vec<u64> = layers.iter().flat_map(|l| l.0).collect();
        let table = gpu.upload(&flat)?;
        let sync = gpu.alloc((1 + (2 + FUSED_MAX_ROWS) * c.n_text_head) * 4)?;
        let part = gpu.alloc(FUSED_MAX_ROWS * c.n_text_head * SPLITS * PART * 4)?;
        let prof = match std::env::var("WHISPER_TRT_FUSED_PROFILE").is_ok_and(|v| v == "1") {
            true => Some(gpu.alloc((c.n_text_layer * 8 * 4 + 4) * grid * 8)?),
            false => None,
        };
        gpu.sync()?;
        Ok(FusedStep {
            func,
            table,
            sync,
            part,
            prof,
            grid: grid as u32,
            smem,
            max_chunk,
            tok_emb: w.tok_emb,
            pos_emb: w.pos,
            n,
            n_head: c.n_text_head,
            n_layer: c.n_text_layer,
            ctx: c.n_text_ctx,
            n_audio_ctx: c.n_audio_ctx,
            kv_ld: c.n_text_layer * 2 * n,
        })
    }

    /// Shared memory the staged input rows and the GEMV's partial tiles (15 warps x `DS_TILES` 3
    /// tiles x 16 rows x rows rounded up to even, f32) take; the rest is the weight ring (on an
    /// H100 at large-v2 and one row, 200 KB: a block's fc1 and fc2 slices fit at once).
    fn ring_bytes(&self, rows: usize) -> usize {
        let red = 15 * 3 * 16 * rows.next_multiple_of(2) * 4;
        self.smem.saturating_sub(rows * (8 * self.n + 16) + red) / 16 * 16
    }

    /// Whether a one-token step of `rows` sequences fits the kernel.
    pub fn fits(&self, rows: usize) -> bool {
        (1..=FUSED_MAX_ROWS).contains(&rows) && self.ring_bytes(rows) >= self.max_chunk
    }

    /// Multiprocessors the kernel runs on (its grid).
    pub fn grid(&self) -> u32 {
        self.grid
    }

    /// Queues the decoder blocks of one one-token step of `rows` sequences (x then holds the
    /// residual stream after the last block); capturable into a CUDA graph.
    /// `mode`: how the weights stream (see [`FusedMode`]); `None` for the default.
    pub fn enqueue(&self, gpu: &Gpu, b: &StepBuffers, rows: usize, mode: Option<FusedMode>) -> Result<()> {
        let mode = mode.unwrap_or(FusedMode { mode: DEFAULT_MODE, ahead: DEFAULT_AHEAD, l2_ahead: DEFAULT_L2_AHEAD });
        if !self.fits(rows) {
            bail!("internal: the fused decoder step does not take {rows} rows");
        }
        let i = |v: usize, what: &str| i32::try_from(v).map_err(|_| anyhow!("internal: {what} = {v} does not fit an int"));
        let mut params = StepParams {
            layers: self.table.ptr(),
            tok_emb: self.tok_emb,
            pos_emb: self.pos_emb,
            tokens: b.tokens,
            len: b.len,
            slots: b.slots,
            cross_table: b.cross_table,
            x: b.x,
            q: b.q,
            att: b.att,
            u: b.u,
            part: self.part.ptr(),
            k_cache: b.k_cache,
            v_cache: b.v_cache,
            sync: self.sync.ptr(),
            prof: self.prof.as_ref().map_or(0, |b| b.ptr()),
            cache_layer: b.cache_layer as i64,
            kv_ld: self.kv_ld as i64,
            rows: i(rows, "rows")?,
            n: i(self.n, "n")?,
            n_head: i(self.n_head, "n_head")?,
            n_layer: i(self.n_layer, "n_layer")?,
            ctx: i(self.ctx, "ctx")?,
            n_audio_ctx: i(self.n_audio_ctx, "n_audio_ctx")?,
            ring_bytes: i(self.ring_bytes(rows), "ring bytes")?,
            mode: mode.mode,
            ahead: mode.ahead,
            l2_ahead: mode.l2_ahead,
        };
        gpu.memset_zero(self.sync.ptr(), (1 + (2 + rows) * self.n_head) * 4)?;
        // Cooperative: the driver refuses the launch rather than let blocks that wait on each
        // other at the grid barrier go unscheduled.
        // SAFETY: zeroed is a valid CUlaunchAttribute (id IGNORE); the fields set are plain data.
        let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_COOPERATIVE;
        attr.value.cooperative = 1;
        let cfg = sys::CUlaunchConfig {
            gridDimX: self.grid,
            gridDimY: 1,
            gridDimZ: 1,
            blockDimX: THREADS,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: self.smem as u32,
            hStream: gpu.stream.cu_stream(),
            attrs: &mut attr,
            numAttrs: 1,
        };
        let mut args = [&mut params as *mut StepParams as *mut c_void];
        gpu.ctx.bind_to_thread().map_err(|e| anyhow!("CUDA context: {e:?}"))?;
        // SAFETY: the function takes one StepParams by value (same layout, repr(C)); every
        // address in it is a live device buffer of the size the kernel assumes; args and cfg
        // outlive the call (the driver copies the parameters when it returns).
        unsafe { sys::cuLaunchKernelEx(&cfg, self.func.cu_function(), args.as_mut_ptr(), std::ptr::null_mut()) }
            .result()
            .map_err(|e| anyhow!("CUDA kernel decoder_step failed to launch: {e:?}"))?;
        Ok(())
    }
}

impl FusedStep {
    /// Where the last step's time went, per phase averaged over layers (profiling on only).
    fn profile(&self, gpu: &Gpu) -> Result<Option<String>> {
        let Some(buf) = &self.prof else { return Ok(None) };
        let (g, phases) = (self.grid as usize, self.n_layer * 8);
        let mut t = vec![0u64; (phases * 4 + 4) * g];
        gpu.copy_from(buf.ptr(), &mut t)?;
        let at = |k: usize, e: usize, b: usize| t[(k * 4 + e) * g + b] as f64 / 1000.0;
        let mean = |f: &dyn Fn(usize) -> f64| (0..g).map(f).sum::<f64>() / g as f64;
        let names = ["LN1+QKV", "self-attn", "att+out", "LN2+crossQ", "cross-attn", "att+crossout", "LN3+fc1", "fc2"];
        let mut out = String::from(
            "phase          ready  compute  tail   span  barrier   [us, mean over layers; ready: inputs and weights (attention: keys loaded, scores), compute: GEMV products or softmax.V, tail: GEMV sums and epilogue/merge to arrival; span: first start to last arrival; barrier: last arrival to first start]\n",
        );
        let (mut total_span, mut total_bar) = (0.0, 0.0);
        for (j, name) in names.iter().enumerate() {
            let mut v = [0f64; 5];
            for l in 0..self.n_layer {
                let k = l * 8 + j;
                // Blocks with no attention item leave events 1 and 2 unwritten (zero): skip them.
                let has = |b: usize| t[(k * 4 + 1) * g + b] != 0 && t[(k * 4 + 2) * g + b] != 0;
                let n_has = (0..g).filter(|&b| has(b)).count().max(1) as f64;
                let part = |e0: usize, e1: usize| (0..g).filter(|&b| has(b)).map(|b| at(k, e1, b) - at(k, e0, b)).sum::<f64>() / n_has;
                v[0] += part(0, 1);
                v[1] += part(1, 2);
                v[2] += part(2, 3);
                let start_min = (0..g).map(|b| at(k, 0, b)).fold(f64::INFINITY, f64::min);
                let end_max = (0..g).map(|b| at(k, 3, b)).fold(0.0, f64::max);
                v[3] += end_max - start_min;
                if k + 1 < phases {
                    v[4] += (0..g).map(|b| at(k + 1, 0, b)).fold(f64::INFINITY, f64::min) - end_max;
                }
            }
            let nl = self.n_layer as f64;
            total_span += v[3];
            total_bar += v[4];
            out += &format!("{name:<14} {:>5.2} {:>8.2} {:>5.2} {:>6.2} {:>8.2}\n", v[0] / nl, v[1] / nl, v[2] / nl, v[3] / nl, v[4] / nl);
        }
        let clocks = phases * 4 * g;
        let ns = mean(&|b| t[clocks + b * 4 + 2] as f64 - t[clocks + b * 4] as f64);
        let cycles = mean(&|b| t[clocks + b * 4 + 3] as f64 - t[clocks + b * 4 + 1] as f64);
        let first = (0..g).map(|b| at(0, 0, b)).fold(f64::INFINITY, f64::min);
        let last = (0..g).map(|b| at(phases - 1, 3, b)).fold(0.0, f64::max);
        out += &format!(
            "kernel body {:.1} us: phase spans {:.1} us, barriers {:.1} us; multiprocessor clock {:.0} MHz\n",
            last - first,
            total_span,
            total_bar,
            1000.0 * cycles / ns.max(1.0)
        );
        // Clear for the next step, so that unwritten events read as zero.
        gpu.memset_zero(buf.ptr(), buf.bytes())?;
        gpu.sync()?;
        Ok(Some(out))
    }
}

impl CudaModel {
    /// The fused step's per-phase timings of the last step, when `WHISPER_TRT_FUSED_PROFILE=1`
    /// (for kernel development; no session may be active).
    pub fn fused_profile(&self) -> Result<Option<String>> {
        let st = self.dec_state.try_borrow().map_err(|_| anyhow!("a decoder session is active"))?;
        match st.fused() {
            Some(f) => f.profile(&self.gpu),
            None => Ok(None),
        }
    }

    /// One-token decoder steps of at most [`FUSED_MAX_ROWS`] sequences through the fused kernel
    /// or launch by launch (the default unless `WHISPER_TRT_FUSED_STEP=1`).
    pub fn set_fused(&self, on: bool) -> Result<()> {
        let mut st = self.dec_state.try_borrow_mut().map_err(|_| anyhow!("a decoder session is active"))?;
        st.set_fused(on);
        Ok(())
    }

    /// Kernel development: how the fused step streams its weights (see [`FusedMode`]); `None`
    /// for the default. `WHISPER_TRT_FUSED_MODE` sets it at load.
    pub fn set_fused_mode(&self, mode: Option<FusedMode>) -> Result<()> {
        let mut st = self.dec_state.try_borrow_mut().map_err(|_| anyhow!("a decoder session is active"))?;
        st.set_fused_mode(mode);
        Ok(())
    }

    /// Ok when one-token steps of `rows` sequences can run the fused kernel on this model and
    /// GPU, else why not (for tests and the benchmark; prepares the kernel's tables once more).
    pub fn fused_step_check(&self, rows: usize) -> Result<()> {
        let f = FusedStep::new(self)?;
        if !f.fits(rows) {
            bail!(
                "{rows} rows: the fused decoder step takes 1 to {FUSED_MAX_ROWS}, with each weight slice ({} bytes) fitting the ring ({} bytes)",
                f.max_chunk,
                f.ring_bytes(rows)
            );
        }
        Ok(())
    }
}
