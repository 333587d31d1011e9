//! Integration tests of `audio-generation`: the real service on port 0 with its real gRPC peer
//! (`delivery-worker`) against the real PostgreSQL.

mod egress;
mod end_to_end;
mod jobs;
mod submission;

use std::time::Duration;

use test_stack::{Service, Stack};
use test_support::{TestDatabase, assert_operational, grpc_health, wait_ready};
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test]
async fn ready_with_database_storage_and_peer() {
    let db = TestDatabase::create().await.unwrap();
    let storage = std::env::temp_dir().join(format!("audio-it-{}", db.name));
    let stack = Stack::new(&db)
        .with_delivery()
        .with_audio()
        .setting(
            Service::AudioGeneration,
            "AUDIO_STORAGE_PATH",
            storage.display().to_string(),
        )
        .setting(
            Service::AudioGeneration,
            "REPLICATE_API_TOKEN",
            "r8_test_token",
        )
        .start()
        .await;
    let grpc = stack.grpc_port(Service::AudioGeneration);
    let base = stack.http_url(Service::AudioGeneration);
    assert_operational(
        &base,
        &["database", "delivery-worker", "replicate", "storage"],
    )
    .await;
    assert!(storage.is_dir(), "the storage root is created");
    test_support::eventually(Duration::from_secs(10), "SERVING", || async {
        (grpc_health(grpc).await == Some(ServingStatus::Serving)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn unwritable_storage_and_missing_peer_are_named() {
    let db = TestDatabase::create().await.unwrap();
    let blocker = std::env::temp_dir().join(format!("audio-it-file-{}", db.name));
    std::fs::write(&blocker, b"a file, not a folder").unwrap();
    // delivery-worker is not started: its address refuses connections.
    let stack = Stack::new(&db)
        .with_audio()
        .setting(
            Service::AudioGeneration,
            "AUDIO_STORAGE_PATH",
            blocker.join("audio").display().to_string(),
        )
        .start()
        .await;
    let base = stack.http_url(Service::AudioGeneration);
    // Both are degradations: with its database up the service stays ready.
    let body = test_support::eventually(Duration::from_secs(30), "database up", || async {
        let body = wait_ready(&base, 200).await;
        (body["components"]["database"]["status"] == "up").then_some(body)
    })
    .await;
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["components"]["storage"]["status"], "down", "{body}");
    assert_eq!(
        body["components"]["delivery-worker"]["error"], "unreachable",
        "{body}"
    );
    let replicate = body["components"]["replicate"]["error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        replicate.starts_with("REPLICATE_API_TOKEN is not set"),
        "{body}"
    );
    // gRPC health follows the same rule: degraded is still SERVING.
    let grpc = stack.grpc_port(Service::AudioGeneration);
    test_support::eventually(
        Duration::from_secs(10),
        "SERVING while degraded",
        || async { (grpc_health(grpc).await == Some(ServingStatus::Serving)).then_some(()) },
    )
    .await;
}

#[test]
fn bad_setting_exits_64_naming_it() {
    let run = test_support::run_binary(
        env!("CARGO_BIN_EXE_audio-generation"),
        &[],
        &[
            ("DATABASE_URL", "postgres://127.0.0.1/x"),
            ("DELIVERY_WORKER_URL", "delivery-worker:50053"),
        ],
    );
    assert_eq!(run.code, Some(64), "{}", run.stderr);
    assert!(run.stderr.contains("DELIVERY_WORKER_URL"), "{}", run.stderr);
}
