//! The Whisper tokenizer: a Hugging Face `tokenizer.json` (byte-level BPE) plus the special tokens.
use crate::model::SpecialTokens;
use anyhow::{anyhow, Result};
use std::path::Path;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub special: SpecialTokens,
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow!("{}: not a valid tokenizer.json: {e}", path.display()))?;
        let special = super::special::special_tokens(&inner).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Ok(Tokenizer { inner, special })
    }

    /// Plain BPE ids of `text`, no special tokens added (tiktoken's `encode`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(|e| anyhow!("cannot tokenize {text:?}: {e}"))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`; timestamp tokens are dropped as openai-whisper's `Tokenizer.decode` does.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let ids: Vec<u32> = ids.iter().copied().filter(|&t| t < self.special.timestamp_begin).collect();
        self.inner.decode(&ids, false).map_err(|e| anyhow!("cannot decode tokens: {e}"))
    }

    pub fn language_token(&self, code: &str) -> Option<u32> {
        self.special.languages.iter().find(|(c, _)| c == code).map(|&(_, id)| id)
    }

    /// openai-whisper's `Tokenizer.non_speech_tokens`: symbols that would let the model write speaker
    /// tags or sound descriptions. Hyphen and apostrophe are allowed between words, not at a word start.
    pub fn non_speech_tokens(&self) -> Result<Vec<u32>> {
        let mut symbols: Vec<String> = "\"#()*+/:;<=>@[\\]^_`{|}~「」『』".chars().map(String::from).collect();
        symbols.extend(
            "<< >> <<< >>> -- --- -( -[ (' (\" (( )) ((( ))) [[ ]] {{ }} ♪♪ ♪♪♪".split_whitespace().map(String::from),
        );
        // Between U+2640 and U+267F: a multi-token symbol's first token is safe to suppress, since
        // these share their first two UTF-8 bytes.
        let miscellaneous: Vec<String> = "♩♪♫♬♭♮♯".chars().map(String::from).collect();
        let mut result = std::collections::BTreeSet::new();
        for s in [" -", " '"] {
            if let Some(&t) = self.encode(s)?.first() {
                result.insert(t);
            }
        }
        for symbol in symbols.iter().chain(&miscellaneous) {
            let misc = miscellaneous.contains(symbol);
            for tokens in [self.encode(symbol)?, self.encode(&format!(" {symbol}"))?] {
                if tokens.len() == 1 || (misc && !tokens.is_empty()) {
                    result.insert(tokens[0]);
                }
            }
        }
        Ok(result.into_iter().collect())
    }
}
