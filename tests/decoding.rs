//! Decoding rules and searches on a scripted language model, checked against outcomes worked out
//! by hand from openai-whisper's decoding.py.
mod common;
use std::collections::HashMap;
use whisper_trt::decoding::rules::{LogitRules, TimestampRules};
use whisper_trt::decoding::{DecodeOptions, Decoder, DecoderSession};
use whisper_trt::model::ModelConfig;
use whisper_trt::text::Tokenizer;

const V: usize = 51864;

fn tokenizer() -> Tokenizer {
    let path = common::models().join("src/tiny.en/tokenizer.json");
    assert!(path.is_file(), "{} is missing: run scripts/fetch-model.sh tiny.en", path.display());
    Tokenizer::from_file(&path).unwrap()
}

fn config(tok: &Tokenizer) -> ModelConfig {
    ModelConfig {
        n_mels: 80,
        n_audio_ctx: 1500,
        n_audio_state: 64,
        n_audio_head: 1,
        n_audio_layer: 1,
        n_vocab: V,
        n_text_ctx: 448,
        n_text_state: 64,
        n_text_head: 1,
        n_text_layer: 1,
        multilingual: false,
        special_tokens: tok.special.clone(),
        alignment_heads: None,
        source_format: "test".into(),
    }
}

/// A language model given as a table: the next-token probabilities after each sampled history
/// (the prompt stripped). Each sequence keeps its own history, like a KV cache, so a wrong
/// reorder or feed shows up as a lookup of a history the table does not have.
struct Scripted {
    prompt_len: usize,
    table: HashMap<Vec<u32>, Vec<(u32, f32)>>,
    histories: Vec<Vec<u32>>,
}

impl Scripted {
    fn new(n_seq: usize, prompt_len: usize, table: &[(&[u32], &[(u32, f32)])]) -> Self {
        let table = table.iter().map(|(h, p)| (h.to_vec(), p.to_vec())).collect();
        Scripted { prompt_len, table, histories: vec![vec![]; n_seq] }
    }
}

impl DecoderSession for Scripted {
    fn n_seq(&self) -> usize {
        self.histories.len()
    }
    fn n_vocab(&self) -> usize {
        V
    }
    fn forward(&mut self, tokens: &[&[u32]]) -> anyhow::Result<Vec<f32>> {
        let len = tokens[0].len();
        let mut out = vec![-30.0f32; self.histories.len() * len * V];
        for (j, new) in tokens.iter().enumerate() {
            for (p, &t) in new.iter().enumerate() {
                self.histories[j].push(t);
                let h = &self.histories[j];
                let sampled = &h[self.prompt_len.min(h.len())..];
                if h.len() < self.prompt_len {
                    continue;
                }
                let probs = self.table.get(sampled).unwrap_or_else(|| panic!("no entry for history {sampled:?}"));
                let row = &mut out[(j * len + p) * V..(j * len + p + 1) * V];
                for &(tok, pr) in probs {
                    row[tok as usize] = pr.ln();
                }
            }
        }
        Ok(out)
    }
    fn reorder(&mut self, source: &[usize]) {
        self.histories = source.iter().map(|&s| self.histories[s].clone()).collect();
    }
}

const A: u32 = 100;
const B: u32 = 200;
const C: u32 = 300;
const D: u32 = 400;

#[test]
fn greedy_follows_argmax_and_suppresses_blank_at_start() {
    let tok = tokenizer();
    let cfg = config(&tok);
    let eot = tok.special.eot;
    let space = tok.encode(" ").unwrap()[0];
    let decoder = Decoder::new(&cfg, &tok, &DecodeOptions::default()).unwrap();
    assert_eq!(decoder.initial_tokens, vec![tok.special.sot, tok.special.no_timestamps]);
    // At the start, end of text and " " are likeliest but SuppressBlank masks them; a suppressed
    // symbol ('"' is a non-speech token) is masked at every step.
    let quote = tok.encode("\"").unwrap()[0];
    let table: &[(&[u32], &[(u32, f32)])] = &[
        (&[], &[(eot, 0.5), (space, 0.3), (A, 0.15), (B, 0.05)]),
        (&[A], &[(quote, 0.7), (C, 0.2), (eot, 0.1)]),
        (&[A, C], &[(eot, 0.9), (D, 0.1)]),
    ];
    let mut lm = Scripted::new(1, 2, table);
    let r = decoder.run(&mut lm).unwrap();
    assert_eq!(r.tokens, vec![A, C]);
    // Log-probabilities come from the masked logits, renormalised.
    let l0 = (0.15f32 / 0.20).ln();
    let l1 = (0.2f32 / 0.3).ln();
    let l2 = 0.9f32.ln();
    assert!((r.sum_logprob - (l0 + l1 + l2)).abs() < 1e-3, "{}", r.sum_logprob);
    assert!((r.avg_logprob - r.sum_logprob / 3.0).abs() < 1e-6);
}

#[test]
fn beam_search_keeps_the_best_by_length_normalised_logprob() {
    let tok = tokenizer();
    let cfg = config(&tok);
    let eot = tok.special.eot;
    let opts = DecodeOptions { beam_size: Some(2), ..DecodeOptions::default() };
    let decoder = Decoder::new(&cfg, &tok, &opts).unwrap();
    assert_eq!(decoder.n_seq(), 2);
    // Greedy would take A (0.6) then end (0.5): [A], score ln .6 + ln .5 = -1.20 over 1.
    // Beam 2: step 0 keeps A (-0.51) and B (-0.92). Step 1: A,eot (-1.20) finishes;
    // B,D (-0.92 + ln .9 = -1.02) and A,C (-0.51 + ln .3 = -1.71) live on.
    // Step 2: B,D,eot (-1.02) finishes, which makes the 2 candidates patience 1 asks for.
    // Ranking over length: [A] -1.20/1, [B,D] -1.02/2 = -0.51, so [B, D] wins.
    let table: &[(&[u32], &[(u32, f32)])] = &[
        (&[], &[(A, 0.6), (B, 0.399), (C, 0.001)]),
        (&[A], &[(eot, 0.5), (C, 0.3), (D, 0.2)]),
        (&[B], &[(D, 0.9), (eot, 0.09), (C, 0.01)]),
        (&[A, C], &[(eot, 0.6), (D, 0.4)]),
        (&[B, D], &[(eot, 0.999), (C, 0.001)]),
    ];
    let mut lm = Scripted::new(2, 2, table);
    let r = decoder.run(&mut lm).unwrap();
    assert_eq!(r.tokens, vec![B, D]);
    let expected = 0.399f32.ln() + 0.9f32.ln() + 0.999f32.ln();
    assert!((r.sum_logprob - expected).abs() < 1e-3, "{} vs {expected}", r.sum_logprob);

    // The greedy decoder on the same table stops after [A].
    let greedy = Decoder::new(&cfg, &tok, &DecodeOptions::default()).unwrap();
    let mut lm = Scripted::new(1, 2, table);
    assert_eq!(greedy.run(&mut lm).unwrap().tokens, vec![A]);
}

#[test]
fn greedy_stops_at_sample_len() {
    let tok = tokenizer();
    let cfg = config(&tok);
    let opts = DecodeOptions { sample_len: Some(5), ..DecodeOptions::default() };
    let decoder = Decoder::new(&cfg, &tok, &opts).unwrap();
    let mut table: Vec<(Vec<u32>, Vec<(u32, f32)>)> = vec![];
    for n in 0..6 {
        table.push((vec![A; n], vec![(A, 0.9), (tok.special.eot, 0.1)]));
    }
    let refs: Vec<(&[u32], &[(u32, f32)])> = table.iter().map(|(h, p)| (h.as_slice(), p.as_slice())).collect();
    let mut lm = Scripted::new(1, 2, &refs);
    assert_eq!(decoder.run(&mut lm).unwrap().tokens, vec![A; 5]);
}

fn ts_rules(tok: &Tokenizer) -> LogitRules {
    let st = &tok.special;
    LogitRules {
        sample_begin: 1,
        blank: vec![],
        suppress: vec![],
        timestamps: Some(TimestampRules {
            timestamp_begin: st.timestamp_begin,
            eot: st.eot,
            no_timestamps: st.no_timestamps,
            max_initial_timestamp_index: Some(50),
        }),
    }
}

#[test]
fn timestamp_rules() {
    let tok = tokenizer();
    let st = tok.special.clone();
    let tb = st.timestamp_begin as usize;
    let rules = ts_rules(&tok);
    let finite = |l: &[f32], i: usize| l[i].is_finite();

    // At the start only timestamps up to max_initial_timestamp (1.0 s = index 50) may come.
    let mut l = vec![0.0f32; V];
    rules.apply(&mut l, &[st.sot]);
    assert!(!finite(&l, A as usize) && !finite(&l, st.eot as usize));
    assert!(finite(&l, tb) && finite(&l, tb + 50) && !finite(&l, tb + 51));

    // After text then one timestamp (a segment end): a timestamp or end of text, not text;
    // the timestamp may repeat (it starts the next segment) but not go back.
    let mut l = vec![0.0f32; V];
    l[st.eot as usize] = 10.0;
    rules.apply(&mut l, &[st.sot, st.timestamp_begin, A, st.timestamp_begin + 10]);
    assert!(!finite(&l, A as usize));
    assert!(finite(&l, st.eot as usize));
    assert!(!finite(&l, tb + 9) && finite(&l, tb + 10));

    // After a pair of timestamps: text next (timestamps masked, which leaves text the likeliest).
    let mut l = vec![0.0f32; V];
    rules.apply(&mut l, &[st.sot, st.timestamp_begin, A, st.timestamp_begin + 10, st.timestamp_begin + 10]);
    assert!(!finite(&l, tb + 20));
    assert!(finite(&l, A as usize));

    // <|notimestamps|> is never sampled with timestamps on.
    assert!(!finite(&l, st.no_timestamps as usize));

    // Timestamps likelier in sum than any text token force a timestamp.
    let mut l = vec![-10.0f32; V];
    l[A as usize] = 0.0;
    for v in &mut l[tb + 11..tb + 1000] {
        *v = -2.0;
    }
    rules.apply(&mut l, &[st.sot, st.timestamp_begin, A, B]);
    assert!(!finite(&l, A as usize));
    assert!(finite(&l, tb + 11));
}
