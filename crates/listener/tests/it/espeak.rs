//! Whisper understands espeak-ng's robotic but clear speech: a check of the whole listener that
//! does not depend on Sonora's own voice.

use listener::word_error_rate;

use crate::common::{espeak, listener};

#[test]
fn transcribes_espeak_speech() {
    let sentences = [
        "The quick brown fox jumps over the lazy dog.",
        "Please call me back before five o'clock tomorrow.",
        "The museum opens at ten in the morning.",
    ];
    let mut errors = 0.0;
    let mut words = 0.0;
    for sentence in sentences {
        let (samples, rate) = espeak(sentence);
        assert_eq!(rate, 22_050);
        let t = listener().transcribe_timed(&samples, rate).unwrap();
        let wer = word_error_rate(sentence, &t.text);
        eprintln!(
            "espeak: {:.2}s for {:.2}s of audio, WER {:.3}: {sentence:?} -> {:?}",
            t.seconds,
            samples.len() as f64 / f64::from(rate),
            wer,
            t.text
        );
        let n = listener::normalize(sentence).len() as f64;
        errors += wer * n;
        words += n;
    }
    let overall = errors / words;
    eprintln!("espeak: overall WER {overall:.3}");
    assert!(overall <= 0.15, "overall WER {overall:.3}");
}

#[test]
fn silence_gives_no_words() {
    // Two seconds of silence: Whisper should say nothing, or at most a filler such as "you".
    let silence = vec![0f32; 32_000];
    let text = listener().transcribe(&silence, 16_000).unwrap();
    eprintln!("silence -> {text:?}");
    assert!(listener::normalize(&text).len() <= 1, "{text:?}");
}

#[test]
fn other_sample_rates_are_resampled_first() {
    let sentence = "Please call me back before five o'clock tomorrow.";
    let (samples, rate) = espeak(sentence);
    // 16 kHz takes the path without resampling; 44.1 kHz is upsampled from the original and
    // then brought down again by the listener.
    for target in [16_000, 44_100] {
        let converted = listener::resample(&samples, rate, target);
        let text = listener().transcribe(&converted, target).unwrap();
        let wer = word_error_rate(sentence, &text);
        eprintln!("{target} Hz: WER {wer:.3}: {text:?}");
        assert!(wer <= 0.2, "{target} Hz: {text:?}");
    }
}

#[test]
fn a_missing_model_folder_is_a_clear_error() {
    let err = listener::Listener::load(std::path::Path::new("/nonexistent/whisper")).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("/nonexistent/whisper/model.bin"),
        "{message}"
    );
}
