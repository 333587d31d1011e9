//! Inbound webhook benchmark (not a test): run with `scripts/bench-ingest`.
//!
//! 1. Throughput: `BENCH_CLIENTS` concurrent senders post signed GitHub `issues` webhooks (each
//!    its own delivery id, so each is verified and committed to the inbox before its 200) for
//!    `BENCH_SECONDS`: acknowledged webhooks per second. Printed beside, from the same run and
//!    machine, the raw PostgreSQL ceiling the script measures with pgbench (a durable
//!    single-row INSERT with a unique key, same client count), passed in `BENCH_PGBENCH_TPS`.
//! 2. Latency: webhooks sent at a fixed `BENCH_RATE` a second for `BENCH_SECONDS`:
//!    acknowledgement latency p50, p99 and max.
//!
//! No routing rule matches these events, so each is stored as done (one INSERT). 3. Routed: the
//! same load on a replica whose rule publishes every event, so each is also claimed, written to
//! the outbox and settled by the dispatcher on the same cores: acknowledged per second, and how
//! soon every event was dispatched.
//!
//! It needs the PostgreSQL and Redis that `scripts/test` starts.

#![allow(
    clippy::print_stdout,
    reason = "a benchmark reports on standard output"
)]

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use ring::hmac;
use test_stack::{Service, Stack, StackBuilder};
use test_support::TestDatabase;

const SECRET: &str = "bench-github-webhook-secret-0123456789";

fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn sign(body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    let hex: String = hmac::sign(&key, body)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// A realistic small `issues` event, and its signature.
fn event(n: u64) -> (String, String) {
    let body = serde_json::json!({
        "action": "labeled",
        "issue": {"number": n, "title": "Crash when the voice reads a long list", "labels": [{"name": "bug"}]},
        "label": {"name": "bug"},
        "repository": {"full_name": "sonora-dev/sonora"},
        "sender": {"login": "octocat"},
    })
    .to_string();
    let signature = sign(body.as_bytes());
    (body, signature)
}

async fn send(client: &reqwest::Client, url: &str, n: u64) -> Duration {
    let (body, signature) = event(n);
    let started = Instant::now();
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .header("x-github-event", "issues")
        .header("x-github-hook-id", "1")
        .header("x-github-delivery", format!("bench-{n}"))
        .header("x-hub-signature-256", signature)
        .body(body)
        .send()
        .await
        .expect("the request is sent");
    assert_eq!(response.status(), 200, "every webhook is acknowledged");
    started.elapsed()
}

/// Webhooks per second as wrk sends them (`None` without wrk): GitHub signs the body only, so
/// one body serves every request, and a Lua script gives each its own `X-GitHub-Delivery`.
fn wrk_throughput(url: &str, connections: usize, seconds: u64) -> Option<String> {
    let (body, signature) = event(0);
    let dir = std::env::temp_dir().join(format!("sonora-bench-ingest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let script = dir.join("deliveries.lua");
    std::fs::write(
        &script,
        format!(
            r#"
local counter = 0
math.randomseed(os.time())
prefix = tostring(math.random(1, 1000000000))
init = function(args)
  wrk.method = "POST"
  wrk.body = [==[{body}]==]
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["X-GitHub-Event"] = "issues"
  wrk.headers["X-GitHub-Hook-ID"] = "1"
  wrk.headers["X-Hub-Signature-256"] = "{signature}"
end
request = function()
  counter = counter + 1
  wrk.headers["X-GitHub-Delivery"] = "wrk-" .. prefix .. "-" .. counter
  return wrk.format()
end
"#
        ),
    )
    .ok()?;
    let output = std::process::Command::new("wrk")
        .args([
            "--latency",
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "-s",
        ])
        .arg(&script)
        .arg(url)
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let _ = std::fs::remove_dir_all(&dir);
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_owned()))
    };
    let non_2xx = field("Non-2xx or 3xx responses:").unwrap_or_else(|| "0".to_owned());
    Some(format!(
        "with wrk ({connections} connections, {seconds} s): {} webhooks/s, p50 {}, p99 {}, non-2xx {non_2xx}",
        field("Requests/sec:")?,
        field("50%")?,
        field("99%")?,
    ))
}

fn summary(mut latencies: Vec<Duration>) -> String {
    latencies.sort();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1000.0
    };
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        at(0.5),
        at(0.99),
        at(1.0)
    )
}

#[tokio::main]
async fn main() {
    let clients: usize = setting("BENCH_CLIENTS", 16);
    let seconds: u64 = setting("BENCH_SECONDS", 10);
    let rate: u64 = setting("BENCH_RATE", 1000);
    let pgbench: String = setting("BENCH_PGBENCH_TPS", "not measured".to_owned());
    let db = TestDatabase::create().await.unwrap();
    let (stack, url) = start_github_ingest(Stack::new(&db)).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap();
    let next = Arc::new(AtomicU64::new(0));

    // 1. As fast as the clients can.
    let (total, elapsed) = saturate(&client, &url, clients, seconds, &next).await;
    println!(
        "verified, committed and acknowledged: {:.0} webhooks/s ({total} in {elapsed:.1} s, {clients} clients); reference, pgbench durable single-row INSERT with a unique key, {clients} clients: {pgbench} tps",
        total as f64 / elapsed
    );

    // 1b. The same with wrk (a C load generator, far lighter than this process's client, which
    // shares the two cores with the server): one body, each request its own delivery id.
    if let Some(line) = wrk_throughput(&url, clients, seconds) {
        println!("{line}");
    }

    // 2. At a fixed rate.
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sent = Vec::new();
    for _ in 0..rate * seconds {
        tick.tick().await;
        let (client, url, next, latencies) =
            (client.clone(), url.clone(), next.clone(), latencies.clone());
        sent.push(tokio::spawn(async move {
            let latency = send(&client, &url, next.fetch_add(1, Ordering::Relaxed)).await;
            latencies.lock().unwrap().push(latency);
        }));
    }
    for task in sent {
        task.await.unwrap();
    }
    let latencies = std::mem::take(&mut *latencies.lock().unwrap());
    println!(
        "at {rate}/s for {seconds} s: acknowledgement {}",
        summary(latencies)
    );
    stack.stop().await;

    // 3. Routed: a rule publishes every event to a tenant's partners, so each one is also
    //    claimed, written to the outbox with its attempt, and settled (and relayed to
    //    delivery-worker) on the same two cores while the load goes on. Without rules (above) an
    //    event has nothing to run and is stored as done.
    let rules = serde_json::json!([{
        "name": "publish-issues", "source": "github", "event": "issues",
        "tenant": "bench", "actions": ["publish"]
    }])
    .to_string();
    let (routed, url) = start_github_ingest(
        Stack::new(&db)
            .with_delivery()
            .setting(Service::WebhookIngest, "ROUTING_RULES", rules)
            .setting(Service::DeliveryWorker, "RUST_LOG", "warn"),
    )
    .await;
    let started = Instant::now();
    let acknowledged = match wrk_throughput(&url, clients, seconds) {
        Some(line) => line,
        None => {
            let (total, elapsed) = saturate(&client, &url, clients, seconds, &next).await;
            format!(
                "{:.0} webhooks/s ({total} in {elapsed:.1} s, {clients} clients)",
                total as f64 / elapsed
            )
        }
    };
    let count = |query: &str| -> u64 {
        let run = test_support::run_binary("/usr/bin/psql", &[&db.url, "-tAc", query], &[]);
        run.stdout.trim().parse().unwrap_or(u64::MAX)
    };
    while count(
        "select count(*) from ingest.inbox where state in ('received', 'dispatched', 'failed')",
    ) > 0
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained = started.elapsed().as_secs_f64();
    let dispatched = count(
        "select count(*) from ingest.inbox where state = 'done' and attempts > 0 and \
         array_length(tenants, 1) = 1",
    );
    println!(
        "routed, each event published: acknowledged {acknowledged}; all {dispatched} dispatched \
         {drained:.1} s after the load began: {:.0} events/s end to end",
        dispatched as f64 / drained
    );
    routed.stop().await;
}

/// Starts `stack` with webhook-ingest receiving GitHub webhooks signed with [`SECRET`], its
/// per-address limit off, once it is ready; returns it and the GitHub webhook URL.
async fn start_github_ingest(stack: StackBuilder) -> (Stack, String) {
    let stack = stack
        .with_ingest()
        .setting(Service::WebhookIngest, "GITHUB_WEBHOOK_SECRET", SECRET)
        .setting(Service::WebhookIngest, "WEBHOOK_RATE_LIMIT_PER_IP", "0")
        .setting(Service::WebhookIngest, "RUST_LOG", "warn")
        .start()
        .await;
    test_support::wait_ready(&stack.ops_url(Service::WebhookIngest), 200).await;
    let url = format!(
        "{}/api/v1/webhooks/github",
        stack.http_url(Service::WebhookIngest)
    );
    (stack, url)
}

/// `clients` senders posting as fast as they are answered for `seconds`: how many, in how long.
async fn saturate(
    client: &reqwest::Client,
    url: &str,
    clients: usize,
    seconds: u64,
    next: &Arc<AtomicU64>,
) -> (u64, f64) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (client, url, next) = (client.clone(), url.to_owned(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = 0_u64;
            while Instant::now() < deadline {
                send(&client, &url, next.fetch_add(1, Ordering::Relaxed)).await;
                done += 1;
            }
            done
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }
    (total, started.elapsed().as_secs_f64())
}
