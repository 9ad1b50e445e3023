//! Word-level alignment of a normalized reference and hypothesis, with the edit kinds counted.
use crate::text::normalizer::is_py_space;
use serde::{Deserialize, Serialize};

/// Word errors of one utterance or a sum of them. `errors()` is the Levenshtein distance that
/// `text::wer::word_edits` gives; the split into kinds follows one minimal alignment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edits {
    pub substitutions: usize,
    pub deletions: usize,
    pub insertions: usize,
    pub ref_words: usize,
}

impl Edits {
    pub fn errors(&self) -> usize {
        self.substitutions + self.deletions + self.insertions
    }

    pub fn add(&mut self, other: &Edits) {
        self.substitutions += other.substitutions;
        self.deletions += other.deletions;
        self.insertions += other.insertions;
        self.ref_words += other.ref_words;
    }

    /// Corpus WER in percent: total errors over total reference words (0 with neither; infinite
    /// for errors against an empty reference).
    pub fn wer_percent(&self) -> f64 {
        match (self.ref_words, self.errors()) {
            (0, 0) => 0.0,
            (0, _) => f64::INFINITY,
            (n, e) => 100.0 * e as f64 / n as f64,
        }
    }
}

/// Words as Python's `str.split()` gives them (the WER's notion of a word).
fn words(s: &str) -> Vec<&str> {
    s.split(is_py_space).filter(|w| !w.is_empty()).collect()
}

/// Aligns two already normalized texts. Among the minimal alignments, the backtrace prefers a
/// substitution (or match), then a deletion, then an insertion.
pub fn align(reference: &str, hypothesis: &str) -> Edits {
    let r = words(reference);
    let h = words(hypothesis);
    let (n, m) = (r.len(), h.len());
    let w = m + 1;
    // Full table: utterances are short (hundreds of words at most per 30 s window).
    let mut d = vec![0u32; (n + 1) * w];
    for (j, cell) in d.iter_mut().take(w).enumerate() {
        *cell = j as u32;
    }
    for i in 1..=n {
        d[i * w] = i as u32;
        for j in 1..=m {
            let sub = d[(i - 1) * w + j - 1] + u32::from(r[i - 1] != h[j - 1]);
            let del = d[(i - 1) * w + j] + 1;
            let ins = d[i * w + j - 1] + 1;
            d[i * w + j] = sub.min(del).min(ins);
        }
    }
    let mut e = Edits { ref_words: n, ..Edits::default() };
    let (mut i, mut j) = (n, m);
    while i > 0 || j > 0 {
        let here = d[i * w + j];
        if i > 0 && j > 0 {
            let differ = r[i - 1] != h[j - 1];
            if here == d[(i - 1) * w + j - 1] + u32::from(differ) {
                e.substitutions += usize::from(differ);
                i -= 1;
                j -= 1;
                continue;
            }
        }
        if i > 0 && here == d[(i - 1) * w + j] + 1 {
            e.deletions += 1;
            i -= 1;
        } else {
            e.insertions += 1;
            j -= 1;
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sdi(r: &str, h: &str) -> (usize, usize, usize, usize) {
        let e = align(r, h);
        (e.substitutions, e.deletions, e.insertions, e.ref_words)
    }

    #[test]
    fn kinds() {
        assert_eq!(sdi("a b c", "a b c"), (0, 0, 0, 3));
        assert_eq!(sdi("a b c", "a x c"), (1, 0, 0, 3));
        assert_eq!(sdi("a b c", "a c"), (0, 1, 0, 3));
        assert_eq!(sdi("a c", "a b c"), (0, 0, 1, 2));
        assert_eq!(sdi("a b c", ""), (0, 3, 0, 3));
        assert_eq!(sdi("", "a b"), (0, 0, 2, 0));
        assert_eq!(sdi("", ""), (0, 0, 0, 0));
        assert_eq!(sdi("x a b c", "a b c y"), (0, 1, 1, 4));
    }

    #[test]
    fn total_is_levenshtein() {
        let cases = [
            ("kitten sat on mat", "sitting sat mat on"),
            ("the cat sat on the mat", "a cat sat the mat today"),
            ("one two three four five", "five four three two one"),
            ("a a a b", "b a a a a"),
        ];
        for (r, h) in cases {
            assert_eq!(align(r, h).errors(), crate::text::wer::word_edits(r, h), "{r:?} / {h:?}");
        }
    }

    #[test]
    fn corpus_wer() {
        let mut t = align("a b c d", "a x c");
        t.add(&align("e f", "e f"));
        assert_eq!(t.errors(), 2);
        assert_eq!(t.ref_words, 6);
        assert!((t.wer_percent() - 100.0 * 2.0 / 6.0).abs() < 1e-12);
    }
}
