//! Word error rate between a reference text and a transcript.
//!
//! Both sides are normalised the same way before words are compared, so that differences Whisper
//! makes in writing, not in hearing, do not count as errors:
//!
//! - lower case;
//! - apostrophes removed (`don't` = `dont`), hyphens and other punctuation become spaces
//!   (`twenty-one` = `twenty one`); a `.` or `,` between digits is kept (`3.5`, `1,000`), then
//!   commas inside numbers are dropped;
//! - whole numbers written in digits are spelled out (`42` → `forty two`, `1,000` → `one
//!   thousand`), because Whisper writes numbers as digits while references are often in words;
//!   `%` becomes `percent`.
//!
//! Spelling variants (colour/color) and numbers with a fractional part stay as they are.

/// Word error rate: (substitutions + deletions + insertions) / reference words, after
/// normalisation. An empty reference gives 0 for an empty hypothesis and 1 otherwise.
pub fn word_error_rate(reference: &str, hypothesis: &str) -> f64 {
    let r = normalize(reference);
    let h = normalize(hypothesis);
    if r.is_empty() {
        return if h.is_empty() { 0.0 } else { 1.0 };
    }
    edit_distance(&r, &h) as f64 / r.len() as f64
}

/// Word-level edit distance (Levenshtein), the numerator of the word error rate.
pub fn edit_distance(reference: &[String], hypothesis: &[String]) -> usize {
    let mut prev: Vec<usize> = (0..=hypothesis.len()).collect();
    let mut cur = vec![0; hypothesis.len() + 1];
    for (i, r) in reference.iter().enumerate() {
        cur[0] = i + 1;
        for (j, h) in hypothesis.iter().enumerate() {
            let substitution = prev[j] + usize::from(r != h);
            cur[j + 1] = substitution.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[hypothesis.len()]
}

/// The normalised words of `text`, as compared by [`word_error_rate`].
pub fn normalize(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.to_lowercase().chars().collect();
    let mut cleaned = String::with_capacity(chars.len());
    for (i, &c) in chars.iter().enumerate() {
        let digit_before = i > 0 && chars[i - 1].is_ascii_digit();
        let digit_after = chars.get(i + 1).is_some_and(char::is_ascii_digit);
        match c {
            c if c.is_alphanumeric() => cleaned.push(c),
            '\'' | '\u{2019}' => {}
            ',' if digit_before && digit_after => {}
            '.' if digit_before && digit_after => cleaned.push('.'),
            '%' => cleaned.push_str(" percent "),
            _ => cleaned.push(' '),
        }
    }
    let mut words = Vec::new();
    for word in cleaned.split_whitespace() {
        match word.parse::<u64>() {
            Ok(n) if word.chars().all(|c| c.is_ascii_digit()) => {
                words.extend(spell(n).split(' ').map(str::to_owned));
            }
            _ => words.push(word.to_owned()),
        }
    }
    words
}

/// English words for `n`, without "and" or hyphens ("one hundred five", "forty two").
fn spell(n: u64) -> String {
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
    const SCALES: [(u64, &str); 4] = [
        (1_000_000_000_000, "trillion"),
        (1_000_000_000, "billion"),
        (1_000_000, "million"),
        (1_000, "thousand"),
    ];
    fn below_thousand(n: u64, out: &mut Vec<String>) {
        if n >= 100 {
            out.push(ONES[(n / 100) as usize].into());
            out.push("hundred".into());
        }
        let rest = n % 100;
        if rest >= 20 {
            out.push(TENS[(rest / 10) as usize].into());
            if !rest.is_multiple_of(10) {
                out.push(ONES[(rest % 10) as usize].into());
            }
        } else if rest > 0 || n == 0 {
            out.push(ONES[rest as usize].into());
        }
    }
    let mut out = Vec::new();
    let mut n = n;
    for (scale, name) in SCALES {
        if n >= scale {
            let count = n / scale;
            if count >= 1000 {
                // Only past a thousand trillion: the count is itself spelled with scales.
                out.push(spell(count));
            } else {
                below_thousand(count, &mut out);
            }
            out.push(name.into());
            n %= scale;
        }
    }
    if n > 0 || out.is_empty() {
        below_thousand(n, &mut out);
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_texts_score_zero_whatever_the_writing() {
        assert_eq!(
            word_error_rate("The quick brown fox.", "the quick, brown fox"),
            0.0
        );
        assert_eq!(word_error_rate("Don't stop!", "dont stop"), 0.0);
        assert_eq!(
            word_error_rate("It costs forty-two dollars.", "It costs 42 dollars."),
            0.0
        );
        assert_eq!(
            word_error_rate("one thousand two hundred five people", "1,205 people"),
            0.0
        );
        assert_eq!(word_error_rate("ten percent", "10%"), 0.0);
    }

    #[test]
    fn counts_substitutions_deletions_and_insertions() {
        // One substitution in four words.
        assert_eq!(word_error_rate("a b c d", "a x c d"), 0.25);
        // One deletion.
        assert_eq!(word_error_rate("a b c d", "a b d"), 0.25);
        // Two insertions: the rate can exceed one word in four per error and even 100%.
        assert_eq!(word_error_rate("a b c d", "a b y c d z"), 0.5);
        assert_eq!(word_error_rate("a", "x y z"), 3.0);
        // Everything missing.
        assert_eq!(word_error_rate("a b", ""), 1.0);
    }

    #[test]
    fn empty_reference() {
        assert_eq!(word_error_rate("", ""), 0.0);
        assert_eq!(word_error_rate(" . ", "hello"), 1.0);
    }

    #[test]
    fn spells_numbers() {
        assert_eq!(spell(0), "zero");
        assert_eq!(spell(7), "seven");
        assert_eq!(spell(13), "thirteen");
        assert_eq!(spell(40), "forty");
        assert_eq!(spell(105), "one hundred five");
        assert_eq!(spell(2026), "two thousand twenty six");
        assert_eq!(spell(1_000_000), "one million");
        assert_eq!(spell(3_004_500), "three million four thousand five hundred");
    }

    #[test]
    fn keeps_decimals_and_splits_hyphens() {
        assert_eq!(normalize("3.5 well-known"), ["3.5", "well", "known"]);
        assert_eq!(normalize("End. Next"), ["end", "next"]);
    }
}
