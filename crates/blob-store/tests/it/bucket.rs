//! What only a shared bucket shows: another replica reads what one wrote, the prefix keeps the
//! objects in their folder, and a server that goes away makes the probe fail in plain words.

use std::time::Duration;

use blob_store::{BlobStore, StoreError};
use bytes::Bytes;
use futures::TryStreamExt as _;
use test_support::s3::S3Server;

use crate::{Fixture, s3_settings};

/// Two replicas are two processes with the same settings: here two stores opened on them.
#[tokio::test]
async fn a_second_replica_reads_what_the_first_wrote() {
    let server = S3Server::start().await;
    let first = BlobStore::open(&s3_settings(&server, "audio")).unwrap();
    let second = BlobStore::open(&s3_settings(&server, "audio")).unwrap();

    let dir = crate::TempDir::new();
    let file = dir.path.join("out.mp3");
    std::fs::write(&file, b"finished audio").unwrap();
    let stored = first.put_file("jobs/7/out.mp3", &file).await.unwrap();

    assert_eq!(second.head("jobs/7/out.mp3").await.unwrap(), stored.size);
    let blob = second.get("jobs/7/out.mp3", Some((9, None))).await.unwrap();
    assert_eq!((blob.size, blob.range), (14, (9, 13)));
    let chunks: Vec<Bytes> = blob.stream.try_collect().await.unwrap();
    assert_eq!(chunks.concat(), b"audio");

    second.delete("jobs/7/out.mp3").await.unwrap();
    assert!(matches!(
        first.head("jobs/7/out.mp3").await,
        Err(StoreError::NotFound { .. })
    ));
}

#[tokio::test]
async fn the_prefix_is_a_folder_of_the_bucket() {
    let server = S3Server::start().await;
    let prefixed = BlobStore::open(&s3_settings(&server, "tenant/audio")).unwrap();
    let root = BlobStore::open(&s3_settings(&server, "")).unwrap();
    prefixed.put_bytes("k", &b"12345"[..]).await.unwrap();
    assert_eq!(root.head("tenant/audio/k").await.unwrap(), 5);
    assert!(matches!(
        root.head("k").await,
        Err(StoreError::NotFound { .. })
    ));
}

#[tokio::test]
async fn the_probe_fails_in_plain_words_when_the_server_is_gone() {
    let mut fx = Fixture::s3().await;
    fx.store.check().await.expect("ready while the server runs");
    let server = fx.s3.as_mut().expect("an S3 fixture");
    let secret = server.secret.clone();
    server.stop();

    let started = tokio::time::Instant::now();
    let problem = fx
        .store
        .check()
        .await
        .expect_err("not ready without the server");
    eprintln!("PROBLEM: {problem}");
    eprintln!("HEAD: {}", fx.store.head("x").await.unwrap_err());
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "the probe is bounded"
    );
    // The place, then the innermost cause, without the HTTP client's and the retries' layers.
    let place = fx.settings.to_string();
    assert!(place.starts_with("s3://sonora-test-"), "{place}");
    assert!(
        problem.starts_with(&format!("cannot write to {place}: ")),
        "{problem}"
    );
    assert!(problem.contains("Connection refused"), "{problem}");
    assert!(!problem.contains(&secret), "the secret leaked: {problem}");
    for rust_words in ["Error {", "source:", "Some(", "kind:", "max_retries"] {
        assert!(!problem.contains(rust_words), "{problem}");
    }
    // Reads fail as errors too, not hangs or panics.
    let err = fx.store.head("anything").await.unwrap_err();
    assert!(matches!(err, StoreError::Backend { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("the audio storage failed looking up anything: "),
        "{err}"
    );
}
