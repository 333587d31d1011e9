//! Whole-file processing against real FFmpeg: files written here are read back by the decoder,
//! and files the ffmpeg program writes (5.1 FLAC, Ogg Vorbis) are decoded too.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
    sync::mpsc,
    time::Duration,
};

use audio_codec::{
    AudioFormat, Encoder,
    process::{
        DecodeLimits, Decoded, ProcessError, decode_file, encode, integrated_loudness, normalize,
        trim,
    },
};

const LIMITS: DecodeLimits = DecodeLimits {
    max_duration: Duration::from_secs(60),
};

/// A sine per channel: `tones` holds (frequency, amplitude) for each channel.
fn sines(rate: u32, seconds: f64, tones: &[(f64, f32)]) -> Decoded {
    let frames = (f64::from(rate) * seconds).round() as usize;
    let mut samples = Vec::with_capacity(frames * tones.len());
    for i in 0..frames {
        let t = i as f64 / f64::from(rate);
        for &(hz, amplitude) in tones {
            samples.push(amplitude * (2.0 * std::f64::consts::PI * hz * t).sin() as f32);
        }
    }
    Decoded {
        rate,
        channels: u16::try_from(tones.len()).unwrap(),
        samples,
    }
}

/// Deterministic pseudo-random bytes (xorshift), so a failure can be reproduced.
fn noise_bytes(len: usize, mut state: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Pink-ish noise: white noise through Paul Kellet's economy pink filter.
fn pink_noise(rate: u32, seconds: f64) -> Decoded {
    let frames = (f64::from(rate) * seconds) as usize;
    let white = noise_bytes(frames * 2, 0x5eed);
    let (mut b0, mut b1, mut b2) = (0.0f32, 0.0f32, 0.0f32);
    let samples = white
        .chunks_exact(2)
        .map(|b| {
            let w = f32::from(i16::from_le_bytes([b[0], b[1]])) / 32_768.0;
            b0 = 0.99765 * b0 + w * 0.099_046;
            b1 = 0.96300 * b1 + w * 0.296_516_4;
            b2 = 0.57000 * b2 + w * 1.052_691_3;
            0.05 * (b0 + b1 + b2 + w * 0.1848)
        })
        .collect();
    Decoded {
        rate,
        channels: 1,
        samples,
    }
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn round_trip(decoded: &Decoded, format: AudioFormat) -> Decoded {
    let dir = tempfile::tempdir().unwrap();
    let bytes = encode(decoded, format).unwrap();
    let path = write(dir.path(), &format!("out.{}", format.name()), &bytes);
    decode_file(&path, LIMITS).unwrap()
}

fn channel(decoded: &Decoded, index: usize) -> Vec<f32> {
    decoded
        .samples
        .iter()
        .skip(index)
        .step_by(usize::from(decoded.channels))
        .copied()
        .collect()
}

fn peak(samples: &[f32]) -> f32 {
    samples.iter().fold(0.0, |p, s| p.max(s.abs()))
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

#[test]
fn wav_is_a_whole_file_with_exact_sizes_and_samples() {
    // Left a tone, right silent: the channels must come back apart and in order.
    let original = sines(44_100, 2.0, &[(440.0, 0.5), (0.0, 0.0)]);
    let bytes = encode(&original, AudioFormat::Wav).unwrap();
    assert_eq!(&bytes[..4], b"RIFF");
    assert_eq!(le_u32(&bytes, 4) as usize, bytes.len() - 8, "RIFF size");
    let data = bytes.windows(4).position(|w| w == b"data").unwrap();
    assert_eq!(le_u32(&bytes, data + 4), 88_200 * 2 * 2, "data size");

    let dir = tempfile::tempdir().unwrap();
    let back = decode_file(&write(dir.path(), "out.wav", &bytes), LIMITS).unwrap();
    assert_eq!((back.rate, back.channels), (44_100, 2));
    assert_eq!(back.frames(), 88_200);
    assert_eq!(back.duration_seconds(), 2.0);
    let worst = original
        .samples
        .iter()
        .zip(&back.samples)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(worst <= 1.0 / 32_767.0, "16-bit error {worst}");
    assert!(peak(&channel(&back, 1)) == 0.0);
}

#[test]
fn mp3_keeps_the_duration_and_the_channels() {
    let original = sines(44_100, 2.0, &[(440.0, 0.5), (0.0, 0.0)]);
    let back = round_trip(&original, AudioFormat::Mp3);
    assert_eq!((back.rate, back.channels), (44_100, 2));
    let error = (back.duration_seconds() - 2.0).abs();
    assert!(error <= 0.05, "decoded {} s", back.duration_seconds());
    assert!(peak(&channel(&back, 0)) > 0.4, "the tone is on the left");
    assert!(peak(&channel(&back, 1)) < 0.01, "the right stays silent");
    // LAME quantises a pure tone about 0.4 dB low at this bit rate (the ffmpeg program does the
    // same); anything more would mean samples lost or misplaced.
    let loudness = integrated_loudness(&back).unwrap();
    let expected = integrated_loudness(&original).unwrap();
    assert!(
        (loudness - expected).abs() < 0.6,
        "{loudness} vs {expected}"
    );

    let mono = round_trip(&sines(22_050, 2.0, &[(440.0, 0.5)]), AudioFormat::Mp3);
    assert_eq!((mono.rate, mono.channels), (22_050, 1));
    assert!((mono.duration_seconds() - 2.0).abs() <= 0.05);
}

#[test]
fn flac_is_exact() {
    let original = sines(48_000, 2.0, &[(440.0, 0.5), (660.0, 0.25)]);
    let back = round_trip(&original, AudioFormat::Flac);
    assert_eq!(
        (back.rate, back.channels, back.frames()),
        (48_000, 2, 96_000)
    );
}

#[test]
fn stream_formats_are_not_stored() {
    let original = sines(48_000, 0.1, &[(440.0, 0.5)]);
    assert!(matches!(
        encode(&original, AudioFormat::Opus),
        Err(ProcessError::UnsupportedFormat("opus"))
    ));
    let three = Decoded {
        rate: 48_000,
        channels: 3,
        samples: vec![0.0; 300],
    };
    assert!(matches!(
        encode(&three, AudioFormat::Wav),
        Err(ProcessError::UnsupportedChannels(3))
    ));
}

#[test]
fn surround_flac_is_mixed_down_to_stereo_and_vorbis_decodes() {
    let dir = tempfile::tempdir().unwrap();
    let make = |name: &str, args: &[&str]| {
        let path = dir.path().join(name);
        let status = Command::new("ffmpeg")
            .args(["-v", "error", "-nostdin", "-f", "lavfi", "-i"])
            .arg("sine=frequency=440:sample_rate=48000:duration=1")
            .args(args)
            .arg(&path)
            .status()
            .expect("ffmpeg runs");
        assert!(status.success());
        path
    };
    let surround = decode_file(&make("surround.flac", &["-ac", "6"]), LIMITS).unwrap();
    assert_eq!((surround.rate, surround.channels), (48_000, 2));
    assert_eq!(surround.frames(), 48_000);
    assert!(surround.peak() > 0.05, "the mix-down keeps the sound");

    let vorbis = make("music.ogg", &["-ac", "2", "-c:a", "libvorbis"]);
    let vorbis = decode_file(&vorbis, LIMITS).unwrap();
    assert_eq!((vorbis.rate, vorbis.channels), (48_000, 2));
    assert!((vorbis.duration_seconds() - 1.0).abs() < 0.01);
}

#[test]
fn odd_rates_come_out_at_48khz() {
    // 96 kHz is beyond MP3; decoding converts it so the result can be stored.
    let dir = tempfile::tempdir().unwrap();
    let bytes = encode(&sines(96_000, 1.0, &[(440.0, 0.5)]), AudioFormat::Wav).unwrap();
    let back = decode_file(&write(dir.path(), "high.wav", &bytes), LIMITS).unwrap();
    assert_eq!(back.rate, 48_000);
    assert!((back.duration_seconds() - 1.0).abs() < 0.001);
}

#[test]
fn loudness_matches_the_bs1770_reference() {
    for rate in [48_000, 44_100, 22_050] {
        let mono = integrated_loudness(&sines(rate, 5.0, &[(997.0, 1.0)])).unwrap();
        assert!((mono + 3.01).abs() < 0.1, "{rate} Hz mono: {mono} LUFS");
        let stereo = integrated_loudness(&sines(rate, 5.0, &[(997.0, 1.0), (997.0, 1.0)]));
        let stereo = stereo.unwrap();
        assert!(stereo.abs() < 0.1, "{rate} Hz stereo: {stereo} LUFS");
    }
    // Shorter than one 400 ms block: measured as one block of its own length.
    let click = integrated_loudness(&sines(48_000, 0.2, &[(997.0, 1.0)])).unwrap();
    assert!((click + 3.01).abs() < 0.2, "0.2 s: {click} LUFS");
    let quieter = integrated_loudness(&sines(48_000, 5.0, &[(997.0, 0.1)])).unwrap();
    assert!((quieter + 23.01).abs() < 0.1, "-20 dB sine: {quieter} LUFS");

    let silence = Decoded {
        rate: 48_000,
        channels: 2,
        samples: vec![0.0; 96_000],
    };
    assert_eq!(integrated_loudness(&silence), None);
}

#[test]
fn gating_ignores_the_silent_part() {
    // One second of a -9.03 LUFS tone, then nine of silence. Ten blocks hold tone: seven fully,
    // three a quarter, half and three quarters, so the gated mean is 8.5 / 10 of the tone's
    // energy. Without the gates, all 97 blocks would count and give about -19.6 LUFS.
    let mut decoded = sines(48_000, 1.0, &[(997.0, 0.5)]);
    decoded.samples.extend(std::iter::repeat_n(0.0, 9 * 48_000));
    let loudness = integrated_loudness(&decoded).unwrap();
    let expected = -3.01 + 20.0 * 0.5f64.log10() + 10.0 * 0.85f64.log10();
    assert!(
        (loudness - expected).abs() < 0.05,
        "{loudness} LUFS, expected {expected}"
    );
}

#[test]
fn normalize_reaches_the_target() {
    for mut decoded in [
        pink_noise(44_100, 5.0),
        sines(48_000, 3.0, &[(440.0, 0.05)]),
    ] {
        let result = normalize(&mut decoded, -16.0, -1.0);
        assert!(!result.peak_limited);
        let measured = integrated_loudness(&decoded).unwrap();
        assert!((measured + 16.0).abs() <= 0.3, "{measured} LUFS");
        assert_eq!(result.loudness_after, Some(measured));
        let before = result.loudness_before.unwrap();
        assert!((before + result.gain_db - measured).abs() < 0.05);
        assert!(20.0 * f64::from(decoded.peak()).log10() <= -1.0);

        // And it survives being stored.
        let back = round_trip(&decoded, AudioFormat::Wav);
        let stored = integrated_loudness(&back).unwrap();
        assert!((stored + 16.0).abs() <= 0.3, "stored: {stored} LUFS");
    }
}

#[test]
fn normalize_never_passes_the_peak_ceiling() {
    // A sine at -6 dBFS measures -9 LUFS; -3 LUFS would need its peak at 0 dBFS.
    let mut decoded = sines(48_000, 3.0, &[(997.0, 0.5)]);
    let result = normalize(&mut decoded, -3.0, -1.0);
    assert!(result.peak_limited);
    let peak_db = 20.0 * f64::from(decoded.peak()).log10();
    assert!(peak_db <= -1.0 + 1e-4, "peak {peak_db} dBFS");
    assert!(
        peak_db > -1.1,
        "the ceiling, not less, sets the gain: {peak_db}"
    );
    let after = result.loudness_after.unwrap();
    assert!(after < -3.5, "{after} LUFS");
}

#[test]
fn silence_is_left_alone() {
    let mut silence = Decoded {
        rate: 48_000,
        channels: 1,
        samples: vec![0.0; 48_000],
    };
    let result = normalize(&mut silence, -16.0, -1.0);
    assert_eq!(result.loudness_before, None);
    assert_eq!(result.gain_db, 0.0);
    assert!(silence.samples.iter().all(|&s| s == 0.0));
}

#[test]
fn trim_cuts_to_the_frame_and_fades_out() {
    let mut decoded = sines(44_100, 2.0, &[(440.0, 0.5), (440.0, 0.5)]);
    trim(
        &mut decoded,
        Duration::from_millis(1250),
        Duration::from_millis(50),
    );
    assert_eq!(decoded.frames(), 55_125);
    assert_eq!(decoded.samples.len(), 55_125 * 2);
    let last_5ms = &decoded.samples[decoded.samples.len() - 2 * 221..];
    assert!(peak(last_5ms) < 0.02, "tail peak {}", peak(last_5ms));
    assert_eq!(decoded.samples[decoded.samples.len() - 1], 0.0);
    // Before the fade the tone is untouched.
    let before_fade = &decoded.samples[..2 * (55_125 - 2_205)];
    assert!(peak(before_fade) > 0.49);

    // Shorter audio is not stretched, only faded.
    let mut short = sines(44_100, 0.5, &[(440.0, 0.5)]);
    trim(
        &mut short,
        Duration::from_secs(3),
        Duration::from_millis(50),
    );
    assert_eq!(short.frames(), 22_050);
    assert_eq!(short.samples[22_049], 0.0);

    // A fade longer than the audio is clamped to it.
    let mut tiny = sines(44_100, 0.01, &[(440.0, 0.5)]);
    trim(&mut tiny, Duration::from_secs(1), Duration::from_secs(1));
    assert_eq!(tiny.frames(), 441);
}

#[test]
fn garbage_is_not_audio() {
    let dir = tempfile::tempdir().unwrap();
    for seed in [1, 2, 3] {
        let path = write(dir.path(), "download", &noise_bytes(64 * 1024, seed));
        let error = decode_file(&path, LIMITS).unwrap_err();
        assert!(matches!(error, ProcessError::NotAudio), "{error:?}");
        assert_eq!(
            error.to_string(),
            "the file is not audio in a format that can be read"
        );
    }
    let text = write(
        dir.path(),
        "page.html",
        b"<html><body>Not found</body></html>",
    );
    assert!(matches!(
        decode_file(&text, LIMITS),
        Err(ProcessError::NotAudio)
    ));
}

#[test]
fn an_empty_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "empty.mp3", b"");
    let error = decode_file(&path, LIMITS).unwrap_err();
    assert!(matches!(error, ProcessError::Empty), "{error:?}");
    let missing = decode_file(&dir.path().join("missing.mp3"), LIMITS).unwrap_err();
    assert!(matches!(missing, ProcessError::Read(_)), "{missing:?}");
}

#[test]
fn a_file_longer_than_the_limit_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = encode(&sines(8_000, 3.0, &[(440.0, 0.5)]), AudioFormat::Wav).unwrap();
    let path = write(dir.path(), "long.wav", &bytes);
    let limits = DecodeLimits {
        max_duration: Duration::from_secs(2),
    };
    let error = decode_file(&path, limits).unwrap_err();
    assert!(matches!(error, ProcessError::TooLong { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "the audio is longer than the 2 s allowed"
    );
    let limits = DecodeLimits {
        max_duration: Duration::from_secs(3),
    };
    assert_eq!(decode_file(&path, limits).unwrap().frames(), 24_000);
}

/// An endless stream through a named pipe: decoding must stop at the limit, since reading it all
/// would never end (and memory would grow without bound).
#[test]
fn an_endless_stream_stops_at_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("endless.wav");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );

    let writer_path = fifo.clone();
    let writer = std::thread::spawn(move || {
        let mut pipe = std::fs::OpenOptions::new()
            .write(true)
            .open(&writer_path)
            .unwrap();
        // The streaming encoder's WAV says "to the end of the stream": no length to refuse early.
        let mut encoder = Encoder::new(AudioFormat::Wav, 8_000, None).unwrap();
        let second = sines(8_000, 1.0, &[(440.0, 0.5)]).samples;
        let mut written = 0u32;
        // Ends when the reader closes the pipe (the write fails); bounded in case it never does.
        while written < 600 {
            let bytes = encoder.push(&second).unwrap();
            if pipe.write_all(&bytes).is_err() {
                break;
            }
            written += 1;
        }
        written
    });

    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let limits = DecodeLimits {
            max_duration: Duration::from_secs(2),
        };
        let _ = sender.send(decode_file(&fifo, limits));
    });
    let result = receiver
        .recv_timeout(Duration::from_secs(60))
        .expect("decoding stops");
    let error = result.unwrap_err();
    assert!(matches!(error, ProcessError::TooLong { .. }), "{error:?}");
    let written = writer.join().unwrap();
    assert!(written < 600, "the writer got through {written} s of audio");
}
