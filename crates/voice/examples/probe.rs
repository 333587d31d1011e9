#![allow(clippy::print_stdout)]
use candle_core::Device;
use std::time::Instant;
use voice::{Phonemizer, Vits, VoiceConfig, Weights, model::durations, phoneme_ids};
fn main() {
    let model = std::path::PathBuf::from(std::env::args().nth(1).unwrap());
    let stage = std::env::args().nth(2).unwrap();
    let mut json = model.as_os_str().to_owned();
    json.push(".json");
    let config = VoiceConfig::from_file(std::path::Path::new(&json)).unwrap();
    let vits = Vits::load(&Weights::from_onnx_file(&model, &Device::Cpu).unwrap(), &Device::Cpu).unwrap();
    let ipa = Phonemizer::new(&config.espeak.voice).unwrap().phonemize("It was a bright cold day in April, and the clocks were striking thirteen.").unwrap();
    let ids = phoneme_ids(&config, &ipa);
    let enc = vits.encode(&ids).unwrap();
    let logw = vits.log_durations(&enc.x, None, 0.0).unwrap();
    let frames = durations(&logw, 1.0).unwrap();
    let (m, logs) = vits.expand(&enc, &frames).unwrap();
    let z_p = vits.prior_sample(&m, &logs, 0.667).unwrap();
    let reps = 30;
    let t = Instant::now();
    for _ in 0..reps {
        match stage.as_str() {
            "enc" => { vits.encode(&ids).unwrap(); }
            "flow" => { vits.flow_reverse(&z_p, None).unwrap(); }
            "dp" => { vits.log_durations(&enc.x, None, 0.0).unwrap(); }
            _ => panic!(),
        }
    }
    println!("{stage}: {:.1} ms", t.elapsed().as_secs_f64() * 1e3 / reps as f64);
}
