//! The one-window decoding loop on host logits, kept as the oracle of the batched loop.
use super::{beam, greedy, rules, DecodeResult, Decoder, DecoderSession};
use anyhow::{bail, Result};

impl Decoder {
    /// `DecodingTask.run` for one audio on a fresh `session` of `n_seq()` sequences, the
    /// straightforward way: host logits every step, every rule applied to them, no batching.
    /// [`Decoder::run`] and [`Decoder::run_many`] must give exactly its results; tests check that.
    pub fn run_reference(&self, session: &mut dyn DecoderSession) -> Result<DecodeResult> {
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
        self.best(candidates, no_speech_prob)
    }
}
