//! The delivery queue: due rows are claimed under a lease, their outcomes recorded only by the
//! claim that still holds them, with the attempts, the endpoints' health and the operational
//! events the rules raise, in one transaction. Retry and redrive put rows back in the queue.

use chrono::{DateTime, Utc};
use diesel::{
    OptionalExtension as _, QueryableByName,
    sql_types::{
        Array, BigInt, Bytea, Integer, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid,
    },
};
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl};
use ids::{AttemptId, DeliveryId, EndpointId, MessageId, Tenant};
use uuid::Uuid;

use super::{
    DeliveryRow, Result, Store, StoreError, audit, listings::DELIVERY_COLUMNS,
    messages::publish_in, notify,
};
use crate::{
    model::{AttemptOutcome, DeliveryStatus},
    rules::{self, OperationalEvent},
};

/// A delivery the caller now holds the lease of, with what it needs to send it.
#[derive(Debug, Clone, QueryableByName)]
pub struct Claimed {
    #[diesel(sql_type = Text)]
    pub id: DeliveryId,
    #[diesel(sql_type = Text)]
    pub message_id: MessageId,
    #[diesel(sql_type = Text)]
    pub endpoint_id: EndpointId,
    #[diesel(sql_type = Integer)]
    pub attempt_count: i32,
    #[diesel(sql_type = Integer)]
    pub max_attempts: i32,
    /// The attempt count where the current run of the retry schedule started.
    #[diesel(sql_type = Integer)]
    pub schedule_offset: i32,
    #[diesel(sql_type = Timestamptz)]
    pub enqueued_at: DateTime<Utc>,
    #[diesel(sql_type = Text)]
    pub tenant: Tenant,
    #[diesel(sql_type = Text)]
    pub event_type: String,
    #[diesel(sql_type = Text)]
    pub payload: String,
    #[diesel(sql_type = Text)]
    pub url: String,
    #[diesel(sql_type = Nullable<Integer>)]
    pub rate_limit_per_second: Option<i32>,
    /// The endpoint's live secrets, sealed, newest first.
    #[diesel(sql_type = Nullable<Array<Bytea>>)]
    pub sealed_secrets: Option<Vec<Vec<u8>>>,
    /// The trace the attempt continues: the publisher's.
    #[diesel(sql_type = Nullable<Text>)]
    pub traceparent: Option<String>,
}

/// What became of one claimed delivery, decided by the worker.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub delivery_id: DeliveryId,
    pub claim_id: Uuid,
    pub message_id: MessageId,
    pub endpoint_id: EndpointId,
    /// As claimed: where the delivery's current run of the schedule started.
    pub schedule_offset: i32,
    pub tenant: Tenant,
    pub event_type: String,
    /// Delivered, failed (due again at `next_retry_at`) or dead-lettered; never pending.
    pub status: DeliveryStatus,
    pub attempt_count: i32,
    pub next_retry_at: DateTime<Utc>,
    pub attempted_at: DateTime<Utc>,
    pub enqueued_at: DateTime<Utc>,
    pub duration_ms: i32,
    pub request_headers: serde_json::Value,
    pub response_status: Option<i32>,
    pub response_body: Option<String>,
    pub error: Option<String>,
    pub attempt_outcome: AttemptOutcome,
    /// Hold all deliveries to the endpoint until then (429/503 `Retry-After`, 502, 504, timeout).
    pub throttle_until: Option<DateTime<Utc>>,
    /// Disable the endpoint for this reason (410 Gone).
    pub disable_reason: Option<String>,
}

/// What recording a batch of outcomes changed.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    /// Outcomes whose claim still held the row; the others were ignored.
    pub applied: Vec<usize>,
    pub events: Vec<OperationalEvent>,
    pub disabled_endpoints: Vec<EndpointId>,
}

#[derive(QueryableByName)]
struct DeliveryIdRow {
    #[diesel(sql_type = Text)]
    id: DeliveryId,
}

#[derive(QueryableByName)]
struct HealthRow {
    #[diesel(sql_type = Text)]
    id: EndpointId,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    failing_since: Option<DateTime<Utc>>,
}

#[derive(QueryableByName)]
struct DisabledRow {
    #[diesel(sql_type = Text)]
    id: EndpointId,
    #[diesel(sql_type = Text)]
    tenant: Tenant,
    #[diesel(sql_type = Text)]
    url: String,
    #[diesel(sql_type = Text)]
    reason: String,
}

impl Store {
    /// Claims up to `limit` due deliveries for `lease` under `claim_id`, each with its endpoint's
    /// live secrets (one round trip for the whole batch).
    pub async fn claim(
        &self,
        claim_id: Uuid,
        limit: i64,
        lease: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<Vec<Claimed>> {
        let mut conn = self.conn().await?;
        Ok(diesel::sql_query(
            "WITH due AS ( \
               SELECT d.id FROM deliveries d JOIN endpoints e ON e.id = d.endpoint_id \
               WHERE d.status IN ('pending', 'failed') AND d.next_retry_at <= $1 \
                 AND (d.lease_expires_at IS NULL OR d.lease_expires_at <= $1) \
                 AND NOT e.disabled AND (e.throttled_until IS NULL OR e.throttled_until <= $1) \
               ORDER BY d.next_retry_at LIMIT $2 FOR UPDATE OF d SKIP LOCKED \
             ), claimed AS ( \
               UPDATE deliveries d SET claim_id = $3, lease_expires_at = $4 FROM due WHERE d.id = due.id \
               RETURNING d.id, d.message_id, d.endpoint_id, d.attempt_count, d.max_attempts, \
                 d.schedule_offset, d.created_at \
             ) \
             SELECT c.id, c.message_id, c.endpoint_id, c.attempt_count, c.max_attempts, c.schedule_offset, \
                    c.created_at AS enqueued_at, m.tenant, m.event_type, m.payload, e.url, e.rate_limit_per_second, \
                    (SELECT array_agg(s.ciphertext ORDER BY s.created_at DESC, s.id DESC) FROM endpoint_secrets s \
                      WHERE s.endpoint_id = c.endpoint_id AND (s.expires_at IS NULL OR s.expires_at > $1)) AS sealed_secrets, \
                    m.traceparent \
             FROM claimed c JOIN messages m ON m.id = c.message_id JOIN endpoints e ON e.id = c.endpoint_id \
             ORDER BY c.id",
        )
        .bind::<Timestamptz, _>(now)
        .bind::<BigInt, _>(limit)
        .bind::<SqlUuid, _>(claim_id)
        .bind::<Timestamptz, _>(now + lease)
        .load(&mut conn)
        .await?)
    }

    /// Extends to `until` the lease of each row still held by the claim it is paired with: the
    /// heartbeat of a worker whose deliveries are in flight, one statement for all of them. Rows
    /// recorded since (claim cleared) or claimed by another worker after an expiry are left
    /// alone. Returns how many leases were extended.
    pub async fn renew_leases(
        &self,
        held: &[(DeliveryId, Uuid)],
        until: DateTime<Utc>,
    ) -> Result<u64> {
        let (ids, claims): (Vec<DeliveryId>, Vec<Uuid>) = held.iter().copied().unzip();
        let mut conn = self.conn().await?;
        let renewed = diesel::sql_query(
            "UPDATE deliveries d SET lease_expires_at = $3 \
             FROM unnest($1::text[], $2::uuid[]) AS h(id, claim_id) \
             WHERE d.id = h.id AND d.claim_id = h.claim_id",
        )
        .bind::<Array<Text>, _>(&ids)
        .bind::<Array<SqlUuid>, _>(&claims)
        .bind::<Timestamptz, _>(until)
        .execute(&mut conn)
        .await?;
        Ok(renewed as u64)
    }

    /// Applies outcomes in one transaction: only those whose claim still holds the row, with their
    /// attempts, the endpoints' health, and the operational events they cause.
    pub async fn record(
        &self,
        outcomes: &[Outcome],
        disable_after: chrono::Duration,
        failing_after_attempts: i32,
        max_attempts: i32,
        now: DateTime<Utc>,
    ) -> Result<Recorded> {
        if outcomes.is_empty() {
            return Ok(Recorded::default());
        }
        let mut conn = self.conn().await?;
        let outcomes = outcomes.to_vec();
        let recorded = conn
            .transaction::<_, diesel::result::Error, _>(async move |conn| {
                record_in(
                    conn,
                    &outcomes,
                    disable_after,
                    failing_after_attempts,
                    max_attempts,
                    now,
                )
                .await
            })
            .await?;
        Ok(recorded)
    }

    /// Makes one delivery due now and starts its retry schedule over: a full run of
    /// `max_attempts` from its current attempt count, with the schedule's delays between them.
    pub async fn retry_delivery(
        &self,
        tenant: &Tenant,
        delivery_id: DeliveryId,
        max_attempts: i32,
        now: DateTime<Utc>,
    ) -> Result<DeliveryRow> {
        let mut conn = self.conn().await?;
        let row: DeliveryRow = diesel::sql_query(format!(
            "UPDATE deliveries d SET status = 'pending', next_retry_at = $3, \
               max_attempts = d.attempt_count + $4, schedule_offset = d.attempt_count, \
               claim_id = NULL, lease_expires_at = NULL \
             FROM endpoints e WHERE e.id = d.endpoint_id AND e.tenant = $1 AND d.id = $2 \
             RETURNING {DELIVERY_COLUMNS}"
        ))
        .bind::<Text, _>(tenant)
        .bind::<Text, _>(delivery_id)
        .bind::<Timestamptz, _>(now)
        .bind::<Integer, _>(max_attempts)
        .get_result(&mut conn)
        .await
        .optional()?
        .ok_or(StoreError::NotFound("delivery"))?;
        notify(&mut conn).await?;
        Ok(row)
    }

    /// Puts an endpoint's dead letters (created within the range, when given) back in the queue
    /// with a fresh attempt budget, starting the retry schedule over for each.
    pub async fn redrive(
        &self,
        tenant: &Tenant,
        endpoint_id: EndpointId,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        max_attempts: i32,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        self.get_endpoint(tenant, endpoint_id).await?;
        let mut conn = self.conn().await?;
        let count = diesel::sql_query(
            "UPDATE deliveries SET status = 'pending', next_retry_at = $4, \
               max_attempts = attempt_count + $5, schedule_offset = attempt_count, \
               claim_id = NULL, lease_expires_at = NULL \
             WHERE endpoint_id = $1 AND status = 'dead_letter' \
               AND ($2::timestamptz IS NULL OR created_at >= $2) AND ($3::timestamptz IS NULL OR created_at < $3)",
        )
        .bind::<Text, _>(endpoint_id)
        .bind::<Nullable<Timestamptz>, _>(since)
        .bind::<Nullable<Timestamptz>, _>(until)
        .bind::<Timestamptz, _>(now)
        .bind::<Integer, _>(max_attempts)
        .execute(&mut conn)
        .await?;
        audit(
            &mut conn,
            tenant,
            Some(&endpoint_id),
            "endpoint.redriven",
            serde_json::json!({ "deliveries": count }),
            now,
        )
        .await?;
        notify(&mut conn).await?;
        Ok(count as u64)
    }

    /// Deletes delivered rows (their attempts go with them) delivered before `before`, and the
    /// messages left with no delivery at all.
    pub async fn cleanup_delivered(&self, before: DateTime<Utc>) -> Result<u64> {
        let mut conn = self.conn().await?;
        let deleted = diesel::sql_query(
            "DELETE FROM deliveries WHERE status = 'delivered' AND delivered_at < $1",
        )
        .bind::<Timestamptz, _>(before)
        .execute(&mut conn)
        .await?;
        diesel::sql_query(
            "DELETE FROM messages m WHERE m.created_at < $1 \
             AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id)",
        )
        .bind::<Timestamptz, _>(before)
        .execute(&mut conn)
        .await?;
        Ok(deleted as u64)
    }
}

async fn record_in(
    conn: &mut AsyncPgConnection,
    outcomes: &[Outcome],
    disable_after: chrono::Duration,
    failing_after_attempts: i32,
    max_attempts: i32,
    now: DateTime<Utc>,
) -> std::result::Result<Recorded, diesel::result::Error> {
    let ids: Vec<DeliveryId> = outcomes.iter().map(|o| o.delivery_id).collect();
    let claims: Vec<Uuid> = outcomes.iter().map(|o| o.claim_id).collect();
    let statuses: Vec<DeliveryStatus> = outcomes.iter().map(|o| o.status).collect();
    let attempts: Vec<i32> = outcomes.iter().map(|o| o.attempt_count).collect();
    let next: Vec<DateTime<Utc>> = outcomes.iter().map(|o| o.next_retry_at).collect();
    let response: Vec<Option<i32>> = outcomes.iter().map(|o| o.response_status).collect();
    let errors: Vec<Option<&str>> = outcomes.iter().map(|o| o.error.as_deref()).collect();
    let attempted: Vec<DateTime<Utc>> = outcomes.iter().map(|o| o.attempted_at).collect();

    let applied: Vec<DeliveryIdRow> = diesel::sql_query(
        "UPDATE deliveries d SET status = r.status, attempt_count = r.attempt_count, \
           next_retry_at = r.next_retry_at, last_response_status = r.response_status, last_error = r.error, \
           claim_id = NULL, lease_expires_at = NULL, \
           delivered_at = CASE WHEN r.status = 'delivered' THEN r.attempted_at ELSE d.delivered_at END \
         FROM unnest($1::text[], $2::uuid[], $3::text[], $4::int[], $5::timestamptz[], $6::int[], $7::text[], $8::timestamptz[]) \
           AS r(id, claim_id, status, attempt_count, next_retry_at, response_status, error, attempted_at) \
         WHERE d.id = r.id AND d.claim_id = r.claim_id RETURNING d.id",
    )
    .bind::<Array<Text>, _>(&ids)
    .bind::<Array<SqlUuid>, _>(&claims)
    .bind::<Array<Text>, _>(&statuses)
    .bind::<Array<Integer>, _>(&attempts)
    .bind::<Array<Timestamptz>, _>(&next)
    .bind::<Array<Nullable<Integer>>, _>(&response)
    .bind::<Array<Nullable<Text>>, _>(&errors)
    .bind::<Array<Timestamptz>, _>(&attempted)
    .load(conn)
    .await?;
    let applied_ids: std::collections::HashSet<DeliveryId> =
        applied.into_iter().map(|r| r.id).collect();
    let applied: Vec<usize> = outcomes
        .iter()
        .enumerate()
        .filter(|(_, o)| applied_ids.contains(&o.delivery_id))
        .map(|(i, _)| i)
        .collect();
    let kept: Vec<&Outcome> = applied.iter().map(|&i| &outcomes[i]).collect();
    if kept.is_empty() {
        return Ok(Recorded::default());
    }

    diesel::sql_query(
        "INSERT INTO attempts (id, delivery_id, message_id, endpoint_id, attempted_at, duration_ms, request_headers, \
           response_status, response_body, error, outcome) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::int[], $7::jsonb[], \
           $8::int[], $9::text[], $10::text[], $11::text[])",
    )
    .bind::<Array<Text>, _>(kept.iter().map(|_| AttemptId::new()).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(kept.iter().map(|o| o.delivery_id).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(kept.iter().map(|o| o.message_id).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(kept.iter().map(|o| o.endpoint_id).collect::<Vec<_>>())
    .bind::<Array<Timestamptz>, _>(kept.iter().map(|o| o.attempted_at).collect::<Vec<_>>())
    .bind::<Array<Integer>, _>(kept.iter().map(|o| o.duration_ms).collect::<Vec<_>>())
    .bind::<Array<Jsonb>, _>(kept.iter().map(|o| o.request_headers.clone()).collect::<Vec<_>>())
    .bind::<Array<Nullable<Integer>>, _>(kept.iter().map(|o| o.response_status).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(kept.iter().map(|o| o.response_body.as_deref()).collect::<Vec<_>>())
    .bind::<Array<Nullable<Text>>, _>(kept.iter().map(|o| o.error.as_deref()).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(kept.iter().map(|o| o.attempt_outcome).collect::<Vec<_>>())
    .execute(conn)
    .await?;

    // Endpoint health: failures start (or continue) a failing run, a success ends it.
    let (succeeded, failed): (Vec<&Outcome>, Vec<&Outcome>) = kept
        .iter()
        .partition(|o| o.status == DeliveryStatus::Delivered);
    let failed_ids: Vec<EndpointId> = failed.iter().map(|o| o.endpoint_id).collect();
    let succeeded_ids: Vec<EndpointId> = succeeded.iter().map(|o| o.endpoint_id).collect();
    if !failed_ids.is_empty() {
        diesel::sql_query(
            "UPDATE endpoints SET failing_since = COALESCE(failing_since, $2) WHERE id = ANY($1)",
        )
        .bind::<Array<Text>, _>(&failed_ids)
        .bind::<Timestamptz, _>(now)
        .execute(conn)
        .await?;
    }
    if !succeeded_ids.is_empty() {
        diesel::sql_query(
            "UPDATE endpoints SET failing_since = NULL, last_success_at = $2 WHERE id = ANY($1)",
        )
        .bind::<Array<Text>, _>(&succeeded_ids)
        .bind::<Timestamptz, _>(now)
        .execute(conn)
        .await?;
    }
    if !succeeded_ids.is_empty() {
        // Usage: one row update per tenant of the batch (an endpoint may appear several times).
        diesel::sql_query(
            "INSERT INTO usage_daily (tenant, day, delivered) \
             SELECT e.tenant, ($2 AT TIME ZONE 'UTC')::date, count(*) \
             FROM unnest($1::text[]) AS d(endpoint_id) JOIN endpoints e ON e.id = d.endpoint_id \
             GROUP BY e.tenant ORDER BY e.tenant \
             ON CONFLICT (tenant, day) DO UPDATE SET delivered = usage_daily.delivered + excluded.delivered",
        )
        .bind::<Array<Text>, _>(&succeeded_ids)
        .bind::<Timestamptz, _>(now)
        .execute(conn)
        .await?;
    }
    for o in &kept {
        if let Some(until) = o.throttle_until {
            diesel::sql_query(
                "UPDATE endpoints SET throttled_until = GREATEST(COALESCE(throttled_until, $2), $2) WHERE id = $1",
            )
            .bind::<Text, _>(&o.endpoint_id)
            .bind::<Timestamptz, _>(until)
            .execute(conn)
            .await?;
        }
    }

    // Disabling, as the rules decide from the endpoints' health: 410 Gone at once, otherwise
    // after failing with no success for too long.
    let health: Vec<rules::EndpointHealth> = if failed_ids.is_empty() {
        Vec::new()
    } else {
        diesel::sql_query(
            "SELECT id, failing_since FROM endpoints WHERE id = ANY($1) AND NOT disabled \
             ORDER BY id FOR UPDATE",
        )
        .bind::<Array<Text>, _>(&failed_ids)
        .load::<HealthRow>(conn)
        .await?
        .into_iter()
        .map(|row| rules::EndpointHealth {
            id: row.id,
            failing_since: row.failing_since,
        })
        .collect()
    };
    let to_disable = rules::endpoints_to_disable(&kept, &health, disable_after, now);
    let mut disabled: Vec<rules::DisabledEndpoint> = Vec::new();
    if !to_disable.is_empty() {
        let (ids, reasons): (Vec<EndpointId>, Vec<&str>) = to_disable
            .iter()
            .map(|(id, reason)| (*id, reason.as_str()))
            .unzip();
        let rows: Vec<DisabledRow> = diesel::sql_query(
            "UPDATE endpoints e SET disabled = TRUE, disabled_reason = r.reason, disabled_at = $3, updated_at = $3 \
             FROM unnest($1::text[], $2::text[]) AS r(id, reason) \
             WHERE e.id = r.id AND NOT e.disabled \
             RETURNING e.id, e.tenant, e.url, e.disabled_reason AS reason",
        )
        .bind::<Array<Text>, _>(&ids)
        .bind::<Array<Text>, _>(&reasons)
        .bind::<Timestamptz, _>(now)
        .load(conn)
        .await?;
        // In the order the rules chose them, so events go out in a stable order.
        for id in &ids {
            if let Some(row) = rows.iter().find(|r| r.id == *id) {
                disabled.push(rules::DisabledEndpoint {
                    id: row.id,
                    tenant: row.tenant.clone(),
                    url: row.url.clone(),
                    reason: row.reason.clone(),
                });
            }
        }
    }
    for endpoint in &disabled {
        audit(
            conn,
            &endpoint.tenant,
            Some(&endpoint.id),
            "endpoint.disabled",
            serde_json::json!({ "reason": endpoint.reason }),
            now,
        )
        .await?;
    }

    // Operational events, published like any other event in the same transaction.
    let events = rules::operational_events(&disabled, &kept, failing_after_attempts, now);
    let messages: Vec<_> = events.iter().map(|event| event.message()).collect();
    publish_in(conn, &messages, max_attempts, now).await?;
    Ok(Recorded {
        applied,
        events,
        disabled_endpoints: disabled.into_iter().map(|d| d.id).collect(),
    })
}
