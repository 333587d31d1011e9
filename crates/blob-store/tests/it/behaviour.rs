//! What both backends must do alike.

use std::{path::Path, sync::Arc, time::Duration};

use blob_store::{Blob, BlobStore, StoreError};
use bytes::Bytes;
use futures::TryStreamExt as _;

use crate::Fixture;

/// Runs each named behaviour as one test per backend: `local::<name>` and `s3::<name>`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(crate::Fixture::local()).await;
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(crate::Fixture::s3().await).await;
                }
            )*
        }
    };
}

on_both_backends!(
    whole_objects_and_byte_ranges,
    files_are_stored_with_their_size_and_sha256,
    a_file_larger_than_one_part_is_stored_whole,
    an_overwrite_replaces_the_object_at_once,
    a_missing_key_is_not_found,
    head_and_delete,
    invalid_keys_are_refused_before_any_io,
    the_readiness_probe_passes_and_leaves_nothing,
    a_probe_cut_short_leaves_nothing_after_the_next,
);

/// `len` bytes, each its offset modulo 251, so a misplaced byte shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

async fn read(blob: Blob) -> Vec<u8> {
    let chunks: Vec<Bytes> = blob.stream.try_collect().await.expect("the stream reads");
    chunks.concat()
}

/// A range as asked (first, last or to the end), and as sent (first, last).
type Asked = (u64, Option<u64>);
type Sent = (u64, u64);

async fn read_range(store: &BlobStore, key: &str, range: Asked) -> (Sent, Vec<u8>) {
    let blob = store.get(key, Some(range)).await.expect("the range reads");
    assert_eq!(blob.size, 1000, "the whole size, whatever the range");
    (blob.range, read(blob).await)
}

async fn whole_objects_and_byte_ranges(fx: Fixture) {
    let store = &fx.store;
    let data = pattern(1000);
    store
        .put_bytes("jobs/1/audio.mp3", data.clone())
        .await
        .unwrap();

    let whole = store.get("jobs/1/audio.mp3", None).await.unwrap();
    assert_eq!((whole.size, whole.range), (1000, (0, 999)));
    assert_eq!(read(whole).await, data);

    let cases: [(Asked, Sent); 5] = [
        // The first bytes, the middle, an open-ended suffix, a last byte past the end (cut at the
        // end, as HTTP does) and the very last byte.
        ((0, Some(9)), (0, 9)),
        ((100, Some(299)), (100, 299)),
        ((900, None), (900, 999)),
        ((990, Some(5000)), (990, 999)),
        ((999, None), (999, 999)),
    ];
    for (asked, sent) in cases {
        let (range, bytes) = read_range(store, "jobs/1/audio.mp3", asked).await;
        assert_eq!(range, sent, "asked {asked:?}");
        assert_eq!(
            bytes,
            data[sent.0 as usize..=sent.1 as usize],
            "asked {asked:?}"
        );
    }

    for past_the_end in [(1000, None), (1000, Some(1000)), (5000, Some(6000))] {
        let err = store
            .get("jobs/1/audio.mp3", Some(past_the_end))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::RangeNotSatisfiable { size: 1000 }),
            "{past_the_end:?}: {err}"
        );
    }
    let backwards = store.get("jobs/1/audio.mp3", Some((10, Some(5)))).await;
    assert!(matches!(backwards, Err(StoreError::InvalidRange)));
    let missing = store.get("jobs/2/audio.mp3", Some((1000, None))).await;
    assert!(matches!(missing, Err(StoreError::NotFound { .. })));
}

async fn files_are_stored_with_their_size_and_sha256(fx: Fixture) {
    let dir = crate::TempDir::new();
    let file = dir.path.join("abc.txt");
    std::fs::write(&file, "abc").unwrap();
    let stored = fx.store.put_file("a/abc", &file).await.unwrap();
    assert_eq!(stored.size, 3);
    // The specification's own test vector (FIPS 180-2, "abc").
    assert_eq!(
        stored.sha256,
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(
        read(fx.store.get("a/abc", None).await.unwrap()).await,
        b"abc"
    );

    let by_bytes = fx.store.put_bytes("a/abc-too", &b"abc"[..]).await.unwrap();
    assert_eq!(by_bytes, stored);

    let empty = dir.path.join("empty");
    std::fs::write(&empty, "").unwrap();
    let stored = fx.store.put_file("a/empty", &empty).await.unwrap();
    assert_eq!(stored.size, 0);
    assert_eq!(
        stored.sha256,
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert_eq!(fx.store.head("a/empty").await.unwrap(), 0);

    let missing = fx.store.put_file("a/x", &dir.path.join("nope")).await;
    let err = missing.unwrap_err();
    assert!(matches!(err, StoreError::ReadFile { .. }), "{err}");
    assert!(err.to_string().starts_with("cannot read "), "{err}");
}

/// Past one part (8 MiB) an upload goes in parts; the object still appears whole, once.
async fn a_file_larger_than_one_part_is_stored_whole(fx: Fixture) {
    let dir = crate::TempDir::new();
    let data = pattern(9 * 1024 * 1024 + 123);
    let file = dir.path.join("big.wav");
    std::fs::write(&file, &data).unwrap();
    let stored = fx.store.put_file("big/one.wav", &file).await.unwrap();
    assert_eq!(stored.size, data.len() as u64);
    assert_eq!(stored.sha256, sha256_hex(&data));
    assert_eq!(
        fx.store.head("big/one.wav").await.unwrap(),
        data.len() as u64
    );
    let tail = fx
        .store
        .get("big/one.wav", Some((data.len() as u64 - 100, None)))
        .await
        .unwrap();
    assert_eq!(read(tail).await, data[data.len() - 100..]);
    assert_eq!(
        read(fx.store.get("big/one.wav", None).await.unwrap()).await,
        data
    );
}

fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Readers racing a writer that keeps replacing the object see one version or the other, whole:
/// never a file cut short or two versions mixed.
async fn an_overwrite_replaces_the_object_at_once(fx: Fixture) {
    let store = fx.store.clone();
    let versions = [vec![b'a'; 300_000], vec![b'b'; 200_000]];
    store
        .put_bytes("race/x", versions[0].clone())
        .await
        .unwrap();

    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let (store, versions, writing) = (store.clone(), versions.clone(), writing.clone());
        tokio::spawn(async move {
            for round in 0..20 {
                store
                    .put_bytes("race/x", versions[round % 2].clone())
                    .await
                    .unwrap();
            }
            writing.store(false, std::sync::atomic::Ordering::SeqCst);
        })
    };
    let mut reads = 0;
    while writing.load(std::sync::atomic::Ordering::SeqCst) || reads == 0 {
        let blob = store.get("race/x", None).await.unwrap();
        let size = blob.size;
        let bytes = read(blob).await;
        assert_eq!(bytes.len() as u64, size);
        let whole = versions.contains(&bytes);
        assert!(whole, "read {} bytes that are neither version", bytes.len());
        reads += 1;
    }
    writer.await.unwrap();

    store.put_bytes("race/x", &b"final"[..]).await.unwrap();
    assert_eq!(
        read(store.get("race/x", None).await.unwrap()).await,
        b"final"
    );
    if let Some(dir) = &fx.dir {
        assert_no_staging_files(&dir.path.join("audio"));
    }
}

/// object_store writes `<name>#<n>` and renames it; none may be left behind.
fn assert_no_staging_files(root: &Path) {
    for entry in std::fs::read_dir(root.join("race")).unwrap() {
        let name = entry.unwrap().file_name();
        assert_eq!(name, "x", "a staging file was left behind");
    }
}

async fn a_missing_key_is_not_found(fx: Fixture) {
    let store = &fx.store;
    let err = store.get("nothing/here", None).await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    assert_eq!(err.to_string(), "nothing is stored under nothing/here");
    assert!(matches!(
        store.head("nothing/here").await,
        Err(StoreError::NotFound { .. })
    ));
    store
        .delete("nothing/here")
        .await
        .expect("deleting nothing is fine");
}

async fn head_and_delete(fx: Fixture) {
    let store = &fx.store;
    store.put_bytes("d/one", pattern(1000)).await.unwrap();
    store.put_bytes("d/two", pattern(10)).await.unwrap();
    assert_eq!(store.head("d/one").await.unwrap(), 1000);
    store.delete("d/one").await.unwrap();
    assert!(matches!(
        store.head("d/one").await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store.get("d/one", None).await,
        Err(StoreError::NotFound { .. })
    ));
    store
        .delete("d/one")
        .await
        .expect("a second delete is fine");
    assert_eq!(store.head("d/two").await.unwrap(), 10, "only that key went");
}

async fn invalid_keys_are_refused_before_any_io(fx: Fixture) {
    let store = &fx.store;
    for key in [
        "",
        "/abs",
        "../escape",
        "a/../../escape",
        "a/./b",
        "a//b",
        "trailing/",
        "back\\slash",
        "spa ce",
        "hash#1",
        "ünïcode",
    ] {
        let refused = |r: Result<(), StoreError>| matches!(r, Err(StoreError::InvalidKey(_)));
        assert!(
            refused(store.put_bytes(key, &b"x"[..]).await.map(drop)),
            "{key:?}"
        );
        assert!(refused(store.get(key, None).await.map(drop)), "{key:?}");
        assert!(refused(store.head(key).await.map(drop)), "{key:?}");
        assert!(refused(store.delete(key).await), "{key:?}");
    }
    if let Some(dir) = &fx.dir {
        // The store's folder is <dir>/audio: nothing may have appeared beside it.
        let names: Vec<_> = std::fs::read_dir(&dir.path)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["audio"]);
    }
}

async fn the_readiness_probe_passes_and_leaves_nothing(fx: Fixture) {
    let started = tokio::time::Instant::now();
    fx.store.check().await.expect("the store is ready");
    assert!(started.elapsed() < Duration::from_secs(5));
    if let Some(dir) = &fx.dir {
        let probes = dir.path.join("audio/.sonora-probe");
        let left = std::fs::read_dir(&probes).map_or(0, |d| d.count());
        assert_eq!(left, 0, "the probe object was left behind");
    }
}

/// The readiness check's time limit, or a killed process, can stop a probe between its write and
/// its delete. The chaos run found such probe objects piling up, one per probe cut short; now
/// every probe of a store uses one key, so the next probe overwrites and deletes what was left.
async fn a_probe_cut_short_leaves_nothing_after_the_next(fx: Fixture) {
    for i in 0..20u64 {
        let _ = tokio::time::timeout(Duration::from_micros(i * 250), fx.store.check()).await;
    }
    // Exactly what a probe stopped after its write leaves.
    fx.store
        .put_bytes(
            fx.store.probe_key(),
            Bytes::from_static(b"left by a probe cut short"),
        )
        .await
        .expect("written");
    assert!(fx.store.probe_key().starts_with(".sonora-probe/"));
    fx.store.check().await.expect("the store is ready");
    assert!(matches!(
        fx.store.head(fx.store.probe_key()).await,
        Err(StoreError::NotFound { .. })
    ));
    if let Some(dir) = &fx.dir {
        let probes = dir.path.join("audio/.sonora-probe");
        let left: Vec<_> = std::fs::read_dir(&probes)
            .map(|d| d.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "probe objects were left behind: {left:?}");
    }
}
