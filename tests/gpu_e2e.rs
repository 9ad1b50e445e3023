//! The CUDA backend end to end against the CPU backend (the f32 oracle):
//! - synthetic weights (no checkpoint): encoder output and decoder logits, greedy-like steps with
//!   beam reorders and chunked prompts, relative error of the GPU's against the CPU's;
//! - tiny.en and base greedy (and tiny.en beam 5) over the utterances of
//!   `../shared/data/reference`: tokens equal to the CPU's on at least 90% of them, WER within
//!   0.2 percentage points of the CPU's.
//!
//! GPU only: `scripts/gpu-test.sh` runs these. Environment:
//! - `WHISPER_TRT_MODELS`, `WHISPER_TRT_SHARED`: as for every test;
//! - `WHISPER_TRT_GPU_SUBSETS`: comma-separated subsets to run (default: all; a missing audio
//!   file fails the test);
//! - `WHISPER_TRT_CPU_CACHE`: a folder for the CPU backend's transcripts (`<model>-<mode>.jsonl`):
//!   read when present, written when not, so the CPU side can be computed once elsewhere.
mod common;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use whisper_trt::backends::cpu::CpuModel;
use whisper_trt::backends::cuda::step::FusedMode;
use whisper_trt::backends::cuda::CudaModel;
use whisper_trt::backends::Backend;
use whisper_trt::decoding::{DecodeOptions, DecoderSession};
use whisper_trt::engine::builder::{self, BuildArgs};
use whisper_trt::engine::{synthetic, BuildOptions};
use whisper_trt::text::normalizer::EnglishTextNormalizer;
use whisper_trt::text::wer::word_edits;
use whisper_trt::text::Tokenizer;
use whisper_trt::transcribe::Transcriber;

fn options() -> BuildOptions {
    BuildOptions { dtype: "fp16".into(), max_batch: 1, beam_width: 5, max_new_tokens: 224, weight_only: None, int8_kv: false }
}

fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    if got.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let num: f64 = got.iter().zip(want).map(|(&g, &w)| (g as f64 - w as f64).powi(2)).sum();
    let den: f64 = want.iter().map(|&w| (w as f64).powi(2)).sum();
    (num / den.max(1e-300)).sqrt()
}

fn argmax(x: &[f32]) -> usize {
    whisper_trt::decoding::greedy::argmax(x)
}

fn reference_mel() -> Vec<f32> {
    let path = common::shared().join("data/reference/mel/librispeech_1089-134686-0000.mel80.f32");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// Runs the same token feed on both sessions and returns the worst logits error.
fn compare_steps(cpu: &mut dyn DecoderSession, gpu: &mut dyn DecoderSession, prompt: &[u32], steps: usize, tag: &str) -> f64 {
    let n_seq = cpu.n_seq();
    let v = cpu.n_vocab();
    let mut worst = 0f64;
    let mut agree = (0usize, 0usize);
    let mut feed: Vec<Vec<u32>> = vec![prompt.to_vec(); n_seq];
    for step in 0..steps {
        let refs: Vec<&[u32]> = feed.iter().map(|f| f.as_slice()).collect();
        let a = cpu.forward(&refs).unwrap();
        let b = gpu.forward(&refs).unwrap_or_else(|e| panic!("{tag} step {step}: {e:#}"));
        let e = rel_err(&b, &a);
        worst = worst.max(e);
        let t = feed[0].len();
        // Next token of each sequence: the CPU's choice (both sessions get the same feed).
        feed = (0..n_seq)
            .map(|s| {
                let last = &a[(s * t + t - 1) * v..(s * t + t) * v];
                let g = &b[(s * t + t - 1) * v..(s * t + t) * v];
                agree.0 += (argmax(last) == argmax(g)) as usize;
                agree.1 += 1;
                vec![argmax(last) as u32]
            })
            .collect();
        // Beam-like reorders on some steps, the same on both.
        if n_seq > 1 && step % 3 == 2 {
            let source: Vec<usize> = (0..n_seq).map(|s| (s + step) % n_seq / 2).collect();
            cpu.reorder(&source);
            gpu.reorder(&source);
            feed = source.iter().map(|&s| feed[s].clone()).collect();
        }
    }
    println!("{tag}: worst logits relative error {worst:.2e}, argmax agrees {}/{}", agree.0, agree.1);
    worst
}

#[test]
#[ignore = "needs a GPU: scripts/gpu-test.sh"]
fn synthetic_weights_match_cpu() {
    let mel = reference_mel();
    for size in ["tiny", "base"] {
        let (config, weights) = synthetic::synthetic(size, 7).unwrap();
        let start = Instant::now();
        let gpu = CudaModel::from_weights(config.clone(), &weights, options()).unwrap_or_else(|e| panic!("{e:#}"));
        println!("{size}: GPU model ready in {:.1} s", start.elapsed().as_secs_f64());
        let cpu = CpuModel::new(config.clone(), weights).unwrap();

        let want = cpu.encode(&mel).unwrap();
        let got = gpu.encoder_output(&mel).unwrap_or_else(|e| panic!("{e:#}"));
        let e = rel_err(&got, &want.data);
        println!("{size}: encoder output relative error {e:.2e}");
        assert!(e <= 1e-2, "{size}: encoder output relative error {e:.3e}");

        let cf = cpu.encode(&mel).unwrap();
        let gf = Backend::encode(&gpu, &mel).unwrap_or_else(|e| panic!("{e:#}"));
        let st = &config.special_tokens;
        let prompt = [st.sot, st.languages[0].1, st.transcribe, st.no_timestamps];
        // The launch-by-launch step's variants (fused_step_matches_launch_by_launch_and_cpu
        // covers the fused kernel).
        // PDL (Programmatic Dependent Launch) runs with the GEMV kernel, in the graphs and in the
        // prompt steps' plain launches; on a GPU below sm_90 it is the GEMV variant again.
        gpu.set_fused(false).unwrap();
        println!("{size}: Programmatic Dependent Launch on this GPU: {}", gpu.pdl_supported());
        // (true, false, true): PDL's own choice of the GEMV kernel (few rows) or cuBLASLt.
        for (split, gemv, pdl) in [(false, true, false), (true, true, false), (true, false, false), (true, true, true), (false, true, true), (true, false, true)] {
            gpu.set_split_attention(split).unwrap();
            gpu.set_gemv(gemv).unwrap();
            gpu.set_pdl(pdl).unwrap();
            for n_seq in [1usize, 3, 5] {
                let mut c = cpu.session(&cf, n_seq).unwrap();
                let mut g = gpu.session(&gf, n_seq).unwrap_or_else(|e| panic!("{e:#}"));
                let tag = format!(
                    "{size} n_seq {n_seq}{}{}{}",
                    if split { " split attention" } else { " unsplit attention" },
                    if gemv { " GEMV" } else { " cuBLASLt" },
                    if pdl { " PDL" } else { "" }
                );
                // PDL without forcing the GEMV kernel mixes kernels (GEMV at one row, cuBLASLt
                // above): checked against the CPU only.
                if !pdl || !gemv {
                    let e = compare_steps(&mut c, &mut g, &prompt, 12, &tag);
                    assert!(e <= 2e-2, "{tag}: logits relative error {e:.3e}");
                    continue;
                }
                // PDL runs the same kernels on the same data: its logits must equal those of the
                // same feed without PDL (bit for bit where the kernels are deterministic; a
                // kernel that read before its predecessor finished would read another token's
                // activations and be off by far more than 1e-3).
                let (e_cpu, feed, with_pdl) = record_steps(&mut c, &mut g, &prompt, 12);
                drop(g);
                gpu.set_pdl(false).unwrap();
                let mut g = gpu.session(&gf, n_seq).unwrap_or_else(|e| panic!("{e:#}"));
                let (mut worst, mut equal) = (0f64, 0);
                for (i, (f, want)) in feed.iter().zip(&with_pdl).enumerate() {
                    let refs: Vec<&[u32]> = f.tokens.iter().map(|t| t.as_slice()).collect();
                    let got = g.forward(&refs).unwrap_or_else(|e| panic!("{tag} step {i}: {e:#}"));
                    worst = worst.max(rel_err(want, &got));
                    equal += (got == *want) as usize;
                    if let Some(src) = &f.reorder {
                        g.try_reorder(src).unwrap();
                    }
                }
                drop(g);
                gpu.set_pdl(true).unwrap();
                println!(
                    "{tag}: vs the same steps without PDL: worst relative error {worst:.2e}, {equal}/{} steps bit for bit; vs CPU {e_cpu:.2e}",
                    feed.len()
                );
                assert!(worst <= 1e-3, "{tag}: PDL vs no PDL logits relative error {worst:.3e}");
                assert!(e_cpu <= 2e-2, "{tag}: logits relative error {e_cpu:.3e} against the CPU");
            }
        }
        gpu.set_split_attention(true).unwrap();
        gpu.set_gemv(false).unwrap();
        gpu.set_pdl(false).unwrap();
        gpu.set_fused(whisper_trt::backends::cuda::step::fused_enabled()).unwrap();
        // A feed longer than one step's rows runs in chunks.
        let mut c = cpu.session(&cf, 5).unwrap();
        let mut g = gpu.session(&gf, 5).unwrap();
        let long: Vec<u32> = (0..9).map(|i| 1000 + 37 * i).collect();
        let e = compare_steps(&mut c, &mut g, &long, 2, &format!("{size} chunked prompt"));
        assert!(e <= 2e-2, "{size} chunked prompt: logits relative error {e:.3e}");
        // Bad input is an error, as on the CPU.
        assert!(g.forward(&[&[1u32]]).is_err(), "wrong sequence count accepted");
        assert!(gpu.session(&gf, 1).is_err(), "a second session at once was accepted");
        drop(g);
        let max = options().max_batch * options().beam_width;
        assert!(gpu.session(&gf, max + 1).is_err(), "a session larger than the engine was accepted");
    }
}

/// One step of a recorded feed: the tokens of every sequence, then the beam reorder (if any).
struct FeedStep {
    tokens: Vec<Vec<u32>>,
    reorder: Option<Vec<usize>>,
}

/// Like [`compare_steps`], and also records the feed and the GPU's logits of every step.
fn record_steps(cpu: &mut dyn DecoderSession, gpu: &mut dyn DecoderSession, prompt: &[u32], steps: usize) -> (f64, Vec<FeedStep>, Vec<Vec<f32>>) {
    let n_seq = cpu.n_seq();
    let v = cpu.n_vocab();
    let (mut worst, mut feed, mut logits) = (0f64, Vec::new(), Vec::new());
    let mut tokens: Vec<Vec<u32>> = vec![prompt.to_vec(); n_seq];
    for step in 0..steps {
        let refs: Vec<&[u32]> = tokens.iter().map(|f| f.as_slice()).collect();
        let a = cpu.forward(&refs).unwrap();
        let b = gpu.forward(&refs).unwrap_or_else(|e| panic!("step {step}: {e:#}"));
        worst = worst.max(rel_err(&b, &a));
        let t = tokens[0].len();
        let next: Vec<Vec<u32>> = (0..n_seq).map(|s| vec![argmax(&a[(s * t + t - 1) * v..(s * t + t) * v]) as u32]).collect();
        // Reorders that keep, swap and duplicate sequences (slot remaps and cache copies).
        let reorder = (n_seq > 1 && step % 3 == 2).then(|| (0..n_seq).map(|s| (s + step) % n_seq / 2).collect::<Vec<_>>());
        feed.push(FeedStep { tokens: std::mem::take(&mut tokens), reorder: reorder.clone() });
        logits.push(b);
        tokens = match &reorder {
            Some(src) => {
                cpu.reorder(src);
                gpu.reorder(src);
                src.iter().map(|&s| next[s].clone()).collect()
            }
            None => next,
        };
    }
    (worst, feed, logits)
}

/// The fused one-token step (decoder_step.cu) against the launch-by-launch step and the CPU
/// backend, on synthetic tiny and base weights: 1, 3, 5 and 8 sequences, a 4-token prompt (run
/// launch by launch) and then one-token steps with beam reorders; 1 sequence runs 60 steps, so
/// that self-attention over the cache splits over several blocks.
#[test]
#[ignore = "needs a GPU: scripts/gpu-test.sh"]
fn fused_step_matches_launch_by_launch_and_cpu() {
    let mel = reference_mel();
    for size in ["tiny", "base"] {
        let (config, weights) = synthetic::synthetic(size, 11).unwrap();
        // 2 x 5 = 10 cache slots: room for 8 sequences.
        let gpu = CudaModel::from_weights(config.clone(), &weights, BuildOptions { max_batch: 2, ..options() })
            .unwrap_or_else(|e| panic!("{e:#}"));
        for rows in [1, 3, 5, 8] {
            gpu.fused_step_check(rows).unwrap_or_else(|e| panic!("{size}: the fused step cannot run: {e:#}"));
        }
        let cpu = CpuModel::new(config.clone(), weights).unwrap();
        let cf = cpu.encode(&mel).unwrap();
        let gf = Backend::encode(&gpu, &mel).unwrap_or_else(|e| panic!("{e:#}"));
        let st = &config.special_tokens;
        let prompt = [st.sot, st.languages[0].1, st.transcribe, st.no_timestamps];
        // The default weight streaming, then mode 1 (no L2 policy or prefetches) with only 2
        // pieces of weights in flight per block, at 1 and 8 sequences.
        let bulk = FusedMode::parse("1/2/3");
        let cases = [1usize, 3, 5, 8].map(|n| (None, n)).into_iter().chain([(bulk, 1), (bulk, 8)]);
        for (mode, n_seq) in cases {
            let steps = if n_seq == 1 { 60 } else { 16 };
            gpu.set_fused(true).unwrap();
            gpu.set_fused_mode(mode).unwrap();
            let mut c = cpu.session(&cf, n_seq).unwrap();
            let mut g = gpu.session(&gf, n_seq).unwrap_or_else(|e| panic!("{e:#}"));
            let (e_cpu, feed, fused) = record_steps(&mut c, &mut g, &prompt, steps);
            drop(g);
            gpu.set_fused(false).unwrap();
            let mut g = gpu.session(&gf, n_seq).unwrap_or_else(|e| panic!("{e:#}"));
            let mut worst = 0f64;
            for (i, (f, want)) in feed.iter().zip(&fused).enumerate() {
                let refs: Vec<&[u32]> = f.tokens.iter().map(|t| t.as_slice()).collect();
                let got = g.forward(&refs).unwrap_or_else(|e| panic!("{size} n_seq {n_seq} step {i}: {e:#}"));
                worst = worst.max(rel_err(want, &got));
                if let Some(src) = &f.reorder {
                    g.try_reorder(src).unwrap();
                }
            }
            drop(g);
            let tag = format!("{size} n_seq {n_seq} {}", mode.map_or("cp.async".to_string(), |m| format!("{m:?}")));
            println!("{tag}: fused step logits vs launch by launch: worst relative error {worst:.2e}; vs CPU {e_cpu:.2e}");
            assert!(worst <= 1e-2, "{tag}: fused vs launch-by-launch logits relative error {worst:.3e}");
            assert!(e_cpu <= 2e-2, "{tag}: fused vs CPU logits relative error {e_cpu:.3e}");
        }
        gpu.set_fused_mode(None).unwrap();
    }
}

struct Row {
    id: String,
    subset: String,
    normalized_ref: String,
}

fn reference(model: &str, mode: &str) -> Vec<Row> {
    let path = common::shared().join(format!("data/reference/{model}/{mode}.jsonl"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let subsets: Option<Vec<String>> =
        std::env::var("WHISPER_TRT_GPU_SUBSETS").ok().map(|s| s.split(',').map(|x| x.trim().to_string()).collect());
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Row {
                id: v["id"].as_str().unwrap().to_string(),
                subset: v["subset"].as_str().unwrap().to_string(),
                normalized_ref: v["normalized_ref"].as_str().unwrap().to_string(),
            }
        })
        .filter(|r| subsets.as_ref().is_none_or(|s| s.contains(&r.subset)))
        .collect()
}

fn audio_path(row: &Row) -> PathBuf {
    common::reference_audio(&row.subset, &row.id)
}

/// (tokens, text) per utterance id.
type Results = BTreeMap<String, (Vec<u32>, String)>;

fn transcribe_all<B: Backend>(t: &Transcriber<B>, rows: &[Row]) -> (Results, f64) {
    let start = Instant::now();
    let mut out = Results::new();
    for row in rows {
        let path = audio_path(row);
        assert!(path.is_file(), "{} is missing (set WHISPER_TRT_GPU_SUBSETS to the subsets carried)", path.display());
        let tr = t.transcribe_file(&path).unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        out.insert(row.id.clone(), (tr.tokens, tr.text));
    }
    (out, start.elapsed().as_secs_f64())
}

fn cpu_results(model: &str, mode: &str, dir: &Path, rows: &[Row], options: &DecodeOptions) -> Results {
    let cache = std::env::var_os("WHISPER_TRT_CPU_CACHE").map(|d| PathBuf::from(d).join(format!("{model}-{mode}.jsonl")));
    let mut have = Results::new();
    if let Some(text) = cache.as_ref().and_then(|p| std::fs::read_to_string(p).ok()) {
        for l in text.lines() {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let tokens = v["tokens"].as_array().unwrap().iter().map(|t| t.as_u64().unwrap() as u32).collect();
            have.insert(v["id"].as_str().unwrap().to_string(), (tokens, v["text"].as_str().unwrap().to_string()));
        }
    }
    let missing: Vec<&Row> = rows.iter().filter(|r| !have.contains_key(&r.id)).collect();
    if !missing.is_empty() {
        let t = Transcriber::new(CpuModel::load(dir).unwrap(), Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap(), options.clone());
        let owned: Vec<Row> = missing
            .iter()
            .map(|r| Row { id: r.id.clone(), subset: r.subset.clone(), normalized_ref: r.normalized_ref.clone() })
            .collect();
        let (new, secs) = transcribe_all(&t, &owned);
        println!("{model} {mode}: CPU backend transcribed {} utterances in {secs:.1} s", new.len());
        have.extend(new);
        if let Some(p) = &cache {
            let lines: String = have
                .iter()
                .map(|(id, (tokens, text))| serde_json::json!({"id": id, "tokens": tokens, "text": text}).to_string() + "\n")
                .collect();
            if let Some(d) = p.parent() {
                let _ = std::fs::create_dir_all(d);
            }
            let _ = std::fs::write(p, lines);
        }
    }
    have
}

fn compare_with_cpu(model: &str, mode: &str, beam_size: Option<usize>) {
    let dir = common::model_dir(model);
    let rows = reference(model, mode);
    assert!(!rows.is_empty(), "no reference utterances selected");
    let options = DecodeOptions { language: Some("en".into()), beam_size, ..DecodeOptions::default() };
    let cpu = cpu_results(model, mode, &dir, &rows, &options);

    // The real flow: `whisper-trt build` into an engine file, then load it.
    let engine = common::temp_dir("engine").join(format!("{model}.engine"));
    let args = BuildArgs {
        model: Some(dir.clone()),
        output: Some(engine.clone()),
        max_batch: 1,
        beam_width: 5,
        ..BuildArgs::defaults()
    };
    let start = Instant::now();
    let loaded = builder::build(&args).and_then(|_| {
        println!("{model}: engine built in {:.1} s", start.elapsed().as_secs_f64());
        let start = Instant::now();
        let backend = CudaModel::load(&engine)?;
        println!("{model}: engine loaded in {:.1} s on {}", start.elapsed().as_secs_f64(), backend.gpu().name);
        Ok(backend)
    });
    let _ = std::fs::remove_file(&engine);
    // A broken build or load still fails the test, but only after the backend itself was compared
    // (through the test-only path that compiles the kernels in process).
    let (backend, engine_error) = match loaded {
        Ok(b) => (b, None),
        Err(e) => {
            println!("{model}: ENGINE BUILD OR LOAD FAILED ({e:#}); comparing through CudaModel::from_model_dir");
            (CudaModel::from_model_dir(&dir, self::options()).unwrap_or_else(|e| panic!("{e:#}")), Some(format!("{e:#}")))
        }
    };
    let t = Transcriber::new(backend, Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap(), options);
    // One warm-up utterance, so that plan building stays out of the timing.
    let _ = t.transcribe_file(&audio_path(&rows[0]));
    let (gpu, secs) = transcribe_all(&t, &rows);

    let normalizer = EnglishTextNormalizer::from_json_file(&common::shared().join("data/whisper/english.json")).unwrap();
    #[derive(Default)]
    struct S {
        n: usize,
        same: usize,
        words: usize,
        cpu_edits: usize,
        gpu_edits: usize,
    }
    let mut subsets: BTreeMap<String, S> = BTreeMap::new();
    let mut diffs = Vec::new();
    for row in &rows {
        let (ct, ctext) = &cpu[&row.id];
        let (gt, gtext) = &gpu[&row.id];
        for key in [row.subset.as_str(), "all"] {
            let s = subsets.entry(key.to_string()).or_default();
            s.n += 1;
            s.same += (ct == gt) as usize;
            s.words += row.normalized_ref.split_whitespace().count();
            s.cpu_edits += word_edits(&row.normalized_ref, &normalizer.normalize(ctext));
            s.gpu_edits += word_edits(&row.normalized_ref, &normalizer.normalize(gtext));
        }
        if ct != gt {
            diffs.push(format!("  {}: cpu {:?}\n  {}  gpu {:?}", row.id, ctext.trim(), " ".repeat(row.id.len()), gtext.trim()));
        }
    }
    println!("{model} {mode}: GPU transcribed {} utterances in {secs:.2} s ({:.1} ms each)", rows.len(), 1000.0 * secs / rows.len() as f64);
    println!("{:<12} {:>5} {:>16} {:>9} {:>9}", "subset", "utts", "tokens = CPU", "CPU WER%", "GPU WER%");
    for (name, s) in &subsets {
        println!(
            "{:<12} {:>5} {:>7} ({:>5.1}%) {:>9.3} {:>9.3}",
            name,
            s.n,
            s.same,
            100.0 * s.same as f64 / s.n as f64,
            100.0 * s.cpu_edits as f64 / s.words as f64,
            100.0 * s.gpu_edits as f64 / s.words as f64
        );
    }
    for d in diffs.iter().take(10) {
        println!("{d}");
    }
    let all = &subsets["all"];
    let same = all.same as f64 / all.n as f64;
    let (cw, gw) = (100.0 * all.cpu_edits as f64 / all.words as f64, 100.0 * all.gpu_edits as f64 / all.words as f64);
    assert!(same >= 0.9, "{model} {mode}: GPU tokens equal the CPU's on {:.1}% of utterances, need 90%", 100.0 * same);
    assert!((gw - cw).abs() <= 0.2, "{model} {mode}: GPU WER {gw:.3}% vs CPU {cw:.3}%: more than 0.2 apart");
    assert!(engine_error.is_none(), "{model}: the engine path failed: {}", engine_error.unwrap_or_default());
}

#[test]
#[ignore = "needs a GPU: scripts/gpu-test.sh"]
fn tiny_en_greedy_matches_cpu() {
    compare_with_cpu("tiny.en", "greedy", None);
}

#[test]
#[ignore = "needs a GPU: scripts/gpu-test.sh"]
fn tiny_en_beam5_matches_cpu() {
    compare_with_cpu("tiny.en", "beam5", Some(5));
}

#[test]
#[ignore = "needs a GPU: scripts/gpu-test.sh"]
fn base_greedy_matches_cpu() {
    compare_with_cpu("base", "greedy", None);
}

/// Speed on synthetic weights (`WHISPER_TRT_SPEED_SIZE`, default large-v2): encoder per window at
/// batch 1 and at the engine's max batch (`WHISPER_TRT_SPEED_BATCH`, default 8), decoder step at
/// 1 and 5 sequences: with the logits copied to the host, without (synchronised every step), and
/// queued back to back.
/// Prints numbers; asserts only that they are finite.
#[test]
#[ignore = "needs a GPU: scripts/gpu-test.sh"]
fn synthetic_speed() {
    let size = std::env::var("WHISPER_TRT_SPEED_SIZE").unwrap_or_else(|_| "large-v2".into());
    let batch: usize = std::env::var("WHISPER_TRT_SPEED_BATCH").ok().and_then(|s| s.parse().ok()).unwrap_or(8);
    let (config, weights) = synthetic::synthetic(&size, 1).unwrap();
    let opts = BuildOptions { max_batch: batch, ..options() };
    let start = Instant::now();
    let gpu = CudaModel::from_weights(config.clone(), &weights, opts).unwrap_or_else(|e| panic!("{e:#}"));
    drop(weights);
    println!("{size}: GPU model ready in {:.1} s, {:.2} GB of weights", start.elapsed().as_secs_f64(), gpu.weight_bytes() as f64 / 1e9);
    let mel = reference_mel();
    let mels: Vec<&[f32]> = vec![mel.as_slice(); batch];
    for b in [1, batch] {
        let _ = gpu.encode_batch(&mels[..b]).unwrap();
        gpu.gpu().sync().unwrap();
        let reps = 5;
        let t0 = Instant::now();
        for _ in 0..reps {
            let f = gpu.encode_batch(&mels[..b]).unwrap();
            gpu.gpu().sync().unwrap();
            drop(f);
        }
        let ms = t0.elapsed().as_secs_f64() * 1000.0 / reps as f64;
        println!("{size}: encoder batch {b}: {ms:.2} ms per batch, {:.2} ms per window", ms / b as f64);
        assert!(ms.is_finite());
    }
    let f = Backend::encode(&gpu, &mel).unwrap();
    let st = &config.special_tokens;
    let prompt = [st.sot, st.languages[0].1, st.transcribe, st.no_timestamps];
    // (fused step, CUDA graphs, split attention, GEMV kernel): the default (fused, graphs) first,
    // then the launch-by-launch step's variants, (graphs, split, cuBLASLt) its default.
    let configs = [
        (true, true, true, false),
        (false, true, true, true),
        (false, true, true, false),
        (false, true, false, true),
        (false, false, true, true),
    ];
    for (fused, graphs, split, gemv) in configs {
        gpu.set_fused(fused).unwrap();
        gpu.set_cuda_graphs(graphs).unwrap();
        gpu.set_split_attention(split).unwrap();
        gpu.set_gemv(gemv).unwrap();
        let how = format!(
            "{}{}{}{}",
            if fused { "fused step, " } else { "" },
            if graphs { "CUDA graph" } else { "launch by launch" },
            if split { ", split attention" } else { ", unsplit attention" },
            if gemv { ", GEMV" } else { ", cuBLASLt" }
        );
        for n_seq in [1usize, 5] {
            let mut s = gpu.session(&f, n_seq).unwrap();
            s.forward(&vec![&prompt[..]; n_seq]).unwrap();
            let steps = 100;
            let mut tok = 1000u32;
            let mut next = || {
                tok += 1;
                [tok]
            };
            // Two steps first: graph capture.
            for _ in 0..2 {
                let t = next();
                s.forward(&vec![&t[..]; n_seq]).unwrap();
            }
            let t0 = Instant::now();
            for _ in 0..steps {
                let t = next();
                s.forward(&vec![&t[..]; n_seq]).unwrap();
            }
            let copy = t0.elapsed().as_secs_f64() * 1000.0 / steps as f64;
            let t0 = Instant::now();
            for _ in 0..steps {
                let t = next();
                s.step_on_device(&vec![&t[..]; n_seq]).unwrap();
                gpu.gpu().sync().unwrap();
            }
            let synced = t0.elapsed().as_secs_f64() * 1000.0 / steps as f64;
            let t0 = Instant::now();
            for _ in 0..steps {
                let t = next();
                s.step_on_device(&vec![&t[..]; n_seq]).unwrap();
            }
            gpu.gpu().sync().unwrap();
            let queued = t0.elapsed().as_secs_f64() * 1000.0 / steps as f64;
            println!(
                "{size}: decoder step, {n_seq} seq, {how}: {copy:.3} ms (logits to host), {synced:.3} ms (no copy, sync each step), {queued:.3} ms (no copy, queued)"
            );
            assert!(copy.is_finite() && synced.is_finite() && queued.is_finite());
        }
    }
    gpu.set_gemv(false).unwrap();
    gpu.set_split_attention(true).unwrap();
    gpu.set_fused(whisper_trt::backends::cuda::step::fused_enabled()).unwrap();
}

/// Batched transcription on the GPU (tests/batch.rs checks the same against the reference loop
/// on the CPU): several utterances in one decoder session, finished windows retired, and the
/// decoding rules' masks and greedy/beam selection on the GPU.
mod batch_gpu {
    use super::*;
    use whisper_trt::audio;
    use whisper_trt::decoding::Select;
    use whisper_trt::transcribe::Audio;

    fn first_window(path: &Path) -> Vec<f32> {
        let samples = audio::load_audio(path).unwrap_or_else(|e| panic!("{e:#}"));
        audio::transcribe_windows(&samples, 80).unwrap().swap_remove(0).mel.data
    }

    /// A session over three utterances (two sequences each) on both backends, with reorders
    /// within each utterance's pair and two windows retired on the way: the GPU's logits follow
    /// the CPU's, so each sequence keeps attending to its own utterance through the cross K/V
    /// table and keeps its own cache.
    #[test]
    #[ignore = "needs a GPU: scripts/gpu-test.sh"]
    fn multi_utterance_session_matches_cpu() {
        let (config, weights) = synthetic::synthetic("tiny", 7).unwrap();
        let opts = BuildOptions { max_batch: 4, ..options() };
        let gpu = CudaModel::from_weights(config.clone(), &weights, opts).unwrap_or_else(|e| panic!("{e:#}"));
        let cpu = CpuModel::new(config.clone(), weights).unwrap();
        let jfk = common::shared().join("data/whisper/jfk.flac");
        let mels = [reference_mel(), first_window(&jfk), first_window(&common::librispeech("1089-134691-0000"))];
        let refs: Vec<&[f32]> = mels.iter().map(|m| m.as_slice()).collect();
        let cf: Vec<_> = mels.iter().map(|m| cpu.encode(m).unwrap()).collect();
        let gf = gpu.encode_batch(&refs).unwrap_or_else(|e| panic!("{e:#}"));
        let per = 2;
        let mut c = cpu.session_many(&cf.iter().collect::<Vec<_>>(), per).unwrap();
        let mut g = gpu.session_many(&gf.iter().collect::<Vec<_>>(), per).unwrap_or_else(|e| panic!("{e:#}"));
        let st = &config.special_tokens;
        let prompt = vec![st.sot, st.languages[0].1, st.transcribe, st.no_timestamps];
        let v = config.n_vocab;
        let mut feed: Vec<Vec<u32>> = vec![prompt; 3 * per];
        let mut worst = 0f64;
        for step in 0..10 {
            let refs: Vec<&[u32]> = feed.iter().map(|f| f.as_slice()).collect();
            let a = c.forward(&refs).unwrap();
            let b = g.forward(&refs).unwrap_or_else(|e| panic!("step {step}: {e:#}"));
            let e = rel_err(&b, &a);
            println!("multi-utterance step {step}, {} sequences: logits relative error {e:.2e}", feed.len());
            worst = worst.max(e);
            let t = feed[0].len();
            feed = (0..feed.len()).map(|s| vec![argmax(&a[(s * t + t - 1) * v..(s * t + t) * v]) as u32]).collect();
            if step % 3 == 1 {
                // Swap the two sequences of every utterance (beam-style, within a window).
                let source: Vec<usize> = (0..feed.len()).map(|s| s ^ 1).collect();
                c.reorder(&source);
                g.reorder(&source);
                feed = source.iter().map(|&s| feed[s].clone()).collect();
            }
            let keep: Option<Vec<usize>> = match step {
                3 => Some(vec![0, 1, 4, 5]), // the second utterance is done
                6 => Some(vec![2, 3]),       // then the first
                _ => None,
            };
            if let Some(keep) = keep {
                c.retain(&keep).unwrap();
                g.retain(&keep).unwrap_or_else(|e| panic!("{e:#}"));
                feed = keep.iter().map(|&s| feed[s].clone()).collect();
            }
        }
        assert!(worst <= 2e-2, "multi-utterance session: logits relative error {worst:.3e}");
        assert!(g.retain(&[1, 0]).is_err(), "a non-increasing retain was accepted");
    }

    /// The selection kernel against the host's `Select::pick` on random logits with ties, masked
    /// maxima and every k the searches use: the same tokens, log-probabilities within 2e-4 (the
    /// host sums the vocabulary's exponentials one after another in f32, the GPU as a tree: their
    /// logsumexp differ by up to about 5e-5 here).
    #[test]
    #[ignore = "needs a GPU: scripts/gpu-test.sh"]
    fn selection_kernel_matches_host() {
        let (config, weights) = synthetic::synthetic("tiny", 3).unwrap();
        let gpu = CudaModel::from_weights(config.clone(), &weights, BuildOptions { max_batch: 4, ..options() })
            .unwrap_or_else(|e| panic!("{e:#}"));
        let v = config.n_vocab;
        let mut x = 99u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let suppress: Vec<u32> = (0..200).map(|i| (i * 251 % v) as u32).collect();
        let blank = vec![220u32, config.special_tokens.eot];
        let (mut checked, mut worst) = (0, 0f32);
        for case in 0..24 {
            let rows = 1 + case % 7;
            let k = [1, 2, 6, 11, 16][case % 5];
            let first = case % 2 == 0;
            // Coarse values: many exact ties; the largest on a suppressed token in some rows.
            let mut logits: Vec<f32> = (0..rows * v).map(|_| (rnd() % 96) as f32 / 8.0 - 6.0).collect();
            for r in (0..rows).step_by(2) {
                logits[r * v + suppress[case] as usize] = 40.0;
                logits[r * v + blank[0] as usize] = 30.0;
            }
            let select = Select { suppress: &suppress, blank: if first { &blank } else { &[] }, k };
            let got = gpu.select_host_logits(&logits, &select).unwrap_or_else(|e| panic!("{e:#}"));
            for r in 0..rows {
                let mut l = logits[r * v..(r + 1) * v].to_vec();
                whisper_trt::decoding::rules::mask(&mut l, select.blank);
                whisper_trt::decoding::rules::mask(&mut l, select.suppress);
                let want = select.pick(&l);
                let ids = |p: &[(u32, f32)]| p.iter().map(|x| x.0).collect::<Vec<_>>();
                assert_eq!(ids(&got[r]), ids(&want), "case {case} row {r} k {k}: GPU {:?} host {:?}", got[r], want);
                for (a, b) in got[r].iter().zip(&want) {
                    assert!((a.1 - b.1).abs() <= 2e-4, "case {case} row {r}: log-probability {} vs {}", a.1, b.1);
                    worst = worst.max((a.1 - b.1).abs());
                }
                checked += 1;
            }
        }
        println!("selection kernel: {checked} rows select the host's tokens; log-probabilities differ by at most {worst:.2e}");
    }

    /// Per file: tokens, text.
    type Out = Vec<(Vec<u32>, String)>;

    fn batched(t: &Transcriber<CudaModel>, inputs: &[Audio<'_>], batch: usize) -> (Out, f64) {
        let start = Instant::now();
        let mut out = vec![];
        t.transcribe_many(inputs, batch, |i, r| {
            assert_eq!(i, out.len());
            let r = r.unwrap_or_else(|e| panic!("input {i}: {e:#}"));
            out.push((r.tokens, r.text));
            Ok(())
        })
        .unwrap();
        (out, start.elapsed().as_secs_f64())
    }

    fn one_by_one(t: &Transcriber<CudaModel>, inputs: &[Audio<'_>]) -> (Out, f64) {
        let start = Instant::now();
        let out = inputs
            .iter()
            .map(|input| {
                let r = match *input {
                    Audio::File(p) => t.transcribe_file(p),
                    Audio::Samples(s) => t.transcribe_samples(s),
                };
                let r = r.unwrap_or_else(|e| panic!("{e:#}"));
                (r.tokens, r.text)
            })
            .collect();
        (out, start.elapsed().as_secs_f64())
    }

    fn same(a: &Out, b: &Out) -> usize {
        a.iter().zip(b).filter(|(x, y)| x.0 == y.0).count()
    }

    /// Every reference utterance (LibriSpeech, jfk, LJSpeech when packed) plus one input over
    /// 30 s, through a built tiny.en engine (max batch 16, beam width 5): batched against one
    /// file at a time, greedy and beam 5, and on-GPU selection against host selection. Prints
    /// the timings.
    #[test]
    #[ignore = "needs a GPU: scripts/gpu-test.sh"]
    fn tiny_en_batched_matches_one_by_one() {
        let model = "tiny.en";
        let dir = common::model_dir(model);
        let rows = reference(model, "greedy");
        let paths: Vec<PathBuf> = rows.iter().map(audio_path).collect();
        for p in &paths {
            assert!(p.is_file(), "{} is missing", p.display());
        }
        let mut long = audio::load_audio(&common::librispeech("2609-156975-0007")).unwrap();
        long.extend(audio::load_audio(&common::librispeech("1998-15444-0000")).unwrap());
        let mut inputs: Vec<Audio<'_>> = paths.iter().map(|p| Audio::File(p)).collect();
        inputs.insert(inputs.len() / 2, Audio::Samples(&long));

        let engine = common::temp_dir("engine").join(format!("{model}.engine"));
        let args = BuildArgs { model: Some(dir.clone()), output: Some(engine.clone()), max_batch: 16, beam_width: 5, ..BuildArgs::defaults() };
        builder::build(&args).unwrap_or_else(|e| panic!("{e:#}"));
        let backend = CudaModel::load(&engine).unwrap_or_else(|e| panic!("{e:#}"));
        let _ = std::fs::remove_file(&engine);
        let options = DecodeOptions { language: Some("en".into()), ..DecodeOptions::default() };
        let mut t = Transcriber::new(backend, Tokenizer::from_file(&dir.join("tokenizer.json")).unwrap(), options);
        let n = inputs.len();
        let mut failures = vec![];
        for beam_size in [None, Some(5)] {
            t.options.beam_size = beam_size;
            let mode = if beam_size.is_some() { "beam5" } else { "greedy" };
            // Warm-up: plans and graphs of the common shapes.
            let _ = batched(&t, &inputs[..16.min(n)], 16);
            let (single, single_s) = one_by_one(&t, &inputs);
            let (batch, batch_s) = batched(&t, &inputs, 16);
            t.backend.set_device_select(false);
            let (host, host_s) = batched(&t, &inputs, 16);
            t.backend.set_device_select(true);
            let (eq_single, eq_host) = (same(&batch, &single), same(&batch, &host));
            println!(
                "{model} {mode}: {n} inputs ({} audio files + one of {:.1} s): one by one {single_s:.2} s, batched (16) {batch_s:.2} s with selection on the GPU, {host_s:.2} s with host selection",
                paths.len(),
                long.len() as f64 / 16000.0
            );
            println!("{model} {mode}: batched tokens = one by one on {eq_single}/{n}, GPU selection = host selection on {eq_host}/{n}");
            for (i, ((a, b), c)) in batch.iter().zip(&single).zip(&host).enumerate() {
                if a.0 != b.0 || a.0 != c.0 {
                    println!("  input {i}:\n    batched  {:?}\n    one by one {:?}\n    host selection {:?}", a.1.trim(), b.1.trim(), c.1.trim());
                }
            }
            if eq_host != n {
                failures.push(format!("{mode}: GPU selection differs from host selection on {} inputs", n - eq_host));
            }
            // fp16 GEMMs of other row counts may flip a near-tie; the bar of GPU vs CPU applies.
            if (eq_single as f64) < 0.9 * n as f64 {
                failures.push(format!("{mode}: batched equals one by one on only {eq_single}/{n}"));
            }
        }
        assert!(failures.is_empty(), "{failures:?}");
    }
}
