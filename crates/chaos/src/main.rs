//! `sonora-chaos`: the chaos run. It brings up the whole system on loopback (the five services
//! as separate processes from their real binaries, two replicas of the gateway, delivery-worker
//! and webhook-ingest, their own PostgreSQL and Redis, the Replicate simulator, partner
//! receivers that verify every signature, the fake code-generation API), drives steady mixed
//! traffic while injecting faults on a schedule, lets the system settle, checks that nothing
//! accepted was lost or took effect twice and that every failure is explained by a fault, prints
//! the table, and exits non-zero on any loss, duplicate or unexplained failure.
//!
//! ```text
//! sonora-chaos --bin-dir DIR --voices-dir DIR [--duration 10m] [--short] [--seed N] [--run-dir DIR]
//! ```
//!
//! `scripts/chaos` builds the binaries and runs it.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool reports on its standard streams"
)]

mod faults;
mod infra;
mod secrets;
mod services;
mod stack;
mod traffic;
mod verify;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::{
    faults::FaultWindow,
    stack::{Options, Stack},
    traffic::{Outcome, Traffic},
    verify::{Memory, Report},
};

const USAGE: &str = "usage: sonora-chaos --bin-dir DIR --voices-dir DIR [--duration 10m] [--short] \
[--seed N] [--run-dir DIR]";

struct Args {
    bin_dir: PathBuf,
    voices_dir: PathBuf,
    run_dir: PathBuf,
    duration: Duration,
    short: bool,
    seed: u64,
}

fn parse_duration(raw: &str) -> anyhow::Result<Duration> {
    let (number, unit) = raw
        .find(|c: char| !c.is_ascii_digit())
        .map_or((raw, "s"), |i| raw.split_at(i));
    let n: u64 = number
        .parse()
        .with_context(|| format!("--duration: {raw} is not a duration like 90s or 10m"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        _ => bail!("--duration: {raw} is not a duration like 90s or 10m"),
    };
    if !(30..=3600).contains(&secs) {
        bail!("--duration: must be from 30s to 60m");
    }
    Ok(Duration::from_secs(secs))
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = std::env::args().skip(1);
    let mut bin_dir = None;
    let mut voices_dir = None;
    let mut run_dir = None;
    let mut duration = None;
    let mut short = false;
    let mut seed = None;
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--bin-dir" => bin_dir = Some(PathBuf::from(value()?)),
            "--voices-dir" => voices_dir = Some(PathBuf::from(value()?)),
            "--run-dir" => run_dir = Some(PathBuf::from(value()?)),
            "--duration" => duration = Some(parse_duration(&value()?)?),
            "--seed" => {
                seed = Some(value()?.parse().context("--seed: must be a whole number")?);
            }
            "--short" => short = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Ok(Args {
        bin_dir: bin_dir.with_context(|| format!("--bin-dir is required\n{USAGE}"))?,
        voices_dir: voices_dir.with_context(|| format!("--voices-dir is required\n{USAGE}"))?,
        run_dir: run_dir
            .unwrap_or_else(|| std::env::temp_dir().join(format!("sonora-chaos-{stamp}"))),
        duration: duration.unwrap_or(if short {
            Duration::from_secs(90)
        } else {
            Duration::from_secs(600)
        }),
        short,
        seed: seed.unwrap_or(stamp),
    })
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sonora-chaos: {e:#}");
            return std::process::ExitCode::from(64);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    // Ctrl-C or SIGTERM ends the run early; returning drops the stack, whose processes, PostgreSQL
    // and Redis are stopped by their `Drop`.
    let outcome = runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            outcome = run(args) => outcome,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
            _ = term.recv() => bail!("terminated"),
        }
    });
    drop(runtime);
    match outcome {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("sonora-chaos: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    std::fs::create_dir_all(&args.run_dir)?;
    eprintln!(
        "chaos: run folder {} (service logs in its logs/)",
        args.run_dir.display()
    );
    let stack = Arc::new(
        Stack::start(&Options {
            bin_dir: args.bin_dir.clone(),
            voices_dir: args.voices_dir.clone(),
            run_dir: args.run_dir.clone(),
        })
        .await?,
    );
    let result = drive(&args, &stack).await;
    // The partner endpoints' secrets as they are now, while the gateway still answers.
    let mut named = secrets::recorded(&args.run_dir)?;
    for endpoint in stack.endpoints.iter().chain(stack.churn.as_ref()) {
        if let Ok((200, secret)) = stack
            .api(
                reqwest::Method::GET,
                &format!("/v1/webhook-endpoints/{}/secret", endpoint.id),
                None,
            )
            .await
            && let Some(key) = secret["key"].as_str()
        {
            named.push((format!("endpoint {} secret", endpoint.id), key.to_owned()));
        }
    }
    stack.processes.stop_all(Duration::from_secs(8));
    let leaks = secrets::search(&named, &stack.log_dir, &stack.pg.dump()?)?;
    println!(
        "secrets: {} known secrets and every secret-shaped string searched for in {} and the database: {}",
        named.len(),
        stack.log_dir.display(),
        if leaks.is_empty() {
            "none found".to_owned()
        } else {
            format!("{} FOUND", leaks.len())
        }
    );
    for leak in &leaks {
        println!("  LEAK {leak}");
    }
    Ok(result? && leaks.is_empty())
}

/// Speech at the highest concurrency the run reaches (every inference worker busy, a queue
/// behind them), so the memory measured at the start is tts-inference's working set and not
/// that of a process that has made one short sentence.
async fn warm_up(stack: &Stack) {
    let body = serde_json::json!({"text": "Warming up every worker of the voice before the run.", "format": "wav"});
    let calls = (0..8).map(|i| {
        stack
            .client
            .post(format!("{}/v1/tts", stack.gateway_url(1 + (i % 2))))
            .header("x-api-key", &stack.api_key)
            .json(&body)
            .send()
    });
    for response in futures::future::join_all(calls).await.into_iter().flatten() {
        let _ = response.bytes().await;
    }
}

async fn drive(args: &Args, stack: &Arc<Stack>) -> anyhow::Result<bool> {
    eprintln!("chaos: warming up");
    warm_up(stack).await;
    let traffic = Arc::new(Traffic::new(Arc::clone(stack)));
    let started = traffic.started;
    let until = started + args.duration;
    let workers = if args.short { 3 } else { 4 };
    eprintln!(
        "chaos: {} s of traffic with {workers} workers, seed {}",
        args.duration.as_secs(),
        args.seed
    );
    let mut tasks = Vec::new();
    for w in 0..workers {
        tasks.push(tokio::spawn(
            Arc::clone(&traffic).worker(args.seed.wrapping_add(w), until),
        ));
    }

    // Memory at the start: once the traffic has warmed every service up, before the first fault.
    let first = Duration::from_secs(if args.short { 12 } else { 30 });
    let last = args.duration.saturating_sub(Duration::from_secs(15));
    tokio::time::sleep(first.saturating_sub(Duration::from_secs(2))).await;
    let start_memory: Vec<(services::Instance, u64)> = stack
        .processes
        .instances()
        .into_iter()
        .filter_map(|i| Some((i, stack.processes.rss_kib(i)?)))
        .collect();

    // Crashes: an instance whose process ends by itself is a defect; it is started again so the
    // run goes on, and reported.
    let crashed = Arc::new(Mutex::new(Vec::<String>::new()));
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let stack = Arc::clone(stack);
        let crashed = Arc::clone(&crashed);
        let watching = watching.clone();
        tokio::spawn(async move {
            while !watching.load(std::sync::atomic::Ordering::SeqCst) {
                for i in stack.processes.instances() {
                    if let Some(status) = stack.processes.exited(i) {
                        let at = started.elapsed().as_secs_f64();
                        crashed
                            .lock()
                            .expect("not poisoned")
                            .push(format!("{i} exited by itself ({status}) at {at:.1}s"));
                        let _ = stack.processes.start(i);
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }

    let windows = Arc::new(Mutex::new(Vec::<FaultWindow>::new()));
    let (lane_a, lane_b) = faults::schedule(args.short, args.duration);
    let a = tokio::spawn(faults::run_lane(
        Arc::clone(stack),
        lane_a,
        started,
        first,
        last,
        Arc::clone(&windows),
    ));
    let b = tokio::spawn(faults::run_lane(
        Arc::clone(stack),
        lane_b,
        started,
        first + Duration::from_secs(5),
        last,
        Arc::clone(&windows),
    ));
    for t in tasks {
        t.await?;
    }
    a.await?;
    b.await?;
    let traffic_took = started.elapsed();
    eprintln!(
        "chaos: traffic done after {:.0}s; settling",
        traffic_took.as_secs_f64()
    );
    faults::restore_simulator(stack);
    faults::set_partners(stack, test_support::receiver::Behavior::status(200));
    faults::all_ready(stack, Duration::from_secs(120)).await?;

    let mut ledger = std::mem::take(&mut *traffic.ledger.lock().expect("not poisoned"));
    ledger.audio_restarts = windows
        .lock()
        .expect("not poisoned")
        .iter()
        .filter(|w| {
            matches!(w.fault, faults::Fault::Kill(i, _) if i.service == services::Service::AudioGeneration)
        })
        .count();
    let limit = Duration::from_secs(if args.short { 180 } else { 420 });
    let (findings, settle) = verify::settle(stack, &ledger, limit).await;
    watching.store(true, std::sync::atomic::Ordering::SeqCst);
    // Let the services give back what the settling left behind before reading their memory.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let memory: Vec<Memory> = start_memory
        .into_iter()
        .filter_map(|(instance, start_kib)| {
            Some(Memory {
                instance,
                start_kib,
                end_kib: stack.processes.rss_kib(instance)?,
            })
        })
        .collect();

    let windows = windows.lock().expect("not poisoned").clone();
    let unexplained: Vec<String> = ledger
        .records
        .iter()
        .filter(|r| r.outcome == Outcome::Failed)
        .filter(|r| !windows.iter().any(|w| w.covers(r)))
        .map(|r| {
            format!(
                "{} to {} at {:.1}s: {} {}",
                r.kind.name(),
                r.target,
                r.start.as_secs_f64(),
                r.status
                    .map_or_else(|| "no answer".to_owned(), |s| s.to_string()),
                r.detail
            )
        })
        .collect();
    let explained: Vec<String> = ledger
        .records
        .iter()
        .filter(|r| r.outcome == Outcome::Failed)
        .filter_map(|r| {
            let w = windows.iter().find(|w| w.covers(r))?;
            Some(format!(
                "{} to {} at {:.1}s: {} {} ← {}",
                r.kind.name(),
                r.target,
                r.start.as_secs_f64(),
                r.status
                    .map_or_else(|| "no answer".to_owned(), |s| s.to_string()),
                r.detail.chars().take(120).collect::<String>(),
                w.fault.describe()
            ))
        })
        .collect();
    let timed_out: Vec<String> = ledger
        .records
        .iter()
        .filter(|r| r.outcome == Outcome::TimedOut)
        .map(|r| {
            format!(
                "{} to {} at {:.1}s: {}",
                r.kind.name(),
                r.target,
                r.start.as_secs_f64(),
                r.detail.chars().take(120).collect::<String>()
            )
        })
        .collect();
    let command = if args.short {
        "scripts/chaos --short".to_owned()
    } else {
        format!("scripts/chaos --duration {}s", args.duration.as_secs())
    };
    let report = Report {
        command,
        seed: args.seed,
        traffic: traffic_took,
        settle,
        ledger: &ledger,
        windows: &windows,
        findings: &findings,
        memory: &memory,
        unexplained,
        explained,
        timed_out,
        crashed: crashed.lock().expect("not poisoned").clone(),
        log_dir: stack.log_dir.display().to_string(),
    };
    let text = report.render();
    println!("{text}");
    std::fs::write(args.run_dir.join("report.md"), &text)?;
    Ok(!report.failed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_seconds_or_minutes_within_bounds() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("120").unwrap(), Duration::from_secs(120));
        for bad in ["", "10h", "abc", "5s", "61m", "-3m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_same_seed_makes_the_same_choices() {
        let mut a = traffic::Rng::new(42);
        let mut b = traffic::Rng::new(42);
        let mut c = traffic::Rng::new(43);
        let xs: Vec<u64> = (0..8).map(|_| a.below(1000)).collect();
        assert_eq!(xs, (0..8).map(|_| b.below(1000)).collect::<Vec<_>>());
        assert_ne!(xs, (0..8).map(|_| c.below(1000)).collect::<Vec<_>>());
    }
}
