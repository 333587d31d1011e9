//! Integration tests of `gateway`: the real service on port 0, with its real gRPC peers
//! (`tts-inference`, `audio-generation`, `delivery-worker`, `webhook-ingest`) started in-process on port 0 by the
//! test stack, against the real PostgreSQL and Redis.

mod audio;
mod console;
mod http;
mod inbound;
mod isolation;
mod keys;
mod limits;
mod openai;
mod openapi;
mod properties;
mod realtime;
mod telephony;
mod trace;
mod webhooks;

use std::time::Duration;

use internal_rpc::Scope;
use test_stack::{Service, Simulator, Stack, StackBuilder};
use test_support::{
    TestDatabase, assert_operational, get_json, host_port, proxy::TcpProxy, redis_url,
};

/// The services a sound effect goes through (delivery-worker, webhook-ingest, audio-generation
/// and the gateway) on `simulator`, polling every 50 ms so that a job finishes in test time.
fn audio_stack(db: &TestDatabase, simulator: &Simulator) -> StackBuilder {
    Stack::new(db)
        .with_delivery()
        .with_ingest()
        .with_audio()
        .with_gateway()
        .replicate(simulator)
        .setting(Service::AudioGeneration, "JOB_POLL_INTERVAL", "50ms")
        .setting(Service::WebhookIngest, "INBOX_POLL_INTERVAL", "50ms")
}

/// The gateway and its peers, running until dropped.
struct Gateway {
    /// The public port: the API and `/health`.
    base: String,
    /// An API key of tenant `acme` with every scope.
    key: String,
    /// The ops port: `/health`, `/ready`, `/metrics`.
    ops: String,
    stack: Stack,
}

struct Options {
    /// Put the gateway's PostgreSQL and Redis behind proxies a test can cut.
    proxied: bool,
    /// Leave tts-inference out: the gateway's calls to it are refused.
    tts_down: bool,
}

async fn start(options: Options) -> (Gateway, Option<(TcpProxy, TcpProxy)>) {
    let db = TestDatabase::create().await.unwrap();
    let mut builder = Stack::new(&db)
        .with_delivery()
        .with_ingest()
        .with_audio()
        .with_gateway();
    if !options.tts_down {
        builder = builder.with_tts();
    }
    let proxies = if options.proxied {
        let pg = TcpProxy::start(host_port(&db.url)).await.unwrap();
        let rd = TcpProxy::start(host_port(&redis_url())).await.unwrap();
        builder = builder
            .setting(Service::Gateway, "DATABASE_URL", db.url_via(pg.port()))
            .setting(
                Service::Gateway,
                "REDIS_URL",
                format!("redis://127.0.0.1:{}/0", rd.port()),
            );
        Some((pg, rd))
    } else {
        None
    };
    let stack = builder.start().await;
    let gateway = Gateway {
        key: stack.api_key("acme", &Scope::ALL).await,
        base: stack.http_url(Service::Gateway),
        ops: stack.ops_url(Service::Gateway),
        stack,
    };
    (gateway, proxies)
}

/// `builder` with every plan's per-key rate far above what a test sends, for tests that make
/// hundreds of calls in seconds and test something else (the per-IP limit is already lifted by
/// the test stack).
fn without_plan_limits(builder: test_stack::StackBuilder) -> test_stack::StackBuilder {
    [
        "RATE_LIMIT_FREE",
        "RATE_LIMIT_STANDARD",
        "RATE_LIMIT_ENTERPRISE",
    ]
    .into_iter()
    .fold(builder, |b, plan| {
        b.setting(Service::Gateway, plan, "100000/s,burst=100000")
    })
}

async fn plain() -> Gateway {
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
        &stack.ops,
        &[
            "audio-generation",
            "database",
            "delivery-worker",
            "redis",
            "tts-inference",
            "webhook-ingest",
        ],
    )
    .await;
}

/// Waits until `/ready` (still 200: the gateway keeps serving) shows `component` as `status`.
async fn wait_component(ops: &str, component: &str, status: &str) -> serde_json::Value {
    test_support::eventually(
        Duration::from_secs(30),
        &format!("{component} {status}"),
        || async {
            let (code, body) = get_json(&format!("{ops}/ready")).await.ok()?;
            (code == 200 && body["components"][component]["status"] == status).then_some(body)
        },
    )
    .await
}

/// Waits until `/ready` says every component is up.
async fn wait_all_up(ops: &str) -> serde_json::Value {
    test_support::eventually(Duration::from_secs(30), "every component up", || async {
        let (code, body) = get_json(&format!("{ops}/ready")).await.ok()?;
        (code == 200 && body["status"] == "ready").then_some(body)
    })
    .await
}

async fn voices_status(gateway: &Gateway) -> u16 {
    get_keyed(&format!("{}/v1/voices", gateway.base), &gateway.key)
        .await
        .0
}

/// A GET with an API key: the status and the JSON body.
async fn get_keyed(url: &str, key: &str) -> (u16, serde_json::Value) {
    let response = test_support::http_client()
        .get(url)
        .header("x-api-key", key)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test]
async fn postgres_away_degrades_without_unreadiness_and_recovers() {
    let (stack, proxies) = start(Options {
        proxied: true,
        tts_down: false,
    })
    .await;
    let (pg, _redis) = proxies.unwrap();
    wait_all_up(&stack.ops).await;
    // The key is checked once while the database is there; the gateway then trusts its cache.
    assert_eq!(voices_status(&stack).await, 200);

    pg.cut();
    let body = wait_component(&stack.ops, "database", "down").await;
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["components"]["database"]["required"], false, "{body}");
    assert_eq!(body["components"]["redis"]["status"], "up", "{body}");
    assert_eq!(voices_status(&stack).await, 200, "speech does not need it");
    let (status, _, audio) = post(
        &stack.key,
        &format!("{}/v1/tts", stack.base),
        serde_json::json!({ "text": "Spoken without the database.", "format": "wav" }),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&audio));

    pg.restore();
    wait_component(&stack.ops, "database", "up").await;
    wait_all_up(&stack.ops).await;
}

#[tokio::test]
async fn redis_away_keeps_the_gateway_ready_and_serving() {
    let (stack, proxies) = start(Options {
        proxied: true,
        tts_down: false,
    })
    .await;
    let (_pg, redis) = proxies.unwrap();
    wait_all_up(&stack.ops).await;

    redis.cut();
    let body = wait_component(&stack.ops, "redis", "down").await;
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(voices_status(&stack).await, 200);
    let metrics = test_support::http_client()
        .get(format!("{}/metrics", stack.ops))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"dependency_up{component="redis",required="false"} 0"#),
        "{metrics}"
    );

    redis.restore();
    wait_component(&stack.ops, "redis", "up").await;
}

#[tokio::test]
async fn audio_generation_away_leaves_speech_served() {
    let db = TestDatabase::create().await.unwrap();
    let stack = Stack::new(&db)
        .with_tts()
        .with_delivery()
        .with_gateway()
        .start()
        .await;
    let (base, ops) = (
        stack.http_url(Service::Gateway),
        stack.ops_url(Service::Gateway),
    );
    let body = wait_component(&ops, "tts-inference", "up").await;
    assert_eq!(
        body["components"]["audio-generation"]["status"], "down",
        "{body}"
    );
    assert_eq!(body["status"], "degraded", "{body}");
    let key = stack.api_key("acme", &[Scope::Tts]).await;
    let (status, _, audio) = post(
        &key,
        &format!("{base}/v1/tts"),
        serde_json::json!({ "text": "Still speaking.", "format": "wav" }),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(&audio[..4], b"RIFF");
}

#[tokio::test]
async fn the_public_port_serves_no_metrics_and_no_readiness_details() {
    let stack = plain().await;
    for path in ["/metrics", "/ready"] {
        let response = test_support::http_client()
            .get(format!("{}{path}", stack.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 404, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    // The old TTS API's /health body, for its monitors: components as booleans, from the last
    // readiness check.
    wait_all_up(&stack.ops).await;
    let (status, body) = get_json(&format!("{}/health", stack.base)).await.unwrap();
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("healthy")),
        "{body}"
    );
    assert_eq!(body["components"]["tts_model"], true, "{body}");
    assert_eq!(body["components"]["database"], true, "{body}");
    assert_eq!(body["components"]["redis"], true, "{body}");
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'), "{body}");
}

#[tokio::test]
async fn the_voice_catalogue_has_stable_uuids_follows_tts_inference_and_obeys_operators() {
    let stack = plain().await;
    let list = || async { get_keyed(&format!("{}/v1/voices", stack.base), &stack.key).await };
    let (status, body) = list().await;
    assert_eq!(status, 200, "{body}");
    let joe = body["voices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["slug"] == "en_US-joe-medium")
        .expect("the default voice is listed")
        .clone();
    assert_eq!(joe["sample_rate"], 22050);
    assert_eq!(joe["language"], "en_US");
    assert_eq!(joe["default"], true);
    assert_eq!(
        (joe["enabled"].as_bool(), joe["available"].as_bool()),
        (Some(true), Some(true))
    );
    let id = joe["id"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    // The same id on every listing (and on every installation: it is derived from the slug).
    assert_eq!(
        id,
        gateway::voices::voice_uuid("en_US-joe-medium").to_string()
    );
    assert_eq!(list().await.1["voices"][0]["id"], joe["id"]);

    // The old clients send the UUID as voice_id.
    let speak = |voice_id: String| {
        let (base, key) = (stack.base.clone(), stack.key.clone());
        async move {
            post(
                &key,
                &format!("{base}/v1/tts"),
                serde_json::json!({ "text": "Hello.", "voice_id": voice_id, "format": "wav" }),
            )
            .await
        }
    };
    let (status, _, audio) = speak(id.clone()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&audio));
    assert_eq!(&audio[..4], b"RIFF");
    let (status, _, problem) = speak("00000000-0000-4000-8000-000000000000".into()).await;
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&problem).contains("voice_id"));

    // A voice tts-inference no longer has is kept, marked unavailable.
    let gone = test_support::run_binary(
        "/usr/bin/psql",
        &[
            &stack.stack.db.url,
            "-c",
            "INSERT INTO gateway.voices (id, slug, display_name, language, sample_rate, quality) \
             VALUES ('11111111-1111-5111-8111-111111111111', 'xx_XX-gone-low', 'Gone', 'xx_XX', 16000, 'low')",
        ],
        &[],
    );
    assert_eq!(gone.code, Some(0), "{}", gone.stderr);
    let (_, body) = list().await;
    let gone = body["voices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["slug"] == "xx_XX-gone-low")
        .expect("still listed")
        .clone();
    assert_eq!(gone["available"], false, "{gone}");

    // An operator renames and disables a voice; tts-inference's next listing does not undo it.
    let tool = |args: &[&str]| {
        test_support::run_binary(
            env!("CARGO_BIN_EXE_gateway"),
            args,
            &[
                ("DATABASE_URL", &stack.stack.db.url),
                ("REDIS_URL", &redis_url()),
                ("LOG_FORMAT", "text"),
            ],
        )
    };
    let renamed = tool(&["voices", "rename", "en_US-joe-medium", "Joe (US)"]);
    assert_eq!(renamed.code, Some(0), "{}", renamed.stderr);
    let disabled = tool(&["voices", "disable", &id]);
    assert_eq!(disabled.code, Some(0), "{}", disabled.stderr);
    let missing = tool(&["voices", "disable", "nobody"]);
    assert_ne!(missing.code, Some(0));
    assert!(missing.stderr.contains("no voice"), "{}", missing.stderr);
    let (_, body) = list().await;
    let joe = &body["voices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["slug"] == "en_US-joe-medium")
        .unwrap()
        .clone();
    assert_eq!(joe["display_name"], "Joe (US)", "{joe}");
    assert_eq!(joe["enabled"], false, "{joe}");
    let (status, _, problem) = speak(id.clone()).await;
    assert_eq!(status, 404);
    assert!(String::from_utf8_lossy(&problem).contains("disabled"));
    let listed = tool(&["voices", "list"]);
    assert!(
        listed.stdout.contains("Joe (US)") && listed.stdout.contains("not loaded"),
        "{}",
        listed.stdout
    );
    assert_eq!(
        tool(&["voices", "enable", "en_US-joe-medium"]).code,
        Some(0)
    );
    list().await;
    assert_eq!(speak(id).await.0, 200);
}

#[tokio::test]
async fn a_backend_that_is_down_gives_a_503_with_retry_after_and_degrades() {
    let (stack, _) = start(Options {
        proxied: false,
        tts_down: true,
    })
    .await;
    let response = test_support::http_client()
        .get(format!("{}/v1/voices", stack.base))
        .header("x-api-key", &stack.key)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    assert_eq!(response.headers()["retry-after"], "5");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["type"], "/problems/unavailable");
    assert_eq!(body["status"], 503);

    assert_eq!(body["retry_after_seconds"], 5, "{body}");

    // Everything else comes up; the missing peer degrades the gateway without making it unready.
    let body = test_support::eventually(
        Duration::from_secs(30),
        "all but tts-inference up",
        || async {
            let (status, body) = get_json(&format!("{}/ready", stack.ops)).await.ok()?;
            let up = |name: &str| body["components"][name]["status"] == "up";
            (status == 200 && up("audio-generation") && up("delivery-worker") && up("database"))
                .then_some(body)
        },
    )
    .await;
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(
        body["components"]["tts-inference"]["status"], "down",
        "{body}"
    );
    assert_eq!(
        body["components"]["tts-inference"]["error"], "unreachable",
        "{body}"
    );
    // Liveness does not flap with a dependency: /health stays 200 and says what is down.
    let (status, health) = get_json(&format!("{}/health", stack.base)).await.unwrap();
    assert_eq!(
        (status, health["status"].as_str()),
        (200, Some("degraded")),
        "{health}"
    );
    assert_eq!(health["components"]["tts_model"], false, "{health}");
    assert_eq!(health["components"]["database"], true, "{health}");
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
    let gateway = plain().await;
    let health = format!("{}/health", gateway.base);
    assert_eq!(get_json(&health).await.unwrap().0, 200);
    tokio::time::timeout(Duration::from_secs(10), gateway.stack.stop())
        .await
        .expect("stops within the grace period");
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

async fn post(key: &str, url: &str, body: serde_json::Value) -> (u16, String, Vec<u8>) {
    let response = test_support::http_client()
        .post(url)
        .header("x-api-key", key)
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
        &stack.key,
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
        &stack.key,
        &format!("{}/v1/audio/speech", stack.base),
        serde_json::json!({ "model": "tts-1", "input": "Hi there.", "voice": "en_US-joe-medium", "response_format": "mp3" }),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(content_type, "audio/mpeg");
    assert!(body.len() > 1000);

    // The old API's metric names, for its dashboards.
    let metrics = test_support::eventually(Duration::from_secs(20), "the old metrics", || async {
        let text = test_support::http_client()
            .get(format!("{}/metrics", stack.ops))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .any(|l| l == "tts_model_loaded 1")
            .then_some(text)
    })
    .await;
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
            .parse()
            .unwrap()
    };
    assert!(value("tts_generation_duration_seconds_count") >= 2.0);
    assert!((0.0..=100.0).contains(&value("system_cpu_percent")));
    assert!(value("system_memory_percent") > 0.0);
    assert!(metrics.contains("http_requests_total{"), "{metrics}");
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
            serde_json::json!({ "text": "Hi.", "format": "m4a" }),
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
        let (got, content_type, bytes) = post(&stack.key, &url, body).await;
        assert_eq!(got, status, "{}", String::from_utf8_lossy(&bytes));
        assert_eq!(content_type, "application/problem+json");
        let problem: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(problem["type"], kind, "{problem}");
    }
}

#[test]
fn serving_without_an_internal_key_exits_64_naming_it() {
    let run = test_support::run_binary(
        env!("CARGO_BIN_EXE_gateway"),
        &[],
        &[
            ("DATABASE_URL", "postgres://u:p@127.0.0.1/db"),
            ("REDIS_URL", "redis://127.0.0.1:6379"),
        ],
    );
    assert_eq!(run.code, Some(64), "{}", run.stderr);
    assert!(run.stderr.contains("INTERNAL_AUTH_KEY"), "{}", run.stderr);
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.stderr);
    // The key generator needs no settings at all, and its key is accepted.
    let generated = test_support::run_binary(
        env!("CARGO_BIN_EXE_gateway"),
        &["generate-internal-key"],
        &[],
    );
    assert_eq!(generated.code, Some(0), "{}", generated.stderr);
    let key = generated
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("INTERNAL_AUTH_KEY="))
        .expect("a key line");
    assert!(internal_rpc::SigningKey::parse(key).is_ok());
    assert!(
        generated
            .stdout
            .lines()
            .any(|l| l.starts_with("gateway=ipk_")),
        "{}",
        generated.stdout
    );
}
