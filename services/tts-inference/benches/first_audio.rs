//! Speech through the service (not a test): run with
//! `cargo bench -p tts-inference --bench first_audio`.
//!
//! Starts tts-inference in this process on loopback with the default voice, then measures over
//! gRPC, as the gateway calls it:
//! - time to first audio: from sending `Synthesize` to receiving the first audio message, for a
//!   request whose first sentence is short ("Hello.") followed by a longer one;
//! - real-time factor for a long paragraph: wall time of the whole stream divided by the duration
//!   of the audio it carried (pcm16);
//! - throughput under load: four paragraphs requested at once, as audio seconds made per wall
//!   second, with the slowest first audio. Set `TTS_WORKERS` to compare worker counts (default:
//!   the service's).
//!
//! The voices folder comes from `TEST_VOICES_DIR` (as for the tests). Figures are printed with
//! their parameters; record them in docs/benchmarks.md.

#![allow(
    clippy::print_stdout,
    reason = "a benchmark reports on standard output"
)]

use std::time::{Duration, Instant};

use lifecycle::Signals;
use sonora_proto::tts::v1::{
    AudioFormat, SynthesizeRequest, tts_inference_client::TtsInferenceClient,
};
use tts_inference::{Application, Settings};

const PARAGRAPH: &str = "The old lighthouse stood at the edge of the cliff, its white paint peeling in the salt wind. \
For more than a century it had guided ships through the narrow channel below. \
Every evening the keeper climbed the spiral stairs to light the great lamp. \
Sailors far out at sea would see the beam sweep across the dark water. \
Now the light is automatic, and the keeper's cottage has become a small museum. \
Visitors come in the summer to read the old logbooks and look out over the waves.";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    test_stack::benchmark_main(run());
}

async fn run() {
    let voices = std::env::var("TEST_VOICES_DIR").unwrap_or_else(|_| {
        format!(
            "{}/.cache/sonora/voices",
            std::env::var("HOME").unwrap_or_default()
        )
    });
    // TTS_WORKERS from the environment, else the service's default.
    let workers = std::env::var("TTS_WORKERS").ok();
    let mut pairs = vec![
        ("VOICES_DIR", voices.as_str()),
        ("GRPC_ADDR", "127.0.0.1:0"),
        ("HTTP_ADDR", "127.0.0.1:0"),
        (
            "INTERNAL_AUTH_TRUSTED_KEYS",
            test_support::internal_keys().trusted(),
        ),
    ];
    pairs.extend(workers.as_deref().map(|w| ("TTS_WORKERS", w)));
    let src = settings::Sources::from_pairs(pairs).unwrap();
    let settings = Settings::load(&src).unwrap();
    let workers = settings.workers;
    let signals = Signals::new();
    let app = Application::build(settings, signals.clone()).unwrap();
    let http = format!("http://127.0.0.1:{}/ready", app.http_port());
    let grpc = app.grpc_port();
    tokio::spawn(app.stopped());
    let started = Instant::now();
    let client_http = test_support::http_client();
    while client_http
        .get(&http)
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
        != 200
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "voice loaded and service ready in {:.0?}; {workers} inference worker(s)",
        started.elapsed()
    );
    let peer = test_support::internal_keys().peer("gateway", "tts-inference", grpc);
    let mut client = TtsInferenceClient::new(peer.channel());
    let request = |text: &str| SynthesizeRequest {
        text: text.to_owned(),
        format: AudioFormat::Pcm16.into(),
        ..Default::default()
    };

    // Warm up: the first inference pays for lazy initialisation.
    let mut warm = client
        .synthesize(request("Warming up."))
        .await
        .unwrap()
        .into_inner();
    while warm.message().await.unwrap().is_some() {}

    let mut firsts = Vec::new();
    for _ in 0..10 {
        let sent = Instant::now();
        let mut stream = client
            .synthesize(request("Hello. This second sentence is longer, so that the first one has to arrive on its own."))
            .await
            .unwrap()
            .into_inner();
        stream.message().await.unwrap().unwrap();
        firsts.push(sent.elapsed());
        // Read to the end, so the next run does not queue behind this one.
        while stream.message().await.unwrap().is_some() {}
    }
    firsts.sort();
    println!(
        "time to first audio, short first sentence (pcm16, 10 runs): median {:.0?}, p90 {:.0?}, min {:.0?}",
        percentile(&firsts, 0.5),
        percentile(&firsts, 0.9),
        firsts[0]
    );

    for _ in 0..3 {
        let sent = Instant::now();
        let mut stream = client
            .synthesize(request(PARAGRAPH))
            .await
            .unwrap()
            .into_inner();
        let (mut bytes, mut rate, mut first) = (0usize, 22_050u32, None);
        while let Some(message) = stream.message().await.unwrap() {
            first.get_or_insert_with(|| sent.elapsed());
            bytes += message.audio.len();
            rate = message.sample_rate;
        }
        let wall = sent.elapsed();
        let audio = bytes as f64 / 2.0 / f64::from(rate);
        println!(
            "long paragraph ({} chars): {audio:.1} s of audio in {wall:.2?}, real-time factor {:.3}, first audio {:.0?}",
            PARAGRAPH.len(),
            wall.as_secs_f64() / audio,
            first.unwrap_or_default()
        );
    }
    // Four requests at once: the inference pool's threads share the machine's cores.
    let sent = Instant::now();
    let runs = (0..4).map(|_| {
        let mut client = client.clone();
        let text = request(PARAGRAPH);
        tokio::spawn(async move {
            let mut stream = client.synthesize(text).await.unwrap().into_inner();
            let (mut bytes, mut first) = (0usize, None);
            while let Some(message) = stream.message().await.unwrap() {
                first.get_or_insert_with(|| sent.elapsed());
                bytes += message.audio.len();
            }
            (bytes, first.unwrap_or_default())
        })
    });
    let mut audio = 0.0;
    let mut slowest_first = Duration::ZERO;
    for run in runs.collect::<Vec<_>>() {
        let (bytes, first) = run.await.unwrap();
        audio += bytes as f64 / 2.0 / 22_050.0;
        slowest_first = slowest_first.max(first);
    }
    let wall = sent.elapsed();
    println!(
        "4 paragraphs at once: {audio:.1} s of audio in {wall:.2?}, {:.1} audio seconds per second, slowest first audio {slowest_first:.0?}",
        audio / wall.as_secs_f64()
    );
    signals.shutdown.cancel();
}
