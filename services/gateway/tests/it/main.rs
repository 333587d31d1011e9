//! Integration tests of `gateway`: the real service on port 0, with its real gRPC peers
//! (`tts-inference`, `audio-generation`, `delivery-worker`) started in-process on port 0, against
//! the real PostgreSQL and Redis.

use std::time::Duration;

use lifecycle::Signals;
use test_support::{
    TestDatabase, assert_operational, get_json, host_port, proxy::TcpProxy, redis_url, sources,
    wait_ready,
};

/// The gateway and its peers, running until dropped.
struct Stack {
    base: String,
    signals: Signals,
    gateway: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _db: TestDatabase,
    _proxies: Vec<TcpProxy>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.signals.shutdown.cancel();
    }
}

struct Options {
    /// Put the gateway's PostgreSQL and Redis behind proxies a test can cut.
    proxied: bool,
    /// Point the gateway at a tts-inference address where nothing listens.
    tts_down: bool,
}

async fn start(options: Options) -> (Stack, Option<(TcpProxy, TcpProxy)>) {
    let db = TestDatabase::create().await.unwrap();
    let signals = Signals::new();

    let tts = tts_inference::Application::build(
        tts_inference::Settings::load(&sources([(
            "VOICES_DIR",
            test_support::voices_dir().display().to_string(),
        )]))
        .unwrap(),
        signals.clone(),
    )
    .unwrap();
    let delivery = delivery_worker::Application::build(
        delivery_worker::Settings::load(&sources([
            ("DATABASE_URL", db.url.clone()),
            (
                "WEBHOOK_SECRET_ENCRYPTION_KEY",
                test_support::TEST_WEBHOOK_ENCRYPTION_KEY.to_owned(),
            ),
        ]))
        .unwrap(),
        signals.clone(),
    )
    .unwrap();
    let storage = std::env::temp_dir().join(format!("gateway-it-{}", db.name));
    let audio = audio_generation::Application::build(
        audio_generation::Settings::load(&sources([
            ("DATABASE_URL", db.url.clone()),
            ("AUDIO_STORAGE_PATH", storage.display().to_string()),
            (
                "DELIVERY_WORKER_URL",
                format!("http://127.0.0.1:{}", delivery.grpc_port()),
            ),
        ]))
        .unwrap(),
        signals.clone(),
    )
    .unwrap();

    let tts_url = if options.tts_down {
        // Port 1 (tcpmux) is never served here, so connections are refused; a port picked as
        // free could be taken by a parallel test's server in the meantime.
        "http://127.0.0.1:1".to_owned()
    } else {
        format!("http://127.0.0.1:{}", tts.grpc_port())
    };
    let (database_url, redis, proxies) = if options.proxied {
        let pg = TcpProxy::start(host_port(&db.url)).await.unwrap();
        let rd = TcpProxy::start(host_port(&redis_url())).await.unwrap();
        let redis = format!("redis://127.0.0.1:{}/0", rd.port());
        (db.url_via(pg.port()), redis, Some((pg, rd)))
    } else {
        (db.url.clone(), redis_url(), None)
    };
    let gateway = gateway::Application::build(
        gateway::Settings::load(&sources([
            ("DATABASE_URL", database_url),
            ("REDIS_URL", redis),
            ("TTS_INFERENCE_URL", tts_url),
            (
                "AUDIO_GENERATION_URL",
                format!("http://127.0.0.1:{}", audio.grpc_port()),
            ),
            (
                "DELIVERY_WORKER_URL",
                format!("http://127.0.0.1:{}", delivery.grpc_port()),
            ),
        ]))
        .unwrap(),
        signals.clone(),
    )
    .unwrap();
    let base = format!("http://127.0.0.1:{}", gateway.port());
    for task in [
        tokio::spawn(tts.stopped()),
        tokio::spawn(delivery.stopped()),
        tokio::spawn(audio.stopped()),
    ] {
        drop(task);
    }
    let stack = Stack {
        base,
        signals,
        gateway: Some(tokio::spawn(gateway.stopped())),
        _db: db,
        _proxies: Vec::new(),
    };
    (stack, proxies)
}

async fn plain() -> Stack {
    start(Options {
        proxied: false,
        tts_down: false,
    })
    .await
    .0
}

#[tokio::test]
async fn health_ready_and_metrics_with_every_component() {
    let stack = plain().await;
    assert_operational(
        &stack.base,
        &[
            "audio-generation",
            "database",
            "delivery-worker",
            "redis",
            "tts-inference",
        ],
    )
    .await;
}

#[tokio::test]
async fn ready_names_postgres_while_it_is_away_and_recovers_without_restart() {
    let (stack, proxies) = start(Options {
        proxied: true,
        tts_down: false,
    })
    .await;
    let (pg, _redis) = proxies.unwrap();
    wait_ready(&stack.base, 200).await;

    pg.cut();
    let body = wait_ready(&stack.base, 503).await;
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["components"]["database"]["status"], "down", "{body}");
    assert_eq!(body["components"]["redis"]["status"], "up", "{body}");

    pg.restore();
    let body = wait_ready(&stack.base, 200).await;
    assert_eq!(body["components"]["database"]["status"], "up");
}

#[tokio::test]
async fn ready_names_redis_while_it_is_away_and_recovers_without_restart() {
    let (stack, proxies) = start(Options {
        proxied: true,
        tts_down: false,
    })
    .await;
    let (_pg, redis) = proxies.unwrap();
    wait_ready(&stack.base, 200).await;

    redis.cut();
    let body = wait_ready(&stack.base, 503).await;
    assert_eq!(body["components"]["redis"]["status"], "down", "{body}");
    assert_eq!(body["components"]["database"]["status"], "up", "{body}");

    redis.restore();
    wait_ready(&stack.base, 200).await;
}

#[tokio::test]
async fn voices_come_from_tts_inference_over_grpc() {
    let stack = plain().await;
    let (status, body) = get_json(&format!("{}/v1/voices", stack.base))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let joe = body["voices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == "en_US-joe-medium")
        .expect("the default voice is listed");
    assert_eq!(joe["sample_rate"], 22050);
    assert_eq!(joe["language"], "en_US");
    assert_eq!(joe["default"], true);
}

#[tokio::test]
async fn a_backend_that_is_down_gives_problem_json_and_not_ready() {
    let (stack, _) = start(Options {
        proxied: false,
        tts_down: true,
    })
    .await;
    let response = test_support::http_client()
        .get(format!("{}/v1/voices", stack.base))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["type"], "/problems/unavailable");
    assert_eq!(body["status"], 503);

    // Everything else becomes ready; the missing peer keeps the gateway not ready.
    let body = test_support::eventually(
        Duration::from_secs(30),
        "all but tts-inference up",
        || async {
            let (status, body) = get_json(&format!("{}/ready", stack.base)).await.ok()?;
            let up = |name: &str| body["components"][name]["status"] == "up";
            (status == 503 && up("audio-generation") && up("delivery-worker") && up("database"))
                .then_some(body)
        },
    )
    .await;
    assert_eq!(
        body["components"]["tts-inference"]["status"], "down",
        "{body}"
    );
    assert_eq!(
        body["components"]["tts-inference"]["error"], "unreachable",
        "{body}"
    );
}

#[tokio::test]
async fn unknown_paths_are_problem_json() {
    let stack = plain().await;
    let response = test_support::http_client()
        .get(format!("{}/v1/nothing-here", stack.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["type"], "/problems/not-found");
}

#[tokio::test]
async fn shutdown_drains_then_refuses_connections() {
    let mut stack = plain().await;
    let health = format!("{}/health", stack.base);
    assert_eq!(get_json(&health).await.unwrap().0, 200);
    stack.signals.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), stack.gateway.take().unwrap())
        .await
        .expect("stops within the grace period")
        .unwrap()
        .unwrap();
    assert!(
        get_json(&health).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn migrate_subcommand_creates_the_schema() {
    let db = TestDatabase::create().await.unwrap();
    let run = test_support::run_binary(
        env!("CARGO_BIN_EXE_gateway"),
        &["migrate"],
        &[
            ("DATABASE_URL", &db.url),
            ("REDIS_URL", &redis_url()),
            ("LOG_FORMAT", "text"),
        ],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    // The migration bookkeeping lives in the service's own schema, not in `public`.
    let query = test_support::run_binary(
        "/usr/bin/psql",
        &[
            &db.url,
            "-tAc",
            "select table_schema from information_schema.tables where table_name = '__diesel_schema_migrations'",
        ],
        &[],
    );
    assert_eq!(query.code, Some(0), "{}", query.stderr);
    assert_eq!(query.stdout.trim(), "gateway");
}

#[test]
fn missing_setting_exits_64_naming_it() {
    let run = test_support::run_binary(
        env!("CARGO_BIN_EXE_gateway"),
        &[],
        &[("REDIS_URL", "redis://127.0.0.1:6379")],
    );
    let (code, stderr) = (run.code, run.stderr);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(
        stderr.contains("DATABASE_URL") && stderr.contains("required"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn bad_setting_exits_64_without_echoing_the_secret() {
    let run = test_support::run_binary(
        env!("CARGO_BIN_EXE_gateway"),
        &[],
        &[
            ("DATABASE_URL", "postgres://u:p@127.0.0.1/db"),
            ("REDIS_URL", "http://user:hunter2@127.0.0.1:6379"),
        ],
    );
    let (code, stderr) = (run.code, run.stderr);
    assert_eq!(code, Some(64), "{stderr}");
    assert!(stderr.contains("REDIS_URL"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

async fn post(url: &str, body: serde_json::Value) -> (u16, String, Vec<u8>) {
    let response = test_support::http_client()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (
        status,
        content_type,
        response.bytes().await.unwrap().to_vec(),
    )
}

#[tokio::test]
async fn tts_streams_audio_from_tts_inference() {
    let stack = plain().await;
    let (status, content_type, body) = post(
        &format!("{}/v1/tts", stack.base),
        serde_json::json!({ "text": "Hello from Sonora. This is the second sentence.", "format": "wav" }),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(content_type, "audio/wav");
    assert_eq!(&body[..4], b"RIFF");
    // Two sentences of speech at 22,050 Hz, 16-bit: well over half a second.
    assert!(body.len() > 44 + 22_050, "{} bytes", body.len());

    let (status, content_type, body) = post(
        &format!("{}/v1/audio/speech", stack.base),
        serde_json::json!({ "model": "tts-1", "input": "Hi there.", "voice": "en_US-joe-medium", "response_format": "mp3" }),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(content_type, "audio/mpeg");
    assert!(body.len() > 1000);
}

#[tokio::test]
async fn tts_refusals_are_problem_json() {
    let stack = plain().await;
    let url = format!("{}/v1/tts", stack.base);
    let long = "word ".repeat(1000);
    for (body, status, kind) in [
        (
            serde_json::json!({ "text": long }),
            400,
            "/problems/invalid-request",
        ),
        (
            serde_json::json!({ "text": "Hi.", "format": "aac" }),
            400,
            "/problems/invalid-request",
        ),
        (
            serde_json::json!({ "text": "Hi.", "colour": "blue" }),
            400,
            "/problems/invalid-request",
        ),
        (
            serde_json::json!({ "text": "Hi.", "speed": 9.0 }),
            400,
            "/problems/invalid-request",
        ),
        (
            serde_json::json!({ "text": "Hi.", "voice": "xx-missing" }),
            404,
            "/problems/not-found",
        ),
        (
            serde_json::json!({ "text": "x".repeat(70 * 1024) }),
            413,
            "/problems/body-too-large",
        ),
    ] {
        let (got, content_type, bytes) = post(&url, body).await;
        assert_eq!(got, status, "{}", String::from_utf8_lossy(&bytes));
        assert_eq!(content_type, "application/problem+json");
        let problem: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(problem["type"], kind, "{problem}");
    }
}
