//! A documented subset of SSML 1.1, parsed into a [`Script`]: text to speak at a rate, phonemes
//! to speak as given, and silences. No IO; the parser (quick-xml, MIT) never resolves entities
//! other than XML's five and character references, refuses a DOCTYPE (so no entity can be
//! defined, internal or external), and bounds nesting to [`MAX_DEPTH`]; the size of the input is
//! the caller's to bound (tts-inference's 4,096 characters).
//!
//! Elements:
//!
//! - `speak` (the root; `version`, `xmlns`, `xml:lang` accepted and ignored), `p`, `s`: text and
//!   the elements below. A paragraph or sentence ends its text there, as a full stop would.
//! - `break`: `time` (`250ms`, `1.5s`; at most [`MAX_BREAK_SECONDS`]) or `strength`
//!   ([`break_seconds`]); without either, `medium`.
//! - `say-as interpret-as=`: `characters` (spelled letter by letter), `cardinal`, `ordinal`,
//!   `digits` (digit by digit), `date` (`YYYY-MM-DD`), `telephone` (digits in their groups).
//! - `sub alias=`: the alias is spoken instead of the content.
//! - `prosody rate=`: `x-slow` (0.5), `slow` (0.75), `medium`/`default` (1), `fast` (1.25),
//!   `x-fast` (1.75), or a percentage from 25% to 400% (`+20%` and `-20%` are 120% and 80%); it
//!   multiplies the request's speed, nested rates multiply, and the product is kept within the
//!   speed's range 0.25 to 4.
//! - `phoneme alphabet="ipa" ph=`: the IPA is given to the model as its phonemes, skipping
//!   espeak-ng; characters the voice's phoneme set lacks are skipped (as Piper skips them).
//!
//! Anything else (another element or attribute, a bad value, an unclosed or mismatched tag, an
//! entity, text outside `speak`) is an [`SsmlError`] that says where: line, column and element.

use quick_xml::{
    Reader, XmlVersion,
    events::{BytesStart, Event},
};

/// Deepest nesting of elements accepted.
pub const MAX_DEPTH: usize = 16;

/// The longest single `break`, in seconds. All of a text's breaks together are bounded by the
/// audio limit of a request, as its speech is.
pub const MAX_BREAK_SECONDS: f64 = 10.0;

/// Effective speed (request speed times prosody rates) is kept within this range.
pub const SPEED_RANGE: (f32, f32) = (0.25, 4.0);

/// What an SSML text asks to be said, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    pub segments: Vec<Segment>,
}

/// One run of a [`Script`].
#[derive(Debug, Clone, PartialEq)]
pub enum Segment {
    /// Plain text, to go through the text front end, spoken at `rate` times the request's speed.
    Text { text: String, rate: f32 },
    /// IPA phonemes for the model as they are; `word` is the element's content (for timings).
    Phonemes {
        ipa: String,
        word: String,
        rate: f32,
    },
    /// Silence.
    Break { seconds: f64 },
}

/// Why an SSML text is refused, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SSML at line {line}, column {column}{}: {rule}", element.as_ref().map(|e| format!(" (<{e}>)")).unwrap_or_default())]
pub struct SsmlError {
    /// 1-based line of the input.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// The element concerned, when there is one.
    pub element: Option<String>,
    /// What is wrong.
    pub rule: String,
}

/// Seconds of silence of a `break` `strength`.
pub fn break_seconds(strength: &str) -> Option<f64> {
    Some(match strength {
        "none" => 0.0,
        "x-weak" => 0.1,
        "weak" => 0.25,
        "medium" => 0.4,
        "strong" => 0.75,
        "x-strong" => 1.2,
        _ => return None,
    })
}

/// Whether `text` is SSML by its look: it starts (after whitespace) with `<speak`.
pub fn looks_like_ssml(text: &str) -> bool {
    let t = text.trim_start();
    t.starts_with("<speak>") || t.starts_with("<speak ") || t.starts_with("<?xml")
}

/// An element being read, with what it collects.
#[derive(Debug)]
enum Open {
    Speak,
    Paragraph,
    Sentence,
    Prosody,
    SayAs { kind: String, text: String },
    Sub { alias: String },
    Phoneme { ph: String, text: String },
    Break,
}

impl Open {
    fn name(&self) -> &'static str {
        match self {
            Open::Speak => "speak",
            Open::Paragraph => "p",
            Open::Sentence => "s",
            Open::Prosody => "prosody",
            Open::SayAs { .. } => "say-as",
            Open::Sub { .. } => "sub",
            Open::Phoneme { .. } => "phoneme",
            Open::Break => "break",
        }
    }
}

struct Parser<'a> {
    input: &'a str,
    segments: Vec<Segment>,
    /// The stack of open elements, with the rate in force inside each.
    open: Vec<(Open, f32)>,
    /// Whether the next text starts a new segment (after `</s>` or `</p>`).
    boundary: bool,
    seen_root: bool,
}

/// Parses `input` as SSML.
pub fn parse(input: &str) -> Result<Script, SsmlError> {
    let mut reader = Reader::from_str(input);
    reader.config_mut().check_end_names = true;
    let mut p = Parser {
        input,
        segments: Vec::new(),
        open: Vec::new(),
        boundary: false,
        seen_root: false,
    };
    loop {
        let at = reader.buffer_position() as usize;
        let event = match reader.read_event() {
            Ok(event) => event,
            Err(error) => {
                let at = reader.error_position() as usize;
                let element = p.open.last().map(|(o, _)| o.name().to_owned());
                return Err(p.error(at, element, xml_rule(&error)));
            }
        };
        match event {
            Event::Start(e) => p.start(at, &e, false)?,
            Event::Empty(e) => p.start(at, &e, true)?,
            Event::End(_) => p.end(at)?,
            Event::Text(t) => {
                let text = t
                    .xml10_content()
                    .map_err(|_| p.error(at, None, "the text is not valid UTF-8".into()))?;
                p.text(at, &text)?;
            }
            Event::CData(t) => {
                let text = t
                    .xml10_content()
                    .map_err(|_| p.error(at, None, "the text is not valid UTF-8".into()))?;
                p.text(at, &text)?;
            }
            Event::GeneralRef(r) => {
                let c = if r.is_char_ref() {
                    r.resolve_char_ref().ok().flatten()
                } else {
                    match r.decode().as_deref() {
                        Ok("amp") => Some('&'),
                        Ok("lt") => Some('<'),
                        Ok("gt") => Some('>'),
                        Ok("quot") => Some('"'),
                        Ok("apos") => Some('\''),
                        _ => None,
                    }
                };
                let Some(c) = c else {
                    let name = String::from_utf8_lossy(&r).into_owned();
                    return Err(p.error(
                        at,
                        None,
                        format!(
                            "the entity &{name}; is not allowed (only &amp; &lt; &gt; &quot; \
                             &apos; and character references)"
                        ),
                    ));
                };
                p.text(at, c.encode_utf8(&mut [0; 4]))?;
            }
            Event::Comment(_) => {}
            Event::Decl(_) if !p.seen_root => {}
            Event::Decl(_) | Event::PI(_) => {
                return Err(p.error(at, None, "processing instructions are not allowed".into()));
            }
            Event::DocType(_) => {
                return Err(p.error(
                    at,
                    None,
                    "a DOCTYPE is not allowed (entities cannot be defined)".into(),
                ));
            }
            Event::Eof => break,
        }
    }
    if let Some((open, _)) = p.open.last() {
        return Err(p.error(
            input.len(),
            Some(open.name().to_owned()),
            format!("<{}> is never closed", open.name()),
        ));
    }
    if !p.seen_root {
        return Err(p.error(0, None, "the root element must be <speak>".into()));
    }
    Ok(Script {
        segments: p.segments,
    })
}

/// A quick-xml error in words, without naming any type.
fn xml_rule(error: &quick_xml::Error) -> String {
    use quick_xml::errors::{Error as E, IllFormedError as I};
    match error {
        E::IllFormed(I::MismatchedEndTag { expected, found }) => {
            format!("</{found}> closes <{expected}>, which is still open")
        }
        E::IllFormed(I::UnmatchedEndTag(name)) => format!("</{name}> closes nothing"),
        E::IllFormed(I::MissingEndTag(name)) => format!("<{name}> is never closed"),
        E::Syntax(e) => format!("malformed XML: {e}"),
        E::IllFormed(e) => format!("malformed XML: {e}"),
        E::InvalidAttr(e) => format!("malformed attribute: {e}"),
        E::Escape(e) => format!("bad escape: {e}"),
        _ => "malformed XML".into(),
    }
}

impl Parser<'_> {
    fn error(&self, byte: usize, element: Option<String>, rule: String) -> SsmlError {
        let before = &self.input[..floor_boundary(self.input, byte)];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        SsmlError {
            line,
            column,
            element,
            rule,
        }
    }

    fn rate(&self) -> f32 {
        self.open.last().map_or(1.0, |(_, r)| *r)
    }

    fn start(&mut self, at: usize, e: &BytesStart<'_>, empty: bool) -> Result<(), SsmlError> {
        let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
        let err = |p: &Self, rule: String| p.error(at, Some(name.clone()), rule);
        if self.open.len() >= MAX_DEPTH {
            return Err(err(self, format!("elements nest deeper than {MAX_DEPTH}")));
        }
        let mut attrs: Vec<(String, String)> = Vec::new();
        for attr in e.attributes() {
            let attr = attr.map_err(|e| err(self, format!("malformed attribute: {e}")))?;
            let key = String::from_utf8_lossy(attr.key.as_ref()).into_owned();
            let value = attr
                .normalized_value(XmlVersion::Implicit1_0)
                .map_err(|e| err(self, format!("attribute {key}: {}", xml_rule(&e))))?
                .into_owned();
            attrs.push((key, value));
        }
        let allowed: &[&str] = match name.as_str() {
            "speak" => &[
                "version",
                "xmlns",
                "xml:lang",
                "xmlns:xsi",
                "xsi:schemaLocation",
            ],
            "p" | "s" => &[],
            "break" => &["time", "strength"],
            "say-as" => &["interpret-as", "format", "detail"],
            "sub" => &["alias"],
            "prosody" => &["rate"],
            "phoneme" => &["alphabet", "ph"],
            other => {
                return Err(err(
                    self,
                    format!(
                        "<{other}> is not supported (speak, p, s, break, say-as, sub, prosody, \
                         phoneme are)"
                    ),
                ));
            }
        };
        if let Some((key, _)) = attrs.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
            return Err(err(self, format!("attribute {key} is not supported here")));
        }
        let get = |key: &str| {
            attrs
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        if !self.seen_root {
            if name != "speak" {
                return Err(err(self, "the root element must be <speak>".into()));
            }
            self.seen_root = true;
        } else if name == "speak" {
            return Err(err(self, "<speak> must be the root, and only once".into()));
        } else if self.open.is_empty() {
            return Err(err(self, "elements must be inside <speak>".into()));
        }
        if let Some((parent, _)) = self.open.last()
            && matches!(
                parent,
                Open::SayAs { .. } | Open::Sub { .. } | Open::Phoneme { .. } | Open::Break
            )
        {
            return Err(err(
                self,
                format!("<{}> may hold only text, not <{name}>", parent.name()),
            ));
        }
        let mut rate = self.rate();
        let open = match name.as_str() {
            "speak" => Open::Speak,
            "p" => Open::Paragraph,
            "s" => Open::Sentence,
            "break" => {
                let seconds = match (get("time"), get("strength")) {
                    (Some(time), _) => parse_time(time).ok_or_else(|| {
                        err(
                            self,
                            format!(
                                "time {time:?} must be milliseconds or seconds such as 500ms \
                                 or 1.5s, at most {MAX_BREAK_SECONDS}s"
                            ),
                        )
                    })?,
                    (None, Some(strength)) => break_seconds(strength).ok_or_else(|| {
                        err(
                            self,
                            format!(
                                "strength {strength:?} must be none, x-weak, weak, medium, \
                                 strong or x-strong"
                            ),
                        )
                    })?,
                    (None, None) => break_seconds("medium").expect("medium is a strength"),
                };
                self.segments.push(Segment::Break { seconds });
                Open::Break
            }
            "say-as" => {
                let kind = get("interpret-as").unwrap_or_default();
                if !matches!(
                    kind,
                    "characters" | "cardinal" | "ordinal" | "digits" | "date" | "telephone"
                ) {
                    return Err(err(
                        self,
                        format!(
                            "interpret-as {kind:?} must be characters, cardinal, ordinal, \
                             digits, date or telephone"
                        ),
                    ));
                }
                Open::SayAs {
                    kind: kind.to_owned(),
                    text: String::new(),
                }
            }
            "sub" => {
                let alias = get("alias")
                    .filter(|a| !a.trim().is_empty())
                    .ok_or_else(|| err(self, "alias is required".into()))?;
                Open::Sub {
                    alias: alias.to_owned(),
                }
            }
            "prosody" => {
                let value = get("rate").unwrap_or("medium");
                let r = parse_rate(value).ok_or_else(|| {
                    err(
                        self,
                        format!(
                            "rate {value:?} must be x-slow, slow, medium, fast, x-fast or a \
                             percentage from 25% to 400%"
                        ),
                    )
                })?;
                rate = (rate * r).clamp(SPEED_RANGE.0, SPEED_RANGE.1);
                Open::Prosody
            }
            "phoneme" => {
                let alphabet = get("alphabet").unwrap_or("ipa");
                if alphabet != "ipa" {
                    return Err(err(
                        self,
                        format!("alphabet {alphabet:?} is not supported (only ipa)"),
                    ));
                }
                let ph = get("ph")
                    .filter(|p| !p.trim().is_empty())
                    .ok_or_else(|| err(self, "ph is required".into()))?;
                Open::Phoneme {
                    ph: ph.to_owned(),
                    text: String::new(),
                }
            }
            _ => unreachable!("names were checked above"),
        };
        if empty {
            self.close(at, open, rate)
        } else {
            self.open.push((open, rate));
            Ok(())
        }
    }

    fn end(&mut self, at: usize) -> Result<(), SsmlError> {
        let (open, rate) = self.open.pop().expect("quick-xml checks end tags");
        self.close(at, open, rate)
    }

    fn close(&mut self, at: usize, open: Open, rate: f32) -> Result<(), SsmlError> {
        match open {
            Open::Speak | Open::Paragraph | Open::Sentence => self.boundary = true,
            Open::Prosody | Open::Break => {}
            Open::SayAs { kind, text } => {
                let spoken = say_as(&kind, text.trim()).ok_or_else(|| {
                    self.error(
                        at,
                        Some("say-as".into()),
                        format!("{:?} cannot be read as {kind}", text.trim()),
                    )
                })?;
                self.push_text(&spoken, rate);
            }
            Open::Sub { alias } => self.push_text(&alias, rate),
            Open::Phoneme { ph, text } => {
                let word = text.split_whitespace().collect::<Vec<_>>().join(" ");
                self.boundary = true;
                self.segments.push(Segment::Phonemes {
                    ipa: ph.trim().to_owned(),
                    word,
                    rate,
                });
            }
        }
        Ok(())
    }

    fn text(&mut self, at: usize, text: &str) -> Result<(), SsmlError> {
        let rate = self.rate();
        match self.open.last_mut() {
            None if text.trim().is_empty() => Ok(()),
            None => Err(self.error(at, None, "text must be inside <speak>".into())),
            Some((Open::SayAs { text: t, .. } | Open::Phoneme { text: t, .. }, _)) => {
                t.push_str(text);
                Ok(())
            }
            Some((Open::Sub { .. }, _)) => Ok(()),
            Some((Open::Break, _)) if text.trim().is_empty() => Ok(()),
            Some((Open::Break, _)) => {
                Err(self.error(at, Some("break".into()), "<break> must be empty".into()))
            }
            Some(_) => {
                self.push_text(text, rate);
                Ok(())
            }
        }
    }

    /// Adds text to the last text segment when it has the same rate and no boundary came
    /// between them, else starts one.
    fn push_text(&mut self, text: &str, rate: f32) {
        if !self.boundary
            && let Some(Segment::Text {
                text: last,
                rate: r,
            }) = self.segments.last_mut()
            && *r == rate
        {
            last.push_str(text);
            return;
        }
        if text.trim().is_empty() {
            return;
        }
        self.boundary = false;
        self.segments.push(Segment::Text {
            text: text.to_owned(),
            rate,
        });
    }
}

/// The largest char boundary at or before `byte`.
fn floor_boundary(s: &str, byte: usize) -> usize {
    let mut b = byte.min(s.len());
    while !s.is_char_boundary(b) {
        b -= 1;
    }
    b
}

/// `500ms`, `1.5s`, `2s` as seconds, within 0 to [`MAX_BREAK_SECONDS`].
fn parse_time(time: &str) -> Option<f64> {
    let time = time.trim();
    let (number, scale) = if let Some(ms) = time.strip_suffix("ms") {
        (ms, 0.001)
    } else {
        (time.strip_suffix('s')?, 1.0)
    };
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    let seconds = number.parse::<f64>().ok()? * scale;
    (seconds.is_finite() && (0.0..=MAX_BREAK_SECONDS).contains(&seconds)).then_some(seconds)
}

/// A `prosody` `rate` as a factor of the speed.
fn parse_rate(rate: &str) -> Option<f32> {
    let rate = rate.trim();
    let named = match rate {
        "x-slow" => Some(0.5),
        "slow" => Some(0.75),
        "medium" | "default" => Some(1.0),
        "fast" => Some(1.25),
        "x-fast" => Some(1.75),
        _ => None,
    };
    if named.is_some() {
        return named;
    }
    let number = rate.strip_suffix('%')?;
    let (base, number) = match number.as_bytes().first()? {
        b'+' => (100.0, &number[1..]),
        b'-' => (100.0, number),
        _ => (0.0, number),
    };
    if number.is_empty() || number.contains(['e', 'E', 'n', 'N', 'i', 'I']) {
        return None;
    }
    let percent = base + number.parse::<f32>().ok()?;
    (percent.is_finite() && (25.0..=400.0).contains(&percent)).then_some(percent / 100.0)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

fn ordinal_suffix(n: u64) -> &'static str {
    match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    }
}

/// The text a `say-as` element is read as, for the front end (which turns numbers into words);
/// `None` when the content cannot be read that way.
fn say_as(kind: &str, text: &str) -> Option<String> {
    let digits_of = |s: &str| -> Option<String> {
        let digits: Vec<String> = s
            .chars()
            .filter(|c| !c.is_whitespace())
            .map(|c| c.is_ascii_digit().then(|| c.to_string()))
            .collect::<Option<_>>()?;
        (!digits.is_empty()).then(|| digits.join(" "))
    };
    match kind {
        "characters" => {
            let chars: Vec<String> = text
                .chars()
                .filter(|c| c.is_alphanumeric())
                .map(|c| c.to_uppercase().to_string())
                .collect();
            (!chars.is_empty()).then(|| chars.join(" "))
        }
        "cardinal" => {
            let n = text.replace(',', "");
            let body = n.strip_prefix('-').unwrap_or(&n);
            (!body.is_empty() && body.chars().all(|c| c.is_ascii_digit()) && body.len() <= 15)
                .then_some(n)
        }
        "ordinal" => {
            let n = text.replace(',', "");
            let n = ["st", "nd", "rd", "th"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(&n)
                .to_owned();
            let value: u64 = (n.len() <= 15).then(|| n.parse().ok()).flatten()?;
            Some(format!("{value}{}", ordinal_suffix(value)))
        }
        "digits" => digits_of(text),
        "date" => {
            let parts: Vec<&str> = text.split('-').collect();
            let [year, month, day] = parts.as_slice() else {
                return None;
            };
            let ok = |s: &str, n: usize| s.len() == n && s.chars().all(|c| c.is_ascii_digit());
            if !(ok(year, 4) && ok(month, 2) && ok(day, 2)) {
                return None;
            }
            let (month, day): (usize, u64) = (month.parse().ok()?, day.parse().ok()?);
            let name = MONTHS.get(month.checked_sub(1)?)?;
            (1..=31)
                .contains(&day)
                .then(|| format!("{name} {day}{}, {year}", ordinal_suffix(day)))
        }
        "telephone" => {
            let mut groups = Vec::new();
            let mut plus = false;
            for (i, group) in text
                .split(['-', ' ', '(', ')', '.'])
                .filter(|g| !g.is_empty())
                .enumerate()
            {
                let group = match group.strip_prefix('+') {
                    Some(g) if i == 0 => {
                        plus = true;
                        g
                    }
                    _ => group,
                };
                groups.push(digits_of(group)?);
            }
            if groups.is_empty() {
                return None;
            }
            let spoken = groups.join(", ");
            Some(if plus {
                format!("plus {spoken}")
            } else {
                spoken
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(text: &str, rate: f32) -> Segment {
        Segment::Text {
            text: text.into(),
            rate,
        }
    }

    fn segments(ssml: &str) -> Vec<Segment> {
        parse(ssml).unwrap_or_else(|e| panic!("{e}")).segments
    }

    fn error(ssml: &str) -> SsmlError {
        parse(ssml).expect_err(ssml)
    }

    #[test]
    fn speak_p_and_s_make_text_with_boundaries() {
        assert_eq!(
            segments("<speak>Hello world.</speak>"),
            [text("Hello world.", 1.0)]
        );
        assert_eq!(
            segments(
                "<?xml version=\"1.0\"?><speak version=\"1.1\" xml:lang=\"en-US\">\
                 <p><s>One</s><s>two</s></p><p>three</p></speak>"
            ),
            [text("One", 1.0), text("two", 1.0), text("three", 1.0)]
        );
        // Comments and the five entities.
        assert_eq!(
            segments("<speak>A &amp; B <!-- not read --> &lt;3 &#65;</speak>"),
            [text("A & B  <3 A", 1.0)]
        );
    }

    #[test]
    fn breaks_by_time_and_strength() {
        assert_eq!(
            segments("<speak>a<break time=\"1s\"/>b<break time=\"250ms\"/>c</speak>"),
            [
                text("a", 1.0),
                Segment::Break { seconds: 1.0 },
                text("b", 1.0),
                Segment::Break { seconds: 0.25 },
                text("c", 1.0),
            ]
        );
        for (strength, seconds) in [
            ("none", 0.0),
            ("x-weak", 0.1),
            ("weak", 0.25),
            ("medium", 0.4),
            ("strong", 0.75),
            ("x-strong", 1.2),
        ] {
            assert_eq!(
                segments(&format!(
                    "<speak><break strength=\"{strength}\"></break></speak>"
                )),
                [Segment::Break { seconds }]
            );
        }
        assert_eq!(
            segments("<speak><break/></speak>"),
            [Segment::Break { seconds: 0.4 }]
        );
        assert_eq!(parse_time("1.5s"), Some(1.5));
        assert_eq!(parse_time("10s"), Some(10.0));
        for bad in ["11s", "-1s", "1", "s", "1e3ms", "NaNs", "1 m"] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn say_as_every_kind() {
        let said = |kind: &str, content: &str| {
            segments(&format!(
                "<speak><say-as interpret-as=\"{kind}\">{content}</say-as></speak>"
            ))
        };
        assert_eq!(said("characters", "WHO"), [text("W H O", 1.0)]);
        assert_eq!(said("cardinal", "1,234"), [text("1234", 1.0)]);
        assert_eq!(said("ordinal", "3"), [text("3rd", 1.0)]);
        assert_eq!(said("ordinal", "11th"), [text("11th", 1.0)]);
        assert_eq!(said("digits", "123"), [text("1 2 3", 1.0)]);
        assert_eq!(said("date", "2024-03-05"), [text("March 5th, 2024", 1.0)]);
        assert_eq!(
            said("telephone", "+1 (555) 123-4567"),
            [text("plus 1, 5 5 5, 1 2 3, 4 5 6 7", 1.0)]
        );
        // Say-as text joins the text around it.
        assert_eq!(
            segments("<speak>Call <say-as interpret-as=\"digits\">12</say-as> now</speak>"),
            [text("Call 1 2 now", 1.0)]
        );
    }

    #[test]
    fn sub_prosody_and_phoneme() {
        assert_eq!(
            segments("<speak>Hello <sub alias=\"World Health Organization\">WHO</sub></speak>"),
            [text("Hello World Health Organization", 1.0)]
        );
        assert_eq!(
            segments(
                "<speak>a<prosody rate=\"slow\">b<prosody rate=\"200%\">c</prosody></prosody>\
                 <prosody rate=\"+20%\">d</prosody><prosody rate=\"x-fast\">e</prosody></speak>"
            ),
            [
                text("a", 1.0),
                text("b", 0.75),
                text("c", 1.5),
                text("d", 1.2),
                text("e", 1.75),
            ]
        );
        // Nested rates stay within the speed's range.
        assert_eq!(
            segments(
                "<speak><prosody rate=\"400%\"><prosody rate=\"400%\">f</prosody></prosody></speak>"
            ),
            [text("f", 4.0)]
        );
        assert_eq!(
            segments(
                "<speak>say <phoneme alphabet=\"ipa\" ph=\"təmˈɑːtoʊ\">tomato</phoneme> ok</speak>"
            ),
            [
                text("say ", 1.0),
                Segment::Phonemes {
                    ipa: "təmˈɑːtoʊ".into(),
                    word: "tomato".into(),
                    rate: 1.0
                },
                text(" ok", 1.0),
            ]
        );
        assert_eq!(parse_rate("-20%"), Some(0.8));
        assert_eq!(parse_rate("25%"), Some(0.25));
        for bad in ["500%", "10%", "fastest", "%", "+%", "NaN%", "inf%", "1e2%"] {
            assert_eq!(parse_rate(bad), None, "{bad}");
        }
    }

    #[test]
    fn detection() {
        assert!(looks_like_ssml("  <speak>Hi</speak>"));
        assert!(looks_like_ssml("<speak version=\"1.1\">Hi</speak>"));
        assert!(!looks_like_ssml("Hello <speak>"));
        assert!(!looks_like_ssml("<speaker> said hi"));
    }

    /// Random sequences of SSML fragments never panic the parser, and what it accepts has no
    /// markup left in its text.
    #[test]
    fn random_fragments_never_panic() {
        const FRAGMENTS: &[&str] = &[
            "<speak>",
            "</speak>",
            "<p>",
            "</p>",
            "<s>",
            "</s>",
            "<break/>",
            "<break time=\"1s\"/>",
            "<prosody rate=\"slow\">",
            "</prosody>",
            "<say-as interpret-as=\"digits\">",
            "</say-as>",
            "<sub alias=\"x\">",
            "</sub>",
            "<phoneme ph=\"a\">",
            "</phoneme>",
            "hello",
            " ",
            "12",
            "&amp;",
            "&#x41;",
            "&bogus;",
            "<",
            ">",
            "&",
            "\"",
            "<!--c-->",
            "<![CDATA[x<y]]>",
            "<?pi x?>",
            "\u{e9}",
            "\n",
            "<unknown>",
            "</",
            "/>",
            "=",
        ];
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut accepted = 0;
        for _ in 0..5000 {
            let n = (next() % 12) as usize;
            let mut input = String::new();
            if next() % 2 == 0 {
                input.push_str("<speak>");
            }
            for _ in 0..n {
                input.push_str(FRAGMENTS[(next() % FRAGMENTS.len() as u64) as usize]);
            }
            if next() % 2 == 0 {
                input.push_str("</speak>");
            }
            if let Ok(script) = parse(&input) {
                accepted += 1;
                for segment in script.segments {
                    if let Segment::Text { text, .. } = segment {
                        assert!(!text.contains("speak"), "{input:?} -> {text:?}");
                    }
                }
            }
        }
        assert!(accepted > 50, "{accepted}");
    }

    #[test]
    fn every_error_says_where_and_what() {
        /// The SSML, its error's line and column, element, and a part of its rule.
        type Case<'a> = (&'a str, (usize, usize), Option<&'a str>, &'a str);
        let cases: &[Case] = &[
            ("<speak>Hello", (1, 13), Some("speak"), "never closed"),
            ("<speak><p>Hi</speak>", (1, 13), Some("p"), "closes <p>"),
            ("<speak>Hi</speak></p>", (1, 18), None, "closes nothing"),
            (
                "<speak><foo/></speak>",
                (1, 8),
                Some("foo"),
                "<foo> is not supported",
            ),
            (
                "<speak>\n  <audio src=\"x\"/></speak>",
                (2, 3),
                Some("audio"),
                "not supported",
            ),
            (
                "<speak><break time=\"1h\"/></speak>",
                (1, 8),
                Some("break"),
                "time \"1h\"",
            ),
            (
                "<speak><break time=\"60s\"/></speak>",
                (1, 8),
                Some("break"),
                "at most 10s",
            ),
            (
                "<speak><break strength=\"loud\"/></speak>",
                (1, 8),
                Some("break"),
                "strength",
            ),
            (
                "<speak><break>x</break></speak>",
                (1, 15),
                Some("break"),
                "must be empty",
            ),
            (
                "<speak><break foo=\"1\"/></speak>",
                (1, 8),
                Some("break"),
                "attribute foo",
            ),
            (
                "<speak><say-as interpret-as=\"spell\">a</say-as></speak>",
                (1, 8),
                Some("say-as"),
                "interpret-as",
            ),
            (
                "<speak><say-as interpret-as=\"date\">tomorrow</say-as></speak>",
                (1, 44),
                Some("say-as"),
                "cannot be read as date",
            ),
            (
                "<speak><say-as interpret-as=\"cardinal\">12a</say-as></speak>",
                (1, 43),
                Some("say-as"),
                "cannot be read as cardinal",
            ),
            (
                "<speak><sub>WHO</sub></speak>",
                (1, 8),
                Some("sub"),
                "alias is required",
            ),
            (
                "<speak><prosody rate=\"1000%\">a</prosody></speak>",
                (1, 8),
                Some("prosody"),
                "rate",
            ),
            (
                "<speak><prosody pitch=\"high\">a</prosody></speak>",
                (1, 8),
                Some("prosody"),
                "pitch",
            ),
            (
                "<speak><phoneme alphabet=\"x-sampa\" ph=\"a\">a</phoneme></speak>",
                (1, 8),
                Some("phoneme"),
                "only ipa",
            ),
            (
                "<speak><phoneme>a</phoneme></speak>",
                (1, 8),
                Some("phoneme"),
                "ph is required",
            ),
            (
                "<speak><sub alias=\"x\"><break/></sub></speak>",
                (1, 23),
                Some("break"),
                "may hold only text",
            ),
            ("<speak>&nbsp;</speak>", (1, 8), None, "entity &nbsp;"),
            (
                "<!DOCTYPE speak [<!ENTITY x \"y\">]><speak>&x;</speak>",
                (1, 1),
                None,
                "DOCTYPE",
            ),
            (
                "<p>Hi</p>",
                (1, 1),
                Some("p"),
                "root element must be <speak>",
            ),
            ("Hi <speak/>", (1, 1), None, "inside <speak>"),
            ("<speak/><speak/>", (1, 9), Some("speak"), "only once"),
            ("<speak/>tail", (1, 9), None, "inside <speak>"),
            ("", (1, 1), None, "root element"),
            (
                "<speak attr=\"x\">a</speak>",
                (1, 1),
                Some("speak"),
                "attribute attr",
            ),
            (
                "<speak><s attr='1'>a</s></speak>",
                (1, 8),
                Some("s"),
                "attribute attr",
            ),
        ];
        for &(ssml, (line, column), element, rule) in cases {
            let e = error(ssml);
            assert_eq!((e.line, e.column), (line, column), "{ssml}: {e}");
            assert_eq!(e.element.as_deref(), element, "{ssml}: {e}");
            assert!(e.rule.contains(rule), "{ssml}: {e}");
            let message = e.to_string();
            assert!(message.starts_with("SSML at line"), "{message}");
        }
        // Too deep.
        let deep = format!("<speak>{}a{}</speak>", "<s>".repeat(20), "</s>".repeat(20));
        let e = error(&deep);
        assert!(e.rule.contains("deeper than 16"), "{e}");
    }
}
