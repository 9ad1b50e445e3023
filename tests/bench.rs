//! `whisper-trt bench` on the CPU: the FLOP and byte counts its figures are measured against, the
//! test-clean workload's token counts, and its errors without a GPU (the benchmark itself runs on
//! the GPU machine: scripts/bench-gpu.sh).
mod common;

use std::process::Command;
use whisper_trt::bench::counts::{cross_kv_flops, decoder_step_bytes, encoder_flops, workload};
use whisper_trt::engine::synthetic;
use whisper_trt::model::weights::canonical_shapes;
use whisper_trt::text::Tokenizer;

fn transcripts() -> std::path::PathBuf {
    common::shared().join("data/librispeech/transcripts/test-clean.trans.txt")
}

fn tokenizer_path() -> std::path::PathBuf {
    common::model_dir("tiny.en").join("tokenizer.json")
}

/// The encoder's FLOPs counted another way: every matrix product listed with its shape.
#[test]
fn encoder_flops_match_the_products_listed_one_by_one() {
    for size in synthetic::SIZES {
        let c = synthetic::config(size).unwrap();
        let (f, t, n, m) = (c.n_frames() as f64, c.n_audio_ctx as f64, c.n_audio_state as f64, c.n_mels as f64);
        // (rows, inputs, outputs) of every product of one window.
        let mut products: Vec<(f64, f64, f64)> = vec![(f, 3.0 * m, n), (t, 3.0 * n, n)];
        let heads = c.n_audio_head as f64;
        let d = n / heads;
        for _ in 0..c.n_audio_layer {
            products.extend([(t, n, 3.0 * n), (t, n, n), (t, n, 4.0 * n), (t, 4.0 * n, n)]);
            for _ in 0..c.n_audio_head {
                products.push((t, d, t)); // Q K^T of one head
                products.push((t, t, d)); // P V of one head
            }
        }
        let want: f64 = products.iter().map(|(r, i, o)| 2.0 * r * i * o).sum();
        let got = encoder_flops(&c);
        assert!((got - want).abs() <= 1e-9 * want, "{size}: {got} vs {want}");
        let kv = cross_kv_flops(&c);
        let want_kv = 2.0 * t * n * (2 * c.n_text_layer) as f64 * c.n_text_state as f64;
        assert!((kv - want_kv).abs() <= 1e-9 * want_kv, "{size}: cross K/V {kv} vs {want_kv}");
    }
    // large-v2: about 2.27 TFLOP per window (the 3 ms compute floor at ~750 TFLOP/s).
    let c = synthetic::config("large-v2").unwrap();
    let tf = encoder_flops(&c) / 1e12;
    assert!((2.25..2.30).contains(&tf), "large-v2 encoder {tf} TFLOP");
}

/// The step's weight bytes against the canonical tensors a step reads: every decoder tensor but
/// the positional embedding (one row per sequence) and the cross-attention keys and values
/// (computed once per window). The engine's fused QKV adds a zero key bias (n per layer), which
/// the count includes, so they agree within 0.01%.
#[test]
fn decoder_step_bytes_match_the_decoder_tensors() {
    for size in synthetic::SIZES {
        let c = synthetic::config(size).unwrap();
        let elems: usize = canonical_shapes(&c)
            .iter()
            .filter(|(name, _)| name.starts_with("decoder.") && name != "decoder.positional_embedding")
            .filter(|(name, _)| !name.contains("cross_attn.key") && !name.contains("cross_attn.value"))
            .map(|(_, shape)| shape.iter().product::<usize>())
            .sum();
        let want = 2.0 * elems as f64;
        let b = decoder_step_bytes(&c, 1, 50, false, false);
        assert!((b.weights - want).abs() <= 1e-4 * want, "{size}: {} vs {want}", b.weights);
        assert!(b.weights > want, "{size}: the fused key bias is missing");
        // K/V: per sequence, per layer, per position, K and V of n fp16 values each.
        let (n, l) = (c.n_text_state as f64, c.n_text_layer as f64);
        for batch in [1usize, 8, 32] {
            let s = decoder_step_bytes(&c, batch, 50, false, false);
            assert_eq!(s.weights, b.weights, "weights are read once per step whatever the batch");
            assert_eq!(s.self_kv, batch as f64 * l * 50.0 * 2.0 * n * 2.0);
            assert_eq!(s.cross_kv, batch as f64 * l * 1500.0 * 2.0 * n * 2.0);
            assert_eq!(s.total(), s.weights + s.self_kv + s.cross_kv);
        }
    }
    // large-v2 at batch 1: 1.6 GB of weights, 246 MB of cross K/V (the issue's ~0.6 ms floor).
    let s = decoder_step_bytes(&synthetic::config("large-v2").unwrap(), 1, 50, false, false);
    assert!((1.59e9..1.61e9).contains(&s.weights), "{}", s.weights);
    // int8 weights: the matrices and embedding at one byte, plus a 2-byte scale per row.
    let q = decoder_step_bytes(&synthetic::config("large-v2").unwrap(), 1, 50, true, false);
    assert!((0.79e9..0.81e9).contains(&q.weights), "{}", q.weights);
    assert!((2.45e8..2.47e8).contains(&s.cross_kv), "{}", s.cross_kv);
    // int8 KV: keys and values at one byte, the weights as they were.
    let k = decoder_step_bytes(&synthetic::config("large-v2").unwrap(), 32, 50, false, true);
    let f = decoder_step_bytes(&synthetic::config("large-v2").unwrap(), 32, 50, false, false);
    assert_eq!(k.weights, f.weights);
    assert_eq!(2.0 * k.cross_kv, f.cross_kv);
    assert_eq!(2.0 * k.self_kv, f.self_kv);
}

#[test]
fn workload_counts_every_test_clean_transcript() {
    let tok = Tokenizer::from_file(&tokenizer_path()).unwrap();
    let utts = workload(&transcripts(), &tok).unwrap();
    assert_eq!(utts.len(), 2620);
    assert!(utts.iter().all(|u| u.sampled > 1), "every utterance has text and an end of text");
    // Each count is the tokenizer's for " " + the text as written, plus one.
    let text = std::fs::read_to_string(transcripts()).unwrap();
    for (u, line) in utts.iter().zip(text.lines()).step_by(97) {
        let (id, words) = line.split_once(' ').unwrap();
        assert_eq!(u.id, id);
        assert_eq!(u.sampled, tok.encode(&format!(" {words}")).unwrap().len() + 1, "{id}");
    }
    let first = &utts[0];
    assert_eq!(first.id, "1089-134686-0000");
    let total: usize = utts.iter().map(|u| u.sampled).sum();
    let max = utts.iter().map(|u| u.sampled).max().unwrap();
    // Sane sizes: tens of tokens on average, none beyond the decoder's 224.
    assert!((20.0..80.0).contains(&(total as f64 / 2620.0)), "mean {}", total as f64 / 2620.0);
    assert!(max < 224, "longest {max}");
}

#[test]
fn workload_rejects_bad_transcripts() {
    let tok = Tokenizer::from_file(&tokenizer_path()).unwrap();
    let dir = common::temp_dir("bench-workload");
    let bad = dir.join("bad.trans.txt");
    std::fs::write(&bad, "1-2-3 HELLO\nNOTEXT\n").unwrap();
    let e = format!("{:#}", workload(&bad, &tok).unwrap_err());
    assert!(e.contains("bad.trans.txt:2"), "{e}");
    let empty = dir.join("empty.trans.txt");
    std::fs::write(&empty, "\n").unwrap();
    assert!(format!("{:#}", workload(&empty, &tok).unwrap_err()).contains("empty.trans.txt"));
    assert!(workload(&dir.join("missing.txt"), &tok).is_err());
}

#[test]
fn utc_date_is_well_formed() {
    let d = whisper_trt::bench::utc_now();
    let b = d.as_bytes();
    assert_eq!(d.len(), "2026-01-01 00:00 UTC".len(), "{d}");
    assert!(d.starts_with("20") && b[4] == b'-' && b[7] == b'-' && d.ends_with(" UTC"), "{d}");
    let month: u32 = d[5..7].parse().unwrap();
    let day: u32 = d[8..10].parse().unwrap();
    assert!((1..=12).contains(&month) && (1..=31).contains(&day), "{d}");
}

fn bench(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_whisper-trt")).arg("bench").args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Without a GPU (CI), one error line; bad inputs are reported before any GPU work.
#[test]
fn bench_errors_are_one_line() {
    let (code, err) = bench(&["--synthetic", "tiny", "--no-workload"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: ") && err.contains("GPU"), "{err}");

    let (code, err) = bench(&["--synthetic", "tiny", "--transcripts", "/nonexistent/test-clean.trans.txt"]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/test-clean.trans.txt") && err.contains("--no-workload"), "{err}");

    let t = transcripts();
    let (code, err) = bench(&["--transcripts", t.to_str().unwrap(), "--tokenizer", "/nonexistent/tokenizer.json"]);
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("/nonexistent/tokenizer.json"), "{err}");

    let (code, err) = bench(&["--batch", "0", "--no-workload"]);
    assert_eq!(code, 1);
    assert!(err.contains("--batch"), "{err}");
}
