//! Issue 3's intelligibility check: Sonora's default voice says fixed sentences, Whisper tiny.en
//! writes down what it hears, and the overall word error rate must be at most 10%.

use std::path::PathBuf;

use listener::{normalize, word_error_rate};

use crate::common::listener;

/// Fixed sentences: ordinary words, a number, a question, varied sounds.
const SENTENCES: [&str; 10] = [
    "The weather is lovely today, so we are going for a walk in the park.",
    "Please send the report to my office before the meeting starts.",
    "Can you tell me how to get to the train station?",
    "My brother bought a new bicycle last summer.",
    "The children were playing happily in the garden.",
    "We need three apples, two oranges and a loaf of bread.",
    "She opened the window and let the fresh air in.",
    "This restaurant serves the best pizza in town.",
    "The library closes at nine o'clock on weekdays.",
    "Thank you very much for your help yesterday.",
];

fn voice_path() -> PathBuf {
    let dir = std::env::var_os("TEST_VOICES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
                .join(".cache/sonora/voices")
        });
    let path = dir.join("en_US-joe-medium.onnx");
    assert!(
        path.is_file(),
        "the default voice {} is missing: run scripts/test's set-up or set TEST_VOICES_DIR",
        path.display()
    );
    path
}

/// Synthesises every sentence with `scales`, transcribes it, prints each transcript and returns
/// the overall word error rate (errors over all reference words).
fn overall_wer(label: &str, scales: impl Fn(&voice::Voice) -> voice::Scales) -> f64 {
    let voice = voice::Voice::load(&voice_path()).expect("load the voice");
    let rate = voice.sample_rate();
    let scales = scales(&voice);
    let mut errors = 0.0;
    let mut words = 0.0;
    let mut worst = 0f64;
    for sentence in SENTENCES {
        let samples: Vec<f32> = voice
            .synthesize(sentence, None, scales)
            .expect("synthesize")
            .map(|chunk| chunk.expect("chunk").samples)
            .collect::<Vec<_>>()
            .concat();
        let seconds = samples.len() as f64 / f64::from(rate);
        assert!(
            seconds > 1.0,
            "{sentence:?} gave only {seconds:.2}s of audio"
        );
        let t = listener().transcribe_timed(&samples, rate).unwrap();
        let wer = word_error_rate(sentence, &t.text);
        eprintln!(
            "{label}: WER {wer:.3} ({:.2}s to transcribe {seconds:.2}s): {sentence:?} -> {:?}",
            t.seconds, t.text
        );
        let n = normalize(sentence).len() as f64;
        errors += wer * n;
        words += n;
        worst = worst.max(wer);
    }
    let overall = errors / words;
    eprintln!("{label}: overall WER {overall:.3} over {words} words, worst sentence {worst:.3}");
    overall
}

/// Noise off: the same sentences give the same audio on every run, so the figure is stable.
#[test]
fn the_default_voice_is_intelligible_without_noise() {
    let overall = overall_wer("voice, no noise", |v| voice::Scales {
        noise_scale: 0.0,
        noise_w: 0.0,
        ..v.default_scales()
    });
    assert!(overall <= 0.10, "overall WER {overall:.3} is above 10%");
}

/// The voice's default scales, as the service uses them: random noise in durations and prior,
/// so each run hears slightly different audio.
#[test]
fn the_default_voice_is_intelligible_with_its_default_scales() {
    let overall = overall_wer("voice, default scales", voice::Voice::default_scales);
    assert!(overall <= 0.10, "overall WER {overall:.3} is above 10%");
}
