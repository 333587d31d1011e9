//! Intelligibility of the service's speech: twelve fixed sentences synthesised by `Synthesize`
//! (the voice's own, noisy, scales, as clients get them), transcribed back by Whisper tiny.en;
//! the overall word error rate must be at most 10%. The last two are long first sentences, which
//! the service speaks in two pieces (at the comma, and between words for the one without
//! punctuation), so the cuts are heard too.

#![allow(
    clippy::print_stdout,
    reason = "the transcripts are the evidence, printed with --no-capture"
)]

use listener::{Listener, default_model_dir, ensure_model, normalize, word_error_rate};
use sonora_proto::tts::v1::{AudioFormat, SynthesizeRequest};

use crate::synthesis::start;

const SENTENCES: [&str; 12] = [
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
    "When the old lighthouse keeper finally retired after forty years, the whole village came \
     to thank him.",
    "The quick brown fox jumps over the lazy dog while the farmer watches quietly from his porch \
     as the sun goes down over the hills",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whisper_understands_the_service() {
    let dir = default_model_dir();
    let listener = tokio::task::spawn_blocking(move || {
        ensure_model(&dir).expect("the Whisper model is fetched");
        Listener::load(&dir).expect("the Whisper model loads")
    })
    .await
    .unwrap();
    let listener = std::sync::Arc::new(std::sync::Mutex::new(listener));
    let mut svc = start(&[]).await;
    let (mut errors, mut words) = (0.0, 0.0);
    for sentence in SENTENCES {
        let mut stream = svc
            .client
            .synthesize(SynthesizeRequest {
                text: sentence.to_owned(),
                format: AudioFormat::Pcm16.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let (mut pcm, mut rate, mut pieces) = (Vec::new(), 0, 0);
        while let Some(message) = stream.message().await.unwrap() {
            pcm.extend(message.audio);
            rate = message.sample_rate;
            pieces = message.sentence_index + 1;
        }
        let want = voice::text::pieces(sentence).len();
        assert_eq!(pieces as usize, want, "{sentence:?}");
        assert!(
            sentence.len() < 80 || want == 2,
            "{sentence:?} is cut in two"
        );
        let samples: Vec<f32> = pcm
            .chunks_exact(2)
            .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
            .collect();
        let listener = std::sync::Arc::clone(&listener);
        let heard = tokio::task::spawn_blocking(move || {
            listener.lock().unwrap().transcribe(&samples, rate)
        })
        .await
        .unwrap()
        .expect("transcribes");
        let wer = word_error_rate(sentence, &heard);
        let n = normalize(sentence).len() as f64;
        errors += wer * n;
        words += n;
        println!("{wer:.3}  {sentence:?} -> {heard:?}");
    }
    let overall = errors / words;
    println!("overall word error rate {overall:.3} over {words} words");
    assert!(
        overall <= 0.10,
        "overall word error rate {overall:.3} is above 10%"
    );
}
