//! What the API lists and counts: endpoints, messages, deliveries and attempts (keyset pages by
//! id), and the queue's statistics.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use diesel::{
    QueryableByName,
    sql_types::{Array, BigInt, Bool, Integer, Jsonb, Nullable, Text, Timestamptz},
};
use diesel_async::RunQueryDsl;

use ids::{AttemptId, DeliveryId, EndpointId, MessageId, Tenant};

use super::{EndpointRow, Result, Store, StoreError, endpoints::ENDPOINT_COLUMNS, page};
use crate::model::{AttemptOutcome, DeliveryStatus};

#[derive(Debug, Clone, QueryableByName)]
pub struct MessageRow {
    #[diesel(sql_type = Text)]
    pub id: MessageId,
    #[diesel(sql_type = Text)]
    pub tenant: Tenant,
    #[diesel(sql_type = Text)]
    pub event_id: String,
    #[diesel(sql_type = Text)]
    pub event_type: String,
    #[diesel(sql_type = Text)]
    pub payload: String,
    #[diesel(sql_type = Array<Text>)]
    pub channels: Vec<String>,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, QueryableByName)]
pub struct DeliveryRow {
    #[diesel(sql_type = Text)]
    pub id: DeliveryId,
    #[diesel(sql_type = Text)]
    pub message_id: MessageId,
    #[diesel(sql_type = Text)]
    pub endpoint_id: EndpointId,
    #[diesel(sql_type = Text)]
    pub status: DeliveryStatus,
    #[diesel(sql_type = Integer)]
    pub attempt_count: i32,
    #[diesel(sql_type = Integer)]
    pub max_attempts: i32,
    #[diesel(sql_type = Timestamptz)]
    pub next_retry_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Integer>)]
    pub last_response_status: Option<i32>,
    #[diesel(sql_type = Nullable<Text>)]
    pub last_error: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub delivered_at: Option<DateTime<Utc>>,
}

pub(super) const DELIVERY_COLUMNS: &str = "d.id, d.message_id, d.endpoint_id, d.status, d.attempt_count, \
    d.max_attempts, d.next_retry_at, d.last_response_status, d.last_error, d.created_at, d.delivered_at";

#[derive(Debug, Clone, QueryableByName)]
pub struct AttemptRow {
    #[diesel(sql_type = Text)]
    pub id: AttemptId,
    #[diesel(sql_type = Text)]
    pub delivery_id: DeliveryId,
    #[diesel(sql_type = Text)]
    pub message_id: MessageId,
    #[diesel(sql_type = Text)]
    pub endpoint_id: EndpointId,
    #[diesel(sql_type = Timestamptz)]
    pub attempted_at: DateTime<Utc>,
    #[diesel(sql_type = Integer)]
    pub duration_ms: i32,
    #[diesel(sql_type = Jsonb)]
    pub request_headers: serde_json::Value,
    #[diesel(sql_type = Nullable<Integer>)]
    pub response_status: Option<i32>,
    #[diesel(sql_type = Nullable<Text>)]
    pub response_body: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub error: Option<String>,
    #[diesel(sql_type = Text)]
    pub outcome: AttemptOutcome,
}

#[derive(Debug, Clone, Default, QueryableByName)]
pub struct QueueStats {
    #[diesel(sql_type = BigInt)]
    pub pending: i64,
    #[diesel(sql_type = BigInt)]
    pub delivered: i64,
    #[diesel(sql_type = BigInt)]
    pub failed: i64,
    #[diesel(sql_type = BigInt)]
    pub dead_letter: i64,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub oldest_pending: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<diesel::sql_types::Double>)]
    pub average_attempts: Option<f64>,
}

/// Whether each resource a listing is filtered by exists for the tenant.
#[derive(QueryableByName)]
struct Filters {
    #[diesel(sql_type = Bool)]
    endpoint: bool,
    #[diesel(sql_type = Bool)]
    message: bool,
    #[diesel(sql_type = Bool)]
    delivery: bool,
}

/// What a listing of deliveries is limited to; each `None` matches every value.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeliveryFilter<'a> {
    pub endpoint_id: Option<EndpointId>,
    pub message_id: Option<MessageId>,
    /// The publisher's event id of the delivered message.
    pub event_id: Option<&'a str>,
    pub status: Option<DeliveryStatus>,
}

impl Store {
    /// A listing filtered by a resource the tenant does not have answers "not found", as asking
    /// for the resource itself does, rather than an empty page that looks like "nothing yet".
    async fn check_filters(
        conn: &mut database::PooledConnection,
        tenant: &Tenant,
        endpoint_id: Option<EndpointId>,
        message_id: Option<MessageId>,
        delivery_id: Option<DeliveryId>,
    ) -> Result<()> {
        if endpoint_id.is_none() && message_id.is_none() && delivery_id.is_none() {
            return Ok(());
        }
        let found: Filters = diesel::sql_query(
            "SELECT ($2::text IS NULL OR EXISTS (SELECT 1 FROM endpoints WHERE tenant = $1 AND id = $2)) AS endpoint, \
                    ($3::text IS NULL OR EXISTS (SELECT 1 FROM messages WHERE tenant = $1 AND id = $3)) AS message, \
                    ($4::text IS NULL OR EXISTS (SELECT 1 FROM deliveries d JOIN endpoints e ON e.id = d.endpoint_id \
                                                 WHERE e.tenant = $1 AND d.id = $4)) AS delivery",
        )
        .bind::<Text, _>(tenant)
        .bind::<Nullable<Text>, _>(endpoint_id)
        .bind::<Nullable<Text>, _>(message_id)
        .bind::<Nullable<Text>, _>(delivery_id)
        .get_result(conn)
        .await?;
        match (found.endpoint, found.message, found.delivery) {
            (false, _, _) => Err(StoreError::NotFound("endpoint")),
            (_, false, _) => Err(StoreError::NotFound("message")),
            (_, _, false) => Err(StoreError::NotFound("delivery")),
            (true, true, true) => Ok(()),
        }
    }

    /// A page of the tenant's endpoints, oldest first, after the id `after` when given.
    pub async fn list_endpoints(
        &self,
        tenant: &Tenant,
        after: Option<EndpointId>,
        page_size: u32,
    ) -> Result<Vec<EndpointRow>> {
        let mut conn = self.conn().await?;
        Ok(diesel::sql_query(format!(
            "SELECT {ENDPOINT_COLUMNS} FROM endpoints \
             WHERE tenant = $1 AND ($2::text IS NULL OR id > $2) ORDER BY id LIMIT $3"
        ))
        .bind::<Text, _>(tenant)
        .bind::<Nullable<Text>, _>(after)
        .bind::<BigInt, _>(page(page_size))
        .load(&mut conn)
        .await?)
    }

    /// A page of the tenant's messages, newest first, before the id `before_id` when given.
    pub async fn list_messages(
        &self,
        tenant: &Tenant,
        event_type: Option<&str>,
        after: Option<DateTime<Utc>>,
        before: Option<DateTime<Utc>>,
        before_id: Option<MessageId>,
        page_size: u32,
    ) -> Result<Vec<MessageRow>> {
        let mut conn = self.conn().await?;
        Ok(diesel::sql_query(
            "SELECT id, tenant, event_id, event_type, payload, channels, created_at FROM messages \
             WHERE tenant = $1 AND ($2::text IS NULL OR event_type = $2) \
               AND ($3::timestamptz IS NULL OR created_at >= $3) AND ($4::timestamptz IS NULL OR created_at < $4) \
               AND ($5::text IS NULL OR id < $5) \
             ORDER BY id DESC LIMIT $6",
        )
        .bind::<Text, _>(tenant)
        .bind::<Nullable<Text>, _>(event_type)
        .bind::<Nullable<Timestamptz>, _>(after)
        .bind::<Nullable<Timestamptz>, _>(before)
        .bind::<Nullable<Text>, _>(before_id)
        .bind::<BigInt, _>(page(page_size))
        .load(&mut conn)
        .await?)
    }

    /// A page of the tenant's deliveries, oldest first, after the id `after` when given; an
    /// endpoint or message filter must name one of the tenant's.
    pub async fn list_deliveries(
        &self,
        tenant: &Tenant,
        filter: DeliveryFilter<'_>,
        after: Option<DeliveryId>,
        page_size: u32,
    ) -> Result<Vec<DeliveryRow>> {
        let DeliveryFilter {
            endpoint_id,
            message_id,
            event_id,
            status,
        } = filter;
        let mut conn = self.conn().await?;
        Self::check_filters(&mut conn, tenant, endpoint_id, message_id, None).await?;
        Ok(diesel::sql_query(format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN endpoints e ON e.id = d.endpoint_id \
             WHERE e.tenant = $1 AND ($2::text IS NULL OR d.endpoint_id = $2) \
               AND ($3::text IS NULL OR d.message_id = $3) AND ($4::text IS NULL OR d.status = $4) \
               AND ($5::text IS NULL OR d.id > $5) \
               AND ($7::text IS NULL OR d.message_id = \
                    (SELECT m.id FROM messages m WHERE m.tenant = $1 AND m.event_id = $7)) \
             ORDER BY d.id LIMIT $6"
        ))
        .bind::<Text, _>(tenant)
        .bind::<Nullable<Text>, _>(endpoint_id)
        .bind::<Nullable<Text>, _>(message_id)
        .bind::<Nullable<Text>, _>(status)
        .bind::<Nullable<Text>, _>(after)
        .bind::<BigInt, _>(page(page_size))
        .bind::<Nullable<Text>, _>(event_id)
        .load(&mut conn)
        .await?)
    }

    /// A page of the tenant's attempts, oldest first, after the id `after` when given; an
    /// endpoint, message or delivery filter must name one of the tenant's.
    pub async fn list_attempts(
        &self,
        tenant: &Tenant,
        endpoint_id: Option<EndpointId>,
        message_id: Option<MessageId>,
        delivery_id: Option<DeliveryId>,
        after: Option<AttemptId>,
        page_size: u32,
    ) -> Result<Vec<AttemptRow>> {
        let mut conn = self.conn().await?;
        Self::check_filters(&mut conn, tenant, endpoint_id, message_id, delivery_id).await?;
        Ok(diesel::sql_query(
            "SELECT a.id, a.delivery_id, a.message_id, a.endpoint_id, a.attempted_at, a.duration_ms, \
                    a.request_headers, a.response_status, a.response_body, a.error, a.outcome \
             FROM attempts a JOIN endpoints e ON e.id = a.endpoint_id \
             WHERE e.tenant = $1 AND ($2::text IS NULL OR a.endpoint_id = $2) \
               AND ($3::text IS NULL OR a.message_id = $3) AND ($4::text IS NULL OR a.delivery_id = $4) \
               AND ($5::text IS NULL OR a.id > $5) ORDER BY a.id LIMIT $6",
        )
        .bind::<Text, _>(tenant)
        .bind::<Nullable<Text>, _>(endpoint_id)
        .bind::<Nullable<Text>, _>(message_id)
        .bind::<Nullable<Text>, _>(delivery_id)
        .bind::<Nullable<Text>, _>(after)
        .bind::<BigInt, _>(page(page_size))
        .load(&mut conn)
        .await?)
    }

    pub async fn queue_stats(&self, tenant: Option<&Tenant>) -> Result<QueueStats> {
        let mut conn = self.conn().await?;
        Ok(diesel::sql_query(
            "SELECT count(*) FILTER (WHERE d.status = 'pending') AS pending, \
                    count(*) FILTER (WHERE d.status = 'delivered') AS delivered, \
                    count(*) FILTER (WHERE d.status = 'failed') AS failed, \
                    count(*) FILTER (WHERE d.status = 'dead_letter') AS dead_letter, \
                    min(d.created_at) FILTER (WHERE d.status IN ('pending', 'failed')) AS oldest_pending, \
                    avg(d.attempt_count)::float8 AS average_attempts \
             FROM deliveries d JOIN endpoints e ON e.id = d.endpoint_id \
             WHERE $1::text IS NULL OR e.tenant = $1",
        )
        .bind::<Nullable<Text>, _>(tenant)
        .get_result(&mut conn)
        .await?)
    }

    /// Webhooks delivered to the tenant's endpoints per UTC day from `from` to `to` inclusive.
    pub async fn usage(
        &self,
        tenant: &Tenant,
        from: chrono::NaiveDate,
        to: chrono::NaiveDate,
    ) -> Result<Vec<(chrono::NaiveDate, i64)>> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::Date)]
            day: chrono::NaiveDate,
            #[diesel(sql_type = BigInt)]
            delivered: i64,
        }
        let mut conn = self.conn().await?;
        let rows: Vec<Row> = diesel::sql_query(
            "SELECT day, delivered FROM usage_daily WHERE tenant = $1 AND day BETWEEN $2 AND $3 ORDER BY day",
        )
        .bind::<Text, _>(tenant)
        .bind::<diesel::sql_types::Date, _>(from)
        .bind::<diesel::sql_types::Date, _>(to)
        .load(&mut conn)
        .await?;
        Ok(rows.into_iter().map(|r| (r.day, r.delivered)).collect())
    }

    /// Every delivery's status, counted, for the queue-size gauge.
    pub async fn status_counts(&self) -> Result<BTreeMap<DeliveryStatus, i64>> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            status: DeliveryStatus,
            #[diesel(sql_type = BigInt)]
            count: i64,
        }
        let mut conn = self.conn().await?;
        let rows: Vec<Row> =
            diesel::sql_query("SELECT status, count(*) AS count FROM deliveries GROUP BY status")
                .load(&mut conn)
                .await?;
        Ok(rows.into_iter().map(|r| (r.status, r.count)).collect())
    }
}
