//! openai-whisper's decoding (`whisper/decoding.py`): logit rules, greedy and beam search.
mod batch;
pub mod beam;
pub mod greedy;
mod reference;
pub mod rules;

use crate::model::ModelConfig;
use crate::text::Tokenizer;
use anyhow::{bail, Result};
use rules::{LogitRules, TimestampRules};

/// Decoder state on some backend: `n_seq` token sequences, each attending to the audio features
/// of its utterance (one utterance for all, or several: see `Backend::session_many`), each with
/// its own self-attention KV cache. All sequences advance together (one position counter).
pub trait DecoderSession {
    fn n_seq(&self) -> usize;
    fn n_vocab(&self) -> usize;
    /// Appends `tokens[i]` to sequence `i` (every slice the same length) and returns the logits of
    /// every appended position: `[n_seq][tokens[0].len()][n_vocab]`, row-major.
    fn forward(&mut self, tokens: &[&[u32]]) -> Result<Vec<f32>>;
    /// Sequence `i` continues from what sequence `source[i]` held (beam search reordering).
    fn reorder(&mut self, source: &[usize]);
    /// Keeps only the sequences `keep` (strictly increasing indices), which become sequences
    /// `0..keep.len()`: a finished window's sequences leave, and later steps run without them.
    fn retain(&mut self, keep: &[usize]) -> Result<()>;
    /// [`DecoderSession::forward`], then for each sequence, on the logits of its last appended
    /// position with `select`'s masks applied: the argmax and its log-probability (`k` = 1), or
    /// the `k` likeliest tokens by log-probability, best first (ties: lower id first). Backends
    /// that can do this where the logits are (the GPU) return only these; the default does it on
    /// the host from `forward`'s logits ([`select_on_host`]).
    fn forward_select(&mut self, tokens: &[&[u32]], select: &Select) -> Result<Vec<Vec<(u32, f32)>>> {
        select_on_host(self, tokens, select)
    }
}

/// What [`DecoderSession::forward_select`] masks and returns: the logit rules of a decoding
/// without timestamps (SuppressBlank, SuppressTokens), which do not depend on the tokens so far.
#[derive(Clone, Copy, Debug)]
pub struct Select<'a> {
    /// Token ids masked (set to -inf) before selecting: SuppressTokens, every step.
    pub suppress: &'a [u32],
    /// Also masked: SuppressBlank's `encode(" ") + [eot]` at the first sampled step, else empty.
    pub blank: &'a [u32],
    /// 1 for greedy (the argmax), `beam_size + 1` for beam search.
    pub k: usize,
}

impl Select<'_> {
    /// The selection from one sequence's `logits` with the masks already applied, exactly as the
    /// searches make it: greedy's argmax (first on ties) and `logit - logsumexp`, or the top `k`
    /// of `log_softmax`.
    pub fn pick(&self, logits: &[f32]) -> Vec<(u32, f32)> {
        if self.k == 1 {
            vec![greedy::pick(logits)]
        } else {
            beam::top_logprobs(logits, self.k)
        }
    }
}

/// [`DecoderSession::forward_select`] on the host, from `forward`'s logits.
pub fn select_on_host<S: DecoderSession + ?Sized>(session: &mut S, tokens: &[&[u32]], select: &Select) -> Result<Vec<Vec<(u32, f32)>>> {
    let logits = session.forward(tokens)?;
    let (n, v) = (session.n_seq(), session.n_vocab());
    let t = tokens.first().map_or(0, |s| s.len());
    if n == 0 || t == 0 || logits.len() != n * t * v {
        bail!("backend returned {} logits, expected {}", logits.len(), n * t * v);
    }
    Ok((0..n)
        .map(|j| {
            let mut l = logits[(j * t + t - 1) * v..(j * t + t) * v].to_vec();
            rules::mask(&mut l, select.blank);
            rules::mask(&mut l, select.suppress);
            select.pick(&l)
        })
        .collect())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    Transcribe,
    Translate,
}

/// The subset of openai-whisper's `DecodingOptions` that whisper-trt supports (temperature 0).
#[derive(Clone, Debug)]
pub struct DecodeOptions {
    pub task: Task,
    /// Language code; None asks the model (multilingual models only).
    pub language: Option<String>,
    /// None: greedy. Some(n): beam search with n beams.
    pub beam_size: Option<usize>,
    pub patience: f32,
    /// Maximum number of sampled tokens; None: n_text_ctx / 2.
    pub sample_len: Option<usize>,
    pub without_timestamps: bool,
    /// Seconds; openai-whisper's default is 1.0.
    pub max_initial_timestamp: Option<f32>,
    pub suppress_blank: bool,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            task: Task::Transcribe,
            language: None,
            beam_size: None,
            patience: 1.0,
            sample_len: None,
            without_timestamps: true,
            max_initial_timestamp: Some(1.0),
            suppress_blank: true,
        }
    }
}

/// What decoding one window gives (`DecodingResult`).
#[derive(Clone, Debug, PartialEq)]
pub struct DecodeResult {
    /// Sampled tokens, without the prompt and without end of text.
    pub tokens: Vec<u32>,
    pub sum_logprob: f32,
    /// sum_logprob / (tokens + 1): the end of text token counts.
    pub avg_logprob: f32,
    /// Probability of <|nospeech|> at the start-of-transcript position.
    pub no_speech_prob: f32,
}

/// A prepared `DecodingTask`: prompt, rules and search for one set of options.
pub struct Decoder {
    pub initial_tokens: Vec<u32>,
    pub rules: LogitRules,
    sot_index: usize,
    eot: u32,
    no_speech: u32,
    sample_len: usize,
    n_ctx: usize,
    beam_size: Option<usize>,
    patience: f32,
}

impl Decoder {
    pub fn new(config: &ModelConfig, tokenizer: &Tokenizer, opts: &DecodeOptions) -> Result<Self> {
        let st = &tokenizer.special;
        // The start-of-transcript sequence: multilingual models also name the language and task.
        let mut initial_tokens = vec![st.sot];
        if config.multilingual {
            let Some(code) = opts.language.as_deref() else {
                bail!("no language given: detect it first (Decoder::detect_language)");
            };
            let Some(lang) = tokenizer.language_token(code) else {
                bail!("unknown language code {code:?}");
            };
            initial_tokens.push(lang);
            initial_tokens.push(match opts.task {
                Task::Transcribe => st.transcribe,
                Task::Translate => st.translate,
            });
        } else {
            if let Some(code) = opts.language.as_deref().filter(|&c| c != "en") {
                bail!("this model is English-only; it cannot take language {code:?}");
            }
            if opts.task == Task::Translate {
                bail!("this model is English-only; it cannot translate");
            }
        }
        if opts.without_timestamps {
            initial_tokens.push(st.no_timestamps);
        }
        let sample_begin = initial_tokens.len();
        let mut blank = tokenizer.encode(" ")?;
        blank.push(st.eot);
        let suppress = rules::default_suppress_tokens(&tokenizer.non_speech_tokens()?, st);
        let timestamps = (!opts.without_timestamps).then(|| {
            // 30 s over n_audio_ctx positions: 0.02 s per timestamp step.
            let precision = 30.0 / config.n_audio_ctx as f32;
            TimestampRules {
                timestamp_begin: st.timestamp_begin,
                eot: st.eot,
                no_timestamps: st.no_timestamps,
                max_initial_timestamp_index: opts.max_initial_timestamp.map(|t| (t / precision).round() as u32),
            }
        });
        let rules = LogitRules {
            sample_begin,
            blank: if opts.suppress_blank { blank } else { vec![] },
            suppress,
            timestamps,
        };
        if opts.beam_size == Some(0) || opts.patience <= 0.0 {
            bail!("beam size and patience must be positive");
        }
        Ok(Decoder {
            initial_tokens,
            rules,
            sot_index: 0,
            eot: st.eot,
            no_speech: st.no_speech,
            sample_len: opts.sample_len.unwrap_or(config.n_text_ctx / 2),
            n_ctx: config.n_text_ctx,
            beam_size: opts.beam_size,
            patience: opts.patience,
        })
    }

    /// Number of sequences the session must hold: the beam size, or 1 for greedy.
    pub fn n_seq(&self) -> usize {
        self.beam_size.unwrap_or(1)
    }

    /// `DecodingTask.run` for one audio on a fresh `session` of `n_seq()` sequences.
    pub fn run(&self, session: &mut dyn DecoderSession) -> Result<DecodeResult> {
        let mut out = None;
        self.run_many(session, &[&self.initial_tokens], &mut |_, r| out = Some(r))?;
        out.ok_or_else(|| anyhow::anyhow!("internal: decoding gave no result"))
    }

    /// The prompt length: where sampled tokens begin.
    pub fn sample_begin(&self) -> usize {
        self.rules.sample_begin
    }

    /// What is left between the prompt and the first end of text of each candidate (prompt
    /// included, end of text appended), ranked by sum log-probability over length
    /// (MaximumLikelihoodRanker, no length penalty): the `DecodingResult`.
    fn best(&self, candidates: Vec<(Vec<u32>, f32)>, no_speech_prob: f32) -> Result<DecodeResult> {
        let sampled: Vec<(Vec<u32>, f32)> = candidates
            .into_iter()
            .map(|(t, s)| {
                let body = &t[self.rules.sample_begin.min(t.len())..];
                let end = body.iter().position(|&x| x == self.eot).unwrap_or(body.len());
                (body[..end].to_vec(), s)
            })
            .collect();
        let mut best = 0;
        let mut best_score = f32::NEG_INFINITY;
        for (k, (t, s)) in sampled.iter().enumerate() {
            let score = s / t.len() as f32;
            if k == 0 || score > best_score {
                best = k;
                best_score = score;
            }
        }
        let Some((tokens, sum_logprob)) = sampled.into_iter().nth(best) else {
            bail!("internal: decoding ended with no candidate");
        };
        let avg_logprob = sum_logprob / (tokens.len() + 1) as f32;
        Ok(DecodeResult { tokens, sum_logprob, avg_logprob, no_speech_prob })
    }

    /// `detect_language` on a fresh one-sequence session: the likeliest language token after
    /// start-of-transcript. Returns the language code.
    pub fn detect_language(tokenizer: &Tokenizer, session: &mut dyn DecoderSession) -> Result<String> {
        Self::detect_languages(tokenizer, session)?.pop().ok_or_else(|| anyhow::anyhow!("internal: no sequence"))
    }

    /// [`Decoder::detect_language`] for every sequence of a fresh session (one per utterance).
    pub fn detect_languages(tokenizer: &Tokenizer, session: &mut dyn DecoderSession) -> Result<Vec<String>> {
        let st = &tokenizer.special;
        let n = session.n_seq();
        let logits = session.forward(&vec![&[st.sot][..]; n])?;
        let v = session.n_vocab();
        if logits.len() != n * v {
            bail!("backend returned {} logits, expected {}", logits.len(), n * v);
        }
        logits
            .chunks_exact(v)
            .map(|logits| {
                let (code, _) = st
                    .languages
                    .iter()
                    .filter(|(_, id)| (*id as usize) < v)
                    .max_by(|a, b| logits[a.1 as usize].partial_cmp(&logits[b.1 as usize]).unwrap_or(std::cmp::Ordering::Equal))
                    .ok_or_else(|| anyhow::anyhow!("the vocabulary has no language tokens"))?;
                Ok(code.clone())
            })
            .collect()
    }
}
