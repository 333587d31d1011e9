//! Measures the real-time factor of the candle voice on a paragraph, sentence by sentence.
//!
//! `cargo run --release -p voice --example rtf -- VOICE.onnx [IDS_OUT.json]`
//!
//! Three measures, after one warm-up sentence:
//! - the paragraph as one text (as one request would send it): per sentence, the synthesis time
//!   and the audio duration; then the totals and the time to the first sentence's audio;
//! - the same six sentences as six texts, one call each (as short requests would come);
//! - short first sentences alone ("Hello.", "Thanks for calling."), each 200 ms after the
//!   request before: the time to their first audio, as a stream gives it.
//!
//! The last lines, `result …`, are for `tests/reference/bench.sh`. With a second argument it
//! writes the phoneme ids of the paragraph's sentences and of the short sentences as JSON, so
//! `tests/reference/bench_ort.py` can time onnxruntime on exactly the same input.
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
    // Before any thread starts (see its docs).
    voice::prepare_process();
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
        let ids = |texts: &[&str]| -> Result<Vec<Vec<i64>>, voice::Error> {
            Ok(phonemizer
                .phonemize_all(texts)?
                .iter()
                .map(|p| phoneme_ids(voice.config(), p))
                .collect())
        };
        let sentences: Vec<&str> = sentences.iter().map(String::as_str).collect();
        let json = serde_json::json!({
            "paragraph": ids(&sentences)?,
            "short": ids(&SHORT)?,
        });
        std::fs::write(path, json.to_string())?;
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
    let first_ms = first.unwrap_or_default().as_secs_f64() * 1e3;
    println!(
        "candle: {total:.3} s for {audio_secs:.2} s of audio, RTF {:.3}, first audio after {first_ms:.0} ms",
        total / audio_secs,
    );

    // The same sentences, one call each.
    let sentences = text::split_sentences(&text::normalize(PARAGRAPH));
    let start = Instant::now();
    let mut sentences_audio = 0.0;
    for sentence in &sentences {
        for chunk in voice.synthesize(sentence, None, scales)? {
            sentences_audio += chunk?.samples.len() as f64 / rate;
        }
    }
    let sentences_rtf = start.elapsed().as_secs_f64() / sentences_audio;

    println!(
        "candle: the {} sentences one call each, RTF {sentences_rtf:.3}",
        sentences.len()
    );
    let mut result = format!(
        "result paragraph_rtf={:.4} first_ms={first_ms:.1} sentences_rtf={sentences_rtf:.4}",
        total / audio_secs
    );
    // Short first sentences: the time to their first audio, as a stream gives it. Each comes
    // 200 ms after the request before it, as requests apart do: the voice starts its next
    // espeak-ng process when a request ends, and one sent within about 10 ms of the last one's
    // end waits for that process to load.
    for (i, text) in SHORT.iter().enumerate() {
        std::thread::sleep(std::time::Duration::from_millis(200));
        let start = Instant::now();
        let mut first = None;
        for part in voice.synthesize_parts(text, None, scales)? {
            part?;
            first.get_or_insert(start.elapsed());
        }
        let ms = first.unwrap_or_default().as_secs_f64() * 1e3;
        println!("candle: {text:?} alone, first audio after {ms:.1} ms");
        result.push_str(&format!(" short{i}_ms={ms:.2}"));
    }
    println!("{result}");
    Ok(())
}

/// Short first sentences.
const SHORT: [&str; 2] = ["Hello.", "Thanks for calling."];
