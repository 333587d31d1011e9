//! Measures the real-time factor of the candle voice on a paragraph, sentence by sentence.
//!
//! `cargo run --release -p voice --example rtf -- VOICE.onnx [IDS_OUT.json]`
//!
//! Prints, per sentence, the synthesis time and the audio duration; then the totals and the time
//! to the first sentence's audio. With a second argument it writes each sentence's phoneme ids
//! as JSON so `tests/reference/bench_ort.py` can time onnxruntime on exactly the same input.
#![allow(clippy::print_stdout)]

use std::{path::PathBuf, time::Instant};

use voice::{Voice, phoneme_ids, text};

const PARAGRAPH: &str = "The quick brown fox jumps over the lazy dog. \
It was a bright cold day in April, and the clocks were striking thirteen. \
Sonora turns text into speech on an ordinary processor, without a graphics card. \
Each sentence is synthesized and sent on its own, so the listener hears the first words \
long before the last ones are ready. \
This paragraph is long enough to measure the real time factor with some confidence. \
Thank you for listening, and have a pleasant day.";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model = PathBuf::from(args.next().ok_or("usage: rtf VOICE.onnx [IDS_OUT.json]")?);
    let ids_out = args.next().map(PathBuf::from);

    let t = Instant::now();
    let voice = Voice::load(&model)?;
    println!("load: {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
    let rate = f64::from(voice.sample_rate());
    let mut scales = voice.default_scales();
    // Deterministic durations so both engines make the same amount of audio.
    scales.noise_w = 0.0;

    if let Some(path) = &ids_out {
        let sentences = text::split_sentences(&text::normalize(PARAGRAPH));
        let phonemizer = voice::Phonemizer::new(&voice.config().espeak.voice)?;
        let ids: Vec<Vec<i64>> = phonemizer
            .phonemize_all(&sentences)?
            .iter()
            .map(|p| phoneme_ids(voice.config(), p))
            .collect();
        std::fs::write(path, serde_json::to_string(&ids)?)?;
    }

    // One warm-up sentence: the first call pays for allocations and thread start-up.
    for chunk in voice.synthesize("Warm up.", None, scales)? {
        chunk?;
    }

    let start = Instant::now();
    let mut first = None;
    let mut audio_secs = 0.0;
    let mut last = start;
    for chunk in voice.synthesize(PARAGRAPH, None, scales)? {
        let chunk = chunk?;
        let now = Instant::now();
        first.get_or_insert(now - start);
        let secs = chunk.samples.len() as f64 / rate;
        let took = (now - last).as_secs_f64();
        println!(
            "{took:7.3} s for {secs:6.2} s of audio (RTF {:.3})  {}",
            took / secs,
            chunk.sentence
        );
        audio_secs += secs;
        last = now;
    }
    let total = start.elapsed().as_secs_f64();
    println!(
        "candle: {total:.3} s for {audio_secs:.2} s of audio, RTF {:.3}, first audio after {:.0} ms",
        total / audio_secs,
        first.unwrap_or_default().as_secs_f64() * 1e3
    );
    Ok(())
}
