//! The dispatcher: runs each stored event's actions, with retries, across replicas.
//!
//! - Claims: events with work left are claimed in batches with `FOR UPDATE SKIP LOCKED` and
//!   moved to `dispatched` under a lease (`INBOX_LEASE`). A dispatcher that dies keeps nothing:
//!   once the lease expires another takes the event again, so an event committed but not
//!   dispatched when a process stopped is dispatched after it (or another replica) starts.
//! - Wake-ups: the receiver that stored an event wakes its own replica's dispatcher in process
//!   ([`Dispatcher::waker`]); a redrive notifies `inbox_<schema>`, which wakes every replica;
//!   polling (`INBOX_POLL_INTERVAL`) finds events stored by another replica, retries that became
//!   due, and lost notifications. The insert itself sends no NOTIFY: that would serialise the
//!   receivers' commits on PostgreSQL's notification lock (measured: about 320 inserts a second
//!   instead of 2,200, with 8 clients).
//! - Actions: each is recorded in `inbox_attempts` (number, action, outcome, error, result,
//!   duration); one that succeeded is never run again for its event, not on a retry nor after a
//!   redrive. [`decide`] turns the attempt's outcomes into the event's next state: `done`,
//!   `failed` with a backoff from `INBOX_RETRY_SCHEDULE`, or `dead_letter` (at once for a refusal
//!   that no retry can change, or when the schedule is used up), with the last error.
//! - Failed actions count as failures of the event's path in the monitor (`/webhook-status`).
//! - Events settled longer ago than `INBOX_RETENTION` are deleted, with their attempts.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use database::{Database, DatabaseError, Pool};
use diesel_async::AsyncConnection as _;
use futures::StreamExt as _;
use prometheus::IntCounterVec;
use settings::{FromSetting, SettingError, Sources};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{
    actions::{Actions, Planned},
    inbox::{self, ClaimedEvent, NewAttempt, Settled},
    monitor::Monitor,
};

/// How the dispatcher works: `INBOX_BATCH_SIZE`, `INBOX_POLL_INTERVAL`, `INBOX_LEASE`,
/// `INBOX_RETRY_SCHEDULE`, `INBOX_RETENTION`.
#[derive(Debug, Clone, PartialEq)]
pub struct DispatchSettings {
    /// Events claimed (and dispatched concurrently) at a time.
    pub batch_size: usize,
    /// How often to look for due events when no notification came.
    pub poll_interval: Duration,
    /// How long a claim holds its event; must outlast the event's actions.
    pub lease: Duration,
    pub schedule: RetrySchedule,
    /// How long done and dead-lettered events are kept before they are deleted.
    pub retention: Duration,
}

impl DispatchSettings {
    /// Reads the settings; the lease must be at least twice `action_timeout`, the longest an
    /// action may take, so a slow action cannot lose its claim while it runs.
    pub fn load(src: &Sources, action_timeout: Duration) -> Result<Self, SettingError> {
        let batch_size = src.or("INBOX_BATCH_SIZE", 32)?;
        if !(1..=500).contains(&batch_size) {
            return Err(SettingError::new(
                "INBOX_BATCH_SIZE",
                "must be between 1 and 500",
            ));
        }
        let poll_interval = src.or("INBOX_POLL_INTERVAL", Duration::from_secs(1))?;
        if poll_interval < Duration::from_millis(10) || poll_interval > Duration::from_secs(300) {
            return Err(SettingError::new(
                "INBOX_POLL_INTERVAL",
                "must be between 10ms and 5m",
            ));
        }
        let lease = src.or("INBOX_LEASE", Duration::from_secs(120))?;
        if lease < action_timeout * 2 || lease > Duration::from_secs(3600) {
            return Err(SettingError::new(
                "INBOX_LEASE",
                format!(
                    "must be at least {:?} (twice the longest action: AUDIO_GENERATION_TIMEOUT, or 30s for an agent run) and at most 1h",
                    action_timeout * 2
                ),
            ));
        }
        let retention = src.or("INBOX_RETENTION", Duration::from_secs(7 * 24 * 3600))?;
        if retention < Duration::from_secs(60) {
            return Err(SettingError::new("INBOX_RETENTION", "must be at least 1m"));
        }
        Ok(Self {
            batch_size,
            poll_interval,
            lease,
            schedule: RetrySchedule {
                delays: src
                    .or(
                        "INBOX_RETRY_SCHEDULE",
                        Delays(RetrySchedule::default().delays),
                    )?
                    .0,
                jitter: 0.2,
            },
            retention,
        })
    }
}

/// The delays between an event's attempts; it gets `delays.len() + 1` attempts in all.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySchedule {
    pub delays: Vec<Duration>,
    /// Each delay is spread by up to this fraction either way, so events that failed together
    /// are not all tried again at the same moment.
    pub jitter: f64,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        Self {
            delays: [10, 60, 5 * 60, 30 * 60, 2 * 3600, 6 * 3600]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            jitter: 0.2,
        }
    }
}

impl RetrySchedule {
    pub fn max_attempts(&self) -> i32 {
        i32::try_from(self.delays.len() + 1).unwrap_or(i32::MAX)
    }

    /// The delay after failed attempt `attempt` (1-based) with jitter from `unit` in [0, 1);
    /// `None` when no attempt is left.
    pub fn delay_after(&self, attempt: i32, unit: f64) -> Option<Duration> {
        let index = usize::try_from(attempt).ok()?.checked_sub(1)?;
        let base = *self.delays.get(index)?;
        Some(base.mul_f64((1.0 + self.jitter * (2.0 * unit - 1.0)).max(0.0)))
    }
}

/// A comma-separated list of durations, such as `10s,1m,5m,30m,2h,6h`.
#[derive(Debug, Clone, PartialEq)]
pub struct Delays(pub Vec<Duration>);

impl FromSetting for Delays {
    fn from_setting(raw: &str) -> Result<Self, String> {
        let delays = Vec::<Duration>::from_setting(raw)?;
        if delays.is_empty() || delays.len() > 50 {
            return Err("must list between 1 and 50 durations, such as 10s,1m,5m".to_owned());
        }
        if delays
            .iter()
            .any(|d| *d > Duration::from_secs(7 * 24 * 3600))
        {
            return Err("each delay must be at most 7 days".to_owned());
        }
        Ok(Self(delays))
    }
}

/// What one action's attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done; `result` is what it produced, recorded on the attempt (a run's id and URL).
    Succeeded { result: Option<String> },
    /// Failed in a way a later attempt may not: tried again as the schedule allows.
    Failed(String),
    /// Refused in a way no retry changes: the event goes to the dead letters at once.
    Rejected(String),
    /// The far side asked to wait (a rate limit): tried again after `wait`, not counted.
    Throttled { error: String, wait: Duration },
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Succeeded { .. } => "succeeded",
            Self::Failed(_) => "failed",
            Self::Rejected(_) => "rejected",
            Self::Throttled { .. } => "throttled",
        }
    }

    fn error(&self) -> Option<&str> {
        match self {
            Self::Succeeded { .. } => None,
            Self::Failed(e) | Self::Rejected(e) | Self::Throttled { error: e, .. } => Some(e),
        }
    }

    fn result(&self) -> Option<&str> {
        match self {
            Self::Succeeded { result } => result.as_deref(),
            _ => None,
        }
    }
}

/// The retry rules: what attempt number `attempt` of an event, whose actions came to
/// `outcomes`, means for the event. Pure, so the rules are read and tested in one place.
///
/// A refusal dead-letters the event at once; a failure retries it after the schedule's delay
/// (or dead-letters it when the schedule is used up); a throttle alone retries it after the wait
/// asked for without using an attempt; otherwise it is done.
pub fn decide(
    attempt: i32,
    outcomes: &[Outcome],
    schedule: &RetrySchedule,
    now: DateTime<Utc>,
    unit: f64,
) -> Settled {
    let chrono = |d: Duration| chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
    if let Some(Outcome::Rejected(error)) =
        outcomes.iter().find(|o| matches!(o, Outcome::Rejected(_)))
    {
        return Settled::DeadLetter {
            error: error.clone(),
        };
    }
    let throttled = outcomes
        .iter()
        .filter_map(|o| match o {
            Outcome::Throttled { wait, .. } => Some(*wait),
            _ => None,
        })
        .max();
    let failed = outcomes.iter().rev().find_map(|o| match o {
        Outcome::Failed(error) => Some(error),
        _ => None,
    });
    match (failed, throttled) {
        (Some(error), _) => match schedule.delay_after(attempt, unit) {
            Some(delay) => Settled::Failed {
                next_at: now + chrono(delay.max(throttled.unwrap_or_default())),
                error: error.clone(),
                counted: true,
            },
            None => Settled::DeadLetter {
                error: format!("{error} (gave up after {attempt} attempts)"),
            },
        },
        (None, Some(wait)) => Settled::Failed {
            next_at: now + chrono(wait),
            error: outcomes
                .iter()
                .find_map(Outcome::error)
                .unwrap_or("throttled")
                .to_owned(),
            counted: false,
        },
        (None, None) => Settled::Done,
    }
}

/// A random number in [0, 1) for retry jitter.
fn unit_random() -> f64 {
    let bytes: [u8; 8] = ring::rand::generate(&ring::rand::SystemRandom::new())
        .map(|r| r.expose())
        .unwrap_or([0; 8]);
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// The dispatcher's metrics.
#[derive(Clone)]
pub struct DispatchMetrics {
    /// `webhook_dispatch_total{source,action,outcome}`.
    attempts: IntCounterVec,
}

impl DispatchMetrics {
    pub fn register(registry: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        let attempts = IntCounterVec::new(
            prometheus::Opts::new(
                "webhook_dispatch_total",
                "Attempts of inbound events' actions, by source, action (complete_prediction, publish, agent_run) and outcome (succeeded, failed, rejected, throttled).",
            ),
            &["source", "action", "outcome"],
        )?;
        registry.register(Box::new(attempts.clone()))?;
        Ok(Self { attempts })
    }
}

/// The dispatcher of one service's inbox.
pub struct Dispatcher {
    pool: Pool,
    settings: DispatchSettings,
    actions: Actions,
    monitor: Monitor,
    metrics: DispatchMetrics,
    wake: Arc<Notify>,
}

/// Wakes a replica's dispatcher: cheap, and never waits.
#[derive(Clone, Default)]
pub struct Waker(Arc<Notify>);

impl Waker {
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// The channel a redrive notifies: `inbox_<schema>`.
pub fn channel(schema: &str) -> String {
    format!("inbox_{schema}")
}

impl Dispatcher {
    pub fn new(
        pool: Pool,
        settings: DispatchSettings,
        actions: Actions,
        monitor: Monitor,
        metrics: DispatchMetrics,
    ) -> Self {
        Self {
            pool,
            settings,
            actions,
            monitor,
            metrics,
            wake: Arc::new(Notify::new()),
        }
    }

    /// What a receiver calls once it has stored an event, to have it dispatched at once.
    pub fn waker(&self) -> Waker {
        Waker(Arc::clone(&self.wake))
    }

    /// Claims one batch and dispatches its events concurrently; returns how many it claimed.
    pub async fn run_once(&self) -> Result<usize, DatabaseError> {
        let claim_id = uuid::Uuid::new_v4();
        let now = Utc::now();
        let lease =
            chrono::Duration::from_std(self.settings.lease).unwrap_or(chrono::Duration::MAX);
        let events = inbox::claim(
            &self.pool,
            claim_id,
            i64::try_from(self.settings.batch_size).unwrap_or(i64::MAX),
            now,
            now + lease,
        )
        .await?;
        let claimed = events.len();
        // Events no rule acts on (and no Replicate prediction) have nothing to run: settled
        // together in one statement rather than one by one.
        let (idle, busy): (Vec<_>, Vec<_>) = events
            .into_iter()
            .map(|event| {
                let planned = self.actions.plan(&event);
                (event, planned)
            })
            .partition(|(_, planned)| planned.is_empty());
        if !idle.is_empty() {
            let ids: Vec<ids::EventId> = idle.iter().map(|(event, _)| event.id).collect();
            let settled = inbox::settle_done(&self.pool, &ids, claim_id, Utc::now()).await?;
            tracing::debug!(settled, "events with nothing to do settled");
        }
        futures::stream::iter(busy)
            .for_each_concurrent(self.settings.batch_size, |(event, planned)| async move {
                let id = event.id;
                // Dispatching continues the trace the event was received in.
                let span = tracing::info_span!(
                    "inbox.dispatch",
                    event_id = %id,
                    source = %event.source,
                    attempt = event.attempts,
                );
                telemetry::propagation::adopt_traceparent(&span, event.traceparent.as_deref());
                let dispatched = self.dispatch(claim_id, event, planned).instrument(span).await;
                if let Err(error) = dispatched {
                    // The claim expires and the event is taken again.
                    tracing::warn!(event_id = %id, %error, "event not dispatched; it will be taken again");
                }
            })
            .await;
        Ok(claimed)
    }

    /// Runs one claimed event's remaining actions, records each attempt and settles the event.
    async fn dispatch(
        &self,
        claim_id: uuid::Uuid,
        event: ClaimedEvent,
        planned: Vec<Planned>,
    ) -> Result<(), DatabaseError> {
        let done = inbox::succeeded_actions(&self.pool, event.id).await?;
        let mut outcomes = Vec::new();
        for action in planned.iter().filter(|a| !done.contains(&a.key)) {
            let started = std::time::Instant::now();
            let outcome = self.actions.run(&event, action).await;
            let held = self
                .record(claim_id, &event, action, &outcome, started.elapsed())
                .await?;
            if !held {
                tracing::warn!(
                    "the event's claim expired while its actions ran; another dispatcher has it"
                );
                return Ok(());
            }
            self.metrics
                .attempts
                .with_label_values(&[event.source.as_str(), action.kind.name(), outcome.label()])
                .inc();
            if !matches!(outcome, Outcome::Succeeded { .. }) {
                tracing::warn!(action = %action.key, outcome = outcome.label(), error = outcome.error().unwrap_or_default(), "action did not succeed");
                self.monitor
                    .failure(&event.path, crate::route_of(&event.source));
            }
            outcomes.push(outcome);
        }
        let now = Utc::now();
        let settled = decide(
            event.attempts,
            &outcomes,
            &self.settings.schedule,
            now,
            unit_random(),
        );
        match &settled {
            Settled::Done => tracing::info!("event done"),
            Settled::Failed { next_at, .. } => {
                tracing::info!(%next_at, "event failed; it will be tried again")
            }
            Settled::DeadLetter { error } => {
                tracing::warn!(error, "event moved to the dead letters")
            }
        }
        if !inbox::settle(&self.pool, event.id, claim_id, &settled, now).await? {
            tracing::warn!(
                "the event's claim expired before it settled; another dispatcher has it"
            );
        }
        Ok(())
    }

    /// Records one attempt, with the outbox event of a publish action in the same transaction;
    /// false (and nothing written) when the claim no longer holds the event.
    async fn record(
        &self,
        claim_id: uuid::Uuid,
        event: &ClaimedEvent,
        action: &Planned,
        outcome: &Outcome,
        took: Duration,
    ) -> Result<bool, DatabaseError> {
        let at = Utc::now();
        let mut conn = database::get(&self.pool).await?;
        let publish = match outcome {
            Outcome::Succeeded { .. } => action.publish.as_ref(),
            _ => None,
        };
        let result = outcome.result().map(str::to_owned);
        let held = conn
            .transaction::<_, diesel::result::Error, _>(async move |conn| {
                if !inbox::hold(conn, event.id, claim_id).await? {
                    return Ok(false);
                }
                let mut result = result;
                if let Some((_, outbox_event)) = publish {
                    let id = outbox::enqueue(conn, outbox_event, at).await?;
                    result = Some(serde_json::json!({ "outbox_event_id": id }).to_string());
                }
                // The event is shown to the tenant of every rule it set off, whatever came of
                // the action (a tenant may redrive what failed).
                if let Some(tenant) = &action.tenant {
                    inbox::add_tenants(conn, event.id, std::slice::from_ref(tenant)).await?;
                }
                inbox::record_attempt(
                    conn,
                    &NewAttempt {
                        event: event.id,
                        attempt: event.attempts,
                        action: &action.key,
                        outcome: outcome.label(),
                        error: outcome.error().map(|e| truncate(e, 2000)).as_deref(),
                        result: result.as_deref(),
                        duration_ms: i32::try_from(took.as_millis()).unwrap_or(i32::MAX),
                        at,
                        tenant: action.tenant.as_deref(),
                    },
                )
                .await?;
                Ok(true)
            })
            .await?;
        Ok(held)
    }

    /// Deletes events settled longer ago than the retention.
    async fn clean_up(&self) {
        let before = Utc::now()
            - chrono::Duration::from_std(self.settings.retention).unwrap_or(chrono::Duration::MAX);
        match inbox::clean_up(&self.pool, before).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "old inbox events deleted"),
            Err(error) => tracing::warn!(%error, "cannot delete old inbox events"),
        }
    }

    /// Runs in the background once the migrations are applied, until `shutdown`.
    pub fn spawn(
        self,
        database: &Database,
        listen_url: String,
        schema: &'static str,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let (dispatcher, database) = (Arc::new(self), database.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = database.migrated() => dispatcher.run(listen_url, schema, shutdown).await,
                () = shutdown.cancelled() => {}
            }
        })
    }

    /// Runs until `shutdown`: woken by the receivers' notifications, polling as a backstop,
    /// backing off while PostgreSQL is away. A round in flight at shutdown finishes (its calls
    /// have deadlines).
    pub async fn run(
        self: Arc<Self>,
        listen_url: String,
        schema: &str,
        shutdown: CancellationToken,
    ) {
        let listener = tokio::spawn(database::listen(
            listen_url,
            channel(schema),
            Arc::clone(&self.wake),
            shutdown.clone(),
        ));
        let mut backoff = Duration::from_millis(100);
        let mut cleaned_at = tokio::time::Instant::now();
        while !shutdown.is_cancelled() {
            if tokio::time::Instant::now() >= cleaned_at {
                self.clean_up().await;
                cleaned_at = tokio::time::Instant::now() + Duration::from_secs(60);
            }
            let wait = match self.run_once().await {
                Ok(claimed) => {
                    backoff = Duration::from_millis(100);
                    if claimed >= self.settings.batch_size {
                        continue;
                    }
                    self.settings.poll_interval
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?backoff, "cannot claim inbox events");
                    let wait = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    wait
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        let _ = listener.await;
    }
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule() -> RetrySchedule {
        RetrySchedule {
            delays: vec![Duration::from_secs(10), Duration::from_secs(60)],
            jitter: 0.0,
        }
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    #[test]
    fn no_actions_or_all_succeeded_is_done() {
        assert_eq!(decide(1, &[], &schedule(), now(), 0.5), Settled::Done);
        let ok = Outcome::Succeeded { result: None };
        assert_eq!(
            decide(3, &[ok.clone(), ok], &schedule(), now(), 0.5),
            Settled::Done
        );
    }

    #[test]
    fn failures_follow_the_schedule_then_dead_letter() {
        let failed = [Outcome::Failed("unavailable".into())];
        assert_eq!(
            decide(1, &failed, &schedule(), now(), 0.5),
            Settled::Failed {
                next_at: now() + chrono::Duration::seconds(10),
                error: "unavailable".into(),
                counted: true
            }
        );
        assert_eq!(
            decide(2, &failed, &schedule(), now(), 0.5),
            Settled::Failed {
                next_at: now() + chrono::Duration::seconds(60),
                error: "unavailable".into(),
                counted: true
            }
        );
        assert_eq!(
            decide(3, &failed, &schedule(), now(), 0.5),
            Settled::DeadLetter {
                error: "unavailable (gave up after 3 attempts)".into()
            }
        );
    }

    #[test]
    fn a_refusal_dead_letters_at_once_with_its_reason() {
        let outcomes = [
            Outcome::Failed("timeout".into()),
            Outcome::Rejected("the job does not exist".into()),
        ];
        assert_eq!(
            decide(1, &outcomes, &schedule(), now(), 0.5),
            Settled::DeadLetter {
                error: "the job does not exist".into()
            }
        );
    }

    #[test]
    fn a_throttle_waits_as_asked_without_using_an_attempt() {
        let throttled = Outcome::Throttled {
            error: "429".into(),
            wait: Duration::from_secs(30),
        };
        assert_eq!(
            decide(3, std::slice::from_ref(&throttled), &schedule(), now(), 0.5),
            Settled::Failed {
                next_at: now() + chrono::Duration::seconds(30),
                error: "429".into(),
                counted: false
            }
        );
        // With a failure beside it, the later of the two waits wins, and the attempt counts.
        let both = [throttled, Outcome::Failed("500".into())];
        assert_eq!(
            decide(1, &both, &schedule(), now(), 0.5),
            Settled::Failed {
                next_at: now() + chrono::Duration::seconds(30),
                error: "500".into(),
                counted: true
            }
        );
    }

    #[test]
    fn jitter_spreads_the_delay_both_ways() {
        let s = RetrySchedule {
            jitter: 0.2,
            ..schedule()
        };
        assert_eq!(s.delay_after(1, 0.0), Some(Duration::from_secs(8)));
        assert_eq!(s.delay_after(1, 0.5), Some(Duration::from_secs(10)));
        assert_eq!(s.delay_after(3, 0.5), None);
        assert_eq!(s.max_attempts(), 3);
    }

    #[test]
    fn schedules_are_checked() {
        assert!(Delays::from_setting("100ms,1s").is_ok());
        assert!(Delays::from_setting("").is_err());
        assert!(Delays::from_setting("10s,8d").is_err());
        assert!(Delays::from_setting("soon").is_err());
    }
}
