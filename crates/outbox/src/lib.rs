//! The transactional outbox: how a service changes its own tables and hands an event to
//! delivery-worker without losing it and without partners seeing it twice.
//!
//! - [`enqueue`] writes the event into the service's `outbox` table inside the caller's own
//!   transaction, so the event exists if and only if the state change committed.
//! - The [`relay::Relay`] claims pending events (`FOR UPDATE SKIP LOCKED` under a lease, woken by
//!   `LISTEN/NOTIFY`, polling as a backstop), hands them to delivery-worker in batches with
//!   `PublishBatch`, with `event_id` = the outbox row's id, and marks them published. delivery-worker
//!   is idempotent on the event id, so a relay that dies after publishing but before marking causes
//!   no second delivery: the next relay publishes again and is told "duplicate".
//! - Events of one aggregate (say, one job) are handed on in the order they were enqueued: a relay
//!   never claims an event while an earlier event of its aggregate is held by another claim, and
//!   claims are taken one at a time per schema.
//!
//! The table lives in the owning service's schema; add [`MIGRATIONS`] to the service's migration
//! set (`database::MigrationSet::from(MIGRATIONS).and(outbox::MIGRATIONS)`).

pub mod relay;

use chrono::{DateTime, Utc};
use diesel::sql_types::{Array, Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use diesel_migrations::{EmbeddedMigrations, embed_migrations};
use ids::{EventId, Tenant};
use sonora_proto::delivery::v1::{MAX_PAYLOAD_BYTES, is_channel, is_event_type};

pub use relay::{Relay, RelaySettings};

/// The outbox table's migrations, applied in the owning service's schema.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!();

/// The channel the relays of one schema listen on: `outbox_<schema>`.
pub fn channel(schema: &str) -> String {
    format!("outbox_{schema}")
}

/// Why an event cannot be enqueued. Checked before anything is written, with the rules
/// delivery-worker applies, so an enqueued event is never refused later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("event_type must be 1 to 128 characters of a-z, 0-9, '.', '_' and '-'")]
    EventType,
    #[error("payload must be a JSON object of at most {MAX_PAYLOAD_BYTES} bytes")]
    Payload,
    #[error("aggregate must be 1 to 256 characters")]
    Aggregate,
    #[error(
        "channels must be at most 64 of 1 to 128 characters of letters, digits, '-', '_', '.' and ':'"
    )]
    Channel,
}

/// An event, checked and ready to enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    tenant: Tenant,
    aggregate: String,
    event_type: String,
    payload: String,
    channels: Vec<String>,
}

impl Event {
    /// An event of `tenant` about `aggregate` (such as a job id).
    pub fn new(
        tenant: Tenant,
        aggregate: impl ToString,
        event_type: &str,
        payload: &serde_json::Value,
    ) -> Result<Self, EventError> {
        let aggregate = aggregate.to_string();
        if aggregate.is_empty() || aggregate.len() > 256 {
            return Err(EventError::Aggregate);
        }
        if !is_event_type(event_type) {
            return Err(EventError::EventType);
        }
        let payload = payload
            .is_object()
            .then(|| payload.to_string())
            .filter(|text| text.len() <= MAX_PAYLOAD_BYTES)
            .ok_or(EventError::Payload)?;
        Ok(Self {
            tenant,
            aggregate,
            event_type: event_type.to_owned(),
            payload,
            channels: Vec::new(),
        })
    }

    /// Limits the event to endpoints subscribed to one of `channels`.
    pub fn with_channels(mut self, channels: Vec<String>) -> Result<Self, EventError> {
        if channels.len() > 64 || !channels.iter().all(|c| is_channel(c)) {
            return Err(EventError::Channel);
        }
        self.channels = channels;
        Ok(self)
    }
}

/// Writes `event` into the outbox inside the caller's transaction (`conn` must be in one, with
/// its `search_path` on the owning schema) and wakes the relays when that transaction commits.
/// The current span's trace goes with the event, so its deliveries join that trace.
pub async fn enqueue(
    conn: &mut AsyncPgConnection,
    event: &Event,
    now: DateTime<Utc>,
) -> Result<EventId, diesel::result::Error> {
    let id = EventId::new();
    diesel::sql_query(
        "INSERT INTO outbox (id, tenant, aggregate, event_type, payload, channels, created_at, traceparent) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind::<Text, _>(id)
    .bind::<Text, _>(&event.tenant)
    .bind::<Text, _>(&event.aggregate)
    .bind::<Text, _>(&event.event_type)
    .bind::<Text, _>(&event.payload)
    .bind::<Array<Text>, _>(&event.channels)
    .bind::<Timestamptz, _>(now)
    .bind::<Nullable<Text>, _>(telemetry::propagation::current_traceparent())
    .execute(conn)
    .await?;
    // Delivered at commit, and not at all on rollback.
    diesel::sql_query("SELECT pg_notify('outbox_' || current_schema(), '')")
        .execute(conn)
        .await?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acme() -> Tenant {
        Tenant::parse("acme").unwrap()
    }

    #[test]
    fn events_are_checked_with_delivery_workers_rules() {
        let ok = Event::new(
            acme(),
            "job_1",
            "audio.job.failed",
            &serde_json::json!({"a": 1}),
        );
        assert!(ok.is_ok());
        for bad_type in ["", "Audio.Job", "a b", &"x".repeat(129)] {
            assert_eq!(
                Event::new(acme(), "job_1", bad_type, &serde_json::json!({})),
                Err(EventError::EventType)
            );
        }
        assert_eq!(
            Event::new(acme(), "job_1", "a.b", &serde_json::json!([1])),
            Err(EventError::Payload)
        );
        let huge = serde_json::json!({ "x": "a".repeat(MAX_PAYLOAD_BYTES) });
        assert_eq!(
            Event::new(acme(), "job_1", "a.b", &huge),
            Err(EventError::Payload)
        );
        assert_eq!(
            Event::new(acme(), "", "a.b", &serde_json::json!({})),
            Err(EventError::Aggregate)
        );
        let event = Event::new(acme(), "job_1", "a.b", &serde_json::json!({})).unwrap();
        assert!(event.clone().with_channels(vec!["eu-west".into()]).is_ok());
        assert_eq!(
            event.with_channels(vec!["no spaces".into()]),
            Err(EventError::Channel)
        );
    }
}
