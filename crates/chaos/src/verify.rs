//! After the traffic: wait for the system to settle, then check that every accepted thing reached
//! its end, that nothing took effect twice, that every failure is explained by a fault, and that
//! the services' memory came back; print the table.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt::Write as _,
    time::{Duration, Instant},
};

use reqwest::Method;
use serde_json::Value;

use crate::{
    faults::FaultWindow,
    services::Instance,
    stack::{STEADY_PATHS, Stack},
    traffic::{Kind, Ledger, Outcome},
};

/// What the checks found.
#[derive(Debug, Default)]
pub struct Findings {
    /// Accepted things that did not reach their end (lost), each named.
    pub lost: Vec<String>,
    /// Things that took effect twice.
    pub duplicated: Vec<String>,
    /// Other broken promises: bad signatures, failed jobs without a reason, …
    pub broken: Vec<String>,
    /// Accepted jobs by final status.
    pub jobs: BTreeMap<String, usize>,
    /// Accepted inbound webhooks by final state.
    pub inbound: BTreeMap<String, usize>,
    /// Expected partner events delivered (per steady endpoint), and attempts the partners saw.
    pub events_expected: usize,
    pub events_delivered: usize,
    pub partner_requests: usize,
    /// Partner requests that repeated an already-answered `webhook-id` (absorbed by the id).
    pub partner_duplicates: usize,
    pub agent_runs: usize,
    pub files: usize,
}

impl Findings {
    fn pending(&self) -> usize {
        self.lost.len()
    }
}

/// Polls the checks until nothing is pending or `limit` passes; returns the last findings and
/// how long settling took.
pub async fn settle(stack: &Stack, ledger: &Ledger, limit: Duration) -> (Findings, Duration) {
    let started = Instant::now();
    loop {
        let findings = check(stack, ledger).await;
        if findings.pending() == 0 || started.elapsed() > limit {
            return (findings, started.elapsed());
        }
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for line in &findings.lost {
            let kind = if line.starts_with("job") {
                "jobs"
            } else if line.contains("webhook") {
                "inbound webhooks"
            } else if line.contains("agent") {
                "agent runs"
            } else {
                "partner events"
            };
            *kinds.entry(kind).or_default() += 1;
        }
        eprintln!(
            "chaos: settling ({:.0}s): not yet at their end: {kinds:?}, e.g. {}",
            started.elapsed().as_secs_f64(),
            findings.lost[0]
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

async fn get(stack: &Stack, path: &str) -> Option<Value> {
    for _ in 0..3 {
        if let Ok((200, body)) = stack.api(Method::GET, path, None).await {
            return Some(body);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    None
}

/// Every page of a cursor-paginated list.
async fn list_all(stack: &Stack, path: &str) -> Option<Vec<Value>> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let sep = if path.contains('?') { '&' } else { '?' };
        let url = match &cursor {
            Some(c) => format!("{path}{sep}cursor={c}"),
            None => path.to_owned(),
        };
        let page = get(stack, &url).await?;
        out.extend(page["data"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(c) if !c.is_empty() => cursor = Some(c.to_owned()),
            _ => return Some(out),
        }
    }
}

/// The job id or inbound delivery id a partner webhook is about.
fn event_key(body: &Value) -> Option<String> {
    for candidate in [
        &body["data"]["job_id"],
        &body["job_id"],
        &body["data"]["delivery_id"],
        &body["delivery_id"],
    ] {
        if let Some(s) = candidate.as_str() {
            return Some(s.to_owned());
        }
    }
    None
}

pub async fn check(stack: &Stack, ledger: &Ledger) -> Findings {
    let mut f = Findings::default();

    // Jobs: each accepted one succeeded, or failed or was cancelled with a reason.
    let mut expected: Vec<(String, &'static str)> = Vec::new();
    let mut succeeded = 0;
    for (id, _) in &ledger.jobs {
        let Some(job) = get(stack, &format!("/v1/audio-jobs/{id}")).await else {
            f.lost.push(format!("job {id}: not found"));
            continue;
        };
        let status = job["status"].as_str().unwrap_or("?").to_owned();
        *f.jobs.entry(status.clone()).or_default() += 1;
        match status.as_str() {
            "succeeded" => {
                succeeded += 1;
                expected.push((id.clone(), "completed"));
            }
            "failed" | "canceled" => {
                if job["error"].as_str().is_none_or(str::is_empty) {
                    f.broken.push(format!("job {id} {status} without a reason"));
                }
                expected.push((id.clone(), "audio.job.failed"));
            }
            other => f.lost.push(format!("job {id} still {other}")),
        }
    }
    // No job twice: the tenant's jobs are the accepted ones, and at most the ones whose answer
    // never came.
    if let Some(all) = list_all(stack, "/v1/audio-jobs?limit=500").await {
        let mut seen = BTreeSet::new();
        for job in &all {
            if let Some(id) = job["id"].as_str()
                && !seen.insert(id.to_owned())
            {
                f.duplicated.push(format!("job {id} listed twice"));
            }
        }
        if all.len() > ledger.jobs.len() + ledger.ambiguous_jobs {
            f.duplicated.push(format!(
                "{} jobs exist for {} accepted and {} unanswered creations",
                all.len(),
                ledger.jobs.len(),
                ledger.ambiguous_jobs
            ));
        }
    } else {
        f.lost.push("the job list could not be read".into());
    }
    // One stored file per succeeded job: the probe objects of the readiness check (under
    // `.sonora-probe/`) and object_store's temporary `name#n` files are not audio.
    let files: Vec<_> = stack
        .stored_files()
        .into_iter()
        .filter(|p| {
            !p.components().any(|c| {
                let c = c.as_os_str().to_string_lossy();
                c.starts_with('.') || c.contains('#')
            })
        })
        .collect();
    let probes = stack
        .stored_files()
        .into_iter()
        .filter(|p| p.starts_with(".sonora-probe"))
        .count();
    // One probe object per audio-generation process at most (a kill between a probe's write
    // and its delete); more means probes leave orphans behind.
    if probes > 1 + ledger.audio_restarts {
        f.broken.push(format!(
            "{probes} readiness probe objects left in the audio storage"
        ));
    }
    f.files = files.len();

    // Inbound webhooks: each accepted one stored once and done.
    let mut inbound: HashMap<String, Vec<String>> = HashMap::new();
    for source in ["github", crate::stack::SOURCE] {
        match list_all(
            stack,
            &format!("/v1/inbound/events?source={source}&limit=100"),
        )
        .await
        {
            Some(events) => {
                for e in events {
                    if let Some(id) = e["delivery_id"].as_str() {
                        inbound
                            .entry(id.to_owned())
                            .or_default()
                            .push(e["state"].as_str().unwrap_or("?").to_owned());
                    }
                }
            }
            None => f
                .lost
                .push(format!("the inbound events of {source} could not be read")),
        }
    }
    for w in &ledger.webhooks {
        match inbound.get(&w.delivery_id).map(Vec::as_slice) {
            None | Some([]) => f.lost.push(format!(
                "{} webhook {} accepted but not stored",
                w.source, w.delivery_id
            )),
            Some([state]) => {
                *f.inbound.entry(state.clone()).or_default() += 1;
                if state == "done" {
                    expected.push((w.delivery_id.clone(), w.event_type));
                } else if matches!(state.as_str(), "failed" | "dead_letter" | "malformed") {
                    f.broken.push(format!(
                        "{} webhook {} ended {state}",
                        w.source, w.delivery_id
                    ));
                } else {
                    f.lost.push(format!(
                        "{} webhook {} still {state}",
                        w.source, w.delivery_id
                    ));
                }
            }
            Some(states) => f.duplicated.push(format!(
                "{} webhook {} stored {} times",
                w.source,
                w.delivery_id,
                states.len()
            )),
        }
    }

    // Agent runs: one per accepted labelled issue.
    let runs = stack.codegen.requests();
    f.agent_runs = runs.iter().filter(|r| r.status == 200).count();
    for w in ledger
        .webhooks
        .iter()
        .filter(|w| w.kind == Kind::GitHubAgent)
    {
        let Some(n) = w.issue else { continue };
        let needle = format!("acme/chaos#{n}:");
        let started = runs
            .iter()
            .filter(|r| {
                r.status == 200
                    && r.body["prompt"]
                        .as_str()
                        .is_some_and(|p| p.contains(&needle))
            })
            .count();
        match started {
            1 => {}
            0 => f.lost.push(format!("no agent run for issue #{n}")),
            k => f.duplicated.push(format!("{k} agent runs for issue #{n}")),
        }
    }

    // Partner deliveries: every expected event reached both steady endpoints, signed, answered
    // 2xx in time, and under one webhook-id.
    let received = stack.receiver.received();
    f.partner_requests = received.len();
    for r in &received {
        if !r.verified {
            f.broken.push(format!(
                "{} got webhook {} whose signature did not verify",
                r.path, r.id
            ));
        }
    }
    let mut by_key: HashMap<(String, String), Vec<&test_support::receiver::Received>> =
        HashMap::new();
    for r in &received {
        if let Ok(body) = serde_json::from_str::<Value>(&r.body)
            && let Some(key) = event_key(&body)
        {
            by_key.entry((r.path.clone(), key)).or_default().push(r);
        }
    }
    f.events_expected = expected.len() * STEADY_PATHS.len();
    for path in STEADY_PATHS {
        for (key, what) in &expected {
            let got = by_key
                .get(&(path.to_owned(), key.clone()))
                .map(Vec::as_slice)
                .unwrap_or_default();
            let ids: BTreeSet<&str> = got.iter().map(|r| r.id.as_str()).collect();
            if ids.len() > 1 {
                f.duplicated.push(format!(
                    "{path} got {what} of {key} under {} webhook-ids",
                    ids.len()
                ));
            }
            let delivered: Vec<_> = got
                .iter()
                .filter(|r| r.verified && (200..300).contains(&r.status) && r.delay.is_zero())
                .collect();
            if delivered.is_empty() {
                f.lost.push(format!("{path} never got {what} of {key}"));
            } else {
                f.events_delivered += 1;
                f.partner_duplicates += delivered.len() - 1;
            }
        }
    }
    if f.files != succeeded {
        // Not pending: reported at the end if it stays so.
        f.broken.push(format!(
            "{} audio files stored for {succeeded} succeeded jobs",
            f.files
        ));
    }
    f
}

/// The memory of one instance at the start and after settling.
#[derive(Debug, Clone)]
pub struct Memory {
    pub instance: Instance,
    pub start_kib: u64,
    pub end_kib: u64,
}

impl Memory {
    /// Back near the start: at most twice, plus 64 MiB for caches and pools that fill once; and
    /// for tts-inference 64 MiB more for each of its inference workers (four on two cores), each
    /// of which holds about 50 MB while it synthesises (docs/deployment.md, `TTS_WORKERS`) and
    /// whose allocator arenas stay after a backlog.
    pub fn ok(&self) -> bool {
        let workers = if self.instance.service == crate::services::Service::TtsInference {
            4 * 64 * 1024
        } else {
            0
        };
        self.end_kib <= self.start_kib * 2 + 64 * 1024 + workers
    }
}

pub struct Report<'a> {
    pub command: String,
    pub seed: u64,
    pub traffic: Duration,
    pub settle: Duration,
    pub ledger: &'a Ledger,
    pub windows: &'a [FaultWindow],
    pub findings: &'a Findings,
    pub memory: &'a [Memory],
    pub unexplained: Vec<String>,
    /// Each failure a fault explains, with the fault.
    pub explained: Vec<String>,
    /// Requests whose client deadline passed.
    pub timed_out: Vec<String>,
    pub crashed: Vec<String>,
    pub log_dir: String,
}

impl Report<'_> {
    pub fn failed(&self) -> bool {
        !self.findings.lost.is_empty()
            || !self.findings.duplicated.is_empty()
            || !self.findings.broken.is_empty()
            || !self.unexplained.is_empty()
            || !self.crashed.is_empty()
            || self.memory.iter().any(|m| !m.ok())
            || self.windows.iter().any(|w| w.error.is_some())
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let f = self.findings;
        let _ = writeln!(s, "\n## Chaos run\n");
        let _ = writeln!(
            s,
            "`{}` (seed {}): {:.0} s of traffic, settled in {:.0} s.\n",
            self.command,
            self.seed,
            self.traffic.as_secs_f64(),
            self.settle.as_secs_f64()
        );
        let _ = writeln!(s, "| fault | at (s) | lifted (s) | recovered in (s) |");
        let _ = writeln!(s, "| --- | ---: | ---: | ---: |");
        for w in self.windows {
            let _ = writeln!(
                s,
                "| {} | {:.1} | {:.1} | {} |",
                w.fault.describe(),
                w.start.as_secs_f64(),
                w.lifted.as_secs_f64(),
                w.recovery.map_or_else(
                    || format!("never: {}", w.error.as_deref().unwrap_or("?")),
                    |r| format!("{:.1}", r.as_secs_f64())
                )
            );
        }
        let mut by_kind: BTreeMap<Kind, [usize; 4]> = BTreeMap::new();
        let mut explained = 0;
        for r in &self.ledger.records {
            let slot = by_kind.entry(r.kind).or_default();
            match r.outcome {
                Outcome::Accepted => slot[0] += 1,
                Outcome::Refused => slot[1] += 1,
                Outcome::Failed => slot[2] += 1,
                Outcome::TimedOut => slot[3] += 1,
            }
            if r.outcome == Outcome::Failed {
                explained += 1;
            }
        }
        explained -= self.unexplained.len().min(explained);
        let _ = writeln!(
            s,
            "\n| requests | accepted | refused (4xx) | failed (5xx, broken, no answer) | client timed out (30 s) |"
        );
        let _ = writeln!(s, "| --- | ---: | ---: | ---: | ---: |");
        let mut totals = [0; 4];
        for (kind, [a, r, x, t]) in &by_kind {
            let _ = writeln!(s, "| {} | {a} | {r} | {x} | {t} |", kind.name());
            totals[0] += a;
            totals[1] += r;
            totals[2] += x;
            totals[3] += t;
        }
        let _ = writeln!(
            s,
            "| **all** | **{}** | **{}** | **{}** | **{}** |",
            totals[0], totals[1], totals[2], totals[3]
        );
        let jobs: Vec<String> = f.jobs.iter().map(|(k, v)| format!("{v} {k}")).collect();
        let inbound: Vec<String> = f.inbound.iter().map(|(k, v)| format!("{v} {k}")).collect();
        let _ = writeln!(s, "\n| outcome | count |");
        let _ = writeln!(s, "| --- | ---: |");
        let _ = writeln!(
            s,
            "| jobs accepted ({}) | {} |",
            jobs.join(", "),
            self.ledger.jobs.len()
        );
        let _ = writeln!(s, "| audio files stored | {} |", f.files);
        let _ = writeln!(
            s,
            "| inbound webhooks accepted ({}) | {} |",
            inbound.join(", "),
            self.ledger.webhooks.len()
        );
        let _ = writeln!(s, "| agent runs started | {} |", f.agent_runs);
        let _ = writeln!(
            s,
            "| partner events delivered (of expected, 2 endpoints) | {} of {} |",
            f.events_delivered, f.events_expected
        );
        let _ = writeln!(
            s,
            "| partner requests (attempts) | {} |",
            f.partner_requests
        );
        let _ = writeln!(
            s,
            "| duplicates absorbed (webhooks resent by senders; partner redeliveries under one webhook-id) | {}; {} |",
            self.ledger.duplicates_sent, f.partner_duplicates
        );
        let _ = writeln!(s, "| secret rotations | {} |", self.ledger.rotations);
        let _ = writeln!(s, "| failures explained by a fault window | {explained} |");
        let _ = writeln!(
            s,
            "| **unexplained failures** | **{}** |",
            self.unexplained.len()
        );
        let _ = writeln!(s, "| **lost** | **{}** |", f.lost.len());
        let _ = writeln!(s, "| **duplicated** | **{}** |", f.duplicated.len());
        let _ = writeln!(s, "| **other broken promises** | **{}** |", f.broken.len());
        let _ = writeln!(
            s,
            "\n| service | RSS at start (MiB) | RSS after settling (MiB) |"
        );
        let _ = writeln!(s, "| --- | ---: | ---: |");
        for m in self.memory {
            let _ = writeln!(
                s,
                "| {} | {:.0} | {:.0}{} |",
                m.instance,
                m.start_kib as f64 / 1024.0,
                m.end_kib as f64 / 1024.0,
                if m.ok() { "" } else { " (grew)" }
            );
        }
        for (title, list) in [
            ("Lost", &f.lost),
            ("Duplicated", &f.duplicated),
            ("Broken", &f.broken),
            ("Unexplained failures", &self.unexplained),
            (
                "Client timeouts (slow answers, not failures)",
                &self.timed_out,
            ),
            ("Failures explained by a fault", &self.explained),
            ("Crashed", &self.crashed),
        ] {
            if !list.is_empty() {
                let _ = writeln!(s, "\n{title}:");
                for line in list.iter().take(25) {
                    let _ = writeln!(s, "- {line}");
                }
                if list.len() > 25 {
                    let _ = writeln!(s, "- … and {} more", list.len() - 25);
                }
            }
        }
        let _ = writeln!(s, "\nService logs: {}", self.log_dir);
        let _ = writeln!(
            s,
            "Result: {}",
            if self.failed() {
                "FAILED"
            } else {
                "passed (lost = 0)"
            }
        );
        s
    }
}
