//! Text normalizers ported from openai-whisper (`whisper/normalizers/`), quirks included.
//!
//! The English normalizer is what Whisper's WER numbers are computed with: both the reference
//! transcript and the hypothesis go through [`EnglishTextNormalizer::normalize`] before words are
//! compared. The port reproduces Python's `re`/`str` semantics where they differ from Rust's:
//! `\s` and `str.split()` also treat U+001C..U+001F as whitespace, and `\b`/`\w` mean
//! letters, numbers and `_` (`str.isalnum()`), so `\b` is written as explicit look-arounds.

mod basic;
mod english;
mod numbers;
mod spelling;

pub use basic::{remove_symbols, remove_symbols_and_diacritics, BasicTextNormalizer};
pub use english::EnglishTextNormalizer;
pub use numbers::EnglishNumberNormalizer;
pub use spelling::EnglishSpellingNormalizer;

use fancy_regex::{Captures, Regex};

/// Python's `\s` for `str` patterns (`str.isspace()`): Unicode White_Space plus U+001C..U+001F.
pub(crate) const PY_SPACE: &str = r"[\s\x1C-\x1F]";
/// Python's `\b` just before a word character: no word character (`[\p{L}\p{N}_]`) before.
pub(crate) const WORD_START: &str = r"(?<![\p{L}\p{N}_])";
/// Python's `\b` just after a word character: no word character follows.
pub(crate) const WORD_END: &str = r"(?![\p{L}\p{N}_])";

/// Python's `str.isspace()`: Unicode White_Space plus U+001C..U+001F.
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1C}'..='\u{1F}').contains(&c)
}

/// `str.split()` with no arguments: split on runs of whitespace, no empty pieces.
pub(crate) fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|w| !w.is_empty())
}

/// A compiled pattern plus literals of which at least one must occur for it to match.
/// Patterns with look-arounds run on fancy-regex's backtracking engine, which tries every
/// position; checking the literals first (an exact test) keeps the normalizer fast.
pub(crate) struct Pattern {
    re: Regex,
    needles: Vec<&'static str>,
}

impl Pattern {
    /// A pattern that is always run.
    pub(crate) fn new(pattern: &str) -> Self {
        Self::with_needles(pattern, &[])
    }

    /// A pattern that can only match text holding one of `needles` (empty: always run).
    pub(crate) fn with_needles(pattern: &str, needles: &[&'static str]) -> Self {
        // The patterns are compile-time constants covered by the tests, never user input.
        let re = Regex::new(pattern)
            .unwrap_or_else(|e| panic!("bad built-in normalizer regex {pattern:?}: {e}"));
        Self {
            re,
            needles: needles.to_vec(),
        }
    }

    pub(crate) fn may_match(&self, s: &str) -> bool {
        self.needles.is_empty() || self.needles.iter().any(|n| s.contains(n))
    }

    pub(crate) fn regex(&self) -> &Regex {
        &self.re
    }

    /// `re.sub(pattern, f, s)`. On a regex runtime error (backtrack limit, which these simple
    /// patterns cannot reach) the text is returned unchanged rather than panicking.
    pub(crate) fn sub_with(&self, s: &str, f: impl FnMut(&Captures<'_>) -> String) -> String {
        if !self.may_match(s) {
            return s.to_string();
        }
        match self.re.try_replacen(s, 0, f) {
            Ok(out) => out.into_owned(),
            Err(_) => s.to_string(),
        }
    }

    /// `re.sub(pattern, literal, s)` with a replacement that holds no group references.
    pub(crate) fn sub_literal(&self, s: &str, literal: &str) -> String {
        self.sub_with(s, |_| literal.to_string())
    }
}

/// The ASCII digits, as needles for patterns that need one.
pub(crate) const DIGITS: &[&str] = &["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// Text of group `i`, or "" when the group did not take part (Python substitutes "").
pub(crate) fn group<'t>(caps: &Captures<'t>, i: usize) -> &'t str {
    caps.get(i).map_or("", |m| m.as_str())
}
