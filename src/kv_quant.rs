//! The int8 KV cache (`build --int8-kv`, issue 4): the decoder's self-attention keys and values
//! and the precomputed cross-attention keys and values stored as int8, with one f32 scale per
//! (kind, layer, head). The kinds are self K, self V, cross K and cross V.
//!
//! The scales come from calibration at build time: the engine runs with fp16 K/V on calibration
//! audio and records the largest |value| of each (kind, layer, head) ([`KvStats`]); the scale is
//! that maximum over 127, and `q = round(v / scale)` clamped to -127..=127 (values beyond the
//! calibrated range saturate). Both backends quantize with [`quantize`]'s rule, the CPU backend
//! as a round trip in f32 ([`round_trip`]), so it measures what the int8 cache alone costs.
use anyhow::{bail, Result};

/// Self K, self V, cross K, cross V.
pub const KINDS: usize = 4;
pub const SELF_K: usize = 0;
pub const SELF_V: usize = 1;
pub const CROSS_K: usize = 2;
pub const CROSS_V: usize = 3;

/// The engine tensor that holds the scales, f32 `[KINDS][n_layer][n_head]`.
pub const SCALES_TENSOR: &str = "kv.scales";

/// One f32 scale per (kind, layer, head), `[KINDS][n_layer][n_head]`.
#[derive(Clone, Debug, PartialEq)]
pub struct KvScales {
    pub n_layer: usize,
    pub n_head: usize,
    pub scales: Vec<f32>,
}

impl KvScales {
    pub fn new(n_layer: usize, n_head: usize, scales: Vec<f32>) -> Result<Self> {
        if scales.len() != KINDS * n_layer * n_head {
            bail!("int8 KV scales: {} values, expected {KINDS} x {n_layer} layers x {n_head} heads", scales.len());
        }
        if let Some(s) = scales.iter().find(|s| !s.is_finite() || **s < 0.0) {
            bail!("int8 KV scales: invalid scale {s}");
        }
        Ok(KvScales { n_layer, n_head, scales })
    }

    pub fn index(&self, kind: usize, layer: usize, head: usize) -> usize {
        (kind * self.n_layer + layer) * self.n_head + head
    }

    pub fn get(&self, kind: usize, layer: usize, head: usize) -> f32 {
        self.scales[self.index(kind, layer, head)]
    }

    /// `values` (rows of `n_head * d_head` values of one kind and layer) through the int8 round
    /// trip, head by head.
    pub fn round_trip_rows(&self, kind: usize, layer: usize, values: &mut [f32], n: usize) {
        let d_head = n / self.n_head;
        for row in values.chunks_mut(n) {
            for (h, part) in row.chunks_mut(d_head).enumerate() {
                let s = self.get(kind, layer, h);
                part.iter_mut().for_each(|v| *v = round_trip(*v, s));
            }
        }
    }
}

/// The int8 level of `v` under `scale` (0 where the scale is 0: a head that was all zeros).
pub fn quantize(v: f32, scale: f32) -> i8 {
    if scale == 0.0 {
        return 0;
    }
    (v / scale).round().clamp(-127.0, 127.0) as i8
}

/// `v` as the int8 cache gives it back.
pub fn round_trip(v: f32, scale: f32) -> f32 {
    quantize(v, scale) as f32 * scale
}

/// Largest |value| seen per (kind, layer, head), `[KINDS][n_layer][n_head]`: what calibration
/// records.
#[derive(Clone, Debug)]
pub struct KvStats {
    pub n_layer: usize,
    pub n_head: usize,
    pub amax: Vec<f32>,
}

impl KvStats {
    pub fn new(n_layer: usize, n_head: usize) -> Self {
        KvStats { n_layer, n_head, amax: vec![0.0; KINDS * n_layer * n_head] }
    }

    /// Records rows of `n` values (heads side by side) of one kind and layer.
    pub fn record(&mut self, kind: usize, layer: usize, values: &[f32], n: usize) {
        let d_head = n / self.n_head;
        for row in values.chunks(n) {
            for (h, part) in row.chunks(d_head).enumerate() {
                let i = (kind * self.n_layer + layer) * self.n_head + h;
                self.amax[i] = part.iter().fold(self.amax[i], |m, v| m.max(v.abs()));
            }
        }
    }

    /// The scales: each maximum over 127. Fails if a value was not finite.
    pub fn scales(&self) -> Result<KvScales> {
        if self.amax.iter().any(|a| !a.is_finite()) {
            bail!("int8 KV calibration saw infinite or NaN keys or values");
        }
        KvScales::new(self.n_layer, self.n_head, self.amax.iter().map(|a| a / 127.0).collect())
    }

    /// The largest and the median of the maxima of each kind (for the build's report).
    pub fn summary(&self) -> String {
        let names = ["self K", "self V", "cross K", "cross V"];
        let per = self.n_layer * self.n_head;
        names
            .iter()
            .enumerate()
            .map(|(k, name)| {
                let mut v: Vec<f32> = self.amax[k * per..(k + 1) * per].to_vec();
                v.sort_by(f32::total_cmp);
                format!("{name} max {:.3} (median over heads {:.3})", v.last().copied().unwrap_or(0.0), v[v.len() / 2])
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_saturates_and_keeps_zero_scales_at_zero() {
        assert_eq!(quantize(1.0, 0.01), 100);
        assert_eq!(quantize(-5.0, 0.01), -127);
        assert_eq!(quantize(3.0, 0.0), 0);
        assert!((round_trip(0.503, 0.01) - 0.50).abs() < 1e-6);
    }

    #[test]
    fn stats_give_amax_over_127_per_kind_layer_head() {
        let mut st = KvStats::new(2, 2);
        // n = 4: two heads of two values.
        st.record(CROSS_V, 1, &[1.0, -3.0, 0.5, 0.25, 2.0, 0.0, -0.75, 0.0], 4);
        let s = st.scales().unwrap();
        assert_eq!(s.get(CROSS_V, 1, 0), 3.0 / 127.0);
        assert_eq!(s.get(CROSS_V, 1, 1), 0.75 / 127.0);
        assert_eq!(s.get(SELF_K, 0, 0), 0.0);
        assert!(KvScales::new(2, 2, vec![0.0; 3]).is_err());
    }
}
