//! Integration tests of `webhook-ingest`: the real service on port 0 with its real gRPC peers
//! (started by the test stack) against the real PostgreSQL and Redis.

use test_stack::{Service, Stack};
use test_support::{
    TestDatabase, assert_operational, host_port, proxy::TcpProxy, redis_url, wait_ready,
};

struct Ingest {
    base: String,
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
        redis,
        _stack: stack,
    }
}

#[tokio::test]
async fn operational_endpoints_with_every_component() {
    let stack = start().await;
    assert_operational(
        &stack.base,
        &["audio-generation", "database", "delivery-worker", "redis"],
    )
    .await;
}

#[tokio::test]
async fn ready_names_redis_while_it_is_away() {
    let stack = start().await;
    wait_ready(&stack.base, 200).await;
    stack.redis.cut();
    let body = wait_ready(&stack.base, 503).await;
    assert_eq!(body["components"]["redis"]["status"], "down", "{body}");
    stack.redis.restore();
    wait_ready(&stack.base, 200).await;
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
