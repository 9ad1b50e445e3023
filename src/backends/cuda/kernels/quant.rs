//! The launcher of the W8A16 GEMM (kernels/gemm_w8.cu), the dense layers of weight-only int8
//! engines wherever more rows than the GEMV kernels take run at once: the encoder, the
//! cross-attention K/V, prompts and large decode batches. (The int8 GEMVs launch from
//! [`Kernels::gemv_q`].)
use super::{i32_of, launch_pdl, launched, GemvOut, Kernels};
use anyhow::{anyhow, Result};
use cudarc::driver::sys::{self, CUdeviceptr};
use cudarc::driver::{LaunchConfig, PushKernelArg};
use std::ffi::c_void;

/// One entry point of gemm_w8.cu: output rows and features per block, threads, dynamic shared
/// memory bytes (`GW8_BM`, `GW8_BN`, `GW8_THREADS`, `GW8_SMEM` and the `GW8_M32_*` ones).
struct Tile {
    bm: usize,
    bn: usize,
    threads: usize,
    smem: usize,
}
const TILE: Tile = Tile { bm: 128, bn: 128, threads: 256, smem: 4 * (128 * 32 * 2 + 128 * 32) };
const TILE_M32: Tile = Tile { bm: 32, bn: 64, threads: 128, smem: 4 * (32 * 32 * 2 + 64 * 32) };

/// Both entry points take the largest shared-memory carveout (their 48 KB per block, two or more
/// blocks per multiprocessor).
pub(super) fn prepare(k: &Kernels) -> Result<()> {
    // gemv_mma_i8 stages up to 8 input rows of G1_MAX_K fp16 values.
    k.gemv_mma_i8
        .set_attribute(sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, (8 * super::G1_MAX_K * 2) as i32)
        .map_err(|e| anyhow!("cannot give the int8 GEMV its shared memory: {e:?}"))?;
    for f in [&k.gemm_w8, &k.gemm_w8_m32] {
        f.set_attribute(sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT, 100)
            .map_err(|e| anyhow!("cannot set the W8A16 GEMM's shared memory carveout: {e:?}"))?;
    }
    Ok(())
}

impl Kernels {
    /// PDL. `y[r] (+)= x[r] · (w · diag(scales))ᵀ + bias` for `m` rows: w int8 `[n][k]` with one
    /// fp16 scale per output feature, x fp16 rows of stride `ldx`, y rows of stride `ldy` in the
    /// type `out` says (bias in that type, or none). k % 32 == 0, ldx % 8 == 0.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm_w8(
        &self,
        w: CUdeviceptr,
        scales: CUdeviceptr,
        x: CUdeviceptr,
        bias: Option<CUdeviceptr>,
        y: CUdeviceptr,
        m: usize,
        n: usize,
        k: usize,
        ldx: usize,
        ldy: usize,
        out: GemvOut,
    ) -> Result<()> {
        if !k.is_multiple_of(32) || !ldx.is_multiple_of(8) || m == 0 || n == 0 {
            return Err(anyhow!("internal: W8A16 GEMM of {m} x {n} x {k} (ldx {ldx}) is out of the kernel's range"));
        }
        let mode: i32 = match out {
            GemvOut::F16 => 0,
            GemvOut::F16Gelu => 1,
            GemvOut::F32 => 2,
            GemvOut::F32Add => 3,
        };
        let bias = bias.unwrap_or(0);
        let (mm, nn, kk, lx, ly) = (i32_of(m, "m")?, i32_of(n, "n")?, i32_of(k, "k")?, i32_of(ldx, "ldx")?, i32_of(ldy, "ldy")?);
        // The 128 x 128 tiles unless they leave the GPU half idle (few rows: prompts, decode
        // batches, short inputs), then 32 x 64.
        let blocks = |t: &Tile| m.div_ceil(t.bm) * n.div_ceil(t.bn);
        let small = blocks(&TILE) < 2 * self.sms;
        let t = if small { &TILE_M32 } else { &TILE };
        let cfg = LaunchConfig {
            grid_dim: (blocks(t) as u32, 1, 1),
            block_dim: (t.threads as u32, 1, 1),
            shared_mem_bytes: t.smem as u32,
        };
        if small {
            return launch!(self, gemm_w8_m32, "gemm_w8_m32", cfg, [&w, &scales, &x, &bias, &y, &mm, &nn, &kk, &lx, &ly, &mode]);
        }
        launch!(self, gemm_w8, "gemm_w8", cfg, [&w, &scales, &x, &bias, &y, &mm, &nn, &kk, &lx, &ly, &mode])
    }
}
