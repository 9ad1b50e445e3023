//! Special token ids, derived from a vocabulary the way openai-whisper's `get_encoding` lays them out.
use crate::model::SpecialTokens;
use anyhow::{anyhow, Result};

/// openai-whisper's LANGUAGES, in order: the language tokens follow `<|startoftranscript|>` in this order
/// (99 of them for every model before large-v3, which adds "yue").
pub const LANGUAGE_CODES: [&str; 100] = [
    "en", "zh", "de", "es", "ru", "ko", "fr", "ja", "pt", "tr", "pl", "ca", "nl", "ar", "sv", "it", "id",
    "hi", "fi", "vi", "he", "uk", "el", "ms", "cs", "ro", "da", "hu", "ta", "no", "th", "ur", "hr", "bg",
    "lt", "la", "mi", "ml", "cy", "sk", "te", "fa", "lv", "bn", "sr", "az", "sl", "kn", "et", "mk", "br",
    "eu", "is", "hy", "ne", "mn", "bs", "kk", "sq", "sw", "gl", "mr", "pa", "si", "km", "sn", "yo", "so",
    "af", "oc", "ka", "be", "tg", "sd", "gu", "am", "yi", "lo", "uz", "fo", "ht", "ps", "tk", "nn", "mt",
    "sa", "lb", "my", "bo", "tl", "mg", "as", "tt", "haw", "ln", "ha", "ba", "jw", "su", "yue",
];

/// Looks the special tokens up by their text in `tok`'s vocabulary.
pub fn special_tokens(tok: &tokenizers::Tokenizer) -> Result<SpecialTokens> {
    let id = |s: &str| tok.token_to_id(s);
    let need = |s: &str| id(s).ok_or_else(|| anyhow!("the tokenizer has no {s} token; is it a Whisper tokenizer?"));
    let no_timestamps = need("<|notimestamps|>")?;
    // Older Hugging Face vocabularies call <|nospeech|> <|nocaptions|>.
    let no_speech = id("<|nospeech|>")
        .or_else(|| id("<|nocaptions|>"))
        .ok_or_else(|| anyhow!("the tokenizer has neither <|nospeech|> nor <|nocaptions|>"))?;
    // Timestamp tokens come right after <|notimestamps|>; many tokenizer.json files omit them.
    let timestamp_begin = id("<|0.00|>").unwrap_or(no_timestamps + 1);
    if timestamp_begin != no_timestamps + 1 {
        return Err(anyhow!("<|0.00|> is not right after <|notimestamps|>"));
    }
    // Some older vocabularies spell Hebrew with its old code, <|iw|>.
    let language_id = |code: &str| id(&format!("<|{code}|>")).or_else(|| (code == "he").then(|| id("<|iw|>")).flatten());
    let languages = LANGUAGE_CODES
        .iter()
        .filter_map(|code| language_id(code).map(|i| (code.to_string(), i)))
        .collect();
    Ok(SpecialTokens {
        eot: need("<|endoftext|>")?,
        sot: need("<|startoftranscript|>")?,
        translate: need("<|translate|>")?,
        transcribe: need("<|transcribe|>")?,
        sot_lm: need("<|startoflm|>")?,
        sot_prev: need("<|startofprev|>")?,
        no_speech,
        no_timestamps,
        timestamp_begin,
        languages,
    })
}
