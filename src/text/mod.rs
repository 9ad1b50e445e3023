//! Text: tokenizer and special tokens, English text normalizer, word error rate.
