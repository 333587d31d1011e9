//! Text to audio through the whole pipeline.

use std::sync::{Arc, OnceLock};

use voice::{FIRST_WINDOW_FRAMES, Part, Scales, Voice};

use crate::common;

fn voice() -> Arc<Voice> {
    static VOICE: OnceLock<Arc<Voice>> = OnceLock::new();
    VOICE
        .get_or_init(|| Arc::new(Voice::load(&common::model_path()).expect("voice")))
        .clone()
}

const DETERMINISTIC: Scales = Scales {
    noise_scale: 0.0,
    length_scale: 1.0,
    noise_w: 0.0,
};

const TEXT: &str = "Hello there. It is 3 o'clock! Is Dr. Smith in?";

#[test]
fn text_becomes_one_chunk_per_sentence() {
    let v = voice();
    let chunks: Vec<_> = v
        .synthesize(TEXT, None, DETERMINISTIC)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let sentences: Vec<&str> = chunks.iter().map(|c| c.sentence.as_str()).collect();
    assert_eq!(
        sentences,
        [
            "Hello there.",
            "It is three o'clock!",
            "Is Doctor Smith in?"
        ]
    );
    for c in &chunks {
        let secs = c.samples.len() as f64 / f64::from(v.sample_rate());
        // Speech runs at roughly 2 to 20 phonemes a second.
        let phonemes = c.phonemes.chars().filter(|ch| ch.is_alphabetic()).count() as f64;
        assert!(
            secs > phonemes / 25.0 && secs < phonemes / 2.0 + 0.5,
            "{secs} s for {c:?}"
        );
        assert!(c.samples.iter().all(|s| s.is_finite() && s.abs() <= 1.0));
        let rms = (c.samples.iter().map(|s| s * s).sum::<f32>() / c.samples.len() as f32).sqrt();
        assert!(rms > 0.01, "a sentence should not be silent (rms {rms})");
    }
}

#[test]
fn noise_changes_the_audio_but_not_its_nature() {
    let v = voice();
    let with_noise = v.default_scales();
    assert!(with_noise.noise_scale > 0.0 && with_noise.noise_w > 0.0);
    let a: Vec<f32> = v
        .synthesize("Hello there.", None, with_noise)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .samples;
    let b: Vec<f32> = v
        .synthesize("Hello there.", None, with_noise)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .samples;
    assert_ne!(a, b, "two noisy renditions should differ");
    let rate = v.sample_rate() as f32;
    for s in [&a, &b] {
        assert!(s.iter().all(|x| x.is_finite() && x.abs() <= 1.0));
        let secs = s.len() as f32 / rate;
        assert!((0.3..3.0).contains(&secs), "{secs}");
    }
    // Slower speech is longer.
    let slow = Scales {
        length_scale: 2.0,
        ..DETERMINISTIC
    };
    let normal: usize = v
        .synthesize("Hello there.", None, DETERMINISTIC)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .samples
        .len();
    let slower: usize = v
        .synthesize("Hello there.", None, slow)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .samples
        .len();
    // Not exactly twice: each phoneme's frames are rounded up, ceil(2w) <= 2 ceil(w).
    assert!(slower as f64 > 1.6 * normal as f64, "{slower} vs {normal}");
}

#[test]
fn an_unknown_speaker_is_refused() {
    let v = voice();
    assert!(v.synthesize("Hello.", Some(3), DETERMINISTIC).is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_yields_the_same_chunks_in_order() {
    let v = voice();
    let expected: Vec<_> = v
        .synthesize(TEXT, None, DETERMINISTIC)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let mut rx = v.clone().stream(TEXT.to_owned(), None, DETERMINISTIC);
    let mut got = Vec::new();
    while let Some(chunk) = rx.recv().await {
        got.push(chunk.unwrap());
    }
    assert_eq!(got, expected);

    // A bad speaker ends the stream with one error.
    let mut rx = v.stream("Hi.".into(), Some(9), DETERMINISTIC);
    assert!(rx.recv().await.unwrap().is_err());
    assert!(rx.recv().await.is_none());
}

#[test]
fn parts_stream_each_piece_in_windows_that_add_up_to_its_chunk() {
    let v = voice();
    // The first sentence makes well over FIRST_WINDOW_FRAMES latent frames.
    let text =
        "The lighthouse keeper climbed the stairs every evening to light the lamp. Then he slept.";
    let parts: Vec<Part> = v
        .synthesize_parts(text, None, DETERMINISTIC)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let chunks: Vec<_> = v
        .synthesize(text, None, DETERMINISTIC)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(chunks.len(), 2);
    // The first piece comes in several parts, the first of them one short window.
    let first: Vec<&Part> = parts.iter().filter(|p| p.piece == 0).collect();
    assert!(first.len() > 1, "{} parts", first.len());
    assert_eq!(first[0].samples.len(), FIRST_WINDOW_FRAMES * 256);
    assert!(!first[0].last && first.last().unwrap().last);
    for (piece, chunk) in chunks.iter().enumerate() {
        let of_piece: Vec<&Part> = parts.iter().filter(|p| p.piece == piece).collect();
        assert!(of_piece.iter().all(|p| *p.sentence == chunk.sentence));
        let joined: Vec<f32> = of_piece
            .iter()
            .flat_map(|p| p.samples.iter().copied())
            .collect();
        // The same audio as the model decoding the piece whole.
        let ids = voice::phoneme_ids(&common::config(), &chunk.phonemes);
        let whole = common::model()
            .synthesize(&ids, None, DETERMINISTIC)
            .unwrap();
        assert_eq!(joined.len(), whole.len());
        let diff = common::largest_difference(&joined, &whole);
        assert!(diff < 1e-5, "piece {piece}: {diff}");
    }
    // Pieces arrive in order and none is skipped, each ending with its last part.
    let order: Vec<(usize, bool)> = parts.iter().map(|p| (p.piece, p.last)).collect();
    assert!(
        order
            .windows(2)
            .all(|w| (w[1].0 == w[0].0 && !w[0].1) || (w[1].0 == w[0].0 + 1 && w[0].1)),
        "{order:?}"
    );
}
