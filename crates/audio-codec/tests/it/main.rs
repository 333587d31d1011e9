//! Every format decodes back, with FFmpeg's own command-line tool (a separate program), to audio
//! of the expected duration, sample rate and pitch. `process` covers whole-file processing.

mod process;

use std::{path::PathBuf, process::Command};

use audio_codec::{AudioFormat, Encoder};

const INPUT_RATE: u32 = 22_050;
const SECONDS: f64 = 1.5;
const TONE_HZ: f64 = 440.0;

fn tone() -> Vec<f32> {
    let n = (f64::from(INPUT_RATE) * SECONDS) as usize;
    (0..n)
        .map(|i| {
            (0.5 * (2.0 * std::f64::consts::PI * TONE_HZ * i as f64 / f64::from(INPUT_RATE)).sin())
                as f32
        })
        .collect()
}

/// Encodes the tone in three uneven pushes, as sentences would arrive.
fn encode(format: AudioFormat, rate: Option<u32>) -> (Vec<u8>, u32) {
    let samples = tone();
    let mut encoder = Encoder::new(format, INPUT_RATE, rate).unwrap();
    let out_rate = encoder.output_rate();
    let mut bytes = Vec::new();
    for part in [&samples[..5000], &samples[5000..5001], &samples[5001..]] {
        bytes.extend(encoder.push(part).unwrap());
    }
    bytes.extend(encoder.finish().unwrap());
    (bytes, out_rate)
}

/// Decodes with the ffmpeg program to mono s16 at the stream's own rate.
fn decode(bytes: &[u8], format: AudioFormat, rate: u32) -> Vec<i16> {
    let dir = std::env::temp_dir().join(format!("audio-codec-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path: PathBuf = dir.join(format!("out.{}", format.name()));
    std::fs::write(&path, bytes).unwrap();
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error", "-nostdin"]);
    match format {
        AudioFormat::Pcm16 => cmd.args(["-f", "s16le", "-ar", &rate.to_string(), "-ac", "1"]),
        AudioFormat::Mulaw => cmd.args(["-f", "mulaw", "-ar", "8000", "-ac", "1"]),
        _ => &mut cmd,
    };
    let output = cmd
        .arg("-i")
        .arg(&path)
        .args(["-f", "s16le", "-ac", "1", "-ar", &rate.to_string(), "-"])
        .output()
        .expect("ffmpeg runs");
    assert!(
        output.status.success(),
        "{format:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
        .stdout
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

fn probe_rate(bytes: &[u8], format: AudioFormat) -> u32 {
    let path = std::env::temp_dir().join(format!(
        "audio-codec-probe-{}.{}",
        std::process::id(),
        format.name()
    ));
    std::fs::write(&path, bytes).unwrap();
    let output = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "a:0",
            "-show_entries",
            "stream=sample_rate",
            "-of",
            "csv=p=0",
        ])
        .arg(&path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap()
}

/// Zero crossings per second of the loud part: twice the tone's frequency.
fn pitch(samples: &[i16], rate: u32) -> f64 {
    let loud: Vec<i16> = samples
        .iter()
        .copied()
        .skip(rate as usize / 10)
        .take(rate as usize)
        .collect();
    let crossings = loud.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
    crossings as f64 / 2.0 / (loud.len() as f64 / f64::from(rate))
}

fn check(format: AudioFormat, rate: Option<u32>, expected_rate: u32, slack_seconds: f64) {
    let (bytes, out_rate) = encode(format, rate);
    assert_eq!(out_rate, expected_rate);
    let decoded = decode(&bytes, format, out_rate);
    let seconds = decoded.len() as f64 / f64::from(out_rate);
    assert!(
        (seconds - SECONDS).abs() <= slack_seconds,
        "{format:?}: decoded {seconds:.4} s, expected {SECONDS} s ± {slack_seconds}"
    );
    let hz = pitch(&decoded, out_rate);
    assert!((hz - TONE_HZ).abs() < 10.0, "{format:?}: pitch {hz:.1} Hz");
    match format {
        AudioFormat::Pcm16 | AudioFormat::Mulaw => {}
        // Opus always decodes at 48 kHz; the encoding rate travels in OpusHead.
        AudioFormat::Opus => assert_eq!(probe_rate(&bytes, format), 48_000),
        _ => assert_eq!(
            probe_rate(&bytes, format),
            expected_rate,
            "{format:?}: container rate"
        ),
    }
}

#[test]
fn pcm16_is_exact() {
    check(AudioFormat::Pcm16, None, 22_050, 0.0);
}

#[test]
fn wav_is_exact_and_resamples() {
    check(AudioFormat::Wav, None, 22_050, 0.0);
    check(AudioFormat::Wav, Some(16_000), 16_000, 0.001);
}

#[test]
fn flac_is_exact() {
    check(AudioFormat::Flac, None, 22_050, 0.0);
}

#[test]
fn mp3_within_its_frame_padding() {
    // MP3 adds the encoder's delay and pads the last frame; without a LAME tag decoders keep both.
    check(AudioFormat::Mp3, None, 22_050, 0.15);
    check(AudioFormat::Mp3, Some(44_100), 44_100, 0.1);
}

#[test]
fn opus_in_ogg_trims_to_the_granule() {
    check(AudioFormat::Opus, None, 48_000, 0.01);
    check(AudioFormat::Opus, Some(16_000), 16_000, 0.01);
}

#[test]
fn aac_in_adts_within_its_priming_and_padding() {
    // ADTS carries no encoder delay, so decoders keep AAC's 1,024 priming samples and the
    // padding of the last frame: at most two frames longer.
    check(AudioFormat::Aac, None, 22_050, 0.1);
    check(AudioFormat::Aac, Some(24_000), 24_000, 0.1);
    // Every packet has its own header: the stream starts with one and each header's length
    // leads to the next, to the last byte.
    let (bytes, _) = encode(AudioFormat::Aac, Some(24_000));
    let mut at = 0;
    let mut frames = 0;
    while at < bytes.len() {
        assert_eq!(
            (bytes[at], bytes[at + 1] & 0xF6),
            (0xFF, 0xF0),
            "sync word at {at}"
        );
        let length = (usize::from(bytes[at + 3] & 3) << 11)
            | (usize::from(bytes[at + 4]) << 3)
            | usize::from(bytes[at + 5] >> 5);
        assert!(length > 7, "frame at {at} of {length} bytes");
        at += length;
        frames += 1;
    }
    assert_eq!(at, bytes.len());
    // 1.5 s at 24 kHz is 36 frames of 1,024 samples, plus priming and the last partial frame.
    assert!((36..=39).contains(&frames), "{frames} frames");
}

#[test]
fn mulaw_is_8khz_for_telephony() {
    check(AudioFormat::Mulaw, None, 8_000, 0.001);
}

#[test]
fn unsupported_rates_are_refused() {
    assert!(Encoder::new(AudioFormat::Mulaw, INPUT_RATE, Some(16_000)).is_err());
    assert!(Encoder::new(AudioFormat::Opus, INPUT_RATE, Some(44_100)).is_err());
    assert_eq!(AudioFormat::parse("OGG"), Some(AudioFormat::Opus));
    assert!(Encoder::new(AudioFormat::Aac, INPUT_RATE, Some(20_000)).is_err());
    assert_eq!(AudioFormat::parse("AAC"), Some(AudioFormat::Aac));
    assert_eq!(AudioFormat::parse("m4a"), None);
}
