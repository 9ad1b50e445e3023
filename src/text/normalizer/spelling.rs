//! Port of `EnglishSpellingNormalizer`: British to American spellings, word by word.

use std::collections::HashMap;

use super::py_split;

/// Maps whole words through openai-whisper's `english.json` table.
pub struct EnglishSpellingNormalizer {
    mapping: HashMap<String, String>,
}

impl EnglishSpellingNormalizer {
    pub fn new(mapping: HashMap<String, String>) -> Self {
        Self { mapping }
    }

    /// `" ".join(mapping.get(word, word) for word in s.split())`.
    pub fn normalize(&self, s: &str) -> String {
        py_split(s)
            .map(|w| self.mapping.get(w).map_or(w, String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }
}
