//! Failure monitoring as the narration app's operators knew it: failures per webhook path in a
//! sliding one-hour window; at `WEBHOOK_FAILURE_ALERT_THRESHOLD` failures within the hour, one
//! error line starting `WEBHOOK ALERT`; `GET /webhook-status` with the old body.
//!
//! The counts live in Redis (sorted sets of failure times with a one-hour TTL), so every replica
//! counts the same failures and a restart forgets nothing. Recording runs beside the request,
//! never in its way; while Redis is away failures go uncounted (logged, at most once a minute)
//! and `/webhook-status` answers 503.
//!
//! Each alert is also kept for the hour (the path and when it was raised), for the gateway's
//! console through the `ListWebhookAlerts` call.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use actix_web::{HttpResponse, web};
use chrono::{DateTime, TimeZone as _, Utc};
use http_problem::Problem;
use prometheus::IntCounter;
use redis_pool::{Pool, redis};

/// The sliding window.
const WINDOW: Duration = Duration::from_secs(3600);
/// Paths tracked one by one; past this many in the window, failures on new paths are counted
/// under their route instead, so random ids cannot grow Redis without bound.
const MAX_PATHS: isize = 10_000;
const PATHS_KEY: &str = "webhook-monitor:paths";
/// The alerts raised within the hour: a sorted set of paths scored by when each last reached
/// the threshold, so the console can show what the `WEBHOOK ALERT` lines said without anyone
/// reading the logs.
const ALERTS_KEY: &str = "webhook-monitor:alerts";
/// The most alerts one call returns.
pub const MAX_ALERTS: usize = 100;

fn failures_key(path: &str) -> String {
    format!("webhook-monitor:failures:{path}")
}

/// The monitoring settings.
#[derive(Debug, Clone)]
pub struct MonitorSettings {
    /// `WEBHOOK_MONITORING_ENABLED`.
    pub enabled: bool,
    /// `WEBHOOK_FAILURE_ALERT_THRESHOLD`.
    pub threshold: u32,
    /// `WEBHOOK_TIMEOUT_SECONDS`, reported as the old body did.
    pub timeout_seconds: u32,
}

/// Counts failures per path and raises the alert.
#[derive(Clone)]
pub struct Monitor {
    redis: Pool,
    settings: MonitorSettings,
    errors: IntCounter,
    alerts: IntCounter,
    /// When a Redis failure was last logged, so an outage logs once a minute.
    last_complaint: Arc<Mutex<Option<Instant>>>,
}

impl Monitor {
    pub fn new(
        redis: Pool,
        settings: MonitorSettings,
        registry: &prometheus::Registry,
    ) -> Result<Self, prometheus::Error> {
        let errors = IntCounter::new(
            "webhook_errors_total",
            "Inbound webhook requests refused or failed (what /webhook-status counts).",
        )?;
        let alerts = IntCounter::new(
            "webhook_alerts_total",
            "WEBHOOK ALERT lines: a path reached the failure threshold within the hour.",
        )?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(alerts.clone()))?;
        Ok(Self {
            redis,
            settings,
            errors,
            alerts,
            last_complaint: Arc::new(Mutex::new(None)),
        })
    }

    /// Records one failure on `path` (its `route` when too many paths are tracked), in the
    /// background.
    pub fn failure(&self, path: &str, route: &'static str) {
        self.errors.inc();
        if !self.settings.enabled {
            return;
        }
        let (this, path) = (self.clone(), path.to_owned());
        tokio::spawn(async move {
            if let Err(error) = this.record(&path, route, Utc::now()).await {
                this.complain(&error);
            }
        });
    }

    fn complain(&self, error: &redis_pool::RedisError) {
        let mut last = self.last_complaint.lock().expect("not poisoned");
        if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
            tracing::warn!(%error, "webhook failures cannot be counted while Redis is away");
            *last = Some(Instant::now());
        }
    }

    /// Adds a failure at `now` and raises the alert when it brings the path to the threshold.
    pub async fn record(
        &self,
        path: &str,
        route: &'static str,
        now: DateTime<Utc>,
    ) -> Result<u64, redis_pool::RedisError> {
        let mut conn = redis_pool::get(&self.redis).await?;
        let (now_ms, since_ms) = (now.timestamp_millis(), (now - window()).timestamp_millis());
        let (tracked, known): (isize, Option<f64>) = redis::pipe()
            .cmd("ZREMRANGEBYSCORE")
            .arg(PATHS_KEY)
            .arg("-inf")
            .arg(since_ms)
            .ignore()
            .zcard(PATHS_KEY)
            .zscore(PATHS_KEY, path)
            .query_async(&mut *conn)
            .await?;
        let path = if known.is_none() && tracked >= MAX_PATHS {
            route
        } else {
            path
        };
        let key = failures_key(path);
        let member = format!("{now_ms}:{}", uuid::Uuid::new_v4().simple());
        let (count,): (u64,) = redis::pipe()
            .atomic()
            .cmd("ZREMRANGEBYSCORE")
            .arg(&key)
            .arg("-inf")
            .arg(since_ms)
            .ignore()
            .zadd(&key, member, now_ms)
            .ignore()
            .zcard(&key)
            .expire(&key, i64::try_from(WINDOW.as_secs()).unwrap_or(3600))
            .ignore()
            .zadd(PATHS_KEY, path, now_ms)
            .ignore()
            .expire(PATHS_KEY, i64::try_from(WINDOW.as_secs()).unwrap_or(3600))
            .ignore()
            .query_async(&mut *conn)
            .await?;
        // Exactly the failure that reaches the threshold raises it, on whichever replica counts
        // it: one line per crossing, not one per failure after it.
        if count == u64::from(self.settings.threshold) {
            self.alerts.inc();
            tracing::error!(
                path,
                failures_last_hour = count,
                "WEBHOOK ALERT: {path} has failed {count} times in the last hour"
            );
            // Kept for the hour, newest raise per path, beside the counts it was raised from.
            redis::pipe()
                .atomic()
                .cmd("ZREMRANGEBYSCORE")
                .arg(ALERTS_KEY)
                .arg("-inf")
                .arg(since_ms)
                .ignore()
                .zadd(ALERTS_KEY, path, now_ms)
                .ignore()
                .expire(ALERTS_KEY, i64::try_from(WINDOW.as_secs()).unwrap_or(3600))
                .ignore()
                .query_async::<()>(&mut *conn)
                .await?;
        }
        Ok(count)
    }

    /// Whether failures are counted, and the threshold that raises an alert.
    pub fn settings(&self) -> &MonitorSettings {
        &self.settings
    }

    /// The alerts raised within the hour before `now`, newest first, at most [`MAX_ALERTS`]:
    /// of every path, or only of `paths` (each with the earliest raise that counts for it, so
    /// an alert raised before a source existed is not its owner's).
    pub async fn alerts(
        &self,
        now: DateTime<Utc>,
        paths: Option<&[(String, DateTime<Utc>)]>,
    ) -> Result<Vec<Alert>, redis_pool::RedisError> {
        if !self.settings.enabled || paths.is_some_and(<[_]>::is_empty) {
            return Ok(Vec::new());
        }
        let mut conn = redis_pool::get(&self.redis).await?;
        let since_ms = (now - window()).timestamp_millis();
        let raised: Vec<(String, f64)> = match paths {
            None => {
                redis::cmd("ZREVRANGEBYSCORE")
                    .arg(ALERTS_KEY)
                    .arg("+inf")
                    .arg(since_ms)
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(0)
                    .arg(MAX_ALERTS)
                    .query_async(&mut *conn)
                    .await?
            }
            Some(paths) => {
                let mut scores = redis::pipe();
                for (path, _) in paths {
                    scores.zscore(ALERTS_KEY, path);
                }
                let scores: Vec<Option<f64>> = scores.query_async(&mut *conn).await?;
                let mut raised: Vec<(String, f64)> = paths
                    .iter()
                    .zip(scores)
                    .filter_map(|((path, from), score)| {
                        score
                            .filter(|&ms| ms as i64 >= since_ms.max(from.timestamp_millis()))
                            .map(|ms| (path.clone(), ms))
                    })
                    .collect();
                raised.sort_by(|a, b| b.1.total_cmp(&a.1));
                raised.truncate(MAX_ALERTS);
                raised
            }
        };
        if raised.is_empty() {
            return Ok(Vec::new());
        }
        let mut counts = redis::pipe();
        for (path, _) in &raised {
            counts
                .cmd("ZCOUNT")
                .arg(failures_key(path))
                .arg(since_ms)
                .arg("+inf");
        }
        let counts: Vec<u64> = counts.query_async(&mut *conn).await?;
        Ok(raised
            .into_iter()
            .zip(counts)
            .filter_map(|((path, ms), failures_last_hour)| {
                Some(Alert {
                    raised_at: Utc.timestamp_millis_opt(ms as i64).single()?,
                    path,
                    failures_last_hour,
                })
            })
            .collect())
    }

    /// The old `/webhook-status` body.
    pub async fn status(
        &self,
        now: DateTime<Utc>,
    ) -> Result<serde_json::Value, redis_pool::RedisError> {
        let mut body = serde_json::json!({
            "monitoring": if self.settings.enabled { "enabled" } else { "disabled" },
            "failure_threshold": self.settings.threshold,
            "webhook_timeout": self.settings.timeout_seconds,
            "paths": {},
        });
        if !self.settings.enabled {
            return Ok(body);
        }
        let mut conn = redis_pool::get(&self.redis).await?;
        let since_ms = (now - window()).timestamp_millis();
        let paths: Vec<(String, f64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(PATHS_KEY)
            .arg(since_ms)
            .arg("+inf")
            .arg("WITHSCORES")
            .query_async(&mut *conn)
            .await?;
        let mut counts = redis::pipe();
        for (path, _) in &paths {
            counts
                .cmd("ZCOUNT")
                .arg(failures_key(path))
                .arg(since_ms)
                .arg("+inf");
        }
        let counts: Vec<u64> = counts.query_async(&mut *conn).await?;
        for ((path, last_ms), count) in paths.into_iter().zip(counts) {
            let last = Utc
                .timestamp_millis_opt(last_ms as i64)
                .single()
                .map(|t| t.format("%Y-%m-%dT%H:%M:%S").to_string());
            body["paths"][path] = serde_json::json!({
                "failures_last_hour": count,
                "status": if count >= u64::from(self.settings.threshold) { "alert" } else { "ok" },
                "last_failure": last,
            });
        }
        Ok(body)
    }
}

/// A `WEBHOOK ALERT` raised within the hour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub path: String,
    /// When the path last reached the threshold.
    pub raised_at: DateTime<Utc>,
    /// Its failures within the hour, now (fewer than at the raise once old ones age out).
    pub failures_last_hour: u64,
}

fn window() -> chrono::Duration {
    chrono::Duration::from_std(WINDOW).expect("an hour fits")
}

/// `GET /webhook-status`.
pub async fn webhook_status(monitor: web::Data<Monitor>) -> Result<HttpResponse, Problem> {
    match monitor.status(Utc::now()).await {
        Ok(body) => Ok(HttpResponse::Ok()
            .insert_header(("cache-control", "no-store"))
            .json(body)),
        Err(error) => {
            tracing::warn!(%error, "webhook status unavailable");
            Err(
                Problem::unavailable("Webhook monitoring needs Redis, which is not reachable.")
                    .retry_after(5),
            )
        }
    }
}
