//! Products of a few rows with a large row-major weight matrix (decoder steps): `y = x · Wᵀ`
//! with `x` `m x k` (m <= 8) and `W` `n x k`. This is memory-bound: the weights are read once,
//! as one sequential stream (what the hardware prefetcher handles best), and every weight row
//! is dotted with all `m` rows while it is in L1, with enough independent accumulators to
//! hide the FMA latency. gemm has no such path: its GEMV handles one row at a time (m passes
//! over the weights) and its packed kernel repacks the whole weight matrix on every call; on
//! the logits product (n_vocab x n_state) this kernel is ~1.5x faster for m = 1 and ~3x for m = 5.
use super::ops::SharedMut;
use rayon::prelude::*;

/// Weight rows per task (a few hundred KB: long sequential streams, yet enough tasks to share).
const ROWS_PER_TASK: usize = 256;

/// `dst[r][j] (+)= Σ_k x[r][k] · w[j][k]` for r < m, j < n. `x`, `w` and `dst` have row
/// strides `x_rs`, `w_rs` and `dst_rs` (unit column strides). Runs on rayon's threads when `parallel`.
///
/// # Safety
/// `dst` must be valid for `dst_len` values and not accessed by others while this runs.
#[allow(clippy::too_many_arguments)]
pub unsafe fn skinny_matmul(
    out: SharedMut,
    dst_len: usize,
    dst_rs: usize,
    x: &[f32],
    x_rs: usize,
    w: &[f32],
    w_rs: usize,
    m: usize,
    n: usize,
    k: usize,
    accumulate: bool,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(m <= 8, "skinny_matmul takes at most 8 rows");
    assert!((m - 1) * x_rs + k <= x.len() && (n - 1) * w_rs + k <= w.len() && (m - 1) * dst_rs + n <= dst_len);
    let task = |t: usize| {
        let j0 = t * ROWS_PER_TASK;
        let j1 = (j0 + ROWS_PER_TASK).min(n);
        let o = out;
        // SAFETY: this task alone writes columns j0..j1 of every row; bounds checked above.
        unsafe { block(o.0, dst_rs, x, x_rs, w, w_rs, m, j0, j1, k, accumulate) };
    };
    let tasks = n.div_ceil(ROWS_PER_TASK);
    if parallel && tasks > 1 {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
}

/// Whether this CPU runs the kernel (x86-64 with AVX2 and FMA); otherwise callers use gemm.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Weight rows `j0..j1` against all `m` rows.
#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
unsafe fn block(dst: *mut f32, dst_rs: usize, x: &[f32], x_rs: usize, w: &[f32], w_rs: usize, m: usize, j0: usize, j1: usize, k: usize, acc: bool) {
    #[cfg(target_arch = "x86_64")]
    {
        use avx::rows;
        // R rows x U accumulators each: 8-12 independent FMA chains, all in registers.
        match m {
            1 => rows::<1, 4>(dst, dst_rs, x, x_rs, w, w_rs, j0, j1, k, acc),
            2 => rows::<2, 4>(dst, dst_rs, x, x_rs, w, w_rs, j0, j1, k, acc),
            3 => rows::<3, 3>(dst, dst_rs, x, x_rs, w, w_rs, j0, j1, k, acc),
            4 => rows::<4, 2>(dst, dst_rs, x, x_rs, w, w_rs, j0, j1, k, acc),
            5 => rows::<5, 2>(dst, dst_rs, x, x_rs, w, w_rs, j0, j1, k, acc),
            6 => rows::<6, 2>(dst, dst_rs, x, x_rs, w, w_rs, j0, j1, k, acc),
            7 => rows::<7, 1>(dst, dst_rs, x, x_rs, w, w_rs, j0, j1, k, acc),
            _ => rows::<8, 1>(dst, dst_rs, x, x_rs, w, w_rs, j0, j1, k, acc),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("the skinny kernel needs x86-64 (see `available`)")
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    /// All `R` rows of `x` against weight rows `j0..j1`, one weight row at a time: each
    /// weight vector is loaded once and multiplied into R x U independent accumulators.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn rows<const R: usize, const U: usize>(
        dst: *mut f32,
        dst_rs: usize,
        x: &[f32],
        x_rs: usize,
        w: &[f32],
        w_rs: usize,
        j0: usize,
        j1: usize,
        k: usize,
        accumulate: bool,
    ) {
        let step = 8 * U;
        let ku = k / step * step;
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        for j in j0..j1 {
            let row = wp.add(j * w_rs);
            let mut acc = [[_mm256_setzero_ps(); U]; R];
            let mut kk = 0;
            while kk < ku {
                let mut wv = [_mm256_setzero_ps(); U];
                for (u, wv) in wv.iter_mut().enumerate() {
                    *wv = _mm256_loadu_ps(row.add(kk + 8 * u));
                }
                for (r, acc) in acc.iter_mut().enumerate() {
                    for (u, acc) in acc.iter_mut().enumerate() {
                        let xv = _mm256_loadu_ps(xp.add(r * x_rs + kk + 8 * u));
                        *acc = _mm256_fmadd_ps(xv, wv[u], *acc);
                    }
                }
                kk += step;
            }
            for (r, acc) in acc.iter().enumerate() {
                let mut v = acc[0];
                for a in &acc[1..] {
                    v = _mm256_add_ps(v, *a);
                }
                let mut s = hsum(v);
                let xr = xp.add(r * x_rs);
                for t in ku..k {
                    s = (*xr.add(t)).mul_add(*row.add(t), s);
                }
                let d = dst.add(r * dst_rs + j);
                *d = if accumulate { *d + s } else { s };
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}
