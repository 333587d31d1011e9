//! Behaving like a serious HTTP API: security headers on every answer, 405 with `Allow` for a
//! wrong method, CORS preflights answered, the old clients' `voice_id`, and option ranges named.

use internal_rpc::Scope;
use test_stack::{Service, Stack};
use test_support::TestDatabase;

#[tokio::test]
async fn headers_methods_cors_and_old_clients() {
    let db = TestDatabase::create().await.unwrap();
    let stack = Stack::new(&db).with_tts().with_gateway().start().await;
    let base = stack.http_url(Service::Gateway);
    let key = stack.api_key("acme", &[Scope::Tts]).await;
    let client = test_support::http_client();

    // Security headers, on a success and on a refusal alike; no HSTS in development.
    for response in [
        client.get(format!("{base}/health")).send().await.unwrap(),
        client
            .get(format!("{base}/v1/voices"))
            .send()
            .await
            .unwrap(),
    ] {
        let headers = response.headers();
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["x-frame-options"], "DENY");
        assert_eq!(headers["referrer-policy"], "no-referrer");
        assert!(
            headers["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("default-src 'none'")
        );
        assert!(headers.get("strict-transport-security").is_none());
    }

    // A wrong method is 405 with Allow, as problem+json; an unknown path stays 404.
    let response = client
        .post(format!("{base}/v1/voices"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET");
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let response = client
        .delete(format!("{base}/v1/admin/api-keys"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (
            response.status().as_u16(),
            response.headers()["allow"].to_str().unwrap()
        ),
        (405, "GET, POST")
    );
    assert_eq!(
        client
            .get(format!("{base}/v1/nothing"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    // A browser's preflight is answered (development: any origin), and answers name the origin.
    let preflight = client
        .request(reqwest::Method::OPTIONS, format!("{base}/v1/tts"))
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "x-api-key, content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    assert!(
        preflight.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("x-api-key")
    );
    let answer = client
        .get(format!("{base}/v1/voices"))
        .header("x-api-key", &key)
        .header("origin", "http://localhost:3000")
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );

    // The old clients' request: voice_id and x-api-key.
    let response = client
        .post(format!("{base}/v1/tts"))
        .header("x-api-key", &key)
        .json(&serde_json::json!({"text": "Hello.", "voice_id": "en_US-joe-medium", "format": "pcm16", "speed": 1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.bytes().await.unwrap().len() > 1000);

    // Word timings: NDJSON, each part's audio (base64) with the words it completes, then a
    // done line with the seconds of audio.
    let response = client
        .post(format!("{base}/v1/tts"))
        .header("x-api-key", &key)
        .json(&serde_json::json!({"text": "Hello there. How are you?", "format": "pcm16", "timestamps": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-ndjson");
    let rate: f64 = response.headers()["x-sample-rate"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let text = response.text().await.unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (done, parts) = lines.split_last().unwrap();
    assert_eq!(done["done"], true, "{text}");
    let mut audio = Vec::new();
    let mut words = Vec::new();
    for part in parts {
        use base64::Engine as _;
        audio.extend(
            base64::engine::general_purpose::STANDARD
                .decode(part["audio"].as_str().unwrap())
                .unwrap(),
        );
        for w in part["words"].as_array().unwrap() {
            let heard_so_far = (audio.len() / 2) as f64 / rate;
            assert!(w["end"].as_f64().unwrap() <= heard_so_far + 1e-6, "{w}");
            words.push(w["word"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(words, ["Hello", "there", "How", "are", "you"]);
    let seconds = done["audio_seconds"].as_f64().unwrap();
    assert!(
        ((audio.len() / 2) as f64 / rate - seconds).abs() < 1e-3,
        "{seconds}"
    );

    // SSML, asked for by text_type, with timings: the alias's words, never the tags.
    let response = client
        .post(format!("{base}/v1/tts"))
        .header("x-api-key", &key)
        .json(&serde_json::json!({
            "text": "<speak>Hello <break time=\"300ms\"/><sub alias=\"World Health Organization\">WHO</sub></speak>",
            "text_type": "ssml", "format": "pcm16", "timestamps": true
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let words: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .flat_map(|line| line["words"].as_array().cloned().unwrap_or_default())
        .map(|w| w["word"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        words,
        ["Hello", "World", "Health", "Organization"],
        "{text}"
    );

    // A body that is not a JSON object is refused, without naming any Rust type.
    let response = client
        .post(format!("{base}/v1/tts"))
        .header("x-api-key", &key)
        .json(&serde_json::json!(["Hello."]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        problem["detail"], "The body must be a JSON object.",
        "{problem}"
    );

    // Letters the voice's language does not read: skipped and counted, or 422 when they are
    // most of the text.
    let response = client
        .post(format!("{base}/v1/tts"))
        .header("x-api-key", &key)
        .json(&serde_json::json!({"text": "Hello 日 world.", "format": "wav"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-skipped-characters"], "1");
    let response = client
        .post(format!("{base}/v1/tts"))
        .header("x-api-key", &key)
        .json(&serde_json::json!({"text": "日本語の文章です。"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let problem: serde_json::Value = response.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/unsupported-script", "{problem}");
    assert!(
        problem["detail"].as_str().unwrap().contains("English"),
        "{problem}"
    );

    // Out-of-range options are named with their rule.
    for (body, rule) in [
        (
            serde_json::json!({"text": "Hi.", "speed": 0}),
            "speed must be between 0.25 and 4",
        ),
        (
            serde_json::json!({"text": "Hi.", "sample_rate": 0}),
            "sample_rate must be between 8000 and 48000",
        ),
        (
            serde_json::json!({"text": "Hi.", "text_type": "html"}),
            "text_type must be text or ssml",
        ),
        (
            serde_json::json!({"text": "<speak>Hi <b>there</b></speak>"}),
            "text: SSML at line 1, column 11 (<b>): <b> is not supported (speak, p, s, break, \
             say-as, sub, prosody, phoneme are)",
        ),
    ] {
        let response = client
            .post(format!("{base}/v1/tts"))
            .header("x-api-key", &key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400);
        let problem: serde_json::Value = response.json().await.unwrap();
        assert_eq!(problem["detail"], rule, "{problem}");
    }
}

/// Writes `request` on a fresh connection to `port`, then reads until the server closes it (or
/// `within` passes): the raw answer and how long it took.
async fn raw_exchange(
    port: u16,
    request: &[u8],
    within: std::time::Duration,
) -> (Vec<u8>, std::time::Duration) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let started = std::time::Instant::now();
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(within, stream.read_to_end(&mut answer)).await;
    (answer, started.elapsed())
}

#[tokio::test]
async fn a_stalled_body_is_cut_off_and_http_1_0_clients_get_no_chunks() {
    let db = TestDatabase::create().await.unwrap();
    let stack = Stack::new(&db)
        .with_tts()
        .with_gateway()
        .setting(Service::Gateway, "HTTP_BODY_TIMEOUT", "1s")
        .start()
        .await;
    let base = stack.http_url(Service::Gateway);
    let port: u16 = base.rsplit(':').next().unwrap().parse().unwrap();
    let key = stack.api_key("acme", &[Scope::Tts]).await;

    // A body that stops after a few bytes: 408 as problem+json once the deadline passes, not
    // minutes later.
    let stalled = format!(
        "POST /v1/tts HTTP/1.1\r\nhost: x\r\nx-api-key: {key}\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n{{\"te"
    );
    let (answer, took) =
        raw_exchange(port, stalled.as_bytes(), std::time::Duration::from_secs(15)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("application/problem+json"), "{text}");
    assert!(text.contains("/problems/request-timeout"), "{text}");
    assert!(took < std::time::Duration::from_secs(8), "{took:?}");

    // HTTP/1.0 has no chunked encoding: a streamed answer ends with the connection instead.
    let body = r#"{"text": "Hello from an old client.", "format": "wav"}"#;
    let request = format!(
        "POST /v1/tts HTTP/1.0\r\nx-api-key: {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let (answer, _) =
        raw_exchange(port, request.as_bytes(), std::time::Duration::from_secs(60)).await;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head");
    let head = String::from_utf8_lossy(&answer[..split]).to_ascii_lowercase();
    let audio = &answer[split + 4..];
    assert!(
        head.starts_with("http/1.0 200") || head.starts_with("http/1.1 200"),
        "{head}"
    );
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert_eq!(&audio[..4], b"RIFF", "{head}");
    // The whole file: well over a second of 16-bit audio at 22,050 Hz.
    assert!(audio.len() > 44 + 22_050, "{} bytes", audio.len());
}
