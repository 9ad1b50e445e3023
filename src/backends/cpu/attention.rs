//! Multi-head scaled dot-product attention on strided views (heads are column blocks).
use super::ops::{matmul_on, matmul_ptr, softmax_unnormalized, SharedMut, View};
use rayon::prelude::*;

/// Query rows per task: a 128 x 1500 score block (750 KB) stays in L2.
const Q_BLOCK: usize = 128;
/// Multiply-adds (per product) from which heads and blocks are spread over threads.
const PAR_MIN_WORK: usize = 1 << 18;

/// For every head `h` (columns `h*dh..(h+1)*dh` of `q`, `k`, `v`) and query row `r`:
/// `out[r][h*dh..] = softmax(q_h[r] · k_hᵀ) · v_h`. The query scale (d_head^-1/2) is already
/// folded into `q`. With `causal = Some(offset)`, query row `r` sees keys `0..=offset + r` only.
/// `out` is row-major `[q.rows][n_head*dh]`. `parallel` spreads heads and query blocks over threads.
pub fn attention(q: View, k: View, v: View, n_head: usize, causal: Option<usize>, out: &mut [f32], parallel: bool) {
    let n = q.cols;
    let dh = n / n_head;
    let (m, len) = (q.rows, k.rows);
    assert!(k.cols == n && v.cols == n && v.rows == len && n_head * dh == n);
    assert!(out.len() >= m * n);
    if let Some(offset) = causal {
        assert!(offset + m <= len, "causal attention needs a key for every query");
    }
    // Spreading tiny problems (a decoder step's self-attention) costs more than it saves.
    let parallel = parallel && m * len * n >= PAR_MIN_WORK;
    let n_blocks = m.div_ceil(Q_BLOCK);
    let dst = SharedMut(out.as_mut_ptr());
    let out_len = out.len();
    let task = |job: usize| {
        let (h, b) = (job / n_blocks, job % n_blocks);
        let r0 = b * Q_BLOCK;
        let rows = Q_BLOCK.min(m - r0);
        let mut scores = vec![0.0f32; rows * len];
        let qh = q.rows(r0, rows).cols(h * dh, dh);
        matmul_on(&mut scores, len, qh, k.cols(h * dh, dh).t(), false, false);
        // Unnormalised probabilities; each output row is divided by its sum after P·V.
        let mut inv_sums = vec![0.0f32; rows];
        for (i, row) in scores.chunks_exact_mut(len).enumerate() {
            let visible = causal.map_or(len, |offset| offset + r0 + i + 1);
            inv_sums[i] = 1.0 / softmax_unnormalized(&mut row[..visible]);
            row[visible..].fill(0.0);
        }
        let p = View::new(&scores, rows, len);
        let start = r0 * n + h * dh;
        // SAFETY: this task alone writes rows r0..r0+rows, columns h*dh..(h+1)*dh of `out`;
        // matmul_ptr checks them against the length of `out`.
        let base = dst; // the whole wrapper (Sync), not its raw field
        unsafe {
            let d = SharedMut(base.0.add(start));
            matmul_ptr(d, out_len - start, n, p, v.cols(h * dh, dh), false, false);
            for (i, inv) in inv_sums.iter().enumerate() {
                std::slice::from_raw_parts_mut(d.0.add(i * n), dh).iter_mut().for_each(|v| *v *= inv);
            }
        }
    };
    if parallel {
        (0..n_head * n_blocks).into_par_iter().for_each(task);
    } else {
        (0..n_head * n_blocks).for_each(task);
    }
}
