//! The realtime benchmark (not a test): run with `scripts/bench-realtime`.
//!
//! Starts tts-inference, delivery-worker and the gateway in-process on loopback (as the tests
//! do) against the PostgreSQL and Redis that `scripts/test` starts, with a Twilio number
//! configured, and measures, one after the other on the same servers:
//! - the reference: `POST /v1/tts` (pcm16) of a short phrase, time to its first byte; and of
//!   "Hello." and "Thanks for calling. How can I help you today?" at the voice's own rate;
//! - `/v1/tts/realtime`: from sending the phrase's last fragment (with `flush`) to its first
//!   audio frame;
//! - a call over Media Streams (a minimal Twilio on loopback, signing as Twilio does): from
//!   `POST /v1/calls/{sid}/say` to the first μ-law frame on the stream;
//! - concurrent calls: `BENCH_CALLS` (default `1,2,3,4,6,8`) calls, each saying a ~6 s text at
//!   once; a call has a gap when a frame arrives after the moment it would be played (playback
//!   starting at its first frame, 20 ms a frame). Reports, per round, the worst lateness and the
//!   slowest call's real-time factor (the time from its first to its last frame over its audio's
//!   length).
//!
//! `BENCH_REPEAT` (default 7) repetitions of each latency; medians and maxima are printed.

#![allow(
    clippy::print_stdout,
    reason = "a benchmark reports on standard output"
)]

use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::{SinkExt as _, StreamExt as _};
use internal_rpc::Scope;
use serde_json::{Value, json};
use test_stack::{Service, Stack};
use test_support::TestDatabase;
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest as _};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";
const PUBLIC: &str = "https://voice.bench.test";
const NUMBER: &str = "+15551230000";
const PHRASE: &str = "Thank you for calling.";
const LONG: &str = "Our opening hours are from nine in the morning until six in the evening, \
                    Monday to Saturday, and from ten until four on Sundays.";

fn setting(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn stats(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "median {:.1} ms, min {:.1} ms, max {:.1} ms (n = {})",
        ms(samples[samples.len() / 2]),
        ms(samples[0]),
        ms(*samples.last().unwrap()),
        samples.len()
    )
}

fn signature(url: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, TOKEN.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(ring::hmac::sign(&key, url.as_bytes()))
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A call's media stream, as Twilio opens it.
async fn open_call(base: &str, call_sid: &str) -> Ws {
    let path = "/v1/telephony/twilio/media";
    let mut request = format!("{}{path}", base.replacen("http://", "ws://", 1))
        .into_client_request()
        .unwrap();
    let public = format!("{}{path}", PUBLIC.replacen("https://", "wss://", 1));
    request
        .headers_mut()
        .insert("x-twilio-signature", signature(&public).parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    ws.send(Message::text(
        json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}).to_string(),
    ))
    .await
    .unwrap();
    ws.send(Message::text(
        json!({"event": "start", "sequenceNumber": "1", "streamSid": format!("MZ{call_sid}"), "start": {
            "streamSid": format!("MZ{call_sid}"), "callSid": call_sid, "accountSid": "AC0",
            "tracks": ["inbound"], "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": {"tenant": "acme", "number": NUMBER, "from": "+15550000000"}}})
        .to_string(),
    ))
    .await
    .unwrap();
    ws
}

/// Reads one utterance: the arrival time and size of each frame, until its mark.
async fn frames_until_mark(ws: &mut Ws) -> Vec<(Instant, usize)> {
    let mut frames = Vec::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(120), ws.next())
            .await
            .expect("the utterance within two minutes")
            .unwrap()
            .unwrap();
        let Message::Text(text) = message else {
            continue;
        };
        let value: Value = serde_json::from_str(&text).unwrap();
        match value["event"].as_str() {
            Some("media") => {
                let payload = value["media"]["payload"].as_str().unwrap();
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(payload)
                    .unwrap();
                frames.push((Instant::now(), bytes.len()));
            }
            Some("mark") => return frames,
            _ => {}
        }
    }
}

async fn say(base: &str, key: &str, call_sid: &str, text: &str) {
    let status = test_support::http_client()
        .post(format!("{base}/v1/calls/{call_sid}/say"))
        .header("x-api-key", key)
        .json(&json!({"text": text}))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 202);
}

fn main() {
    test_stack::benchmark_main(run());
}

async fn run() {
    let repeat: usize = setting("BENCH_REPEAT", "7").parse().unwrap();
    let rounds: Vec<usize> = setting("BENCH_CALLS", "1,2,3,4,6,8")
        .split(',')
        .map(|n| n.trim().parse().unwrap())
        .collect();
    let db = TestDatabase::create().await.unwrap();
    let numbers = json!([{"number": NUMBER, "tenant": "acme"}]).to_string();
    let stack = Stack::new(&db)
        .with_tts()
        .with_delivery()
        .with_gateway()
        .setting(Service::Gateway, "LOG_LEVEL", "warn")
        .setting(Service::TtsInference, "LOG_LEVEL", "warn")
        .setting(Service::DeliveryWorker, "LOG_LEVEL", "warn")
        .setting(Service::Gateway, "RATE_LIMIT_STANDARD", "10000/s")
        .setting(Service::Gateway, "RATE_LIMIT_PER_IP", "10000/s")
        .setting(Service::Gateway, "TWILIO_AUTH_TOKEN", TOKEN)
        .setting(Service::Gateway, "PUBLIC_BASE_URL", PUBLIC)
        .setting(Service::Gateway, "TWILIO_NUMBERS", numbers)
        .setting(Service::Gateway, "REALTIME_MAX_CONNECTIONS_PER_KEY", "100")
        .start()
        .await;
    let base = stack.http_url(Service::Gateway);
    let key = stack.api_key("acme", &Scope::ALL).await;
    let client = test_support::http_client();
    println!("phrase: {PHRASE:?}");

    // Warm up: the voice, the catalogue, the connections.
    for _ in 0..2 {
        let response = client
            .post(format!("{base}/v1/tts"))
            .header("x-api-key", &key)
            .json(&json!({"text": PHRASE, "format": "pcm16"}))
            .send()
            .await
            .unwrap();
        response.bytes().await.unwrap();
    }

    // The reference: the plain stream's first byte.
    let first_bytes = |body: Value| {
        let (client, base, key) = (&client, &base, &key);
        async move {
            let mut firsts = Vec::new();
            for _ in 0..repeat {
                let sent = Instant::now();
                let mut response = client
                    .post(format!("{base}/v1/tts"))
                    .header("x-api-key", key)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                response.chunk().await.unwrap().expect("a first chunk");
                firsts.push(sent.elapsed());
                while response.chunk().await.unwrap().is_some() {}
            }
            stats(firsts)
        }
    };
    let plain = first_bytes(json!({"text": PHRASE, "format": "pcm16", "sample_rate": 16000})).await;
    println!("POST /v1/tts, time to first byte: {plain}");

    // Short first sentences at the voice's own rate, to set beside onnxruntime's first chunk
    // (`crates/voice/tests/reference/bench.sh`).
    for text in ["Hello.", "Thanks for calling. How can I help you today?"] {
        let firsts = first_bytes(json!({"text": text, "format": "pcm16"})).await;
        println!("POST /v1/tts {text:?} at 22,050 Hz, time to first byte: {firsts}");
    }

    // Realtime: from the phrase's last fragment to its first audio frame.
    let mut realtime = Vec::new();
    let (mut ws, _) = tokio_tungstenite::connect_async({
        let mut request = format!("{}/v1/tts/realtime", base.replacen("http://", "ws://", 1))
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("x-api-key", key.parse().unwrap());
        request
    })
    .await
    .unwrap();
    ws.send(Message::text(
        json!({"type": "start", "format": "pcm16", "sample_rate": 16000}).to_string(),
    ))
    .await
    .unwrap();
    for _ in 0..repeat {
        let (head, tail) = PHRASE.split_at(PHRASE.len() - 4);
        ws.send(Message::text(
            json!({"type": "text", "text": head}).to_string(),
        ))
        .await
        .unwrap();
        let sent = Instant::now();
        ws.send(Message::text(
            json!({"type": "text", "text": format!("{tail} ")}).to_string(),
        ))
        .await
        .unwrap();
        let mut first = None;
        loop {
            match ws.next().await.unwrap().unwrap() {
                Message::Binary(_) => {
                    first.get_or_insert_with(|| sent.elapsed());
                }
                Message::Text(text) => {
                    let value: Value = serde_json::from_str(&text).unwrap();
                    if value["type"] == "phrase_end" {
                        break;
                    }
                    assert_ne!(value["type"], "error", "{value}");
                }
                _ => {}
            }
        }
        realtime.push(first.expect("audio"));
    }
    ws.close(None).await.unwrap();
    println!(
        "/v1/tts/realtime, end of the phrase's text to its first audio frame: {}",
        stats(realtime)
    );

    // A call: from say to the first μ-law frame.
    let mut call = open_call(&base, "CAbench0").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut said = Vec::new();
    for _ in 0..repeat {
        let sent = Instant::now();
        say(&base, &key, "CAbench0", PHRASE).await;
        let frames = frames_until_mark(&mut call).await;
        said.push(frames[0].0 - sent);
    }
    println!(
        "POST /v1/calls/{{sid}}/say to the first μ-law frame: {}",
        stats(said)
    );
    drop(call);

    // Concurrent calls, each saying LONG at once.
    for calls in rounds {
        let mut streams = Vec::new();
        for i in 0..calls {
            streams.push(open_call(&base, &format!("CAround{calls}x{i}")).await);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut readers = Vec::new();
        for (i, mut ws) in streams.into_iter().enumerate() {
            let sid = format!("CAround{calls}x{i}");
            let (base, key) = (base.clone(), key.clone());
            readers.push(tokio::spawn(async move {
                let sent = Instant::now();
                say(&base, &key, &sid, LONG).await;
                let frames = frames_until_mark(&mut ws).await;
                (sent, frames)
            }));
        }
        let mut worst_late = Duration::ZERO;
        let mut worst_rtf = 0.0f64;
        let mut worst_start = Duration::ZERO;
        let mut gaps = 0;
        for reader in readers {
            let (sent, frames) = reader.await.unwrap();
            let first = frames[0].0;
            worst_start = worst_start.max(first - sent);
            let mut played = Duration::ZERO;
            let mut late_here = Duration::ZERO;
            for (at, bytes) in &frames {
                let due = first + played;
                late_here = late_here.max(at.saturating_duration_since(due));
                played += Duration::from_secs_f64(*bytes as f64 / 8000.0);
            }
            if late_here > Duration::ZERO {
                gaps += 1;
            }
            worst_late = worst_late.max(late_here);
            let span = frames.last().unwrap().0 - first;
            worst_rtf = worst_rtf.max(span.as_secs_f64() / played.as_secs_f64());
        }
        println!(
            "{calls} concurrent calls: {gaps} with a gap (worst lateness {:.0} ms), slowest real-time factor {:.2}, worst say-to-first-frame {:.0} ms",
            worst_late.as_secs_f64() * 1000.0,
            worst_rtf,
            worst_start.as_secs_f64() * 1000.0
        );
    }
    drop(stack);
}
