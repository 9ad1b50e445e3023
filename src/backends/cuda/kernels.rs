//! The kernels of `kernels/*.cu`, loaded from cubins with the driver API (never compiled here),
//! and one typed launcher per kernel. Pointers are raw device addresses (u64), sizes i32/i64 as
//! the kernels declare them.
use super::context::Gpu;
use anyhow::{anyhow, Result};
use cudarc::driver::sys::{self, CUdeviceptr};
use cudarc::driver::{CudaFunction, CudaStream, DriverError, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use std::cell::Cell;
use std::ffi::c_void;
use std::sync::Arc;

/// LayerNorm epsilon of openai-whisper (torch's default).
pub const LN_EPS: f32 = 1e-5;
/// Whisper's head size; the attention kernels are written for it.
pub const D_HEAD: usize = 64;
/// Keys per block of the split (flash-decoding) attention kernels (`SPLIT` in decoder_attention.cu).
pub const SPLIT_KEYS: usize = 128;
/// Keys per block of the int8 KV cache's split kernels (`SPLIT_I8`).
pub const SPLIT_KEYS_I8: usize = 128;
/// f32 values per partial result of a split: max, sum and D_HEAD outputs.
pub const SPLIT_PART: usize = D_HEAD + 2;

/// Every kernel: (file stem, kernel name).
pub const FUNCTIONS: [(&str, &str); 28] = [
    ("layernorm", "layernorm_f32_f16"),
    ("conv", "im2col_conv1"),
    ("conv", "im2col_conv2_gelu"),
    ("conv", "gelu_pos"),
    ("activation", "gelu_f16"),
    ("flash_attention", "flash_attention"),
    ("decoder_attention", "decoder_self_attention"),
    ("decoder_attention", "cross_attention"),
    ("decoder_attention", "decoder_self_attention_split"),
    ("decoder_attention", "cross_attention_split"),
    ("decoder_attention", "attention_combine"),
    ("kv_cache", "kv_append"),
    ("kv_cache", "kv_copy"),
    ("embedding", "embed_tokens"),
    ("logits", "masked_argmax"),
    ("logits", "topk_logprobs"),
    ("gemv", "gemv_f16"),
    ("gemv", "gemv1_f16"),
    ("gemv", "gemv_mma_i8"),
    ("gemv", "gemv1_i8"),
    ("gemm_w8", "gemm_w8"),
    ("gemm_w8", "gemm_w8_m32"),
    ("decoder_step", "decoder_step"),
    ("decoder_attention", "decoder_self_attention_split_i8"),
    ("decoder_attention", "cross_attention_split_i8"),
    ("kv_cache", "kv_append_i8"),
    ("kv_quant", "quantize_cross_kv"),
    ("kv_quant", "kv_absmax"),
];

/// Largest k of [`Kernels::topk_logprobs`] (`TOPK_MAX` in logits.cu).
pub const TOPK_MAX: usize = 16;

/// Rows the GEMV kernel takes at most (`GEMV_MAX_M` in gemv.cu).
pub const GEMV_MAX_M: usize = 8;
/// Warps per block of the GEMV kernel (`GEMV_WARPS`), one output feature each.
const GEMV_WARPS: usize = 4;
/// Input rows up to this many bytes go to shared memory once per GEMV block (fewer dependent
/// loads in the FMA loop); larger ones are read from L1/L2. `WHISPER_TRT_GEMV_SMEM` (KiB)
/// overrides it, for measurements.
const GEMV_XS: usize = 16 << 10;
/// Warps per block of the one-row streaming GEMV (`G1_WARPS` in gemv.cu).
const G1_WARPS: usize = 8;
/// The widest input the one-row streaming GEMV takes (`G1_MAX_K`).
pub const G1_MAX_K: usize = 5120;
/// Threads of a gemv_mma_i8 block (`GMI_WARPS` x 32).
const GMI_THREADS: usize = 8 * 32;
/// Bytes of the shared-memory ring per warp of gemv1_f16 (`G1A_DEPTH` x 512).
const G1A_RING: usize = 24 * 512;

/// Which kernel [`Kernels::gemv_kv`] runs where more than one can (kernels/gemv.cu).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemvKind {
    /// gemv_f16: one warp per output feature, 4 blocks per multiprocessor (any GPU, 1-8 rows).
    Warp,
    /// gemv1_f16: one row, two blocks per multiprocessor streaming their weights through a
    /// shared-memory ring (cp.async) that fills before the PDL wait (sm_90; the measurements are
    /// in kernels/gemv.cu).
    Stream,
}

/// The GEMV kernel of one-row steps on sm_90 unless `WHISPER_TRT_GEMV_KIND=warp` (for
/// comparisons): H200, large-v2 batch 1 step, 1.721 / 1.727 ms against 2.051 / 2.053 for
/// gemv_f16 in the same run (`whisper-trt bench --engine ... --batch 1`, commit 7fabf46). Both
/// give the same bits.
pub const DEFAULT_GEMV_KIND: GemvKind = GemvKind::Stream;

impl GemvKind {
    /// `warp` or `stream` (`WHISPER_TRT_GEMV_KIND`).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "warp" => Some(GemvKind::Warp),
            "stream" => Some(GemvKind::Stream),
            _ => None,
        }
    }
}

/// Where the GEMV kernel also writes the keys and values of a QKV projection (kv_append's job):
/// this layer's caches `[slot][ctx][n]`, the slot table, the device i32 `len` and tokens per
/// sequence `t` (see gemv.cu).
#[derive(Clone, Copy, Debug)]
pub struct KvAppend {
    pub k_cache: CUdeviceptr,
    pub v_cache: CUdeviceptr,
    pub slots: CUdeviceptr,
    pub len: CUdeviceptr,
    pub t: usize,
    pub ctx: usize,
}

/// Where each query row's cross-attention keys and values are (see `cross_kv` in
/// decoder_attention.cu): row r belongs to sequence r / `tokens`, whose utterance's cross K/V
/// starts at the address `table[r / tokens]` (a device array of u64); this layer's keys sit at
/// column `offset`, its values at `offset + n`.
#[derive(Clone, Copy, Debug)]
pub struct CrossKv {
    pub table: CUdeviceptr,
    pub offset: usize,
    pub tokens: usize,
}

/// What the GEMV kernel writes (see gemv.cu).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemvOut {
    /// fp16 `y = acc + bias`.
    F16,
    /// fp16 `y = gelu(fp16(acc + bias))` (exact erf GELU).
    F16Gelu,
    /// f32 `y = acc + bias`.
    F32,
    /// f32 `y += acc + bias` (the residual stream).
    F32Add,
}

/// Whether the GEMV kernel takes `m` rows of `k` inputs, and whether it can also fuse the
/// LayerNorm of its input (rows of `k` f32 kept in registers: k % 128 == 0, k <= 1280).
pub fn gemv_fits(m: usize, k: usize) -> bool {
    (1..=GEMV_MAX_M).contains(&m) && k.is_multiple_of(8)
}

pub fn gemv_fuses_ln(m: usize, k: usize) -> bool {
    gemv_fits(m, k) && k.is_multiple_of(128) && k <= 1280
}

pub struct Kernels {
    stream: Arc<CudaStream>,
    layernorm: CudaFunction,
    im2col_conv1: CudaFunction,
    im2col_conv2_gelu: CudaFunction,
    gelu_pos: CudaFunction,
    gelu_f16: CudaFunction,
    flash_attention: CudaFunction,
    decoder_self_attention: CudaFunction,
    cross_attention: CudaFunction,
    decoder_self_attention_split: CudaFunction,
    cross_attention_split: CudaFunction,
    attention_combine: CudaFunction,
    kv_append: CudaFunction,
    kv_copy: CudaFunction,
    embed_tokens: CudaFunction,
    masked_argmax: CudaFunction,
    topk_logprobs: CudaFunction,
    gemv_f16: CudaFunction,
    gemv1_f16: CudaFunction,
    gemv_mma_i8: CudaFunction,
    gemv1_i8: CudaFunction,
    gemm_w8: CudaFunction,
    gemm_w8_m32: CudaFunction,
    /// The int8 KV cache (kv.rs).
    decoder_self_attention_split_i8: CudaFunction,
    cross_attention_split_i8: CudaFunction,
    kv_append_i8: CudaFunction,
    quantize_cross_kv: CudaFunction,
    kv_absmax: CudaFunction,
    /// The fused decoder step (launched by step.rs).
    pub(super) decoder_step: CudaFunction,
    /// GEMV blocks resident at once (4 per multiprocessor, which leaves room for the next
    /// kernel's blocks under Programmatic Dependent Launch): the grid never exceeds one wave;
    /// warps stride over the remaining outputs. `WHISPER_TRT_GEMV_WAVE` sets the blocks per
    /// multiprocessor (measurements): H100, large-v2 batch 1, GEMV + PDL, one run: 1: 4.15 ms,
    /// 2: 2.98, 3: 2.52, 4: 2.39-2.41, 6: 2.51, 8: 2.52 ms per step.
    gemv_wave: usize,
    /// Input bytes the GEMV kernel stages in shared memory at most (see [`GEMV_XS`]).
    gemv_xs: usize,
    /// Multiprocessors of the GPU (gemv1_f16's grid is `gemv1_blocks` per multiprocessor).
    sms: usize,
    /// The GEMV kernel [`Kernels::gemv_kv`] prefers (see [`Kernels::set_gemv_kind`]).
    gemv_kind: Cell<GemvKind>,
    /// Blocks per multiprocessor of the one-row streaming GEMV (`WHISPER_TRT_GEMV1_BLOCKS`,
    /// default 2: twice the copies in flight of one block, which measured faster than leaving
    /// room for the next kernel; see gemv1_f16).
    gemv1_blocks: usize,
    /// Warps per block of the one-row streaming GEMV (`WHISPER_TRT_GEMV1_WARPS`, 1 to
    /// [`G1_WARPS`], default [`G1_WARPS`]; for measurements).
    gemv1_warps: usize,
    /// Whether the GPU has Programmatic Dependent Launch (compute capability 9.0 or newer).
    pdl_ok: bool,
    /// Whether the launchers marked "PDL" below launch with the programmatic attribute now
    /// (set through [`Kernels::pdl_scope`], only where `pdl_ok`).
    pdl: Cell<bool>,
}

/// Launches `func` on `stream` with Programmatic Dependent Launch: the attribute
/// `CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION` = 1 lets its blocks be scheduled as
/// soon as every block of the previous kernel of the stream executed
/// `griddepcontrol.launch_dependents` (or exited), instead of after that kernel completed. The
/// kernel must execute `griddepcontrol.wait` (`pdl_wait()` in kernels/*.cu) in every thread
/// before it touches anything an earlier kernel writes, and must not write anything an earlier
/// kernel may still read before it. Inside a stream capture this becomes a programmatic edge of
/// the CUDA graph (CUDA 12.3 or newer). Compute capability 9.0 or newer only (the caller checks).
///
/// # Safety
/// `args` holds one pointer per kernel parameter, in order, each at a live value of exactly the
/// parameter's type (as [`PushKernelArg::arg`] takes them).
unsafe fn launch_pdl(stream: &CudaStream, func: &CudaFunction, cfg: LaunchConfig, args: &mut [*mut c_void]) -> Result<(), DriverError> {
    stream.context().bind_to_thread()?;
    // SAFETY: plain C data; all zero is a valid attribute (CU_LAUNCH_ATTRIBUTE_IGNORE) and value.
    let mut attr: sys::CUlaunchAttribute = std::mem::zeroed();
    attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attr.value.programmaticStreamSerializationAllowed = 1;
    let config = sys::CUlaunchConfig {
        gridDimX: cfg.grid_dim.0,
        gridDimY: cfg.grid_dim.1,
        gridDimZ: cfg.grid_dim.2,
        blockDimX: cfg.block_dim.0,
        blockDimY: cfg.block_dim.1,
        blockDimZ: cfg.block_dim.2,
        sharedMemBytes: cfg.shared_mem_bytes,
        hStream: stream.cu_stream(),
        attrs: &mut attr,
        numAttrs: 1,
    };
    sys::cuLaunchKernelEx(&config, func.cu_function(), args.as_mut_ptr(), std::ptr::null_mut()).result()
}

/// Launches kernel field `$f` (named `$name` in errors) with `$cfg` and the argument references
/// `[$a, ...]`: with Programmatic Dependent Launch while a [`PdlScope`] turned it on, else
/// exactly as the other launchers do (cudarc's launch builder).
macro_rules! launch {
    ($self:ident, $f:ident, $name:literal, $cfg:expr, [$($a:expr),* $(,)?]) => {{
        let cfg: LaunchConfig = $cfg;
        let r = if $self.pdl.get() {
            let mut args = [$($a as *const _ as *mut c_void),*];
            // SAFETY: the same references, in the same order, as the builder below takes; they
            // live until the launch returns (the driver copies the values).
            unsafe { launch_pdl(&$self.stream, &$self.$f, cfg, &mut args) }
        } else {
            unsafe { $self.stream.launch_builder(&$self.$f)$(.arg($a))*.launch(cfg) }.map(|_| ())
        };
        r.map_err(launched($name))
    }};
}

/// While alive, the launchers marked "PDL" use Programmatic Dependent Launch (see
/// [`Kernels::pdl_scope`]); dropping it restores what was set before.
pub struct PdlScope<'a> {
    kernels: &'a Kernels,
    before: bool,
}

impl Drop for PdlScope<'_> {
    fn drop(&mut self) {
        self.kernels.pdl.set(self.before);
    }
}

// The weight-only int8 and int8 KV launchers (after `launch!`, which they use).
mod kv;
mod quant;

fn grid_stride(total: usize, threads: u32) -> LaunchConfig {
    let blocks = total.div_ceil(threads as usize).clamp(1, 1 << 20) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

fn launched(name: &'static str) -> impl Fn(cudarc::driver::DriverError) -> anyhow::Error {
    move |e| anyhow!("CUDA kernel {name} failed to launch: {e:?}")
}

fn i32_of(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| anyhow!("internal: {what} = {v} does not fit the kernel's int"))
}

impl Kernels {
    /// Loads `modules` ((file stem, cubin) pairs) into the GPU's context and looks up every kernel.
    pub fn load(gpu: &Gpu, modules: &[(String, Vec<u8>)]) -> Result<Self> {
        let mut loaded = std::collections::HashMap::new();
        for (stem, cubin) in modules {
            let module = gpu
                .ctx
                .load_module(Ptx::from_binary(cubin.clone()))
                .map_err(|e| anyhow!("cannot load the cubin of kernels/{stem}.cu: {e:?} (was the engine built for this GPU?)"))?;
            loaded.insert(stem.as_str(), module);
        }
        let f = |stem: &str, name: &str| -> Result<CudaFunction> {
            let m = loaded.get(stem).ok_or_else(|| anyhow!("the engine has no cubin for kernels/{stem}.cu; rebuild it"))?;
            m.load_function(name).map_err(|e| anyhow!("kernels/{stem}.cu has no kernel {name}: {e:?}; rebuild the engine"))
        };
        let sms = gpu
            .ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_or(108, |v| v.max(1) as usize);
        let k = Kernels {
            stream: gpu.stream.clone(),
            layernorm: f("layernorm", "layernorm_f32_f16")?,
            im2col_conv1: f("conv", "im2col_conv1")?,
            im2col_conv2_gelu: f("conv", "im2col_conv2_gelu")?,
            gelu_pos: f("conv", "gelu_pos")?,
            gelu_f16: f("activation", "gelu_f16")?,
            flash_attention: f("flash_attention", "flash_attention")?,
            decoder_self_attention: f("decoder_attention", "decoder_self_attention")?,
            cross_attention: f("decoder_attention", "cross_attention")?,
            decoder_self_attention_split: f("decoder_attention", "decoder_self_attention_split")?,
            cross_attention_split: f("decoder_attention", "cross_attention_split")?,
            attention_combine: f("decoder_attention", "attention_combine")?,
            kv_append: f("kv_cache", "kv_append")?,
            kv_copy: f("kv_cache", "kv_copy")?,
            embed_tokens: f("embedding", "embed_tokens")?,
            masked_argmax: f("logits", "masked_argmax")?,
            topk_logprobs: f("logits", "topk_logprobs")?,
            gemv_f16: f("gemv", "gemv_f16")?,
            decoder_step: f("decoder_step", "decoder_step")?,
            gemv1_f16: f("gemv", "gemv1_f16")?,
            gemv_mma_i8: f("gemv", "gemv_mma_i8")?,
            gemv1_i8: f("gemv", "gemv1_i8")?,
            gemm_w8: f("gemm_w8", "gemm_w8")?,
            gemm_w8_m32: f("gemm_w8", "gemm_w8_m32")?,
            decoder_self_attention_split_i8: f("decoder_attention", "decoder_self_attention_split_i8")?,
            cross_attention_split_i8: f("decoder_attention", "cross_attention_split_i8")?,
            kv_append_i8: f("kv_cache", "kv_append_i8")?,
            quantize_cross_kv: f("kv_quant", "quantize_cross_kv")?,
            kv_absmax: f("kv_quant", "kv_absmax")?,
            gemv_wave: std::env::var("WHISPER_TRT_GEMV_WAVE").ok().and_then(|v| v.parse::<usize>().ok()).map_or(4, |w| w.max(1)) * sms,
            gemv_xs: std::env::var("WHISPER_TRT_GEMV_SMEM").ok().and_then(|v| v.parse::<usize>().ok()).map_or(GEMV_XS, |kib| kib << 10),
            sms,
            gemv_kind: Cell::new(if gpu.compute_capability.0 >= 9 {
                std::env::var("WHISPER_TRT_GEMV_KIND").ok().and_then(|v| GemvKind::parse(&v)).unwrap_or(DEFAULT_GEMV_KIND)
            } else {
                GemvKind::Warp
            }),
            gemv1_blocks: std::env::var("WHISPER_TRT_GEMV1_BLOCKS").ok().and_then(|v| v.parse::<usize>().ok()).map_or(2, |b| b.clamp(1, 4)),
            gemv1_warps: std::env::var("WHISPER_TRT_GEMV1_WARPS").ok().and_then(|v| v.parse::<usize>().ok()).map_or(G1_WARPS, |w| w.clamp(1, G1_WARPS)),
            pdl_ok: gpu.compute_capability.0 >= 9,
            pdl: Cell::new(false),
        };
        // The kernels of a decode step all prefer the largest shared-memory carveout, so that
        // blocks of consecutive kernels (Programmatic Dependent Launch) never wait for a change of
        // the L1/shared split. Measured effect small: H100, large-v2 batch 1, with an earlier
        // shared-memory GEMV, 2.77 vs 2.80 ms (GEMV + PDL) and 3.11 vs 3.12 (GEMV).
        // `WHISPER_TRT_CARVEOUT=0` leaves the driver's choice.
        if std::env::var("WHISPER_TRT_CARVEOUT").map_or(true, |v| v != "0") {
            for func in [
                &k.gemv_f16,
                &k.gemv1_f16,
                &k.gemv_mma_i8,
                &k.gemv1_i8,
                &k.decoder_self_attention,
                &k.decoder_self_attention_split,
                &k.cross_attention,
                &k.cross_attention_split,
                &k.attention_combine,
                &k.kv_append,
                &k.embed_tokens,
            ] {
                func.set_attribute(sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT, 100)
                    .map_err(|e| anyhow!("cannot set a kernel's shared memory carveout: {e:?}"))?;
            }
        }
        if k.pdl_ok {
            for func in [&k.gemv1_f16, &k.gemv1_i8] {
                func.set_attribute(sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, (G1_WARPS * G1A_RING) as i32)
                    .map_err(|e| anyhow!("cannot give the one-row GEMV its shared-memory ring: {e:?}"))?;
            }
        }
        quant::prepare(&k)?;
        Ok(k)
    }

    /// Selects the GEMV kernel of later [`Kernels::gemv_kv`] calls where its shape allows
    /// (Stream needs sm_90, else Warp stays); answers whether `kind` is in use now.
    /// `WHISPER_TRT_GEMV_KIND=warp|stream` sets the start value ([`DEFAULT_GEMV_KIND`]).
    pub fn set_gemv_kind(&self, kind: GemvKind) -> bool {
        self.gemv_kind.set(if self.pdl_ok { kind } else { GemvKind::Warp });
        self.gemv_kind.get() == kind
    }

    /// Whether this GPU has Programmatic Dependent Launch (compute capability 9.0 or newer).
    pub fn pdl_supported(&self) -> bool {
        self.pdl_ok
    }

    /// `on`: until the returned scope drops, the launchers marked "PDL" (layernorm, kv_append,
    /// the decoder attention kernels, attention_combine, gemv: the kernels whose sources wait
    /// with `pdl_wait()` before reading) launch with Programmatic Dependent Launch, on GPUs that
    /// have it (elsewhere nothing changes). Only for kernels queued right after other kernels of
    /// the stream: a kernel that reads what a host copy just wrote is launched outside a scope.
    pub fn pdl_scope(&self, on: bool) -> PdlScope<'_> {
        let before = self.pdl.replace(on && self.pdl_ok);
        PdlScope { kernels: self, before }
    }

    /// PDL. `y[r] = LN(x[r])` for `rows` f32 rows of `n` (gamma, beta f32) into fp16 rows of stride `ldy`.
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm(&self, x: CUdeviceptr, gamma: CUdeviceptr, beta: CUdeviceptr, y: CUdeviceptr, rows: usize, n: usize, ldy: usize) -> Result<()> {
        let (r, n, ldy, eps) = (i32_of(rows, "rows")?, i32_of(n, "n")?, i32_of(ldy, "ldy")?, LN_EPS);
        // One warp per row, 4 rows per block.
        let cfg = LaunchConfig { grid_dim: ((rows.div_ceil(4)).max(1) as u32, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
        launch!(self, layernorm, "layernorm_f32_f16", cfg, [&x, &gamma, &beta, &y, &r, &n, &ldy, &eps])
    }

    /// mel fp16 `[batch][n_mels][n_frames]` -> conv1's im2col fp16 `[batch][n_frames][3 n_mels]`.
    pub fn im2col_conv1(&self, mel: CUdeviceptr, col: CUdeviceptr, batch: usize, n_mels: usize, n_frames: usize) -> Result<()> {
        let (b, m, f) = (i32_of(batch, "batch")?, i32_of(n_mels, "n_mels")?, i32_of(n_frames, "n_frames")?);
        let cfg = grid_stride(batch * n_frames * 3 * n_mels, 256);
        unsafe { self.stream.launch_builder(&self.im2col_conv1).arg(&mel).arg(&col).arg(&b).arg(&m).arg(&f).launch(cfg) }
            .map_err(launched("im2col_conv1"))?;
        Ok(())
    }

    /// conv1 output fp16 `[batch][n_frames][n]` -> GELU'd im2col of conv2 `[batch][n_frames/2][3n]`.
    pub fn im2col_conv2_gelu(&self, h1: CUdeviceptr, col: CUdeviceptr, batch: usize, n_frames: usize, n: usize) -> Result<()> {
        let (b, f, nn) = (i32_of(batch, "batch")?, i32_of(n_frames, "n_frames")?, i32_of(n, "n")?);
        let cfg = grid_stride(batch * (n_frames / 2) * 3 * n, 256);
        unsafe { self.stream.launch_builder(&self.im2col_conv2_gelu).arg(&h1).arg(&col).arg(&b).arg(&f).arg(&nn).launch(cfg) }
            .map_err(launched("im2col_conv2_gelu"))?;
        Ok(())
    }

    /// In place on f32 `[batch][ctx][n]`: `x = gelu(x) + pos` (pos fp16 `[ctx][n]`).
    pub fn gelu_pos(&self, x: CUdeviceptr, pos: CUdeviceptr, batch: usize, ctx: usize, n: usize) -> Result<()> {
        let (b, c, nn) = (i32_of(batch, "batch")?, i32_of(ctx, "ctx")?, i32_of(n, "n")?);
        let cfg = grid_stride(batch * ctx * n, 256);
        unsafe { self.stream.launch_builder(&self.gelu_pos).arg(&x).arg(&pos).arg(&b).arg(&c).arg(&nn).launch(cfg) }
            .map_err(launched("gelu_pos"))?;
        Ok(())
    }

    /// In place on `n` fp16 values: exact GELU.
    pub fn gelu_f16(&self, x: CUdeviceptr, n: usize) -> Result<()> {
        let nn = n as i64;
        // 8 values per thread and step.
        let cfg = grid_stride(n.div_ceil(8), 256);
        unsafe { self.stream.launch_builder(&self.gelu_f16).arg(&x).arg(&nn).launch(cfg) }.map_err(launched("gelu_f16"))?;
        Ok(())
    }

    /// Encoder self-attention: qkv fp16 `[batch][t][3n]` -> out fp16 `[batch][t][n]`.
    pub fn flash_attention(&self, qkv: CUdeviceptr, out: CUdeviceptr, batch: usize, t: usize, n: usize, n_head: usize) -> Result<()> {
        // Query rows and threads per block: BQ and THREADS of flash_attention.cu.
        const FLASH_BQ: usize = 128;
        const FLASH_THREADS: u32 = 128;
        let (tt, nn) = (i32_of(t, "t")?, i32_of(n, "n")?);
        let cfg = LaunchConfig {
            grid_dim: (t.div_ceil(FLASH_BQ) as u32, n_head as u32, batch as u32),
            block_dim: (FLASH_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        unsafe { self.stream.launch_builder(&self.flash_attention).arg(&qkv).arg(&out).arg(&tt).arg(&nn).launch(cfg) }
            .map_err(launched("flash_attention"))?;
        Ok(())
    }

    /// PDL. Causal self-attention of `rows` = n_seq * t new tokens over this layer's cache; `len` (the
    /// positions filled before these tokens) is an i32 in device memory.
    #[allow(clippy::too_many_arguments)]
    pub fn decoder_self_attention(
        &self,
        qkv: CUdeviceptr,
        k_cache: CUdeviceptr,
        v_cache: CUdeviceptr,
        slots: CUdeviceptr,
        out: CUdeviceptr,
        rows: usize,
        n: usize,
        n_head: usize,
        t: usize,
        len: CUdeviceptr,
        ctx: usize,
    ) -> Result<()> {
        let (nn, tt, ll, cc) = (i32_of(n, "n")?, i32_of(t, "t")?, len, i32_of(ctx, "ctx")?);
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, n_head as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: (ctx * 4) as u32,
        };
        launch!(self, decoder_self_attention, "decoder_self_attention", cfg, [&qkv, &k_cache, &v_cache, &slots, &out, &nn, &tt, &ll, &cc])
    }

    /// PDL. Cross-attention of `rows` queries (row stride `ldq`) over `n_keys` rows of this layer's
    /// cross keys (columns 0..n) and values (n..2n), row stride `ldkv`.
    #[allow(clippy::too_many_arguments)]
    pub fn cross_attention(
        &self,
        q: CUdeviceptr,
        ldq: usize,
        kv: CrossKv,
        ldkv: usize,
        n_keys: usize,
        out: CUdeviceptr,
        rows: usize,
        n: usize,
        n_head: usize,
    ) -> Result<()> {
        let (lq, lkv, nk, nn) = (i32_of(ldq, "ldq")?, ldkv as i64, i32_of(n_keys, "n_keys")?, i32_of(n, "n")?);
        let (table, off, t) = (kv.table, kv.offset as i64, i32_of(kv.tokens, "tokens")?);
        let cfg = LaunchConfig {
            grid_dim: (rows as u32, n_head as u32, 1),
            block_dim: (128, 1, 1),
            shared_mem_bytes: (n_keys * 4) as u32,
        };
        launch!(self, cross_attention, "cross_attention", cfg, [&q, &lq, &table, &off, &t, &lkv, &nk, &out, &nn])
    }

    /// PDL. [`Kernels::decoder_self_attention`] split over keys: partial results of `n_splits` blocks
    /// of [`SPLIT_KEYS`] keys per (row, head) into `part` (f32 `[rows][n_head][n_splits][SPLIT_PART]`);
    /// [`Kernels::attention_combine`] merges them, or with `merge = Some((cnt, out))` the last block
    /// of every (row, head) does (`cnt` u32 `[rows][n_head]`, zero before, zero again after; `out`
    /// as attention_combine's). `n_splits` must cover `len + t` keys.
    #[allow(clippy::too_many_arguments)]
    pub fn decoder_self_attention_split(
        &self,
        qkv: CUdeviceptr,
        k_cache: CUdeviceptr,
        v_cache: CUdeviceptr,
        slots: CUdeviceptr,
        part: CUdeviceptr,
        rows: usize,
        n: usize,
        n_head: usize,
        t: usize,
        len: CUdeviceptr,
        ctx: usize,
        n_splits: usize,
        merge: Option<(CUdeviceptr, CUdeviceptr)>,
    ) -> Result<()> {
        let (nn, tt, cc) = (i32_of(n, "n")?, i32_of(t, "t")?, i32_of(ctx, "ctx")?);
        let (cnt, out) = merge.unwrap_or((0, 0));
        let cfg = LaunchConfig { grid_dim: (rows as u32, n_head as u32, n_splits as u32), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
        launch!(
            self,
            decoder_self_attention_split,
            "decoder_self_attention_split",
            cfg,
            [&qkv, &k_cache, &v_cache, &slots, &part, &cnt, &out, &nn, &tt, &len, &cc]
        )
    }

    /// PDL. [`Kernels::cross_attention`] split over keys (see [`Kernels::decoder_self_attention_split`],
    /// also for `merge`).
    #[allow(clippy::too_many_arguments)]
    pub fn cross_attention_split(
        &self,
        q: CUdeviceptr,
        ldq: usize,
        kv: CrossKv,
        ldkv: usize,
        n_keys: usize,
        part: CUdeviceptr,
        rows: usize,
        n: usize,
        n_head: usize,
        merge: Option<(CUdeviceptr, CUdeviceptr)>,
    ) -> Result<()> {
        let (lq, lkv, nk, nn) = (i32_of(ldq, "ldq")?, ldkv as i64, i32_of(n_keys, "n_keys")?, i32_of(n, "n")?);
        let (table, off, t) = (kv.table, kv.offset as i64, i32_of(kv.tokens, "tokens")?);
        let (cnt, out) = merge.unwrap_or((0, 0));
        let splits = n_keys.div_ceil(SPLIT_KEYS) as u32;
        let cfg = LaunchConfig { grid_dim: (rows as u32, n_head as u32, splits), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
        launch!(self, cross_attention_split, "cross_attention_split", cfg, [&q, &lq, &table, &off, &t, &lkv, &nk, &part, &cnt, &out, &nn])
    }

    /// PDL. Merges `n_splits` partial results per (row, head) into fp16 `out` `[rows][n]`.
    pub fn attention_combine(&self, part: CUdeviceptr, n_splits: usize, out: CUdeviceptr, rows: usize, n: usize, n_head: usize) -> Result<()> {
        let (ns, nn) = (i32_of(n_splits, "n_splits")?, i32_of(n, "n")?);
        let cfg = LaunchConfig { grid_dim: (rows as u32, n_head as u32, 1), block_dim: (D_HEAD as u32, 1, 1), shared_mem_bytes: 0 };
        launch!(self, attention_combine, "attention_combine", cfg, [&part, &ns, &out, &nn])
    }

    /// PDL. Keys and values of `rows` = n_seq * t new tokens into this layer's cache slots, at
    /// positions from `len` (an i32 in device memory).
    #[allow(clippy::too_many_arguments)]
    pub fn kv_append(
        &self,
        qkv: CUdeviceptr,
        k_cache: CUdeviceptr,
        v_cache: CUdeviceptr,
        slots: CUdeviceptr,
        rows: usize,
        n: usize,
        t: usize,
        len: CUdeviceptr,
        ctx: usize,
    ) -> Result<()> {
        let (r, nn, tt, ll, cc) = (i32_of(rows, "rows")?, i32_of(n, "n")?, i32_of(t, "t")?, len, i32_of(ctx, "ctx")?);
        let cfg = grid_stride(rows * n / 8, 256);
        launch!(self, kv_append, "kv_append", cfg, [&qkv, &k_cache, &v_cache, &slots, &r, &nn, &tt, &ll, &cc])
    }

    /// Copies positions 0..len of every layer from slot `pairs[2p]` to slot `pairs[2p+1]`.
    #[allow(clippy::too_many_arguments)]
    pub fn kv_copy(
        &self,
        k_cache: CUdeviceptr,
        v_cache: CUdeviceptr,
        pairs: CUdeviceptr,
        n_pairs: usize,
        n_layer: usize,
        n_slots: usize,
        ctx: usize,
        n: usize,
        len: usize,
    ) -> Result<()> {
        if n_pairs == 0 || len == 0 {
            return Ok(());
        }
        let (np, nl, ns, cc, nn, ll) =
            (i32_of(n_pairs, "pairs")?, i32_of(n_layer, "layers")?, i32_of(n_slots, "slots")?, i32_of(ctx, "ctx")?, i32_of(n, "n")?, i32_of(len, "len")?);
        let cfg = grid_stride(n_layer * n_pairs * len * n / 8, 256);
        unsafe {
            self.stream
                .launch_builder(&self.kv_copy)
                .arg(&k_cache)
                .arg(&v_cache)
                .arg(&pairs)
                .arg(&np)
                .arg(&nl)
                .arg(&ns)
                .arg(&cc)
                .arg(&nn)
                .arg(&ll)
                .launch(cfg)
        }
        .map_err(launched("kv_copy"))?;
        Ok(())
    }

    /// x f32 `[rows][n]` = token embedding + position embedding (row = s * t + i at len + i;
    /// `len` an i32 in device memory). `tok_scale`: 0 for an fp16 embedding, else the row scales
    /// of an int8 one.
    #[allow(clippy::too_many_arguments)]
    pub fn embed_tokens(&self, tokens: CUdeviceptr, tok_emb: CUdeviceptr, tok_scale: CUdeviceptr, pos_emb: CUdeviceptr, x: CUdeviceptr, rows: usize, n: usize, t: usize, len: CUdeviceptr) -> Result<()> {
        let (nn, tt, ll) = (i32_of(n, "n")?, i32_of(t, "t")?, len);
        let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
        unsafe {
            self.stream
                .launch_builder(&self.embed_tokens)
                .arg(&tokens)
                .arg(&tok_emb)
                .arg(&tok_scale)
                .arg(&pos_emb)
                .arg(&x)
                .arg(&nn)
                .arg(&tt)
                .arg(&ll)
                .launch(cfg)
        }
        .map_err(launched("embed_tokens"))?;
        Ok(())
    }

    /// Per row of f32 `[rows][v]` logits: index and value of the largest logit whose `mask` byte
    /// is zero (`mask` = 0 for no mask).
    pub fn masked_argmax(&self, logits: CUdeviceptr, mask: CUdeviceptr, rows: usize, v: usize, ids: CUdeviceptr, vals: CUdeviceptr) -> Result<()> {
        let vv = i32_of(v, "v")?;
        let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };
        unsafe { self.stream.launch_builder(&self.masked_argmax).arg(&logits).arg(&mask).arg(&vv).arg(&ids).arg(&vals).launch(cfg) }
            .map_err(launched("masked_argmax"))?;
        Ok(())
    }

    /// Per row of f32 `[rows][v]` logits, with logit j masked to -inf where `mask[j] & mask_bits`
    /// (`mask` u8 `[v]`): the argmax and its log-probability (`k` = 1) or the `k` (at most
    /// [`TOPK_MAX`]) largest log-probabilities, best first, into `out` u32 `[rows][k][2]` (token
    /// id, f32 bits). See `topk_logprobs` in logits.cu.
    #[allow(clippy::too_many_arguments)]
    pub fn topk_logprobs(&self, logits: CUdeviceptr, mask: CUdeviceptr, mask_bits: u8, rows: usize, v: usize, k: usize, out: CUdeviceptr) -> Result<()> {
        if k == 0 || k > TOPK_MAX {
            return Err(anyhow!("internal: top-{k} is out of the kernel's range 1..={TOPK_MAX}"));
        }
        if rows == 0 {
            return Ok(());
        }
        let (vv, kk, bits) = (i32_of(v, "v")?, k as i32, mask_bits as i32);
        let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (1024, 1, 1), shared_mem_bytes: 0 };
        unsafe { self.stream.launch_builder(&self.topk_logprobs).arg(&logits).arg(&mask).arg(&bits).arg(&vv).arg(&kk).arg(&out).launch(cfg) }
            .map_err(launched("topk_logprobs"))?;
        Ok(())
    }

    /// PDL. `y[r] (+)= x'[r] · wᵀ + bias` for `m` rows (at most [`GEMV_MAX_M`]): w fp16 `[n][k]`,
    /// bias in the output's type (or none). `ln = Some((gamma, beta))`: x is the f32 residual
    /// stream `[m][k]` and x' its LayerNorm (see [`gemv_fuses_ln`]); else x' = x, fp16 rows of
    /// stride `ldx`. y rows of stride `ldy`.
    #[allow(clippy::too_many_arguments)]
    pub fn gemv(
        &self,
        w: CUdeviceptr,
        x: CUdeviceptr,
        ln: Option<(CUdeviceptr, CUdeviceptr)>,
        bias: Option<CUdeviceptr>,
        y: CUdeviceptr,
        m: usize,
        n: usize,
        k: usize,
        ldx: usize,
        ldy: usize,
        out: GemvOut,
    ) -> Result<()> {
        self.gemv_kv(w, x, ln, bias, y, m, n, k, ldx, ldy, out, None)
    }

    /// PDL. [`Kernels::gemv`] that also appends the keys and values of a QKV projection (`n` =
    /// 3 n_state, fp16 out) to the self-attention cache when `kv` is given.
    #[allow(clippy::too_many_arguments)]
    pub fn gemv_kv(
        &self,
        w: CUdeviceptr,
        x: CUdeviceptr,
        ln: Option<(CUdeviceptr, CUdeviceptr)>,
        bias: Option<CUdeviceptr>,
        y: CUdeviceptr,
        m: usize,
        n: usize,
        k: usize,
        ldx: usize,
        ldy: usize,
        out: GemvOut,
        kv: Option<KvAppend>,
    ) -> Result<()> {
        self.gemv_q(w, 0, x, ln, bias, y, m, n, k, ldx, ldy, out, kv)
    }

    /// PDL. [`Kernels::gemv_kv`] for fp16 weights (`scales` 0) or int8 weights `[n][k]` with
    /// one fp16 scale per row at `scales` (gemv_i8 / gemv1_i8).
    #[allow(clippy::too_many_arguments)]
    pub fn gemv_q(
        &self,
        w: CUdeviceptr,
        scales: CUdeviceptr,
        x: CUdeviceptr,
        ln: Option<(CUdeviceptr, CUdeviceptr)>,
        bias: Option<CUdeviceptr>,
        y: CUdeviceptr,
        m: usize,
        n: usize,
        k: usize,
        ldx: usize,
        ldy: usize,
        out: GemvOut,
        kv: Option<KvAppend>,
    ) -> Result<()> {
        let fits = if ln.is_some() { gemv_fuses_ln(m, k) } else { gemv_fits(m, k) && ldx.is_multiple_of(8) };
        if !fits {
            return Err(anyhow!("internal: GEMV of {m} rows x {k} inputs (ldx {ldx}, LayerNorm {}) is out of the kernel's range", ln.is_some()));
        }
        if kv.is_some() && (out != GemvOut::F16 || !n.is_multiple_of(3)) {
            return Err(anyhow!("internal: the GEMV KV append needs an fp16 QKV projection, not {n} outputs {out:?}"));
        }
        let (g, b) = ln.unwrap_or((0, 0));
        let bias = bias.unwrap_or(0);
        let mode: i32 = match out {
            GemvOut::F16 => 0,
            GemvOut::F16Gelu => 1,
            GemvOut::F32 => 2,
            GemvOut::F32Add => 3,
        };
        let (mm, nn, kk, lx, ly, eps) = (i32_of(m, "m")?, i32_of(n, "n")?, i32_of(k, "k")?, i32_of(ldx, "ldx")?, i32_of(ldy, "ldy")?, LN_EPS);
        let xs = if ln.is_some() || m * k * 2 <= self.gemv_xs { m * k * 2 } else { 0 };
        let xs_bytes = xs as i32;
        let kv = kv.unwrap_or(KvAppend { k_cache: 0, v_cache: 0, slots: 0, len: 0, t: 1, ctx: 0 });
        let (kc, vc, sl, ln_ptr, tt, cc) = (kv.k_cache, kv.v_cache, kv.slots, kv.len, i32_of(kv.t, "t")?, i32_of(kv.ctx, "ctx")?);
        // The one-row streaming GEMV (see gemv1_f16).
        if self.gemv_kind.get() == GemvKind::Stream && m == 1 && k.is_multiple_of(256) && k <= G1_MAX_K && w.is_multiple_of(16) {
            let cfg = LaunchConfig {
                grid_dim: ((self.sms * self.gemv1_blocks) as u32, 1, 1),
                block_dim: ((self.gemv1_warps * 32) as u32, 1, 1),
                shared_mem_bytes: (self.gemv1_warps * G1A_RING) as u32,
            };
            if scales != 0 {
                return launch!(self, gemv1_i8, "gemv1_i8", cfg, [&w, &scales, &x, &g, &b, &eps, &bias, &y, &nn, &kk, &mode, &kc, &vc, &sl, &ln_ptr, &tt, &cc]);
            }
            return launch!(self, gemv1_f16, "gemv1_f16", cfg, [&w, &x, &g, &b, &eps, &bias, &y, &nn, &kk, &mode, &kc, &vc, &sl, &ln_ptr, &tt, &cc]);
        }
        // One wave at most (with LayerNorm fused, every block normalises the rows again).
        let blocks = n.div_ceil(GEMV_WARPS).min(self.gemv_wave);
        let cfg = LaunchConfig {
            grid_dim: (blocks.clamp(1, 1 << 20) as u32, 1, 1),
            block_dim: ((GEMV_WARPS * 32) as u32, 1, 1),
            shared_mem_bytes: xs as u32,
        };
        if scales != 0 {
            // int8 weights: 16 features per block on the tensor cores (gemv_mma_i8).
            if !k.is_multiple_of(32) || k > G1_MAX_K {
                return Err(anyhow!("internal: the int8 GEMV takes k % 32 == 0 up to {G1_MAX_K}, not {k}"));
            }
            let cfg = LaunchConfig {
                grid_dim: (n.div_ceil(16) as u32, 1, 1),
                block_dim: (GMI_THREADS as u32, 1, 1),
                shared_mem_bytes: (GEMV_MAX_M * k * 2) as u32,
            };
            return launch!(
                self,
                gemv_mma_i8,
                "gemv_mma_i8",
                cfg,
                [&w, &scales, &x, &g, &b, &eps, &bias, &y, &mm, &nn, &kk, &lx, &ly, &mode, &kc, &vc, &sl, &ln_ptr, &tt, &cc]
            );
        }
        launch!(
            self,
            gemv_f16,
            "gemv_f16",
            cfg,
            [&w, &x, &g, &b, &eps, &bias, &y, &mm, &nn, &kk, &lx, &ly, &mode, &xs_bytes, &kc, &vc, &sl, &ln_ptr, &tt, &cc]
        )
    }
}
