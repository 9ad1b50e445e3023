//! `BeamSearchDecoder` of openai-whisper for one audio: `beam_size` live sequences, candidates ranked
//! by cumulative log-probability, finished ones collected until `round(beam_size * patience)`.
use super::rules::log_softmax;
use std::collections::HashMap;

pub struct BeamSearch {
    pub beam_size: usize,
    pub eot: u32,
    max_candidates: usize,
    /// Finished sequences (prompt included, end of text appended) with their scores, in insertion
    /// order, as openai-whisper's dict keeps them.
    pub finished: Vec<(Vec<u32>, f32)>,
}

/// What one update decided: the new live sequences and, for each, the sequence it continues.
pub struct BeamStep {
    pub tokens: Vec<Vec<u32>>,
    pub sum_logprobs: Vec<f32>,
    pub source: Vec<usize>,
    pub completed: bool,
}

impl BeamSearch {
    pub fn new(beam_size: usize, patience: f32, eot: u32) -> Self {
        let max_candidates = ((beam_size as f32 * patience).round() as usize).max(1);
        BeamSearch { beam_size, eot, max_candidates, finished: Vec::new() }
    }

    /// `BeamSearchDecoder.update`: `logits[j]` (the rules already applied) belongs to `tokens[j]`.
    pub fn update(&mut self, tokens: &[Vec<u32>], logits: &[&[f32]], sum_logprobs: &[f32]) -> BeamStep {
        let picks: Vec<Vec<(u32, f32)>> = logits.iter().map(|l| top_logprobs(l, self.beam_size + 1)).collect();
        self.update_picks(tokens, &picks, sum_logprobs)
    }

    /// [`BeamSearch::update`] from each sequence's top `beam_size + 1` continuations (token,
    /// log-probability), best first, as [`top_logprobs`] gives them (or a backend computed them).
    pub fn update_picks(&mut self, tokens: &[Vec<u32>], picks: &[Vec<(u32, f32)>], sum_logprobs: &[f32]) -> BeamStep {
        // STEP 1: the cumulative log-probability of each sequence's top beam_size + 1 continuations.
        // Equal sequences (all beams are equal at the first step) keep their first position and the
        // last score and source, like a Python dict.
        let mut cands: Vec<(Vec<u32>, f32, usize)> = Vec::new();
        let mut index: HashMap<Vec<u32>, usize> = HashMap::new();
        for (j, prefix) in tokens.iter().enumerate() {
            for &(token, logprob) in picks[j].iter().take(self.beam_size + 1) {
                let mut seq = prefix.clone();
                seq.push(token);
                let score = sum_logprobs[j] + logprob;
                match index.get(&seq) {
                    Some(&k) => {
                        cands[k].1 = score;
                        cands[k].2 = j;
                    }
                    None => {
                        index.insert(seq.clone(), cands.len());
                        cands.push((seq, score, j));
                    }
                }
            }
        }
        // STEP 2: best first (stable, so ties keep insertion order); those ending in end of text are
        // finished, the next beam_size others live on.
        cands.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
        let mut step = BeamStep { tokens: vec![], sum_logprobs: vec![], source: vec![], completed: false };
        let mut newly_finished = Vec::new();
        for (seq, score, src) in cands {
            if seq.last() == Some(&self.eot) {
                newly_finished.push((seq, score));
            } else {
                step.tokens.push(seq);
                step.sum_logprobs.push(score);
                step.source.push(src);
                if step.tokens.len() == self.beam_size {
                    break;
                }
            }
        }
        // Newly finished sequences join the finished ones, best first, until the list is full.
        for (seq, score) in newly_finished {
            if self.finished.len() >= self.max_candidates {
                break;
            }
            match self.finished.iter_mut().find(|(s, _)| *s == seq) {
                Some(entry) => entry.1 = score,
                None => self.finished.push((seq, score)),
            }
        }
        step.completed = self.finished.len() >= self.max_candidates;
        step
    }

    /// `BeamSearchDecoder.finalize`: when fewer than beam_size sequences finished, the live ones join
    /// them, best first, with end of text appended.
    pub fn finalize(mut self, tokens: &[Vec<u32>], sum_logprobs: &[f32]) -> Vec<(Vec<u32>, f32)> {
        if self.finished.len() < self.beam_size {
            let mut order: Vec<usize> = (0..tokens.len()).collect();
            // np.argsort(...)[::-1]: descending; ties come out in reverse index order.
            order.sort_by(|&a, &b| sum_logprobs[a].partial_cmp(&sum_logprobs[b]).unwrap_or(std::cmp::Ordering::Equal));
            for &j in order.iter().rev() {
                let mut seq = tokens[j].clone();
                seq.push(self.eot);
                match self.finished.iter_mut().find(|(s, _)| *s == seq) {
                    Some(entry) => entry.1 = sum_logprobs[j],
                    None => self.finished.push((seq, sum_logprobs[j])),
                }
                if self.finished.len() >= self.beam_size {
                    break;
                }
            }
        }
        self.finished
    }
}

/// The `k` likeliest tokens of `logits` (the rules already applied) with their log-probabilities
/// (`log_softmax`), best first, ties by lower index first.
pub fn top_logprobs(logits: &[f32], k: usize) -> Vec<(u32, f32)> {
    topk(&log_softmax(logits), k).into_iter().map(|(i, v)| (i as u32, v)).collect()
}

/// The k largest entries as (index, value), largest first; ties by lower index first (torch.topk
/// on CPU gives no tie guarantee; this is the usual outcome).
fn topk(x: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut best: Vec<(usize, f32)> = Vec::with_capacity(k + 1);
    for (i, &v) in x.iter().enumerate() {
        if best.len() == k && v <= best[k - 1].1 {
            continue;
        }
        let pos = best.iter().position(|&(_, b)| v > b).unwrap_or(best.len());
        best.insert(pos, (i, v));
        best.truncate(k);
    }
    best
}
