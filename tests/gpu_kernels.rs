//! Every CUDA kernel and the cuBLASLt GEMMs against a CPU reference (f64, from the same
//! fp16-rounded inputs) on fresh random inputs: relative error ‖gpu − ref‖ / ‖ref‖ at most 2e-3.
//! Outputs are poisoned (NaN) before each run, so an unwritten element fails.
//!
//! GPU only: `scripts/gpu-test.sh` runs these (`cargo test --release --test gpu_kernels -- --ignored`).
//! Without a GPU they fail with the reason.
use half::f16;
use whisper_trt::backends::cuda::context::{DeviceBuffer, Gpu};
use whisper_trt::backends::cuda::gemm::{pick_tactics, Epilogue, Gemm, GemmShape, Out};
use whisper_trt::backends::cuda::kernels::{CrossKv, GemvKind, GemvOut, Kernels, KvAppend, DEFAULT_GEMV_KIND};
use whisper_trt::engine::nvrtc;

const TOL: f64 = 2e-3;

struct Rng(u64);

impl Rng {
    /// Seeded from the clock (printed, so a failure can be replayed with WHISPER_TRT_SEED).
    fn new(tag: &str) -> Self {
        let seed = std::env::var("WHISPER_TRT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
        });
        println!("{tag}: seed {seed}");
        Rng(seed ^ tag.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [-scale, scale).
    fn uniform(&mut self, scale: f32) -> f32 {
        ((self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
    }

    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform(scale)).collect()
    }

    /// Values already representable in fp16 (so the reference sees what the GPU sees).
    fn vec16(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| r16(self.uniform(scale))).collect()
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn r16(v: f32) -> f32 {
    f16::from_f32(v).to_f32()
}

fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

struct Fx {
    gpu: Gpu,
    k: Kernels,
}

fn fixture() -> Fx {
    let gpu = Gpu::new(0).unwrap_or_else(|e| panic!("these tests need a GPU: {e:#}"));
    let (major, minor) = gpu.compute_capability;
    let modules = nvrtc::compile_all(major, minor).unwrap_or_else(|e| panic!("{e:#}"));
    let k = Kernels::load(&gpu, &modules).unwrap_or_else(|e| panic!("{e:#}"));
    Fx { gpu, k }
}

impl Fx {
    fn f32s(&self, v: &[f32]) -> DeviceBuffer {
        self.gpu.upload(v).unwrap()
    }

    fn f16s(&self, v: &[f32]) -> DeviceBuffer {
        let h: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
        self.gpu.upload(&h).unwrap()
    }

    fn i32s(&self, v: &[i32]) -> DeviceBuffer {
        self.gpu.upload(v).unwrap()
    }

    /// `bytes` of NaN (all bits set: NaN in f32 and fp16).
    /// A device array of u64 (addresses), uploaded as little-endian i32 pairs.
    fn u64s(&self, v: &[u64]) -> DeviceBuffer {
        let words: Vec<i32> = v.iter().flat_map(|&x| [x as u32 as i32, (x >> 32) as u32 as i32]).collect();
        self.i32s(&words)
    }

    fn poison(&self, bytes: usize) -> DeviceBuffer {
        self.gpu.upload(&vec![0xffu8; bytes]).unwrap()
    }

    fn get_f32(&self, b: &DeviceBuffer, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; n];
        self.gpu.copy_from(b.ptr(), &mut out).unwrap_or_else(|e| panic!("{e:#}"));
        out
    }

    fn get_f16(&self, b: &DeviceBuffer, n: usize) -> Vec<f32> {
        let mut out = vec![f16::ZERO; n];
        self.gpu.copy_from(b.ptr(), &mut out).unwrap_or_else(|e| panic!("{e:#}"));
        out.iter().map(|v| v.to_f32()).collect()
    }
}

fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    if got.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let num: f64 = got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).powi(2)).sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    (num / den.max(1e-300)).sqrt()
}

fn check(name: &str, got: &[f32], want: &[f64]) {
    let e = rel_err(got, want);
    println!("{name}: relative error {e:.2e}");
    assert!(e <= TOL, "{name}: relative error {e:.3e} > {TOL:e}");
}

#[test]
#[ignore = "needs a GPU: scripts/gpu-test.sh"]
fn layernorm_matches_cpu() {
    let fx = fixture();
    let mut r = Rng::new("layernorm");
    // 384 and 1280: the register path of every Whisper width; 1000: its partial last vector;
    // 1538 (not a multiple of 4) and 2048 (wider than the registers hold): the plain loop.
    for (rows, n) in [(37, 384), (5, 1280), (7, 1000), (3, 1538), (2, 2048)] {
        // An offset and a spread, so that centring and scaling both matter.
        let x: Vec<f32> = (0..rows * n).map(|_| 3.0 + r.uniform(2.0)).collect();
        let g: Vec<f32> = (0..n).map(|_| 1.0 + r.uniform(0.5)).collect();
        let b = r.vec(n, 0.5);
        let (dx, dg, db, dy) = (fx.f32s(&x), fx.f32s(&g), fx.f32s(&b), fx.poison(rows * n * 2));
        fx.k.layernorm(dx.ptr(), dg.ptr(), db.ptr(), dy.ptr(), rows, n, n).unwrap();
        let mut want = Vec::with_capacity(rows * n);
        for row in x.chunks(n) {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
            let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
            let rstd = 1.0 / (var + 1e-5).sqrt();
            want.extend(row.iter().enumerate().map(|(i, &v)| (v as f64 - mean) * rstd * g[i] as f64 + b[i] as f64));
        }
        check(&format!("layernorm {rows}x{n}"), &fx.get_f16(&dy, rows * n), &want);
    }
}

#[test]
#[ignore = "needs a GPU: scripts/gpu-test.sh"]
fn conv_front_end_kernels_match_cpu() {
    let fx = fixture();
    let mut r = Rng::new("conv");
    let (batch, n_mels, nf, n) = (2, 80, 64, 64);
    // im2col of conv1: an exact gather of fp16-rounded mel values.
    let mel = r.vec16(batch * n_mels * nf, 2.0);
    let (dmel, dcol) = (fx.f16s(&mel), fx.poison(batch * nf * 3 * n_mels * 2));
    fx.k.im2col_conv1(dmel.ptr(), dcol.ptr(), batch, n_mels, nf).unwrap();
    let mut want = Vec::new();
    for b in 0..batch {
        for f in 0..nf {
            for j in 0..3 {
                for c in 0..n_mels {
                    let src = f as i64 + j as i64 - 1;
                    let v = if (0..nf as i64).contains(&src) { r16(mel[(b * n_mels + c) * nf + src as usize]) } else { 0.0 };
                    want.push(v as f64);
                }
            }
        }
    }
    check("im2col_conv1", &fx.get_f16(&dcol, want.len()), &want);

    // conv2's gather with conv1's GELU.
    let h1 = r.vec16(batch * nf * n, 3.0);
    let ctx = nf / 2;
    let (dh1, dcol2) = (fx.f16s(&h1), fx.poison(batch * ctx * 3 * n * 2));
    fx.k.im2col_conv2_gelu(dh1.ptr(), dcol2.ptr(), batch, nf, n).unwrap();
    let mut want = Vec::new();
    for b in 0..batch {
        for t in 0..ctx {
            for j in 0..3 {
                for c in 0..n {
                    let src = 2 * t as i64 + j as i64 - 1;
                    want.push(if (0..nf as i64).contains(&src) { gelu(h1[(b * nf + src as usize) * n + c] as f64) } else { 0.0 });
                }
            }
        }
    }
    check("im2col_conv2_gelu", &fx.get_f16(&dcol2, want.len()), &want);

    // conv2's GELU and the positional embedding, in place on f32.
    let x = r.vec(batch * ctx * n, 3.0);
    let pos = r.vec16(ctx * n, 1.0);
    let (dx, dpos) = (fx.f32s(&x), fx.f16s(&pos));
    fx.k.gelu_pos(dx.ptr(), dpos.ptr(), batch, ctx, n).unwrap();
    let want: Vec<f64> = x.iter().enumerate().map(|(i, &v)| gelu(v as f64) + pos[i % (ctx * n)] as f64).collect();
    check("gelu_pos", &fx.get_f32(&dx, want.len()), &want);

    // The MLP's GELU, with an odd length (the tail element).
    let u = r.vec16(1001, 4.0);
    let du = fx.f16s(&u);
    fx.k.gelu_f16(du.ptr(), u.len()).unwrap();
    let want: Vec<f64> = u.iter().map(|&v| gelu(v as f64)).collect();
    check("gelu_f16", &fx.get_f16(&du, u.len()), &want);
    // From an address that is not 16-byte aligned (the value-by-value path); the first value
    // must stay as it was.
    let u = r.vec16(523, 4.0);
    let du = fx.f16s(&u);
    fx.k.gelu_f16(du.ptr() + 2, u.len() - 1).unwrap();
    let want: Vec<f64> = u.iter().enumerate().map(|(i, &v)| if i == 0 { v as f64 } else { gelu(v as f64) }).collect();
    check("gelu_f16 unaligned", &fx.get_f16(&du, u.len()), &want);
}

/// softmax(q · Kᵀ) · V over the given key rows, in f64.
fn attend(q: &[f32], keys: &[&[f32]], values: &[&[f32]]) -> Vec<f64> {
    let s: Vec<f64> = keys.iter().map(|k| q.iter().zip(k.iter()).map(|(&a, &b)| a as f64 * b as f64).sum()).collect();
    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
    let sum: f64 = e.iter().sum();
    let mut out = vec![0f64; q.len()];
    for (p, v) in e.iter().zip(values) {
        for (o, &x) in out.iter_mut().zip(v.iter()) {
            *o += p / sum * x as f64;
        }
    }
    out
}

/// CPU cross-attention of `rows` query rows (row stride `ldq`, head h at column h*64) over the
/// keys and values of layer `layer` in `kv`: utterances of `n_keys` rows of stride `ldkv` each,
/// query row r reading utterance `utt(r)`. `[rows][n]`, heads side by side.
#[allow(clippy::too_many_arguments)]
fn cross_reference(
    q: &[f32],
    ldq: usize,
    kv: &[f32],
    ldkv: usize,
    n_keys: usize,
    n: usize,
    layer: usize,
    rows: usize,
    utt: impl Fn(usize) -> usize,
) -> Vec<f64> {
    let mut want = vec![0f64; rows * n];
    for row in 0..rows {
        let kv = &kv[utt(row) * n_keys * ldkv..];
        for h in 0..n / 64 {
            let k0 = layer * 2 * n + h * 64;
            let v0 = k0 + n;
            let keys: Vec<&[f32]> = (0..n_keys).map(|j| &kv[j * ldkv + k0..j * ldkv + k0 + 64]).collect();
            let values: Vec<&[f32]> = (0..n_keys).map(|j| &kv[j * ldkv + v0..j * ldkv + v0 + 64]).collect();
            let qr = &q[row * ldq + h * 64..row * ldq + h * 64 + 64];
            want[row * n + h * 64..row * n + h * 64 + 64].copy_from_slice(&attend(qr, &keys, &values));
        }
    }
    want
}

#[test]
#[ignore = "needs a GPU: scripts/gpu-test.sh"]
fn flash_attention_matches_cpu() {
    let fx = fixture();
    let mut r = Rng::new("flash_attention");
    // Query and key tails (T % 128, T % 64), one block, one row, and a window of full length.
    for (batch, t, n) in [(2, 100, 128), (1, 1500, 384), (1, 64, 64), (3, 257, 128), (2, 1, 64)] {
        let heads = n / 64;
        // Queries small, keys larger: scores with a spread of a few units, as in real layers.
        let mut qkv = vec![0f32; batch * t * 3 * n];
        for (i, v) in qkv.iter_mut().enumerate() {
            let col = i % (3 * n);
            *v = r16(r.uniform(if col < n { 0.5 } else { 2.0 }));
        }
        let (dqkv, dout) = (fx.f16s(&qkv), fx.poison(batch * t * n * 2));
        fx.k.flash_attention(dqkv.ptr(), dout.ptr(), batch, t, n, heads).unwrap();
        let mut want = vec![0f64; batch * t * n];
        for b in 0..batch {
            let row = |i: usize| &qkv[(b * t + i) * 3 * n..(b * t + i + 1) * 3 * n];
            for h in 0..heads {
                let keys: Vec<&[f32]> = (0..t).map(|j| &row(j)[n + h * 64..n + h * 64 + 64]).collect();
                let values: Vec<&[f32]> = (0..t).map(|j| &row(j)[2 * n + h * 64..2 * n + h * 64 + 64]).collect();
                for i in 0..t {
                    let o = attend(&row(i)[h * 64..h * 64 + 64], &keys, &values);
                    want[(b * t + i) * n + h * 64..(b * t + i) * n + h * 64 + 64].copy_from_slice(&o);
                }
            }
        }
        check(&format!("flash_attention batch {batch} T {t} n {n}"), &fx.get_f16(&dout, want.len()), &want);
    }
}

#[test]
#[ignore = "needs a GPU: scripts/gpu-test.sh"]
fn decoder_attention_matches_cpu() {
    let fx = fixture();
    let mut r = Rng::new("decoder_attention");
    let n = 128;
    let heads = n / 64;

    // Self-attention over cache slots: 3 sequences in slots [2, 0, 3] of 4, 2 new tokens each
    // at positions 5 and 6 (the cache already holds their keys, as kv_append leaves it).
    let (n_seq, t, len, ctx, n_slots) = (3, 2, 5, 16, 4);
    let slots = [2i32, 0, 3];
    let rows = n_seq * t;
    let qkv = r.vec16(rows * 3 * n, 0.5);
    let kc = r.vec16(n_slots * ctx * n, 2.0);
    let vc = r.vec16(n_slots * ctx * n, 2.0);
    let (dqkv, dk, dv, ds, dout) = (fx.f16s(&qkv), fx.f16s(&kc), fx.f16s(&vc), fx.i32s(&slots), fx.poison(rows * n * 2));
    let dlen = fx.i32s(&[len as i32]);
    fx.k.decoder_self_attention(dqkv.ptr(), dk.ptr(), dv.ptr(), ds.ptr(), dout.ptr(), rows, n, heads, t, dlen.ptr(), ctx).unwrap();
    let mut want = vec![0f64; rows * n];
    for (s, &slot) in slots.iter().enumerate() {
        for i in 0..t {
            let row = s * t + i;
            let base = slot as usize * ctx * n;
            for h in 0..heads {
                let keys: Vec<&[f32]> = (0..=len + i).map(|p| &kc[base + p * n + h * 64..base + p * n + h * 64 + 64]).collect();
                let values: Vec<&[f32]> = (0..=len + i).map(|p| &vc[base + p * n + h * 64..base + p * n + h * 64 + 64]).collect();
                let q = &qkv[row * 3 * n + h * 64..row * 3 * n + h * 64 + 64];
                want[row * n + h * 64..row * n + h * 64 + 64].copy_from_slice(&attend(q, &keys, &values));
            }
        }
    }
    check("decoder_self_attention", &fx.get_f16(&dout, want.len()), &want);

    // Cross-attention of layer 1 of 3 (keys in columns 2n..3n, values 3n..4n of rows of 6n),
    // queries of row stride 3n; five one-token sequences over two utterances (1, 0, 1, 0, 1).
    let (rows, n_keys, layers, layer) = (5, 1500, 3, 1);
    let ldq = 3 * n;
    let ldkv = layers * 2 * n;
    let q = r.vec16(rows * ldq, 0.5);
    let kv = r.vec16(2 * n_keys * ldkv, 2.0);
    let (dq, dkv, dout) = (fx.f16s(&q), fx.f16s(&kv), fx.poison(rows * n * 2));
    let utt = |seq: usize| (seq + 1) % 2;
    let table: Vec<u64> = (0..rows).map(|s| dkv.ptr() + (utt(s) * n_keys * ldkv * 2) as u64).collect();
    let dtable = fx.u64s(&table);
    let cross = CrossKv { table: dtable.ptr(), offset: layer * 2 * n, tokens: 1 };
    fx.k.cross_attention(dq.ptr(), ldq, cross, ldkv, n_keys, dout.ptr(), rows, n, heads).unwrap();
    let want = cross_reference(&q, ldq, &kv, ldkv, n_keys, n, layer, rows, utt);
    check("cross_attention", &fx.get_f16(&dout, want.len()), &want);
}

#[test]
#[ignore = "needs a GPU: scripts/gpu-test.sh"]
fn split_decoder_attention_matches_cpu() {
    use whisper_trt::backends::cuda::kernels::{SPLIT_KEYS, SPLIT_PART};
    let fx = fixture();
    let mut r = Rng::new("split_attention");
    let n = 128;
    let heads = n / 64;
    // Self-attention with a long and a short history: several splits, some of them empty (127:
    // the first row of each sequence has one split, the second two).
    let (n_seq, t, ctx, n_slots) = (2usize, 2usize, 448usize, 3usize);
    let slots = [2i32, 0];
    let splits = ctx.div_ceil(SPLIT_KEYS);
    for len in [300usize, 5, 127] {
        let rows = n_seq * t;
        let qkv = r.vec16(rows * 3 * n, 0.5);
        let kc = r.vec16(n_slots * ctx * n, 2.0);
        let vc = r.vec16(n_slots * ctx * n, 2.0);
        let (dqkv, dk, dv, ds, dlen) = (fx.f16s(&qkv), fx.f16s(&kc), fx.f16s(&vc), fx.i32s(&slots), fx.i32s(&[len as i32]));
        let (dpart, dout) = (fx.poison(rows * heads * splits * SPLIT_PART * 4), fx.poison(rows * n * 2));
        fx.k.decoder_self_attention_split(dqkv.ptr(), dk.ptr(), dv.ptr(), ds.ptr(), dpart.ptr(), rows, n, heads, t, dlen.ptr(), ctx, splits, None)
            .unwrap();
        fx.k.attention_combine(dpart.ptr(), splits, dout.ptr(), rows, n, heads).unwrap();
        // The same merged by the last block of every (row, head), twice (the counters reset).
        let (dcnt, dout2) = (fx.i32s(&vec![0; rows * heads]), fx.poison(rows * n * 2));
        for _ in 0..2 {
            fx.k.decoder_self_attention_split(dqkv.ptr(), dk.ptr(), dv.ptr(), ds.ptr(), dpart.ptr(), rows, n, heads, t, dlen.ptr(), ctx, splits, Some((dcnt.ptr(), dout2.ptr())))
                .unwrap();
        }
        let mut want = vec![0f64; rows * n];
        for (s, &slot) in slots.iter().enumerate() {
            for i in 0..t {
                let row = s * t + i;
                let base = slot as usize * ctx * n;
                for h in 0..heads {
                    let keys: Vec<&[f32]> = (0..=len + i).map(|p| &kc[base + p * n + h * 64..base + p * n + h * 64 + 64]).collect();
                    let values: Vec<&[f32]> = (0..=len + i).map(|p| &vc[base + p * n + h * 64..base + p * n + h * 64 + 64]).collect();
                    let q = &qkv[row * 3 * n + h * 64..row * 3 * n + h * 64 + 64];
                    want[row * n + h * 64..row * n + h * 64 + 64].copy_from_slice(&attend(q, &keys, &values));
                }
            }
        }
        check(&format!("decoder_self_attention_split len {len}"), &fx.get_f16(&dout, want.len()), &want);
        check(&format!("decoder_self_attention_split len {len} merged by the last block"), &fx.get_f16(&dout2, want.len()), &want);
    }

    // Cross-attention: 1500 keys in 12 splits, layer 1 of 2, queries of row stride 3n; two
    // sequences of two tokens each, the first over utterance 1, the second over utterance 0.
    let (rows, n_keys, layers, layer, t) = (4usize, 1500usize, 2usize, 1usize, 2usize);
    let (ldq, ldkv) = (3 * n, layers * 2 * n);
    let splits = n_keys.div_ceil(SPLIT_KEYS);
    let q = r.vec16(rows * ldq, 0.5);
    let kv = r.vec16(2 * n_keys * ldkv, 2.0);
    let (dq, dkv) = (fx.f16s(&q), fx.f16s(&kv));
    let (dpart, dout) = (fx.poison(rows * heads * splits * SPLIT_PART * 4), fx.poison(rows * n * 2));
    let utt = |seq: usize| 1 - seq;
    let table: Vec<u64> = (0..rows / t).map(|s| dkv.ptr() + (utt(s) * n_keys * ldkv * 2) as u64).collect();
    let dtable = fx.u64s(&table);
    let cross = CrossKv { table: dtable.ptr(), offset: layer * 2 * n, tokens: t };
    fx.k.cross_attention_split(dq.ptr(), ldq, cross, ldkv, n_keys, dpart.ptr(), rows, n, heads, None).unwrap();
    fx.k.attention_combine(dpart.ptr(), splits, dout.ptr(), rows, n, heads).unwrap();
    let (dcnt, dout2) = (fx.i32s(&vec![0; rows * heads]), fx.poison(rows * n * 2));
    for _ in 0..2 {
        fx.k.cross_attention_split(dq.ptr(), ldq, cross, ldkv, n_keys, dpart.ptr(), rows, n, heads, Some((dcnt.ptr(), dout2.ptr()))).unwrap();
    }
    let want = cross_reference(&q, ldq, &kv, ldkv, n_keys, n, layer, rows, |row| utt(row / t));
    check("cross_attention_split", &fx.get_f16(&dout, want.len()), &want);
    check("cross_attention_split merged by the last block", &fx.get_f16(&dout2, want.len()), &want);
}

#[test]
#[ignore = "needs a GPU: scripts/gpu-test.sh"]
fn kv_cache_and_embedding_kernels_match_cpu() {
    let fx = fixture();
    let mut r = Rng::new("kv_cache");
    let (n, n_seq, t, len, ctx, n_slots, layers) = (128, 3, 2, 4, 8, 5, 2);
    let rows = n_seq * t;
    let slots = [4i32, 1, 2];
    let qkv = r.vec16(rows * 3 * n, 1.0);
    let kc = r.vec16(layers * n_slots * ctx * n, 1.0);
    let vc = r.vec16(layers * n_slots * ctx * n, 1.0);
    let (dqkv, dk, dv, ds) = (fx.f16s(&qkv), fx.f16s(&kc), fx.f16s(&vc), fx.i32s(&slots));
    // Append into layer 1.
    let layer_bytes = (n_slots * ctx * n * 2) as u64;
    let dlen = fx.i32s(&[len as i32]);
    fx.k.kv_append(dqkv.ptr(), dk.ptr() + layer_bytes, dv.ptr() + layer_bytes, ds.ptr(), rows, n, t, dlen.ptr(), ctx).unwrap();
    // The caches expected after appending the keys and values (columns n..2n, 2n..3n) of `src`.
    let layer = n_slots * ctx * n;
    // `seqs` sequences of `tt` tokens each.
    let appended_of = |src: &[f32], seqs: usize, tt: usize| {
        let (mut k, mut v) = (kc.clone(), vc.clone());
        for (s, &slot) in slots.iter().enumerate().take(seqs) {
            for i in 0..tt {
                let row = s * tt + i;
                let dst = layer + (slot as usize * ctx + len + i) * n;
                k[dst..dst + n].copy_from_slice(&src[row * 3 * n + n..row * 3 * n + 2 * n]);
                v[dst..dst + n].copy_from_slice(&src[row * 3 * n + 2 * n..row * 3 * n + 3 * n]);
            }
        }
        (k, v)
    };
    let appended = |src: &[f32]| appended_of(src, n_seq, t);
    let (mut wk, mut wv) = appended(&qkv);
    let to64 = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    let got_k = fx.get_f16(&dk, wk.len());
    let got_v = fx.get_f16(&dv, wv.len());
    assert_eq!(rel_err(&got_k, &to64(&wk)), 0.0, "kv_append: keys differ");
    assert_eq!(rel_err(&got_v, &to64(&wv)), 0.0, "kv_append: values differ");
    println!("kv_append: exact");

    // The GEMV kernel's append of a QKV projection's keys and values: the cache rows equal its
    // own fp16 outputs (columns n..2n and 2n..3n) exactly; the other slots are left alone.
    let k_in = 256;
    let (wq, xq) = (r.vec16(3 * n * k_in, 0.1), r.vec16(rows * k_in, 1.0));
    let (dwq, dxq) = (fx.f16s(&wq), fx.f16s(&xq));
    // Every GEMV kernel the GPU has, at all rows and at one row (one sequence, one token: the
    // one-row kernel's case).
    for kind in [GemvKind::Warp, GemvKind::Stream] {
        if !fx.k.set_gemv_kind(kind) {
            continue;
        }
        for (seqs, tt) in [(n_seq, t), (1, 1)] {
            let m = seqs * tt;
            let dy = fx.poison(m * 3 * n * 2);
            let (dk2, dv2) = (fx.f16s(&kc), fx.f16s(&vc));
            let append = KvAppend { k_cache: dk2.ptr() + layer_bytes, v_cache: dv2.ptr() + layer_bytes, slots: ds.ptr(), len: dlen.ptr(), t: tt, ctx };
            fx.k.gemv_kv(dwq.ptr(), dxq.ptr(), None, None, dy.ptr(), m, 3 * n, k_in, k_in, 3 * n, GemvOut::F16, Some(append)).unwrap_or_else(|e| panic!("{e:#}"));
            let y = fx.get_f16(&dy, m * 3 * n);
            let (wk2, wv2) = appended_of(&y, seqs, tt);
            assert_eq!(rel_err(&fx.get_f16(&dk2, wk2.len()), &to64(&wk2)), 0.0, "gemv KV append ({kind:?}, {m} rows): keys differ");
            assert_eq!(rel_err(&fx.get_f16(&dv2, wv2.len()), &to64(&wv2)), 0.0, "gemv KV append ({kind:?}, {m} rows): values differ");
            println!("gemv KV append ({kind:?}, {m} rows): exact");
        }
    }
    fx.k.set_gemv_kind(DEFAULT_GEMV_KIND);

    // Copy the filled positions (0..len+t) of slot 4 into slot 0 and of slot 1 into slot 3.
    let filled = len + t;
    let pairs = [4i32, 0, 1, 3];
    let dp = fx.i32s(&pairs);
    fx.k.kv_copy(dk.ptr(), dv.ptr(), dp.ptr(), 2, layers, n_slots, ctx, n, filled).unwrap();
    for l in 0..layers {
        for (from, to) in [(4usize, 0usize), (1, 3)] {
            let src = (l * n_slots + from) * ctx * n;
            let dst = (l * n_slots + to) * ctx * n;
            let (a, b) = (wk[src..src + filled * n].to_vec(), wv[src..src + filled * n].to_vec());
            wk[dst..dst + filled * n].copy_from_slice(&a);
            wv[dst..dst + filled * n].copy_from_slice(&b);
        }
    }
    assert_eq!(rel_err(&fx.get_f16(&dk, wk.len()), &to64(&wk)), 0.0, "kv_copy: keys differ (or positions past len changed)");
    assert_eq!(rel_err(&fx.get_f16(&dv, wv.len()), &to64(&wv)), 0.0, "kv_copy: values differ");
    println!("kv_copy: exact");

    // Token + position embedding.
    let (vocab, n_ctx) = (1000, 16);
    let emb = r.vec16(vocab * n, 1.0);
    let pos = r.vec16(n_ctx * n, 1.0);
    let tokens: Vec<i32> = (0..rows).map(|_| r.below(vocab) as i32).collect();
    let (de, dpos, dt, dx) = (fx.f16s(&emb), fx.f16s(&pos), fx.i32s(&tokens), fx.poison(rows * n * 4));
    fx.k.embed_tokens(dt.ptr(), de.ptr(), 0, dpos.ptr(), dx.ptr(), rows, n, t, dlen.ptr()).unwrap();
    let mut want = Vec::new();
    for (row, &tok) in tokens.iter().enumerate() {
        let p = len + row % t;
        want.extend((0..n).map(|c| emb[tok as usize * n + c] as f64 + pos[p * n + c] as f64));
    }
    check("embed_tokens", &fx.get_f32(&dx, want.len()), &want);
}

#[test]
#[ignore = "needs a GPU: scripts/gpu-test.sh"]
fn masked_argmax_matches_cpu() {
    let fx = fixture();
    let mut r = Rng::new("masked_argmax");
    let (rows, v) = (4, 51865);
    let mut logits = r.vec(rows * v, 10.0);
    // Plant a tie in row 1: the lower index must win, as torch.argmax.
    logits[v + 7] = 50.0;
    logits[v + 40000] = 50.0;
    let mut mask: Vec<u8> = (0..v).map(|_| (r.below(10) == 0) as u8).collect();
    // The tie's two entries stay visible (the random mask would hide one now and then).
    mask[7] = 0;
    mask[40000] = 0;
    // Row 2's maximum is masked.
    let hidden = (0..v).find(|&j| mask[j] != 0).unwrap();
    logits[2 * v + hidden] = 99.0;
    let (dl, dm, di, dv) = (fx.f32s(&logits), fx.gpu.upload(&mask).unwrap(), fx.poison(rows * 4), fx.poison(rows * 4));
    fx.k.masked_argmax(dl.ptr(), dm.ptr(), rows, v, di.ptr(), dv.ptr()).unwrap();
    let mut ids = vec![0i32; rows];
    fx.gpu.copy_from(di.ptr(), &mut ids).unwrap();
    for row in 0..rows {
        let l = &logits[row * v..(row + 1) * v];
        let mut best = usize::MAX;
        for j in 0..v {
            if mask[j] == 0 && (best == usize::MAX || l[j] > l[best]) {
                best = j;
            }
        }
        assert_eq!(ids[row] as usize, best, "masked_argmax row {row}");
    }
    assert_eq!(ids[1], 7, "tie: the lower index wins");
    println!("masked_argmax: {rows} rows exact");
}

/// The GEMV kernel of decode steps, every output mode, with and without the fused LayerNorm,
/// against f64 on the CPU (LayerNorm rounded to fp16 as the kernel stores it).
#[test]
#[ignore = "needs a GPU: scripts/gpu-test.sh"]
fn gemv_matches_cpu() {
    let fx = fixture();
    let mut r = Rng::new("gemv");
    let outs = [GemvOut::F16, GemvOut::F16Gelu, GemvOut::F32, GemvOut::F32Add];
    for (m, n, k, ln) in [(1, 1000, 384, true), (3, 1280, 1280, true), (8, 517, 1280, false), (5, 384, 1536, false), (1, 2560, 5120, false), (2, 96, 640, true), (1, 5120, 1280, true), (4, 1280, 5120, false), (1, 1280, 5120, false), (1, 3840, 1280, true), (1, 51865, 1280, false), (1, 700, 512, false)] {
        for (o, &out) in outs.iter().enumerate() {
            let f16_out = matches!(out, GemvOut::F16 | GemvOut::F16Gelu);
            let w = r.vec16(n * k, 1.0 / (k as f32).sqrt());
            let bias = if f16_out { r.vec16(n, 0.5) } else { r.vec(n, 0.5) };
            let with_bias = o != 2 || m != 8; // one case without bias
            // x: the f32 residual stream (LayerNorm fused) or fp16 rows.
            let xs: Vec<f32> = if ln { (0..m * k).map(|_| 2.0 + r.uniform(3.0)).collect() } else { r.vec16(m * k, 1.0) };
            let g: Vec<f32> = (0..k).map(|_| 1.0 + r.uniform(0.5)).collect();
            let be = r.vec(k, 0.5);
            let (gr, ber) = (&g, &be);
            let xin: Vec<f64> = if ln {
                xs.chunks(k)
                    .flat_map(|row| {
                        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / k as f64;
                        let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / k as f64;
                        let rstd = 1.0 / (var + 1e-5).sqrt();
                        row.iter().enumerate().map(move |(i, &v)| r16(((v as f64 - mean) * rstd * gr[i] as f64 + ber[i] as f64) as f32) as f64).collect::<Vec<_>>()
                    })
                    .collect()
            } else {
                xs.iter().map(|&v| v as f64).collect()
            };
            let y0 = r.vec(m * n, 1.0);
            let dx = if ln { fx.f32s(&xs) } else { fx.f16s(&xs) };
            let (dw, dg, dbe) = (fx.f16s(&w), fx.f32s(&g), fx.f32s(&be));
            let db = if f16_out { fx.f16s(&bias) } else { fx.f32s(&bias) };
            let lnp = ln.then(|| (dg.ptr(), dbe.ptr()));
            let b = with_bias.then(|| db.ptr());
            // Both kernels (gemv_f16; on sm_90 the one-row one at one row, K % 256 == 0): the same
            // sums in the same order, so the same bits.
            let mut first: Option<Vec<f32>> = None;
            for kind in [GemvKind::Warp, GemvKind::Stream] {
                if !fx.k.set_gemv_kind(kind) {
                    continue;
                }
                let dy = match out {
                    GemvOut::F32Add => fx.f32s(&y0),
                    GemvOut::F32 => fx.poison(m * n * 4),
                    _ => fx.poison(m * n * 2),
                };
                fx.k.gemv(dw.ptr(), dx.ptr(), lnp, b, dy.ptr(), m, n, k, k, n, out).unwrap_or_else(|e| panic!("{e:#}"));
                let got = if f16_out { fx.get_f16(&dy, m * n) } else { fx.get_f32(&dy, m * n) };
                match &first {
                    None => first = Some(got),
                    Some(f) => assert!(
                        f.iter().zip(&got).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "gemv {m}x{n}x{k} {out:?} layernorm {ln}: {kind:?}'s outputs differ from gemv_f16's"
                    ),
                }
            }
            fx.k.set_gemv_kind(DEFAULT_GEMV_KIND);
            let got = first.expect("gemv_f16 ran");
            let mut want = vec![0f64; m * n];
            for i in 0..m {
                for j in 0..n {
                    let mut acc: f64 = (0..k).map(|p| xin[i * k + p] * w[j * k + p] as f64).sum();
                    if with_bias {
                        acc += bias[j] as f64;
                    }
                    want[i * n + j] = match out {
                        GemvOut::F16Gelu => gelu(r16(acc as f32) as f64),
                        GemvOut::F32Add => acc + y0[i * n + j] as f64,
                        _ => acc,
                    };
                }
            }
            check(&format!("gemv {m}x{n}x{k} {out:?} layernorm {ln} bias {with_bias}"), &got, &want);
        }
    }
}

/// Not a check: time of the GEMV kernel and of cuBLASLt (heuristic plan) on the decode-step
/// shapes of large-v2, over rotating weights (more than the L2 cache holds). Prints GB/s.
#[test]
#[ignore = "needs a GPU: scripts/gpu-test.sh"]
fn gemv_speed() {
    let fx = fixture();
    let mut r = Rng::new("gemv speed");
    let gemm = Gemm::new(&fx.gpu, &[]).unwrap_or_else(|e| panic!("{e:#}"));
    let pool_elems = 160 << 20; // 320 MB of fp16 weights
    let pool = fx.f16s(&r.vec(pool_elems, 0.05));
    let x = fx.f16s(&r.vec16(8 * 5120, 1.0));
    let y = fx.poison(8 * 51865 * 4);
    let bias = fx.f32s(&r.vec(51865, 0.1));
    let reps = 200;
    for m in [1usize, 5] {
        for (n, k) in [(1280, 1280), (3840, 1280), (5120, 1280), (1280, 5120), (51865, 1280)] {
            let bytes = n * k * 2;
            let copies = (pool_elems * 2 / bytes).max(1);
            let time = |gemv: bool| {
                let run = |i: usize| {
                    let w = pool.ptr() + ((i % copies) * bytes) as u64;
                    if gemv {
                        fx.k.gemv(w, x.ptr(), None, Some(bias.ptr()), y.ptr(), m, n, k, k, n, GemvOut::F32).unwrap();
                    } else {
                        let s = GemmShape::linear(m, n, k, Out::F32, Epilogue::Bias, false);
                        gemm.run(&s, w, x.ptr(), Some(bias.ptr()), y.ptr()).unwrap();
                    }
                };
                for i in 0..10 {
                    run(i);
                }
                fx.gpu.sync().unwrap();
                let t0 = std::time::Instant::now();
                for i in 0..reps {
                    run(i);
                }
                fx.gpu.sync().unwrap();
                t0.elapsed().as_secs_f64() * 1e6 / reps as f64
            };
            let (tg, tc) = (time(true), time(false));
            println!(
                "m {m} n {n:5} k {k}: GEMV {tg:6.2} us ({:5.0} GB/s), cuBLASLt {tc:6.2} us ({:5.0} GB/s)",
                bytes as f64 / tg / 1e3,
                bytes as f64 / tc / 1e3
            );
        }
    }
}

fn gemm_reference(s: &GemmShape, x: &[f32], w: &[f32], bias: &[f32], y0: &[f32]) -> Vec<f64> {
    let mut out = vec![0f64; s.m * s.n];
    for i in 0..s.m {
        for j in 0..s.n {
            let mut acc: f64 = (0..s.k).map(|p| x[i * s.ldx + p] as f64 * w[j * s.k + p] as f64).sum();
            if s.epilogue != Epilogue::None {
                acc += bias[j] as f64;
            }
            if s.epilogue == Epilogue::BiasGelu {
                // cuBLASLt's GELU is the tanh approximation.
                let c = (2.0 / std::f64::consts::PI).sqrt();
                acc = 0.5 * acc * (1.0 + (c * (acc + 0.044715 * acc.powi(3))).tanh());
            }
            if s.accumulate {
                acc += y0[i * s.ldy + j] as f64;
            }
            out[i * s.n + j] = acc;
        }
    }
    out
}

fn run_gemm_case(fx: &Fx, gemm: &Gemm, r: &mut Rng, s: &GemmShape) -> f64 {
    let x = r.vec16(s.m * s.ldx, 1.0);
    let w = r.vec16(s.n * s.k, 1.0 / (s.k as f32).sqrt());
    let bias = match s.out {
        Out::F16 => r.vec16(s.n, 0.5),
        Out::F32 => r.vec(s.n, 0.5),
    };
    let y0 = r.vec(s.m * s.ldy, 1.0);
    let (dx, dw) = (fx.f16s(&x), fx.f16s(&w));
    let (db, dy) = match s.out {
        Out::F16 => (fx.f16s(&bias), if s.accumulate { fx.f16s(&y0) } else { fx.poison(s.m * s.ldy * 2) }),
        Out::F32 => (fx.f32s(&bias), if s.accumulate { fx.f32s(&y0) } else { fx.poison(s.m * s.ldy * 4) }),
    };
    let y0 = if s.out == Out::F16 { y0.iter().map(|&v| r16(v)).collect() } else { y0 };
    let b = (s.epilogue != Epilogue::None).then(|| db.ptr());
    gemm.run(s, dw.ptr(), dx.ptr(), b, dy.ptr()).unwrap_or_else(|e| panic!("{e:#}"));
    let got = match s.out {
        Out::F16 => fx.get_f16(&dy, s.m * s.ldy),
        Out::F32 => fx.get_f32(&dy, s.m * s.ldy),
    };
    let got: Vec<f32> = (0..s.m).flat_map(|i| got[i * s.ldy..i * s.ldy + s.n].to_vec()).collect();
    let want = gemm_reference(s, &x, &w, &bias, &y0);
    let e = rel_err(&got, &want);
    println!("gemm {}: relative error {e:.2e}", s.key());
    e
}

fn gemm_cases() -> Vec<GemmShape> {
    vec![
        GemmShape::linear(37, 96, 64, Out::F16, Epilogue::Bias, false),
        GemmShape::linear(37, 96, 64, Out::F32, Epilogue::Bias, true),
        GemmShape::linear(5, 1000, 384, Out::F32, Epilogue::None, false),
        GemmShape::linear(300, 1536, 384, Out::F16, Epilogue::Bias, false),
        GemmShape::linear(300, 384, 1536, Out::F32, Epilogue::Bias, true),
        GemmShape::linear(64, 256, 128, Out::F16, Epilogue::BiasGelu, false),
        // Strided rows in and out.
        GemmShape { m: 20, n: 64, k: 128, ldx: 200, ldy: 80, out: Out::F16, epilogue: Epilogue::Bias, accumulate: false },
    ]
}

#[test]
#[ignore = "needs a GPU: scripts/gpu-test.sh"]
fn gemm_epilogues_match_cpu() {
    let fx = fixture();
    let mut r = Rng::new("gemm");
    let gemm = Gemm::new(&fx.gpu, &[]).unwrap_or_else(|e| panic!("{e:#}"));
    for s in gemm_cases() {
        let e = run_gemm_case(&fx, &gemm, &mut r, &s);
        assert!(e <= TOL, "gemm {}: relative error {e:.3e}", s.key());
    }
}

#[test]
#[ignore = "needs a GPU: scripts/gpu-test.sh"]
fn timed_tactics_are_used_and_correct() {
    let fx = fixture();
    let mut r = Rng::new("tactics");
    let shapes = gemm_cases();
    let tactics = pick_tactics(&fx.gpu, &shapes).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(tactics.len(), shapes.len());
    let gemm = Gemm::new(&fx.gpu, &tactics).unwrap_or_else(|e| panic!("{e:#}"));
    for (s, t) in shapes.iter().zip(&tactics) {
        assert_eq!(t.key, s.key());
        assert!(t.micros > 0.0 && t.micros.is_finite(), "{}: {} us", t.key, t.micros);
        assert_eq!(gemm.plan_source(s).unwrap(), "tactic", "{}: the timed algorithm was not used", s.key());
        let e = run_gemm_case(&fx, &gemm, &mut r, s);
        println!("  tactic {:.1} us", t.micros);
        assert!(e <= TOL, "gemm {} with its tactic: relative error {e:.3e}", s.key());
    }
}

#[test]
#[ignore = "needs a GPU: scripts/gpu-test.sh"]
fn no_gpu_error_is_one_line() {
    // Where the GPU works this documents the success path; the message shape matters elsewhere.
    match Gpu::new(0) {
        Ok(g) => println!("GPU: {} (sm_{}{})", g.name, g.compute_capability.0, g.compute_capability.1),
        Err(e) => panic!("{e:#}"),
    }
    let err = Gpu::new(4096).err().expect("GPU 4096 should not exist");
    assert!(!format!("{err:#}").contains('\n'), "multi-line error: {err:#}");
}
