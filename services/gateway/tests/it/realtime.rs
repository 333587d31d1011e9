//! `/v1/tts/realtime` over a real WebSocket (tokio-tungstenite) against the real gateway and
//! tts-inference: text sent a few characters at a time is heard as the same words as the whole
//! text sent at once (Whisper tiny.en), the first audio comes before the last fragment is sent,
//! word timings and usage come back; and careless or hostile clients are refused with a JSON
//! error and a proper close status.

#![allow(
    clippy::print_stdout,
    reason = "the transcripts and timings are the evidence, printed with --no-capture"
)]

use std::{
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use futures::{SinkExt as _, StreamExt as _};
use internal_rpc::Scope;
use serde_json::{Value, json};
use test_stack::{Service, Stack};
use test_support::TestDatabase;
use tokio_tungstenite::tungstenite::{
    Message, client::IntoClientRequest as _, protocol::frame::coding::CloseCode,
};

pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The listener, loaded once per test process and shared (it is not cheap).
pub(crate) fn listener() -> Arc<Mutex<listener::Listener>> {
    static LISTENER: OnceLock<Arc<Mutex<listener::Listener>>> = OnceLock::new();
    LISTENER
        .get_or_init(|| {
            let dir = listener::default_model_dir();
            listener::ensure_model(&dir).expect("the Whisper model is fetched");
            Arc::new(Mutex::new(
                listener::Listener::load(&dir).expect("the Whisper model loads"),
            ))
        })
        .clone()
}

/// What Whisper hears in `samples`.
pub(crate) async fn transcribe(samples: Vec<f32>, rate: u32) -> String {
    tokio::task::spawn_blocking(move || {
        let listener = listener();
        let mut listener = listener.lock().unwrap();
        listener.transcribe(&samples, rate).expect("transcribes")
    })
    .await
    .unwrap()
}

pub(crate) fn pcm16_samples(pcm: &[u8]) -> Vec<f32> {
    pcm.chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect()
}

/// Decodes raw μ-law at 8 kHz with audio-codec (FFmpeg's decoder), through a WAV file of format
/// 7 (ITU G.711 μ-law), as a listener would.
pub(crate) fn mulaw_samples(mulaw: &[u8]) -> Vec<f32> {
    let mut wav = Vec::with_capacity(mulaw.len() + 58);
    let len = u32::try_from(mulaw.len()).unwrap();
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(50 + len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&18u32.to_le_bytes());
    wav.extend_from_slice(&7u16.to_le_bytes()); // WAVE_FORMAT_MULAW
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&8000u32.to_le_bytes());
    wav.extend_from_slice(&8000u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes());
    wav.extend_from_slice(&8u16.to_le_bytes());
    wav.extend_from_slice(&0u16.to_le_bytes());
    wav.extend_from_slice(b"fact");
    wav.extend_from_slice(&4u32.to_le_bytes());
    wav.extend_from_slice(&len.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&len.to_le_bytes());
    wav.extend_from_slice(mulaw);
    let path = std::env::temp_dir().join(format!("sonora-mulaw-{}.wav", uuid::Uuid::new_v4()));
    std::fs::write(&path, &wav).unwrap();
    let decoded = audio_codec::process::decode_file(
        &path,
        audio_codec::process::DecodeLimits {
            max_duration: Duration::from_secs(600),
        },
    );
    let _ = std::fs::remove_file(&path);
    let decoded = decoded.expect("μ-law decodes");
    assert_eq!((decoded.rate, decoded.channels), (8000, 1));
    decoded.samples
}

pub(crate) fn ws_url(http_base: &str, path: &str) -> String {
    format!("{}{path}", http_base.replacen("http://", "ws://", 1))
}

/// Opens the realtime WebSocket, with `headers` on the upgrade request.
pub(crate) async fn open(base: &str, headers: &[(&str, &str)]) -> Ws {
    try_open(base, headers).await.expect("the upgrade succeeds")
}

pub(crate) async fn try_open(
    base: &str,
    headers: &[(&str, &str)],
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut request = ws_url(base, "/v1/tts/realtime")
        .into_client_request()
        .unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(ws, _)| ws)
}

pub(crate) async fn send(ws: &mut Ws, message: Value) {
    ws.send(Message::text(message.to_string())).await.unwrap();
}

/// The next JSON text message, skipping audio.
async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .expect("a message within a minute")
            .expect("the stream is open")
            .expect("a valid frame");
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

/// Reads until the error message and the close: the error's code and the close status.
async fn refusal(ws: &mut Ws) -> (String, Option<CloseCode>) {
    let mut code = String::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("an answer within 30 s");
        match message {
            Some(Ok(Message::Text(text))) => {
                let value: Value = serde_json::from_str(&text).unwrap();
                if value["type"] == "error" {
                    assert!(
                        value["message"].as_str().is_some_and(|m| !m.is_empty()),
                        "{value}"
                    );
                    code = value["code"].as_str().unwrap().to_owned();
                }
            }
            Some(Ok(Message::Close(frame))) => return (code, frame.map(|f| f.code)),
            Some(Ok(_)) => {}
            None | Some(Err(_)) => return (code, None),
        }
    }
}

/// Everything a session sent back, with when it came.
#[derive(Debug, Default)]
struct Heard {
    audio: Vec<u8>,
    first_audio: Option<Instant>,
    words: Vec<Value>,
    phrases: Vec<String>,
    done: Option<Value>,
    close: Option<CloseCode>,
    sample_rate: u32,
}

async fn read_all(mut stream: futures::stream::SplitStream<Ws>) -> Heard {
    let mut heard = Heard::default();
    while let Some(message) = tokio::time::timeout(Duration::from_secs(120), stream.next())
        .await
        .expect("the session ends within two minutes")
    {
        match message.expect("a valid frame") {
            Message::Binary(bytes) => {
                heard.first_audio.get_or_insert_with(Instant::now);
                heard.audio.extend_from_slice(&bytes);
            }
            Message::Text(text) => {
                let value: Value = serde_json::from_str(&text).unwrap();
                match value["type"].as_str().unwrap() {
                    "phrase" => {
                        heard
                            .phrases
                            .push(value["text"].as_str().unwrap().to_owned());
                        heard.sample_rate =
                            u32::try_from(value["sample_rate"].as_u64().unwrap()).unwrap();
                    }
                    "words" => heard
                        .words
                        .extend(value["words"].as_array().unwrap().clone()),
                    "done" => heard.done = Some(value),
                    "error" => panic!("the session failed: {value}"),
                    _ => {}
                }
            }
            Message::Close(frame) => {
                heard.close = frame.map(|f| f.code);
                break;
            }
            _ => {}
        }
    }
    heard
}

async fn gateway(settings: &[(&str, &str)]) -> (Stack, String, String) {
    let db = TestDatabase::create().await.unwrap();
    let mut builder = Stack::new(&db).with_tts().with_delivery().with_gateway();
    for (name, value) in settings {
        builder = builder.setting(Service::Gateway, name, *value);
    }
    let stack = builder.start().await;
    let key = stack.api_key("acme", &Scope::ALL).await;
    let base = stack.http_url(Service::Gateway);
    // Keep the database alive as long as the stack.
    std::mem::forget(db);
    (stack, base, key)
}

const TEXT: &str = "Thank you for calling the city library. Our opening hours are from nine in \
                    the morning until six in the evening. Please hold while we find a librarian \
                    for you. We will be with you in a moment.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_streamed_in_fragments_is_heard_like_the_whole_text() {
    let (_stack, base, key) = gateway(&[]).await;

    // As a language model writes: three characters every 70 ms (slower than most models, so
    // that a first phrase synthesised on a loaded machine still beats the last fragment), with
    // word timings.
    let ws = open(&base, &[("x-api-key", &key)]).await;
    let (mut sink, mut stream) = ws.split();
    sink.send(Message::text(
        json!({"type": "start", "format": "pcm16", "sample_rate": 16000, "timestamps": true})
            .to_string(),
    ))
    .await
    .unwrap();
    let ready = loop {
        if let Some(Ok(Message::Text(text))) = stream.next().await {
            break serde_json::from_str::<Value>(&text).unwrap();
        }
    };
    assert_eq!(ready["type"], "ready", "{ready}");
    assert_eq!(ready["sample_rate"], 16000);
    let reader = tokio::spawn(read_all(stream));
    let chars: Vec<char> = TEXT.chars().collect();
    let sending = Instant::now();
    for piece in chars.chunks(3) {
        let piece: String = piece.iter().collect();
        sink.send(Message::text(
            json!({"type": "text", "text": piece}).to_string(),
        ))
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(70)).await;
    }
    let last_sent = Instant::now();
    sink.send(Message::text(json!({"type": "close"}).to_string()))
        .await
        .unwrap();
    let streamed = reader.await.unwrap();
    let first_audio = streamed.first_audio.expect("audio came");
    println!(
        "first audio {:?} after the first fragment, {:?} before the last one was sent",
        first_audio - sending,
        last_sent.saturating_duration_since(first_audio)
    );
    assert!(
        first_audio < last_sent,
        "the first audio ({:?}) came after the last fragment ({:?})",
        first_audio - sending,
        last_sent - sending
    );
    assert_eq!(streamed.close, Some(CloseCode::Normal));
    assert_eq!(
        streamed.phrases,
        [
            "Thank you for calling the city library.",
            "Our opening hours are from nine in the morning until six in the evening.",
            "Please hold while we find a librarian for you.",
            "We will be with you in a moment."
        ]
    );
    let done = streamed.done.clone().expect("a done message");
    assert_eq!(done["usage"]["phrases"], 4, "{done}");
    let characters: usize = streamed.phrases.iter().map(|p| p.chars().count()).sum();
    assert_eq!(done["usage"]["characters"], characters, "{done}");
    let seconds = streamed.audio.len() as f64 / 2.0 / 16000.0;
    let metered = done["usage"]["audio_seconds"].as_f64().unwrap();
    assert!((metered - seconds).abs() < 0.05, "{metered} vs {seconds}");
    // Word timings: every word, in order, on one clock across the phrases.
    let words: Vec<&str> = streamed
        .words
        .iter()
        .map(|w| w["word"].as_str().unwrap())
        .collect();
    let written: Vec<String> = TEXT
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()).to_owned())
        .collect();
    assert_eq!(words, written);
    let starts: Vec<f64> = streamed
        .words
        .iter()
        .map(|w| w["start"].as_f64().unwrap())
        .collect();
    assert!(starts.windows(2).all(|w| w[0] <= w[1]), "{starts:?}");
    assert!(*starts.last().unwrap() > 5.0 && *starts.last().unwrap() < seconds);

    // The whole text at once, with the key in the first message (as a browser sends it) and the
    // audio as base64 JSON.
    let mut ws = open(&base, &[]).await;
    send(
        &mut ws,
        json!({"type": "start", "api_key": key, "format": "pcm16", "sample_rate": 16000, "audio": "base64"}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["type"], "ready");
    send(&mut ws, json!({"type": "text", "text": TEXT})).await;
    send(&mut ws, json!({"type": "close"})).await;
    let mut whole = Vec::new();
    loop {
        let message = next_json(&mut ws).await;
        match message["type"].as_str().unwrap() {
            "audio" => {
                use base64::Engine as _;
                whole.extend(
                    base64::engine::general_purpose::STANDARD
                        .decode(message["audio"].as_str().unwrap())
                        .unwrap(),
                );
            }
            "done" => break,
            "error" => panic!("{message}"),
            _ => {}
        }
    }

    let heard_streamed = transcribe(pcm16_samples(&streamed.audio), 16000).await;
    let heard_whole = transcribe(pcm16_samples(&whole), 16000).await;
    let wer_streamed = listener::word_error_rate(TEXT, &heard_streamed);
    let wer_whole = listener::word_error_rate(TEXT, &heard_whole);
    println!("streamed: {heard_streamed:?} (WER {wer_streamed:.3})");
    println!("whole:    {heard_whole:?} (WER {wer_whole:.3})");
    assert!(wer_streamed <= 0.10, "{heard_streamed:?}");
    assert!(wer_whole <= 0.10, "{heard_whole:?}");
    assert!(
        listener::word_error_rate(&heard_whole, &heard_streamed) <= 0.10,
        "{heard_whole:?} vs {heard_streamed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn careless_and_hostile_clients_are_refused_with_a_code_and_a_close_status() {
    let (_stack, base, key) = gateway(&[
        ("REALTIME_IDLE_TIMEOUT", "1s"),
        ("REALTIME_MAX_CONNECTIONS_PER_KEY", "2"),
        ("REALTIME_MAX_TEXT_CHARS", "500"),
    ])
    .await;
    let keyed = [("x-api-key", key.as_str())];

    // A key that is not valid is refused before the upgrade, as on every route.
    match try_open(&base, &[("x-api-key", "cw_live_nope")]).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
        }
        other => panic!("{:?}", other.map(|_| ())),
    }

    let cases: Vec<(&str, Message, &str, CloseCode)> = vec![
        (
            "not JSON",
            Message::text("hello"),
            "invalid_message",
            CloseCode::Invalid,
        ),
        (
            "text first",
            Message::text(json!({"type": "text", "text": "hi"}).to_string()),
            "invalid_message",
            CloseCode::Invalid,
        ),
        (
            "an unknown field",
            Message::text(json!({"type": "start", "voise": "x"}).to_string()),
            "invalid_message",
            CloseCode::Invalid,
        ),
        (
            "a format that does not join",
            Message::text(json!({"type": "start", "format": "mp3"}).to_string()),
            "invalid_message",
            CloseCode::Invalid,
        ),
        (
            "binary garbage",
            Message::binary(vec![0xff, 0x00, 0x13, 0x37]),
            "unsupported_data",
            CloseCode::Unsupported,
        ),
        (
            "an oversized frame",
            Message::text("x".repeat(500 * 6 + 5000)),
            "message_too_large",
            CloseCode::Size,
        ),
    ];
    for (what, first, code, close) in cases {
        let mut ws = open(&base, &keyed).await;
        ws.send(first).await.unwrap();
        assert_eq!(
            refusal(&mut ws).await,
            (code.to_owned(), Some(close)),
            "{what}"
        );
    }

    // An unknown voice: tts-inference decides (as for /v1/tts), at the first phrase.
    let mut ws = open(&base, &keyed).await;
    send(
        &mut ws,
        json!({"type": "start", "voice": "xx_XX-nobody-low"}),
    )
    .await;
    assert_eq!(next_json(&mut ws).await["type"], "ready");
    send(&mut ws, json!({"type": "text", "text": "Hello there."})).await;
    send(&mut ws, json!({"type": "flush"})).await;
    assert_eq!(
        refusal(&mut ws).await,
        ("not_found".to_owned(), Some(CloseCode::Policy))
    );

    // No key anywhere.
    let mut ws = open(&base, &[]).await;
    send(&mut ws, json!({"type": "start"})).await;
    assert_eq!(
        refusal(&mut ws).await,
        ("unauthorized".to_owned(), Some(CloseCode::Policy))
    );
    // A fragment over REALTIME_MAX_TEXT_CHARS, after a good start.
    let mut ws = open(&base, &keyed).await;
    send(&mut ws, json!({"type": "start"})).await;
    assert_eq!(next_json(&mut ws).await["type"], "ready");
    send(&mut ws, json!({"type": "text", "text": "a".repeat(501)})).await;
    assert_eq!(
        refusal(&mut ws).await,
        ("message_too_large".to_owned(), Some(CloseCode::Size))
    );
    // Silence: no start, then no message after it.
    let mut ws = open(&base, &keyed).await;
    let before = Instant::now();
    assert_eq!(
        refusal(&mut ws).await,
        ("idle_timeout".to_owned(), Some(CloseCode::Policy))
    );
    assert!(before.elapsed() >= Duration::from_millis(900));
    let mut ws = open(&base, &keyed).await;
    send(&mut ws, json!({"type": "start"})).await;
    assert_eq!(next_json(&mut ws).await["type"], "ready");
    assert_eq!(
        refusal(&mut ws).await,
        ("idle_timeout".to_owned(), Some(CloseCode::Policy))
    );

    // Two connections per key; the third is refused until one closes.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut ws = open(&base, &keyed).await;
        send(&mut ws, json!({"type": "start"})).await;
        assert_eq!(next_json(&mut ws).await["type"], "ready");
        held.push(ws);
    }
    let mut third = open(&base, &keyed).await;
    send(&mut third, json!({"type": "start"})).await;
    assert_eq!(
        refusal(&mut third).await,
        ("too_many_connections".to_owned(), Some(CloseCode::Again))
    );
    let mut first = held.remove(0);
    first.close(None).await.unwrap();
    drop(first);
    test_support::eventually(Duration::from_secs(10), "a place again", || async {
        let mut ws = open(&base, &keyed).await;
        send(&mut ws, json!({"type": "start"})).await;
        (next_json(&mut ws).await["type"] == "ready").then_some(())
    })
    .await;
}
