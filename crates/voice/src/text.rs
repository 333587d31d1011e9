//! Text preparation before phonemisation: normalisation, sentence and clause splitting, and the
//! pieces a text is synthesised in ([`pieces`]).
//!
//! All pure functions. espeak-ng reads most text well, but it reads some things badly or
//! differently from how a listener expects: currency and percentages, ordinals, common
//! abbreviations whose full stop it takes for the end of a sentence, typographic quotes and
//! dashes. Expanding them here also lets the sentence splitter trust every full stop it sees.
//!
//! # Safe on any text
//!
//! Whatever a client sends, [`sanitize`] (the first step of [`normalize`]) leaves text that
//! espeak-ng reads as words and never dies on: decimal digits of every script become ASCII
//! digits (read as numbers); control characters, NUL, zero-width, bidirectional and other
//! invisible formatting characters, private-use characters and U+FFFD are removed without
//! cutting the text there; a run of more than [`MAX_MARK_RUN`] punctuation marks or symbols keeps
//! its first three; and a word with more than [`MAX_MARKS_PER_WORD`] marks inside it is cut
//! into words at them (the marks become spaces), since espeak-ng 1.51 overflows its stack on
//! long words such as `a.a.a.…` (85 times) or `s's'…` (70 times). [`prepare`] then skips the letters of scripts
//! the voice's language does not read (espeak-ng would name each one: "Chinese letter"), or
//! refuses the text when they are most of its letters.

use unicode_normalization::UnicodeNormalization;

/// Rewrites `text` so espeak-ng reads it as a person would: numbers, currency, percentages and
/// ordinals become words, common abbreviations are expanded, typographic punctuation becomes
/// plain, and runs of whitespace become one space.
pub fn normalize(text: &str) -> String {
    let text = normalize_punctuation(&sanitize(text));
    let mut out = String::with_capacity(text.len() + 16);
    let tokens: Vec<&str> = text.split_whitespace().collect();
    for (i, token) in tokens.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        let next = tokens.get(i + 1).copied();
        out.push_str(&normalize_token(token, next));
    }
    out
}

/// A run of punctuation marks or symbols (anything but letters, digits and spaces) longer than
/// this keeps only its first this many characters.
pub const MAX_MARK_RUN: usize = 3;

/// A word with more marks than this between its letters and digits is cut into words there: its
/// inner marks become spaces (see the module's documentation: espeak-ng crashes on some long
/// such words). Addresses
/// and versions (`example.com/a/b`, `1.2.3`) stay well under it.
pub const MAX_MARKS_PER_WORD: usize = 8;

/// Makes any text safe to phonemise, keeping every word of it: see the module's documentation.
/// The result has no control, zero-width, bidirectional or private-use characters, only ASCII
/// decimal digits, no run of more than [`MAX_MARK_RUN`] marks, no word with more than
/// [`MAX_MARKS_PER_WORD`] marks inside it, and single spaces between words.
pub fn sanitize(text: &str) -> String {
    let mut mapped = String::with_capacity(text.len());
    for c in text.chars() {
        if let Some(digit) = decimal_digit(c) {
            mapped.push(char::from(b'0' + digit));
        } else if matches!(
            c,
            '\t' | '\n' | '\u{0B}' | '\u{0C}' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}'
        ) {
            mapped.push(' ');
        } else if c.is_control() || is_invisible(c) {
            // Removed, never a reason to stop reading: a NUL used to cut the text there.
        } else if !c.is_ascii() && c.is_numeric() {
            // Superscript, subscript and circled digits read as their digits; other numeric
            // signs (fractions, roman numerals) are left to espeak-ng.
            let compat: String = std::iter::once(c).nfkc().collect();
            if !compat.is_empty() && compat.chars().all(|d| d.is_ascii_digit()) {
                mapped.push_str(&compat);
            } else {
                mapped.push(c);
            }
        } else {
            mapped.push(c);
        }
    }
    let mut out = String::with_capacity(mapped.len());
    for word in mapped.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        bound_marks(word, &mut out);
    }
    out
}

/// Appends `word` with its runs of marks cut to [`MAX_MARK_RUN`], and its inner marks replaced
/// by spaces when it has more than [`MAX_MARKS_PER_WORD`] of them.
fn bound_marks(word: &str, out: &mut String) {
    let is_mark = |c: char| !c.is_alphanumeric();
    let chars: Vec<char> = word.chars().collect();
    let first = chars.iter().position(|&c| !is_mark(c));
    let last = chars.iter().rposition(|&c| !is_mark(c));
    let inner_marks = match (first, last) {
        (Some(f), Some(l)) => chars[f..=l].iter().filter(|&&c| is_mark(c)).count(),
        _ => 0,
    };
    let open_up = inner_marks > MAX_MARKS_PER_WORD;
    let mut run = 0;
    for (i, &c) in chars.iter().enumerate() {
        if is_mark(c) {
            run += 1;
            let inner = first.is_some_and(|f| i > f) && last.is_some_and(|l| i < l);
            if open_up && inner {
                // Inner marks become one space: read as separate words, without the pause a
                // full stop would make after each.
                if !out.ends_with(' ') {
                    out.push(' ');
                }
            } else if run <= MAX_MARK_RUN {
                out.push(c);
            }
        } else {
            run = 0;
            out.push(c);
        }
    }
}

/// The value of a decimal digit of any script (`٩`, `९`, `๑`, `９`), `None` for other characters.
fn decimal_digit(c: char) -> Option<u8> {
    let code = u32::from(c);
    if c.is_ascii_digit() {
        return Some(code as u8 - b'0');
    }
    // Unicode keeps each script's digits as ten consecutive code points from zero; these are the
    // zeros (Unicode 16).
    const ZEROS: &[u32] = &[
        0x0660, 0x06F0, 0x07C0, 0x0966, 0x09E6, 0x0A66, 0x0AE6, 0x0B66, 0x0BE6, 0x0C66, 0x0CE6,
        0x0D66, 0x0DE6, 0x0E50, 0x0ED0, 0x0F20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0,
        0x1A80, 0x1A90, 0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0,
        0xAA50, 0xABF0, 0xFF10, 0x104A0, 0x10D30, 0x10D40, 0x11066, 0x110F0, 0x11136, 0x111D0,
        0x112F0, 0x11450, 0x114D0, 0x11650, 0x116C0, 0x116D0, 0x116DA, 0x11730, 0x118E0, 0x11950,
        0x11BF0, 0x11C50, 0x11D50, 0x11DA0, 0x11F50, 0x16130, 0x16A60, 0x16AC0, 0x16B50, 0x16D70,
        0x1CCF0, 0x1D7CE, 0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6, 0x1E140, 0x1E2F0, 0x1E4F0, 0x1E5F1,
        0x1E950, 0x1FBF0,
    ];
    let i = ZEROS.partition_point(|&zero| zero <= code);
    let zero = *ZEROS.get(i.checked_sub(1)?)?;
    (code - zero < 10).then(|| (code - zero) as u8)
}

/// Characters that take no space and carry no sound, which espeak-ng would otherwise name ("a
/// circumflex" for a zero-width joiner) or mishandle: zero-width and bidirectional controls,
/// format characters, variation selectors, tags, private use, non-characters and U+FFFD.
fn is_invisible(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00AD
            | 0x034F
            | 0x0600..=0x0605
            | 0x061C
            | 0x06DD
            | 0x070F
            | 0x0890..=0x0891
            | 0x08E2
            | 0x115F..=0x1160
            | 0x17B4..=0x17B5
            | 0x180B..=0x180F
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x206F
            | 0x3164
            | 0xD800..=0xF8FF
            | 0xFE00..=0xFE0F
            | 0xFDD0..=0xFDEF
            | 0xFEFF
            | 0xFFA0
            | 0xFFF0..=0xFFFF
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE0FFF
            | 0xF0000..=0x10FFFF
    ) || (u32::from(c) & 0xFFFE) == 0xFFFE
}

/// A combining mark from the general blocks, which belongs to the letter before it.
fn is_combining(c: char) -> bool {
    matches!(
        u32::from(c),
        0x0300..=0x036F | 0x1AB0..=0x1AFF | 0x1DC0..=0x1DFF | 0x20D0..=0x20FF | 0xFE20..=0xFE2F
    )
}

/// A text ready for synthesis by a voice: its pieces ([`pieces`]) and what was left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The pieces to synthesise, in order; never empty.
    pub pieces: Vec<String>,
    /// Characters skipped because the voice's language does not read their script.
    pub skipped: usize,
}

/// Why a text cannot be spoken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// Most of the letters are of scripts the voice's language does not read.
    #[error(
        "{foreign} of its {letters} letters are in a script that the voice's language, \
         {language}, does not read"
    )]
    UnsupportedScript {
        /// The language, named for people ("English (en_US)").
        language: String,
        /// Letters in other scripts.
        foreign: usize,
        /// All letters.
        letters: usize,
    },
    /// No letters or digits are left to speak.
    #[error("nothing speakable in text")]
    NothingToSpeak,
}

/// The whole text front end for a voice whose language is `language` (`en_US`, or espeak-ng's
/// `en-us`): [`sanitize`], then letters of scripts the language does not read are skipped (each
/// run becomes a space) and counted, then [`pieces`]. Refused when those letters are most of the
/// text's letters, or when nothing speakable is left.
pub fn prepare(text: &str, language: &str) -> Result<Prepared, TextError> {
    let clean = sanitize(text);
    let allowed = crate::script::scripts_of_language(language);
    let (mut kept, mut skipped, mut native, mut foreign) =
        (String::with_capacity(clean.len()), 0, 0, 0);
    let mut skipping = false;
    for c in clean.chars() {
        let script = crate::script::script_of(c);
        let is_foreign = match (script, allowed) {
            (Some(script), Some(allowed)) => !allowed.contains(&script),
            _ => false,
        };
        if is_foreign || (skipping && is_combining(c)) {
            skipped += 1;
            foreign += usize::from(c.is_alphabetic());
            if !skipping && !kept.ends_with(' ') {
                kept.push(' ');
            }
            skipping = true;
            continue;
        }
        skipping = false;
        native += usize::from(c.is_alphabetic());
        kept.push(c);
    }
    if foreign > native {
        return Err(TextError::UnsupportedScript {
            language: crate::script::language_name(language),
            foreign,
            letters: foreign + native,
        });
    }
    let pieces = pieces(&kept);
    if pieces.is_empty() {
        return Err(TextError::NothingToSpeak);
    }
    Ok(Prepared { pieces, skipped })
}

fn normalize_punctuation(text: &str) -> String {
    let mut s = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{2018}' | '\u{2019}' | '\u{02BC}' | '`' => s.push('\''),
            // Double quotes carry no sound; espeak-ng sometimes reads them out.
            '"' | '\u{201C}' | '\u{201D}' | '\u{00AB}' | '\u{00BB}' => {}
            // Dashes and brackets are pauses.
            '\u{2014}' | '\u{2013}' => s.push_str(", "),
            '(' | ')' | '[' | ']' | '{' | '}' => s.push_str(", "),
            '\u{2026}' => s.push_str(", "),
            '.' if chars.peek() == Some(&'.') => {
                while chars.peek() == Some(&'.') {
                    chars.next();
                }
                s.push_str(", ");
            }
            '&' => s.push_str(" and "),
            // Markdown and similar markup that espeak-ng would spell out.
            '*' | '_' | '#' | '~' | '|' | '<' | '>' => s.push(' '),
            '\u{00A0}' | '\t' | '\r' | '\n' => s.push(' '),
            c => s.push(c),
        }
    }
    s
}

/// A word of a text as its writer wrote it, and the words the front end speaks for it (`3` is
/// `three`, `$5` is `five dollars`, `Dr.` is `Doctor`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The token without the punctuation around it (currency signs and `%` are kept).
    pub word: String,
    /// Its spoken words, as word timings name them, in order; never empty.
    pub spoken: Vec<String>,
}

/// The written words of `text`, in order, with what [`normalize`] makes of each: see
/// [`WrittenWords`].
pub fn written_words(text: &str) -> Vec<Written> {
    let text = normalize_punctuation(&sanitize(text));
    let tokens: Vec<&str> = text.split_whitespace().collect();
    tokens
        .iter()
        .enumerate()
        .filter_map(|(i, token)| {
            let spoken: Vec<String> = normalize_token(token, tokens.get(i + 1).copied())
                .split_whitespace()
                .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()).to_owned())
                .filter(|w| !w.is_empty())
                .collect();
            let word = token
                .trim_matches(|c: char| !c.is_alphanumeric() && !matches!(c, '$' | '€' | '£' | '%'))
                .to_owned();
            (!spoken.is_empty() && !word.is_empty()).then_some(Written { word, spoken })
        })
        .collect()
}

/// Turns timed spoken words back into the words of the text as written: fed each spoken word
/// with its times, in order, it gives a written word once all of its spoken words have come,
/// timed from the first one's start to the last one's end. A spoken word that matches no written
/// word ahead (the text front end left something out, such as letters of another script) is
/// given as it is, and so is a written word whose spoken words stop matching (with the times
/// of those that came).
#[derive(Debug, Clone)]
pub struct WrittenWords {
    ahead: std::collections::VecDeque<Written>,
    /// Spoken words of the front written word already matched, and the first one's start.
    matched: usize,
    start: f64,
    end: f64,
}

/// How far ahead a spoken word is looked for among the written words.
const WRITTEN_LOOKAHEAD: usize = 8;

impl WrittenWords {
    /// For the written words of a text ([`written_words`]).
    pub fn new(words: Vec<Written>) -> Self {
        Self {
            ahead: words.into(),
            matched: 0,
            start: 0.0,
            end: 0.0,
        }
    }

    /// The written words that the spoken `word` (from `start` to `end` seconds) completes.
    pub fn feed(&mut self, word: &str, start: f64, end: f64) -> Vec<(String, f64, f64)> {
        let mut out = Vec::new();
        if self.matched > 0 {
            let front = self.ahead.front().expect("a word is being matched");
            if front.spoken.get(self.matched).is_some_and(|w| w == word) {
                self.matched += 1;
                self.end = end;
                if self.matched == front.spoken.len() {
                    out.extend(self.complete());
                }
                return out;
            }
            // The rest of this word never came: it is given with the times of what did.
            out.extend(self.complete());
        }
        let found = self
            .ahead
            .iter()
            .take(WRITTEN_LOOKAHEAD)
            .position(|w| w.spoken[0] == word);
        match found {
            Some(skip) => {
                self.ahead.drain(..skip);
                (self.matched, self.start, self.end) = (1, start, end);
                if self.ahead[0].spoken.len() == 1 {
                    out.extend(self.complete());
                }
            }
            None => out.push((word.to_owned(), start, end)),
        }
        out
    }

    /// The written word being matched, if any, with the times of its spoken words so far.
    pub fn finish(&mut self) -> Option<(String, f64, f64)> {
        self.complete()
    }

    fn complete(&mut self) -> Option<(String, f64, f64)> {
        if self.matched == 0 {
            return None;
        }
        self.matched = 0;
        let front = self.ahead.pop_front()?;
        Some((front.word, self.start, self.end))
    }
}

/// Abbreviations whose full stop is not a sentence end, and what they stand for.
const ABBREVIATIONS: &[(&str, &str)] = &[
    ("Mr.", "Mister"),
    ("Mrs.", "Missus"),
    ("Ms.", "Miz"),
    ("Dr.", "Doctor"),
    ("Prof.", "Professor"),
    ("Jr.", "Junior"),
    ("Sr.", "Senior"),
    ("vs.", "versus"),
    ("etc.", "et cetera"),
    ("e.g.", "for example"),
    ("i.e.", "that is"),
    ("approx.", "approximately"),
    ("Inc.", "Incorporated"),
    ("Ltd.", "Limited"),
    ("Co.", "Company"),
    ("Jan.", "January"),
    ("Feb.", "February"),
    ("Aug.", "August"),
    ("Sept.", "September"),
    ("Oct.", "October"),
    ("Nov.", "November"),
    ("Dec.", "December"),
];

fn normalize_token(token: &str, next: Option<&str>) -> String {
    // Split leading and trailing punctuation off, keeping it.
    let start = token
        .find(|c: char| {
            c.is_alphanumeric() || c == '$' || c == '€' || c == '£' || c == '-' || c == '+'
        })
        .unwrap_or(token.len());
    let (lead, rest) = token.split_at(start);
    for (abbr, full) in ABBREVIATIONS {
        if let Some(tail) = rest.strip_prefix(abbr)
            && tail.chars().all(|c| !c.is_alphanumeric())
        {
            // "etc." at the end of a sentence keeps the sentence's full stop.
            let keep_stop = abbr.starts_with("etc") && next.is_none_or(starts_upper);
            let stop = if keep_stop { "." } else { "" };
            return format!("{lead}{full}{stop}{tail}");
        }
    }
    if (rest == "No." || rest == "no.")
        && next.is_some_and(|n| n.starts_with(|c: char| c.is_ascii_digit()))
    {
        return format!("{lead}number");
    }
    let end = rest
        .rfind(|c: char| c.is_alphanumeric() || c == '%')
        .map_or(0, |i| {
            i + rest[i..].chars().next().map_or(1, char::len_utf8)
        });
    let (core, trail) = rest.split_at(end);
    match number_words(core) {
        Some(words) => format!("{lead}{words}{trail}"),
        None => format!("{lead}{core}{trail}"),
    }
}

fn starts_upper(s: &str) -> bool {
    s.chars()
        .find(|c| c.is_alphanumeric())
        .is_some_and(char::is_uppercase)
}

/// Words for a token that is a number, amount, percentage or ordinal; `None` for other tokens.
fn number_words(token: &str) -> Option<String> {
    if token.is_empty() {
        return None;
    }
    let (currency, rest) = match token.chars().next()? {
        '$' => (Some(("dollar", "dollars", "cent", "cents")), &token[1..]),
        '€' => (
            Some(("euro", "euros", "cent", "cents")),
            &token['€'.len_utf8()..],
        ),
        '£' => (
            Some(("pound", "pounds", "penny", "pence")),
            &token['£'.len_utf8()..],
        ),
        _ => (None, token),
    };
    let (negative, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let (percent, rest) = match rest.strip_suffix('%') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    if let Some(words) = ordinal_words(rest) {
        return (currency.is_none() && !percent && !negative).then_some(words);
    }
    let digits_ok = !rest.is_empty()
        && rest.starts_with(|c: char| c.is_ascii_digit())
        && rest
            .chars()
            .all(|c| c.is_ascii_digit() || c == ',' || c == '.');
    if !digits_ok || rest.matches('.').count() > 1 {
        return None;
    }
    let (int_part, frac_part) = match rest.split_once('.') {
        Some((i, f)) if !f.is_empty() && !f.contains(',') => (i, Some(f)),
        Some(_) => return None,
        None => (rest, None),
    };
    // Thousands separators must group by three.
    if int_part.contains(',') {
        let groups: Vec<&str> = int_part.split(',').collect();
        if groups[0].is_empty() || groups[0].len() > 3 || groups[1..].iter().any(|g| g.len() != 3) {
            return None;
        }
    }
    let int_digits: String = int_part.chars().filter(char::is_ascii_digit).collect();
    let value: u64 = int_digits.parse().ok()?;
    let mut words = String::new();
    if negative {
        words.push_str("minus ");
    }
    let is_year = currency.is_none()
        && !percent
        && frac_part.is_none()
        && !negative
        && !int_part.contains(',')
        && int_digits.len() == 4
        && ((1100..2000).contains(&value) || (2010..2100).contains(&value));
    if is_year {
        words.push_str(&year_words(value));
    } else {
        words.push_str(&cardinal(value)?);
    }
    match (currency, frac_part) {
        (Some((one, many, cent, cents)), frac) => {
            words.push(' ');
            words.push_str(if value == 1 { one } else { many });
            if let Some(frac) = frac {
                let c: u64 = format!("{frac:0<2}").get(..2)?.parse().ok()?;
                if c > 0 {
                    words.push_str(" and ");
                    words.push_str(&cardinal(c)?);
                    words.push(' ');
                    words.push_str(if c == 1 { cent } else { cents });
                }
            }
        }
        (None, Some(frac)) => {
            words.push_str(" point");
            for d in frac.chars() {
                words.push(' ');
                words.push_str(ONES[d.to_digit(10)? as usize]);
            }
        }
        (None, None) => {}
    }
    if percent {
        words.push_str(" percent");
    }
    Some(words)
}

const ONES: [&str; 20] = [
    "zero",
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
const TENS: [&str; 10] = [
    "", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety",
];

/// English words for `n` (up to 999 trillion; larger numbers are left to espeak-ng as digits).
fn cardinal(n: u64) -> Option<String> {
    if n >= 1_000_000_000_000_000 {
        return None;
    }
    if n < 20 {
        return Some(ONES[n as usize].to_owned());
    }
    if n < 100 {
        let t = TENS[(n / 10) as usize];
        return Some(match n % 10 {
            0 => t.to_owned(),
            u => format!("{t}-{}", ONES[u as usize]),
        });
    }
    if n < 1000 {
        let h = format!("{} hundred", ONES[(n / 100) as usize]);
        return Some(match n % 100 {
            0 => h,
            r => format!("{h} {}", cardinal(r)?),
        });
    }
    for (scale, name) in [
        (1_000_000_000_000u64, "trillion"),
        (1_000_000_000, "billion"),
        (1_000_000, "million"),
        (1_000, "thousand"),
    ] {
        if n >= scale {
            let head = format!("{} {name}", cardinal(n / scale)?);
            return Some(match n % scale {
                0 => head,
                r => format!("{head} {}", cardinal(r)?),
            });
        }
    }
    None
}

/// "nineteen ninety", "two thousand nine", "twenty twenty-four", "nineteen oh five".
fn year_words(y: u64) -> String {
    let (hi, lo) = (y / 100, y % 100);
    let hi_words = cardinal(hi).unwrap_or_default();
    match lo {
        0 => format!("{hi_words} hundred"),
        1..=9 => format!("{hi_words} oh {}", ONES[lo as usize]),
        _ => format!("{hi_words} {}", cardinal(lo).unwrap_or_default()),
    }
}

/// "1st" → "first", "22nd" → "twenty-second"; `None` if not an ordinal.
fn ordinal_words(token: &str) -> Option<String> {
    let lower = token.to_ascii_lowercase();
    let digits = ["st", "nd", "rd", "th"]
        .iter()
        .find_map(|suffix| lower.strip_suffix(suffix))?;
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let words = cardinal(digits.parse().ok()?)?;
    // Replace the last word with its ordinal form.
    let split = words.rfind([' ', '-']).map_or(0, |i| i + 1);
    let (head, last) = words.split_at(split);
    let last = match last {
        "one" => "first".to_owned(),
        "two" => "second".to_owned(),
        "three" => "third".to_owned(),
        "five" => "fifth".to_owned(),
        "eight" => "eighth".to_owned(),
        "nine" => "ninth".to_owned(),
        "twelve" => "twelfth".to_owned(),
        w if w.ends_with('y') => format!("{}ieth", &w[..w.len() - 1]),
        w => format!("{w}th"),
    };
    Some(format!("{head}{last}"))
}

/// Splits normalised text into sentences, each keeping its final punctuation, for streaming:
/// each sentence is synthesised and sent on its own.
///
/// A sentence ends at `.`, `!` or `?` (a run of them counts once) followed by whitespace or the
/// end of the text. Text without a final terminator is a sentence too.
pub fn split_sentences(text: &str) -> Vec<String> {
    let mut sentences = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        current.push(c);
        if matches!(c, '.' | '!' | '?') {
            while let Some(&n) = chars.peek() {
                if matches!(n, '.' | '!' | '?' | '\'' | ')') {
                    current.push(n);
                    chars.next();
                } else {
                    break;
                }
            }
            if chars.peek().is_none_or(|n| n.is_whitespace()) {
                let s = current.trim();
                if s.chars().any(char::is_alphanumeric) {
                    sentences.push(s.to_owned());
                }
                current.clear();
            }
        }
    }
    let s = current.trim();
    if s.chars().any(char::is_alphanumeric) {
        sentences.push(s.to_owned());
    }
    sentences
}

/// The longest piece of text synthesised at once, in characters. A longer sentence is cut at
/// clause boundaries, and a clause still longer than this at spaces: the text encoder's memory
/// grows with the square of a piece's length, and a piece is the unit of streaming.
pub const MAX_PIECE_CHARS: usize = 400;

/// A first sentence longer than this (in characters) is cut early, so that the first audio waits
/// for a few words' inference rather than a whole sentence's: after its first clause when that
/// clause is at most twice this long, otherwise between words, at most this long (when at least
/// half this much follows). A clause break keeps the intonation of the cut natural; a cut between
/// words costs a little of it, once.
pub const FIRST_PIECE_CHARS: usize = 80;

/// The pieces `text` is synthesised in, in order: its sentences after [`normalize`], where the
/// first sentence, if longer than [`FIRST_PIECE_CHARS`], gives its beginning a piece of its own
/// (see there), and no piece is longer than [`MAX_PIECE_CHARS`]. Cut clauses keep their
/// punctuation, so the pause and intonation at the cut stay those of the clause.
pub fn pieces(text: &str) -> Vec<String> {
    let mut pieces = Vec::new();
    for (i, sentence) in split_sentences(&normalize(text)).into_iter().enumerate() {
        let chars = sentence.chars().count();
        if chars <= MAX_PIECE_CHARS && (i > 0 || chars <= FIRST_PIECE_CHARS) {
            pieces.push(sentence);
            continue;
        }
        let mut clauses: Vec<String> = split_clauses(&sentence)
            .into_iter()
            .map(|c| match c.terminator {
                Some(t) => format!("{}{t}", c.text),
                None => c.text,
            })
            .collect();
        if i == 0 && !clauses.is_empty() {
            let first = clauses.remove(0);
            if clauses.is_empty() || first.chars().count() > 2 * FIRST_PIECE_CHARS {
                // No clause break near the start: the first words make the first piece, and the
                // rest of the clause goes on with the others.
                match cut_between_words(&first) {
                    Some((head, rest)) => {
                        pieces.push(head);
                        clauses.insert(0, rest);
                    }
                    None => clauses.insert(0, first),
                }
            } else {
                pieces.push(first);
            }
        }
        pack(clauses, MAX_PIECE_CHARS, &mut pieces);
    }
    pieces
}

/// The first words of `clause` up to [`FIRST_PIECE_CHARS`], and the rest; `None` when a cut
/// would not help: the first word alone is longer than that, or the rest would be shorter than
/// half of it (a short tail is spoken soon anyway, and each cut costs a little intonation).
fn cut_between_words(clause: &str) -> Option<(String, String)> {
    // The longest run of whole words (the clause ends at a space or at its end) that fits.
    let end = clause
        .match_indices(' ')
        .map(|(at, _)| at)
        .chain([clause.len()])
        .take_while(|&at| clause[..at].chars().count() <= FIRST_PIECE_CHARS)
        .last()?;
    let (head, rest) = (clause[..end].trim(), clause[end..].trim());
    (!head.is_empty() && rest.chars().count() >= FIRST_PIECE_CHARS / 2)
        .then(|| (head.to_owned(), rest.to_owned()))
}

/// Joins consecutive clauses (with a space) into pieces of at most `limit` characters; a clause
/// longer than that is cut at spaces, and a word longer than that is cut anywhere.
fn pack(clauses: Vec<String>, limit: usize, pieces: &mut Vec<String>) {
    let mut current = String::new();
    let mut current_chars = 0;
    let mut flush = |current: &mut String, current_chars: &mut usize| {
        if !current.is_empty() {
            pieces.push(std::mem::take(current));
        }
        *current_chars = 0;
    };
    for clause in clauses {
        let words: Vec<String> = if clause.chars().count() <= limit {
            vec![clause]
        } else {
            clause
                .split_whitespace()
                .flat_map(|w| {
                    let chars: Vec<char> = w.chars().collect();
                    chars
                        .chunks(limit)
                        .map(|c| c.iter().collect::<String>())
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        for word in words {
            let n = word.chars().count();
            let sep = usize::from(!current.is_empty());
            if current_chars + sep + n > limit {
                flush(&mut current, &mut current_chars);
            }
            if !current.is_empty() {
                current.push(' ');
                current_chars += 1;
            }
            current.push_str(&word);
            current_chars += n;
        }
    }
    flush(&mut current, &mut current_chars);
}

/// A clause of a sentence and the punctuation that ends it (Piper keeps that punctuation as a
/// phoneme: it shapes the pause and the intonation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clause {
    /// The clause's words, without the punctuation that ends it.
    pub text: String,
    /// `.`, `,`, `?`, `!`, `;` or `:`; `None` for a sentence that ends without one.
    pub terminator: Option<char>,
}

/// Splits one sentence into clauses at `, ; : . ! ?` (followed by whitespace or the end), as
/// espeak-ng's clause detection does for plain text.
pub fn split_clauses(sentence: &str) -> Vec<Clause> {
    let mut clauses = Vec::new();
    let mut current = String::new();
    let mut chars = sentence.chars().peekable();
    while let Some(c) = chars.next() {
        let is_terminator = matches!(c, ',' | ';' | ':' | '.' | '!' | '?');
        if is_terminator
            && chars
                .peek()
                .is_none_or(|n| n.is_whitespace() || matches!(n, '.' | '!' | '?' | ','))
        {
            // A run like "?!" or "..." ends the clause once, with its first mark.
            while chars
                .peek()
                .is_some_and(|n| matches!(n, '.' | '!' | '?' | ','))
            {
                chars.next();
            }
            let text = current.trim().to_owned();
            if text.chars().any(char::is_alphanumeric) {
                clauses.push(Clause {
                    text,
                    terminator: Some(c),
                });
            }
            current.clear();
        } else {
            current.push(c);
        }
    }
    let text = current.trim().to_owned();
    if text.chars().any(char::is_alphanumeric) {
        clauses.push(Clause {
            text,
            terminator: None,
        });
    }
    clauses
}

/// Random Unicode text for property tests: a small seeded generator (xorshift), drawing from
/// the classes that have broken the voice before and from anywhere in Unicode.
#[cfg(test)]
pub(crate) mod random_text {
    pub struct Gen(u64);

    impl Gen {
        pub fn new(seed: u64) -> Self {
            Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }

        pub fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        pub fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len() as u64) as usize]
        }

        fn any_char(&mut self) -> char {
            loop {
                let code = match self.below(4) {
                    0 => self.below(0x80),
                    1 => self.below(0x3000),
                    2 => self.below(0x1_0000),
                    _ => self.below(0x11_0000),
                } as u32;
                if let Some(c) = char::from_u32(code) {
                    return c;
                }
            }
        }

        /// One random text of up to about `max` characters.
        pub fn text(&mut self, max: usize) -> String {
            const WORDS: &[&str] = &[
                "Hello", "world", "the", "quick", "fox", "a", "s", "I", "x", "NASA", "e.g.", "Dr.",
                "$5.50", "50%", "1st", "1,234", "3.14",
            ];
            const MARKS: &[&str] = &[
                ".", ",", "!", "?", "'", "\"", "-", "(", ")", "...", ":", ";", "/", "@", "#", "*",
                "&", "<", ">", "…", "—", "’",
            ];
            const SPECIAL: &[&str] = &[
                "\0",
                "\u{1}",
                "\u{7f}",
                "\u{85}",
                "\u{9f}",
                "\t",
                "\n",
                "\r",
                "\u{200b}",
                "\u{200c}",
                "\u{200d}",
                "\u{200e}",
                "\u{202e}",
                "\u{2066}",
                "\u{feff}",
                "\u{ad}",
                "\u{fe0f}",
                "\u{e0041}",
                "\u{e000}",
                "\u{fffd}",
                "\u{ffff}",
                "\u{301}",
                "\u{20dd}",
                "٩",
                "९",
                "๑",
                "٣",
                "১",
                "９",
                "𝟘",
                "²",
                "①",
                "½",
                "日",
                "本",
                "語",
                "ж",
                "ع",
                "क",
                "ア",
                "한",
                "α",
                "ᚠ",
                "😀",
                "👨‍👩‍👧",
                "★",
                "♥",
                "€",
                "£",
            ];
            const CRASHERS: &[&str] = &["a.", "s'", "x.", "'s", ".a", "b."];
            let mut out = String::new();
            while out.chars().count() < max {
                match self.below(10) {
                    0..=2 => out.push_str(self.pick(WORDS)),
                    3 => out.push(' '),
                    4 => out.push_str(self.pick(MARKS)),
                    5 | 6 => out.push_str(self.pick(SPECIAL)),
                    7 => out.push(self.any_char()),
                    8 => {
                        let unit = self.pick(CRASHERS);
                        let n = self.below(300) as usize;
                        out.push_str(&unit.repeat(n));
                    }
                    _ => {
                        let unit = self.pick(SPECIAL);
                        let n = self.below(50) as usize;
                        out.push_str(&unit.repeat(n));
                    }
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::script::{script_of, scripts_of_language};

    #[test]
    fn written_words_come_back_from_the_spoken_ones() {
        let written = written_words("Dr. Smith paid $5 for 3 (three) books, at 1,234 Main St.");
        let pairs: Vec<(&str, usize)> = written
            .iter()
            .map(|w| (w.word.as_str(), w.spoken.len()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("Dr", 1),
                ("Smith", 1),
                ("paid", 1),
                ("$5", 2),
                ("for", 1),
                ("3", 1),
                ("three", 1),
                ("books", 1),
                ("at", 1),
                ("1,234", 5),
                ("Main", 1),
                ("St", 1),
            ]
        );
        let mut words = WrittenWords::new(written);
        let spoken = normalize("Dr. Smith paid $5 for 3 (three) books, at 1,234 Main St.");
        let mut out = Vec::new();
        for (i, w) in spoken.split_whitespace().enumerate() {
            let w = w.trim_matches(|c: char| !c.is_alphanumeric());
            if w.is_empty() {
                continue;
            }
            out.extend(words.feed(w, i as f64, i as f64 + 0.5));
        }
        out.extend(words.finish());
        let names: Vec<&str> = out.iter().map(|(w, _, _)| w.as_str()).collect();
        assert_eq!(
            names,
            [
                "Dr", "Smith", "paid", "$5", "for", "3", "three", "books", "at", "1,234", "Main",
                "St"
            ]
        );
        // "$5" is "five dollars": from the start of "five" to the end of "dollars".
        assert_eq!(out[3], ("$5".into(), 3.0, 4.5));
        // A spoken word the writer never wrote is given as it is; a word cut short keeps the
        // times of what came.
        let mut words = WrittenWords::new(written_words("go $5 now"));
        assert_eq!(words.feed("extra", 0.0, 1.0), [("extra".into(), 0.0, 1.0)]);
        assert_eq!(words.feed("go", 1.0, 2.0), [("go".into(), 1.0, 2.0)]);
        assert_eq!(words.feed("five", 2.0, 3.0), []);
        assert_eq!(
            words.feed("now", 3.0, 4.0),
            [("$5".into(), 2.0, 3.0), ("now".into(), 3.0, 4.0)]
        );
        assert_eq!(words.finish(), None);
    }

    #[test]
    fn digits_of_every_script_are_read_as_numbers() {
        assert_eq!(normalize("٩"), "nine");
        assert_eq!(normalize("९"), "nine");
        assert_eq!(normalize("๑"), "one");
        assert_eq!(normalize("Room ١٢"), "Room twelve");
        assert_eq!(normalize("９９"), "ninety-nine");
        assert_eq!(normalize("x² and ③"), "x2 and three");
        // Every zero of the table is a zero, and its nine successors the digits 1 to 9.
        for zero in [
            '\u{660}',
            '\u{966}',
            '\u{e50}',
            '\u{ff10}',
            '\u{1d7ce}',
            '\u{1fbf0}',
        ] {
            for d in 0..10u32 {
                let c = char::from_u32(u32::from(zero) + d).unwrap();
                assert_eq!(decimal_digit(c), Some(d as u8), "{c:?}");
            }
        }
        assert_eq!(decimal_digit('a'), None);
        assert_eq!(decimal_digit('\u{65f}'), None);
    }

    #[test]
    fn controls_and_invisible_characters_are_removed_without_cutting() {
        assert_eq!(sanitize("\0Hello world."), "Hello world.");
        assert_eq!(
            sanitize("Hello\0 world. And\u{1} more."),
            "Hello world. And more."
        );
        let joiners = "\u{200d}".repeat(500);
        assert_eq!(
            sanitize(&format!("Hel{joiners}lo wor\u{200b}ld.\u{202e}\u{feff}")),
            "Hello world."
        );
        assert_eq!(sanitize("a\u{e000}b\u{fffd}c\u{fe0f}"), "abc");
        assert_eq!(
            sanitize("line\none\r\ntwo\u{2028}three"),
            "line one two three"
        );
    }

    #[test]
    fn runs_of_marks_are_cut_and_crashing_words_opened_up() {
        assert_eq!(sanitize("Wow!!!!!!!!!! Really??????"), "Wow!!! Really???");
        assert_eq!(sanitize("★★★★★★"), "★★★");
        assert_eq!(sanitize(&"-".repeat(1000)), "---");
        // Ordinary words with a few marks are left alone.
        for word in [
            "e.g.",
            "example.com/a/b/c",
            "1.2.3.4",
            "rock'n'roll",
            "U.S.A.",
        ] {
            assert_eq!(sanitize(word), word);
        }
        // The words espeak-ng 1.51 dies on are cut into words at their inner marks.
        let dots = sanitize(&"a.".repeat(85));
        assert_eq!(dots, format!("{}a.", "a ".repeat(84)));
        let quotes = sanitize(&"s'".repeat(220));
        assert_eq!(quotes, format!("{}s'", "s ".repeat(219)));
        assert_eq!(sanitize("x.y...z.a.b.c.d.e.f.g!"), "x y z a b c d e f g!");
    }

    #[test]
    fn letters_of_other_scripts_are_skipped_or_refused() {
        let p = prepare("Hello 日本 world.", "en_US").unwrap();
        assert_eq!(p.pieces, vec!["Hello world."]);
        assert_eq!(p.skipped, 2);
        assert_eq!(
            prepare(&"日".repeat(400), "en_US"),
            Err(TextError::UnsupportedScript {
                language: "English (en_US)".into(),
                foreign: 400,
                letters: 400
            })
        );
        let err = prepare("Привет, мир! ok", "en-us").unwrap_err();
        assert!(err.to_string().contains("English (en-us)"), "{err}");
        // A Russian voice reads both.
        assert_eq!(prepare("Привет, мир! ok", "ru_RU").unwrap().skipped, 0);
        // An unknown language filters nothing.
        assert_eq!(prepare("日本", "xx").unwrap().skipped, 0);
        // Combining marks go with the letter they belong to.
        assert_eq!(prepare("ok ᚠ\u{301}\u{301}", "en_US").unwrap().skipped, 3);
    }

    #[test]
    fn text_with_nothing_to_speak_is_refused() {
        for text in ["", "   ", "\0", "\u{200d}\u{200d}", "... ?! --", "\u{e000}"] {
            assert_eq!(
                prepare(text, "en_US"),
                Err(TextError::NothingToSpeak),
                "{text:?}"
            );
        }
        assert_eq!(prepare("\0٩", "en_US").unwrap().pieces, vec!["nine"]);
    }

    /// Random Unicode through the whole front end: it never panics, and what it lets through is
    /// clean.
    #[test]
    fn random_unicode_comes_out_clean() {
        let mut generator = random_text::Gen::new(12);
        let allowed = scripts_of_language("en_US").unwrap();
        let (mut spoken, mut refused) = (0, 0);
        for _ in 0..3000 {
            let len = generator.below(600) as usize;
            let text = generator.text(len);
            let clean = sanitize(&text);
            check_clean(&clean, &text);
            let _ = pieces(&text);
            match prepare(&text, "en_US") {
                Ok(prepared) => {
                    spoken += 1;
                    assert!(!prepared.pieces.is_empty());
                    for piece in &prepared.pieces {
                        assert!(piece.chars().count() <= MAX_PIECE_CHARS, "{piece:?}");
                        assert!(piece.chars().any(char::is_alphanumeric), "{piece:?}");
                        assert!(
                            piece
                                .chars()
                                .all(|c| script_of(c).is_none_or(|s| allowed.contains(&s))),
                            "a foreign letter kept in {piece:?} from {text:?}"
                        );
                        for c in piece.chars() {
                            assert!(!c.is_control() && !is_invisible(c), "{c:?} in {piece:?}");
                            assert!(decimal_digit(c).is_none_or(|_| c.is_ascii_digit()));
                        }
                    }
                }
                Err(TextError::UnsupportedScript {
                    foreign, letters, ..
                }) => {
                    refused += 1;
                    assert!(2 * foreign > letters, "{foreign} of {letters}: {text:?}");
                }
                Err(TextError::NothingToSpeak) => refused += 1,
            }
        }
        assert!(
            spoken > 1000 && refused > 30,
            "{spoken} spoken, {refused} refused"
        );
    }

    fn check_clean(clean: &str, text: &str) {
        for c in clean.chars() {
            assert!(
                !c.is_control() && !is_invisible(c),
                "{c:?} left in {clean:?} from {text:?}"
            );
            assert!(decimal_digit(c).is_none_or(|_| c.is_ascii_digit()), "{c:?}");
        }
        assert!(!clean.contains("  ") && clean.trim() == clean, "{clean:?}");
        for word in clean.split(' ') {
            let chars: Vec<char> = word.chars().collect();
            let mut run = 0;
            for &c in &chars {
                run = if c.is_alphanumeric() { 0 } else { run + 1 };
                assert!(run <= MAX_MARK_RUN, "{word:?} from {text:?}");
            }
            let inner = word.trim_matches(|c: char| !c.is_alphanumeric());
            let marks = inner.chars().filter(|c| !c.is_alphanumeric()).count();
            assert!(marks <= MAX_MARKS_PER_WORD, "{word:?} from {text:?}");
        }
    }

    #[test]
    fn numbers_become_words() {
        assert_eq!(normalize("I have 3 cats."), "I have three cats.");
        assert_eq!(
            normalize("It costs 1,234 coins"),
            "It costs one thousand two hundred thirty-four coins"
        );
        assert_eq!(normalize("Pi is 3.14."), "Pi is three point one four.");
        assert_eq!(normalize("-7 degrees"), "minus seven degrees");
        assert_eq!(normalize("101"), "one hundred one");
        assert_eq!(normalize("2000000"), "two million");
    }

    #[test]
    fn years_read_as_years() {
        assert_eq!(
            normalize("In 1990, and 2024."),
            "In nineteen ninety, and twenty twenty-four."
        );
        assert_eq!(normalize("1905"), "nineteen oh five");
        assert_eq!(normalize("2005"), "two thousand five");
    }

    #[test]
    fn money_percent_and_ordinals() {
        assert_eq!(normalize("$5.50"), "five dollars and fifty cents");
        assert_eq!(normalize("$1"), "one dollar");
        assert_eq!(normalize("£3"), "three pounds");
        assert_eq!(normalize("50% off"), "fifty percent off");
        assert_eq!(
            normalize("the 1st and 22nd and 100th"),
            "the first and twenty-second and one hundredth"
        );
        assert_eq!(normalize("the 12th, 30th"), "the twelfth, thirtieth");
    }

    #[test]
    fn abbreviations_are_expanded() {
        assert_eq!(
            normalize("Dr. Smith met Mr. Jones."),
            "Doctor Smith met Mister Jones."
        );
        assert_eq!(
            normalize("apples, pears, etc. Then more"),
            "apples, pears, et cetera. Then more"
        );
        assert_eq!(normalize("fruit, e.g. apples"), "fruit, for example apples");
        assert_eq!(normalize("No. 5"), "number five");
    }

    #[test]
    fn typographic_punctuation_becomes_plain() {
        assert_eq!(
            normalize("\u{201C}Don\u{2019}t\u{201D} \u{2014} she said\u{2026}"),
            "Don't , she said,"
        );
        assert_eq!(normalize("wait... what"), "wait, what");
        assert_eq!(
            normalize("a  *bold*\n\nword & more"),
            "a bold word and more"
        );
    }

    #[test]
    fn words_and_mixed_tokens_are_left_alone() {
        assert_eq!(normalize("R2D2 and MP3s"), "R2D2 and MP3s");
        assert_eq!(normalize("version 1.2.3"), "version 1.2.3");
    }

    #[test]
    fn sentences_split_at_terminators() {
        assert_eq!(
            split_sentences("Hello there. How are you? Fine!  Thanks"),
            vec!["Hello there.", "How are you?", "Fine!", "Thanks"]
        );
        assert_eq!(split_sentences("Really?! Yes."), vec!["Really?!", "Yes."]);
        assert_eq!(split_sentences("No stop here"), vec!["No stop here"]);
        assert_eq!(split_sentences("  . ! "), Vec::<String>::new());
        // A full stop inside a token is not a sentence end.
        assert_eq!(
            split_sentences("Go to example.com now."),
            vec!["Go to example.com now."]
        );
    }

    #[test]
    fn short_sentences_are_their_own_pieces() {
        assert_eq!(
            pieces("Hello there. How are you?"),
            vec!["Hello there.", "How are you?"]
        );
    }

    #[test]
    fn a_long_first_sentence_gives_its_first_clause_a_piece() {
        let first = "The old lighthouse stood at the edge of the cliff, its white paint peeling in \
                     the salt wind, and nobody came.";
        let later = "Later, a sentence just as long as the first one stays whole, because only \
                     the first audio waits.";
        let p = pieces(&format!("{first} {later}"));
        assert_eq!(
            p,
            vec![
                "The old lighthouse stood at the edge of the cliff,",
                "its white paint peeling in the salt wind, and nobody came.",
                later,
            ]
        );
    }

    #[test]
    fn a_long_first_sentence_without_a_clause_break_is_cut_between_words() {
        let words = "the keeper climbed the spiral stairs to light the great lamp every evening \
                     of the year without fail and in every kind of weather the sea could bring";
        let p = pieces(&format!("{words}. Then he slept."));
        assert!(p[0].chars().count() <= FIRST_PIECE_CHARS, "{p:?}");
        assert!(
            p[0].starts_with("the keeper climbed") && !p[0].ends_with(' '),
            "{p:?}"
        );
        assert_eq!(format!("{} {}", p[0], p[1]), format!("{words}."));
        assert_eq!(p[2], "Then he slept.");
        // No cut when the tail would be short, or when the first word alone is too long.
        let p = pieces(
            "the farmer watches the lazy dog and the quick brown fox from his porch all day",
        );
        assert_eq!(p.len(), 1, "{p:?}");
        let giant = "x".repeat(FIRST_PIECE_CHARS + 10);
        let p = pieces(&format!(
            "{giant} and then a good many more words follow it here"
        ));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with(&format!("{giant} and")), "{p:?}");
        // The same goes for a first clause over twice the limit.
        let long_clause = vec!["word"; 60].join(" ");
        let p = pieces(&format!("{long_clause}, and a short end."));
        assert!(p[0].chars().count() <= FIRST_PIECE_CHARS, "{p:?}");
        assert_eq!(
            p.concat().replace(' ', ""),
            format!("{long_clause},andashortend.").replace(' ', "")
        );
    }

    #[test]
    fn no_piece_is_longer_than_the_limit() {
        // One clause of 1,000 words and no punctuation, then a single enormous word.
        let words = vec!["word"; 1000].join(" ");
        let giant = "x".repeat(2 * MAX_PIECE_CHARS + 5);
        for text in [
            words.clone(),
            giant.clone(),
            format!("Intro, {words}, outro. {giant}"),
        ] {
            let p = pieces(&text);
            assert!(
                p.iter().all(|s| s.chars().count() <= MAX_PIECE_CHARS),
                "{p:?}"
            );
            // Nothing is lost: the same characters come out in order, spaces and stops aside.
            let letters = |s: &str| s.replace(['.', ' '], "");
            assert_eq!(letters(&p.concat()), letters(&normalize(&text)));
        }
        // Clauses are packed together up to the limit rather than one piece each.
        let clauses = vec!["a short clause"; 100].join(", ");
        let p = pieces(&format!("{clauses}."));
        assert!(p.len() < 10, "{} pieces", p.len());
        assert!(p.last().unwrap().ends_with("a short clause."), "{p:?}");
        assert!(p[1].ends_with(','), "a cut keeps the clause's comma: {p:?}");
    }

    #[test]
    fn clauses_keep_their_punctuation() {
        assert_eq!(
            split_clauses("Hello world, this is a test."),
            vec![
                Clause {
                    text: "Hello world".into(),
                    terminator: Some(',')
                },
                Clause {
                    text: "this is a test".into(),
                    terminator: Some('.')
                },
            ]
        );
        assert_eq!(
            split_clauses("Wait; really?! ok"),
            vec![
                Clause {
                    text: "Wait".into(),
                    terminator: Some(';')
                },
                Clause {
                    text: "really".into(),
                    terminator: Some('?')
                },
                Clause {
                    text: "ok".into(),
                    terminator: None
                },
            ]
        );
    }

    /// Properties over arbitrary Unicode: the front end never panics, and what it hands
    /// espeak-ng is never empty and carries no control, invisible or non-ASCII digit character,
    /// in pieces no longer than the limit. `PROPTEST_CASES` runs more.
    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Text mixing the classes that broke the voice: controls and NUL, zero-width and bidi
        /// controls, digits of other scripts, CJK, combining marks, repeated punctuation, markup.
        fn hostile() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                "[a-zA-Z ,.!?']{0,20}",
                any::<char>().prop_map(String::from),
                prop::sample::select(vec![
                    "\u{0}",
                    "\u{200b}",
                    "\u{200d}",
                    "\u{202e}",
                    "\u{feff}",
                    "\u{301}",
                    "\u{669}",
                    "\u{96f}",
                    "\u{e51}",
                    "日",
                    "a.",
                    "s'",
                    "<speak>",
                    "&amp;",
                    "\u{1F600}",
                    "...",
                    "!!!!!!",
                    "\u{e000}",
                ])
                .prop_map(str::to_owned),
            ];
            prop::collection::vec(piece, 0..40).prop_map(|parts| parts.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

            #[test]
            fn the_front_end_hands_espeak_only_clean_bounded_pieces(text in hostile()) {
                let clean = sanitize(&text);
                prop_assert!(clean.chars().all(|c| !c.is_control() && !is_invisible(c)), "{clean:?}");
                // Digits of other scripts are read as the digits they are.
                prop_assert!(!clean.contains(['\u{669}', '\u{96f}', '\u{e51}']), "{clean:?}");
                match prepare(&text, "en_US") {
                    Ok(prepared) => {
                        prop_assert!(!prepared.pieces.is_empty());
                        for piece in &prepared.pieces {
                            prop_assert!(!piece.trim().is_empty(), "{:?}", prepared.pieces);
                            prop_assert!(piece.chars().count() <= MAX_PIECE_CHARS, "{piece:?}");
                            prop_assert!(piece.chars().all(|c| !c.is_control() && !is_invisible(c)), "{piece:?}");
                            prop_assert!(piece.chars().any(char::is_alphanumeric), "{piece:?}");
                        }
                    }
                    Err(TextError::NothingToSpeak | TextError::UnsupportedScript { .. }) => {}
                }
            }

            #[test]
            fn ssml_parsing_never_panics(text in hostile(), wrap in any::<bool>()) {
                let input = if wrap { format!("<speak>{text}</speak>") } else { text };
                let _ = crate::ssml::parse(&input);
            }
        }
    }
}
