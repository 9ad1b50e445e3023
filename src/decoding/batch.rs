//! Many windows decoded in lockstep on one session: greedy or beam search per window, exactly as
//! each window alone (`Decoder::run_reference`), with finished windows leaving the session.
use super::{beam, greedy, rules, DecodeResult, Decoder, DecoderSession, Select};
use anyhow::{bail, Result};

/// One window's search while it runs.
struct Live {
    /// The window's index in the batch.
    window: usize,
    /// Its sequences (prompt included): 1 for greedy, the beam size for beam search.
    tokens: Vec<Vec<u32>>,
    sum_logprobs: Vec<f32>,
    no_speech_prob: f32,
    beam: Option<beam::BeamSearch>,
}

impl Decoder {
    /// `DecodingTask.run` for several windows at once on a fresh `session` of
    /// `prompts.len() * n_seq()` sequences: window `w` owns sequences `w * n_seq()..(w + 1) *
    /// n_seq()` and starts from `prompts[w]` (this decoder's `initial_tokens`, or those of another
    /// language: every prompt has this decoder's length). `done(w, result)` is called as window
    /// `w` finishes; its sequences then leave the session (`retain`), so later steps run fewer rows.
    /// Every window's result is the one [`Decoder::run_reference`] gives for it alone.
    ///
    /// The first step feeds the prompts and needs the host logits (no-speech probability); later
    /// steps go through [`DecoderSession::forward_select`], or through host logits and every rule
    /// when timestamps are on (their rules depend on the tokens so far).
    pub fn run_many(
        &self,
        session: &mut dyn DecoderSession,
        prompts: &[&[u32]],
        done: &mut dyn FnMut(usize, DecodeResult),
    ) -> Result<()> {
        let n = self.n_seq();
        let begin = self.rules.sample_begin;
        if session.n_seq() != n * prompts.len() {
            bail!("decoder session holds {} sequences, decoding {} windows needs {}", session.n_seq(), prompts.len(), n * prompts.len());
        }
        if let Some(p) = prompts.iter().find(|p| p.len() != begin) {
            bail!("a prompt of {} tokens, expected {begin}", p.len());
        }
        let v = session.n_vocab();
        let k = self.beam_size.map_or(1, |b| b + 1);
        let mut live: Vec<Live> = prompts
            .iter()
            .enumerate()
            .map(|(w, p)| Live {
                window: w,
                tokens: vec![p.to_vec(); n],
                sum_logprobs: vec![0.0; n],
                no_speech_prob: f32::NAN,
                beam: self.beam_size.map(|b| beam::BeamSearch::new(b, self.patience, self.eot)),
            })
            .collect();
        for i in 0..self.sample_len {
            if live.is_empty() {
                break;
            }
            // The first call feeds the whole prompt; later calls only the newest token (KV cache).
            let feed: Vec<&[u32]> = live
                .iter()
                .flat_map(|w| w.tokens.iter())
                .map(|t| if i == 0 { t.as_slice() } else { &t[t.len() - 1..] })
                .collect();
            let rows = feed.len();
            let mut no_speech = Vec::new();
            let picks = if i == 0 || self.rules.timestamps.is_some() {
                let len = feed[0].len();
                let logits = session.forward(&feed)?;
                if logits.len() != feed.len() * len * v {
                    bail!("backend returned {} logits, expected {}", logits.len(), feed.len() * len * v);
                }
                if i == 0 {
                    // no_speech_prob: softmax at the start-of-transcript position, before any rule.
                    no_speech = (0..live.len())
                        .map(|wi| {
                            let at = (wi * n * len + self.sot_index) * v;
                            let at_sot = &logits[at..at + v];
                            (at_sot[self.no_speech as usize] - rules::logsumexp(at_sot)).exp()
                        })
                        .collect();
                }
                let select = Select { suppress: &[], blank: &[], k };
                let tokens = live.iter().flat_map(|w| w.tokens.iter());
                tokens
                    .enumerate()
                    .map(|(j, t)| {
                        let mut l = logits[(j * len + len - 1) * v..(j * len + len) * v].to_vec();
                        self.rules.apply(&mut l, t);
                        select.pick(&l)
                    })
                    .collect()
            } else {
                // SuppressBlank only at the first sampled position (every sequence has the same length).
                let first = live[0].tokens[0].len() == begin;
                let select = Select { suppress: &self.rules.suppress, blank: if first { &self.rules.blank } else { &[] }, k };
                session.forward_select(&feed, &select)?
            };
            drop(feed);
            if picks.len() != rows || picks.iter().any(|p| p.len() < k.min(v)) {
                bail!("the backend's selection has the wrong shape");
            }
            for (w, p) in live.iter_mut().zip(no_speech) {
                w.no_speech_prob = p;
            }

            let mut source: Vec<usize> = (0..rows).collect();
            let mut finished = vec![false; live.len()];
            for (wi, w) in live.iter_mut().enumerate() {
                let block = &picks[wi * n..(wi + 1) * n];
                let completed = match w.beam.as_mut() {
                    None => {
                        for ((t, sum), p) in w.tokens.iter_mut().zip(w.sum_logprobs.iter_mut()).zip(block) {
                            greedy::update_pick(t, p[0], sum, self.eot);
                        }
                        w.tokens.iter().all(|t| t.last() == Some(&self.eot))
                    }
                    Some(b) => {
                        let step = b.update_picks(&w.tokens, block, &w.sum_logprobs);
                        if step.tokens.len() != n {
                            bail!("beam search kept {} sequences, expected {n}", step.tokens.len());
                        }
                        w.tokens = step.tokens;
                        w.sum_logprobs = step.sum_logprobs;
                        for (j, &s) in step.source.iter().enumerate() {
                            source[wi * n + j] = wi * n + s;
                        }
                        step.completed
                    }
                };
                finished[wi] = completed || w.tokens[0].len() > self.n_ctx;
                if finished[wi] {
                    // Its sequences leave the session: no need to reorder them.
                    for (j, s) in source[wi * n..(wi + 1) * n].iter_mut().enumerate() {
                        *s = wi * n + j;
                    }
                }
            }
            if source.iter().enumerate().any(|(j, &s)| s != j) {
                session.reorder(&source);
            }
            if finished.iter().any(|&f| f) {
                let keep: Vec<usize> = (0..rows).filter(|&j| !finished[j / n]).collect();
                let mut still = Vec::with_capacity(live.len());
                for (w, f) in live.into_iter().zip(&finished) {
                    if *f {
                        done(w.window, self.finalize(w)?);
                    } else {
                        still.push(w);
                    }
                }
                live = still;
                if !live.is_empty() {
                    session.retain(&keep)?;
                }
            }
        }
        for w in live {
            done(w.window, self.finalize(w)?);
        }
        Ok(())
    }

    /// The window's result once its search has ended.
    fn finalize(&self, w: Live) -> Result<DecodeResult> {
        let candidates = match w.beam {
            Some(b) => b.finalize(&w.tokens, &w.sum_logprobs),
            // GreedyDecoder.finalize: every sequence gets an end of text at the end.
            None => w
                .tokens
                .into_iter()
                .zip(w.sum_logprobs)
                .map(|(mut t, s)| {
                    t.push(self.eot);
                    (t, s)
                })
                .collect(),
        };
        self.best(candidates, w.no_speech_prob)
    }
}
