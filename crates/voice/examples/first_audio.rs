//! Times a short phrase's first audio, as a realtime call hears it: from the text to the first
//! streamed part of [`voice::Voice::synthesize_parts`].
//!
//! `cargo run --release -p voice --example first_audio -- VOICE.onnx ["a phrase"] [ROUNDS]`
#![allow(clippy::print_stdout)]

use std::{path::PathBuf, time::Instant};

use voice::Voice;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Before any thread starts (see its docs).
    voice::prepare_process();
    let mut args = std::env::args().skip(1);
    let model = PathBuf::from(args.next().ok_or("usage: first_audio VOICE.onnx")?);
    let phrase = args
        .next()
        .unwrap_or_else(|| "Thank you for calling.".to_owned());
    let rounds: usize = args.next().map_or(Ok(15), |r| r.parse())?;
    let voice = Voice::load(&model)?;
    let scales = voice.default_scales();
    // The first call pays for allocations and thread start-up.
    for part in voice.synthesize_parts("Warm up.", None, scales)? {
        part?;
    }
    let mut firsts = Vec::new();
    for _ in 0..rounds {
        let start = Instant::now();
        let mut parts = voice.synthesize_parts(&phrase, None, scales)?;
        if let Some(part) = parts.next() {
            part?;
            firsts.push(start.elapsed().as_secs_f64() * 1e3);
        }
        for part in parts {
            part?;
        }
    }
    firsts.sort_by(f64::total_cmp);
    let pick = |q: f64| firsts[((firsts.len() - 1) as f64 * q).round() as usize];
    println!(
        "{phrase:?}: first audio median {:.0} ms, min {:.0} ms, p90 {:.0} ms ({} rounds)",
        pick(0.5),
        pick(0.0),
        pick(0.9),
        firsts.len()
    );
    Ok(())
}
