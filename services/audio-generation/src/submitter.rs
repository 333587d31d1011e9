//! The background work that talks to Replicate: creating the predictions of queued jobs, and
//! asking about jobs whose webhook is overdue.
//!
//! No API call waits for Replicate: a job is committed as `queued` and this loop submits it,
//! within a budget of creations a minute shared by every replica (Replicate allows 600), pausing
//! as long as a 429 says, retrying 5xx and network failures with backoff, and failing the job
//! with Replicate's own message when it refuses the input. No job holds a task while it waits
//! for its webhook; reconciliation asks only about jobs whose webhook is overdue.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};
use database::Pool;
use futures::StreamExt as _;
use prometheus::{IntCounterVec, Opts, Registry};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{
    completion,
    config::{FinishSettings, WorkSettings},
    jobs::{self, Job, JobStatus, Queue},
    models::Models,
    replicate::{NewPrediction, Replicate, ReplicateError},
};

/// `audio_submissions_total{outcome}`: what each try to create a prediction came to.
#[derive(Clone)]
pub struct SubmitMetrics {
    submissions: IntCounterVec,
    reconciled: IntCounterVec,
}

impl SubmitMetrics {
    pub fn register(registry: &Registry) -> Self {
        let submissions = IntCounterVec::new(
            Opts::new(
                "audio_submissions_total",
                "Tries to create a Replicate prediction, by outcome (created, rate_limited, budget_spent, retried, refused, failed).",
            ),
            &["outcome"],
        )
        .expect("a valid metric");
        let reconciled = IntCounterVec::new(
            Opts::new(
                "audio_reconciled_total",
                "Jobs with an overdue webhook asked about, by what Replicate said (finished, running, error).",
            ),
            &["outcome"],
        )
        .expect("a valid metric");
        for metric in [&submissions, &reconciled] {
            registry
                .register(Box::new(metric.clone()))
                .expect("registered once");
        }
        Self {
            submissions,
            reconciled,
        }
    }
}

/// Creates the predictions of queued jobs.
#[derive(Clone)]
pub struct Submitter {
    pub pool: Pool,
    pub replicate: Replicate,
    pub models: Models,
    /// `BASE_URL`, without a trailing slash.
    pub base_url: String,
    pub work: WorkSettings,
    pub metrics: SubmitMetrics,
    /// Until when Replicate asked this replica to wait (a 429's `Retry-After`).
    pub paused_until: Arc<Mutex<Option<DateTime<Utc>>>>,
}

/// The delay before try `attempts + 1` of a failing step: 2 s doubling to at most 5 min, with
/// up to a fifth more so that replicas do not retry in step.
pub fn backoff(attempts: i32, now: DateTime<Utc>) -> chrono::Duration {
    let base = 2_i64
        .saturating_mul(1_i64 << attempts.clamp(0, 20))
        .min(300);
    let jitter_ms = i64::from(now.timestamp_subsec_millis()) % (base * 200).max(1);
    chrono::Duration::seconds(base) + chrono::Duration::milliseconds(jitter_ms)
}

fn after(now: DateTime<Utc>, wait: Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::seconds(60))
}

/// Sleeps until woken, the poll interval passes, or shutdown; false on shutdown.
async fn idle(wake: &Notify, wait: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = wake.notified() => true,
        () = tokio::time::sleep(wait) => true,
    }
}

/// The next jobs of a queue for a worker loop (the submitter's, the finisher's): claimed under
/// `lease`, or, when none is due or the database fails, after waiting to be woken or for
/// `poll`; `None` once shutdown is asked.
pub async fn next_batch(
    pool: &Pool,
    queue: Queue,
    limit: usize,
    (lease, poll): (Duration, Duration),
    wake: &Notify,
    shutdown: &CancellationToken,
) -> Option<Vec<Job>> {
    loop {
        if shutdown.is_cancelled() {
            return None;
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        match jobs::claim(pool, queue, limit, lease, Utc::now()).await {
            Ok(claimed) if !claimed.is_empty() => return Some(claimed),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, ?queue, "cannot claim jobs"),
        }
        if !idle(wake, poll, shutdown).await {
            return None;
        }
    }
}

impl Submitter {
    /// Runs until shutdown.
    pub async fn run(self, wake: Arc<Notify>, shutdown: CancellationToken) {
        if !self.replicate.has_token() {
            tracing::warn!("REPLICATE_API_TOKEN is not set: jobs are recorded but not submitted");
            shutdown.cancelled().await;
            return;
        }
        loop {
            let now = Utc::now();
            let paused = *self.paused_until.lock().expect("not poisoned");
            if let Some(until) = paused.filter(|until| *until > now) {
                let wait = (until - now).to_std().unwrap_or_default();
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => continue,
                }
            }
            let Some(claimed) = next_batch(
                &self.pool,
                Queue::Submit,
                self.work.submit_concurrency,
                (self.work.lease, self.work.poll_interval),
                &wake,
                &shutdown,
            )
            .await
            else {
                return;
            };
            futures::stream::iter(claimed)
                .for_each_concurrent(self.work.submit_concurrency, |job| self.submit(job))
                .await;
            if shutdown.is_cancelled() {
                return;
            }
        }
    }

    fn count(&self, outcome: &str) {
        self.metrics.submissions.with_label_values(&[outcome]).inc();
    }

    fn pause(&self, until: DateTime<Utc>) {
        let mut paused = self.paused_until.lock().expect("not poisoned");
        if paused.is_none_or(|p| p < until) {
            *paused = Some(until);
        }
    }

    /// One try at one job; every outcome is recorded on the job before it returns.
    async fn submit(&self, job: Job) {
        // The submission continues the trace of the request that created the job.
        let span = tracing::info_span!("job.submit", job_id = %job.id);
        telemetry::propagation::adopt_traceparent(&span, job.traceparent.as_deref());
        if let Err(error) = self.try_submit(&job).instrument(span).await {
            // The lease expires and the job is tried again.
            tracing::warn!(job_id = %job.id, %error, "cannot record a submission's outcome");
        }
    }

    async fn try_submit(&self, job: &Job) -> Result<(), jobs::JobsError> {
        let now = Utc::now();
        if !jobs::take_budget(&self.pool, self.work.submit_budget, now).await? {
            self.count("budget_spent");
            let next_minute =
                DateTime::from_timestamp((now.timestamp() / 60 + 1) * 60, 0).unwrap_or(now);
            self.pause(next_minute);
            return jobs::retry_later(
                &self.pool,
                job.id,
                next_minute,
                "waiting for the submission budget (REPLICATE_SUBMIT_BUDGET)",
                false,
            )
            .await;
        }
        let model = self.models.for_type(job.job_type);
        let input = model.input(&job.prompt, job.duration_seconds, job.seed);
        let webhook = format!(
            "{}/api/replicate-webhook/{}/{}",
            self.base_url,
            job.job_type.as_str(),
            job.id
        );
        let created = self
            .replicate
            .create(&NewPrediction {
                version: &model.version,
                input: &input,
                webhook: &webhook,
                webhook_events_filter: ["completed"],
            })
            .await;
        let now = Utc::now();
        match created {
            Ok(prediction) => {
                self.count("created");
                if jobs::mark_submitted(
                    &self.pool,
                    job.id,
                    &prediction.id,
                    &model.version,
                    &input,
                    now,
                )
                .await?
                {
                    tracing::info!(job_id = %job.id, prediction_id = %prediction.id, "prediction created");
                } else {
                    // Canceled while Replicate was answering: the prediction is not wanted.
                    tracing::info!(job_id = %job.id, prediction_id = %prediction.id, "job canceled during submission; canceling its prediction");
                    if let Err(error) = self.replicate.cancel(&prediction.id).await {
                        tracing::warn!(job_id = %job.id, %error, "cannot cancel the unwanted prediction");
                    }
                }
                Ok(())
            }
            Err(ReplicateError::RateLimited { retry_after }) => {
                self.count("rate_limited");
                let until = after(now, retry_after);
                self.pause(until);
                tracing::info!(job_id = %job.id, retry_after_s = retry_after.as_secs(), "Replicate is rate limiting; submission delayed");
                jobs::retry_later(
                    &self.pool,
                    job.id,
                    until,
                    "Replicate is rate limiting; retrying",
                    false,
                )
                .await
            }
            Err(error @ ReplicateError::Refused { .. }) => {
                self.count("refused");
                completion::fail(
                    &self.pool,
                    job,
                    JobStatus::Failed,
                    &error.to_string(),
                    None,
                    now,
                )
                .await
                .map(drop)
            }
            Err(error @ ReplicateError::Unauthorized { .. }) => {
                // Not the job's fault: it waits, and the operator sees why.
                self.count("retried");
                tracing::error!(%error, "Replicate refused the API token; submissions wait");
                self.pause(after(now, Duration::from_secs(60)));
                jobs::retry_later(
                    &self.pool,
                    job.id,
                    after(now, Duration::from_secs(60)),
                    &error.to_string(),
                    false,
                )
                .await
            }
            Err(ReplicateError::Unavailable(problem)) => {
                if job.attempts + 1 >= self.work.submit_max_attempts {
                    self.count("failed");
                    let error = format!(
                        "Replicate did not accept the prediction after {} tries: {problem}",
                        job.attempts + 1
                    );
                    completion::fail(&self.pool, job, JobStatus::Failed, &error, None, now)
                        .await
                        .map(drop)
                } else {
                    self.count("retried");
                    tracing::warn!(job_id = %job.id, attempt = job.attempts + 1, %problem, "submission failed; retrying");
                    jobs::retry_later(
                        &self.pool,
                        job.id,
                        now + backoff(job.attempts, now),
                        &problem,
                        true,
                    )
                    .await
                }
            }
        }
    }
}

/// Asks Replicate about submitted jobs whose webhook is overdue, and finishes those it says
/// are done: a lost webhook still finishes its job.
pub struct Reconciler {
    pub pool: Pool,
    pub replicate: Replicate,
    pub work: WorkSettings,
    pub finish: FinishSettings,
    pub metrics: SubmitMetrics,
}

impl Reconciler {
    pub async fn run(self, shutdown: CancellationToken) {
        if !self.replicate.has_token() {
            return;
        }
        let mut tick = tokio::time::interval(self.work.reconcile_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(error) = self.sweep().await {
                tracing::warn!(%error, "reconciliation sweep failed");
            }
        }
    }

    /// One sweep; returns how many jobs it asked about.
    pub async fn sweep(&self) -> Result<usize, jobs::JobsError> {
        let now = Utc::now();
        let overdue_after = chrono::Duration::from_std(self.work.overdue_after)
            .unwrap_or(chrono::Duration::minutes(10));
        let overdue = jobs::overdue(&self.pool, now - overdue_after, 100, now).await?;
        for job in &overdue {
            let Some(prediction_id) = &job.prediction_id else {
                continue;
            };
            match self.replicate.get(prediction_id).await {
                Ok(prediction) if prediction.status.is_final() => {
                    self.metrics
                        .reconciled
                        .with_label_values(&["finished"])
                        .inc();
                    tracing::warn!(job_id = %job.id, %prediction_id, "webhook overdue; finished by reconciliation");
                    completion::complete(&self.pool, job, &prediction, &self.finish, Utc::now())
                        .await?;
                }
                Ok(_) => {
                    self.metrics
                        .reconciled
                        .with_label_values(&["running"])
                        .inc();
                }
                Err(ReplicateError::Refused { status: 404, .. }) => {
                    self.metrics
                        .reconciled
                        .with_label_values(&["finished"])
                        .inc();
                    completion::fail(
                        &self.pool,
                        job,
                        JobStatus::Failed,
                        "Replicate no longer knows the prediction",
                        Some(prediction_id),
                        Utc::now(),
                    )
                    .await?;
                }
                Err(error) => {
                    self.metrics.reconciled.with_label_values(&["error"]).inc();
                    tracing::warn!(job_id = %job.id, %error, "cannot ask Replicate about an overdue job");
                }
            }
        }
        Ok(overdue.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_five_minutes() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        assert_eq!(backoff(0, now), chrono::Duration::seconds(2));
        assert_eq!(backoff(3, now), chrono::Duration::seconds(16));
        assert_eq!(backoff(30, now), chrono::Duration::seconds(300));
        let jittered = backoff(0, now + chrono::Duration::milliseconds(300));
        assert!(jittered > chrono::Duration::seconds(2) && jittered < chrono::Duration::seconds(3));
    }
}
