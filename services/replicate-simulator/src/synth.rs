//! The simulator's audio: clearly synthetic, but real, of the requested length, in the
//! requested format. Sound effects are noise shaped by a sweeping low-pass filter and a
//! swelling envelope; music is a I–V–vi–IV chord progression of soft additive tones. The
//! synthesis is plain arithmetic here; encoding is `audio-codec`'s.

use std::f32::consts::TAU;

use audio_codec::{AudioFormat, CodecError, Encoder};

use crate::prediction::{AudioRequest, Kind};

/// Stable Audio's rate for effects, MusicGen's for music.
const EFFECT_RATE: u32 = 44_100;
const MUSIC_RATE: u32 = 32_000;

/// A short fade at both ends, so that the file starts and stops without a click.
const FADE_SECONDS: f32 = 0.01;

/// xorshift64*: small, seedable, and good enough for noise that nobody will analyse.
struct Noise(u64);

impl Noise {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// Uniform in [-1, 1).
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
        (bits as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// One MP3 frame, in samples.
const MP3_FRAME: usize = 1152;

/// How many samples to synthesise so that the file decodes to `seconds`. WAV holds exactly what
/// it is given. An MP3 decodes to whole frames, and LAME adds 576 samples of delay up front and
/// pads the last frame, which comes to one frame more than the input fills; without a LAME tag
/// (the streaming encoder writes none) decoders play all of it. So an MP3 gets one frame fewer
/// than the whole frames nearest to the request, and decodes within half a frame (18 ms at
/// 32 kHz) of it.
fn encoded_sample_count(seconds: f64, rate: u32, format: AudioFormat) -> usize {
    // Bounded by `MAX_SECONDS`, so the product fits easily.
    let exact = (seconds * f64::from(rate)).round() as usize;
    match format {
        AudioFormat::Mp3 => {
            let frames = (exact as f64 / MP3_FRAME as f64).round() as usize;
            frames.saturating_sub(1) * MP3_FRAME
        }
        _ => exact,
    }
}

fn fade(samples: &mut [f32], rate: u32) {
    let n = ((FADE_SECONDS * rate as f32) as usize).min(samples.len() / 2);
    let len = samples.len();
    for i in 0..n {
        let gain = i as f32 / n as f32;
        samples[i] *= gain;
        samples[len - 1 - i] *= gain;
    }
}

/// Noise through a one-pole low-pass whose cutoff sweeps slowly, under an envelope that swells
/// twice a second: something like wind or surf.
pub fn sound_effect(samples: usize, seed: u64) -> Vec<f32> {
    let rate = EFFECT_RATE as f32;
    let mut noise = Noise::new(seed);
    let mut low = 0.0f32;
    let mut out: Vec<f32> = (0..samples)
        .map(|i| {
            let t = i as f32 / rate;
            let cutoff = 400.0 + 3000.0 * (0.5 + 0.5 * (TAU * 0.13 * t).sin());
            let alpha = 1.0 - (-TAU * cutoff / rate).exp();
            low += alpha * (noise.next() - low);
            let swell = 0.55 + 0.45 * (TAU * 0.5 * t).sin().abs();
            0.6 * low * swell
        })
        .collect();
    fade(&mut out, EFFECT_RATE);
    out
}

/// C, G, A minor and F major triads, one chord every two seconds, each note a sine with two
/// quieter harmonics and its own attack and decay.
pub fn music(samples: usize) -> Vec<f32> {
    const CHORDS: [[f32; 3]; 4] = [
        [261.63, 329.63, 392.00],
        [196.00, 246.94, 293.66],
        [220.00, 261.63, 329.63],
        [174.61, 220.00, 261.63],
    ];
    const CHORD_SECONDS: f32 = 2.0;
    let rate = MUSIC_RATE as f32;
    let mut out: Vec<f32> = (0..samples)
        .map(|i| {
            let t = i as f32 / rate;
            let chord = &CHORDS[(t / CHORD_SECONDS) as usize % CHORDS.len()];
            let into = t % CHORD_SECONDS;
            let envelope = (into / 0.05).min(1.0) * (-0.8 * into).exp();
            let tone: f32 = chord
                .iter()
                .map(|f| {
                    (TAU * f * t).sin()
                        + 0.3 * (TAU * 2.0 * f * t).sin()
                        + 0.1 * (TAU * 3.0 * f * t).sin()
                })
                .sum();
            0.15 * envelope * tone
        })
        .collect();
    fade(&mut out, MUSIC_RATE);
    out
}

/// The request's audio, encoded. CPU-bound: call it off the async executor.
pub fn render(request: &AudioRequest, fallback_seed: u64) -> Result<Vec<u8>, CodecError> {
    let rate = match request.kind {
        Kind::SoundEffect => EFFECT_RATE,
        Kind::Music => MUSIC_RATE,
    };
    let count = encoded_sample_count(request.seconds, rate, request.format);
    let samples = match request.kind {
        Kind::SoundEffect => sound_effect(count, request.seed.unwrap_or(fallback_seed)),
        Kind::Music => music(count),
    };
    encode(&samples, rate, request.format)
}

fn encode(samples: &[f32], rate: u32, format: AudioFormat) -> Result<Vec<u8>, CodecError> {
    let mut encoder = Encoder::new(format, rate, None)?;
    let mut bytes = Vec::new();
    for chunk in samples.chunks(8192) {
        bytes.extend(encoder.push(chunk)?);
    }
    bytes.extend(encoder.finish()?);
    if format == AudioFormat::Wav {
        set_wav_sizes(&mut bytes);
    }
    Ok(bytes)
}

/// `audio-codec` streams WAV with "unknown length" sizes; a whole file is better served with
/// its real sizes, which every reader trusts for the duration.
fn set_wav_sizes(bytes: &mut [u8]) {
    const HEADER: usize = 44;
    let Ok(total) = u32::try_from(bytes.len()) else {
        return;
    };
    if bytes.len() < HEADER || &bytes[0..4] != b"RIFF" || &bytes[36..40] != b"data" {
        return;
    }
    bytes[4..8].copy_from_slice(&(total - 8).to_le_bytes());
    bytes[40..44].copy_from_slice(&(total - HEADER as u32).to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_exact_and_levels_sane() {
        for samples in [sound_effect(66_150, 7), music(48_000)] {
            let peak = samples.iter().fold(0.0f32, |m, s| m.max(s.abs()));
            assert!(peak > 0.05 && peak <= 1.0, "peak {peak}");
        }
        assert_eq!(
            encoded_sample_count(1.5, EFFECT_RATE, AudioFormat::Wav),
            66_150
        );
        assert_eq!(
            encoded_sample_count(3.0, MUSIC_RATE, AudioFormat::Mp3),
            82 * 1152
        );
    }

    #[test]
    fn wav_sizes_are_real() {
        let bytes = encode(&music(16_000), MUSIC_RATE, AudioFormat::Wav).unwrap();
        let data = u32::from_le_bytes(bytes[40..44].try_into().unwrap());
        assert_eq!(data, 32_000);
    }
}
