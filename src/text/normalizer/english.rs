//! Port of `EnglishTextNormalizer` (`whisper/normalizers/english.py`).

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;

use super::basic::remove_symbols_and_diacritics;
use super::numbers::EnglishNumberNormalizer;
use super::spelling::EnglishSpellingNormalizer;
use super::{group, Pattern, PY_SPACE, WORD_END, WORD_START};

/// Contractions and abbreviations, applied in this order. `\b` before a pattern's first letter
/// becomes [`WORD_START`], `\b` after its last letter [`WORD_END`].
const REPLACERS: &[(bool, &str, &str)] = &[
    // (pattern starts with \b, literal text, replacement); see `replacer_pattern`.
    // common contractions
    (true, "won't", "will not"),
    (true, "can't", "can not"),
    (true, "let's", "let us"),
    (true, "ain't", "aint"),
    (true, "y'all", "you all"),
    (true, "wanna", "want to"),
    (true, "gotta", "got to"),
    (true, "gonna", "going to"),
    (true, "i'ma", "i am going to"),
    (true, "imma", "i am going to"),
    (true, "woulda", "would have"),
    (true, "coulda", "could have"),
    (true, "shoulda", "should have"),
    (true, "ma'am", "madam"),
    // contractions in titles/prefixes
    (true, "mr", "mister "),
    (true, "mrs", "missus "),
    (true, "st", "saint "),
    (true, "dr", "doctor "),
    (true, "prof", "professor "),
    (true, "capt", "captain "),
    (true, "gov", "governor "),
    (true, "ald", "alderman "),
    (true, "gen", "general "),
    (true, "sen", "senator "),
    (true, "rep", "representative "),
    (true, "pres", "president "),
    (true, "rev", "reverend "),
    (true, "hon", "honorable "),
    (true, "asst", "assistant "),
    (true, "assoc", "associate "),
    (true, "lt", "lieutenant "),
    (true, "col", "colonel "),
    (true, "jr", "junior "),
    (true, "sr", "senior "),
    (true, "esq", "esquire "),
    // perfect tenses, ideally it should be any past participles, but it's harder..
    (false, "'d been", " had been"),
    (false, "'s been", " has been"),
    (false, "'d gone", " had gone"),
    (false, "'s gone", " has gone"),
    (false, "'d done", " had done"), // "'s done" is ambiguous
    (false, "'s got", " has got"),
    // general contractions
    (false, "n't", " not"),
    (false, "'re", " are"),
    (false, "'s", " is"),
    (false, "'d", " would"),
    (false, "'ll", " will"),
    (false, "'t", " not"),
    (false, "'ve", " have"),
    (false, "'m", " am"),
];

/// Python's `r"\b" + text + r"\b"` (or `text + r"\b"`); every text ends with a letter.
fn replacer_pattern(word_start: bool, text: &str) -> String {
    let start = if word_start { WORD_START } else { "" };
    format!("{start}{}{WORD_END}", fancy_regex::escape(text))
}

/// Whisper's English normalizer: lower case, drop bracketed/parenthesized text and fillers,
/// expand contractions, spell numbers as digits, Americanize spellings, drop punctuation.
pub struct EnglishTextNormalizer {
    brackets: Pattern,
    parentheses: Pattern,
    ignore: Pattern,
    space_apostrophe: Pattern,
    replacers: Vec<(Pattern, &'static str)>,
    digit_comma: Pattern,
    period: Pattern,
    prefix_symbol: Pattern,
    suffix_symbol: Pattern,
    spaces: Pattern,
    numbers: EnglishNumberNormalizer,
    spellings: EnglishSpellingNormalizer,
}

impl EnglishTextNormalizer {
    /// `spelling` = the British->American table (openai-whisper's english.json).
    pub fn new(spelling: HashMap<String, String>) -> Self {
        Self {
            brackets: Pattern::new(r"[<\[][^>\]]*[>\]]"),
            parentheses: Pattern::new(r"\(([^)]+?)\)"),
            ignore: Pattern::with_needles(
                &format!("{WORD_START}(hmm|mm|mhm|mmm|uh|um){WORD_END}"),
                &["mm", "mhm", "uh", "um"],
            ),
            space_apostrophe: Pattern::new(&format!("{PY_SPACE}+'")),
            replacers: REPLACERS
                .iter()
                .map(|&(start, text, rep)| {
                    (
                        Pattern::with_needles(&replacer_pattern(start, text), &[text]),
                        rep,
                    )
                })
                .collect(),
            digit_comma: Pattern::new(r"(\d),(\d)"),
            period: Pattern::new(r"\.([^0-9]|$)"),
            prefix_symbol: Pattern::new(r"[.$¢€£]([^0-9])"),
            suffix_symbol: Pattern::new(r"([^0-9])%"),
            spaces: Pattern::new(&format!("{PY_SPACE}+")),
            numbers: EnglishNumberNormalizer::new(),
            spellings: EnglishSpellingNormalizer::new(spelling),
        }
    }

    /// Reads english.json (a JSON object of British -> American spellings).
    pub fn from_json_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read spelling table {}", path.display()))?;
        let map: HashMap<String, String> = serde_json::from_str(&text).with_context(|| {
            format!(
                "{}: not a JSON object of string -> string spellings",
                path.display()
            )
        })?;
        Ok(Self::new(map))
    }

    pub fn normalize(&self, s: &str) -> String {
        let s = s.to_lowercase();

        let s = self.brackets.sub_literal(&s, ""); // remove words between brackets
        let s = self.parentheses.sub_literal(&s, ""); // remove words between parenthesis
        let s = self.ignore.sub_literal(&s, "");
        let mut s = self.space_apostrophe.sub_literal(&s, "'"); // space before an apostrophe

        for (re, rep) in &self.replacers {
            s = re.sub_literal(&s, rep);
        }

        // remove commas between digits
        let s = self
            .digit_comma
            .sub_with(&s, |c| format!("{}{}", group(c, 1), group(c, 2)));
        // remove periods not followed by numbers
        let s = self.period.sub_with(&s, |c| format!(" {}", group(c, 1)));
        let s = remove_symbols_and_diacritics(&s, ".%$¢€£"); // keep numeric symbols

        let s = self.numbers.normalize(&s);
        let s = self.spellings.normalize(&s);

        // now remove prefix/suffix symbols that are not preceded/followed by numbers
        let s = self
            .prefix_symbol
            .sub_with(&s, |c| format!(" {}", group(c, 1)));
        let s = self
            .suffix_symbol
            .sub_with(&s, |c| format!("{} ", group(c, 1)));

        self.spaces.sub_literal(&s, " ")
    }
}
