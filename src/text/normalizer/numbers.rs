//! Port of `EnglishNumberNormalizer`: spelled-out numbers to digits.
//!
//! Python keeps the running number either as an `int` (arbitrary precision) or as a `str`
//! (digit strings such as "007" or "1.5"); [`Value`] mirrors that, with `BigUint` for the int.
//! All of Python's quirks are kept, e.g. "ninth" is not an ordinal (the table has "nineth"),
//! "point" before a non-decimal number word vanishes, and "one point five" becomes "one.5".

use std::collections::{HashMap, HashSet};

use num_bigint::BigUint;
use unicode_general_category::{get_general_category, GeneralCategory};

use super::{group, py_split, Pattern, DIGITS, PY_SPACE, WORD_END, WORD_START};

/// The number being built: Python's `Union[str, int]`.
#[derive(Clone, Debug)]
enum Value {
    Int(BigUint),
    Str(String),
}

impl Value {
    /// `str(value)`.
    fn text(&self) -> String {
        match self {
            Value::Int(n) => n.to_string(),
            Value::Str(s) => s.clone(),
        }
    }

    fn is_zero_int(&self) -> bool {
        matches!(self, Value::Int(n) if *n == BigUint::ZERO)
    }
}

/// `str(value or "")`: None and the int 0 are falsy and give "".
fn text_or_empty(value: &Option<Value>) -> String {
    match value {
        Some(v) if !v.is_zero_int() => v.text(),
        _ => String::new(),
    }
}

/// `n % m` for a small modulus.
fn rem(n: &BigUint, m: u32) -> u32 {
    (n % m).to_u32_digits().first().copied().unwrap_or(0)
}

fn pow10(k: u32) -> BigUint {
    BigUint::from(10u32).pow(k)
}

/// Value of a Unicode decimal digit (category Nd), like Python's `int()` accepts. Nd
/// characters come in contiguous runs of ten, zero first, so the value is the distance from
/// the start of the run of Nd characters modulo ten.
fn decimal_value(c: char) -> Option<u32> {
    if let Some(d) = c.to_digit(10) {
        return Some(d);
    }
    if get_general_category(c) != GeneralCategory::DecimalNumber {
        return None;
    }
    let mut start = c as u32;
    while let Some(p) = start.checked_sub(1).and_then(char::from_u32) {
        if get_general_category(p) != GeneralCategory::DecimalNumber {
            break;
        }
        start -= 1;
    }
    Some((c as u32 - start) % 10)
}

/// `int(s)` for a string of decimal digits (possibly empty -> 0).
fn parse_digits(s: &str) -> Option<BigUint> {
    let mut n = BigUint::ZERO;
    for c in s.chars() {
        n = n * 10u32 + decimal_value(c)?;
    }
    Some(n)
}

/// `re.match(r"^\d+(\.\d+)?$", s)`, with Python's Unicode `\d`.
fn is_numeric(s: &str) -> bool {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s, None),
    };
    let digits = |t: &str| !t.is_empty() && t.chars().all(|c| decimal_value(c).is_some());
    digits(int) && frac.is_none_or(digits)
}

/// `Fraction(s)` as `(n, l)` meaning n / 10^l, for the strings this module builds: digits
/// with at most one ".", at least one digit next to the start (".5", "1.", "007", "1.5").
/// None where Python raises ValueError (e.g. "1.2.3" from concatenated IP-like numbers).
fn parse_fraction(s: &str) -> Option<(BigUint, u32)> {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    // `(?=\d|\.\d)`: a digit first, or "." then a digit.
    let lead = if int.is_empty() { frac } else { int };
    lead.chars().next().and_then(decimal_value)?;
    let n = parse_digits(int)?;
    let f = parse_digits(frac)?;
    let l = u32::try_from(frac.chars().count()).ok()?;
    Some((n * pow10(l) + f, l))
}

/// `Fraction(value) * 10^k` when it is an integer: `Some(Some(p))`; `Some(None)` when it is
/// not; `None` when `Fraction(value)` fails.
fn times_pow10(value: &Value, k: u32) -> Option<Option<BigUint>> {
    let (n, l) = match value {
        Value::Int(n) => (n.clone(), 0),
        Value::Str(s) => parse_fraction(s)?,
    };
    let p = n * pow10(k);
    let d = pow10(l);
    Some(if (&p % &d) == BigUint::ZERO {
        Some(p / d)
    } else {
        None
    })
}

/// The running state of `process_words`; `emit` is Python's `output()` plus `yield`.
struct State {
    prefix: Option<char>,
    value: Option<Value>,
    out: Vec<String>,
}

impl State {
    fn emit(&mut self, result: String) {
        let result = match self.prefix.take() {
            Some(p) => format!("{p}{result}"),
            None => result,
        };
        self.value = None;
        self.out.push(result);
    }

    /// `if value is not None: yield output(value)`.
    fn flush(&mut self) {
        if let Some(v) = self.value.take() {
            self.emit(v.text());
        }
    }
}

/// Converts spelled-out numbers to arabic numbers (see the module docs).
pub struct EnglishNumberNormalizer {
    zeros: HashSet<&'static str>,
    ones: HashMap<String, u32>,
    ones_suffixed: HashMap<String, (u32, &'static str)>,
    tens: HashMap<String, u32>,
    tens_suffixed: HashMap<String, (u32, &'static str)>,
    multipliers: HashMap<String, u32>, // name -> power of ten
    multipliers_suffixed: HashMap<String, (u32, &'static str)>,
    preceding_prefixers: HashMap<&'static str, char>,
    following_prefixers: HashMap<&'static str, char>,
    prefixes: HashSet<char>,
    words: HashSet<String>,
    decimals: HashSet<String>,
    and_a_half: Pattern,
    letter_digit: Pattern,
    digit_letter: Pattern,
    suffix_space: Pattern,
    cents_combine: Pattern,
    cents_extract: Pattern,
    one: Pattern,
}

const ONES: [&str; 19] = [
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
];
const TENS: [(&str, u32); 8] = [
    ("twenty", 20),
    ("thirty", 30),
    ("forty", 40),
    ("fifty", 50),
    ("sixty", 60),
    ("seventy", 70),
    ("eighty", 80),
    ("ninety", 90),
];
const MULTIPLIERS: [(&str, u32); 12] = [
    ("hundred", 2),
    ("thousand", 3),
    ("million", 6),
    ("billion", 9),
    ("trillion", 12),
    ("quadrillion", 15),
    ("quintillion", 18),
    ("sextillion", 21),
    ("septillion", 24),
    ("octillion", 27),
    ("nonillion", 30),
    ("decillion", 33),
];
const SPECIALS: [&str; 4] = ["and", "double", "triple", "point"];
const SUFFIXERS: [&str; 2] = ["per", "percent"];

impl Default for EnglishNumberNormalizer {
    fn default() -> Self {
        Self::new()
    }
}

impl EnglishNumberNormalizer {
    pub fn new() -> Self {
        let zeros: HashSet<&'static str> = ["o", "oh", "zero"].into_iter().collect();
        let ones: HashMap<String, u32> = ONES
            .iter()
            .zip(1u32..)
            .map(|(n, v)| (n.to_string(), v))
            .collect();

        let mut ones_suffixed = HashMap::new();
        for (name, v) in ONES.iter().zip(1u32..) {
            let plural = if *name == "six" {
                "sixes".to_string()
            } else {
                format!("{name}s")
            };
            ones_suffixed.insert(plural, (v, "s"));
        }
        for (name, v, suffix) in [
            ("zeroth", 0, "th"),
            ("first", 1, "st"),
            ("second", 2, "nd"),
            ("third", 3, "rd"),
            ("fifth", 5, "th"),
            ("twelfth", 12, "th"),
        ] {
            ones_suffixed.insert(name.to_string(), (v, suffix));
        }
        for (name, v) in ONES.iter().zip(1u32..) {
            if v > 3 && v != 5 && v != 12 {
                // Python: name + ("h" if name.endswith("t") else "th"): "eighth", "nineth".
                let ordinal = if name.ends_with('t') {
                    format!("{name}h")
                } else {
                    format!("{name}th")
                };
                ones_suffixed.insert(ordinal, (v, "th"));
            }
        }

        let tens: HashMap<String, u32> = TENS.iter().map(|&(n, v)| (n.to_string(), v)).collect();
        let mut tens_suffixed = HashMap::new();
        for &(name, v) in &TENS {
            tens_suffixed.insert(name.replace('y', "ies"), (v, "s"));
            tens_suffixed.insert(name.replace('y', "ieth"), (v, "th"));
        }

        let multipliers: HashMap<String, u32> = MULTIPLIERS
            .iter()
            .map(|&(n, k)| (n.to_string(), k))
            .collect();
        let mut multipliers_suffixed = HashMap::new();
        for &(name, k) in &MULTIPLIERS {
            multipliers_suffixed.insert(format!("{name}s"), (k, "s"));
            multipliers_suffixed.insert(format!("{name}th"), (k, "th"));
        }

        let preceding_prefixers: HashMap<&'static str, char> = [
            ("minus", '-'),
            ("negative", '-'),
            ("plus", '+'),
            ("positive", '+'),
        ]
        .into_iter()
        .collect();
        let following_prefixers: HashMap<&'static str, char> = [
            ("pound", '£'),
            ("pounds", '£'),
            ("euro", '€'),
            ("euros", '€'),
            ("dollar", '$'),
            ("dollars", '$'),
            ("cent", '¢'),
            ("cents", '¢'),
        ]
        .into_iter()
        .collect();
        let prefixes = preceding_prefixers
            .values()
            .chain(following_prefixers.values())
            .copied()
            .collect();

        let mut words: HashSet<String> = HashSet::new();
        words.extend(zeros.iter().map(|s| s.to_string()));
        words.extend(ones.keys().cloned());
        words.extend(ones_suffixed.keys().cloned());
        words.extend(tens.keys().cloned());
        words.extend(tens_suffixed.keys().cloned());
        words.extend(multipliers.keys().cloned());
        words.extend(multipliers_suffixed.keys().cloned());
        words.extend(preceding_prefixers.keys().map(|s| s.to_string()));
        words.extend(following_prefixers.keys().map(|s| s.to_string()));
        words.extend(SUFFIXERS.iter().map(|s| s.to_string()));
        words.extend(SPECIALS.iter().map(|s| s.to_string()));

        let mut decimals: HashSet<String> = ones.keys().cloned().collect();
        decimals.extend(tens.keys().cloned());
        decimals.extend(zeros.iter().map(|s| s.to_string()));

        Self {
            zeros,
            ones,
            ones_suffixed,
            tens,
            tens_suffixed,
            multipliers,
            multipliers_suffixed,
            preceding_prefixers,
            following_prefixers,
            prefixes,
            words,
            decimals,
            and_a_half: Pattern::with_needles(
                &format!("{WORD_START}and{PY_SPACE}+a{PY_SPACE}+half{WORD_END}"),
                &["half"],
            ),
            letter_digit: Pattern::new(r"([a-z])([0-9])"),
            digit_letter: Pattern::new(r"([0-9])([a-z])"),
            suffix_space: Pattern::with_needles(
                &format!("([0-9]){PY_SPACE}+(st|nd|rd|th|s){WORD_END}"),
                DIGITS,
            ),
            cents_combine: Pattern::with_needles(
                &format!("([€£$])([0-9]+) (?:and )?¢([0-9]{{1,2}}){WORD_END}"),
                &["¢"],
            ),
            // The unescaped "." (any character) is Python's.
            cents_extract: Pattern::with_needles(
                &format!("[€£$]0.([0-9]{{1,2}}){WORD_END}"),
                &["$0", "€0", "£0"],
            ),
            one: Pattern::with_needles(&format!("{WORD_START}1(s?){WORD_END}"), &["1"]),
        }
    }

    fn is_word(&self, w: Option<&str>) -> bool {
        w.is_some_and(|w| self.words.contains(w))
    }

    fn process_words(&self, words: &[&str]) -> Vec<String> {
        let mut st = State {
            prefix: None,
            value: None,
            out: Vec::new(),
        };
        let mut skip = false;

        for (i, &current) in words.iter().enumerate() {
            if skip {
                skip = false;
                continue;
            }
            let prev = i.checked_sub(1).and_then(|j| words.get(j)).copied();
            let next = words.get(i + 1).copied();
            let prev_in = |m: &HashMap<String, u32>| prev.is_some_and(|p| m.contains_key(p));
            let next_is_numeric = next.is_some_and(is_numeric);

            let first = current.chars().next();
            let has_prefix = first.is_some_and(|c| self.prefixes.contains(&c));
            let current_without_prefix = match first {
                Some(c) if has_prefix => &current[c.len_utf8()..],
                _ => current,
            };

            if is_numeric(current_without_prefix) {
                // arabic numbers (potentially with signs and fractions)
                if let Some(Value::Str(s)) = &mut st.value {
                    if s.ends_with('.') {
                        // concatenate decimals / ip address components
                        s.push_str(current);
                        continue;
                    }
                }
                st.flush();
                if has_prefix {
                    st.prefix = first;
                }
                // Fraction(x).denominator == 1 -> store integers as int ("1.0" -> 1)
                st.value = Some(
                    match times_pow10(&Value::Str(current_without_prefix.into()), 0) {
                        Some(Some(n)) => Value::Int(n),
                        _ => Value::Str(current_without_prefix.to_string()),
                    },
                );
            } else if !self.words.contains(current) {
                // non-numeric words
                st.flush();
                st.emit(current.to_string());
            } else if self.zeros.contains(current) {
                st.value = Some(Value::Str(text_or_empty(&st.value) + "0"));
            } else if let Some(&ones) = self.ones.get(current) {
                st.value = Some(match st.value.take() {
                    None => Value::Int(BigUint::from(ones)),
                    Some(v) if matches!(v, Value::Str(_)) || prev_in(&self.ones) => {
                        if prev_in(&self.tens) && ones < 10 {
                            // Python asserts the last character is "0"; replace it
                            Value::Str(format!("{}{ones}", drop_last(&v.text())))
                        } else {
                            Value::Str(format!("{}{ones}", v.text()))
                        }
                    }
                    Some(Value::Int(n)) => {
                        let m = if ones < 10 { 10 } else { 100 };
                        if rem(&n, m) == 0 {
                            Value::Int(n + ones)
                        } else {
                            Value::Str(format!("{n}{ones}"))
                        }
                    }
                    Some(v) => v, // unreachable: Str is handled above
                });
            } else if let Some(&(ones, suffix)) = self.ones_suffixed.get(current) {
                // ordinal or cardinal; yield the number right away
                let text = match st.value.take() {
                    None => format!("{ones}{suffix}"),
                    Some(v) if matches!(v, Value::Str(_)) || prev_in(&self.ones) => {
                        if prev_in(&self.tens) && ones < 10 {
                            format!("{}{ones}{suffix}", drop_last(&v.text()))
                        } else {
                            format!("{}{ones}{suffix}", v.text())
                        }
                    }
                    Some(Value::Int(n)) => {
                        let m = if ones < 10 { 10 } else { 100 };
                        if rem(&n, m) == 0 {
                            format!("{}{suffix}", n + ones)
                        } else {
                            format!("{n}{ones}{suffix}")
                        }
                    }
                    Some(Value::Str(s)) => s, // unreachable: Str is handled above
                };
                st.emit(text);
                st.value = None;
            } else if let Some(&tens) = self.tens.get(current) {
                st.value = Some(match st.value.take() {
                    None => Value::Int(BigUint::from(tens)),
                    Some(Value::Str(s)) => Value::Str(format!("{s}{tens}")),
                    Some(Value::Int(n)) => {
                        if rem(&n, 100) == 0 {
                            Value::Int(n + tens)
                        } else {
                            Value::Str(format!("{n}{tens}"))
                        }
                    }
                });
            } else if let Some(&(tens, suffix)) = self.tens_suffixed.get(current) {
                // ordinal or cardinal; yield the number right away
                let text = match st.value.take() {
                    None => format!("{tens}{suffix}"),
                    Some(Value::Str(s)) => format!("{s}{tens}{suffix}"),
                    Some(Value::Int(n)) => {
                        if rem(&n, 100) == 0 {
                            format!("{}{suffix}", n + tens)
                        } else {
                            format!("{n}{tens}{suffix}")
                        }
                    }
                };
                st.emit(text);
            } else if let Some(&k) = self.multipliers.get(current) {
                let multiplier = pow10(k);
                match st.value.take() {
                    None => st.value = Some(Value::Int(multiplier)),
                    Some(v) if matches!(v, Value::Str(_)) || v.is_zero_int() => {
                        match times_pow10(&v, k) {
                            Some(Some(p)) => st.value = Some(Value::Int(p)),
                            _ => {
                                st.emit(v.text());
                                st.value = Some(Value::Int(multiplier));
                            }
                        }
                    }
                    Some(Value::Int(n)) => {
                        let before = &n / 1000u32 * 1000u32;
                        let residual = &n % 1000u32;
                        st.value = Some(Value::Int(before + residual * multiplier));
                    }
                    Some(v) => st.value = Some(v), // unreachable: Str is handled above
                }
            } else if let Some(&(k, suffix)) = self.multipliers_suffixed.get(current) {
                let multiplier = pow10(k);
                match st.value.take() {
                    None => st.emit(format!("{multiplier}{suffix}")),
                    Some(Value::Str(s)) => match times_pow10(&Value::Str(s.clone()), k) {
                        Some(Some(p)) => st.emit(format!("{p}{suffix}")),
                        _ => {
                            st.emit(s);
                            st.emit(format!("{multiplier}{suffix}"));
                        }
                    },
                    Some(Value::Int(n)) => {
                        let before = &n / 1000u32 * 1000u32;
                        let residual = &n % 1000u32;
                        st.emit(format!("{}{suffix}", before + residual * multiplier));
                    }
                }
                st.value = None;
            } else if let Some(&sign) = self.preceding_prefixers.get(current) {
                // apply prefix (positive, minus, etc.) if it precedes a number
                st.flush();
                if self.is_word(next) || next_is_numeric {
                    st.prefix = Some(sign);
                } else {
                    st.emit(current.to_string());
                }
            } else if let Some(&symbol) = self.following_prefixers.get(current) {
                // apply prefix (dollars, cents, etc.) only after a number
                match st.value.take() {
                    Some(v) => {
                        st.prefix = Some(symbol);
                        st.emit(v.text());
                    }
                    None => st.emit(current.to_string()),
                }
            } else if SUFFIXERS.contains(&current) {
                // apply suffix symbols (percent -> '%')
                match st.value.take() {
                    Some(v) if current == "per" => {
                        if next == Some("cent") {
                            st.emit(format!("{}%", v.text()));
                            skip = true;
                        } else {
                            st.emit(v.text());
                            st.emit(current.to_string());
                        }
                    }
                    Some(v) => st.emit(format!("{}%", v.text())),
                    None => st.emit(current.to_string()),
                }
            } else if SPECIALS.contains(&current) {
                if !self.is_word(next) && !next_is_numeric {
                    // apply special handling only if the next word can be numeric
                    st.flush();
                    st.emit(current.to_string());
                } else if current == "and" {
                    // ignore "and" after hundreds, thousands, etc.
                    if !prev_in(&self.multipliers) {
                        st.flush();
                        st.emit(current.to_string());
                    }
                } else if current == "double" || current == "triple" {
                    let next_ones = next.and_then(|n| self.ones.get(n).copied());
                    if next_ones.is_some() || next.is_some_and(|n| self.zeros.contains(n)) {
                        let repeats = if current == "double" { 2 } else { 3 };
                        let digits = next_ones.unwrap_or(0).to_string().repeat(repeats);
                        st.value = Some(Value::Str(text_or_empty(&st.value) + &digits));
                        skip = true;
                    } else {
                        st.flush();
                        st.emit(current.to_string());
                    }
                } else if current == "point"
                    && (next.is_some_and(|n| self.decimals.contains(n)) || next_is_numeric)
                {
                    st.value = Some(Value::Str(text_or_empty(&st.value) + "."));
                }
                // else: "point" before another number word is dropped, as in Python
            }
            // Every word in `self.words` is handled above (Python raises otherwise).
        }
        st.flush();
        st.out
    }

    /// Replaces "<number> and a half" with "<number> point five" and splits digits from
    /// letters (keeping ordinal/plural suffixes attached).
    fn preprocess(&self, s: &str) -> String {
        // re.split(r"\band\s+a\s+half\b", s)
        let mut segments = Vec::new();
        let mut last = 0;
        if self.and_a_half.may_match(s) {
            for m in self.and_a_half.regex().find_iter(s) {
                let Ok(m) = m else { break };
                segments.push(&s[last..m.start()]);
                last = m.end();
            }
        }
        segments.push(&s[last..]);

        let mut results: Vec<&str> = Vec::new();
        let n = segments.len();
        for (i, segment) in segments.into_iter().enumerate() {
            if segment.trim_matches(super::is_py_space).is_empty() {
                continue;
            }
            results.push(segment);
            if i + 1 != n {
                let last_word = py_split(segment).last().unwrap_or("");
                if self.decimals.contains(last_word) || self.multipliers.contains_key(last_word) {
                    results.push("point five");
                } else {
                    results.push("and a half");
                }
            }
        }
        let s = results.join(" ");

        // put a space at number/letter boundary
        let s = self
            .letter_digit
            .sub_with(&s, |c| format!("{} {}", group(c, 1), group(c, 2)));
        let s = self
            .digit_letter
            .sub_with(&s, |c| format!("{} {}", group(c, 1), group(c, 2)));
        // but remove spaces which could be a suffix
        self.suffix_space
            .sub_with(&s, |c| format!("{}{}", group(c, 1), group(c, 2)))
    }

    fn postprocess(&self, s: &str) -> String {
        // apply currency postprocessing; "$2 and ¢7" -> "$2.07"
        let s = self.cents_combine.sub_with(s, |c| {
            let cents: u32 = group(c, 3).parse().unwrap_or(0); // always 1-2 ASCII digits
            format!("{}{}.{cents:02}", group(c, 1), group(c, 2))
        });
        let s = self.cents_extract.sub_with(&s, |c| {
            let cents: u32 = group(c, 1).parse().unwrap_or(0);
            format!("¢{cents}")
        });
        // write "one(s)" instead of "1(s)", just for the readability
        self.one.sub_with(&s, |c| format!("one{}", group(c, 1)))
    }

    pub fn normalize(&self, s: &str) -> String {
        let s = self.preprocess(s);
        let words: Vec<&str> = py_split(&s).collect();
        let s = self.process_words(&words).join(" ");
        self.postprocess(&s)
    }
}

/// Python's `s[:-1]`.
fn drop_last(s: &str) -> &str {
    match s.char_indices().last() {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
