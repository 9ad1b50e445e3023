//! Logit rules, each reproducing one `LogitFilter` of openai-whisper's `decoding.py`.
use crate::model::SpecialTokens;

/// The timestamp rules (`ApplyTimestampRules`), used when timestamps are on.
#[derive(Clone, Debug)]
pub struct TimestampRules {
    pub timestamp_begin: u32,
    pub eot: u32,
    pub no_timestamps: u32,
    /// `max_initial_timestamp / precision`, rounded (50 for openai-whisper's default of 1.0 s).
    pub max_initial_timestamp_index: Option<u32>,
}

/// Every rule openai-whisper's `DecodingTask` applies to the logits of one step, in its order.
#[derive(Clone, Debug)]
pub struct LogitRules {
    /// Number of prompt tokens: the first sampled token is at this index.
    pub sample_begin: usize,
    /// `SuppressBlank`: `encode(" ") + [eot]`, masked only at the first sampled position.
    pub blank: Vec<u32>,
    /// `SuppressTokens`: masked at every step.
    pub suppress: Vec<u32>,
    pub timestamps: Option<TimestampRules>,
}

impl LogitRules {
    /// Applies the rules in place to `logits` of a sequence whose tokens so far (prompt included)
    /// are `tokens`.
    pub fn apply(&self, logits: &mut [f32], tokens: &[u32]) {
        // SuppressBlank: the first sampled token cannot be a space or end of text.
        if tokens.len() == self.sample_begin {
            mask(logits, &self.blank);
        }
        // SuppressTokens: non-speech symbols and task/special tokens, always.
        mask(logits, &self.suppress);
        if let Some(ts) = &self.timestamps {
            ts.apply(logits, &tokens[self.sample_begin.min(tokens.len())..], tokens.len() == self.sample_begin);
        }
    }
}

/// Sets `logits[id]` to -inf for every id of `ids` inside the vocabulary.
pub fn mask(logits: &mut [f32], ids: &[u32]) {
    for &t in ids {
        if let Some(l) = logits.get_mut(t as usize) {
            *l = f32::NEG_INFINITY;
        }
    }
}

impl TimestampRules {
    /// `ApplyTimestampRules.apply` for one sequence; `sampled` holds the tokens after the prompt.
    fn apply(&self, logits: &mut [f32], sampled: &[u32], at_begin: bool) {
        let tb = self.timestamp_begin as usize;
        let n = logits.len();
        // <|notimestamps|> is handled by without_timestamps, so it is never sampled here.
        logits[self.no_timestamps as usize] = f32::NEG_INFINITY;

        // Timestamps come in pairs, except directly before end of text.
        let is_ts = |t: u32| t >= self.timestamp_begin;
        let last_was_timestamp = sampled.last().is_some_and(|&t| is_ts(t));
        let penultimate_was_timestamp = sampled.len() < 2 || is_ts(sampled[sampled.len() - 2]);
        if last_was_timestamp {
            if penultimate_was_timestamp {
                // A pair just closed: the next token has to be text.
                logits[tb..].fill(f32::NEG_INFINITY);
            } else {
                // A segment just ended: the next token is a timestamp or end of text.
                logits[..self.eot as usize].fill(f32::NEG_INFINITY);
            }
        }

        // Timestamps never decrease, and each segment has a nonzero length (no infinite loop).
        if let Some(&last_ts) = sampled.iter().rev().find(|&&t| is_ts(t)) {
            let timestamp_last = if last_was_timestamp && !penultimate_was_timestamp {
                last_ts as usize
            } else {
                last_ts as usize + 1
            };
            logits[tb..timestamp_last.min(n)].fill(f32::NEG_INFINITY);
        }

        if at_begin {
            // The first sampled token is a timestamp, at most max_initial_timestamp.
            logits[..tb].fill(f32::NEG_INFINITY);
            if let Some(max) = self.max_initial_timestamp_index {
                let last_allowed = tb + max as usize;
                if last_allowed + 1 < n {
                    logits[last_allowed + 1..].fill(f32::NEG_INFINITY);
                }
            }
        }

        // If the timestamps together are likelier than any single text token, sample a timestamp.
        let logprobs = log_softmax(logits);
        let ts_logprob = logsumexp(&logprobs[tb..]);
        let max_text = logprobs[..tb].iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if ts_logprob > max_text {
            logits[..tb].fill(f32::NEG_INFINITY);
        }
    }
}

/// `F.log_softmax` in f32.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let lse = logsumexp(logits);
    logits.iter().map(|&x| x - lse).collect()
}

pub fn logsumexp(x: &[f32]) -> f32 {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return max;
    }
    let sum: f32 = x.iter().map(|&v| (v - max).exp()).sum();
    max + sum.ln()
}

/// The suppress list `DecodingTask._get_suppress_tokens` builds for the default `suppress_tokens="-1"`:
/// the non-speech symbols plus the task and start tokens, and no_speech (collected separately).
pub fn default_suppress_tokens(non_speech: &[u32], st: &SpecialTokens) -> Vec<u32> {
    let mut v: Vec<u32> = non_speech.to_vec();
    v.extend([st.transcribe, st.translate, st.sot, st.sot_prev, st.sot_lm, st.no_speech]);
    v.sort_unstable();
    v.dedup();
    v
}
