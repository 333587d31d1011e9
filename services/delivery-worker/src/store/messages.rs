//! Messages and publishing: a message is stored once per (tenant, event id), and fanned out to a
//! delivery for every enabled endpoint subscribed to its type and channels.

use chrono::{DateTime, Utc};
use diesel::{
    QueryableByName,
    sql_types::{Array, Integer, Text, Timestamptz},
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub message_id: MessageId,
    pub duplicate: bool,
    pub deliveries: u32,
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = Text)]
    id: MessageId,
}

impl Store {
    /// Stores a message and enqueues a delivery for every enabled endpoint subscribed to it, in
    /// one transaction; the same (tenant, event id) again changes nothing. Delivery ids are made
    /// by the schema's `new_id` function, one per endpoint the fan-out finds (see its migration).
    pub async fn publish(
        &self,
        message: &NewMessage,
        max_attempts: i32,
        now: DateTime<Utc>,
    ) -> Result<Published> {
        let mut conn = self.conn().await?;
        let message = message.clone();
        let published = conn
            .transaction::<_, diesel::result::Error, _>(async move |conn| {
                publish_in(conn, &message, max_attempts, now).await
            })
            .await?;
        Ok(published)
    }

    /// Publishes several messages in one transaction, in order; each is idempotent on its own.
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
                let mut published = Vec::with_capacity(messages.len());
                for message in &messages {
                    published.push(publish_in(conn, message, max_attempts, now).await?);
                }
                Ok(published)
            })
            .await?;
        Ok(published)
    }
}

pub(super) async fn publish_in(
    conn: &mut AsyncPgConnection,
    message: &NewMessage,
    max_attempts: i32,
    now: DateTime<Utc>,
) -> std::result::Result<Published, diesel::result::Error> {
    let id = MessageId::new();
    let inserted: Vec<IdRow> = diesel::sql_query(
        "INSERT INTO messages (id, tenant, event_id, event_type, channels, payload, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (tenant, event_id) DO NOTHING RETURNING id",
    )
    .bind::<Text, _>(&id)
    .bind::<Text, _>(&message.tenant)
    .bind::<Text, _>(&message.event_id)
    .bind::<Text, _>(&message.event_type)
    .bind::<Array<Text>, _>(&message.channels)
    .bind::<Text, _>(&message.payload)
    .bind::<Timestamptz, _>(now)
    .load(conn)
    .await?;
    if inserted.is_empty() {
        let existing: IdRow =
            diesel::sql_query("SELECT id FROM messages WHERE tenant = $1 AND event_id = $2")
                .bind::<Text, _>(&message.tenant)
                .bind::<Text, _>(&message.event_id)
                .get_result(conn)
                .await?;
        return Ok(Published {
            message_id: existing.id,
            duplicate: true,
            deliveries: 0,
        });
    }
    let enqueued = diesel::sql_query(
        "INSERT INTO deliveries (id, message_id, endpoint_id, max_attempts, next_retry_at, created_at) \
         SELECT new_id('dlv_'), $1, e.id, $2, $3, $3 FROM endpoints e \
         WHERE e.tenant = $4 AND NOT e.disabled \
           AND (e.event_types IS NULL OR $5 = ANY (e.event_types)) \
           AND (e.channels IS NULL OR e.channels && $6)",
    )
    .bind::<Text, _>(&id)
    .bind::<Integer, _>(max_attempts)
    .bind::<Timestamptz, _>(now)
    .bind::<Text, _>(&message.tenant)
    .bind::<Text, _>(&message.event_type)
    .bind::<Array<Text>, _>(&message.channels)
    .execute(conn)
    .await?;
    if enqueued > 0 {
        notify(conn).await?;
    }
    Ok(Published {
        message_id: id,
        duplicate: false,
        deliveries: u32::try_from(enqueued).unwrap_or(u32::MAX),
    })
}
