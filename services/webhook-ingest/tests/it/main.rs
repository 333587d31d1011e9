//! Integration tests of `webhook-ingest`: the real service on port 0 with its real gRPC peers
//! (started by the test stack) against the real PostgreSQL and Redis.

mod api;
mod dispatch;
mod github;
mod monitoring;
mod replicate;
mod replicate_secret;
mod routing;
mod sources;

use test_stack::{Service, Stack};
use test_support::{
    TestDatabase, assert_operational, host_port, proxy::TcpProxy, redis_url, wait_ready,
};

/// A client of `tenant` with `scopes`, as the gateway names the caller it acts for.
fn client_of(tenant: &str, scopes: internal_rpc::Scopes) -> internal_rpc::Principal {
    internal_rpc::Principal {
        tenant: ids::Tenant::parse(tenant).unwrap(),
        key_id: None,
        scopes,
    }
}

/// Runs `query` on `db` with psql and returns its rows, one line each (columns joined by `|`).
fn sql(db: &TestDatabase, query: &str) -> Vec<String> {
    let run = test_support::run_binary("/usr/bin/psql", &[&db.url, "-tAc", query], &[]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    run.stdout.lines().map(str::to_owned).collect()
}

struct Ingest {
    /// The public port.
    base: String,
    /// The ops port.
    ops: String,
    redis: TcpProxy,
    _stack: Stack,
}

async fn start() -> Ingest {
    let db = TestDatabase::create().await.unwrap();
    let redis = TcpProxy::start(host_port(&redis_url())).await.unwrap();
    let stack = Stack::new(&db)
        .with_delivery()
        .with_audio()
        .with_ingest()
        .setting(
            Service::WebhookIngest,
            "REDIS_URL",
            format!("redis://127.0.0.1:{}/0", redis.port()),
        )
        .start()
        .await;
    Ingest {
        base: stack.http_url(Service::WebhookIngest),
        ops: stack.ops_url(Service::WebhookIngest),
        redis,
        _stack: stack,
    }
}

#[tokio::test]
async fn operational_endpoints_with_every_component() {
    let stack = start().await;
    assert_operational(
        &stack.ops,
        &["audio-generation", "database", "delivery-worker", "redis"],
    )
    .await;
}

#[tokio::test]
async fn redis_away_degrades_but_keeps_it_ready() {
    let stack = start().await;
    wait_ready(&stack.ops, 200).await;
    stack.redis.cut();
    let body = test_support::eventually(
        std::time::Duration::from_secs(30),
        "redis down, still ready",
        || async {
            let (status, body) = test_support::get_json(&format!("{}/ready", stack.ops))
                .await
                .ok()?;
            (status == 200 && body["components"]["redis"]["status"] == "down").then_some(body)
        },
    )
    .await;
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["components"]["database"]["required"], true, "{body}");
    // Monitoring needs Redis: its status says so, with when to retry.
    let response = test_support::http_client()
        .get(format!("{}/webhook-status", stack.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    stack.redis.restore();
    let body = wait_ready(&stack.ops, 200).await;
    assert_eq!(body["components"]["redis"]["status"], "up", "{body}");
}

#[tokio::test]
async fn the_public_port_serves_no_metrics_and_no_readiness_details() {
    let stack = start().await;
    for path in ["/metrics", "/ready"] {
        let response = test_support::http_client()
            .get(format!("{}{path}", stack.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 404, "{path}");
    }
    let metrics = test_support::http_client()
        .get(format!("{}/metrics", stack.ops))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("outbox_pending"), "{metrics}");
}

#[tokio::test]
async fn unknown_paths_are_problem_json() {
    let stack = start().await;
    let response = test_support::http_client()
        .post(format!("{}/api/unknown", stack.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
}

#[test]
fn an_agent_run_rule_without_the_code_generation_settings_exits_64() {
    let run = test_support::run_binary(
        env!("CARGO_BIN_EXE_webhook-ingest"),
        &[],
        &[
            ("DATABASE_URL", "postgres://127.0.0.1/x"),
            ("REDIS_URL", "redis://127.0.0.1"),
            (
                "ROUTING_RULES",
                r#"[{"name": "agents", "source": "github", "actions": ["agent_run"], "prompt": "{issue.title}"}]"#,
            ),
        ],
    );
    assert_eq!(run.code, Some(64), "{}", run.stderr);
    assert!(
        run.stderr.contains("CODEGEN_TOKEN") && run.stderr.contains("\"agents\""),
        "{}",
        run.stderr
    );
}

#[test]
fn bad_setting_exits_64_naming_it() {
    let run = test_support::run_binary(
        env!("CARGO_BIN_EXE_webhook-ingest"),
        &[],
        &[
            ("DATABASE_URL", "postgres://127.0.0.1/x"),
            ("REDIS_URL", "redis://127.0.0.1"),
            ("SHUTDOWN_GRACE_PERIOD", "forever"),
        ],
    );
    assert_eq!(run.code, Some(64), "{}", run.stderr);
    assert!(
        run.stderr.contains("SHUTDOWN_GRACE_PERIOD"),
        "{}",
        run.stderr
    );
}

#[test]
fn an_invalid_base_url_exits_64_naming_it() {
    let run = test_support::run_binary(
        env!("CARGO_BIN_EXE_webhook-ingest"),
        &[],
        &[
            ("DATABASE_URL", "postgres://127.0.0.1/x"),
            ("REDIS_URL", "redis://127.0.0.1"),
            ("ENVIRONMENT", "production"),
            ("BASE_URL", "hooks.example.com"),
        ],
    );
    assert_eq!(run.code, Some(64), "{}", run.stderr);
    assert!(run.stderr.contains("BASE_URL"), "{}", run.stderr);
}

#[tokio::test]
async fn in_production_only_the_listed_origins_may_call_from_a_browser() {
    let db = TestDatabase::create().await.unwrap();
    let stack = Stack::new(&db)
        .with_ingest()
        .setting(Service::WebhookIngest, "ENVIRONMENT", "production")
        .setting(
            Service::WebhookIngest,
            "BASE_URL",
            "http://hooks.example.com",
        )
        .setting(
            Service::WebhookIngest,
            "CORS_ORIGINS",
            "https://console.example.com",
        )
        .start()
        .await;
    let base = stack.http_url(Service::WebhookIngest);
    let preflight = |origin: &'static str| {
        test_support::http_client()
            .request(reqwest::Method::OPTIONS, format!("{base}/webhook-status"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .send()
    };
    let allowed = preflight("https://console.example.com").await.unwrap();
    assert_eq!(allowed.status().as_u16(), 204);
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://console.example.com"
    );
    let refused = preflight("https://evil.example").await.unwrap();
    assert_eq!(refused.status().as_u16(), 403);
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    // A simple request from another origin is answered without the header, so the browser
    // keeps the answer from the page.
    let other = test_support::http_client()
        .get(format!("{base}/health"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status().as_u16(), 200);
    assert!(other.headers().get("access-control-allow-origin").is_none());
    let listed = test_support::http_client()
        .get(format!("{base}/health"))
        .header("origin", "https://console.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(
        listed.headers()["access-control-allow-origin"],
        "https://console.example.com"
    );
}
