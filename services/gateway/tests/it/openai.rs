//! `/v1/audio/speech` as OpenAI's own Python SDK calls it (`openai_sdk.py`, with only
//! `base_url` and `api_key` changed): every voice name and every `response_format`, plain and
//! with `with_streaming_response`, decoded here with audio-codec; server-sent events; and
//! refusals that the SDK raises as `BadRequestError` with the message naming the field.
//!
//! The SDK is the pinned PyPI release `scripts/test` installs into a venv (`install_openai_sdk`
//! in `scripts/lib/setup.sh`) and names in `TEST_OPENAI_PYTHON`.

use std::{path::PathBuf, time::Duration};

use audio_codec::process::{DecodeLimits, decode_file};
use base64::Engine as _;
use internal_rpc::Scope;
use serde_json::{Value, json};
use test_stack::{Service, Stack};
use test_support::TestDatabase;

/// The SDK release `scripts/lib/setup.sh` installs; keep the two the same.
const SDK_VERSION: &str = "3.57.0";

const VOICES: [&str; 13] = [
    "alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse",
    "marin", "cedar",
];
const FORMATS: [&str; 6] = ["mp3", "opus", "aac", "flac", "wav", "pcm"];

/// `TEST_OPENAI_PYTHON`: a Python with the pinned SDK. Never skipped: without it the test fails
/// and says how to get it.
fn python() -> PathBuf {
    match std::env::var_os("TEST_OPENAI_PYTHON").filter(|p| !p.is_empty()) {
        Some(python) => PathBuf::from(python),
        None => panic!(
            "TEST_OPENAI_PYTHON is not set. These tests run OpenAI's Python SDK \
             (openai=={SDK_VERSION}), which scripts/test installs into a venv under \
             $SONORA_TOOLS and names in TEST_OPENAI_PYTHON: run scripts/test -p gateway, or set \
             TEST_OPENAI_PYTHON to a python that has openai=={SDK_VERSION}."
        ),
    }
}

/// Runs `cases` through the SDK in one Python process; returns each case's result by name and
/// the folder the audio went to.
async fn sdk(base: &str, key: &str, cases: &[Value]) -> (serde_json::Map<String, Value>, PathBuf) {
    let dir = std::env::temp_dir().join(format!(
        "gateway-openai-{}-{}",
        std::process::id(),
        uuid_like()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/openai_sdk.py");
    let output = tokio::time::timeout(
        Duration::from_secs(240),
        tokio::process::Command::new(python())
            .arg(script)
            .arg(format!("{base}/v1"))
            .arg(key)
            .arg(&dir)
            .arg(Value::from(cases.to_vec()).to_string())
            // The SDK would read these; the test must not depend on the machine's.
            .env_remove("OPENAI_BASE_URL")
            .env_remove("OPENAI_API_KEY")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the SDK script finishes within 4 minutes")
    .expect("the SDK's python runs");
    assert!(
        output.status.success(),
        "the SDK script failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "the SDK script printed no JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    assert_eq!(
        report["version"], SDK_VERSION,
        "TEST_OPENAI_PYTHON has another SDK release; run scripts/test"
    );
    let results = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["name"].as_str().unwrap().to_owned(), r.clone()))
        .collect();
    (results, dir)
}

fn uuid_like() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn speech(voice: Value, format: &str) -> Value {
    json!({ "model": "tts-1", "input": "Hi.", "voice": voice, "response_format": format })
}

/// Checks that `bytes` are `format` audio of a plausible length for "Hi." (a fraction of a second
/// to a few seconds), at OpenAI's 24 kHz (Opus decodes at 48 kHz whatever it was made at).
fn check_audio(what: &str, format: &str, bytes: &[u8]) {
    assert!(!bytes.is_empty(), "{what}: no audio");
    let seconds = if format == "pcm" {
        assert_eq!(bytes.len() % 2, 0, "{what}: pcm16 has an odd length");
        bytes.len() as f64 / 2.0 / 24_000.0
    } else {
        let magic_ok = match format {
            // Raw MPEG frames: a frame sync.
            "mp3" => bytes[0] == 0xFF && bytes[1] & 0xE0 == 0xE0,
            "opus" => bytes.starts_with(b"OggS"),
            "aac" => bytes[0] == 0xFF && bytes[1] & 0xF6 == 0xF0,
            "flac" => bytes.starts_with(b"fLaC"),
            "wav" => bytes.starts_with(b"RIFF"),
            other => panic!("{other}"),
        };
        assert!(magic_ok, "{what}: not {format}: {:02x?}", &bytes[..8]);
        let file = std::env::temp_dir().join(format!(
            "gateway-openai-decode-{}-{}.{format}",
            std::process::id(),
            uuid_like()
        ));
        std::fs::write(&file, bytes).unwrap();
        let decoded = decode_file(
            &file,
            DecodeLimits {
                max_duration: Duration::from_secs(60),
            },
        );
        let _ = std::fs::remove_file(&file);
        let decoded = decoded.unwrap_or_else(|e| panic!("{what}: {format} does not decode: {e}"));
        let rate = if format == "opus" { 48_000 } else { 24_000 };
        assert_eq!(decoded.rate, rate, "{what}");
        assert_eq!(decoded.channels, 1, "{what}");
        assert!(decoded.peak() > 0.01, "{what}: silence");
        decoded.duration_seconds()
    };
    assert!(
        (0.2..5.0).contains(&seconds),
        "{what}: {seconds} s of audio for \"Hi.\""
    );
}

fn content_type(format: &str) -> &'static str {
    match format {
        "mp3" => "audio/mpeg",
        "opus" => "audio/ogg; codecs=opus",
        "aac" => "audio/aac",
        "flac" => "audio/flac",
        "wav" => "audio/wav",
        "pcm" => "audio/L16",
        other => panic!("{other}"),
    }
}

/// The `data:` members of a server-sent event stream, in order.
fn events(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter(|event| !event.trim().is_empty())
        .map(|event| {
            let data: String = event
                .lines()
                .filter_map(|line| line.strip_prefix("data: "))
                .collect();
            serde_json::from_str(&data).unwrap_or_else(|e| panic!("{e}: {event:?}"))
        })
        .collect()
}

/// Checks an SSE body: deltas of base64 audio, then one `speech.audio.done` with the usage
/// (characters of the input; deltas sent). Returns the audio.
fn check_events(what: &str, text: &str) -> Vec<u8> {
    let events = events(text);
    let (done, deltas) = events.split_last().expect("events");
    assert!(!deltas.is_empty(), "{what}: no audio deltas");
    let mut audio = Vec::new();
    for delta in deltas {
        let object = delta.as_object().unwrap();
        assert_eq!(object.len(), 2, "{what}: {delta}");
        assert_eq!(delta["type"], "speech.audio.delta", "{what}: {delta}");
        audio.extend(
            base64::engine::general_purpose::STANDARD
                .decode(delta["audio"].as_str().unwrap())
                .unwrap(),
        );
    }
    assert_eq!(
        *done,
        json!({
            "type": "speech.audio.done",
            "usage": {
                "input_tokens": 3,
                "output_tokens": deltas.len(),
                "total_tokens": 3 + deltas.len(),
            },
        }),
        "{what}"
    );
    audio
}

#[tokio::test]
async fn the_openai_python_sdk_speaks_every_voice_and_format() {
    // Fails before the stack starts when the SDK is not there.
    python();
    let db = TestDatabase::create().await.unwrap();
    let stack = Stack::new(&db)
        .with_tts()
        .with_gateway()
        // Two names mapped explicitly (one with a speaker); the rest take the default voice.
        .setting(
            Service::Gateway,
            "OPENAI_VOICE_MAP",
            "alloy=en_US-joe-medium,echo=en_US-joe-medium:0",
        )
        .start()
        .await;
    let base = stack.http_url(Service::Gateway);
    let key = stack.api_key("acme", &[Scope::Tts]).await;

    let mut cases = Vec::new();
    // Every voice in every format, both ways the SDK reads speech.
    for voice in VOICES {
        for format in FORMATS {
            for call in ["create", "stream"] {
                cases.push(json!({
                    "name": format!("{call}-{voice}-{format}"),
                    "call": call,
                    "args": speech(voice.into(), format),
                }));
            }
        }
    }
    // The voice as an object (an OpenAI name or a Sonora voice), a Sonora voice id, the other
    // models, instructions, the default format (mp3), and speed.
    cases.extend([
        json!({"name": "object-openai", "call": "create", "args": speech(json!({"id": "coral"}), "wav")}),
        json!({"name": "object-sonora", "call": "create", "args": speech(json!({"id": "en_US-joe-medium"}), "wav")}),
        json!({"name": "sonora-id", "call": "create", "args": speech("en_US-joe-medium".into(), "wav")}),
        json!({"name": "hd", "call": "create", "args": {"model": "tts-1-hd", "input": "Hi.", "voice": "onyx", "response_format": "wav", "speed": 1.5}}),
        json!({"name": "instructions", "call": "create", "args": {"model": "gpt-4o-mini-tts", "input": "Hi.", "voice": "marin", "instructions": "Speak like a lighthouse keeper.", "response_format": "wav"}}),
        json!({"name": "default-format", "call": "create", "args": {"model": "tts-1", "input": "Hi.", "voice": "verse"}}),
    ]);
    // Server-sent events.
    for format in ["pcm", "mp3", "aac"] {
        cases.push(json!({
            "name": format!("sse-{format}"),
            "call": "sse",
            "args": {"model": "gpt-4o-mini-tts", "input": "Hi.", "voice": "nova", "response_format": format},
        }));
    }
    // Refusals.
    cases.extend([
        json!({"name": "bad-voice", "call": "create", "args": speech("robot".into(), "mp3")}),
        json!({"name": "bad-voice-object", "call": "create", "args": speech(json!({"id": "voice_1234"}), "mp3")}),
        json!({"name": "bad-model", "call": "create", "args": {"model": "tts-2", "input": "Hi.", "voice": "alloy"}}),
        json!({"name": "bad-format", "call": "create", "args": speech("alloy".into(), "ogg")}),
        json!({"name": "bad-stream-format", "call": "create", "args": {"model": "tts-1", "input": "Hi.", "voice": "alloy", "stream_format": "websocket"}}),
        json!({"name": "bad-speed", "call": "stream", "args": {"model": "tts-1", "input": "Hi.", "voice": "alloy", "speed": 9}}),
    ]);
    let (results, dir) = sdk(&base, &key, &cases).await;
    assert_eq!(results.len(), cases.len());

    let file = |result: &Value| {
        std::fs::read(
            result["file"]
                .as_str()
                .unwrap_or_else(|| panic!("no audio: {result}")),
        )
        .unwrap()
    };
    for voice in VOICES {
        for format in FORMATS {
            for call in ["create", "stream"] {
                let name = format!("{call}-{voice}-{format}");
                let result = &results[&name];
                assert_eq!(result["content_type"], content_type(format), "{result}");
                check_audio(&name, format, &file(result));
                if call == "stream" {
                    assert!(result["chunks"].as_u64().unwrap() >= 1, "{result}");
                }
            }
        }
    }
    for name in [
        "object-openai",
        "object-sonora",
        "sonora-id",
        "hd",
        "instructions",
    ] {
        check_audio(name, "wav", &file(&results[name]));
    }
    check_audio("default-format", "mp3", &file(&results["default-format"]));
    assert_eq!(results["default-format"]["content_type"], "audio/mpeg");

    for format in ["pcm", "mp3", "aac"] {
        let name = format!("sse-{format}");
        let result = &results[&name];
        assert_eq!(result["content_type"], "text/event-stream", "{result}");
        let text = String::from_utf8(file(result)).unwrap();
        let audio = check_events(&name, &text);
        check_audio(&name, format, &audio);
    }

    for (name, class, status, param, words) in [
        ("bad-voice", "BadRequestError", 400, "voice", "voice"),
        ("bad-voice-object", "BadRequestError", 400, "voice", "voice"),
        ("bad-model", "BadRequestError", 400, "model", "tts-1-hd"),
        (
            "bad-format",
            "BadRequestError",
            400,
            "response_format",
            "aac",
        ),
        (
            "bad-stream-format",
            "BadRequestError",
            400,
            "stream_format",
            "sse",
        ),
        ("bad-speed", "BadRequestError", 400, "speed", "0.25"),
    ] {
        let error = &results[name]["error"];
        assert_eq!(error["class"], class, "{name}: {}", results[name]);
        assert_eq!(error["status"], status, "{name}: {error}");
        assert_eq!(error["param"], param, "{name}: {error}");
        assert_eq!(error["type"], "invalid_request_error", "{name}: {error}");
        let message = error["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("Error code: {status} - ")),
            "{name}: {message}"
        );
        assert!(
            message.contains(param) && message.contains(words),
            "{name}: {message}"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn refusals_carry_the_error_object_and_auth_is_openais_too() {
    let db = TestDatabase::create().await.unwrap();
    let stack = Stack::new(&db)
        .with_tts()
        .with_gateway()
        // fable maps to a speaker the voice does not have: a bad `voice`, said as such.
        .setting(
            Service::Gateway,
            "OPENAI_VOICE_MAP",
            "fable=en_US-joe-medium:7",
        )
        .start()
        .await;
    let base = stack.http_url(Service::Gateway);
    let url = format!("{base}/v1/audio/speech");
    let key = stack.api_key("acme", &[Scope::Tts]).await;
    let audio_only = stack.api_key("acme", &[Scope::Audio]).await;
    let client = test_support::http_client();
    let post = |key: &str, body: Value| {
        client
            .post(&url)
            .header("authorization", format!("Bearer {key}"))
            .json(&body)
            .send()
    };
    let problem = |response: reqwest::Response| async move {
        let status = response.status().as_u16();
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
        (status, response.json::<Value>().await.unwrap())
    };

    let (status, body) = problem(post(&key, speech("fable".into(), "wav")).await.unwrap()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["type"], "/problems/invalid-request", "{body}");
    assert_eq!(body["error"]["param"], "voice", "{body}");
    assert_eq!(body["error"]["code"], "invalid_value", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("speaker 7"),
        "{body}"
    );
    assert_eq!(body["detail"], body["error"]["message"]);

    let (status, body) = problem(
        post("cw_test_nope", speech("alloy".into(), "wav"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(
        body["error"],
        json!({
            "message": body["detail"],
            "type": "invalid_request_error",
            "param": null,
            "code": "invalid_api_key",
        })
    );
    let (status, body) = problem(
        post(&audio_only, speech("alloy".into(), "wav"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden", "{body}");

    // A body that is not JSON, and one too large: the route's error object still rides along.
    let response = client
        .post(&url)
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (status, body) = problem(response).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("JSON"),
        "{body}"
    );
    let (status, body) = problem(
        post(
            &key,
            json!({"model": "tts-1", "voice": "alloy", "input": "x".repeat(70 * 1024)}),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "body_too_large", "{body}");

    // Other routes keep plain problem+json.
    let response = client
        .post(format!("{base}/v1/tts"))
        .header("authorization", format!("Bearer {key}"))
        .json(&json!({"text": "Hi.", "format": "m4a"}))
        .send()
        .await
        .unwrap();
    let (status, body) = problem(response).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.get("error").is_none(), "{body}");
}

#[tokio::test]
async fn a_backend_failure_midway_aborts_the_event_stream() {
    let db = TestDatabase::create().await.unwrap();
    // The first sentence is short enough; the second has more phonemes than a piece may have,
    // so tts-inference fails after the first sentence's audio.
    let stack = Stack::new(&db)
        .with_tts()
        .with_gateway()
        .setting(Service::TtsInference, "TTS_MAX_PHONEMES_PER_PIECE", "40")
        .start()
        .await;
    let base = stack.http_url(Service::Gateway);
    let key = stack.api_key("acme", &[Scope::Tts]).await;
    let sent = test_support::http_client()
        .post(format!("{base}/v1/audio/speech"))
        .header("authorization", format!("Bearer {key}"))
        .json(&json!({
            "model": "gpt-4o-mini-tts",
            "voice": "alloy",
            "response_format": "pcm",
            "stream_format": "sse",
            "input": "Hi. This second sentence is far too long for the tiny phoneme budget this test sets.",
        }))
        .send()
        .await;
    // When the failure comes before the head has left the server (a busy machine), the
    // connection breaks at once: a broken transfer too, never a clean answer.
    let Ok(mut response) = sent else {
        return;
    };
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut received = Vec::new();
    let broke = loop {
        match response.chunk().await {
            Ok(Some(chunk)) => received.extend_from_slice(&chunk),
            Ok(None) => break false,
            Err(_) => break true,
        }
    };
    let text = String::from_utf8_lossy(&received);
    assert!(broke, "the transfer ended cleanly: {text}");
    assert!(text.contains("speech.audio.delta"), "{text}");
    assert!(!text.contains("speech.audio.done"), "{text}");
}
