//! The CUDA backend: Whisper in fp16 on an NVIDIA GPU (compute capability 8.0+), from an engine
//! file that `whisper-trt build` wrote for that GPU.
//!
//! Numerics: fp16 weights and activations between layers, f32 accumulation everywhere, the
//! residual stream in f32 (the attention-out and MLP-out GEMMs add into it in place), LayerNorm
//! and softmax in f32, exact (erf) GELU: the CPU backend's math at fp16 storage precision.
//!
//! Device memory is allocated once at load, sized by the engine's build options (max batch,
//! beam width): weights, encoder scratch for `max_batch` windows, the decoder's scratch and KV
//! cache for `max_batch * beam_width` sequences. Audio features (the cross-attention K/V of one
//! window) come from a pool that only grows until the pipeline's steady state.
//!
//! - [`context`]: library checks, context, stream, device buffers.
//! - [`kernels`]: the cubins of `kernels/*.cu` and their launchers.
//! - [`gemm`]: cuBLASLt GEMMs, plan cache, tactic selection.
//! - [`layout`]: canonical weights to the engine's tensors.
//! - [`weights`]: the engine's tensors on the GPU.
//! - [`encoder`], [`decoder`]: the model.
pub mod context;
pub mod decoder;
pub mod encoder;
pub mod gemm;
pub mod kernels;
pub mod layout;
pub mod step;
mod select;
pub mod weights;

pub use decoder::CudaSession;

use crate::backends::Backend;
use crate::decoding::DecoderSession;
use crate::engine::{BuildOptions, Engine, EngineTensor, GemmTactic};
use crate::model::{ModelConfig, Weights};
use anyhow::{anyhow, bail, Context, Result};
use context::{DeviceBuffer, Gpu};
use std::cell::RefCell;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// A Whisper model on the GPU.
pub struct CudaModel {
    config: ModelConfig,
    options: BuildOptions,
    kernels: kernels::Kernels,
    gemm: gemm::Gemm,
    enc: weights::EncoderWeights,
    dec: weights::DecoderWeights,
    enc_buf: RefCell<encoder::EncoderBuffers>,
    dec_state: RefCell<decoder::DecoderState>,
    select: select::SelectBuffers,
    pool: Arc<Mutex<Vec<DeviceBuffer>>>,
    /// int8 KV cache (`--int8-kv`): the scales (f32 `[4][n_layer][n_head]` in the weights; 0
    /// for fp16 keys and values) and the fp16 scratch the cross K/V GEMM writes before they are
    /// quantized.
    kv_scales: u64,
    cross_scratch: Option<DeviceBuffer>,
    /// Calibration: the largest |K| and |V| seen per (kind, layer, head), f32 `[4][L][H]`,
    /// while [`CudaModel::start_kv_stats`] is in force.
    kv_stats: RefCell<Option<DeviceBuffer>>,
    weights: weights::DeviceWeights,
    // Last: everything above holds device memory of this context.
    gpu: Gpu,
}

/// Audio features of one window on the GPU: the cross-attention keys and values of every
/// decoder layer, fp16 (int8 with `--int8-kv`) `[n_audio_ctx][n_text_layer * 2 * n_text_state]`.
pub struct CudaFeatures {
    buf: Option<DeviceBuffer>,
    bytes: usize,
    pool: Arc<Mutex<Vec<DeviceBuffer>>>,
}

/// Where [`CudaModel::bench_encoder`] left its output (the encoder's scratch) and for how many
/// windows; valid until the next encoder run overwrites it.
pub struct EncoderOutput {
    h: u64,
    windows: usize,
}

impl CudaFeatures {
    fn ptr(&self) -> u64 {
        self.buf.as_ref().map_or(0, |b| b.ptr())
    }
}

impl Drop for CudaFeatures {
    fn drop(&mut self) {
        if let (Some(buf), Ok(mut pool)) = (self.buf.take(), self.pool.lock()) {
            pool.push(buf);
        }
    }
}

impl CudaModel {
    /// Loads an engine file on GPU 0. Never compiles anything: the engine must have been built
    /// for this GPU's compute capability by this version's kernels.
    pub fn load(engine_path: &Path) -> Result<Self> {
        let gpu = Gpu::new(0)?;
        let engine = Engine::load(engine_path)?;
        let (major, minor) = gpu.compute_capability;
        engine.check_compatible(major, minor)?;
        let h = &engine.header;
        Self::from_parts(gpu, h.config.clone(), h.options.clone(), &engine.modules, &engine.tensors, &h.tactics)
            .with_context(|| format!("{}: cannot load the engine", engine_path.display()))
    }

    /// Test and development path only: builds the model straight from a model directory on GPU 0,
    /// compiling the kernels in this process with NVRTC and picking GEMM algorithms by cuBLASLt's
    /// heuristic (no tactic timing). `transcribe` never takes this path; it loads engines.
    pub fn from_model_dir(dir: &Path, options: BuildOptions) -> Result<Self> {
        let config = ModelConfig::load(&dir.join("config.json"))?;
        let weights = Weights::load(&dir.join("model.safetensors"))?;
        Self::from_weights(config, &weights, options).with_context(|| format!("{}: cannot build the CUDA model", dir.display()))
    }

    /// [`CudaModel::from_model_dir`] for weights in memory (synthetic weights, tests).
    pub fn from_weights(config: ModelConfig, weights: &Weights, options: BuildOptions) -> Result<Self> {
        let gpu = Gpu::new(0)?;
        let (major, minor) = gpu.compute_capability;
        let modules = crate::engine::nvrtc::compile_all(major, minor)?;
        let tensors = layout::engine_tensors(&config, weights, options.weight_only)?;
        Self::from_parts(gpu, config, options, &modules, &tensors, &[])
    }

    /// [`CudaModel::from_weights`] with an int8 KV cache of these scales (tests).
    pub fn from_weights_kv(config: ModelConfig, weights: &Weights, options: BuildOptions, scales: &crate::kv_quant::KvScales) -> Result<Self> {
        let gpu = Gpu::new(0)?;
        let (major, minor) = gpu.compute_capability;
        let modules = crate::engine::nvrtc::compile_all(major, minor)?;
        let mut tensors = layout::engine_tensors(&config, weights, options.weight_only)?;
        tensors.push(layout::kv_scales_tensor(scales));
        Self::from_parts(gpu, config, BuildOptions { int8_kv: true, ..options }, &modules, &tensors, &[])
    }

    /// Uploads weights, loads the cubins, allocates every buffer and builds the GEMM plans.
    pub fn from_parts(
        gpu: Gpu,
        config: ModelConfig,
        options: BuildOptions,
        modules: &[(String, Vec<u8>)],
        tensors: &[EngineTensor],
        tactics: &[GemmTactic],
    ) -> Result<Self> {
        config.validate()?;
        layout::check_dims(&config)?;
        if options.dtype != "fp16" {
            bail!("engine dtype {:?}: this whisper-trt runs fp16 engines only", options.dtype);
        }
        let kernels = kernels::Kernels::load(&gpu, modules)?;
        let weights = weights::DeviceWeights::upload(&gpu, tensors)?;
        let enc = weights.encoder(&config)?;
        let dec = weights.decoder(&config)?;
        let gemm = gemm::Gemm::new(&gpu, tactics)?;
        gemm.prepare(&gemm::gemm_shapes(&config, &options))?;
        let enc_buf = encoder::EncoderBuffers::new(&gpu, &config, options.max_batch)?;
        let max_seqs = options.max_batch.max(1) * options.beam_width.max(1);
        let kv_scales = match options.int8_kv {
            true => weights.get(crate::kv_quant::SCALES_TENSOR, crate::engine::Dtype::F32, &[crate::kv_quant::KINDS, config.n_text_layer, config.n_text_head])?,
            false => 0,
        };
        let cross_scratch = match options.int8_kv {
            true => Some(gpu.alloc(config.n_audio_ctx * config.n_text_layer * 2 * config.n_text_state * 2)?),
            false => None,
        };
        let dec_state = decoder::DecoderState::new(&gpu, &config, max_seqs, if options.int8_kv { 1 } else { 2 })?;
        let select = select::SelectBuffers::new(&gpu, config.n_vocab, max_seqs)?;
        gpu.sync()?;
        Ok(CudaModel {
            config,
            options,
            kernels,
            gemm,
            enc,
            dec,
            enc_buf: RefCell::new(enc_buf),
            dec_state: RefCell::new(dec_state),
            select,
            pool: Arc::new(Mutex::new(Vec::new())),
            kv_scales,
            cross_scratch,
            kv_stats: RefCell::new(None),
            weights,
            gpu,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn options(&self) -> &BuildOptions {
        &self.options
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Bytes of weights on the GPU.
    pub fn weight_bytes(&self) -> usize {
        self.weights.bytes()
    }

    /// Runs one-token decoder steps as captured CUDA graphs (the default) or launch by launch.
    pub fn set_cuda_graphs(&self, on: bool) -> Result<()> {
        let mut st = self.dec_state.try_borrow_mut().map_err(|_| anyhow!("a decoder session is active"))?;
        st.set_graphs(on);
        Ok(())
    }

    /// Decoder attention split over keys across blocks (flash decoding) or one block per
    /// (row, head); the default comes from `WHISPER_TRT_SPLIT_ATTENTION` (on unless "0").
    pub fn set_split_attention(&self, on: bool) -> Result<()> {
        let mut st = self.dec_state.try_borrow_mut().map_err(|_| anyhow!("a decoder session is active"))?;
        st.set_split(on);
        Ok(())
    }

    /// Dense layers of decode steps of at most 8 rows through the GEMV kernel (LayerNorm and GELU
    /// fused) or cuBLASLt; the default comes from `WHISPER_TRT_GEMV` (cuBLASLt unless "1").
    /// Programmatic Dependent Launch ([`CudaModel::set_pdl`], on by default on sm_90) selects the
    /// GEMV kernel for one-row steps by itself.
    pub fn set_gemv(&self, on: bool) -> Result<()> {
        let mut st = self.dec_state.try_borrow_mut().map_err(|_| anyhow!("a decoder session is active"))?;
        st.set_gemv(on);
        Ok(())
    }

    /// The GEMM runner (plans, sources of their algorithms).
    pub fn gemm(&self) -> &gemm::Gemm {
        &self.gemm
    }

    fn features_bytes(&self) -> usize {
        let c = &self.config;
        c.n_audio_ctx * c.n_text_layer * 2 * c.n_text_state * self.kv_elem()
    }

    /// Bytes per cached key or value: 1 with the int8 KV cache, else 2.
    fn kv_elem(&self) -> usize {
        if self.kv_scales != 0 {
            1
        } else {
            2
        }
    }

    /// Whether keys and values are cached in int8 (`--int8-kv`).
    pub fn int8_kv(&self) -> bool {
        self.kv_scales != 0
    }

    /// Calibration: from now on every cross K/V and every decoder step records the largest |K|
    /// and |V| per (kind, layer, head), until [`CudaModel::take_kv_stats`].
    pub fn start_kv_stats(&self) -> Result<()> {
        let c = &self.config;
        let buf = self.gpu.alloc(crate::kv_quant::KINDS * c.n_text_layer * c.n_text_head * 4)?;
        *self.kv_stats.try_borrow_mut().map_err(|_| anyhow!("internal: calibration statistics in use"))? = Some(buf);
        // Captured steps were recorded without the statistics kernels.
        self.dec_state.try_borrow_mut().map_err(|_| anyhow!("a decoder session is active"))?.clear_graphs();
        Ok(())
    }

    /// The statistics recorded since [`CudaModel::start_kv_stats`] (None if it was not called).
    pub fn take_kv_stats(&self) -> Result<Option<crate::kv_quant::KvStats>> {
        let Some(buf) = self.kv_stats.try_borrow_mut().map_err(|_| anyhow!("internal: calibration statistics in use"))?.take() else {
            return Ok(None);
        };
        self.dec_state.try_borrow_mut().map_err(|_| anyhow!("a decoder session is active"))?.clear_graphs();
        let c = &self.config;
        let mut st = crate::kv_quant::KvStats::new(c.n_text_layer, c.n_text_head);
        self.gpu.copy_from(buf.ptr(), &mut st.amax)?;
        Ok(Some(st))
    }

    /// The statistics buffer while calibrating, else 0.
    fn kv_stats_ptr(&self) -> u64 {
        self.kv_stats.try_borrow().ok().and_then(|b| b.as_ref().map(|b| b.ptr())).unwrap_or(0)
    }

    /// Scales of `kind` for layer `l` (f32 `[n_head]`), for the int8 KV kernels.
    fn kv_scale_ptr(&self, kind: usize, l: usize) -> u64 {
        let c = &self.config;
        self.kv_scales + ((kind * c.n_text_layer + l) * c.n_text_head * 4) as u64
    }

    fn take_features(&self) -> Result<CudaFeatures> {
        let reuse = self.pool.lock().map_err(|_| anyhow!("feature pool poisoned"))?.pop();
        let buf = match reuse {
            Some(b) => b,
            None => self.gpu.alloc(self.features_bytes())?,
        };
        Ok(CudaFeatures { buf: Some(buf), bytes: self.features_bytes(), pool: self.pool.clone() })
    }

    fn enc_buffers(&self) -> Result<std::cell::RefMut<'_, encoder::EncoderBuffers>> {
        self.enc_buf.try_borrow_mut().map_err(|_| anyhow!("internal: the encoder is already running"))
    }

    /// Encodes up to `max_batch` windows in one pass (each mel `[n_mels][2 * n_audio_ctx]`).
    pub fn encode_batch(&self, mels: &[&[f32]]) -> Result<Vec<CudaFeatures>> {
        let buf = self.enc_buffers()?;
        let h = self.run_encoder(&buf, mels)?;
        let row = (self.config.n_audio_ctx * self.config.n_audio_state * 2) as u64;
        let mut out = Vec::with_capacity(mels.len());
        for i in 0..mels.len() {
            let f = self.take_features()?;
            self.cross_kv(h + i as u64 * row, f.ptr())?;
            out.push(f);
        }
        Ok(out)
    }

    /// Benchmark helper: the encoder proper over `mels` (mel upload, conv front end, blocks,
    /// final LayerNorm; no cross-attention K/V), queued only. Its output stays in the encoder's
    /// scratch until the next encoder run: [`CudaModel::bench_cross_kv`] reads it.
    pub fn bench_encoder(&self, mels: &[&[f32]]) -> Result<EncoderOutput> {
        let buf = self.enc_buffers()?;
        let h = self.run_encoder(&buf, mels)?;
        Ok(EncoderOutput { h, windows: mels.len() })
    }

    /// Benchmark helper: the cross-attention K/V of every window of the last encoder run `out`
    /// (one GEMM per window, as [`CudaModel::encode_batch`] runs them), queued only.
    pub fn bench_cross_kv(&self, out: &EncoderOutput) -> Result<Vec<CudaFeatures>> {
        let row = (self.config.n_audio_ctx * self.config.n_audio_state * 2) as u64;
        let mut feats = Vec::with_capacity(out.windows);
        for i in 0..out.windows {
            let f = self.take_features()?;
            self.cross_kv(out.h + i as u64 * row, f.ptr())?;
            feats.push(f);
        }
        Ok(feats)
    }

    /// The encoder's output for one window, f32 `[n_audio_ctx][n_audio_state]` (for checks
    /// against the CPU backend's `encode`).
    pub fn encoder_output(&self, mel: &[f32]) -> Result<Vec<f32>> {
        let buf = self.enc_buffers()?;
        let h = self.run_encoder(&buf, &[mel])?;
        let mut out = vec![half::f16::ZERO; self.config.n_audio_ctx * self.config.n_audio_state];
        self.gpu.copy_from(h, &mut out)?;
        Ok(out.iter().map(|v| v.to_f32()).collect())
    }

    /// A decoder session of `n_seq` sequences (at most max_batch * beam_width) over `features`.
    pub fn session<'a>(&'a self, features: &'a CudaFeatures, n_seq: usize) -> Result<CudaSession<'a>> {
        self.new_session(&[features], n_seq)
    }

    /// A decoder session of `features.len() * per` sequences (at most max_batch * beam_width):
    /// sequence `s` attends to `features[s / per]`.
    pub fn session_many<'a>(&'a self, features: &[&'a CudaFeatures], per: usize) -> Result<CudaSession<'a>> {
        self.new_session(features, per)
    }
}

impl Backend for CudaModel {
    type Features = CudaFeatures;

    fn config(&self) -> &ModelConfig {
        &self.config
    }

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn max_batch(&self) -> Option<usize> {
        Some(self.options.max_batch.max(1))
    }

    fn encode(&self, mel: &[f32]) -> Result<CudaFeatures> {
        let mut v = self.encode_batch(&[mel])?;
        v.pop().ok_or_else(|| anyhow!("internal: the encoder returned no features"))
    }

    fn encode_batch(&self, mels: &[&[f32]]) -> Result<Vec<CudaFeatures>> {
        let mut out = Vec::with_capacity(mels.len());
        for chunk in mels.chunks(self.options.max_batch.max(1)) {
            out.extend(CudaModel::encode_batch(self, chunk)?);
        }
        Ok(out)
    }

    fn max_sequences(&self) -> Option<usize> {
        Some(self.options.max_batch.max(1) * self.options.beam_width.max(1))
    }

    fn session<'a>(&'a self, features: &'a CudaFeatures, n_seq: usize) -> Result<Box<dyn DecoderSession + 'a>> {
        Ok(Box::new(self.new_session(&[features], n_seq)?))
    }

    fn session_many<'a>(&'a self, features: &[&'a CudaFeatures], per: usize) -> Result<Box<dyn DecoderSession + 'a>> {
        Ok(Box::new(self.new_session(features, per)?))
    }

    /// What whisper-trt allocated (now and at most; weights included) and what the driver
    /// reports in use on the whole GPU (cudaMemGetInfo: the CUDA context, cuBLASLt's workspace,
    /// allocator slack and other processes count too).
    fn device_memory(&self) -> Option<String> {
        let (free, total) = self.gpu.mem_info().ok()?;
        let (live, peak) = self.gpu.allocated();
        let mib = |b: usize| b / (1 << 20);
        Some(format!(
            "GPU memory allocated by whisper-trt {} MiB at most, {} MiB now (weights {} MiB); driver-reported in use {} MiB of {} MiB",
            mib(peak),
            mib(live),
            mib(self.weight_bytes()),
            mib(total - free),
            mib(total)
        ))
    }
}
