//! Port of `whisper/normalizers/basic.py`: symbol and diacritic removal, and the
//! language-independent `BasicTextNormalizer`.

use unicode_general_category::get_general_category;
use unicode_normalization::UnicodeNormalization;
use unicode_segmentation::UnicodeSegmentation;

use super::{Pattern, PY_SPACE};

/// Non-ASCII letters that NFKD does not split into a base letter and a mark.
fn additional_diacritic(c: char) -> Option<&'static str> {
    Some(match c {
        'œ' => "oe",
        'Œ' => "OE",
        'ø' => "o",
        'Ø' => "O",
        'æ' => "ae",
        'Æ' => "AE",
        'ß' => "ss",
        'ẞ' => "SS",
        'đ' => "d",
        'Đ' => "D",
        'ð' => "d",
        'Ð' => "D",
        'þ' => "th",
        'Þ' => "th",
        'ł' => "l",
        'Ł' => "L",
        _ => return None,
    })
}

/// First letter of the Unicode general category ('L', 'M', 'N', 'P', 'S', 'Z', 'C') and
/// whether it is exactly "Mn".
fn category(c: char) -> (char, bool) {
    let abbr = get_general_category(c).abbreviation();
    (abbr.chars().next().unwrap_or('C'), abbr == "Mn")
}

/// Replaces markers, symbols and punctuation with a space and drops diacritics (category
/// "Mn" and a few manual mappings), after NFKD. Characters in `keep` are left alone.
pub fn remove_symbols_and_diacritics(s: &str, keep: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.nfkd() {
        if keep.contains(c) {
            out.push(c);
        } else if let Some(rep) = additional_diacritic(c) {
            out.push_str(rep);
        } else {
            match category(c) {
                (_, true) => {}
                ('M' | 'S' | 'P', false) => out.push(' '),
                _ => out.push(c),
            }
        }
    }
    out
}

/// Replaces markers, symbols and punctuation with a space after NFKC, keeping diacritics.
pub fn remove_symbols(s: &str) -> String {
    s.nfkc()
        .map(|c| {
            if matches!(category(c).0, 'M' | 'S' | 'P') {
                ' '
            } else {
                c
            }
        })
        .collect()
}

/// openai-whisper's `BasicTextNormalizer`, used for languages other than English.
pub struct BasicTextNormalizer {
    remove_diacritics: bool,
    split_letters: bool,
    brackets: Pattern,
    parentheses: Pattern,
    spaces: Pattern,
}

impl BasicTextNormalizer {
    pub fn new(remove_diacritics: bool, split_letters: bool) -> Self {
        Self {
            remove_diacritics,
            split_letters,
            brackets: Pattern::new(r"[<\[][^>\]]*[>\]]"),
            parentheses: Pattern::new(r"\(([^)]+?)\)"),
            spaces: Pattern::new(&format!("{PY_SPACE}+")),
        }
    }

    pub fn normalize(&self, s: &str) -> String {
        let s = s.to_lowercase();
        let s = self.brackets.sub_literal(&s, "");
        let s = self.parentheses.sub_literal(&s, "");
        let s = if self.remove_diacritics {
            remove_symbols_and_diacritics(&s, "")
        } else {
            remove_symbols(&s)
        };
        let mut s = s.to_lowercase();
        if self.split_letters {
            // `regex.findall(r"\X", s)`: extended grapheme clusters.
            s = s.graphemes(true).collect::<Vec<_>>().join(" ");
        }
        self.spaces.sub_literal(&s, " ")
    }
}

impl Default for BasicTextNormalizer {
    fn default() -> Self {
        Self::new(false, false)
    }
}
