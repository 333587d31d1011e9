//! The queue under several workers, and under a worker killed mid-batch.

use std::{
    collections::HashMap,
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use delivery_worker::clock::SystemClock;
use sonora_proto::delivery::v1::GetQueueStatsRequest;
use test_support::{TestDatabase, eventually};
use tokio_util::sync::CancellationToken;

use crate::support::{Behavior, Receiver, endpoint, publish, settings, start};

fn worker(s: &delivery_worker::Settings) -> Arc<delivery_worker::worker::Worker> {
    crate::support::manual_worker(s, Arc::new(SystemClock))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_workers_deliver_a_thousand_messages_once_each() {
    let db = TestDatabase::create().await.unwrap();
    let receiver = Receiver::start().await;
    let s = settings(
        &db,
        &[("WORKER_ENABLED", "false"), ("WORKER_BATCH_SIZE", "50")],
    );
    let mut svc = start(s.clone(), None).await;
    let c = &mut svc.client;
    let paths = ["/p1", "/p2", "/p3", "/p4"];
    for (i, path) in paths.iter().enumerate() {
        // Each endpoint takes a different share of the event types.
        let types: &[&str] = match i {
            0 => &[],
            1 => &["even"],
            2 => &["odd"],
            _ => &["even", "odd"],
        };
        endpoint(c, &receiver, "acme", path, types).await;
    }
    let stop = CancellationToken::new();
    let url = s.database.url.expose().to_owned();
    let workers: Vec<_> = (0..3)
        .map(|_| tokio::spawn(worker(&s).run(url.clone(), stop.clone(), Duration::from_secs(10))))
        .collect();
    let mut expected = 0;
    for i in 0..1000 {
        let kind = if i % 2 == 0 { "even" } else { "odd" };
        let published = c
            .publish(publish(
                "acme",
                &format!("evt-{i}"),
                kind,
                serde_json::json!({ "i": i }),
            ))
            .await
            .unwrap();
        expected += published.into_inner().deliveries as usize;
    }
    assert_eq!(expected, 3000);
    eventually(Duration::from_secs(120), "every delivery recorded", || {
        let mut c = c.clone();
        async move {
            let stats = c
                .get_queue_stats(GetQueueStatsRequest::default())
                .await
                .ok()?
                .into_inner();
            (stats.delivered == 3000).then_some(())
        }
    })
    .await;
    stop.cancel();
    for w in workers {
        w.await.unwrap();
    }
    let received = receiver.received();
    let mut counts: HashMap<(String, String), usize> = HashMap::new();
    for r in &received {
        assert!(r.verified);
        *counts.entry((r.path.clone(), r.id.clone())).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    assert_eq!(counts.len(), 3000, "some deliveries are missing");
}

/// A worker killed with SIGKILL loses nothing, and its rows come back within the lease: with
/// the default lease (15 s, renewed by a heartbeat while the worker lives), the last of them is
/// delivered well within the old 60 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_batch_loses_nothing() {
    let db = TestDatabase::create().await.unwrap();
    let receiver = Receiver::start().await;
    // Slow answers keep deliveries in flight when the process dies.
    receiver.set(
        "/slow",
        Behavior {
            status: 200,
            delay: Duration::from_millis(500),
            retry_after: None,
        },
    );
    let key = secret_box::generate_key();
    // The default lease and request timeout, in the test as in the killed process.
    let s = settings(
        &db,
        &[
            ("WORKER_ENABLED", "false"),
            ("WEBHOOK_SECRET_ENCRYPTION_KEY", key.as_str()),
        ],
    );
    assert_eq!(s.lease, Duration::from_secs(15));
    let mut svc = start(s.clone(), None).await;
    let c = &mut svc.client;
    endpoint(c, &receiver, "acme", "/slow", &[]).await;
    for i in 0..200 {
        c.publish(publish(
            "acme",
            &format!("evt-{i}"),
            "a.b",
            serde_json::json!({ "i": i }),
        ))
        .await
        .unwrap();
    }

    let mut child = Command::new(env!("CARGO_BIN_EXE_delivery-worker"))
        .env_clear()
        .envs([
            ("DATABASE_URL", db.url.as_str()),
            ("GRPC_ADDR", "127.0.0.1:0"),
            ("HTTP_ADDR", "127.0.0.1:0"),
            ("WEBHOOK_SECRET_ENCRYPTION_KEY", key.as_str()),
            ("MAX_CONCURRENT_DELIVERIES", "32"),
            ("LOG_FORMAT", "json"),
            (
                "INTERNAL_AUTH_TRUSTED_KEYS",
                test_support::internal_keys().trusted(),
            ),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || for _ in BufReader::new(stdout).lines() {});
    eventually(
        Duration::from_secs(30),
        "the worker process to be mid-batch",
        || async { (receiver.received_on("/slow").len() >= 40).then_some(()) },
    )
    .await;
    child.kill().unwrap(); // SIGKILL: no drain, no recording.
    let killed = Instant::now();
    child.wait().unwrap();
    let seen_before = receiver.received_on("/slow").len();
    assert!(
        seen_before < 200,
        "the process finished before it was killed"
    );

    // Another worker takes over; rows the dead one held come back when their lease expires.
    let stop = CancellationToken::new();
    let url = s.database.url.expose().to_owned();
    let survivor = tokio::spawn(worker(&s).run(url, stop.clone(), Duration::from_secs(5)));
    let distinct = || {
        let mut ids: Vec<_> = receiver
            .received_on("/slow")
            .into_iter()
            .map(|r| r.id)
            .collect();
        ids.sort();
        ids.dedup();
        ids.len()
    };
    eventually(Duration::from_secs(60), "all 200 received", || async {
        (distinct() == 200).then_some(())
    })
    .await;
    let last_delivery = killed.elapsed();
    eprintln!(
        "kill to last delivery: {:.1} s (lease {:?}; {seen_before} requests had arrived before the kill)",
        last_delivery.as_secs_f64(),
        s.lease
    );
    assert!(
        last_delivery < Duration::from_secs(30),
        "the last delivery came {last_delivery:?} after the kill"
    );
    eventually(Duration::from_secs(30), "all 200 recorded", || {
        let mut c = c.clone();
        async move {
            let stats = c
                .get_queue_stats(GetQueueStatsRequest::default())
                .await
                .ok()?
                .into_inner();
            (stats.delivered == 200).then_some(())
        }
    })
    .await;
    stop.cancel();
    survivor.await.unwrap();
    assert_eq!(distinct(), 200, "every message arrived at least once");
}

/// A delivery slower than the lease is still sent exactly once: the heartbeat keeps renewing its
/// lease, so the other worker polling the queue never sees it expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delivery_slower_than_the_lease_is_sent_once() {
    let db = TestDatabase::create().await.unwrap();
    let receiver = Receiver::start().await;
    let s = settings(
        &db,
        &[
            ("WORKER_ENABLED", "false"),
            ("WORKER_LEASE", "2s"),
            ("DATABASE_CONNECT_TIMEOUT", "500ms"),
            ("WEBHOOK_REQUEST_TIMEOUT", "10s"),
        ],
    );
    receiver.set(
        "/slow",
        Behavior {
            status: 204,
            // Twice the lease and more.
            delay: Duration::from_secs(5),
            retry_after: None,
        },
    );
    let mut svc = start(s.clone(), None).await;
    let c = &mut svc.client;
    endpoint(c, &receiver, "acme", "/slow", &[]).await;
    let stop = CancellationToken::new();
    let url = s.database.url.expose().to_owned();
    let workers: Vec<_> = (0..2)
        .map(|_| tokio::spawn(worker(&s).run(url.clone(), stop.clone(), Duration::from_secs(10))))
        .collect();
    for i in 0..3 {
        c.publish(publish(
            "acme",
            &format!("slow-{i}"),
            "a.b",
            serde_json::json!({ "i": i }),
        ))
        .await
        .unwrap();
    }
    eventually(
        Duration::from_secs(30),
        "all 3 recorded as delivered",
        || {
            let mut c = c.clone();
            async move {
                let stats = c
                    .get_queue_stats(GetQueueStatsRequest::default())
                    .await
                    .ok()?
                    .into_inner();
                (stats.delivered == 3).then_some(())
            }
        },
    )
    .await;
    // Time for a second sending, had a lease run out while the first was in flight.
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    for w in workers {
        w.await.unwrap();
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for r in receiver.received_on("/slow") {
        *counts.entry(r.id).or_default() += 1;
    }
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(
        counts.values().all(|n| *n == 1),
        "sent more than once: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_worker_limits_without_stopping() {
    let db = TestDatabase::create().await.unwrap();
    let receiver = Receiver::start().await;
    let key = secret_box::generate_key();
    let dir = std::env::temp_dir().join(format!("dw-reload-{}", db.name));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("sonora.toml");
    std::fs::write(
        &file,
        "WORKER_BATCH_SIZE = 10\nMAX_CONCURRENT_DELIVERIES = 4\n",
    )
    .unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_delivery-worker"))
        .env_clear()
        .envs([
            ("DATABASE_URL", db.url.as_str()),
            ("GRPC_ADDR", "127.0.0.1:0"),
            ("HTTP_ADDR", "127.0.0.1:0"),
            ("WEBHOOK_SECRET_ENCRYPTION_KEY", key.as_str()),
            ("SONORA_CONFIG_FILE", file.to_str().unwrap()),
            ("LOG_FORMAT", "json"),
            (
                "INTERNAL_AUTH_TRUSTED_KEYS",
                test_support::internal_keys().trusted(),
            ),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(event) = serde_json::from_str(&line) {
                let _ = lines_tx.send(event);
            }
        }
    });
    let grpc_port = loop {
        let event = lines.recv().await.expect("the service logs its ports");
        if let Some(port) = event["grpc_port"].as_u64() {
            break u16::try_from(port).unwrap();
        }
    };
    let mut c = crate::support::Client::new(grpc_port);
    // Until its migrations are applied the service answers UNAVAILABLE, which callers retry.
    eventually(
        Duration::from_secs(30),
        "the service to accept calls",
        || {
            let mut c = c.clone();
            async move {
                match c.get_queue_stats(GetQueueStatsRequest::default()).await {
                    Ok(_) => Some(()),
                    Err(status) => {
                        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                        None
                    }
                }
            }
        },
    )
    .await;
    endpoint(&mut c, &receiver, "acme", "/r", &[]).await;
    c.publish(publish("acme", "before", "a.b", serde_json::json!({})))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(20),
        "delivery before reload",
        || async { (!receiver.received_on("/r").is_empty()).then_some(()) },
    )
    .await;

    std::fs::write(
        &file,
        "WORKER_BATCH_SIZE = 250\nMAX_CONCURRENT_DELIVERIES = 32\n",
    )
    .unwrap();
    let status = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let reloaded = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let event = lines.recv().await.expect("still logging");
            if event["message"] == "worker limits reloaded" {
                break event;
            }
        }
    })
    .await
    .expect("a reload line");
    let new = reloaded["new"].as_str().unwrap_or_default().to_owned();
    assert!(
        new.contains("batch_size: 250") && new.contains("max_concurrent: 32"),
        "{reloaded}"
    );

    // Still running and delivering.
    c.publish(publish("acme", "after", "a.b", serde_json::json!({})))
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "delivery after reload", || async {
        (receiver.received_on("/r").len() >= 2).then_some(())
    })
    .await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(exit.code(), Some(0));
}
