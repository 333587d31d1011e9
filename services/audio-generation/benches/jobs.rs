//! Audio jobs benchmark (not a test): run with `scripts/bench-audio`.
//!
//! 1. Create latency: `CreateSoundEffect` over gRPC (internal token signed and checked, the row
//!    committed, the submitters woken) by `BENCH_CALLERS` concurrent callers, `BENCH_CREATES`
//!    calls; beside it, in the same run and database, the reference: the same number of plain
//!    single-row INSERTs of a job-sized row by as many concurrent connections.
//! 2. Throughput of the whole flow: `BENCH_JOBS` jobs created at once, with the Replicate
//!    simulator taking `BENCH_GENERATION` to make each; the wall time until every one is stored
//!    and its event has reached a partner endpoint through webhook-ingest and delivery-worker.
//!    The reference is the generation time itself, the floor no implementation can go under.
//!
//! It needs the PostgreSQL and Redis that `scripts/test` starts; every number is printed with
//! the parameters that produced it.

#![allow(
    clippy::print_stdout,
    reason = "a benchmark reports on standard output"
)]

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl as _};
use internal_rpc::{Principal, Scopes, on_behalf};
use sonora_proto::{
    audio::v1::{CreateSoundEffectRequest, audio_generation_client::AudioGenerationClient},
    delivery::v1::{CreateEndpointRequest, delivery_service_client::DeliveryServiceClient},
};
use test_stack::{Service, Simulator, Stack};
use test_support::{TestDatabase, receiver::Receiver};

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn acme() -> Principal {
    Principal {
        tenant: ids::Tenant::parse("acme").unwrap(),
        key_id: None,
        scopes: Scopes::all(),
    }
}

/// p50, p99 and max of some latencies, in milliseconds.
fn summary(mut latencies: Vec<Duration>) -> String {
    latencies.sort();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1000.0
    };
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        at(0.50),
        at(0.99),
        at(1.0)
    )
}

/// Runs `total` calls of `call` on `callers` concurrent tasks; the latency of each, and the
/// calls a second.
async fn drive<F, Fut>(callers: usize, total: usize, call: F) -> (Vec<Duration>, f64)
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..callers {
        let (latencies, next, call) = (latencies.clone(), next.clone(), call.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return;
                }
                let t = Instant::now();
                call(worker).await;
                latencies.lock().unwrap().push(t.elapsed());
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    let latencies = std::mem::take(&mut *latencies.lock().unwrap());
    (latencies, rate)
}

async fn create_latency(callers: usize, creates: usize) {
    let db = TestDatabase::create().await.unwrap();
    let stack = Stack::new(&db).with_audio().start().await;
    test_support::wait_ready(&stack.ops_url(Service::AudioGeneration), 200).await;
    let client =
        AudioGenerationClient::new(stack.peer("gateway", Service::AudioGeneration).channel());
    let create = move |_| {
        let mut client = client.clone();
        async move {
            client
                .create_sound_effect(on_behalf(
                    CreateSoundEffectRequest {
                        prompt: "rain on a tin roof".into(),
                        duration_seconds: 2.0,
                        seed: None,
                    },
                    &acme(),
                ))
                .await
                .unwrap();
        }
    };
    drive(callers, creates / 10, create.clone()).await; // warm-up
    let (latencies, rate) = drive(callers, creates, create).await;
    println!(
        "CreateSoundEffect, {callers} callers, {creates} calls: {rate:.0}/s, {}",
        summary(latencies)
    );

    // The reference: a plain durable single-row INSERT, as many connections, same database.
    let mut setup = AsyncPgConnection::establish(&db.url).await.unwrap();
    diesel::sql_query(
        "CREATE TABLE bench_rows (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, prompt TEXT NOT NULL, \
         duration DOUBLE PRECISION NOT NULL, created_at TIMESTAMPTZ NOT NULL)",
    )
    .execute(&mut setup)
    .await
    .unwrap();
    let mut connections = Vec::new();
    for _ in 0..callers {
        connections.push(Arc::new(tokio::sync::Mutex::new(
            AsyncPgConnection::establish(&db.url).await.unwrap(),
        )));
    }
    let insert = move |worker: usize| {
        let conn = connections[worker].clone();
        async move {
            diesel::sql_query(
                "INSERT INTO bench_rows VALUES ($1, 'acme', 'rain on a tin roof', 2.0, now())",
            )
            .bind::<diesel::sql_types::Text, _>(ids::JobId::new())
            .execute(&mut *conn.lock().await)
            .await
            .unwrap();
        }
    };
    let (latencies, rate) = drive(callers, creates, insert).await;
    println!(
        "reference: INSERT of one row, {callers} connections, {creates} rows: {rate:.0}/s, {}",
        summary(latencies)
    );
    stack.stop().await;
}

async fn whole_flow(jobs: usize, generation: &str) {
    let db = TestDatabase::create().await.unwrap();
    let sim = Simulator::start(&[
        ("SIMULATOR_GENERATION_DELAY", generation),
        ("SIMULATOR_MAX_PREDICTIONS", "100000"),
    ]);
    let stack = Stack::new(&db)
        .with_delivery()
        .with_ingest()
        .with_audio()
        .replicate(&sim)
        .start()
        .await;
    test_support::wait_ready(&stack.ops_url(Service::AudioGeneration), 200).await;
    test_support::wait_ready(&stack.ops_url(Service::WebhookIngest), 200).await;
    let partner = Receiver::start().await;
    DeliveryServiceClient::new(stack.peer("gateway", Service::DeliveryWorker).channel())
        .create_endpoint(on_behalf(
            CreateEndpointRequest {
                url: partner.url("/sonora"),
                ..Default::default()
            },
            &acme(),
        ))
        .await
        .unwrap();
    let client =
        AudioGenerationClient::new(stack.peer("gateway", Service::AudioGeneration).channel());
    let started = Instant::now();
    let mut creating = Vec::new();
    for i in 0..jobs {
        let mut client = client.clone();
        creating.push(tokio::spawn(async move {
            client
                .create_sound_effect(on_behalf(
                    CreateSoundEffectRequest {
                        prompt: format!("footsteps on gravel, take {i}"),
                        duration_seconds: 2.0,
                        seed: None,
                    },
                    &acme(),
                ))
                .await
                .unwrap();
        }));
    }
    for task in creating {
        task.await.unwrap();
    }
    let created = started.elapsed();
    loop {
        let delivered = partner.received_on("/sonora").len();
        if delivered >= jobs {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "only {delivered} of {jobs} events after 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let done = started.elapsed();
    println!(
        "{jobs} sound effects of 2 s, generation {generation}: all created in {:.2} s, all stored and delivered in {:.2} s (reference: the generation alone, {generation})",
        created.as_secs_f64(),
        done.as_secs_f64()
    );
    stack.stop().await;
}

#[tokio::main]
async fn main() {
    let callers = setting("BENCH_CALLERS", 4);
    let creates = setting("BENCH_CREATES", 2000);
    let jobs = setting("BENCH_JOBS", 100);
    let generation: String = setting("BENCH_GENERATION", "1s".to_owned());
    create_latency(callers, creates).await;
    whole_flow(jobs, &generation).await;
}
