//! Grouping text that arrives in fragments into speakable phrases. No IO.
//!
//! A phrase ends at the first sentence end (`.`, `!`, `?`, `;`, `…` followed by a space or a
//! line break; `。`, `！`, `？` at once), at a line break, or at a clause end (`,`, `:`, a dash
//! followed by a space) once the phrase has [`MIN_CLAUSE_CHARS`] characters. When none comes, a
//! phrase is cut at the last space before the length schedule's limit (ElevenLabs' default
//! `[120, 160, 250, 290]`: the first phrase after 120 characters, the second after 160, and so
//! on, the last value for every phrase after). A full stop after a common abbreviation (`Dr.`) or
//! a single letter (`J.`) ends nothing, and neither does one inside a number (`3.5`), since it is
//! not followed by a space. What is still buffered is spoken on `flush` and `close`.

/// The length schedule when the client gives none.
pub const DEFAULT_SCHEDULE: [usize; 4] = [120, 160, 250, 290];
/// The bounds of each schedule entry, as ElevenLabs has them.
pub const SCHEDULE_MIN: usize = 50;
pub const SCHEDULE_MAX: usize = 500;
/// A comma or colon ends a phrase only once it is this long, so that speech is not chopped into
/// short bursts with their own intonation.
pub const MIN_CLAUSE_CHARS: usize = 40;

const ABBREVIATIONS: &[&str] = &[
    "mr", "mrs", "ms", "dr", "st", "prof", "sr", "jr", "vs", "etc", "e.g", "i.e", "mt", "no",
    "inc", "ltd", "co", "approx", "dept", "fig",
];

/// Text received and not yet spoken.
#[derive(Debug, Clone)]
pub struct Assembler {
    buffer: String,
    emitted: usize,
    schedule: Vec<usize>,
}

impl Default for Assembler {
    fn default() -> Self {
        Self::new(DEFAULT_SCHEDULE.to_vec())
    }
}

impl Assembler {
    /// `schedule` must hold 1 to 8 entries of [`SCHEDULE_MIN`] to [`SCHEDULE_MAX`] characters
    /// (checked where the client's message is read).
    pub fn new(schedule: Vec<usize>) -> Self {
        debug_assert!(!schedule.is_empty());
        Self {
            buffer: String::new(),
            emitted: 0,
            schedule,
        }
    }

    /// Characters buffered and not yet part of a phrase.
    pub fn buffered_chars(&self) -> usize {
        self.buffer.chars().count()
    }

    /// Adds a fragment and returns the phrases it completes, in order.
    pub fn push(&mut self, fragment: &str) -> Vec<String> {
        self.buffer.push_str(fragment);
        let mut phrases = Vec::new();
        loop {
            let end = boundary(&self.buffer).or_else(|| self.cut());
            let Some(end) = end else { break };
            let phrase: String = self.buffer.drain(..end).collect();
            self.emit(phrase, &mut phrases);
        }
        phrases
    }

    /// Everything still buffered, as one phrase (none when nothing speakable is left).
    pub fn flush(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buffer);
        let mut phrases = Vec::new();
        self.emit(rest, &mut phrases);
        phrases.pop()
    }

    fn emit(&mut self, phrase: String, phrases: &mut Vec<String>) {
        let phrase = phrase.trim();
        if phrase.chars().any(char::is_alphanumeric) {
            phrases.push(phrase.to_owned());
            self.emitted += 1;
        }
    }

    /// Where the schedule cuts the buffer when no boundary came: at the last space before the
    /// limit, or at the limit itself in a text without spaces.
    fn cut(&self) -> Option<usize> {
        let limit = self.schedule[self.emitted.min(self.schedule.len() - 1)];
        let (at, _) = self.buffer.char_indices().nth(limit)?;
        let space = self.buffer[..at]
            .char_indices()
            .rev()
            .find(|(_, c)| c.is_whitespace())
            .map(|(i, _)| i)
            .filter(|&i| i > 0);
        Some(space.unwrap_or(at))
    }
}

/// The byte index just past the first phrase end in `text`, if a whole one is there.
fn boundary(text: &str) -> Option<usize> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    for (n, &(i, c)) in chars.iter().enumerate() {
        let next = chars.get(n + 1).map(|&(_, c)| c);
        let after = i + c.len_utf8();
        match c {
            '。' | '！' | '？' | '；' => return Some(after),
            '\n' if text[..i].chars().any(char::is_alphanumeric) => return Some(after),
            '.' | '!' | '?' | ';' | '…' => {
                // Closing quotes and brackets stay with their sentence.
                let mut m = n + 1;
                while chars
                    .get(m)
                    .is_some_and(|&(_, q)| matches!(q, '"' | '\'' | '”' | '’' | ')' | ']' | '»'))
                {
                    m += 1;
                }
                let Some(&(j, space)) = chars.get(m) else {
                    // The next fragment decides (a decimal point, or a sentence end).
                    return None;
                };
                if !space.is_whitespace() || (c == '.' && abbreviation(&text[..i])) {
                    continue;
                }
                return Some(j);
            }
            ',' | ':' | '—' | '–'
                if next.is_some_and(char::is_whitespace)
                    && text[..i].trim().chars().count() >= MIN_CLAUSE_CHARS =>
            {
                return Some(after);
            }
            _ => {}
        }
    }
    None
}

/// Whether the word just before a full stop is an abbreviation or an initial.
fn abbreviation(before: &str) -> bool {
    let word = before
        .rsplit(|c: char| c.is_whitespace() || c == '(' || c == '"')
        .next()
        .unwrap_or("");
    let lower = word.to_lowercase();
    (word.chars().count() == 1 && word.chars().all(char::is_alphabetic))
        || ABBREVIATIONS.contains(&lower.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(text: &str, step: usize) -> Vec<String> {
        let mut a = Assembler::default();
        let chars: Vec<char> = text.chars().collect();
        let mut out = Vec::new();
        for piece in chars.chunks(step) {
            out.extend(a.push(&piece.iter().collect::<String>()));
        }
        out.extend(a.flush());
        out
    }

    #[test]
    fn sentences_end_phrases_however_the_text_is_cut() {
        let text = "Hello there! The price is 3.5 dollars, Dr. Smith said. Is that right? Yes";
        let whole = all(text, 1000);
        assert_eq!(
            whole,
            [
                "Hello there!",
                "The price is 3.5 dollars, Dr. Smith said.",
                "Is that right?",
                "Yes"
            ]
        );
        for step in [1, 2, 3, 5, 7] {
            assert_eq!(all(text, step), whole, "fragments of {step}");
        }
    }

    #[test]
    fn a_sentence_end_waits_for_the_next_character() {
        let mut a = Assembler::default();
        assert!(a.push("It costs 3.").is_empty());
        assert!(a.push("5 euros.").is_empty());
        assert_eq!(a.push(" Next"), ["It costs 3.5 euros."]);
        assert_eq!(a.flush().as_deref(), Some("Next"));
        assert_eq!(a.flush(), None);
    }

    #[test]
    fn long_clauses_end_at_commas_short_ones_do_not() {
        let mut a = Assembler::default();
        assert!(a.push("Well, you see, ").is_empty());
        let long = "when the old lighthouse keeper finally retired, the village";
        assert_eq!(
            a.push(long),
            ["Well, you see, when the old lighthouse keeper finally retired,"]
        );
        assert_eq!(a.flush().as_deref(), Some("the village"));
    }

    #[test]
    fn without_punctuation_the_schedule_cuts_at_spaces() {
        let words = "word ".repeat(200);
        let phrases = all(&words, 3);
        let lengths: Vec<usize> = phrases.iter().map(|p| p.chars().count()).collect();
        assert!(lengths[0] <= 120 && lengths[0] > 100, "{lengths:?}");
        assert!(lengths[1] <= 160 && lengths[1] > 140, "{lengths:?}");
        assert!(lengths[2] <= 250 && lengths[2] > 230, "{lengths:?}");
        assert!(lengths[3] <= 290 && lengths[3] > 270, "{lengths:?}");
        assert!(phrases.iter().all(|p| p.split(' ').all(|w| w == "word")));
        // A text with no space at all is cut at the limit.
        let run = "x".repeat(300);
        let phrases = all(&run, 50);
        assert_eq!(phrases[0].chars().count(), 120);
        assert_eq!(phrases.concat(), run);
    }

    #[test]
    fn punctuation_alone_is_no_phrase_and_odd_unicode_is_kept() {
        assert!(all("... !!! ?? ", 2).is_empty());
        assert_eq!(all("今日は。明日も", 1), ["今日は。", "明日も"]);
        assert_eq!(all("“Go!” she said.", 1), ["“Go!”", "she said."]);
        assert_eq!(all("line one\nline two", 4), ["line one", "line two"]);
    }
}
