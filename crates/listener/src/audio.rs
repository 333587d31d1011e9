//! Audio front end: resampling to Whisper's 16 kHz and the mel filter bank.

use std::f64::consts::PI;

/// Zero crossings of the sinc kept on each side of the centre. 32 gives a transition band a few
/// hundred hertz wide and a stop band well below what Whisper's log-mel features can see.
const HALF_ZEROS: f64 = 32.0;

/// Resamples mono audio from `from` Hz to `to` Hz with a Blackman-windowed sinc low-pass.
///
/// When downsampling, the cut-off sits just below the output's Nyquist frequency so nothing above
/// it folds back as aliasing. Output sample `n` sits at input position `n · from / to`; with
/// `g = gcd(from, to)` that position's fractional part takes only `to / g` values (320 for
/// 22,050 → 16,000), so the kernel is tabulated once per phase instead of evaluating sines for
/// every tap of every sample.
pub fn resample(input: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || input.is_empty() || from == 0 || to == 0 {
        return input.to_vec();
    }
    let g = gcd(from, to);
    let (up, down) = ((to / g) as usize, (from / g) as usize);
    // Cut-off as a fraction of the input's Nyquist frequency; 0.95 leaves room for the window's
    // transition band so it ends before the output's Nyquist frequency.
    let cutoff = (f64::from(to) / f64::from(from)).min(1.0) * 0.95;
    let half_width = HALF_ZEROS / cutoff;
    // Taps k - floor(centre) run over -reach+1 ..= reach for every phase.
    let reach = half_width.ceil() as isize;
    let taps = (2 * reach) as usize;
    let out_len = (input.len() as u64 * u64::from(to) / u64::from(from)) as usize;
    // Tables of more than a few million entries (rates with no common factor) are not worth it.
    let table: Option<Vec<f32>> = (up * taps <= 1 << 22).then(|| {
        let mut t = Vec::with_capacity(up * taps);
        for phase in 0..up {
            let frac = phase as f64 / up as f64;
            for j in 0..taps {
                let offset = j as isize - reach + 1;
                t.push(kernel(offset as f64 - frac, cutoff, half_width) as f32);
            }
        }
        t
    });
    let mut out = Vec::with_capacity(out_len);
    for n in 0..out_len {
        let base = (n * down / up) as isize;
        let phase = n * down % up;
        let frac = phase as f64 / up as f64;
        let mut acc = 0.0f32;
        for j in 0..taps {
            let k = base + j as isize - reach + 1;
            if k < 0 || k as usize >= input.len() {
                continue;
            }
            let weight = match &table {
                Some(t) => t[phase * taps + j],
                None => kernel((k - base) as f64 - frac, cutoff, half_width) as f32,
            };
            acc += input[k as usize] * weight;
        }
        out.push(acc);
    }
    out
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The windowed-sinc kernel at `t` input samples from the centre.
fn kernel(t: f64, cutoff: f64, half_width: f64) -> f64 {
    if t.abs() >= half_width {
        return 0.0;
    }
    let x = PI * cutoff * t;
    let sinc = if x.abs() < 1e-12 { 1.0 } else { x.sin() / x };
    // Blackman window over [-half_width, half_width].
    let p = PI * (t / half_width + 1.0);
    let window = 0.42 - 0.5 * p.cos() + 0.08 * (2.0 * p).cos();
    cutoff * sinc * window
}

/// Slaney's mel scale (librosa's default, which Whisper's filters were made with): linear below
/// 1 kHz, logarithmic above.
fn hz_to_mel(hz: f64) -> f64 {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    const MIN_LOG_MEL: f64 = MIN_LOG_HZ / F_SP;
    let logstep = 6.4f64.ln() / 27.0;
    if hz >= MIN_LOG_HZ {
        MIN_LOG_MEL + (hz / MIN_LOG_HZ).ln() / logstep
    } else {
        hz / F_SP
    }
}

fn mel_to_hz(mel: f64) -> f64 {
    const F_SP: f64 = 200.0 / 3.0;
    const MIN_LOG_HZ: f64 = 1000.0;
    const MIN_LOG_MEL: f64 = MIN_LOG_HZ / F_SP;
    let logstep = 6.4f64.ln() / 27.0;
    if mel >= MIN_LOG_MEL {
        MIN_LOG_HZ * (logstep * (mel - MIN_LOG_MEL)).exp()
    } else {
        F_SP * mel
    }
}

/// The mel filter bank `librosa.filters.mel(sr, n_fft, n_mels)` computes (Slaney scale, Slaney
/// area normalisation), row-major `[n_mels][n_fft / 2 + 1]`: the layout
/// `whisper::audio::pcm_to_mel` reads. Computing it avoids shipping Whisper's `mel_filters.npz`.
pub fn mel_filters(sample_rate: u32, n_fft: usize, n_mels: usize) -> Vec<f32> {
    let n_freqs = n_fft / 2 + 1;
    let sr = f64::from(sample_rate);
    let fft_freqs: Vec<f64> = (0..n_freqs).map(|k| k as f64 * sr / n_fft as f64).collect();
    let (lo, hi) = (hz_to_mel(0.0), hz_to_mel(sr / 2.0));
    let mel_points: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(lo + (hi - lo) * i as f64 / (n_mels + 1) as f64))
        .collect();
    let mut filters = vec![0f32; n_mels * n_freqs];
    for m in 0..n_mels {
        let (left, centre, right) = (mel_points[m], mel_points[m + 1], mel_points[m + 2]);
        // Each triangle is scaled to unit area so wide high-frequency bands do not dominate.
        let norm = 2.0 / (right - left);
        for (k, &f) in fft_freqs.iter().enumerate() {
            let rising = (f - left) / (centre - left);
            let falling = (right - f) / (right - centre);
            let w = rising.min(falling).max(0.0);
            filters[m * n_freqs + k] = (w * norm) as f32;
        }
    }
    filters
}

/// Whisper's log-mel spectrogram (`whisper/audio.py`, `log_mel_spectrogram`) for one 30-second
/// window: a 400-point STFT with a periodic Hann window, hop 160, frames centred by reflecting
/// the first 200 samples, the power spectrum through the mel filters, `log10` floored at 1e-10,
/// then floored at 8 below the maximum and mapped by `(x + 4) / 4`.
///
/// The DFT is a product with tabulated cosines and sines: 400 points is not a power of two, and
/// the table turns each frame into a small dense product, far cheaper than candle's recursive
/// FFT that recomputes its twiddles. Frames that see only the zero padding are not computed.
#[derive(Debug, Clone)]
pub struct MelFrontEnd {
    filters: Vec<f32>,
    n_mels: usize,
    window: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

/// Samples per frame.
const N_FFT: usize = 400;
/// Samples between frames.
const HOP: usize = 160;
/// Frames in Whisper's 30-second window.
pub const N_FRAMES: usize = 3000;
const N_FREQS: usize = N_FFT / 2 + 1;

impl MelFrontEnd {
    /// The front end for 16 kHz audio and `n_mels` mel bands.
    pub fn new(n_mels: usize) -> Self {
        let window = (0..N_FFT)
            .map(|i| (0.5 - 0.5 * (2.0 * PI * i as f64 / N_FFT as f64).cos()) as f32)
            .collect();
        let mut cos = Vec::with_capacity(N_FREQS * N_FFT);
        let mut sin = Vec::with_capacity(N_FREQS * N_FFT);
        for k in 0..N_FREQS {
            for n in 0..N_FFT {
                // Reduced modulo N_FFT so the angle stays small and exact.
                let angle = 2.0 * PI * ((k * n) % N_FFT) as f64 / N_FFT as f64;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Self {
            filters: mel_filters(16_000, N_FFT, n_mels),
            n_mels,
            window,
            cos,
            sin,
        }
    }

    /// Features `[n_mels][3000]`, row-major, for 16 kHz `pcm` (only its first 30 s are used).
    pub fn log_mel(&self, pcm: &[f32]) -> Vec<f32> {
        let pcm = &pcm[..pcm.len().min(HOP * N_FRAMES)];
        let pad = N_FFT / 2;
        // torch.stft(center=True, pad_mode="reflect") on the audio followed by 30 s of zeros.
        let sample = |i: isize| -> f32 {
            let j = if i < 0 { -i } else { i } as usize;
            pcm.get(j).copied().unwrap_or(0.0)
        };
        let mut mel = vec![0f32; self.n_mels * N_FRAMES];
        let mut frame = vec![0f32; N_FFT];
        let mut power = vec![0f32; N_FREQS];
        // Frames starting past the audio hold only zeros; their power is 0.
        let live = (pcm.len() + pad).div_ceil(HOP).min(N_FRAMES);
        for t in 0..live {
            let start = (t * HOP) as isize - pad as isize;
            for (n, x) in frame.iter_mut().enumerate() {
                *x = sample(start + n as isize) * self.window[n];
            }
            for (k, p) in power.iter_mut().enumerate() {
                let (c, s) = (
                    &self.cos[k * N_FFT..(k + 1) * N_FFT],
                    &self.sin[k * N_FFT..(k + 1) * N_FFT],
                );
                let (mut re, mut im) = (0f32, 0f32);
                for n in 0..N_FFT {
                    re += frame[n] * c[n];
                    im += frame[n] * s[n];
                }
                *p = re * re + im * im;
            }
            for m in 0..self.n_mels {
                let f = &self.filters[m * N_FREQS..(m + 1) * N_FREQS];
                mel[m * N_FRAMES + t] = f.iter().zip(&power).map(|(a, b)| a * b).sum();
            }
        }
        let mut max = f32::NEG_INFINITY;
        for v in mel.iter_mut() {
            *v = v.max(1e-10).log10();
            max = max.max(*v);
        }
        for v in mel.iter_mut() {
            *v = (v.max(max - 8.0) + 4.0) / 4.0;
        }
        mel
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f64, rate: u32, seconds: f64) -> Vec<f32> {
        let n = (f64::from(rate) * seconds) as usize;
        (0..n)
            .map(|i| (2.0 * PI * freq * i as f64 / f64::from(rate)).sin() as f32 * 0.5)
            .collect()
    }

    fn rms(x: &[f32]) -> f64 {
        (x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    #[test]
    fn a_tone_in_the_pass_band_survives_resampling() {
        let out = resample(&tone(1000.0, 22_050, 1.0), 22_050, 16_000);
        assert_eq!(out.len(), 16_000);
        let want = tone(1000.0, 16_000, 1.0);
        // Away from the edges, where the filter runs out of input.
        let err: f64 = out[200..15_800]
            .iter()
            .zip(&want[200..15_800])
            .map(|(a, b)| f64::from(a - b).abs())
            .fold(0.0, f64::max);
        assert!(err < 2e-3, "max error {err}");
    }

    #[test]
    fn a_tone_above_the_new_nyquist_frequency_is_removed() {
        // 10 kHz cannot be represented at 16 kHz; without the low-pass it would alias to 6 kHz.
        let out = resample(&tone(10_000.0, 22_050, 1.0), 22_050, 16_000);
        let level = rms(&out[200..15_800]);
        assert!(level < 0.5 / 2f64.sqrt() * 1e-3, "rms {level}");
    }

    #[test]
    fn resampling_works_for_rates_without_a_small_common_factor() {
        // 44,101 and 16,000 share no factor: the direct (untabulated) path.
        let out = resample(&tone(440.0, 44_101, 0.5), 44_101, 16_000);
        let want = tone(440.0, 16_000, 0.5);
        assert!(out.len().abs_diff(want.len()) <= 1);
        let err = out[200..7_800]
            .iter()
            .zip(&want[200..7_800])
            .map(|(a, b)| f64::from(a - b).abs())
            .fold(0.0, f64::max);
        assert!(err < 2e-3, "max error {err}");
    }

    #[test]
    fn log_mel_of_silence_is_the_floor_and_a_tone_lights_its_band() {
        let front = MelFrontEnd::new(80);
        let silence = front.log_mel(&[0.0; 16_000]);
        assert_eq!(silence.len(), 80 * N_FRAMES);
        assert!(silence.iter().all(|&v| (v - -1.5).abs() < 1e-6));

        let mel = front.log_mel(&tone(1000.0, 16_000, 1.0));
        // Frame 50 is inside the tone; the loudest band is the one whose filter peaks nearest 1 kHz.
        let column: Vec<f32> = (0..80).map(|m| mel[m * N_FRAMES + 50]).collect();
        let loudest = (0..80)
            .max_by(|&a, &b| column[a].total_cmp(&column[b]))
            .unwrap();
        let peak_bin = |m: usize| {
            let f = &front.filters[m * N_FREQS..(m + 1) * N_FREQS];
            (0..N_FREQS).max_by(|&a, &b| f[a].total_cmp(&f[b])).unwrap()
        };
        // 1 kHz is bin 25 (40 Hz per bin).
        assert!(peak_bin(loudest).abs_diff(25) <= 1, "band {loudest}");
        // Frames after the tone ends are at the floor: 8 below the maximum.
        let max = mel.iter().copied().fold(f32::MIN, f32::max);
        assert!((mel[10 * N_FRAMES + 200] - (max - 2.0)).abs() < 1e-5);
    }

    #[test]
    fn mel_scale_round_trips_and_is_linear_below_1_khz() {
        for hz in [0.0, 440.0, 1000.0, 3000.0, 8000.0] {
            assert!((mel_to_hz(hz_to_mel(hz)) - hz).abs() < 1e-6);
        }
        assert!((hz_to_mel(1000.0) - 15.0).abs() < 1e-12);
        assert!((hz_to_mel(500.0) - 7.5).abs() < 1e-12);
    }

    #[test]
    fn mel_filters_match_librosa_values() {
        let f = mel_filters(16_000, 400, 80);
        assert_eq!(f.len(), 80 * 201);
        // Values of librosa.filters.mel(sr=16000, n_fft=400, n_mels=80), as in Whisper's
        // mel_filters.npz: filter 0 peaks at bin 1, filter 79 covers the top bins.
        assert!((f[1] - 0.024_862_593).abs() < 1e-6, "{}", f[1]);
        assert_eq!(f[0], 0.0);
        let last = &f[79 * 201..];
        assert!(last[200] == 0.0 && last[190..200].iter().any(|&v| v > 0.0));
        // Every filter has some weight, and the bank is non-negative.
        for m in 0..80 {
            assert!(
                f[m * 201..(m + 1) * 201].iter().any(|&v| v > 0.0),
                "filter {m}"
            );
        }
        assert!(f.iter().all(|&v| v >= 0.0));
    }
}
