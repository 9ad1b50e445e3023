//! Tokenizer: special tokens and openai-whisper's non-speech token set.
mod common;
use whisper_trt::text::Tokenizer;

fn ct2_tokenizer(name: &str) -> Tokenizer {
    let path = common::models().join("src").join(name).join("tokenizer.json");
    assert!(path.is_file(), "{} is missing: run scripts/fetch-model.sh {name}", path.display());
    Tokenizer::from_file(&path).unwrap()
}

fn json_ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// The fixture's SuppressTokens list is non_speech_tokens plus transcribe/translate/sot/sot_prev/sot_lm
/// and no_speech, computed by openai-whisper itself.
#[test]
fn english_suppress_tokens_match_openai_whisper() {
    let tok = ct2_tokenizer("tiny.en");
    let s = &tok.special;
    assert_eq!((s.eot, s.sot, s.no_timestamps, s.timestamp_begin), (50256, 50257, 50362, 50363));
    assert_eq!((s.translate, s.transcribe, s.sot_lm, s.sot_prev, s.no_speech), (50357, 50358, 50359, 50360, 50361));
    // 99 languages; this vocabulary spells Hebrew <|iw|>.
    assert_eq!(s.languages.len(), 99);
    assert_eq!(tok.language_token("he"), Some(50278));
    let mut ours = tok.non_speech_tokens().unwrap();
    ours.extend([s.transcribe, s.translate, s.sot, s.sot_prev, s.sot_lm, s.no_speech]);
    ours.sort();
    ours.dedup();
    let text = std::fs::read_to_string(common::shared().join("data/fixtures/tiny_random_expected.json")).unwrap();
    let expected: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(ours, json_ids(&expected["suppress_tokens"]));
}

/// CTranslate2 ships the same set as `suppress_ids`; check the multilingual layout that way.
#[test]
fn multilingual_suppress_tokens_match_ct2_config() {
    let tok = ct2_tokenizer("base");
    let s = &tok.special;
    assert_eq!((s.eot, s.sot, s.no_timestamps, s.timestamp_begin), (50257, 50258, 50363, 50364));
    assert_eq!(tok.language_token("en"), Some(50259));
    assert_eq!(s.languages.len(), 99);
    let mut ours = tok.non_speech_tokens().unwrap();
    ours.extend([s.transcribe, s.translate, s.sot, s.sot_prev, s.sot_lm, s.no_speech]);
    ours.sort();
    ours.dedup();
    let config = common::models().join("src/base/config.json");
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(config).unwrap()).unwrap();
    let mut ct2 = json_ids(&config["suppress_ids"]);
    ct2.sort();
    // CTranslate2's list omits the task/sot tokens that decoding.py appends; compare the symbol part.
    let specials = [s.transcribe, s.translate, s.sot, s.sot_prev, s.sot_lm, s.no_speech];
    let ours_symbols: Vec<u32> = ours.iter().copied().filter(|t| !specials.contains(t)).collect();
    let ct2_symbols: Vec<u32> = ct2.iter().copied().filter(|t| !specials.contains(t)).collect();
    assert_eq!(ours_symbols, ct2_symbols);
}

#[test]
fn round_trip_text() {
    let tok = ct2_tokenizer("tiny.en");
    let ids = tok.encode(" And so my fellow Americans").unwrap();
    assert_eq!(tok.decode(&ids).unwrap(), " And so my fellow Americans");
    // Timestamp tokens are dropped by decode.
    let mut with_ts = vec![tok.special.timestamp_begin];
    with_ts.extend(&ids);
    assert_eq!(tok.decode(&with_ts).unwrap(), " And so my fellow Americans");
}
