//! Integration tests of `webhook-ingest`: the real service on port 0 with its real gRPC peers
//! against the real PostgreSQL and Redis.

use lifecycle::Signals;
use test_support::{
    TestDatabase, assert_operational, host_port, proxy::TcpProxy, redis_url, sources, wait_ready,
};

struct Stack {
    base: String,
    signals: Signals,
    redis: TcpProxy,
    _db: TestDatabase,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.signals.shutdown.cancel();
    }
}

async fn start() -> Stack {
    let db = TestDatabase::create().await.unwrap();
    let signals = Signals::new();
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
    let storage = std::env::temp_dir().join(format!("ingest-it-{}", db.name));
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
    let redis = TcpProxy::start(host_port(&redis_url())).await.unwrap();
    let app = webhook_ingest::Application::build(
        webhook_ingest::Settings::load(&sources([
            ("DATABASE_URL", db.url.clone()),
            ("REDIS_URL", format!("redis://127.0.0.1:{}/0", redis.port())),
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
    let base = format!("http://127.0.0.1:{}", app.port());
    drop((
        tokio::spawn(delivery.stopped()),
        tokio::spawn(audio.stopped()),
        tokio::spawn(app.stopped()),
    ));
    Stack {
        base,
        signals,
        redis,
        _db: db,
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
