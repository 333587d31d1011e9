//! The relay: hands a schema's pending outbox events to delivery-worker, in batches, in order per
//! aggregate, at least once, and idempotently by event id.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use database::{DatabaseError, Pool};
use diesel::{
    QueryableByName,
    sql_types::{Array, BigInt, Nullable, Text, Timestamptz, Uuid as SqlUuid},
};
use diesel_async::{AsyncConnection as _, RunQueryDsl as _};
use ids::EventId;
use internal_rpc::{Peer, PeerChannel};
use prometheus::{Gauge, IntCounter, IntGauge, Registry};
use settings::{SettingError, Sources};
use sonora_proto::delivery::v1::{
    MAX_BATCH_EVENTS, PublishBatchRequest, PublishRequest, PublishResponse,
    delivery_service_client::DeliveryServiceClient,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How a relay works: `OUTBOX_BATCH_SIZE`, `OUTBOX_POLL_INTERVAL`, `OUTBOX_LEASE`,
/// `OUTBOX_RETENTION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySettings {
    /// Events per `PublishBatch` call (1 to 500).
    pub batch_size: usize,
    /// How often to look for events when no notification came (a backstop for lost ones).
    pub poll_interval: Duration,
    /// How long a claim holds its events; a relay that dies gives them back after this.
    pub lease: Duration,
    /// How long published events are kept (for inspection) before they are deleted.
    pub retention: Duration,
}

impl RelaySettings {
    /// Reads the settings; the lease must outlast a publish call (`publish_timeout`, the
    /// delivery-worker peer's deadline), or a slow call could lose its claim while it runs.
    pub fn load(src: &Sources, publish_timeout: Duration) -> Result<Self, SettingError> {
        let batch_size = src.or("OUTBOX_BATCH_SIZE", MAX_BATCH_EVENTS)?;
        if !(1..=MAX_BATCH_EVENTS).contains(&batch_size) {
            return Err(SettingError::new(
                "OUTBOX_BATCH_SIZE",
                format!("must be between 1 and {MAX_BATCH_EVENTS}"),
            ));
        }
        let poll_interval = src.or("OUTBOX_POLL_INTERVAL", Duration::from_secs(1))?;
        if poll_interval < Duration::from_millis(10) || poll_interval > Duration::from_secs(300) {
            return Err(SettingError::new(
                "OUTBOX_POLL_INTERVAL",
                "must be between 10ms and 5m",
            ));
        }
        let lease = src.or("OUTBOX_LEASE", Duration::from_secs(30))?;
        if lease < publish_timeout * 2 || lease > Duration::from_secs(3600) {
            return Err(SettingError::new(
                "OUTBOX_LEASE",
                "must be at least twice DELIVERY_WORKER_TIMEOUT (a claim must outlast its publish call) and at most 1h",
            ));
        }
        Ok(Self {
            batch_size,
            poll_interval,
            lease,
            retention: src.or("OUTBOX_RETENTION", Duration::from_secs(24 * 3600))?,
        })
    }
}

/// The relay's metrics, on the owning service's registry.
#[derive(Clone)]
pub struct OutboxMetrics {
    pending: IntGauge,
    oldest_age: Gauge,
    published: IntCounter,
    duplicates: IntCounter,
    failures: IntCounter,
    rejected: IntCounter,
}

impl OutboxMetrics {
    pub fn register(registry: &Registry) -> Self {
        let metrics = Self {
            pending: IntGauge::new("outbox_pending", "Outbox events not yet handed to delivery-worker.")
                .expect("valid metric"),
            oldest_age: Gauge::new(
                "outbox_oldest_pending_age_seconds",
                "Age of the oldest outbox event not yet handed on; 0 when none is pending.",
            )
            .expect("valid metric"),
            published: IntCounter::new(
                "outbox_published_total",
                "Outbox events handed to delivery-worker.",
            )
            .expect("valid metric"),
            duplicates: IntCounter::new(
                "outbox_duplicates_total",
                "Events delivery-worker already had (handed on again after a relay lost its claim).",
            )
            .expect("valid metric"),
            failures: IntCounter::new(
                "outbox_publish_failures_total",
                "PublishBatch calls that failed and were retried.",
            )
            .expect("valid metric"),
            rejected: IntCounter::new(
                "outbox_rejected_total",
                "Events delivery-worker refused as invalid; kept in the table, never retried.",
            )
            .expect("valid metric"),
        };
        for metric in [
            Box::new(metrics.pending.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(metrics.oldest_age.clone()),
            Box::new(metrics.published.clone()),
            Box::new(metrics.duplicates.clone()),
            Box::new(metrics.failures.clone()),
            Box::new(metrics.rejected.clone()),
        ] {
            registry.register(metric).expect("metric names are unique");
        }
        metrics
    }
}

/// What went wrong in one round.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Database(#[from] DatabaseError),
    #[error("delivery-worker refused the batch: {0}")]
    Publish(tonic::Status),
}

impl From<diesel::result::Error> for RelayError {
    fn from(error: diesel::result::Error) -> Self {
        Self::Database(DatabaseError::Query(error))
    }
}

#[derive(Debug, Clone, QueryableByName)]
struct PendingRow {
    #[diesel(sql_type = Text)]
    id: EventId,
    #[diesel(sql_type = BigInt)]
    seq: i64,
    #[diesel(sql_type = Text)]
    tenant: String,
    #[diesel(sql_type = Text)]
    event_type: String,
    #[diesel(sql_type = Text)]
    payload: String,
    #[diesel(sql_type = Array<Text>)]
    channels: Vec<String>,
    #[diesel(sql_type = Nullable<Text>)]
    traceparent: Option<String>,
}

/// Events a relay holds the claim of, oldest first.
#[derive(Debug)]
pub struct Claimed {
    claim_id: Uuid,
    events: Vec<PendingRow>,
}

impl Claimed {
    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The claimed events' ids, in the order they are handed on.
    pub fn ids(&self) -> Vec<EventId> {
        self.events.iter().map(|e| e.id).collect()
    }
}

/// What one round handed on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Handed {
    /// Events delivery-worker accepted (new or already known).
    pub published: usize,
    /// Of those, the ones it already had.
    pub duplicates: usize,
    /// Events it refused as invalid.
    pub rejected: usize,
}

/// The relay of one schema's outbox.
pub struct Relay {
    pool: Pool,
    client: DeliveryServiceClient<PeerChannel>,
    settings: RelaySettings,
    metrics: OutboxMetrics,
    wake: Arc<Notify>,
}

#[derive(QueryableByName)]
struct Backlog {
    #[diesel(sql_type = BigInt)]
    pending: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    oldest: Option<DateTime<Utc>>,
}

impl Relay {
    /// A relay over `pool` (connections on the owning schema), publishing through `delivery`.
    pub fn new(
        pool: Pool,
        delivery: &Peer,
        settings: RelaySettings,
        metrics: OutboxMetrics,
    ) -> Self {
        Self {
            pool,
            client: DeliveryServiceClient::new(delivery.channel()),
            settings,
            metrics,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Claims up to a batch of pending events for the lease. An event is only claimed when no
    /// earlier event of its aggregate is held by another live claim, and claims of one schema
    /// are taken one at a time (a transaction-scoped advisory lock), so two relays never hand on
    /// an aggregate's events out of order.
    pub async fn claim(&self) -> Result<Claimed, RelayError> {
        let claim_id = Uuid::new_v4();
        let now = Utc::now();
        let lease =
            chrono::Duration::from_std(self.settings.lease).unwrap_or(chrono::Duration::MAX);
        let limit = i64::try_from(self.settings.batch_size).unwrap_or(i64::MAX);
        let mut conn = database::get(&self.pool).await?;
        let mut events: Vec<PendingRow> = conn
            .transaction::<_, diesel::result::Error, _>(async move |conn| {
                diesel::sql_query("SELECT pg_advisory_xact_lock(hashtext('outbox_' || current_schema()))")
                    .execute(conn)
                    .await?;
                diesel::sql_query(
                    "WITH candidates AS ( \
                       SELECT o.id FROM outbox o \
                       WHERE o.published_at IS NULL AND o.rejected_at IS NULL \
                         AND (o.lease_expires_at IS NULL OR o.lease_expires_at <= $1) \
                         AND NOT EXISTS ( \
                           SELECT 1 FROM outbox p \
                           WHERE p.aggregate = o.aggregate AND p.seq < o.seq \
                             AND p.published_at IS NULL AND p.rejected_at IS NULL \
                             AND p.lease_expires_at > $1) \
                       ORDER BY o.seq LIMIT $2 FOR UPDATE SKIP LOCKED) \
                     UPDATE outbox o SET claim_id = $3, lease_expires_at = $4, attempts = o.attempts + 1 \
                     FROM candidates c WHERE o.id = c.id \
                     RETURNING o.id, o.seq, o.tenant, o.event_type, o.payload, o.channels, o.traceparent",
                )
                .bind::<Timestamptz, _>(now)
                .bind::<BigInt, _>(limit)
                .bind::<SqlUuid, _>(claim_id)
                .bind::<Timestamptz, _>(now + lease)
                .load(conn)
                .await
            })
            .await?;
        events.sort_by_key(|e| e.seq);
        Ok(Claimed { claim_id, events })
    }

    /// Hands the claimed events to delivery-worker in one call, in order.
    pub async fn publish(&self, claimed: &Claimed) -> Result<Vec<PublishResponse>, tonic::Status> {
        let request = PublishBatchRequest {
            events: claimed
                .events
                .iter()
                .map(|e| PublishRequest {
                    tenant: e.tenant.clone(),
                    event_id: e.id.to_string(),
                    event_type: e.event_type.clone(),
                    payload_json: e.payload.clone(),
                    channels: e.channels.clone(),
                    traceparent: e.traceparent.clone().unwrap_or_default(),
                })
                .collect(),
        };
        let results = self
            .client
            .clone()
            .publish_batch(request)
            .await?
            .into_inner()
            .results;
        if results.len() != claimed.events.len() {
            return Err(tonic::Status::internal(format!(
                "{} results for {} events",
                results.len(),
                claimed.events.len()
            )));
        }
        Ok(results)
    }

    /// Claims, publishes and marks one batch.
    pub async fn run_once(&self) -> Result<Handed, RelayError> {
        let claimed = self.claim().await?;
        if claimed.is_empty() {
            return Ok(Handed::default());
        }
        match self.publish(&claimed).await {
            Ok(results) => {
                self.mark_published(&claimed).await?;
                let duplicates = results.iter().filter(|r| r.duplicate).count();
                self.metrics
                    .published
                    .inc_by(u64::try_from(results.len()).unwrap_or(0));
                self.metrics
                    .duplicates
                    .inc_by(u64::try_from(duplicates).unwrap_or(0));
                Ok(Handed {
                    published: results.len(),
                    duplicates,
                    rejected: 0,
                })
            }
            Err(status) => {
                if let Some(index) = rejected_index(&status)
                    && let Some(event) = claimed.events.get(index)
                {
                    // Validation at enqueue follows delivery-worker's rules, so this means the two
                    // disagree (a version skew): keep the event for inspection and go on with the
                    // others rather than block its aggregate for ever.
                    tracing::error!(event_id = %event.id, reason = status.message(), "outbox event refused by delivery-worker; it is kept and not retried");
                    self.release(&claimed, status.message(), Some(event.id))
                        .await?;
                    self.metrics.rejected.inc();
                    return Ok(Handed {
                        rejected: 1,
                        ..Handed::default()
                    });
                }
                self.metrics.failures.inc();
                self.release(&claimed, status.message(), None).await?;
                Err(RelayError::Publish(status))
            }
        }
    }

    async fn mark_published(&self, claimed: &Claimed) -> Result<(), RelayError> {
        let mut conn = database::get(&self.pool).await?;
        diesel::sql_query(
            "UPDATE outbox SET published_at = $1, claim_id = NULL, lease_expires_at = NULL, last_error = NULL \
             WHERE claim_id = $2 AND id = ANY($3)",
        )
        .bind::<Timestamptz, _>(Utc::now())
        .bind::<SqlUuid, _>(claimed.claim_id)
        .bind::<Array<Text>, _>(claimed.ids())
        .execute(&mut conn)
        .await?;
        Ok(())
    }

    /// Gives the claim's events back (with the error), marking `rejected` as refused for good.
    async fn release(
        &self,
        claimed: &Claimed,
        error: &str,
        rejected: Option<EventId>,
    ) -> Result<(), RelayError> {
        let error: String = error.chars().take(1000).collect();
        let mut conn = database::get(&self.pool).await?;
        diesel::sql_query(
            "UPDATE outbox SET claim_id = NULL, lease_expires_at = NULL, last_error = $2, \
               rejected_at = CASE WHEN id = $3 THEN $4 END \
             WHERE claim_id = $1",
        )
        .bind::<SqlUuid, _>(claimed.claim_id)
        .bind::<Text, _>(error)
        .bind::<Nullable<Text>, _>(rejected)
        .bind::<Timestamptz, _>(Utc::now())
        .execute(&mut conn)
        .await?;
        Ok(())
    }

    /// Refreshes `outbox_pending` and `outbox_oldest_pending_age_seconds`.
    pub async fn refresh_gauges(&self) -> Result<(), RelayError> {
        let mut conn = database::get(&self.pool).await?;
        let backlog: Backlog = diesel::sql_query(
            "SELECT count(*) AS pending, min(created_at) AS oldest FROM outbox \
             WHERE published_at IS NULL AND rejected_at IS NULL",
        )
        .get_result(&mut conn)
        .await?;
        self.metrics.pending.set(backlog.pending);
        let age = backlog.oldest.map_or(0.0, |t| {
            (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0
        });
        self.metrics.oldest_age.set(age);
        Ok(())
    }

    /// Deletes events published longer ago than the retention.
    async fn clean_up(&self) -> Result<(), RelayError> {
        let before = Utc::now()
            - chrono::Duration::from_std(self.settings.retention).unwrap_or(chrono::Duration::MAX);
        let mut conn = database::get(&self.pool).await?;
        diesel::sql_query("DELETE FROM outbox WHERE published_at < $1")
            .bind::<Timestamptz, _>(before)
            .execute(&mut conn)
            .await?;
        Ok(())
    }

    /// Runs the relay in the background once `database`'s migrations are applied (the table must
    /// exist), until `shutdown`.
    pub fn spawn(
        self,
        database: &database::Database,
        listen_url: String,
        schema: &'static str,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let (relay, database) = (Arc::new(self), database.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = database.migrated() => relay.run(listen_url, schema, shutdown).await,
                () = shutdown.cancelled() => {}
            }
        })
    }

    /// Runs until `shutdown`: woken by `NOTIFY outbox_<schema>` (through a reconnecting
    /// `LISTEN` on `listen_url`), polling as a backstop, backing off while delivery-worker or
    /// PostgreSQL is away. A round in flight at shutdown finishes (its call has a deadline).
    pub async fn run(
        self: Arc<Self>,
        listen_url: String,
        schema: &str,
        shutdown: CancellationToken,
    ) {
        let listener = tokio::spawn(database::listen(
            listen_url,
            crate::channel(schema),
            Arc::clone(&self.wake),
            shutdown.clone(),
        ));
        let mut backoff = Duration::from_millis(100);
        let mut gauges_at = tokio::time::Instant::now();
        let mut cleaned_at = tokio::time::Instant::now();
        while !shutdown.is_cancelled() {
            let now = tokio::time::Instant::now();
            if now >= gauges_at {
                let _ = self.refresh_gauges().await;
                gauges_at = now + Duration::from_secs(1);
            }
            if now >= cleaned_at {
                if let Err(error) = self.clean_up().await {
                    tracing::warn!(%error, "cannot clean up published outbox events");
                }
                cleaned_at = now + Duration::from_secs(60);
            }
            let wait = match self.run_once().await {
                Ok(handed) => {
                    backoff = Duration::from_millis(100);
                    if handed.published >= self.settings.batch_size || handed.rejected > 0 {
                        continue;
                    }
                    self.settings.poll_interval
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?backoff, "outbox events not handed on yet");
                    let wait = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(wait) => {}
                    }
                    continue;
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

/// The index of the event delivery-worker refused, from `INVALID_ARGUMENT` "events[i]. …".
fn rejected_index(status: &tonic::Status) -> Option<usize> {
    if status.code() != tonic::Code::InvalidArgument {
        return None;
    }
    let rest = status.message().strip_prefix("events[")?;
    rest[..rest.find(']')?].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refused_event_is_found_in_the_status() {
        let status = tonic::Status::invalid_argument("events[7].event_type: has characters");
        assert_eq!(rejected_index(&status), Some(7));
        assert_eq!(
            rejected_index(&tonic::Status::invalid_argument(
                "events: has more than 500"
            )),
            None
        );
        assert_eq!(
            rejected_index(&tonic::Status::unavailable("events[1]")),
            None
        );
    }

    #[test]
    fn the_lease_must_outlast_a_call() {
        let src = |pairs: &[(&str, &str)]| {
            Sources::from_pairs(pairs.iter().map(|(k, v)| (*k, *v))).unwrap()
        };
        let defaults = RelaySettings::load(&src(&[]), Duration::from_secs(10)).unwrap();
        assert_eq!(defaults.batch_size, 500);
        let error = RelaySettings::load(&src(&[("OUTBOX_LEASE", "15s")]), Duration::from_secs(10))
            .unwrap_err();
        assert_eq!(error.name, "OUTBOX_LEASE");
        let error =
            RelaySettings::load(&src(&[("OUTBOX_BATCH_SIZE", "0")]), Duration::from_secs(1))
                .unwrap_err();
        assert_eq!(error.name, "OUTBOX_BATCH_SIZE");
    }
}
