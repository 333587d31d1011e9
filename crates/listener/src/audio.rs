//! Audio front end: resampling to Whisper's 16 kHz and the mel filter bank.

use std::f64::consts::PI;

/// Zero crossings of the sinc kept on each side of the centre. 32 gives a transition band a few
/// hundred hertz wide and a stop band well below what Whisper's log-mel features can see.
const HALF_ZEROS: f64 = 32.0;

/// Resamples mono audio from `from` Hz to `to` Hz with a Blackman-windowed sinc low-pass.
///
/// Each output sample is computed directly from the input around its position, which works for
/// any pair of rates (22,050 → 16,000 has no small common factor). When downsampling, the cut-off
/// sits just below the output's Nyquist frequency so nothing above it folds back as aliasing.
pub fn resample(input: &[f32], from: u32, to: u32) -> Vec<f32> {
    if from == to || input.is_empty() {
        return input.to_vec();
    }
    let ratio = f64::from(from) / f64::from(to);
    // Cut-off as a fraction of the input's Nyquist frequency; 0.95 leaves room for the window's
    // transition band so it ends before the output's Nyquist frequency.
    let cutoff = (f64::from(to) / f64::from(from)).min(1.0) * 0.95;
    let half_width = HALF_ZEROS / cutoff;
    let out_len = ((input.len() as f64) / ratio).round() as usize;
    let mut out = Vec::with_capacity(out_len);
    for n in 0..out_len {
        let centre = n as f64 * ratio;
        let first = (centre - half_width).ceil().max(0.0) as usize;
        let last = ((centre + half_width).floor() as usize).min(input.len() - 1);
        let mut acc = 0.0f64;
        for (k, &x) in input.iter().enumerate().take(last + 1).skip(first) {
            let t = k as f64 - centre;
            acc += f64::from(x) * kernel(t, cutoff, half_width);
        }
        out.push(acc as f32);
    }
    out
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
            assert!(f[m * 201..(m + 1) * 201].iter().any(|&v| v > 0.0), "filter {m}");
        }
        assert!(f.iter().all(|&v| v >= 0.0));
    }
}
