//! openai-whisper's decoding (`whisper/decoding.py`): logit rules, greedy and beam search.

/// One utterance's decoder state on some backend: `n_seq` token sequences that share the
/// utterance's audio features, each with its own self-attention KV cache.
pub trait DecoderSession {
    fn n_seq(&self) -> usize;
    fn n_vocab(&self) -> usize;
    /// Appends `tokens[i]` to sequence `i` (every slice the same length) and returns the logits of
    /// every appended position: `[n_seq][tokens[0].len()][n_vocab]`, row-major.
    fn forward(&mut self, tokens: &[&[u32]]) -> anyhow::Result<Vec<f32>>;
    /// Sequence `i` continues from what sequence `source[i]` held (beam search reordering).
    fn reorder(&mut self, source: &[usize]);
}
