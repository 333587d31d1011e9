//! Times each VITS stage on one sentence: where does inference spend its time?
//!
//! `cargo run --release -p voice --example stages -- VOICE.onnx ["a sentence"]`
#![allow(clippy::print_stdout)]

use std::{path::PathBuf, time::Instant};

use candle_core::Device;
use voice::{Phonemizer, Vits, VoiceConfig, Weights, model::durations, phoneme_ids};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Before any thread starts (see its docs).
    voice::prepare_process();
    let model = PathBuf::from(std::env::args().nth(1).ok_or("usage: stages VOICE.onnx")?);
    let mut json = model.as_os_str().to_owned();
    json.push(".json");
    let config = VoiceConfig::from_file(std::path::Path::new(&json))?;
    let vits = Vits::load(
        &Weights::from_onnx_file(&model, &Device::Cpu)?,
        &Device::Cpu,
    )?;
    let ipa = Phonemizer::new(&config.espeak.voice)?.phonemize(
        &std::env::args().nth(2).unwrap_or_else(|| {
            "It was a bright cold day in April, and the clocks were striking thirteen.".to_owned()
        }),
    )?;
    let ids = phoneme_ids(&config, &ipa);
    for round in 0..3 {
        let t = Instant::now();
        let enc = vits.encode(&ids)?;
        let t_enc = t.elapsed();
        let t = Instant::now();
        let logw = vits.log_durations(&enc.x, None, 0.0)?;
        let frames = durations(&logw, 1.0)?;
        let t_dp = t.elapsed();
        let t = Instant::now();
        let (m, logs) = vits.expand(&enc, &frames)?;
        let z_p = vits.prior_sample(&m, &logs, 0.667)?;
        let z = vits.flow_reverse(&z_p, None)?;
        let t_flow = t.elapsed();
        let t = Instant::now();
        let audio = vits.decode(&z, None)?;
        let t_dec = t.elapsed();
        let secs = audio.elem_count() as f64 / f64::from(config.audio.sample_rate);
        println!(
            "round {round}: {} ids, {} frames, {secs:.2} s audio | encoder {:.0} ms, durations {:.0} ms, flows {:.0} ms, decoder {:.0} ms",
            ids.len(),
            z.dim(2)?,
            t_enc.as_secs_f64() * 1e3,
            t_dp.as_secs_f64() * 1e3,
            t_flow.as_secs_f64() * 1e3,
            t_dec.as_secs_f64() * 1e3
        );
    }
    Ok(())
}
