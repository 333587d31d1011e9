//! The gateway's front-door benchmark (not a test): run with `scripts/bench-gateway`.
//!
//! Starts the gateway (release build) against the PostgreSQL and Redis that `scripts/test`
//! starts, then runs `wrk` on loopback, one after the other on the same server:
//! - `GET /health`: no key, no limit (the reference: what actix and the machine give);
//! - `GET /v1/auth/verify` with an API key: the key looked up (through the in-process cache), both
//!   rate limiters checked in Redis by one script per request, usage metered, the key's JSON.
//!
//! The key's and the address's limits are set far above the load so that every request is
//! checked and admitted (a 429 would be cheaper than the work measured). Prints requests per
//! second and p50/p99 latency of each, saturated (`BENCH_CONNECTIONS`, default 64: throughput)
//! and lightly loaded (`BENCH_LIGHT_CONNECTIONS`, default 4: what auth and limits add to a
//! request's latency when nothing queues). `BENCH_SECONDS` (default 10), `BENCH_THREADS`
//! (default 1).

#![allow(
    clippy::print_stdout,
    reason = "a benchmark reports on standard output"
)]

use internal_rpc::Scope;
use test_stack::{Service, Stack};
use test_support::TestDatabase;

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
}

/// `12.34us`, `1.20ms`, `2.00s` as milliseconds.
fn millis(text: &str) -> f64 {
    let text = text.trim();
    for (unit, factor) in [("us", 0.001), ("ms", 1.0), ("s", 1000.0)] {
        if let Some(number) = text.strip_suffix(unit) {
            return number.parse::<f64>().expect("a number") * factor;
        }
    }
    panic!("unknown latency unit in {text:?}");
}

fn wrk(url: &str, key: Option<&str>, connections: u64) -> Run {
    let seconds = setting("BENCH_SECONDS", 10);
    let threads = setting("BENCH_THREADS", 1);
    let mut command = std::process::Command::new("wrk");
    command.args([
        "--latency",
        &format!("-t{threads}"),
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
    ]);
    if let Some(key) = key {
        command.args(["-H", &format!("x-api-key: {key}")]);
    }
    let output = command
        .arg(url)
        .output()
        .expect("wrk runs (apt-get install wrk)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "wrk failed: {text}");
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(str::to_owned))
            .unwrap_or_else(|| panic!("no {prefix:?} in wrk's output: {text}"))
    };
    let non_2xx = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .map_or(0, |n| n.trim().parse().expect("a count"));
    Run {
        rps: field("Requests/sec:").trim().parse().expect("a rate"),
        p50_ms: millis(&field("50%")),
        p99_ms: millis(&field("99%")),
        non_2xx,
    }
}

#[tokio::main]
async fn main() {
    let db = TestDatabase::create().await.expect("the test database");
    let stack = Stack::new(&db)
        .with_gateway()
        .setting(
            Service::Gateway,
            "RATE_LIMIT_STANDARD",
            "10000000/s,burst=1000000",
        )
        .setting(
            Service::Gateway,
            "RATE_LIMIT_PER_IP",
            "10000000/s,burst=1000000",
        )
        .setting(Service::Gateway, "LOG_LEVEL", "warn")
        .start()
        .await;
    let base = stack.http_url(Service::Gateway);
    let key = stack.api_key("bench", &[Scope::Usage]).await;
    let verify = format!("{base}/v1/auth/verify");
    let check = test_support::http_client()
        .get(&verify)
        .header("x-api-key", &key)
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(check.status(), 200);
    assert!(
        check.headers().contains_key("ratelimit"),
        "the limiter runs"
    );

    let health_url = format!("{base}/health");
    let runs = tokio::task::spawn_blocking(move || {
        // Warm up both paths, then measure.
        let _ = wrk_short(&health_url, None);
        let _ = wrk_short(&verify, Some(&key));
        let busy = setting("BENCH_CONNECTIONS", 64);
        let light = setting("BENCH_LIGHT_CONNECTIONS", 4);
        (
            wrk(&health_url, None, busy),
            wrk(&verify, Some(&key), busy),
            wrk(&health_url, None, light),
            wrk(&verify, Some(&key), light),
        )
    })
    .await
    .expect("wrk ran");
    let (health, verified, health_light, verified_light) = runs;
    assert_eq!(
        verified.non_2xx, 0,
        "every authenticated request was admitted"
    );
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    println!(
        "machine: {cpu}, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("| endpoint | connections | requests/s | p50 ms | p99 ms |");
    println!("| --- | --- | --- | --- | --- |");
    for (name, run, connections) in [
        (
            "GET /health (no key, no limit)",
            &health,
            setting("BENCH_CONNECTIONS", 64),
        ),
        (
            "GET /v1/auth/verify (key + Redis limits + usage)",
            &verified,
            setting("BENCH_CONNECTIONS", 64),
        ),
        (
            "GET /health (no key, no limit)",
            &health_light,
            setting("BENCH_LIGHT_CONNECTIONS", 4),
        ),
        (
            "GET /v1/auth/verify (key + Redis limits + usage)",
            &verified_light,
            setting("BENCH_LIGHT_CONNECTIONS", 4),
        ),
    ] {
        println!(
            "| {name} | {connections} | {:.0} | {:.2} | {:.2} |",
            run.rps, run.p50_ms, run.p99_ms
        );
    }
    println!(
        "saturated: authenticated/unauthenticated throughput {:.2}; light load: p99 added by auth and limits {:.2} ms (p50 {:.2} ms)",
        verified.rps / health.rps,
        verified_light.p99_ms - health_light.p99_ms,
        verified_light.p50_ms - health_light.p50_ms,
    );
    stack.stop().await;
}

fn wrk_short(url: &str, key: Option<&str>) -> std::process::Output {
    let mut command = std::process::Command::new("wrk");
    command.args(["-t1", "-c16", "-d2s"]);
    if let Some(key) = key {
        command.args(["-H", &format!("x-api-key: {key}")]);
    }
    command.arg(url).output().expect("wrk runs")
}
