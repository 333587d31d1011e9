//! Synthesize over gRPC: every format decodes back, streaming order, limits, queue, cancellation.

use std::{
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use internal_rpc::PeerChannel;
use lifecycle::Signals;
use sonora_proto::tts::v1::{
    AudioFormat, SynthesizeRequest, tts_inference_client::TtsInferenceClient,
};
use test_support::{eventually, sources, wait_ready};
use tts_inference::{Application, Settings};

pub struct Service {
    pub client: TtsInferenceClient<PeerChannel>,
    pub http: String,
    pub signals: Signals,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.signals.shutdown.cancel();
    }
}

pub async fn start(extra: &[(&str, &str)]) -> Service {
    let mut pairs = vec![(
        "VOICES_DIR",
        test_support::voices_dir().display().to_string(),
    )];
    pairs.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    let signals = Signals::new();
    let app =
        Application::build(Settings::load(&sources(pairs)).unwrap(), signals.clone()).unwrap();
    let (grpc, http) = (
        app.grpc_port(),
        format!("http://127.0.0.1:{}", app.http_port()),
    );
    tokio::spawn(app.stopped());
    wait_ready(&http, 200).await;
    let peer = test_support::internal_keys().peer("gateway", "tts-inference", grpc);
    Service {
        client: TtsInferenceClient::new(peer.channel()),
        http,
        signals,
    }
}

pub fn request(text: &str, format: AudioFormat) -> SynthesizeRequest {
    SynthesizeRequest {
        text: text.to_owned(),
        format: format.into(),
        // Deterministic audio, so formats can be compared with each other.
        noise_scale: Some(0.0),
        noise_w: Some(0.0),
        ..Default::default()
    }
}

/// The whole stream, with the sample rate it announced and the sentence index of each message
/// (which must never go back).
async fn collect(
    client: &mut TtsInferenceClient<PeerChannel>,
    req: SynthesizeRequest,
) -> (Vec<u8>, u32, Vec<u32>) {
    let mut stream = client.synthesize(req).await.unwrap().into_inner();
    let (mut bytes, mut rate, mut indexes, mut done) = (Vec::new(), 0, Vec::new(), false);
    while let Some(message) = stream.message().await.unwrap() {
        bytes.extend(message.audio);
        rate = message.sample_rate;
        indexes.push(message.sentence_index);
        done = message.done;
    }
    assert!(done, "the stream ends with a done message");
    assert!(indexes.is_sorted(), "sentence indexes go back: {indexes:?}");
    (bytes, rate, indexes)
}

/// Decodes with the ffmpeg program; returns seconds of audio at the stream's rate.
pub fn decoded_seconds(bytes: &[u8], format: AudioFormat, rate: u32) -> f64 {
    // Unique per call: tests decode at the same time.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!(
        "tts-it-{}-{call}-{}",
        std::process::id(),
        format.as_str_name()
    ));
    std::fs::write(&path, bytes).unwrap();
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-v", "error", "-nostdin"]);
    match format {
        AudioFormat::Pcm16 => {
            cmd.args(["-f", "s16le", "-ar", &rate.to_string(), "-ac", "1"]);
        }
        AudioFormat::Mulaw => {
            cmd.args(["-f", "mulaw", "-ar", "8000", "-ac", "1"]);
        }
        _ => {}
    }
    let out = cmd
        .arg("-i")
        .arg(&path)
        .args(["-f", "s16le", "-ac", "1", "-ar", &rate.to_string(), "-"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{format:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(&path);
    out.stdout.len() as f64 / 2.0 / f64::from(rate)
}

#[tokio::test]
async fn every_format_decodes_to_the_same_speech() {
    let mut svc = start(&[]).await;
    let text = "The quick brown fox jumps over the lazy dog. It was a bright cold day in April.";
    let (pcm, pcm_rate, indexes) =
        collect(&mut svc.client, request(text, AudioFormat::Pcm16)).await;
    assert_eq!(pcm_rate, 22_050);
    // Two sentences; the first, the request's first, comes in more than one message (its first
    // short window, then the rest), and a final message closes the stream.
    assert_eq!(indexes.last(), Some(&1), "{indexes:?}");
    assert!(
        indexes.iter().filter(|&&i| i == 0).count() > 1,
        "{indexes:?}"
    );
    let reference = decoded_seconds(&pcm, AudioFormat::Pcm16, pcm_rate);
    assert!(
        (3.0..12.0).contains(&reference),
        "{reference} s of speech for two sentences"
    );
    for (format, rate, slack) in [
        (AudioFormat::Wav, 22_050, 0.001),
        (AudioFormat::Flac, 22_050, 0.001),
        (AudioFormat::Mp3, 22_050, 0.15),
        (AudioFormat::Opus, 48_000, 0.02),
        (AudioFormat::Mulaw, 8_000, 0.002),
        // ADTS keeps AAC's 1,024 priming samples and the last frame's padding.
        (AudioFormat::Aac, 22_050, 0.1),
    ] {
        let (bytes, announced, _) = collect(&mut svc.client, request(text, format)).await;
        assert_eq!(announced, rate, "{format:?}");
        let seconds = decoded_seconds(&bytes, format, rate);
        assert!(
            (seconds - reference).abs() <= slack,
            "{format:?}: {seconds} s against {reference} s"
        );
    }
    // A chosen rate, resampled by swresample.
    let mut req = request(text, AudioFormat::Wav);
    req.sample_rate = 16_000;
    let (bytes, announced, _) = collect(&mut svc.client, req).await;
    assert_eq!(announced, 16_000);
    assert!((decoded_seconds(&bytes, AudioFormat::Wav, 16_000) - reference).abs() < 0.002);
}

#[tokio::test]
async fn bad_requests_are_refused_before_any_work() {
    let mut svc = start(&[]).await;
    let c = &mut svc.client;
    let long = "word ".repeat(1000);
    let cases = [
        (
            request(&long, AudioFormat::Wav),
            tonic::Code::InvalidArgument,
        ),
        (
            request("  ", AudioFormat::Wav),
            tonic::Code::InvalidArgument,
        ),
        // Punctuation alone: nothing to speak.
        (
            request("... ?! --", AudioFormat::Wav),
            tonic::Code::InvalidArgument,
        ),
        (
            SynthesizeRequest {
                speed: 5.0,
                ..request("Hi.", AudioFormat::Wav)
            },
            tonic::Code::InvalidArgument,
        ),
        (
            SynthesizeRequest {
                noise_w: Some(3.0),
                ..request("Hi.", AudioFormat::Wav)
            },
            tonic::Code::InvalidArgument,
        ),
        (
            SynthesizeRequest {
                sample_rate: 16_000,
                ..request("Hi.", AudioFormat::Mulaw)
            },
            tonic::Code::InvalidArgument,
        ),
        (
            SynthesizeRequest {
                voice: "xx-none".into(),
                ..request("Hi.", AudioFormat::Wav)
            },
            tonic::Code::NotFound,
        ),
        (
            SynthesizeRequest {
                voice: "../etc".into(),
                ..request("Hi.", AudioFormat::Wav)
            },
            tonic::Code::InvalidArgument,
        ),
    ];
    for (req, code) in cases {
        let Err(status) = c.synthesize(req).await else {
            panic!("not refused at once")
        };
        assert_eq!(status.code(), code, "{status:?}");
    }
    // A speaker the voice does not have is refused in the stream.
    let mut stream = c
        .synthesize(SynthesizeRequest {
            speaker: Some(3),
            ..request("Hi.", AudioFormat::Wav)
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        stream.message().await.unwrap_err().code(),
        tonic::Code::NotFound
    );
}

#[tokio::test]
async fn a_full_queue_answers_resource_exhausted_and_recovers() {
    let svc = start(&[("TTS_WORKERS", "1"), ("TTS_QUEUE_CAPACITY", "1")]).await;
    let long = "This sentence keeps the only inference thread busy for a while. ".repeat(8);
    // Hold two streams open without reading them: one running, one queued.
    let mut held = Vec::new();
    let mut exhausted = 0;
    for _ in 0..4 {
        let mut client = svc.client.clone();
        match client.synthesize(request(&long, AudioFormat::Pcm16)).await {
            Ok(stream) => held.push(stream.into_inner()),
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
                exhausted += 1;
            }
        }
    }
    assert!(
        exhausted >= 2,
        "only {exhausted} of 4 refused with one thread and one queue slot"
    );
    // Clients that leave free the thread; new work is accepted again.
    drop(held);
    let client = svc.client.clone();
    let bytes = eventually(Duration::from_secs(60), "the queue to accept again", || {
        let mut client = client.clone();
        async move {
            let mut stream = match client
                .synthesize(request("Back to work.", AudioFormat::Wav))
                .await
            {
                Ok(stream) => stream.into_inner(),
                Err(status) if status.code() == tonic::Code::ResourceExhausted => return None,
                Err(status) => panic!("{status:?}"),
            };
            let mut bytes = Vec::new();
            while let Some(message) = stream.message().await.unwrap() {
                bytes.extend(message.audio);
            }
            Some(bytes)
        }
    })
    .await;
    assert!(bytes.len() > 44);
    let metrics = test_support::http_client()
        .get(format!("{}/metrics", svc.http))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("tts_cancelled_total"), "{metrics}");
    assert!(
        metrics.contains("tts_model_loaded{voice=\"en_US-joe-medium\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tts_time_to_first_audio_seconds_count"),
        "{metrics}"
    );
}

/// Events from the service's own log and from the client, in the order they happened.
#[derive(Clone, Default)]
struct EventLog(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for EventLog {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Index(Option<u64>, bool);
        impl tracing::field::Visit for Index {
            fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
                if field.name() == "sentence_index" {
                    self.0 = Some(value);
                }
            }
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                if field.name() == "message" && value == "audio synthesized" {
                    self.1 = true;
                }
            }
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" && format!("{value:?}") == "audio synthesized" {
                    self.1 = true;
                }
            }
        }
        let mut visit = Index(None, false);
        event.record(&mut visit);
        if let (Some(index), true) = (visit.0, visit.1) {
            self.0.lock().unwrap().push(format!("synthesized {index}"));
        }
    }
}

#[tokio::test]
async fn the_first_sentence_arrives_before_the_second_is_synthesized() {
    use tracing_subscriber::layer::SubscriberExt as _;
    let log = EventLog::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(log.clone()))
        .unwrap();
    let mut svc = start(&[]).await;
    // The first sentence is about three seconds long: several decoder windows.
    let text = "The first sentence is long enough to need more than one window. Then a second \
                one follows it. A third one is here. The fourth sentence is a little longer \
                than the others. And this is the fifth.";
    let mut stream = svc
        .client
        .synthesize(request(text, AudioFormat::Opus))
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    log.0
        .lock()
        .unwrap()
        .push(format!("received {}", first.sentence_index));
    let mut last = first.sentence_index;
    while let Some(message) = stream.message().await.unwrap() {
        last = message.sentence_index;
    }
    assert_eq!(last, 4, "five sentences");
    let events = log.0.lock().unwrap().clone();
    let position = |what: &str| {
        events
            .iter()
            .position(|e| e == what)
            .unwrap_or_else(|| panic!("{what} missing: {events:?}"))
    };
    // The first part of sentence 0 is made, then received, while the rest of sentence 0 and
    // all of sentence 1 are still to be synthesized.
    assert!(
        position("synthesized 0") < position("received 0"),
        "{events:?}"
    );
    let last_of_first = events.iter().rposition(|e| e == "synthesized 0").unwrap();
    assert!(
        position("received 0") < last_of_first,
        "parts within a sentence are streamed: {events:?}"
    );
    assert!(
        position("received 0") < position("synthesized 1"),
        "{events:?}"
    );
}
