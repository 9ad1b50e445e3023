//! CPU backend timings: encoder ms and decoder ms/step, tiny.en and base dimensions.
//! `cargo bench --bench cpu` (weights are pseudo-random: the cost does not depend on values).
//! `cargo bench --bench cpu -- <model dir>...` times canonical model directories instead.
//! Environment: `RAYON_NUM_THREADS` (threads), `CPU_BENCH_ENCODER_ONLY=1`, `CPU_BENCH_ENCODER_REPS=N`,
//! `CPU_BENCH_NSEQ=1,5` (decoder sequences), `CPU_BENCH_MICRO=1` (single products of decoder shapes,
//! against gemm's GEMV). The "cpu" figures are the CPU time of all threads: with a busy machine,
//! `RAYON_NUM_THREADS=1` and those give the work done whatever the wall clock says.
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;
use whisper_trt::backends::cpu::CpuModel;
use whisper_trt::decoding::DecoderSession;
use whisper_trt::model::config::{ModelConfig, SpecialTokens};
use whisper_trt::model::weights::{canonical_shapes, Tensor, Weights};

fn config(n_vocab: usize, n_state: usize, n_head: usize, n_layer: usize) -> ModelConfig {
    ModelConfig {
        n_mels: 80,
        n_audio_ctx: 1500,
        n_audio_state: n_state,
        n_audio_head: n_head,
        n_audio_layer: n_layer,
        n_vocab,
        n_text_ctx: 448,
        n_text_state: n_state,
        n_text_head: n_head,
        n_text_layer: n_layer,
        multilingual: n_vocab >= 51865,
        special_tokens: SpecialTokens {
            eot: 50256,
            sot: 50257,
            translate: 50357,
            transcribe: 50358,
            sot_lm: 50359,
            sot_prev: 50360,
            no_speech: 50361,
            no_timestamps: 50362,
            timestamp_begin: 50363,
            languages: vec![],
        },
        alignment_heads: None,
        source_format: String::new(),
    }
}

fn random_model(c: ModelConfig) -> CpuModel {
    let mut state = 0x2545F491u32;
    let mut map = HashMap::new();
    for (name, shape) in canonical_shapes(&c) {
        let len = shape.iter().product();
        let scale = if name.contains("ln") { 0.0 } else { 0.05 };
        let data = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let base = if name.ends_with("ln.weight") || name.ends_with("ln_post.weight") { 1.0 } else { 0.0 };
                base + scale * ((state >> 8) as f32 / (1u32 << 24) as f32 - 0.5)
            })
            .collect();
        map.insert(name, Tensor::new(shape, data));
    }
    CpuModel::new(c, Weights::from_map(Path::new("random"), map)).expect("random model")
}

/// CPU time of all this process's threads in ms (Linux; 0 elsewhere): with a loaded machine,
/// `RAYON_NUM_THREADS=1` and this give the work done independently of the wall clock.
fn cpu_ms() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0.0 };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()))
        .sum::<f64>()
        / 1e6
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn bench(name: &str, model: &CpuModel) {
    let c = model.config();
    let mel: Vec<f32> = (0..c.n_mels * c.n_frames()).map(|i| ((i % 97) as f32 / 97.0) - 0.5).collect();
    let reps: usize = std::env::var("CPU_BENCH_ENCODER_REPS").ok().and_then(|v| v.parse().ok()).unwrap_or(3).max(1);
    if reps > 1 {
        let _ = model.encode(&mel).unwrap(); // warm-up
    }
    let (mut enc, mut enc_cpu) = (Vec::new(), Vec::new());
    let mut features = None;
    for _ in 0..reps {
        let (t, c) = (Instant::now(), cpu_ms());
        features = Some(model.encode(&mel).unwrap());
        enc.push(t.elapsed().as_secs_f64() * 1e3);
        enc_cpu.push(cpu_ms() - c);
    }
    let features = features.unwrap();
    println!("{name}: encoder {:.1} ms (median of {reps}; cpu {:.1} ms)", median(enc), median(enc_cpu));
    if std::env::var("CPU_BENCH_ENCODER_ONLY").is_ok() {
        return;
    }

    let n_seqs: Vec<usize> = match std::env::var("CPU_BENCH_NSEQ") {
        Ok(v) => v.split(',').filter_map(|x| x.parse().ok()).collect(),
        Err(_) => vec![1, 5],
    };
    for n_seq in n_seqs {
        let t = Instant::now();
        let mut s = model.session(&features, n_seq).unwrap();
        let setup = t.elapsed().as_secs_f64() * 1e3;
        let prompt = [c.special_tokens.sot, c.special_tokens.no_timestamps];
        let seqs: Vec<&[u32]> = vec![&prompt; n_seq];
        let t = Instant::now();
        s.forward(&seqs).unwrap();
        let prefill = t.elapsed().as_secs_f64() * 1e3;
        let steps = 100;
        let (t, c) = (Instant::now(), cpu_ms());
        for i in 0..steps {
            let tok = [(i * 37 % 50000) as u32];
            let seqs: Vec<&[u32]> = vec![&tok; n_seq];
            s.forward(&seqs).unwrap();
            if n_seq > 1 {
                let source: Vec<usize> = (0..n_seq).map(|j| (j + i) % n_seq / 2).collect();
                s.reorder(&source);
            }
        }
        let per_step = t.elapsed().as_secs_f64() * 1e3 / steps as f64;
        let cpu_step = (cpu_ms() - c) / steps as f64;
        println!(
            "{name}: n_seq {n_seq}: session setup (cross K/V) {setup:.1} ms, prompt {prefill:.1} ms, \
             {per_step:.2} ms/step (cpu {cpu_step:.2}) over {steps} steps{}",
            if n_seq > 1 { " incl. reorder" } else { "" }
        );
    }
}

/// Times single matrix products of the decoder's shapes (`CPU_BENCH_MICRO=1`).
fn micro() {
    use whisper_trt::backends::cpu::ops::{matmul, View};
    let fill = |n: usize| (0..n).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect::<Vec<f32>>();
    for &(m, k, n, what) in &[
        (1usize, 384usize, 51864usize, "logits tiny"),
        (5, 384, 51864, "logits tiny"),
        (1, 512, 51865, "logits base"),
        (5, 512, 51865, "logits base"),
        (1, 384, 1152, "qkv tiny"),
        (5, 384, 1152, "qkv tiny"),
        (1, 1536, 384, "fc2 tiny"),
        (5, 1536, 384, "fc2 tiny"),
        (5, 64, 1500, "cross scores"),
    ] {
        let (x, w) = (fill(m * k), fill(n * k));
        let mut y = vec![0.0f32; m * n];
        let reps = (400_000_000 / (n * k)).clamp(5, 20000);
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            for _ in 0..reps {
                matmul(&mut y, n, View::new(&x, m, k), View::new(&w, n, k).t(), false);
            }
            best = best.min(t.elapsed().as_secs_f64() / reps as f64);
        }
        let gbs = (n * k * 4) as f64 / best / 1e9;
        // The same with gemm's own GEMV, one row at a time, on one thread, for comparison.
        let mut best_gemm = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            for _ in 0..reps {
                for r in 0..m {
                    unsafe {
                        gemm::gemm(1, n, k, y.as_mut_ptr().add(r * n), 1, n as isize, false, x.as_ptr().add(r * k), 1, k as isize,
                            w.as_ptr(), k as isize, 1, 1.0, 1.0, false, false, false, gemm::Parallelism::None)
                    };
                }
            }
            best_gemm = best_gemm.min(t.elapsed().as_secs_f64() / reps as f64);
        }
        println!("{what:14} m {m:2} k {k:4} n {n:5}: {:8.3} ms  ({gbs:5.1} GB/s of weights); gemm GEMVs {:8.3} ms", best * 1e3, best_gemm * 1e3);
    }
}

fn main() {
    if std::env::var("CPU_BENCH_MICRO").is_ok() {
        return micro();
    }
    let dirs: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    println!("rayon threads: {}", rayon::current_num_threads());
    if dirs.is_empty() {
        bench("tiny.en (random weights)", &random_model(config(51864, 384, 6, 4)));
        bench("base (random weights)", &random_model(config(51865, 512, 8, 6)));
    } else {
        for d in dirs {
            let model = CpuModel::load(Path::new(&d)).unwrap_or_else(|e| panic!("{e:#}"));
            bench(&d, &model);
        }
    }
}
