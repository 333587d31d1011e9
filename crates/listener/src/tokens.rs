//! Turning Whisper token ids back into text.
//!
//! Decoding needs only the vocabulary: `vocabulary.txt` holds one token per line (line number =
//! id) in GPT-2's byte-level form, where each byte is shown as a printable character. Mapping the
//! characters back to bytes and joining them gives UTF-8 text. This avoids the `tokenizers` crate,
//! whose encoder the listener never needs.

use std::collections::HashMap;

use crate::Error;

/// The vocabulary, and the special tokens decoding relies on.
#[derive(Debug, Clone)]
pub struct Vocabulary {
    tokens: Vec<String>,
    byte_of: HashMap<char, u8>,
    /// `<|endoftext|>`: decoding stops here.
    pub eot: u32,
    /// `<|startoftranscript|>`.
    pub sot: u32,
    /// `<|notimestamps|>`.
    pub no_timestamps: u32,
}

/// GPT-2's byte-to-character table: printable Latin-1 bytes stand for themselves, the others are
/// shifted to code points from U+0100 up, in byte order.
fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[usize::from(b)] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(next).expect("below U+0200");
            next += 1;
            c
        };
    }
    table
}

impl Vocabulary {
    /// Parses the text of `vocabulary.txt`.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let tokens: Vec<String> = text.lines().map(str::to_owned).collect();
        let id = |name: &str| {
            tokens
                .iter()
                .position(|t| t == name)
                .map(|i| i as u32)
                .ok_or_else(|| Error::Format(format!("the vocabulary has no {name}")))
        };
        let byte_of = byte_to_char()
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        Ok(Self {
            eot: id("<|endoftext|>")?,
            sot: id("<|startoftranscript|>")?,
            no_timestamps: id("<|notimestamps|>")?,
            tokens,
            byte_of,
        })
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the vocabulary is empty (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Whether `id` is a special token (`<|…|>`), which never appears in text.
    pub fn is_special(&self, id: u32) -> bool {
        id >= self.eot
    }

    /// The text of a sequence of ids; special tokens are skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        for &id in ids {
            if self.is_special(id) {
                continue;
            }
            let Some(token) = self.tokens.get(id as usize) else {
                continue;
            };
            // A character outside the table cannot come from the byte-level encoder; keep its
            // UTF-8 rather than losing it.
            for c in token.chars() {
                match self.byte_of.get(&c) {
                    Some(&b) => bytes.push(b),
                    None => bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_table_is_gpt2s() {
        let t = byte_to_char();
        assert_eq!(t[usize::from(b' ')], 'Ġ');
        assert_eq!(t[usize::from(b'\n')], 'Ċ');
        assert_eq!(t[usize::from(b'a')], 'a');
        assert_eq!(t[0], 'Ā');
        // All 256 characters are distinct, so the table can be inverted.
        let mut seen: Vec<char> = t.to_vec();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 256);
    }

    #[test]
    fn decodes_byte_level_tokens_and_skips_special_ones() {
        // "é" is the two bytes C3 A9, shown as "Ã" and "©".
        let v = Vocabulary::parse(
            "Hello\nĠworld\nĠcaf\nÃ©\n<|endoftext|>\n<|startoftranscript|>\n<|notimestamps|>\n",
        )
        .unwrap();
        assert_eq!((v.eot, v.sot, v.no_timestamps), (4, 5, 6));
        assert_eq!(v.decode(&[5, 6, 0, 1, 2, 3, 4]), "Hello world café");
    }

    #[test]
    fn a_vocabulary_without_special_tokens_is_refused() {
        assert!(Vocabulary::parse("a\nb\n").is_err());
    }
}
