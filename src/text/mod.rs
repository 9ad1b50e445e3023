//! Text: tokenizer and special tokens, English text normalizer, word error rate.
pub mod special;
pub mod tokenizer;

pub use tokenizer::Tokenizer;
pub mod normalizer;
pub mod wer;
