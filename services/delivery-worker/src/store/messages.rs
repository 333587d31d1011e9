//! Messages and publishing: a message is stored once per (tenant, event id), and fanned out to a
//! delivery for every enabled endpoint subscribed to its type and channels.

use chrono::{DateTime, Utc};
use std::collections::HashMap;

use diesel::{
    QueryableByName,
    sql_types::{Array, BigInt, Integer, Text, Timestamptz},
};
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl};

use ids::{MessageId, Tenant};

use super::{Result, Store, notify};

/// A message to publish, already validated.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub tenant: Tenant,
    pub event_id: String,
    pub event_type: String,
    pub payload: String,
    pub channels: Vec<String>,
    /// The trace its deliveries continue (a valid W3C `traceparent`).
    pub traceparent: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub message_id: MessageId,
    pub duplicate: bool,
    pub deliveries: u32,
}

#[derive(QueryableByName)]
struct StoredRow {
    #[diesel(sql_type = Text)]
    id: MessageId,
    #[diesel(sql_type = Text)]
    tenant: String,
    #[diesel(sql_type = Text)]
    event_id: String,
    #[diesel(sql_type = BigInt)]
    deliveries: i64,
}

impl Store {
    /// Stores a message and enqueues a delivery for every enabled endpoint subscribed to it, in
    /// one transaction; the same (tenant, event id) again changes nothing.
    pub async fn publish(
        &self,
        message: &NewMessage,
        max_attempts: i32,
        now: DateTime<Utc>,
    ) -> Result<Published> {
        let mut published = self
            .publish_batch(std::slice::from_ref(message), max_attempts, now)
            .await?;
        Ok(published.remove(0))
    }

    /// Publishes several messages in one transaction, in order; each is idempotent on its own
    /// (a later copy of an event in the same batch is a duplicate of the first).
    pub async fn publish_batch(
        &self,
        messages: &[NewMessage],
        max_attempts: i32,
        now: DateTime<Utc>,
    ) -> Result<Vec<Published>> {
        let mut conn = self.conn().await?;
        let messages = messages.to_vec();
        let published = conn
            .transaction::<_, diesel::result::Error, _>(async move |conn| {
                publish_in(conn, &messages, max_attempts, now).await
            })
            .await?;
        Ok(published)
    }
}

/// Publishes `messages` on `conn`, set-based: one statement stores the new messages and fans
/// each out to its endpoints (delivery ids from the schema's `new_id`, see its migration), one
/// more finds the messages that already existed, whatever the batch's size. Results are in the
/// order of `messages`.
pub(super) async fn publish_in(
    conn: &mut AsyncPgConnection,
    messages: &[NewMessage],
    max_attempts: i32,
    now: DateTime<Utc>,
) -> std::result::Result<Vec<Published>, diesel::result::Error> {
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<MessageId> = messages.iter().map(|_| MessageId::new()).collect();
    let tenants: Vec<&str> = messages.iter().map(|m| m.tenant.as_str()).collect();
    let event_ids: Vec<&str> = messages.iter().map(|m| m.event_id.as_str()).collect();
    let event_types: Vec<&str> = messages.iter().map(|m| m.event_type.as_str()).collect();
    // Channels are letters, digits and `-_.:` (checked at the edge), so a comma joins them; a 2-D
    // array would not do, since unnest flattens it.
    let channels: Vec<String> = messages.iter().map(|m| m.channels.join(",")).collect();
    let payloads: Vec<&str> = messages.iter().map(|m| m.payload.as_str()).collect();
    // '' for none: unnest cannot tell a NULL element from a missing one.
    let traceparents: Vec<&str> = messages
        .iter()
        .map(|m| m.traceparent.as_deref().unwrap_or_default())
        .collect();
    let stored: Vec<StoredRow> = diesel::sql_query(
        "WITH input AS ( \
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $9::text[]) \
             WITH ORDINALITY AS i(id, tenant, event_id, event_type, channels, payload, traceparent, n) \
         ), inserted AS ( \
           INSERT INTO messages (id, tenant, event_id, event_type, channels, payload, created_at, traceparent) \
           SELECT id, tenant, event_id, event_type, \
                  CASE WHEN channels = '' THEN '{}'::text[] ELSE string_to_array(channels, ',') END, \
                  payload, $7, NULLIF(traceparent, '') \
           FROM input ORDER BY n \
           ON CONFLICT (tenant, event_id) DO NOTHING \
           RETURNING id, tenant, event_id, event_type, channels \
         ), fanned AS ( \
           INSERT INTO deliveries (id, message_id, endpoint_id, max_attempts, next_retry_at, created_at) \
           SELECT new_id('dlv_'), m.id, e.id, $8, $7, $7 FROM inserted m JOIN endpoints e \
             ON e.tenant = m.tenant AND NOT e.disabled \
            AND (e.event_types IS NULL OR m.event_type = ANY (e.event_types)) \
            AND (e.channels IS NULL OR e.channels && m.channels) \
           RETURNING message_id \
         ) \
         SELECT m.id, m.tenant, m.event_id, \
                (SELECT count(*) FROM fanned f WHERE f.message_id = m.id) AS deliveries \
         FROM inserted m",
    )
    .bind::<Array<Text>, _>(&ids)
    .bind::<Array<Text>, _>(&tenants)
    .bind::<Array<Text>, _>(&event_ids)
    .bind::<Array<Text>, _>(&event_types)
    .bind::<Array<Text>, _>(&channels)
    .bind::<Array<Text>, _>(&payloads)
    .bind::<Timestamptz, _>(now)
    .bind::<Integer, _>(max_attempts)
    .bind::<Array<Text>, _>(&traceparents)
    .load(conn)
    .await?;
    let mut new: HashMap<(String, String), (MessageId, u32)> = stored
        .into_iter()
        .map(|r| {
            let deliveries = u32::try_from(r.deliveries).unwrap_or(u32::MAX);
            ((r.tenant, r.event_id), (r.id, deliveries))
        })
        .collect();
    let mut existing: HashMap<(String, String), MessageId> = HashMap::new();
    if new.len() < messages.len() {
        let rows: Vec<StoredRow> = diesel::sql_query(
            "SELECT m.id, m.tenant, m.event_id, 0::bigint AS deliveries FROM messages m \
             JOIN unnest($1::text[], $2::text[]) AS k(tenant, event_id) \
               ON m.tenant = k.tenant AND m.event_id = k.event_id",
        )
        .bind::<Array<Text>, _>(&tenants)
        .bind::<Array<Text>, _>(&event_ids)
        .load(conn)
        .await?;
        existing = rows
            .into_iter()
            .map(|r| ((r.tenant, r.event_id), r.id))
            .collect();
    }
    let mut enqueued = 0u32;
    let published = messages
        .iter()
        .map(|m| {
            let key = (m.tenant.to_string(), m.event_id.clone());
            // The first copy of a new event takes its result; any later copy is a duplicate.
            if let Some((id, deliveries)) = new.remove(&key) {
                existing.insert(key, id);
                enqueued = enqueued.saturating_add(deliveries);
                return Ok(Published {
                    message_id: id,
                    duplicate: false,
                    deliveries,
                });
            }
            let id = existing
                .get(&key)
                .copied()
                .ok_or(diesel::result::Error::NotFound)?;
            Ok(Published {
                message_id: id,
                duplicate: true,
                deliveries: 0,
            })
        })
        .collect::<std::result::Result<Vec<_>, diesel::result::Error>>()?;
    if enqueued > 0 {
        notify(conn).await?;
    }
    Ok(published)
}
