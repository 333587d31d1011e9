//! espeak-ng phonemes through the real program.

use voice::{Phonemizer, phoneme_ids, text};

use crate::common;

#[test]
fn a_sentence_gets_piper_style_phonemes() {
    let p = Phonemizer::new("en-us").unwrap();
    let ipa = p
        .phonemize("Hello world, this is a test of the Sonora voice.")
        .unwrap();
    assert_eq!(ipa, "həlˈoʊ wˈɜːld, ðɪs ɪz ɐ tˈɛst ʌvðə sˈɑːnoːɹə vˈɔɪs.");
}

#[test]
fn the_ids_are_those_of_the_reference_case() {
    // The equivalence tests' "sentence" case was written down as this sentence's ids.
    let p = Phonemizer::new("en-us").unwrap();
    let ipa = p
        .phonemize("Hello world, this is a test of the Sonora voice.")
        .unwrap();
    let ids = phoneme_ids(&common::config(), &ipa);
    assert_eq!(
        ids,
        common::reference("sentence", "ids")
            .to_vec1::<i64>()
            .unwrap()
    );
}

#[test]
fn many_sentences_in_one_process_keep_their_order_and_punctuation() {
    let p = Phonemizer::new("en-us").unwrap();
    let sentences = text::split_sentences(&text::normalize(
        "Dr. Smith paid $5. Is it 3 o'clock? Yes; it is! Wait",
    ));
    assert_eq!(sentences.len(), 4, "{sentences:?}");
    let batch = p.phonemize_all(&sentences).unwrap();
    let one_by_one: Vec<String> = sentences.iter().map(|s| p.phonemize(s).unwrap()).collect();
    assert_eq!(batch, one_by_one);
    assert!(
        batch[0].ends_with('.') && batch[1].ends_with('?'),
        "{batch:?}"
    );
    assert!(
        batch[2].contains("; ") && batch[2].ends_with('!'),
        "{batch:?}"
    );
    assert!(!batch[3].ends_with(['.', '?', '!']), "{batch:?}");
    assert!(batch[0].starts_with("dˈɑːktɚ"), "{batch:?}");
}

#[test]
fn a_missing_program_is_a_clear_error() {
    let p = Phonemizer::with_program("/nonexistent/espeak-ng", "en-us").unwrap();
    let err = p.phonemize("hello").unwrap_err().to_string();
    assert!(err.contains("cannot start"), "{err}");
}
