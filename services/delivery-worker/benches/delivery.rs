//! Delivery benchmark (not a test): run with `scripts/bench-delivery`.
//!
//! 0. Publishing: the backlog is published over gRPC by concurrent callers, as the outbox relays
//!    do (`PublishBatch`, `BENCH_PUBLISHERS` callers, `BENCH_PUBLISH_BATCH` events a call), and
//!    for comparison one event a call (`Publish`, 4 × `BENCH_PUBLISHERS` callers), against the
//!    real service with its API only: events per second into the queue.
//! 1. Throughput: with that backlog, start the workers, and measure how many deliveries per
//!    second go from the PostgreSQL queue to a loopback receiver and are recorded.
//! 2. Latency: publish at a fixed rate through the store (as the gRPC `Publish` does) while the
//!    workers run, and measure enqueue-to-received latency at the receiver: p50, p99, max.
//!
//! It needs the PostgreSQL that `scripts/test` starts (`TEST_DATABASE_URL`) and makes its own
//! database. Every number is printed with the parameters that produced it.

#![allow(
    clippy::print_stdout,
    reason = "a benchmark reports on standard output"
)]

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::Utc;
use delivery_worker::{
    clock::SystemClock,
    metrics::DeliveryMetrics,
    model::Signing,
    policy::AddressPolicy,
    retry::RetrySchedule,
    rules::Policy,
    sender::Sender,
    store::{NewEndpoint, NewMessage, Store},
    worker::{Tuning, Worker},
};
use diesel_async::{AsyncConnection as _, AsyncPgConnection, SimpleAsyncConnection as _};
use tokio_util::sync::CancellationToken;
use webhook_signature::SigningKey;

/// When each (endpoint path, message id) arrived.
type Arrivals = Arc<Mutex<HashMap<(String, String), Instant>>>;

/// The receiver: a bare hyper server that answers 204 and notes when each message arrived.
async fn receiver(arrivals: Arrivals) -> u16 {
    use hyper::{Response, body::Incoming, server::conn::http1, service::service_fn};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let arrivals = Arc::clone(&arrivals);
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<Incoming>| {
                    let arrivals = Arc::clone(&arrivals);
                    async move {
                        let id = req
                            .headers()
                            .get("webhook-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        let path = req.uri().path().to_owned();
                        let _ = http_body_util::BodyExt::collect(req.into_body()).await;
                        arrivals.lock().unwrap().insert((path, id), Instant::now());
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(204)
                                .body(http_body_util::Empty::<bytes::Bytes>::new())
                                .unwrap(),
                        )
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    port
}

struct Bench {
    store: Store,
    url: String,
    keyring_key: String,
}

async fn setup(receiver_port: u16, endpoints: usize) -> Bench {
    let admin = std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| {
        "postgres://sonora:sonora-dev-password@127.0.0.1:5432/postgres".to_owned()
    });
    let name = format!("sonora_bench_{}", uuid::Uuid::new_v4().simple());
    let mut conn = AsyncPgConnection::establish(&admin).await.unwrap();
    conn.batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_path(&name);
    let url = url.to_string();
    let config = database::DatabaseConfig {
        url: url.clone(),
        schema: delivery_worker::SCHEMA,
        pool_size: 16,
        connect_timeout: Duration::from_secs(5),
    };
    database::migrate(&config, delivery_worker::MIGRATIONS)
        .await
        .unwrap();
    let keyring_key = secret_box::generate_key();
    let keyring = Arc::new(secret_box::Keyring::new(&keyring_key, &[]).unwrap());
    let store = Store::new(database::connect(&config).unwrap(), keyring);
    for i in 0..endpoints {
        let key = SigningKey::parse(&SigningKey::generate_hmac()).unwrap();
        store
            .create_endpoint(
                NewEndpoint {
                    tenant: ids::Tenant::parse("bench").unwrap(),
                    url: format!("http://127.0.0.1:{receiver_port}/e{i}"),
                    description: String::new(),
                    event_types: None,
                    channels: None,
                    rate_limit_per_second: None,
                    metadata: serde_json::json!({}),
                    signing: Signing::Hmac,
                },
                &key,
                delivery_worker::grpc::MAX_ENDPOINTS_PER_TENANT,
                Utc::now(),
            )
            .await
            .unwrap();
    }
    Bench {
        store,
        url,
        keyring_key,
    }
}

fn worker(bench: &Bench, tuning: Tuning) -> Arc<Worker> {
    let config = database::DatabaseConfig {
        url: bench.url.clone(),
        schema: delivery_worker::SCHEMA,
        pool_size: 8,
        connect_timeout: Duration::from_secs(5),
    };
    let keyring = Arc::new(secret_box::Keyring::new(&bench.keyring_key, &[]).unwrap());
    let store = Store::new(database::connect(&config).unwrap(), keyring);
    let policy = Arc::new(AddressPolicy::new(
        settings::Environment::Development,
        vec![],
    ));
    let (_tx, rx) = tokio::sync::watch::channel(tuning);
    Worker::new(
        store,
        Sender::new(policy, Duration::from_secs(5), Duration::from_secs(15)).unwrap(),
        Arc::new(SystemClock),
        DeliveryMetrics::register(&prometheus::Registry::new()),
        Policy {
            lease: Duration::from_secs(60),
            schedule: RetrySchedule::default(),
            disable_after: Duration::from_secs(5 * 86400),
            failing_after_attempts: 4,
            throttle: Duration::from_secs(5),
        },
        rx,
    )
}

fn message(i: usize) -> NewMessage {
    NewMessage {
        tenant: ids::Tenant::parse("bench").unwrap(),
        event_id: format!("evt-{i}"),
        event_type: "bench.event".into(),
        payload: format!(
            r#"{{"type":"bench.event","data":{{"i":{i},"text":"a payload of a realistic size for a webhook"}}}}"#
        ),
        channels: Vec::new(),
        traceparent: None,
    }
}

/// Publishes events `from..from + count` over gRPC with `callers` concurrent callers, `batch`
/// events a call (`Publish` when `batch` is 1, `PublishBatch` otherwise); returns events/s.
async fn publish_over_grpc(
    port: u16,
    from: usize,
    count: usize,
    callers: usize,
    batch: usize,
) -> f64 {
    use sonora_proto::delivery::v1::{
        PublishBatchRequest, PublishRequest, delivery_service_client::DeliveryServiceClient,
    };
    let peer = test_support::internal_keys().peer("audio-generation", "delivery-worker", port);
    let client = DeliveryServiceClient::new(peer.channel());
    let request = |i: usize| {
        let m = message(i);
        PublishRequest {
            tenant: m.tenant.to_string(),
            event_id: m.event_id,
            event_type: m.event_type,
            payload_json: m.payload,
            channels: Vec::new(),
            traceparent: String::new(),
        }
    };
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(from));
    let end = from + count;
    let started = Instant::now();
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (mut client, next) = (client.clone(), Arc::clone(&next));
            tokio::spawn(async move {
                loop {
                    let first = next.fetch_add(batch, std::sync::atomic::Ordering::Relaxed);
                    if first >= end {
                        break;
                    }
                    let last = (first + batch).min(end);
                    if batch == 1 {
                        client.publish(request(first)).await.unwrap();
                    } else {
                        let events = (first..last).map(request).collect();
                        client
                            .publish_batch(PublishBatchRequest { events })
                            .await
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    count as f64 / started.elapsed().as_secs_f64()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let workers: usize = std::env::var("BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let backlog: usize = std::env::var("BENCH_BACKLOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48_000);
    let publishers: usize = std::env::var("BENCH_PUBLISHERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let publish_batch: usize = std::env::var("BENCH_PUBLISH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let rate: usize = std::env::var("BENCH_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let seconds: usize = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let endpoints = 4;
    let tuning = Tuning {
        batch_size: 200,
        poll_interval: Duration::from_millis(500),
        max_concurrent: 256,
        per_endpoint: 64,
    };
    println!(
        "delivery benchmark: {workers} worker instance(s), {endpoints} endpoints, batch {}, concurrency {} per worker",
        tuning.batch_size, tuning.max_concurrent
    );

    // 1. Throughput from a backlog.
    let arrivals: Arrivals = Arc::default();
    let port = receiver(Arc::clone(&arrivals)).await;
    let bench = setup(port, endpoints).await;
    let messages = backlog / endpoints;
    // 0. Publishing over gRPC into the queue, the service's API only (no worker competing).
    let api_signals = lifecycle::Signals::new();
    let api = delivery_worker::Application::build(
        delivery_worker::Settings::load(&test_support::sources([
            ("DATABASE_URL", bench.url.clone()),
            ("WEBHOOK_SECRET_ENCRYPTION_KEY", bench.keyring_key.clone()),
            ("WORKER_ENABLED", "false".to_owned()),
            ("DATABASE_POOL_SIZE", "32".to_owned()),
            ("LOG_FORMAT", "text".to_owned()),
            ("RUST_LOG", "warn".to_owned()),
        ]))
        .unwrap(),
        api_signals.clone(),
    )
    .unwrap();
    let api_port = api.grpc_port();
    api.database().migrated().await;
    let api_task = tokio::spawn(api.stopped());
    let singles = (messages / 8).max(1);
    let batched = messages - singles;
    let one_by_one = publish_over_grpc(api_port, 0, singles, publishers * 4, 1).await;
    let in_batches = publish_over_grpc(api_port, singles, batched, publishers, publish_batch).await;
    api_signals.shutdown.cancel();
    let _ = api_task.await;
    let deliveries = messages * endpoints;
    println!(
        "publishing over gRPC into the queue ({endpoints} deliveries an event): PublishBatch of {publish_batch} from {publishers} callers {in_batches:.0} events/s; Publish from {} callers {one_by_one:.0} events/s; {deliveries} deliveries enqueued",
        publishers * 4
    );
    let stop = CancellationToken::new();
    let started = Instant::now();
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            tokio::spawn(worker(&bench, tuning).run(
                bench.url.clone(),
                stop.clone(),
                Duration::from_secs(10),
            ))
        })
        .collect();
    loop {
        let stats = bench.store.queue_stats(None).await.unwrap();
        if stats.delivered as usize >= deliveries {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    println!(
        "throughput: {deliveries} deliveries sent and recorded in {elapsed:.2?} = {:.0} deliveries/s (published at {in_batches:.0} events/s = {:.0} deliveries/s)",
        deliveries as f64 / elapsed.as_secs_f64(),
        in_batches * endpoints as f64
    );

    // 2. Latency at a fixed rate, with the same workers still running.
    arrivals.lock().unwrap().clear();
    let total = rate * seconds;
    let per_message = Duration::from_secs(1) / u32::try_from(rate / endpoints).unwrap().max(1);
    let mut published: HashMap<String, Instant> = HashMap::new();
    let start = tokio::time::Instant::now();
    for i in 0..total / endpoints {
        tokio::time::sleep_until(start + per_message * u32::try_from(i).unwrap()).await;
        let at = Instant::now();
        let out = bench
            .store
            .publish(&message(1_000_000 + i), 8, Utc::now())
            .await
            .unwrap();
        published.insert(out.message_id.to_string(), at);
    }
    let sent = published.len() * endpoints;
    let deadline = Instant::now() + Duration::from_secs(30);
    while arrivals.lock().unwrap().len() < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    for h in handles {
        h.await.unwrap();
    }
    let arrivals = arrivals.lock().unwrap();
    let mut latencies: Vec<Duration> = arrivals
        .iter()
        .filter_map(|((_, id), got)| {
            published
                .get(id)
                .map(|at| got.saturating_duration_since(*at))
        })
        .collect();
    latencies.sort();
    println!(
        "latency at {rate} deliveries/s for {seconds}s, enqueue to received: p50 {:.1?}, p99 {:.1?}, max {:.1?} ({} of {sent} deliveries arrived)",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default(),
        latencies.len(),
    );
}
