//! `GreedyDecoder` at temperature 0.
use super::rules::logsumexp;

/// Index of the largest logit; the first one on ties, as `torch.argmax`.
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// One greedy step for one sequence: picks the next token and adds its log-probability to
/// `sum_logprob`, unless the sequence had already ended (then it stays at end of text).
pub fn update(tokens: &mut Vec<u32>, logits: &[f32], sum_logprob: &mut f32, eot: u32) {
    let ended = tokens.last() == Some(&eot);
    let next = argmax(logits) as u32;
    if ended {
        tokens.push(eot);
    } else {
        // One entry of log_softmax(logits), computed the same way without the whole vector.
        let logprob = logits[next as usize] - logsumexp(logits);
        *sum_logprob += logprob;
        tokens.push(next);
    }
}
