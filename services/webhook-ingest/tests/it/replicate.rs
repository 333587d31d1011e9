//! Replicate's completion webhooks: verified, stored before the 200, once per webhook-id.

use test_stack::{Service, Stack};
use test_support::{TestDatabase, http_client};
use webhook_signature::{SigningKey, signature_header};

struct Receiver {
    base: String,
    ops: String,
    secret: String,
    db: TestDatabase,
    _stack: Stack,
}

async fn start() -> Receiver {
    let db = TestDatabase::create().await.unwrap();
    let secret = SigningKey::generate_hmac();
    let stack = Stack::new(&db)
        .with_ingest()
        .setting(
            Service::WebhookIngest,
            "REPLICATE_WEBHOOK_SECRET",
            secret.clone(),
        )
        .setting(Service::WebhookIngest, "WEBHOOK_BODY_TIMEOUT", "1s")
        // audio-generation is not started: the first attempt fails and the next is far off, so
        // the events stay `failed` while the test looks (tests/it/dispatch.rs covers retries).
        .setting(Service::WebhookIngest, "INBOX_RETRY_SCHEDULE", "1h")
        .start()
        .await;
    let ops = stack.ops_url(Service::WebhookIngest);
    test_support::wait_ready(&ops, 200).await;
    Receiver {
        ops: ops.clone(),
        base: stack.http_url(Service::WebhookIngest),
        secret,
        db,
        _stack: stack,
    }
}

fn prediction(id: &str, status: &str) -> String {
    serde_json::json!({
        "id": id,
        "version": "96af46316252ddea4c6614e31861876183b59dce84bad765f38424e87919dd85",
        "status": status,
        "input": { "prompt": "rain on a tin roof", "duration": 8 },
        "output": "https://replicate.delivery/pbxt/abc/out.mp3",
        "error": null,
        "metrics": { "predict_time": 4.2 },
        "created_at": "2026-12-02T10:00:00.000000Z",
        "completed_at": "2026-12-02T10:00:05.000000Z",
        "urls": { "get": format!("https://api.replicate.com/v1/predictions/{id}") }
    })
    .to_string()
}

impl Receiver {
    /// POSTs `body` to `path` signed with `secret` at `timestamp` (Unix seconds).
    async fn post_signed(
        &self,
        path: &str,
        id: &str,
        body: &str,
        secret: &str,
        timestamp: i64,
    ) -> (u16, serde_json::Value) {
        let key = SigningKey::parse(secret).unwrap();
        let signature = signature_header(&[key], id, timestamp, body.as_bytes());
        let response = http_client()
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or_default())
    }

    async fn post(&self, path: &str, id: &str, body: &str) -> (u16, serde_json::Value) {
        let now = chrono::Utc::now().timestamp();
        self.post_signed(path, id, body, &self.secret.clone(), now)
            .await
    }

    fn inbox(&self, column: &str) -> Vec<String> {
        let run = test_support::run_binary(
            "/usr/bin/psql",
            &[
                &self.db.url,
                "-tAc",
                &if column.starts_with("count(") {
                    format!("select {column} from ingest.inbox")
                } else {
                    format!("select {column} from ingest.inbox order by received_at")
                },
            ],
            &[],
        );
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        run.stdout.lines().map(str::to_owned).collect()
    }
}

const PATH: &str = "/api/replicate-webhook/sound_effect/job_0123";

#[tokio::test]
async fn a_signed_webhook_is_stored_once_however_often_it_is_retried() {
    // audio-generation is not started: whether the job exists cannot be asked, and a genuine
    // webhook is accepted all the same.
    let r = start().await;
    let body = prediction("p1", "succeeded");
    let (status, first) = r.post(PATH, "msg_1", &body).await;
    assert_eq!(
        (status, first["status"].as_str()),
        (200, Some("accepted")),
        "{first}"
    );
    // Replicate retries with the same webhook-id (and a new timestamp and signature).
    let (status, again) = r.post(PATH, "msg_1", &body).await;
    assert_eq!(
        (status, again["status"].as_str()),
        (200, Some("duplicate")),
        "{again}"
    );
    // Stored, then dispatched at once: completing it fails while audio-generation is away.
    test_support::eventually(
        std::time::Duration::from_secs(10),
        "the first attempt",
        || async {
            (r.inbox("state || ' ' || subject_type || ' ' || subject_id || ' ' || event_type")
                == ["failed sound_effect job_0123 succeeded"])
            .then_some(())
        },
    )
    .await;
    assert_eq!(r.inbox("payload"), [body], "the exact body is kept");
    let (status, _) = r
        .post(
            "/api/replicate-webhook/background_music/job_0456",
            "msg_2",
            &prediction("p2", "failed"),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(r.inbox("count(*)"), ["2"]);

    // Metrics: the answer's time, the outcomes, and the inbox by state (refreshed every 15 s).
    let metrics = test_support::eventually(
        std::time::Duration::from_secs(30),
        "the inbox gauge",
        || async {
            let text = http_client()
                .get(format!("{}/metrics", r.ops))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            text.contains(r#"webhook_inbox_events{state="failed"} 2"#)
                .then_some(text)
        },
    )
    .await;
    assert!(
        metrics.contains(r#"webhook_processing_seconds_count{source="replicate"} 3"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"webhook_received_total{outcome="duplicate",source="replicate"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn bad_signatures_and_stale_timestamps_are_401_and_store_nothing() {
    let r = start().await;
    let body = prediction("p1", "succeeded");
    let now = chrono::Utc::now().timestamp();
    let wrong = SigningKey::generate_hmac();
    for (secret, timestamp, what) in [
        (wrong.as_str(), now, "another secret"),
        (r.secret.as_str(), now - 6 * 60, "six minutes old"),
        (r.secret.as_str(), now + 6 * 60, "six minutes ahead"),
    ] {
        let (status, problem) = r.post_signed(PATH, "msg_x", &body, secret, timestamp).await;
        assert_eq!(status, 401, "{what}");
        assert_eq!(problem["type"], "/problems/unauthorized", "{what}");
        assert!(problem.get("detail").is_none(), "no detail: {problem}");
    }
    // A body changed after signing.
    let key = SigningKey::parse(&r.secret).unwrap();
    let signature = signature_header(&[key], "msg_y", now, body.as_bytes());
    let response = http_client()
        .post(format!("{}{PATH}", r.base))
        .header("webhook-id", "msg_y")
        .header("webhook-timestamp", now.to_string())
        .header("webhook-signature", signature)
        .body(body.replace("succeeded", "failed"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    // No headers at all.
    let response = http_client()
        .post(format!("{}{PATH}", r.base))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(r.inbox("count(*)"), ["0"]);
}

#[tokio::test]
async fn wrong_paths_bodies_and_sizes_are_refused_clearly() {
    let r = start().await;
    let body = prediction("p1", "succeeded");
    let (status, problem) = r
        .post("/api/replicate-webhook/video/job_1", "msg_1", &body)
        .await;
    assert_eq!(status, 422, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("content_type"));
    let (status, _) = r
        .post(
            "/api/replicate-webhook/sound_effect/job%20one",
            "msg_1",
            &body,
        )
        .await;
    assert_eq!(status, 404);
    let huge = format!(
        r#"{{"id":"p","status":"succeeded","logs":"{}"}}"#,
        "x".repeat(1024 * 1024)
    );
    let (status, problem) = r.post(PATH, "msg_2", &huge).await;
    assert_eq!(status, 413, "{problem}");
    assert_eq!(problem["limit_bytes"], 1024 * 1024);
    assert_eq!(r.inbox("count(*)"), ["0"], "nothing refused is stored");

    // Verified but not a prediction: 422, kept for inspection.
    for (id, malformed) in [
        ("msg_3", r#"{"id":"p","status":"exploded"}"#.to_owned()),
        ("msg_4", r#"{"status":"succeeded"}"#.to_owned()),
        ("msg_5", "[1, 2, 3]".to_owned()),
        ("msg_6", "not json at all \u{1F600}".to_owned()),
    ] {
        let (status, problem) = r.post(PATH, id, &malformed).await;
        assert_eq!(status, 422, "{malformed}: {problem}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.starts_with("The body is not a Replicate prediction"),
            "{detail}"
        );
        assert!(
            !detail.contains("struct") && !detail.contains("::"),
            "{detail}"
        );
    }
    assert_eq!(r.inbox("state"), ["malformed"; 4]);
}

#[tokio::test]
async fn a_body_that_stalls_is_cut_off_with_408() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let r = start().await;
    let address = r.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let started = std::time::Instant::now();
    stream
        .write_all(
            format!(
                "POST {PATH} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
                 Content-Length: 1000\r\n\r\n{{\"id\": \"p"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // ...and nothing more: the sender stalls.
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buffer).await {
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buffer[..n]);
            if String::from_utf8_lossy(&answer).contains("\r\n\r\n{") {
                break;
            }
        }
    })
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("application/problem+json"), "{answer}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "cut off after {:?}",
        started.elapsed()
    );
    assert_eq!(r.inbox("count(*)"), ["0"]);
}

#[tokio::test]
async fn unknown_jobs_are_404_once_the_sender_is_verified() {
    use internal_rpc::{Principal, Scopes, on_behalf};
    use sonora_proto::audio::v1::{
        CreateSoundEffectRequest, audio_generation_client::AudioGenerationClient,
    };
    let db = TestDatabase::create().await.unwrap();
    let secret = SigningKey::generate_hmac();
    let stack = Stack::new(&db)
        .with_audio()
        .with_ingest()
        .setting(
            Service::WebhookIngest,
            "REPLICATE_WEBHOOK_SECRET",
            secret.clone(),
        )
        .start()
        .await;
    test_support::wait_ready(&stack.http_url(Service::AudioGeneration), 200).await;
    let acme = Principal {
        tenant: ids::Tenant::parse("acme").unwrap(),
        key_id: None,
        scopes: Scopes::all(),
    };
    let job = AudioGenerationClient::new(stack.peer("gateway", Service::AudioGeneration).channel())
        .create_sound_effect(on_behalf(
            CreateSoundEffectRequest {
                prompt: "thunder".into(),
                duration_seconds: 4.0,
                seed: None,
            },
            &acme,
        ))
        .await
        .unwrap()
        .into_inner();
    let r = Receiver {
        base: stack.http_url(Service::WebhookIngest),
        ops: stack.ops_url(Service::WebhookIngest),
        secret,
        db,
        _stack: stack,
    };
    let body = prediction("p1", "succeeded");
    let known = format!("/api/replicate-webhook/sound_effect/{}", job.id);
    let (status, answer) = r.post(&known, "msg_known", &body).await;
    assert_eq!(status, 200, "{answer}");
    let unknown = "/api/replicate-webhook/sound_effect/job_0123456789abcdef0123456789abcdef";
    let (status, problem) = r.post(unknown, "msg_unknown", &body).await;
    assert_eq!(status, 404, "{problem}");
    // An unverified sender cannot probe which jobs exist: it gets 401 either way.
    let wrong = SigningKey::generate_hmac();
    let now = chrono::Utc::now().timestamp();
    let (status, _) = r
        .post_signed(unknown, "msg_probe", &body, &wrong, now)
        .await;
    assert_eq!(status, 401);
    assert_eq!(r.inbox("subject_id"), [job.id]);
}
