//! The launchers of the int8 KV cache (`build --int8-kv`; kernels/kv_quant.cu, kv_append_i8 of
//! kernels/kv_cache.cu and the `_i8` attention kernels of kernels/decoder_attention.cu). Scales
//! are f32 `[4][n_layer][n_head]` (see [`crate::kv_quant`]); the launchers take pointers to one
//! layer's heads of one kind.
use super::{grid_stride, i32_of, launch_pdl, launched, CrossKv, Kernels, D_HEAD, SPLIT_KEYS_I8};
use anyhow::Result;
use cudarc::driver::sys::CUdeviceptr;
use cudarc::driver::{LaunchConfig, PushKernelArg};
use std::ffi::c_void;

impl Kernels {
    /// PDL. [`Kernels::kv_append`] into this layer's int8 caches, quantizing with the layer's
    /// key and value scales `ks`, `vs` (f32 `[n_head]` each).
    #[allow(clippy::too_many_arguments)]
    pub fn kv_append_i8(
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
        (ks, vs): (CUdeviceptr, CUdeviceptr),
    ) -> Result<()> {
        let (r, nn, tt, cc) = (i32_of(rows, "rows")?, i32_of(n, "n")?, i32_of(t, "t")?, i32_of(ctx, "ctx")?);
        let cfg = grid_stride(rows * n / 8, 256);
        launch!(self, kv_append_i8, "kv_append_i8", cfg, [&qkv, &k_cache, &v_cache, &slots, &r, &nn, &tt, &len, &cc, &ks, &vs])
    }

    /// PDL. [`Kernels::decoder_self_attention_split`] over this layer's int8 caches, in splits of
    /// [`SPLIT_KEYS_I8`] keys (`n_splits` = ctx / that, rounded up).
    #[allow(clippy::too_many_arguments)]
    pub fn decoder_self_attention_split_i8(
        &self,
        qkv: CUdeviceptr,
        k_cache: CUdeviceptr,
        v_cache: CUdeviceptr,
        slots: CUdeviceptr,
        part: CUdeviceptr,
        (rows, n, n_head, t): (usize, usize, usize, usize),
        len: CUdeviceptr,
        ctx: usize,
        n_splits: usize,
        merge: Option<(CUdeviceptr, CUdeviceptr)>,
        (ks, vs): (CUdeviceptr, CUdeviceptr),
    ) -> Result<()> {
        let (nn, tt, cc) = (i32_of(n, "n")?, i32_of(t, "t")?, i32_of(ctx, "ctx")?);
        let (cnt, out) = merge.unwrap_or((0, 0));
        let cfg = LaunchConfig { grid_dim: (rows as u32, n_head as u32, n_splits as u32), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
        launch!(
            self,
            decoder_self_attention_split_i8,
            "decoder_self_attention_split_i8",
            cfg,
            [&qkv, &k_cache, &v_cache, &slots, &part, &cnt, &out, &nn, &tt, &len, &cc, &ks, &vs]
        )
    }

    /// PDL. [`Kernels::cross_attention_split`] over int8 cross K/V, in splits of
    /// [`SPLIT_KEYS_I8`] keys: `kv.offset` and `ldkv` count bytes (= values).
    #[allow(clippy::too_many_arguments)]
    pub fn cross_attention_split_i8(
        &self,
        q: CUdeviceptr,
        ldq: usize,
        kv: CrossKv,
        ldkv: usize,
        n_keys: usize,
        part: CUdeviceptr,
        (rows, n, n_head): (usize, usize, usize),
        merge: Option<(CUdeviceptr, CUdeviceptr)>,
        (ks, vs): (CUdeviceptr, CUdeviceptr),
    ) -> Result<()> {
        let (lq, lkv, nk, nn) = (i32_of(ldq, "ldq")?, ldkv as i64, i32_of(n_keys, "n_keys")?, i32_of(n, "n")?);
        let (table, off, t) = (kv.table, kv.offset as i64, i32_of(kv.tokens, "tokens")?);
        let (cnt, out) = merge.unwrap_or((0, 0));
        let splits = n_keys.div_ceil(SPLIT_KEYS_I8) as u32;
        let cfg = LaunchConfig { grid_dim: (rows as u32, n_head as u32, splits), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
        launch!(self, cross_attention_split_i8, "cross_attention_split_i8", cfg, [&q, &lq, &table, &off, &t, &lkv, &nk, &part, &cnt, &out, &nn, &ks, &vs])
    }

    /// One window's cross K/V, fp16 `[rows][n_layer * 2n]` at `src`, into int8 at `dst` with
    /// the cross scales of `scales` (all of them, f32 `[4][n_layer][n_head]`).
    pub fn quantize_cross_kv(&self, src: CUdeviceptr, dst: CUdeviceptr, rows: usize, n: usize, n_layer: usize, scales: CUdeviceptr) -> Result<()> {
        let (r, nn, nl) = (i32_of(rows, "rows")?, i32_of(n, "n")?, i32_of(n_layer, "layers")?);
        let cfg = grid_stride(rows * n_layer * 2 * n / 8, 256);
        launch!(self, quantize_cross_kv, "quantize_cross_kv", cfg, [&src, &dst, &r, &nn, &nl, &scales])
    }

    /// PDL. Calibration: folds the largest |x| per head of `rows` rows (fp16, stride `ld`) over
    /// `cols` columns into `stats` (f32 `[4][n_layer][n_head]`); column `c` is kind
    /// `kind0 + (c / n) % 2` of layer `layer0 + c / (2n)` (see kv_absmax in kv_quant.cu).
    #[allow(clippy::too_many_arguments)]
    pub fn kv_absmax(&self, x: CUdeviceptr, rows: usize, ld: usize, cols: usize, n: usize, n_layer: usize, (kind0, layer0): (usize, usize), stats: CUdeviceptr) -> Result<()> {
        if rows == 0 {
            return Ok(());
        }
        let (r, l, nn, nl) = (i32_of(rows, "rows")?, ld as i64, i32_of(n, "n")?, i32_of(n_layer, "layers")?);
        let (k0, l0) = (i32_of(kind0, "kind")?, i32_of(layer0, "layer")?);
        let row_blocks = rows.div_ceil(64).min(64) as u32;
        let cfg = LaunchConfig { grid_dim: ((cols / D_HEAD) as u32, row_blocks, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        launch!(self, kv_absmax, "kv_absmax", cfg, [&x, &r, &l, &nn, &nl, &k0, &l0, &stats])
    }
}
