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

/// The greedy choice from `logits` (the rules already applied): the argmax and its log-probability
/// (one entry of `log_softmax(logits)`, computed the same way without the whole vector).
pub fn pick(logits: &[f32]) -> (u32, f32) {
    let next = argmax(logits);
    (next as u32, logits[next] - logsumexp(logits))
}

/// One greedy step for one sequence: picks the next token and adds its log-probability to
/// `sum_logprob`, unless the sequence had already ended (then it stays at end of text).
pub fn update(tokens: &mut Vec<u32>, logits: &[f32], sum_logprob: &mut f32, eot: u32) {
    update_pick(tokens, pick(logits), sum_logprob, eot);
}

/// [`update`] from the step's choice `(token, logprob)` (see [`pick`]).
pub fn update_pick(tokens: &mut Vec<u32>, (next, logprob): (u32, f32), sum_logprob: &mut f32, eot: u32) {
    if tokens.last() == Some(&eot) {
        tokens.push(eot);
    } else {
        *sum_logprob += logprob;
        tokens.push(next);
    }
}
