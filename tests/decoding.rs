//! Decoding rules and searches on a scripted language model, checked against outcomes worked out
//! by hand from openai-whisper's decoding.py.
mod common;
use std::collections::HashMap;
use whisper_trt::decoding::rules::{LogitRules, TimestampRules};
use whisper_trt::decoding::{beam, greedy, rules, select_on_host, DecodeOptions, DecodeResult, Decoder, DecoderSession, Select};
use whisper_trt::model::ModelConfig;
use whisper_trt::text::Tokenizer;

const V: usize = 51864;

/// Next-token probabilities after a sampled history.
type Entry<'a> = (&'a [u32], &'a [(u32, f32)]);
type Probs = Vec<(u32, f32)>;

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
    fn new(n_seq: usize, prompt_len: usize, table: &[Entry]) -> Self {
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
    fn retain(&mut self, keep: &[usize]) -> anyhow::Result<()> {
        self.histories = keep.iter().map(|&s| self.histories[s].clone()).collect();
        Ok(())
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
    let table: &[Entry] = &[
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
    let table: &[Entry] = &[
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
    let mut table: Vec<(Vec<u32>, Probs)> = Vec::new();
    for n in 0..6 {
        table.push((vec![A; n], vec![(A, 0.9), (tok.special.eot, 0.1)]));
    }
    let refs: Vec<Entry> = table.iter().map(|(h, p)| (h.as_slice(), p.as_slice())).collect();
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

/// A pseudo-random language model per utterance: the logits of a few tokens (A-D, end of text, a
/// space and a suppressed symbol) hash from the utterance's seed and the sampled history; every
/// other token is far below. End of text grows likelier with length at a seed-dependent rate, so
/// windows end at different steps. Sequence `s` belongs to utterance `seeds[s / per]`; reorder
/// and retain move the histories, so a wrong index shows up as different results.
struct Hashed {
    prompt_len: usize,
    seeds: Vec<u64>,
    histories: Vec<Vec<u32>>,
    tokens: Vec<u32>,
    eot: u32,
    /// Sequences of every forward call.
    rows: Vec<usize>,
}

impl Hashed {
    fn new(tok: &Tokenizer, seeds: &[u64], per: usize, prompt_len: usize) -> Self {
        let space = tok.encode(" ").unwrap()[0];
        let quote = tok.encode("\"").unwrap()[0];
        let eot = tok.special.eot;
        Hashed {
            prompt_len,
            seeds: seeds.iter().flat_map(|&s| std::iter::repeat_n(s, per)).collect(),
            histories: vec![vec![]; seeds.len() * per],
            tokens: vec![A, B, C, D, eot, space, quote],
            eot,
            rows: vec![],
        }
    }

    fn hash(mut x: u64) -> u64 {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51afd7ed558ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ceb9fe1a85ec53);
        x ^ (x >> 33)
    }

    fn row(&self, seed: u64, sampled: &[u32], out: &mut [f32]) {
        let mut h = Self::hash(seed);
        for &t in sampled {
            h = Self::hash(h ^ t as u64);
        }
        for (i, &t) in self.tokens.iter().enumerate() {
            let r = Self::hash(h ^ (i as u64 + 1));
            // Coarse values (multiples of 1/8) make exact ties between tokens common.
            let mut l = (r % 48) as f32 / 8.0 - 3.0;
            if t == self.eot {
                l += (sampled.len() as f32) * (0.2 + (seed % 5) as f32 * 0.25) - 2.0;
            }
            out[t as usize] = l;
        }
    }
}

impl DecoderSession for Hashed {
    fn n_seq(&self) -> usize {
        self.histories.len()
    }
    fn n_vocab(&self) -> usize {
        V
    }
    fn forward(&mut self, tokens: &[&[u32]]) -> anyhow::Result<Vec<f32>> {
        assert_eq!(tokens.len(), self.histories.len(), "feed of the wrong size");
        self.rows.push(tokens.len());
        let len = tokens[0].len();
        let mut out = vec![-30.0f32; self.histories.len() * len * V];
        for (j, new) in tokens.iter().enumerate() {
            for (p, &t) in new.iter().enumerate() {
                self.histories[j].push(t);
                let h = &self.histories[j];
                if h.len() < self.prompt_len {
                    continue;
                }
                let row = &mut out[(j * len + p) * V..(j * len + p + 1) * V];
                self.row(self.seeds[j], &h[self.prompt_len..], row);
            }
        }
        Ok(out)
    }
    fn reorder(&mut self, source: &[usize]) {
        self.histories = source.iter().map(|&s| self.histories[s].clone()).collect();
        self.seeds = source.iter().map(|&s| self.seeds[s]).collect();
    }
    fn retain(&mut self, keep: &[usize]) -> anyhow::Result<()> {
        assert!(keep.windows(2).all(|w| w[0] < w[1]) && keep.iter().all(|&k| k < self.histories.len()));
        self.histories = keep.iter().map(|&s| self.histories[s].clone()).collect();
        self.seeds = keep.iter().map(|&s| self.seeds[s]).collect();
        Ok(())
    }
}

/// Several windows decoded in lockstep give each window's result alone, greedy and beam search,
/// with windows ending at different steps (so finished ones leave the session) and some running
/// to the sample length.
#[test]
fn run_many_equals_each_window_alone() {
    let tok = tokenizer();
    let cfg = config(&tok);
    for (beam_size, patience) in [(None, 1.0), (Some(2), 1.0), (Some(3), 1.0), (Some(3), 2.0), (Some(5), 1.0)] {
        let opts = DecodeOptions { beam_size, patience, sample_len: Some(14), ..DecodeOptions::default() };
        let decoder = Decoder::new(&cfg, &tok, &opts).unwrap();
        let per = decoder.n_seq();
        let prompt = decoder.initial_tokens.clone();
        let mut shrank = false;
        for batch in 0..12u64 {
            let seeds: Vec<u64> = (0..1 + batch % 6).map(|i| batch * 31 + i * 7).collect();
            let alone: Vec<DecodeResult> = seeds
                .iter()
                .map(|&s| decoder.run_reference(&mut Hashed::new(&tok, &[s], per, prompt.len())).unwrap())
                .collect();
            let mut lm = Hashed::new(&tok, &seeds, per, prompt.len());
            let prompts = vec![prompt.as_slice(); seeds.len()];
            let mut got: Vec<Option<DecodeResult>> = vec![None; seeds.len()];
            let mut order = vec![];
            decoder
                .run_many(&mut lm, &prompts, &mut |w, r| {
                    assert!(got[w].is_none(), "window {w} reported twice");
                    order.push(w);
                    got[w] = Some(r);
                })
                .unwrap();
            for (w, want) in alone.iter().enumerate() {
                assert_eq!(got[w].as_ref(), Some(want), "beam {beam_size:?} patience {patience} batch {batch} window {w}");
            }
            // Rows only ever shrink, by whole windows.
            assert!(lm.rows.windows(2).all(|r| r[1] <= r[0] && (r[0] - r[1]) % per == 0), "{:?}", lm.rows);
            shrank |= lm.rows.last() < lm.rows.first();
        }
        assert!(shrank, "beam {beam_size:?}: no batch ever retired a window early; the test data is too uniform");
    }
}

/// A plain argmax and top-k written the obvious way (sort), on the masked logits.
fn naive_select(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    let lse = rules::logsumexp(logits);
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    if k == 1 {
        let best = idx.iter().copied().fold(0, |b, i| if logits[i] > logits[b] { i } else { b });
        return vec![(best as u32, logits[best] - lse)];
    }
    let lp = rules::log_softmax(logits);
    idx.sort_by(|&a, &b| lp[b].partial_cmp(&lp[a]).unwrap().then(a.cmp(&b)));
    idx[..k].iter().map(|&i| (i as u32, lp[i])).collect()
}

/// The host default of `forward_select` gives what the searches computed from the logits before
/// (argmax and log-softmax, top-k of log-softmax), masks included; ties come out lowest id first.
#[test]
fn host_selection_equals_the_searches() {
    let tok = tokenizer();
    let eot = tok.special.eot;
    let space = tok.encode(" ").unwrap()[0];
    let suppress: Vec<u32> = vec![5, 17, 300, 50000];
    let blank = vec![space, eot];
    let mut x = 12345u64;
    let mut rnd = || {
        x = Hashed::hash(x);
        x
    };
    for case in 0..40 {
        let n_seq = 1 + case % 4;
        let k = [1, 2, 4, 6, 11][case % 5];
        let first = case % 3 == 0;
        // Coarse random logits, with the largest values sometimes on masked tokens and ties.
        let logits: Vec<f32> = (0..n_seq * V).map(|_| (rnd() % 64) as f32 / 4.0 - 8.0).collect();
        struct Fixed(Vec<f32>, usize);
        impl DecoderSession for Fixed {
            fn n_seq(&self) -> usize {
                self.1
            }
            fn n_vocab(&self) -> usize {
                V
            }
            fn forward(&mut self, _: &[&[u32]]) -> anyhow::Result<Vec<f32>> {
                Ok(self.0.clone())
            }
            fn reorder(&mut self, _: &[usize]) {}
            fn retain(&mut self, _: &[usize]) -> anyhow::Result<()> {
                Ok(())
            }
        }
        let mut s = Fixed(logits.clone(), n_seq);
        let select = Select { suppress: &suppress, blank: if first { &blank } else { &[] }, k };
        let feed = vec![&[A][..]; n_seq];
        let got = select_on_host(&mut s, &feed, &select).unwrap();
        let got_default = s.forward_select(&feed, &select).unwrap();
        assert_eq!(got, got_default);
        for j in 0..n_seq {
            let mut l = logits[j * V..(j + 1) * V].to_vec();
            // LogitRules::apply without timestamps is exactly these masks.
            let r = rules::LogitRules { sample_begin: 2, blank: blank.clone(), suppress: suppress.clone(), timestamps: None };
            r.apply(&mut l, if first { &[1, 2] } else { &[1, 2, 3] });
            assert_eq!(got[j], naive_select(&l, k), "case {case} sequence {j}");
            if k == 1 {
                let mut t = vec![7u32];
                let (mut a, mut b) = (0.0f32, 0.0f32);
                greedy::update(&mut t, &l, &mut a, eot);
                greedy::update_pick(&mut t, got[j][0], &mut b, eot);
                assert_eq!((t[1], a), (t[2], b));
            } else {
                assert_eq!(beam::top_logprobs(&l, k), got[j]);
            }
        }
    }
}
