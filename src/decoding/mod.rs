//! openai-whisper's decoding (`whisper/decoding.py`): logit rules, greedy and beam search.
pub mod beam;
pub mod greedy;
pub mod rules;

use crate::model::ModelConfig;
use crate::text::Tokenizer;
use anyhow::{bail, Result};
use rules::{LogitRules, TimestampRules};

/// One utterance's decoder state on some backend: `n_seq` token sequences that share the
/// utterance's audio features, each with its own self-attention KV cache.
pub trait DecoderSession {
    fn n_seq(&self) -> usize;
    fn n_vocab(&self) -> usize;
    /// Appends `tokens[i]` to sequence `i` (every slice the same length) and returns the logits of
    /// every appended position: `[n_seq][tokens[0].len()][n_vocab]`, row-major.
    fn forward(&mut self, tokens: &[&[u32]]) -> Result<Vec<f32>>;
    /// Sequence `i` continues from what sequence `source[i]` held (beam search reordering).
    fn reorder(&mut self, source: &[usize]);
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
        let n = self.n_seq();
        if session.n_seq() != n {
            bail!("decoder session holds {} sequences, decoding needs {n}", session.n_seq());
        }
        let v = session.n_vocab();
        let mut tokens = vec![self.initial_tokens.clone(); n];
        let mut sum_logprobs = vec![0f32; n];
        let mut no_speech_prob = f32::NAN;
        let mut beam = self.beam_size.map(|b| beam::BeamSearch::new(b, self.patience, self.eot));
        for i in 0..self.sample_len {
            // The first call feeds the whole prompt; later calls only the newest token (KV cache).
            let feed: Vec<&[u32]> = if i == 0 {
                tokens.iter().map(|t| t.as_slice()).collect()
            } else {
                tokens.iter().map(|t| &t[t.len() - 1..]).collect()
            };
            let len = feed[0].len();
            let logits = session.forward(&feed)?;
            if logits.len() != n * len * v {
                bail!("backend returned {} logits, expected {}", logits.len(), n * len * v);
            }
            if i == 0 {
                // no_speech_prob: softmax at the start-of-transcript position, before any rule.
                let at_sot = &logits[self.sot_index * v..(self.sot_index + 1) * v];
                no_speech_prob = (at_sot[self.no_speech as usize] - rules::logsumexp(at_sot)).exp();
            }
            let mut last: Vec<Vec<f32>> =
                (0..n).map(|j| logits[(j * len + len - 1) * v..(j * len + len) * v].to_vec()).collect();
            for (l, t) in last.iter_mut().zip(&tokens) {
                self.rules.apply(l, t);
            }
            let completed = match beam.as_mut() {
                None => {
                    for j in 0..n {
                        greedy::update(&mut tokens[j], &last[j], &mut sum_logprobs[j], self.eot);
                    }
                    tokens.iter().all(|t| t.last() == Some(&self.eot))
                }
                Some(b) => {
                    let refs: Vec<&[f32]> = last.iter().map(|l| l.as_slice()).collect();
                    let step = b.update(&tokens, &refs, &sum_logprobs);
                    if step.tokens.len() != n {
                        bail!("beam search kept {} sequences, expected {n}", step.tokens.len());
                    }
                    session.reorder(&step.source);
                    tokens = step.tokens;
                    sum_logprobs = step.sum_logprobs;
                    step.completed
                }
            };
            if completed || tokens[0].len() > self.n_ctx {
                break;
            }
        }
        let candidates = match beam {
            Some(b) => b.finalize(&tokens, &sum_logprobs),
            // GreedyDecoder.finalize: every sequence gets an end of text at the end.
            None => tokens
                .into_iter()
                .zip(sum_logprobs)
                .map(|(mut t, s)| {
                    t.push(self.eot);
                    (t, s)
                })
                .collect(),
        };
        // Keep what lies between the prompt and the first end of text, then rank by
        // sum log-probability over length (MaximumLikelihoodRanker, no length penalty).
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
        let (tokens, sum_logprob) = sampled.into_iter().nth(best).expect("at least one candidate");
        let avg_logprob = sum_logprob / (tokens.len() + 1) as f32;
        Ok(DecodeResult { tokens, sum_logprob, avg_logprob, no_speech_prob })
    }

    /// `detect_language` on a fresh one-sequence session: the likeliest language token after
    /// start-of-transcript. Returns the language code.
    pub fn detect_language(tokenizer: &Tokenizer, session: &mut dyn DecoderSession) -> Result<String> {
        let st = &tokenizer.special;
        let logits = session.forward(&[&[st.sot]])?;
        let v = session.n_vocab();
        let logits = &logits[..v];
        let (code, _) = st
            .languages
            .iter()
            .filter(|(_, id)| (*id as usize) < v)
            .max_by(|a, b| logits[a.1 as usize].partial_cmp(&logits[b.1 as usize]).unwrap_or(std::cmp::Ordering::Equal))
            .ok_or_else(|| anyhow::anyhow!("the vocabulary has no language tokens"))?;
        Ok(code.clone())
    }
}
