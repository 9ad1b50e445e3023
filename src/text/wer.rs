//! Word error rate: word-level Levenshtein distance, accumulated over a corpus.

use crate::text::normalizer::is_py_space;

/// Words as Python's `str.split()` gives them.
fn words(s: &str) -> Vec<&str> {
    s.split(is_py_space).filter(|w| !w.is_empty()).collect()
}

/// Word-level Levenshtein distance (substitutions + deletions + insertions) between the
/// whitespace-split reference and hypothesis.
pub fn word_edits(reference: &str, hypothesis: &str) -> usize {
    let r = words(reference);
    let h = words(hypothesis);
    // One row of the DP table over hypothesis positions.
    let mut row: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut diag = row[0]; // dist(i, 0)
        row[0] = i + 1;
        for (j, hw) in h.iter().enumerate() {
            let sub = diag + usize::from(rw != hw);
            diag = row[j + 1];
            row[j + 1] = sub.min(row[j] + 1).min(diag + 1);
        }
    }
    row[h.len()]
}

/// Number of whitespace-separated words.
pub fn word_count(s: &str) -> usize {
    words(s).len()
}

/// Corpus WER accumulator: the sum of edits over the sum of reference words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WerStats {
    pub edits: usize,
    pub ref_words: usize,
}

impl WerStats {
    /// Adds one utterance (both texts already normalized).
    pub fn add(&mut self, reference: &str, hypothesis: &str) {
        self.edits += word_edits(reference, hypothesis);
        self.ref_words += word_count(reference);
    }

    /// WER as a fraction (0.05 = 5 %). With no reference words it is 0 when there are no
    /// edits either, and infinite otherwise.
    pub fn wer(&self) -> f64 {
        if self.ref_words == 0 {
            if self.edits == 0 {
                0.0
            } else {
                f64::INFINITY
            }
        } else {
            self.edits as f64 / self.ref_words as f64
        }
    }
}
