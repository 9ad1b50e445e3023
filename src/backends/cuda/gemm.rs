//! Dense layers through cuBLASLt: fp16 operands, f32 accumulation, bias and bias+GELU epilogues,
//! fp16 or f32 output (f32 for the layers that add into the residual stream, in place).
//!
//! Every GEMM is `y[m][n] (+)= x[m][k] · wᵀ (+ bias)` with row-major `x` (row stride `ldx`), a
//! torch-layout weight `w[n][k]` and row-major `y` (row stride `ldy`). cuBLASLt is column-major,
//! so it computes `yᵀ = w · xᵀ`: A = `w` (stored k x n, transposed), B = `xᵀ` (k x m), D = `yᵀ`
//! (n x m); the bias runs along D's rows, i.e. one value per output feature.
//!
//! A [`Plan`] (descriptors plus the chosen algorithm) is built once per [`GemmShape`], from the
//! engine's tactic table where it has that shape, and cached; the decoding loop only looks plans up.
use super::context::Gpu;
use crate::engine::{BuildOptions, GemmTactic};
use crate::model::ModelConfig;
use anyhow::{anyhow, bail, Result};
use cudarc::cublaslt::sys;
use cudarc::driver::sys::CUdeviceptr;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;

/// Data type of the output (and of the bias, which cuBLASLt takes in the output's type).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Out {
    F16,
    F32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Epilogue {
    None,
    Bias,
    /// Bias, then cuBLASLt's GELU (the tanh approximation, not torch's exact erf form).
    BiasGelu,
}

/// One GEMM the engine runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemmShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub ldx: usize,
    pub ldy: usize,
    pub out: Out,
    pub epilogue: Epilogue,
    /// `y += ...` (beta = 1, reading the old `y`) instead of `y = ...`.
    pub accumulate: bool,
}

impl GemmShape {
    /// A dense layer over contiguous rows.
    pub fn linear(m: usize, n: usize, k: usize, out: Out, epilogue: Epilogue, accumulate: bool) -> Self {
        GemmShape { m, n, k, ldx: k, ldy: n, out, epilogue, accumulate }
    }

    /// The tactic table's key.
    pub fn key(&self) -> String {
        let out = match self.out {
            Out::F16 => "h",
            Out::F32 => "f",
        };
        let ep = match self.epilogue {
            Epilogue::None => "none",
            Epilogue::Bias => "bias",
            Epilogue::BiasGelu => "gelu",
        };
        format!(
            "m{}n{}k{}x{}y{}o{out}e{ep}a{}",
            self.m, self.n, self.k, self.ldx, self.ldy, self.accumulate as u8
        )
    }
}

/// Rows the decoder runs at once for a session of `n_seq` sequences: whole prompts of up to
/// [`PROMPT_TOKENS`] tokens, longer inputs in chunks.
pub const PROMPT_TOKENS: usize = 4;

/// The dense GEMMs of one encoder pass over `rows` = windows x n_audio_ctx rows.
pub fn encoder_shapes(c: &ModelConfig, windows: usize) -> Vec<GemmShape> {
    let (n, t) = (c.n_audio_state, c.n_audio_ctx);
    let rows = windows * t;
    vec![
        GemmShape::linear(windows * c.n_frames(), n, 3 * c.n_mels, Out::F16, Epilogue::Bias, false), // conv1
        GemmShape::linear(rows, n, 3 * n, Out::F32, Epilogue::Bias, false),                         // conv2
        GemmShape::linear(rows, 3 * n, n, Out::F16, Epilogue::Bias, false),                          // qkv
        GemmShape::linear(rows, n, n, Out::F32, Epilogue::Bias, true),                               // out
        GemmShape::linear(rows, 4 * n, n, Out::F16, Epilogue::BiasGelu, false),                      // fc1 (+GELU)
        GemmShape::linear(rows, 4 * n, n, Out::F16, Epilogue::Bias, false), // fc1, exact GELU after (encoder.rs)
        GemmShape::linear(rows, n, 4 * n, Out::F32, Epilogue::Bias, true),                           // fc2
        // The cross-attention K/V of every decoder layer, one window at a time.
        GemmShape::linear(t, c.n_text_layer * 2 * c.n_text_state, n, Out::F16, Epilogue::Bias, false),
    ]
}

/// The dense GEMMs of one decoder step over `rows` = sequences x tokens rows.
pub fn decoder_shapes(c: &ModelConfig, rows: usize) -> Vec<GemmShape> {
    let n = c.n_text_state;
    vec![
        GemmShape::linear(rows, 3 * n, n, Out::F16, Epilogue::Bias, false), // self qkv
        GemmShape::linear(rows, n, n, Out::F32, Epilogue::Bias, true),      // self out, cross out
        GemmShape::linear(rows, n, n, Out::F16, Epilogue::Bias, false),     // cross query
        GemmShape::linear(rows, 4 * n, n, Out::F16, Epilogue::Bias, false), // fc1
        GemmShape::linear(rows, n, 4 * n, Out::F32, Epilogue::Bias, true),  // fc2
        GemmShape::linear(rows, c.n_vocab, n, Out::F32, Epilogue::None, false), // tied logits
    ]
}

/// Every GEMM shape an engine built with `options` runs in the common cases: the encoder at one
/// window and at the largest batch, the decoder for greedy and beam sessions, prompts and steps.
/// Other shapes get a heuristic plan the first time they run.
pub fn gemm_shapes(config: &ModelConfig, options: &BuildOptions) -> Vec<GemmShape> {
    let mut out: Vec<GemmShape> = Vec::new();
    let mut push = |v: Vec<GemmShape>| {
        for s in v {
            if !out.contains(&s) {
                out.push(s);
            }
        }
    };
    push(encoder_shapes(config, 1));
    if options.max_batch > 1 {
        push(encoder_shapes(config, options.max_batch));
    }
    let beams = options.beam_width.max(1);
    for seqs in [1, beams, beams * options.max_batch.max(1)] {
        for t in 1..=PROMPT_TOKENS {
            push(decoder_shapes(config, seqs * t));
        }
    }
    out
}

fn lt_err(what: &'static str) -> impl Fn(cudarc::cublaslt::result::CublasError) -> anyhow::Error {
    move |e| anyhow!("cuBLASLt {what}: {e:?}")
}

struct Layout(sys::cublasLtMatrixLayout_t);
impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtMatrixLayoutCreate, destroyed once.
        unsafe { sys::cublasLtMatrixLayoutDestroy(self.0) };
    }
}

struct Desc(sys::cublasLtMatmulDesc_t);
impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtMatmulDescCreate, destroyed once.
        unsafe { sys::cublasLtMatmulDescDestroy(self.0) };
    }
}

struct Pref(sys::cublasLtMatmulPreference_t);
impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: created by cublasLtMatmulPreferenceCreate, destroyed once.
        unsafe { sys::cublasLtMatmulPreferenceDestroy(self.0) };
    }
}

/// Descriptors and algorithm of one shape.
pub struct Plan {
    desc: Desc,
    a: Layout,
    b: Layout,
    d: Layout,
    algo: sys::cublasLtMatmulAlgo_t,
    /// Where the algorithm came from, for reports: "tactic" or "heuristic".
    pub source: &'static str,
}

fn layout(dtype: sys::cudaDataType, rows: usize, cols: usize, ld: usize) -> Result<Layout> {
    let h = cudarc::cublaslt::result::create_matrix_layout(dtype, rows as u64, cols as u64, ld as i64)
        .map_err(lt_err("matrix layout"))?;
    Ok(Layout(h))
}

fn set_desc<T>(desc: &Desc, attr: sys::cublasLtMatmulDescAttributes_t, value: &T) -> Result<()> {
    // SAFETY: value points to a live T of the size passed.
    unsafe {
        cudarc::cublaslt::result::set_matmul_desc_attribute(
            desc.0,
            attr,
            value as *const T as *const c_void,
            std::mem::size_of::<T>(),
        )
    }
    .map_err(lt_err("matmul descriptor"))
}

fn out_type(out: Out) -> sys::cudaDataType {
    match out {
        Out::F16 => sys::cudaDataType_t::CUDA_R_16F,
        Out::F32 => sys::cudaDataType_t::CUDA_R_32F,
    }
}

/// The descriptors of `s` (bias pointer not set yet).
fn descriptors(s: &GemmShape) -> Result<(Desc, Layout, Layout, Layout)> {
    use sys::cublasLtMatmulDescAttributes_t as A;
    let desc = Desc(
        cudarc::cublaslt::result::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType_t::CUDA_R_32F,
        )
        .map_err(lt_err("matmul descriptor"))?,
    );
    // cublasOperation_t: CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 (cublas.h; not re-exported by cublaslt::sys).
    set_desc(&desc, A::CUBLASLT_MATMUL_DESC_TRANSA, &1i32)?;
    set_desc(&desc, A::CUBLASLT_MATMUL_DESC_TRANSB, &0i32)?;
    let epilogue = match s.epilogue {
        Epilogue::None => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT,
        Epilogue::Bias => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS,
        Epilogue::BiasGelu => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU_BIAS,
    };
    set_desc(&desc, A::CUBLASLT_MATMUL_DESC_EPILOGUE, &(epilogue as u32))?;
    if s.epilogue != Epilogue::None {
        set_desc(&desc, A::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &(out_type(s.out) as i32))?;
    }
    let f16 = sys::cudaDataType_t::CUDA_R_16F;
    let a = layout(f16, s.k, s.n, s.k)?;
    let b = layout(f16, s.k, s.m, s.ldx)?;
    let d = layout(out_type(s.out), s.n, s.m, s.ldy)?;
    Ok((desc, a, b, d))
}

/// Up to `count` algorithms cuBLASLt's heuristic proposes for `s`, best first.
fn heuristic(
    handle: sys::cublasLtHandle_t,
    s: &GemmShape,
    parts: &(Desc, Layout, Layout, Layout),
    workspace: usize,
    count: usize,
) -> Result<Vec<sys::cublasLtMatmulAlgo_t>> {
    let pref = Pref(cudarc::cublaslt::result::create_matmul_pref().map_err(lt_err("preference"))?);
    // SAFETY: the value is a live usize.
    unsafe {
        cudarc::cublaslt::result::set_matmul_pref_attribute(
            pref.0,
            sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            &workspace as *const usize as *const c_void,
            std::mem::size_of::<usize>(),
        )
    }
    .map_err(lt_err("preference"))?;
    // SAFETY: zeroed heuristic results are plain data; cuBLASLt fills `returned` of them.
    let mut results: Vec<sys::cublasLtMatmulHeuristicResult_t> = vec![unsafe { std::mem::zeroed() }; count];
    let mut returned = 0i32;
    let (desc, a, b, d) = parts;
    // SAFETY: every descriptor is live; results has room for `count`.
    unsafe {
        sys::cublasLtMatmulAlgoGetHeuristic(
            handle,
            desc.0,
            a.0,
            b.0,
            d.0,
            d.0,
            pref.0,
            count as i32,
            results.as_mut_ptr(),
            &mut returned,
        )
    }
    .result()
    .map_err(lt_err("heuristic"))?;
    let algos: Vec<_> = results
        .iter()
        .take(returned.max(0) as usize)
        .filter(|r| r.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS && r.workspaceSize <= workspace)
        .map(|r| r.algo)
        .collect();
    if algos.is_empty() {
        bail!("cuBLASLt has no algorithm for GEMM {}", s.key());
    }
    Ok(algos)
}

fn algo_to_bytes(a: &sys::cublasLtMatmulAlgo_t) -> Vec<u8> {
    a.data.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn algo_from_bytes(b: &[u8]) -> Option<sys::cublasLtMatmulAlgo_t> {
    let mut algo = sys::cublasLtMatmulAlgo_t { data: [0; 8] };
    if b.len() != 8 * algo.data.len() {
        return None;
    }
    for (w, chunk) in algo.data.iter_mut().zip(b.chunks_exact(8)) {
        *w = u64::from_le_bytes(chunk.try_into().ok()?);
    }
    Some(algo)
}

/// The cuBLASLt handle, its workspace and the plan cache of one GPU.
pub struct Gemm {
    handle: sys::cublasLtHandle_t,
    stream: Arc<cudarc::driver::CudaStream>,
    workspace: super::context::DeviceBuffer,
    tactics: HashMap<String, sys::cublasLtMatmulAlgo_t>,
    plans: RefCell<HashMap<GemmShape, Plan>>,
}

impl Drop for Gemm {
    fn drop(&mut self) {
        self.plans.borrow_mut().clear();
        // SAFETY: the handle was created in `new` and is destroyed once, after its plans.
        unsafe { cudarc::cublaslt::result::destroy_handle(self.handle) }.ok();
    }
}

impl Gemm {
    /// A cuBLASLt handle on the GPU's stream; `tactics` come from the engine (may be empty).
    pub fn new(gpu: &Gpu, tactics: &[GemmTactic]) -> Result<Self> {
        super::context::check_libraries()?;
        let handle = cudarc::cublaslt::result::create_handle().map_err(lt_err("cannot create a handle"))?;
        // NVIDIA's recommendation: 32 MiB of workspace on Hopper, 4 MiB before it.
        let ws = if gpu.compute_capability.0 >= 9 { 32 << 20 } else { 4 << 20 };
        let workspace = match gpu.alloc(ws) {
            Ok(w) => w,
            Err(e) => {
                // SAFETY: created just above.
                unsafe { cudarc::cublaslt::result::destroy_handle(handle) }.ok();
                return Err(e);
            }
        };
        let tactics = tactics.iter().filter_map(|t| Some((t.key.clone(), algo_from_bytes(&t.algo)?))).collect();
        Ok(Gemm { handle, stream: gpu.stream.clone(), workspace, tactics, plans: RefCell::new(HashMap::new()) })
    }

    /// Builds (or keeps) the plans of `shapes`, so that running them later builds nothing.
    pub fn prepare(&self, shapes: &[GemmShape]) -> Result<()> {
        for s in shapes {
            self.plan_source(s)?;
        }
        Ok(())
    }

    /// Where the plan of `s` got its algorithm ("tactic" or "heuristic"), building it if needed.
    pub fn plan_source(&self, s: &GemmShape) -> Result<&'static str> {
        if let Some(p) = self.plans.borrow().get(s) {
            return Ok(p.source);
        }
        let plan = self.build_plan(s)?;
        let source = plan.source;
        self.plans.borrow_mut().insert(*s, plan);
        Ok(source)
    }

    fn build_plan(&self, s: &GemmShape) -> Result<Plan> {
        let parts = descriptors(s)?;
        if let Some(algo) = self.tactics.get(&s.key()) {
            // The engine's choice, if cuBLASLt still accepts it for this shape here.
            // SAFETY: zeroed result is plain data; descriptors are live.
            let mut check: sys::cublasLtMatmulHeuristicResult_t = unsafe { std::mem::zeroed() };
            let ok = unsafe {
                sys::cublasLtMatmulAlgoCheck(self.handle, parts.0 .0, parts.1 .0, parts.2 .0, parts.3 .0, parts.3 .0, algo, &mut check)
            };
            if ok == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS && check.workspaceSize <= self.workspace.bytes() {
                let (desc, a, b, d) = parts;
                return Ok(Plan { desc, a, b, d, algo: *algo, source: "tactic" });
            }
        }
        let algo = heuristic(self.handle, s, &parts, self.workspace.bytes(), 1)?[0];
        let (desc, a, b, d) = parts;
        Ok(Plan { desc, a, b, d, algo, source: "heuristic" })
    }

    /// Queues `y (+)= x · wᵀ (+ bias)` for shape `s` on the stream. `bias` must be given exactly
    /// when the shape's epilogue has one; its type is the output's.
    pub fn run(&self, s: &GemmShape, w: CUdeviceptr, x: CUdeviceptr, bias: Option<CUdeviceptr>, y: CUdeviceptr) -> Result<()> {
        if (s.epilogue != Epilogue::None) != bias.is_some() {
            bail!("internal: GEMM {} got the wrong bias", s.key());
        }
        self.plan_source(s)?;
        let plans = self.plans.borrow();
        let plan = plans.get(s).ok_or_else(|| anyhow!("internal: no plan for {}", s.key()))?;
        self.launch(s, plan, &plan.algo, w, x, bias, y)
    }

    #[allow(clippy::too_many_arguments)]
    fn launch(
        &self,
        s: &GemmShape,
        plan: &Plan,
        algo: &sys::cublasLtMatmulAlgo_t,
        w: CUdeviceptr,
        x: CUdeviceptr,
        bias: Option<CUdeviceptr>,
        y: CUdeviceptr,
    ) -> Result<()> {
        if let Some(b) = bias {
            set_desc(&plan.desc, sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &b)?;
        }
        let alpha = 1.0f32;
        let beta = if s.accumulate { 1.0f32 } else { 0.0 };
        // SAFETY: the caller passes live device buffers of the shape's sizes; C and D are the same
        // matrix with the same layout (in place), which cuBLASLt allows.
        unsafe {
            cudarc::cublaslt::result::matmul(
                self.handle,
                plan.desc.0,
                &alpha as *const f32 as *const c_void,
                &beta as *const f32 as *const c_void,
                w as *const c_void,
                plan.a.0,
                x as *const c_void,
                plan.b.0,
                y as *const c_void,
                plan.d.0,
                y as *mut c_void,
                plan.d.0,
                algo,
                self.workspace.ptr() as *mut c_void,
                self.workspace.bytes(),
                self.stream.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(|e| anyhow!("cuBLASLt matmul {}: {e:?}", s.key()))
    }
}

/// Times up to 8 of the heuristic's candidates for every shape (16 for the encoder's tall
/// products, at least one window of rows) on random operands and keeps the fastest: the engine's
/// tactic table.
pub fn pick_tactics(gpu: &Gpu, shapes: &[GemmShape]) -> Result<Vec<GemmTactic>> {
    const CANDIDATES: usize = 8;
    const TALL_CANDIDATES: usize = 16;
    const TALL_ROWS: usize = 1500;
    const WARMUP: usize = 2;
    const RUNS: usize = 10;
    let gemm = Gemm::new(gpu, &[])?;
    let max = |f: &dyn Fn(&GemmShape) -> usize| shapes.iter().map(f).max().unwrap_or(1);
    // Operands big enough for every shape, filled with values in [-1, 1) (never zeros: they can
    // run faster than real data).
    let x_elems = max(&|s| s.m * s.ldx);
    let w_elems = max(&|s| s.n * s.k);
    let y_bytes = max(&|s| s.m * s.ldy * 4);
    let n_max = max(&|s| s.n);
    let rand = |n: usize, seed: u32| -> Vec<half::f16> {
        let mut r = seed.wrapping_mul(2654435761) | 1;
        (0..n)
            .map(|_| {
                r ^= r << 13;
                r ^= r >> 17;
                r ^= r << 5;
                half::f16::from_f32((r >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0)
            })
            .collect()
    };
    let x = gpu.upload(&rand(x_elems, 1))?;
    let w = gpu.upload(&rand(w_elems, 2))?;
    let y = gpu.alloc(y_bytes)?;
    let bias = gpu.upload(&vec![0.01f32; n_max])?;
    let start = gpu.ctx.new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT)).map_err(|e| anyhow!("CUDA event: {e:?}"))?;
    let end = gpu.ctx.new_event(Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT)).map_err(|e| anyhow!("CUDA event: {e:?}"))?;
    let mut out = Vec::with_capacity(shapes.len());
    for s in shapes {
        let parts = descriptors(s)?;
        let count = if s.m >= TALL_ROWS { TALL_CANDIDATES } else { CANDIDATES };
        let candidates = heuristic(gemm.handle, s, &parts, gemm.workspace.bytes(), count)?;
        let (desc, a, b, d) = parts;
        let plan = Plan { desc, a, b, d, algo: candidates[0], source: "heuristic" };
        let bias_ptr = (s.epilogue != Epilogue::None).then(|| bias.ptr());
        let mut best: Option<(f32, sys::cublasLtMatmulAlgo_t)> = None;
        for algo in &candidates {
            // A candidate that fails to launch is skipped, not fatal.
            let ok = (0..WARMUP).all(|_| gemm.launch(s, &plan, algo, w.ptr(), x.ptr(), bias_ptr, y.ptr()).is_ok());
            if !ok || gpu.sync().is_err() {
                continue;
            }
            start.record(&gpu.stream).map_err(|e| anyhow!("CUDA event: {e:?}"))?;
            for _ in 0..RUNS {
                gemm.launch(s, &plan, algo, w.ptr(), x.ptr(), bias_ptr, y.ptr())?;
            }
            end.record(&gpu.stream).map_err(|e| anyhow!("CUDA event: {e:?}"))?;
            let ms = start.elapsed_ms(&end).map_err(|e| anyhow!("CUDA event: {e:?}"))?;
            let micros = ms * 1000.0 / RUNS as f32;
            if best.is_none_or(|(t, _)| micros < t) {
                best = Some((micros, *algo));
            }
        }
        let (micros, algo) = best.ok_or_else(|| anyhow!("no cuBLASLt algorithm ran for GEMM {}", s.key()))?;
        out.push(GemmTactic { key: s.key(), algo: algo_to_bytes(&algo), micros });
    }
    gpu.sync()?;
    Ok(out)
}
