//! Hostile text through the real service: every input that has broken the voice, and others,
//! in every format. None may fail with `INTERNAL`, none may end well with empty audio, and each
//! one's audio and time are bounded. The peak memory one request adds is measured on the real
//! binary, in a process of its own.

use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use internal_rpc::PeerChannel;
use sonora_proto::tts::v1::{
    AudioFormat, REFUSAL_METADATA, REFUSAL_UNSUPPORTED_SCRIPT, SKIPPED_METADATA, SynthesizeRequest,
    tts_inference_client::TtsInferenceClient,
};
use test_support::wait_ready;

use crate::synthesis::{decoded_seconds, request, start};

const FORMATS: [AudioFormat; 6] = [
    AudioFormat::Wav,
    AudioFormat::Pcm16,
    AudioFormat::Mp3,
    AudioFormat::Opus,
    AudioFormat::Flac,
    AudioFormat::Mulaw,
];

/// How a call ended.
#[derive(Debug)]
enum Outcome {
    /// The stream ended well: decoded seconds of audio, and the skipped characters it reported.
    Audio { seconds: f64, skipped: u64 },
    /// Refused, at once or in the stream (after `seconds` of audio).
    Refused { status: tonic::Status, seconds: f64 },
}

async fn synthesize(
    client: &mut TtsInferenceClient<PeerChannel>,
    req: SynthesizeRequest,
) -> Outcome {
    let format = req.format();
    let response = match client.synthesize(req).await {
        Ok(response) => response,
        Err(status) => {
            return Outcome::Refused {
                status,
                seconds: 0.0,
            };
        }
    };
    let skipped = response
        .metadata()
        .get(SKIPPED_METADATA)
        .expect("the skipped characters are always reported")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut stream = response.into_inner();
    let (mut bytes, mut rate, mut done) = (Vec::new(), 0, false);
    let seconds = |bytes: &[u8], rate| {
        if bytes.is_empty() {
            0.0
        } else {
            decoded_seconds(bytes, format, rate)
        }
    };
    loop {
        match stream.message().await {
            Ok(Some(message)) => {
                bytes.extend(message.audio);
                rate = message.sample_rate;
                done = message.done;
            }
            Ok(None) => break,
            Err(status) => {
                return Outcome::Refused {
                    seconds: seconds(&bytes, rate),
                    status,
                };
            }
        }
    }
    assert!(done, "a stream that ends well ends with a done message");
    Outcome::Audio {
        seconds: seconds(&bytes, rate),
        skipped,
    }
}

/// What a hostile text must give.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Audio longer than zero and at most this long, with this many characters skipped.
    Speaks { max_seconds: f64, skipped: u64 },
    /// `INVALID_ARGUMENT` whose message contains this.
    Refused(&'static str),
}

fn cases() -> Vec<(&'static str, String, Expect)> {
    use Expect::*;
    let speaks = |max_seconds| Speaks {
        max_seconds,
        skipped: 0,
    };
    vec![
        // espeak-ng 1.51 aborts ("stack smashing detected") on these two.
        ("'a.' x85", "a.".repeat(85), speaks(60.0)),
        ("'s'' x220", "s'".repeat(220), speaks(150.0)),
        (
            "a crasher inside a sentence",
            format!("Before {}a after.", "a.".repeat(100)),
            speaks(90.0),
        ),
        // 400 Han characters, English voice: used to be 192 s of "Chinese letter".
        ("Han x400", "日".repeat(400), Refused("English (en_US)")),
        (
            "Han x4096",
            "日".repeat(4096),
            Refused("4096 of its 4096 letters"),
        ),
        (
            "a few Han characters in English",
            "The word 日本 means Japan.".into(),
            Speaks {
                max_seconds: 4.0,
                skipped: 2,
            },
        ),
        // 500 zero-width joiners: used to be 67 s of "a circumflex".
        (
            "zero-width joiners",
            format!("Hello{} world.", "\u{200d}".repeat(500)),
            speaks(3.0),
        ),
        (
            "bidirectional controls",
            "\u{202e}Hello\u{202c} \u{2066}world\u{2069}.".into(),
            speaks(3.0),
        ),
        // Non-Latin digits and a leading NUL: used to be a 44-byte WAV.
        ("Arabic-Indic nine", "٩".into(), speaks(2.0)),
        ("Devanagari nine", "९".into(), speaks(2.0)),
        ("Thai one", "๑".into(), speaks(2.0)),
        ("leading NUL", "\0Hello there.".into(), speaks(3.0)),
        // A NUL in the middle used to drop the rest.
        (
            "NUL in the middle",
            "Hello\0 there. This second sentence is spoken too.".into(),
            speaks(6.0),
        ),
        (
            "controls everywhere",
            "\u{1}H\u{7}e\u{1b}[31mllo\u{7f} \u{85}world\u{9f}.".into(),
            speaks(4.0),
        ),
        (
            "punctuation storm",
            "Wow".to_owned() + &"!?".repeat(2000),
            speaks(3.0),
        ),
        // Symbols alone are not text to speak.
        ("emoji run", "😀".repeat(1000), Refused("nothing speakable")),
        (
            "spaced emoji",
            "😀 ".repeat(1000),
            Refused("nothing speakable"),
        ),
        (
            "a few emoji in a sentence",
            "I love it 😀😀😀😀😀😀.".into(),
            speaks(6.0),
        ),
        // Among words each says "grinning face": a piece of them breaks the phoneme limit.
        (
            "emoji between words",
            "😀 a ".repeat(800),
            Refused("TTS_MAX_PHONEMES_PER_PIECE"),
        ),
        // A number too long for words: espeak-ng reads it in groups of digits.
        ("200 digits", "9".repeat(200), speaks(40.0)),
        (
            "private use only",
            "\u{e000}\u{e001}".into(),
            Refused("nothing speakable"),
        ),
        (
            "marks only",
            "\u{301}\u{301}".into(),
            Refused("nothing speakable"),
        ),
        (
            "variation selectors and tags",
            "ok\u{fe0f}\u{e0041}\u{e0042}".into(),
            speaks(2.0),
        ),
    ]
}

/// Checks one outcome against its expectation; returns its seconds of audio.
fn check(name: &str, format: AudioFormat, outcome: &Outcome, expect: Expect) -> f64 {
    match (outcome, expect) {
        (
            Outcome::Audio { seconds, skipped },
            Expect::Speaks {
                max_seconds,
                skipped: want,
            },
        ) => {
            assert!(
                *seconds > 0.05 && *seconds <= max_seconds,
                "{name} ({format:?}): {seconds} s of audio, expected (0, {max_seconds}]"
            );
            assert_eq!(*skipped, want, "{name} ({format:?}): skipped characters");
            *seconds
        }
        (Outcome::Refused { status, seconds }, Expect::Refused(says)) => {
            assert_eq!(
                status.code(),
                tonic::Code::InvalidArgument,
                "{name} ({format:?}): {status:?}"
            );
            assert!(
                status.message().contains(says),
                "{name} ({format:?}): {:?} does not say {says:?}",
                status.message()
            );
            assert!(
                !status.message().contains("::") && !status.message().contains(".rs"),
                "{status:?}"
            );
            *seconds
        }
        (outcome, expect) => panic!("{name} ({format:?}): {outcome:?}, expected {expect:?}"),
    }
}

#[tokio::test]
async fn hostile_text_in_every_format_never_fails_internally_nor_ends_empty() {
    let mut svc = start(&[]).await;
    for (name, text, expect) in cases() {
        for format in FORMATS {
            let started = Instant::now();
            let outcome = synthesize(&mut svc.client, request(&text, format)).await;
            let seconds = check(name, format, &outcome, expect);
            let elapsed = started.elapsed().as_secs_f64();
            // The work follows the audio: about a tenth of real time on two idle cores, and
            // within twice real time on a machine busy with other builds and tests.
            assert!(
                elapsed < 10.0 + 2.0 * seconds,
                "{name} ({format:?}): {elapsed:.1} s for {seconds:.1} s of audio"
            );
            eprintln!("{name} ({format:?}): {seconds:.2} s of audio in {elapsed:.2} s");
        }
    }
}

#[tokio::test]
async fn a_text_mostly_in_another_script_is_refused_with_a_mark_for_the_gateway() {
    let mut svc = start(&[]).await;
    let Outcome::Refused { status, seconds } = synthesize(
        &mut svc.client,
        request(&"日".repeat(400), AudioFormat::Wav),
    )
    .await
    else {
        panic!("not refused")
    };
    assert_eq!(seconds, 0.0);
    assert_eq!(
        status.metadata().get(REFUSAL_METADATA).unwrap(),
        REFUSAL_UNSUPPORTED_SCRIPT
    );
    assert_eq!(
        status.message(),
        "text: 400 of its 400 letters are in a script that the voice's language, English \
         (en_US), does not read"
    );
    // Nothing else carries the mark.
    let Outcome::Refused { status, .. } =
        synthesize(&mut svc.client, request("\u{e000}", AudioFormat::Wav)).await
    else {
        panic!("not refused")
    };
    assert!(status.metadata().get(REFUSAL_METADATA).is_none());
    assert_eq!(status.message(), "text: nothing speakable in text");
}

#[tokio::test]
async fn the_limits_are_settings_and_refusals_name_them() {
    let mut svc = start(&[
        ("TTS_MAX_PHONEMES_PER_PIECE", "40"),
        ("TTS_MAX_AUDIO_SECONDS", "4"),
    ])
    .await;
    // The first piece is over the phoneme limit: refused before any audio.
    let Outcome::Refused { status, seconds } = synthesize(
        &mut svc.client,
        request(
            "This first sentence has far more than forty phonemes in it, surely.",
            AudioFormat::Wav,
        ),
    )
    .await
    else {
        panic!("not refused")
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .contains("the limit is 40 a piece (TTS_MAX_PHONEMES_PER_PIECE)"),
        "{status:?}"
    );
    assert_eq!(seconds, 0.0);
    // Short pieces, but more audio than 4 s: the stream ends refused, with at most 4 s before.
    let text = "One two. Three four. Five six. Seven eight. Nine ten. Eleven twelve.".repeat(3);
    let Outcome::Refused { status, seconds } =
        synthesize(&mut svc.client, request(&text, AudioFormat::Wav)).await
    else {
        panic!("not refused")
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("more than 4 s of audio")
            && status.message().contains("TTS_MAX_AUDIO_SECONDS"),
        "{status:?}"
    );
    assert!(seconds <= 4.0, "{seconds} s sent before the refusal");
    // Within both, all is well.
    let Outcome::Audio { seconds, .. } =
        synthesize(&mut svc.client, request("One two.", AudioFormat::Wav)).await
    else {
        panic!("refused")
    };
    assert!(seconds > 0.3);
}

#[test]
fn bad_limits_are_refused_at_start() {
    for (name, value) in [
        ("TTS_MAX_PHONEMES_PER_PIECE", "0"),
        ("TTS_MAX_PHONEMES_PER_PIECE", "100000"),
        ("TTS_MAX_AUDIO_SECONDS", "0"),
        ("TTS_MAX_AUDIO_SECONDS", "many"),
    ] {
        let run =
            test_support::run_binary(env!("CARGO_BIN_EXE_tts-inference"), &[], &[(name, value)]);
        assert_eq!(run.code, Some(64), "{name}={value}: {}", run.stderr);
        assert!(run.stderr.contains(name), "{}", run.stderr);
    }
}

/// The service binary in a process of its own, so its memory is its own.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A field of `/proc/<pid>/status`, in kB.
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

/// The peak memory one request adds (the process's high-water mark during the request over its
/// resident memory just before) stays under 400 MB for the worst texts found.
#[tokio::test]
async fn one_request_adds_a_bounded_amount_of_memory_whatever_the_text() {
    let (grpc, http) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_tts-inference"))
        .env_clear()
        .envs([
            (
                "VOICES_DIR",
                test_support::voices_dir().display().to_string(),
            ),
            ("GRPC_ADDR", format!("127.0.0.1:{grpc}")),
            ("HTTP_ADDR", format!("127.0.0.1:{http}")),
            ("TTS_WORKERS", "1".into()),
            (
                "INTERNAL_AUTH_TRUSTED_KEYS",
                test_support::internal_keys().trusted().to_owned(),
            ),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || for _ in BufReader::new(stdout).lines() {});
    let process = Process(child);
    let pid = process.0.id();
    wait_ready(&format!("http://127.0.0.1:{http}"), 200).await;
    let peer = test_support::internal_keys().peer("gateway", "tts-inference", grpc);
    let mut client = TtsInferenceClient::new(peer.channel());
    synthesize(&mut client, request("Warming up.", AudioFormat::Mp3)).await;
    let baseline = status_kb(pid, "VmRSS");
    // The worst found: one 400-character piece of letters spelled one by one (each says its
    // name, about 0.4 s) at the slowest speed, 270 s of audio in a single piece, whose flows run
    // over all its frames at once; and the old worst cases.
    let spelled = "b c d f g h j k l m n p q r s t v w x z ".repeat(10);
    let worst = [
        (spelled, 0.25),
        ("日".repeat(4096), 1.0),
        ("a.".repeat(100), 1.0),
    ];
    let mut peaks = Vec::new();
    for (text, speed) in worst {
        // Resets the high-water mark to the memory in use now (Linux's clear_refs).
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
        let before = status_kb(pid, "VmRSS");
        let started = Instant::now();
        let outcome = synthesize(
            &mut client,
            SynthesizeRequest {
                speed,
                ..request(&text, AudioFormat::Mp3)
            },
        )
        .await;
        if let Outcome::Refused { status, .. } = &outcome {
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        }
        let peak = status_kb(pid, "VmHWM").saturating_sub(before) / 1024;
        eprintln!(
            "{} chars at speed {speed}: {outcome:?} in {:.1} s; peak {peak} MB over {} MB",
            text.chars().count(),
            started.elapsed().as_secs_f64(),
            baseline / 1024
        );
        peaks.push(peak);
    }
    let worst = peaks.iter().max().unwrap();
    assert!(
        *worst < 400,
        "one request added {worst} MB at its peak: {peaks:?}"
    );
    drop(process);
    tokio::time::sleep(Duration::from_millis(10)).await;
}
