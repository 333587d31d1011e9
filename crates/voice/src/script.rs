//! Which writing system a character belongs to, and which ones a voice's language reads.
//!
//! espeak-ng reads a letter of a script its language does not know by naming it ("Chinese
//! letter", "a circumflex"): one character of text becomes seconds of audio. The text front end
//! uses this module to skip such letters, or to refuse a text that is mostly made of them
//! ([`crate::text::prepare`]). Blocks are matched by code point range: the scripts listed here
//! are those espeak-ng has voices for; a letter outside them is [`Script::Other`].

/// A writing system, as far as this crate needs to tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Script {
    Latin,
    Greek,
    Cyrillic,
    Armenian,
    Hebrew,
    Arabic,
    Devanagari,
    Bengali,
    Gurmukhi,
    Gujarati,
    Oriya,
    Tamil,
    Telugu,
    Kannada,
    Malayalam,
    Sinhala,
    Thai,
    Lao,
    Tibetan,
    Myanmar,
    Georgian,
    Hangul,
    Ethiopic,
    Khmer,
    Hiragana,
    Katakana,
    Bopomofo,
    Han,
    /// A letter of any other script.
    Other,
}

/// Code point ranges of each script's blocks (letters, marks and the block's own punctuation).
const BLOCKS: &[(u32, u32, Script)] = &[
    (0x0041, 0x005A, Script::Latin),
    (0x0061, 0x007A, Script::Latin),
    (0x00AA, 0x00AA, Script::Latin),
    (0x00BA, 0x00BA, Script::Latin),
    (0x00C0, 0x02AF, Script::Latin),
    (0x0370, 0x03FF, Script::Greek),
    (0x0400, 0x052F, Script::Cyrillic),
    (0x0530, 0x058F, Script::Armenian),
    (0x0590, 0x05FF, Script::Hebrew),
    (0x0600, 0x06FF, Script::Arabic),
    (0x0750, 0x077F, Script::Arabic),
    (0x0870, 0x08FF, Script::Arabic),
    (0x0900, 0x097F, Script::Devanagari),
    (0x0980, 0x09FF, Script::Bengali),
    (0x0A00, 0x0A7F, Script::Gurmukhi),
    (0x0A80, 0x0AFF, Script::Gujarati),
    (0x0B00, 0x0B7F, Script::Oriya),
    (0x0B80, 0x0BFF, Script::Tamil),
    (0x0C00, 0x0C7F, Script::Telugu),
    (0x0C80, 0x0CFF, Script::Kannada),
    (0x0D00, 0x0D7F, Script::Malayalam),
    (0x0D80, 0x0DFF, Script::Sinhala),
    (0x0E00, 0x0E7F, Script::Thai),
    (0x0E80, 0x0EFF, Script::Lao),
    (0x0F00, 0x0FFF, Script::Tibetan),
    (0x1000, 0x109F, Script::Myanmar),
    (0x10A0, 0x10FF, Script::Georgian),
    (0x1100, 0x11FF, Script::Hangul),
    (0x1200, 0x139F, Script::Ethiopic),
    (0x1780, 0x17FF, Script::Khmer),
    (0x19E0, 0x19FF, Script::Khmer),
    (0x1C80, 0x1C8F, Script::Cyrillic),
    (0x1C90, 0x1CBF, Script::Georgian),
    (0x1D00, 0x1DBF, Script::Latin),
    (0x1E00, 0x1EFF, Script::Latin),
    (0x1F00, 0x1FFF, Script::Greek),
    (0x2C60, 0x2C7F, Script::Latin),
    (0x2D00, 0x2D2F, Script::Georgian),
    (0x2D80, 0x2DDF, Script::Ethiopic),
    (0x2DE0, 0x2DFF, Script::Cyrillic),
    (0x2E80, 0x2FDF, Script::Han),
    (0x3005, 0x3007, Script::Han),
    (0x3021, 0x3029, Script::Han),
    (0x3038, 0x303B, Script::Han),
    (0x3040, 0x309F, Script::Hiragana),
    (0x30A0, 0x30FF, Script::Katakana),
    (0x3100, 0x312F, Script::Bopomofo),
    (0x3130, 0x318F, Script::Hangul),
    (0x31A0, 0x31BF, Script::Bopomofo),
    (0x31F0, 0x31FF, Script::Katakana),
    (0x3400, 0x4DBF, Script::Han),
    (0x4E00, 0x9FFF, Script::Han),
    (0xA640, 0xA69F, Script::Cyrillic),
    (0xA720, 0xA7FF, Script::Latin),
    (0xA8E0, 0xA8FF, Script::Devanagari),
    (0xA960, 0xA97F, Script::Hangul),
    (0xAB30, 0xAB6F, Script::Latin),
    (0xAC00, 0xD7FF, Script::Hangul),
    (0xF900, 0xFAFF, Script::Han),
    (0xFB00, 0xFB06, Script::Latin),
    (0xFB13, 0xFB17, Script::Armenian),
    (0xFB1D, 0xFB4F, Script::Hebrew),
    (0xFB50, 0xFDFF, Script::Arabic),
    (0xFE70, 0xFEFE, Script::Arabic),
    (0xFF21, 0xFF3A, Script::Latin),
    (0xFF41, 0xFF5A, Script::Latin),
    (0xFF66, 0xFF9F, Script::Katakana),
    (0xFFA0, 0xFFDC, Script::Hangul),
    (0x20000, 0x3FFFF, Script::Han),
];

/// The script of `c`; `None` for characters that belong to none in particular (spaces, digits,
/// common punctuation and symbols, combining marks outside a script's block).
pub fn script_of(c: char) -> Option<Script> {
    let code = u32::from(c);
    if code < 0x80 {
        return c.is_ascii_alphabetic().then_some(Script::Latin);
    }
    let found = BLOCKS
        .binary_search_by(|&(lo, hi, _)| {
            if hi < code {
                std::cmp::Ordering::Less
            } else if lo > code {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .ok()
        .map(|i| BLOCKS[i].2);
    match found {
        Some(script) => Some(script),
        None if c.is_alphabetic() => Some(Script::Other),
        None => None,
    }
}

/// The scripts a language reads, from its code (`en_US`, `en-us`, `pt-br`, `cmn`); `None` when
/// the language is not known here, in which case no letter is treated as foreign. Latin letters
/// are read in every language (espeak-ng switches to English for them), so they are always
/// allowed.
pub fn scripts_of_language(code: &str) -> Option<&'static [Script]> {
    use Script::*;
    let lang = code
        .split(['_', '-'])
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    Some(match lang.as_str() {
        "af" | "an" | "az" | "bs" | "ca" | "cs" | "cy" | "da" | "de" | "en" | "eo" | "es"
        | "et" | "eu" | "fi" | "fo" | "fr" | "ga" | "gd" | "gl" | "hr" | "ht" | "hu" | "ia"
        | "id" | "is" | "it" | "jbo" | "la" | "lb" | "lt" | "lv" | "mi" | "ms" | "mt" | "nb"
        | "nl" | "nn" | "no" | "om" | "pl" | "pt" | "qu" | "ro" | "sk" | "sl" | "sq" | "sv"
        | "sw" | "tk" | "tn" | "tr" | "uz" | "vi" | "yo" | "zu" => &[Latin],
        "ru" | "uk" | "be" | "bg" | "mk" | "kk" | "ky" | "mn" | "tt" | "ba" | "cv" | "tg" => {
            &[Latin, Cyrillic]
        }
        "sr" => &[Latin, Cyrillic],
        "el" | "grc" => &[Latin, Greek],
        "hy" => &[Latin, Armenian],
        "he" | "yi" => &[Latin, Hebrew],
        "ar" | "fa" | "ur" | "ps" | "sd" | "ug" | "ku" => &[Latin, Arabic],
        "hi" | "mr" | "ne" | "sa" | "kok" | "mai" => &[Latin, Devanagari],
        "bn" | "as" | "bpy" => &[Latin, Bengali],
        "pa" => &[Latin, Gurmukhi],
        "gu" => &[Latin, Gujarati],
        "or" => &[Latin, Oriya],
        "ta" => &[Latin, Tamil],
        "te" => &[Latin, Telugu],
        "kn" => &[Latin, Kannada],
        "ml" => &[Latin, Malayalam],
        "si" => &[Latin, Sinhala],
        "th" => &[Latin, Thai],
        "lo" => &[Latin, Lao],
        "my" => &[Latin, Myanmar],
        "ka" => &[Latin, Georgian],
        "am" => &[Latin, Ethiopic],
        "km" => &[Latin, Khmer],
        "ko" => &[Latin, Hangul, Han],
        "ja" => &[Latin, Hiragana, Katakana, Han],
        "zh" | "cmn" | "yue" | "hak" => &[Latin, Han, Bopomofo],
        _ => return None,
    })
}

/// A short English name for a language code, for messages ("en_US" → "English").
pub fn language_name(code: &str) -> String {
    let lang = code
        .split(['_', '-'])
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let name = match lang.as_str() {
        "en" => "English",
        "fr" => "French",
        "de" => "German",
        "es" => "Spanish",
        "it" => "Italian",
        "pt" => "Portuguese",
        "nl" => "Dutch",
        "ru" => "Russian",
        "uk" => "Ukrainian",
        "pl" => "Polish",
        "el" => "Greek",
        "ar" => "Arabic",
        "he" => "Hebrew",
        "hi" => "Hindi",
        "zh" | "cmn" => "Chinese",
        "ja" => "Japanese",
        "ko" => "Korean",
        "th" => "Thai",
        "tr" => "Turkish",
        "vi" => "Vietnamese",
        _ => return code.to_owned(),
    };
    format!("{name} ({code})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_sorted_and_disjoint() {
        for pair in BLOCKS.windows(2) {
            assert!(pair[0].0 <= pair[0].1, "{:x?}", pair[0]);
            assert!(pair[0].1 < pair[1].0, "{:x?} then {:x?}", pair[0], pair[1]);
        }
    }

    #[test]
    fn characters_get_their_scripts() {
        assert_eq!(script_of('a'), Some(Script::Latin));
        assert_eq!(script_of('é'), Some(Script::Latin));
        assert_eq!(script_of('日'), Some(Script::Han));
        assert_eq!(script_of('ж'), Some(Script::Cyrillic));
        assert_eq!(script_of('ع'), Some(Script::Arabic));
        assert_eq!(script_of('क'), Some(Script::Devanagari));
        assert_eq!(script_of('ア'), Some(Script::Katakana));
        assert_eq!(script_of('한'), Some(Script::Hangul));
        assert_eq!(script_of('ᚠ'), Some(Script::Other), "runic");
        for common in [' ', '5', '.', '€', '\u{0301}', '😀', '★'] {
            assert_eq!(script_of(common), None, "{common:?}");
        }
    }

    #[test]
    fn languages_read_their_scripts_and_latin() {
        assert_eq!(scripts_of_language("en_US"), Some(&[Script::Latin][..]));
        assert!(
            scripts_of_language("ru-RU")
                .unwrap()
                .contains(&Script::Cyrillic)
        );
        assert!(scripts_of_language("ja").unwrap().contains(&Script::Han));
        assert_eq!(scripts_of_language("xx"), None);
        assert_eq!(language_name("en_US"), "English (en_US)");
    }
}
