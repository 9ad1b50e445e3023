//! f32 building blocks of the CPU backend: matrix products through the `gemm` crate, linear
//! layers, LayerNorm, exact (erf) GELU and softmax.
//!
//! Shapes here are internal invariants checked by the callers (the model code validates every
//! input first), so a violated bound is a bug and panics via `assert!` rather than corrupting memory.
use gemm::Parallelism;
use rayon::prelude::*;

/// LayerNorm epsilon of openai-whisper (torch's default).
pub const LN_EPS: f64 = 1e-5;

/// A strided read-only matrix: element (r, c) is `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> View<'a> {
    /// A dense row-major matrix.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        View { data, rows, cols, rs: cols, cs: 1 }
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        View { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }

    /// Columns `c0..c0 + n` (no copy).
    pub fn cols(self, c0: usize, n: usize) -> Self {
        assert!(c0 + n <= self.cols);
        let start = (c0 * self.cs).min(self.data.len());
        View { data: &self.data[start..], rows: self.rows, cols: n, rs: self.rs, cs: self.cs }
    }

    /// Rows `r0..r0 + n` (no copy).
    pub fn rows(self, r0: usize, n: usize) -> Self {
        assert!(r0 + n <= self.rows);
        let start = (r0 * self.rs).min(self.data.len());
        View { data: &self.data[start..], rows: n, cols: self.cols, rs: self.rs, cs: self.cs }
    }

    fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            assert!((self.rows - 1) * self.rs + (self.cols - 1) * self.cs < self.data.len(), "view out of bounds");
        }
    }
}

/// A raw pointer that rayon tasks may share; every user writes a disjoint region.
#[derive(Clone, Copy)]
pub struct SharedMut(pub *mut f32);
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

/// Below this many multiply-adds a product runs on the calling thread.
const PAR_MIN_WORK: usize = 1 << 17;
/// From this many rows on, gemm parallelises itself; below, we split the columns.
const GEMM_PAR_MIN_ROWS: usize = 64;

/// `dst[m][n] (+)= a · b` with `dst` row-major of row stride `dst_rs` (column stride 1).
/// `accumulate` adds to what `dst` holds (bias or residual), otherwise overwrites it.
/// Large products run on all threads.
pub fn matmul(dst: &mut [f32], dst_rs: usize, a: View, b: View, accumulate: bool) {
    matmul_on(dst, dst_rs, a, b, accumulate, true);
}

/// [`matmul`], on the calling thread only unless `allow_par`.
pub fn matmul_on(dst: &mut [f32], dst_rs: usize, a: View, b: View, accumulate: bool, allow_par: bool) {
    // SAFETY: `dst` is an exclusive slice of `dst.len()` values.
    unsafe { matmul_ptr(SharedMut(dst.as_mut_ptr()), dst.len(), dst_rs, a, b, accumulate, allow_par) }
}

/// [`matmul_on`] into raw memory, for tasks that write disjoint blocks of one buffer.
///
/// # Safety
/// `dst` must be valid for `dst_len` values, and no one else may access the `m` rows x `n`
/// columns (row stride `dst_rs`) this writes while it runs. Bounds are checked against `dst_len`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn matmul_ptr(
    dst: SharedMut,
    dst_len: usize,
    dst_rs: usize,
    a: View,
    b: View,
    accumulate: bool,
    allow_par: bool,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "inner dimensions differ");
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst_rs >= n && (m - 1) * dst_rs + n <= dst_len, "destination out of bounds");
    a.check();
    b.check();
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                std::slice::from_raw_parts_mut(dst.0.add(r * dst_rs), n).fill(0.0);
            }
        }
        return;
    }
    let work = m * n * k;
    let threads = if allow_par { rayon::current_num_threads() } else { 1 };
    if work < PAR_MIN_WORK || threads == 1 {
        gemm_raw(m, n, k, dst.0, dst_rs, a, b, 0, accumulate, Parallelism::None);
    } else if m >= GEMM_PAR_MIN_ROWS {
        gemm_raw(m, n, k, dst.0, dst_rs, a, b, 0, accumulate, Parallelism::Rayon(0));
    } else {
        // Few rows: gemm would run on one thread, so split the output columns across threads.
        let chunk = n.div_ceil(threads * 4).next_multiple_of(16).max(16);
        (0..n.div_ceil(chunk)).into_par_iter().for_each(|c| {
            let c0 = c * chunk;
            let w = chunk.min(n - c0);
            let p = dst;
            // SAFETY: column blocks are disjoint and inside the checked bounds.
            unsafe { gemm_raw(m, w, k, p.0, dst_rs, a, b, c0, accumulate, Parallelism::None) };
        });
    }
}

/// # Safety
/// `dst` must hold `m` rows of stride `dst_rs` with at least `c0 + n` columns; `a` and `b` checked.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_raw(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    a: View,
    b: View,
    c0: usize,
    accumulate: bool,
    par: Parallelism,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst.add(c0),
        1,
        dst_rs as isize,
        accumulate,
        a.data.as_ptr(),
        a.cs as isize,
        a.rs as isize,
        b.data.as_ptr().add(c0 * b.cs),
        b.cs as isize,
        b.rs as isize,
        1.0,
        1.0,
        false,
        false,
        false,
        par,
    );
}

/// A linear layer `y = x · Wᵀ + b`, W stored as torch stores it: `[n_out][n_in]` row-major.
pub struct Linear {
    pub w: Vec<f32>,
    pub b: Vec<f32>,
    pub n_in: usize,
    pub n_out: usize,
}

impl Linear {
    /// `w`: `[n_out][n_in]`; `b`: `n_out` values or empty for none.
    pub fn new(w: Vec<f32>, b: Vec<f32>, n_in: usize, n_out: usize) -> Self {
        assert_eq!(w.len(), n_in * n_out);
        let b = if b.is_empty() { vec![0.0; n_out] } else { b };
        assert_eq!(b.len(), n_out);
        Linear { w, b, n_in, n_out }
    }

    /// Wᵀ as the right-hand side of a product.
    pub fn wt(&self) -> View<'_> {
        View::new(&self.w, self.n_out, self.n_in).t()
    }

    /// `y[m][n_out] = x · Wᵀ + b` for `x` any `m x n_in` view.
    pub fn forward(&self, x: View, y: &mut [f32]) {
        let m = x.rows;
        assert!(y.len() >= m * self.n_out);
        for row in y[..m * self.n_out].chunks_exact_mut(self.n_out) {
            row.copy_from_slice(&self.b);
        }
        matmul(y, self.n_out, x, self.wt(), true);
    }

    /// `y[m][n_out] += x · Wᵀ + b` (residual connection).
    pub fn forward_add(&self, x: View, y: &mut [f32]) {
        let m = x.rows;
        assert!(y.len() >= m * self.n_out);
        for row in y[..m * self.n_out].chunks_exact_mut(self.n_out) {
            for (v, b) in row.iter_mut().zip(&self.b) {
                *v += b;
            }
        }
        matmul(y, self.n_out, x, self.wt(), true);
    }
}

/// LayerNorm parameters.
pub struct Norm {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
}

impl Norm {
    /// `out[r] = LN(x[r])` for every row of `x` (rows of `gamma.len()` values).
    pub fn forward(&self, x: &[f32], out: &mut [f32]) {
        let n = self.gamma.len();
        assert_eq!(x.len(), out.len());
        let rows_per_task = (1 << 14) / n + 1;
        out.par_chunks_mut(n * rows_per_task).zip(x.par_chunks(n * rows_per_task)).for_each(|(o, x)| {
            for (o, x) in o.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
                layer_norm_row(x, &self.gamma, &self.beta, o);
            }
        });
    }
}

fn layer_norm_row(x: &[f32], gamma: &[f32], beta: &[f32], out: &mut [f32]) {
    // Moments in f64: torch accumulates in f32 with a cascade sum; f64 is at least as accurate.
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x.iter().map(|&v| (v as f64 - mean) * (v as f64 - mean)).sum::<f64>() / n;
    let rstd = 1.0 / (var + LN_EPS).sqrt();
    let (mean, rstd) = (mean as f32, rstd as f32);
    for i in 0..x.len() {
        out[i] = (x[i] - mean) * rstd * gamma[i] + beta[i];
    }
}

/// Runs `$body` compiled for AVX2 when the CPU has it (checked once, cached by std), else for
/// the baseline target: the elementwise loops below then auto-vectorise 8 lanes wide.
macro_rules! simd_dispatch {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $t:ty),*) -> $ret:ty $body:block) => {
        $(#[$attr])*
        $vis fn $name($($arg: $t),*) -> $ret {
            #[inline(always)]
            fn generic($($arg: $t),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $t),*) -> $ret {
                    generic($($arg),*)
                }
                if std::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2.
                    return unsafe { avx2($($arg),*) };
                }
            }
            generic($($arg),*)
        }
    };
}

/// e^x for x in about [-87, 88] (clamped), branch-free so that loops over it vectorise.
/// Cephes' expf: range reduction by ln 2 in two parts and a degree-6 polynomial, ~1 ulp.
#[inline(always)]
#[allow(clippy::excessive_precision)] // the published constants, as published
fn exp_approx(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const ROUND: f32 = 12582912.0; // 1.5 * 2^23: adding and subtracting it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    // t's low mantissa bits hold n (t and ROUND share a binade): an integer difference, which
    // vectorises where `n as i32` (a saturating conversion) does not.
    let i = t.to_bits().wrapping_sub(ROUND.to_bits()) as i32;
    let r = x - n * 0.693359375 - n * -2.12194440e-4;
    let mut y = 1.9875691500e-4f32;
    y = y * r + 1.3981999507e-3;
    y = y * r + 8.3334519073e-3;
    y = y * r + 4.1665795894e-2;
    y = y * r + 1.6666665459e-1;
    y = y * r + 5.0000001201e-1;
    y = y * r * r + r + 1.0;
    y * f32::from_bits(((i + 127) as u32) << 23)
}

/// erf(x) as a rational function, x·P(x²)/Q(x²) on [-4, 4] (erf is ±1 in f32 beyond): the
/// approximation Eigen (`generic_fast_erf_float`) and XLA use for f32. Error at most 4.2e-7
/// (7 ulps near ±1) and 2.6e-7 relative for |x| < 1, checked against libm's f64 erf in the
/// tests; torch's own vectorised CPU erf (Abramowitz-Stegun 7.1.26) is off by up to 1.5e-7.
/// Branch-free, so loops over it vectorise: libm's erff cost ~15% of a transcription.
#[inline(always)]
#[allow(clippy::excessive_precision)] // the published constants, as published
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.72614225801306e-10f32;
    p = p * x2 + 2.77068142495902e-08;
    p = p * x2 - 2.10102402082508e-06;
    p = p * x2 - 5.69250639462346e-05;
    p = p * x2 - 7.34990630326855e-04;
    p = p * x2 - 2.95459980854025e-03;
    p = p * x2 - 1.60960333262415e-02;
    let mut q = -1.45660718464996e-05f32;
    q = q * x2 - 2.13374055278905e-04;
    q = q * x2 - 1.68282697438203e-03;
    q = q * x2 - 7.37332916720468e-03;
    q = q * x2 - 1.42647390514189e-02;
    (x * p / q).clamp(-1.0, 1.0)
}

/// Exact GELU, `x/2 · (1 + erf(x/√2))` (torch's `approximate='none'`).
#[inline(always)]
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

simd_dispatch! {
    fn gelu_slice(x: &mut [f32]) -> () {
        for v in x.iter_mut() {
            *v = gelu(*v);
        }
    }
}

/// [`gelu`] in place, in parallel.
pub fn gelu_inplace(x: &mut [f32]) {
    x.par_chunks_mut(1 << 14).for_each(gelu_slice);
}

simd_dispatch! {
    /// `row[i] = e^(row[i] - max(row))` in place; returns the sum, for the caller to normalise
    /// (softmax = row / sum). f32 throughout, max subtracted first, as torch does.
    pub fn softmax_unnormalized(row: &mut [f32]) -> f32 {
        let mut lanes = [f32::NEG_INFINITY; 8];
        let mut chunks = row.chunks_exact(8);
        for c in &mut chunks {
            for l in 0..8 {
                lanes[l] = lanes[l].max(c[l]);
            }
        }
        let max = chunks.remainder().iter().fold(lanes.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)), |m, &v| m.max(v));
        let mut sums = [0.0f32; 8];
        let mut chunks = row.chunks_exact_mut(8);
        for c in &mut chunks {
            for l in 0..8 {
                c[l] = exp_approx(c[l] - max);
                sums[l] += c[l];
            }
        }
        let mut sum = sums.iter().sum::<f32>();
        for v in chunks.into_remainder() {
            *v = exp_approx(*v - max);
            sum += *v;
        }
        sum
    }
}

/// Softmax of a row in place.
pub fn softmax_inplace(row: &mut [f32]) {
    let inv = 1.0 / softmax_unnormalized(row);
    row.iter_mut().for_each(|v| *v *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: View, b: View) -> Vec<f32> {
        let mut out = vec![0.0; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                let mut s = 0.0f64;
                for k in 0..a.cols {
                    s += a.data[i * a.rs + k * a.cs] as f64 * b.data[k * b.rs + j * b.cs] as f64;
                }
                out[i * b.cols + j] = s as f32;
            }
        }
        out
    }

    fn pseudo(n: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matmul_matches_naive_in_every_regime() {
        for &(m, k, n) in &[(1, 64, 1000), (3, 200, 5000), (8, 512, 3001), (20, 100, 2000), (5, 7, 3), (100, 300, 700), (1, 3000, 1)] {
            let a = pseudo(m * k, 1);
            let w = pseudo(n * k, 2);
            let av = View::new(&a, m, k);
            let bv = View::new(&w, n, k).t();
            let mut out = vec![0.0; m * n];
            matmul(&mut out, n, av, bv, false);
            let want = naive(av, bv);
            let err = out.iter().zip(&want).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
            assert!(err < 1e-3, "m={m} k={k} n={n}: max error {err}");
        }
    }

    #[test]
    fn exp_and_softmax_are_accurate() {
        for i in -8700..=8800 {
            let x = i as f32 / 100.0;
            let (got, want) = (exp_approx(x) as f64, (x as f64).exp());
            assert!((got - want).abs() <= 3e-7 * want, "exp({x}) = {got}, want {want}");
        }
        let mut row: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin() * 5.0).collect();
        let want: Vec<f64> = {
            let m = row.iter().fold(f64::MIN, |m, &v| m.max(v as f64));
            let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
            let s: f64 = e.iter().sum();
            e.iter().map(|v| v / s).collect()
        };
        softmax_inplace(&mut row);
        for (g, w) in row.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-6 * w.max(1e-3), "{g} vs {w}");
        }
    }

    #[test]
    fn erf_is_accurate() {
        let (mut worst, mut worst_small) = (0.0f64, 0.0f64);
        for i in -600_000..=600_000 {
            let x = i as f32 / 100_000.0;
            let want = libm::erf(x as f64);
            let err = (erf(x) as f64 - want).abs();
            assert!(err <= 4.5e-7, "erf({x}) = {} vs {want}", erf(x));
            if x.abs() < 1.0 {
                worst_small = worst_small.max(err / want.abs().max(1e-38));
            }
            worst = worst.max(err);
        }
        eprintln!("erf: worst absolute error {worst:e}, relative below 1: {worst_small:e}");
        assert!(worst_small <= 3e-7);
    }

    #[test]
    fn gelu_matches_f64_reference() {
        for i in -2000..2000 {
            let x = i as f32 / 200.0;
            let want = 0.5 * x as f64 * (1.0 + libm::erf(x as f64 / std::f64::consts::SQRT_2));
            assert!((gelu(x) as f64 - want).abs() < 1e-6 * (1.0 + want.abs()), "x={x}");
            let mut v = [x; 19];
            gelu_inplace(&mut v);
            assert_eq!(v[18], gelu(x));
        }
    }
}
