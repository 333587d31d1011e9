//! Integration tests of `delivery-worker`: the real service on port 0 against the real PostgreSQL.

use std::time::Duration;

use delivery_worker::{Application, Settings};
use lifecycle::Signals;
use test_support::{
    TestDatabase, assert_operational, grpc_health, host_port, proxy::TcpProxy, sources, wait_ready,
};
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test]
async fn operational_endpoints_and_grpc_health() {
    let db = TestDatabase::create().await.unwrap();
    let signals = Signals::new();
    let app = Application::build(
        Settings::load(&sources([("DATABASE_URL", db.url.clone())])).unwrap(),
        signals.clone(),
    )
    .unwrap();
    let (grpc, base) = (
        app.grpc_port(),
        format!("http://127.0.0.1:{}", app.http_port()),
    );
    let task = tokio::spawn(app.stopped());
    assert_operational(&base, &["database"]).await;
    test_support::eventually(Duration::from_secs(10), "SERVING", || async {
        (grpc_health(grpc).await == Some(ServingStatus::Serving)).then_some(())
    })
    .await;
    signals.shutdown.cancel();
    task.await.unwrap().unwrap();
    assert!(grpc_health(grpc).await.is_none());
}

#[tokio::test]
async fn not_ready_and_not_serving_while_postgres_is_away() {
    let db = TestDatabase::create().await.unwrap();
    let proxy = TcpProxy::start(host_port(&db.url)).await.unwrap();
    let signals = Signals::new();
    let app = Application::build(
        Settings::load(&sources([("DATABASE_URL", db.url_via(proxy.port()))])).unwrap(),
        signals.clone(),
    )
    .unwrap();
    let (grpc, base) = (
        app.grpc_port(),
        format!("http://127.0.0.1:{}", app.http_port()),
    );
    let _task = tokio::spawn(app.stopped());
    wait_ready(&base, 200).await;

    proxy.cut();
    let body = wait_ready(&base, 503).await;
    assert_eq!(body["components"]["database"]["status"], "down", "{body}");
    test_support::eventually(Duration::from_secs(10), "NOT_SERVING", || async {
        (grpc_health(grpc).await == Some(ServingStatus::NotServing)).then_some(())
    })
    .await;

    proxy.restore();
    wait_ready(&base, 200).await;
    test_support::eventually(Duration::from_secs(10), "SERVING again", || async {
        (grpc_health(grpc).await == Some(ServingStatus::Serving)).then_some(())
    })
    .await;
    signals.shutdown.cancel();
}

#[tokio::test]
async fn starts_before_postgres_and_migrates_once_it_arrives() {
    let db = TestDatabase::create().await.unwrap();
    let proxy = TcpProxy::start(host_port(&db.url)).await.unwrap();
    proxy.cut();
    let signals = Signals::new();
    let app = Application::build(
        Settings::load(&sources([("DATABASE_URL", db.url_via(proxy.port()))])).unwrap(),
        signals.clone(),
    )
    .unwrap();
    let base = format!("http://127.0.0.1:{}", app.http_port());
    let database = app.database().clone();
    let _task = tokio::spawn(app.stopped());
    let body = wait_ready(&base, 503).await;
    assert_eq!(body["components"]["database"]["status"], "down", "{body}");
    proxy.restore();
    tokio::time::timeout(Duration::from_secs(30), database.migrated())
        .await
        .expect("migrates once PostgreSQL is reachable");
    wait_ready(&base, 200).await;
    signals.shutdown.cancel();
}

#[test]
fn bad_setting_exits_64_naming_it() {
    let run = test_support::run_binary(
        env!("CARGO_BIN_EXE_delivery-worker"),
        &[],
        &[
            ("DATABASE_URL", "postgres://127.0.0.1/x"),
            ("DATABASE_POOL_SIZE", "0"),
        ],
    );
    assert_eq!(run.code, Some(64), "{}", run.stderr);
    assert!(run.stderr.contains("DATABASE_POOL_SIZE"), "{}", run.stderr);
}
