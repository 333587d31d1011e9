//! Everything delivery-worker keeps in PostgreSQL, in its own schema: endpoints and their
//! encrypted secrets, messages, the delivery queue, attempts and the audit log.
//!
//! Every timestamp comes from the caller's clock. The queue is claimed with
//! `FOR UPDATE SKIP LOCKED` and a lease (claim id + expiry): several workers never hold the same
//! row, and a dead worker's rows become claimable again once its lease expires. A result is only
//! recorded by the claim that holds the row.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use database::{DatabaseError, Pool};
use diesel::{
    QueryableByName,
    sql_types::{
        Array, BigInt, Bool, Bytea, Integer, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid,
    },
};
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl};
use secret_box::Keyring;
use uuid::Uuid;
use webhook_signature::SigningKey;

/// Errors of the store; each maps once to a gRPC status in `grpc.rs`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Database(#[from] DatabaseError),
    #[error("not found")]
    NotFound,
    #[error("a stored secret cannot be decrypted: {0}")]
    Secret(String),
}

impl From<diesel::result::Error> for StoreError {
    fn from(error: diesel::result::Error) -> Self {
        match error {
            diesel::result::Error::NotFound => Self::NotFound,
            other => Self::Database(DatabaseError::Query(other)),
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The signing scheme of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signing {
    Hmac,
    Ed25519,
}

impl Signing {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hmac => "hmac",
            Self::Ed25519 => "ed25519",
        }
    }

    fn parse(text: &str) -> Self {
        if text == "ed25519" {
            Self::Ed25519
        } else {
            Self::Hmac
        }
    }
}

#[derive(Debug, Clone, QueryableByName)]
pub struct EndpointRow {
    #[diesel(sql_type = Text)]
    pub id: String,
    #[diesel(sql_type = Text)]
    pub tenant: String,
    #[diesel(sql_type = Text)]
    pub url: String,
    #[diesel(sql_type = Text)]
    pub description: String,
    #[diesel(sql_type = Nullable<Array<Text>>)]
    pub event_types: Option<Vec<String>>,
    #[diesel(sql_type = Nullable<Array<Text>>)]
    pub channels: Option<Vec<String>>,
    #[diesel(sql_type = Bool)]
    pub disabled: bool,
    #[diesel(sql_type = Nullable<Text>)]
    pub disabled_reason: Option<String>,
    #[diesel(sql_type = Nullable<Integer>)]
    pub rate_limit_per_second: Option<i32>,
    #[diesel(sql_type = Jsonb)]
    pub metadata: serde_json::Value,
    #[diesel(sql_type = Text)]
    pub signing: String,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub updated_at: DateTime<Utc>,
}

impl EndpointRow {
    pub fn signing(&self) -> Signing {
        Signing::parse(&self.signing)
    }
}

const ENDPOINT_COLUMNS: &str = "id, tenant, url, description, event_types, channels, disabled, \
    disabled_reason, rate_limit_per_second, metadata, signing, created_at, updated_at";

/// A new endpoint, already validated.
#[derive(Debug, Clone)]
pub struct NewEndpoint {
    pub tenant: String,
    pub url: String,
    pub description: String,
    pub event_types: Option<Vec<String>>,
    pub channels: Option<Vec<String>>,
    pub rate_limit_per_second: Option<i32>,
    pub metadata: serde_json::Value,
    pub signing: Signing,
}

/// The fields an update changes; `None` leaves one as it is.
#[derive(Debug, Clone, Default)]
pub struct EndpointChanges {
    pub url: Option<String>,
    pub description: Option<String>,
    pub event_types: Option<Option<Vec<String>>>,
    pub channels: Option<Option<Vec<String>>>,
    pub enabled: Option<bool>,
    pub rate_limit_per_second: Option<Option<i32>>,
    pub metadata: Option<serde_json::Value>,
}

/// A message to publish, already validated.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub tenant: String,
    pub event_id: String,
    pub event_type: String,
    pub payload: String,
    pub channels: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub message_id: String,
    pub duplicate: bool,
    pub deliveries: u32,
}

#[derive(Debug, Clone, QueryableByName)]
pub struct MessageRow {
    #[diesel(sql_type = Text)]
    pub id: String,
    #[diesel(sql_type = Text)]
    pub tenant: String,
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
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Text)]
    pub message_id: String,
    #[diesel(sql_type = Text)]
    pub endpoint_id: String,
    #[diesel(sql_type = Text)]
    pub status: String,
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

const DELIVERY_COLUMNS: &str = "d.id, d.message_id, d.endpoint_id, d.status, d.attempt_count, \
    d.max_attempts, d.next_retry_at, d.last_response_status, d.last_error, d.created_at, d.delivered_at";

#[derive(Debug, Clone, QueryableByName)]
pub struct AttemptRow {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = BigInt)]
    pub delivery_id: i64,
    #[diesel(sql_type = Text)]
    pub message_id: String,
    #[diesel(sql_type = Text)]
    pub endpoint_id: String,
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
    pub outcome: String,
}

/// A delivery the caller now holds the lease of, with what it needs to send it.
#[derive(Debug, Clone, QueryableByName)]
pub struct Claimed {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Text)]
    pub message_id: String,
    #[diesel(sql_type = Text)]
    pub endpoint_id: String,
    #[diesel(sql_type = Integer)]
    pub attempt_count: i32,
    #[diesel(sql_type = Integer)]
    pub max_attempts: i32,
    #[diesel(sql_type = Timestamptz)]
    pub enqueued_at: DateTime<Utc>,
    #[diesel(sql_type = Text)]
    pub tenant: String,
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
}

/// What became of one claimed delivery, decided by the worker.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub delivery_id: i64,
    pub claim_id: Uuid,
    pub message_id: String,
    pub endpoint_id: String,
    pub tenant: String,
    pub event_type: String,
    /// `delivered`, `failed` or `dead_letter`.
    pub status: &'static str,
    pub attempt_count: i32,
    pub next_retry_at: DateTime<Utc>,
    pub attempted_at: DateTime<Utc>,
    pub enqueued_at: DateTime<Utc>,
    pub duration_ms: i32,
    pub request_headers: serde_json::Value,
    pub response_status: Option<i32>,
    pub response_body: Option<String>,
    pub error: Option<String>,
    /// `success`, `failure` or `timeout`.
    pub attempt_outcome: &'static str,
    /// Hold all deliveries to the endpoint until then (429/503 `Retry-After`, 502, 504, timeout).
    pub throttle_until: Option<DateTime<Utc>>,
    /// Disable the endpoint for this reason (410 Gone).
    pub disable_reason: Option<String>,
}

/// Counts per status and the age of the queue.
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

/// An operational event the store raises while recording outcomes.
#[derive(Debug, Clone)]
pub struct OperationalEvent {
    pub tenant: String,
    pub event_type: &'static str,
    pub event_id: String,
    pub payload: serde_json::Value,
}

/// What recording a batch of outcomes changed.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    /// Outcomes whose claim still held the row; the others were ignored.
    pub applied: Vec<usize>,
    pub events: Vec<OperationalEvent>,
    pub disabled_endpoints: Vec<String>,
}

/// Prefixed random ids: `ep_…`, `msg_…`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", Uuid::new_v4().simple())
}

/// The store: a pool and the keyring that seals endpoint secrets.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    keyring: std::sync::Arc<Keyring>,
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = Text)]
    id: String,
}

#[derive(QueryableByName)]
struct BigIdRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

#[derive(QueryableByName)]
struct SecretRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    endpoint_id: String,
    #[diesel(sql_type = Bytea)]
    ciphertext: Vec<u8>,
}

#[derive(QueryableByName)]
struct DisabledRow {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    tenant: String,
    #[diesel(sql_type = Text)]
    url: String,
    #[diesel(sql_type = Text)]
    reason: String,
}

/// Page tokens are the last id of the previous page.
fn page(page_size: u32) -> i64 {
    i64::from(page_size.clamp(1, 500))
}

impl Store {
    pub fn new(pool: Pool, keyring: std::sync::Arc<Keyring>) -> Self {
        Self { pool, keyring }
    }

    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    async fn conn(&self) -> Result<database::PooledConnection> {
        Ok(database::get(&self.pool).await?)
    }

    // ---- Endpoints -------------------------------------------------------------------------

    /// Creates an endpoint with its first secret, in one transaction with its audit entry.
    pub async fn create_endpoint(
        &self,
        new: NewEndpoint,
        secret: &SigningKey,
        now: DateTime<Utc>,
    ) -> Result<EndpointRow> {
        let id = new_id("ep");
        let sealed = self.keyring.seal(secret.to_secret_string().as_bytes(), &id);
        let key_id = self.keyring.current_key_id().to_owned();
        let mut conn = self.conn().await?;
        let row = conn
            .transaction::<_, diesel::result::Error, _>(async move |conn| {
                    let row: EndpointRow = diesel::sql_query(format!(
                        "INSERT INTO endpoints (id, tenant, url, description, event_types, channels, \
                         rate_limit_per_second, metadata, signing, created_at, updated_at) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) RETURNING {ENDPOINT_COLUMNS}"
                    ))
                    .bind::<Text, _>(&id)
                    .bind::<Text, _>(&new.tenant)
                    .bind::<Text, _>(&new.url)
                    .bind::<Text, _>(&new.description)
                    .bind::<Nullable<Array<Text>>, _>(&new.event_types)
                    .bind::<Nullable<Array<Text>>, _>(&new.channels)
                    .bind::<Nullable<Integer>, _>(new.rate_limit_per_second)
                    .bind::<Jsonb, _>(&new.metadata)
                    .bind::<Text, _>(new.signing.as_str())
                    .bind::<Timestamptz, _>(now)
                    .get_result(conn)
                    .await?;
                    diesel::sql_query(
                        "INSERT INTO endpoint_secrets (endpoint_id, key_id, ciphertext, created_at) \
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind::<Text, _>(&id)
                    .bind::<Text, _>(&key_id)
                    .bind::<Bytea, _>(&sealed)
                    .bind::<Timestamptz, _>(now)
                    .execute(conn)
                    .await?;
                    audit(conn, &new.tenant, Some(&id), "endpoint.created", serde_json::json!({ "url": new.url }), now).await?;
                    Ok(row)
            })
            .await?;
        Ok(row)
    }

    pub async fn get_endpoint(&self, tenant: &str, id: &str) -> Result<EndpointRow> {
        let mut conn = self.conn().await?;
        Ok(diesel::sql_query(format!(
            "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE tenant = $1 AND id = $2"
        ))
        .bind::<Text, _>(tenant)
        .bind::<Text, _>(id)
        .get_result(&mut conn)
        .await?)
    }

    pub async fn list_endpoints(
        &self,
        tenant: &str,
        after: &str,
        page_size: u32,
    ) -> Result<Vec<EndpointRow>> {
        let mut conn = self.conn().await?;
        Ok(diesel::sql_query(format!(
            "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE tenant = $1 AND id > $2 ORDER BY id LIMIT $3"
        ))
        .bind::<Text, _>(tenant)
        .bind::<Text, _>(after)
        .bind::<BigInt, _>(page(page_size))
        .load(&mut conn)
        .await?)
    }

    pub async fn update_endpoint(
        &self,
        tenant: &str,
        id: &str,
        changes: EndpointChanges,
        now: DateTime<Utc>,
    ) -> Result<EndpointRow> {
        let mut conn = self.conn().await?;
        let (tenant, id) = (tenant.to_owned(), id.to_owned());
        let row = conn
            .transaction::<_, StoreError, _>(async move |conn| {
                    let current: EndpointRow = diesel::sql_query(format!(
                        "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE tenant = $1 AND id = $2 FOR UPDATE"
                    ))
                    .bind::<Text, _>(&tenant)
                    .bind::<Text, _>(&id)
                    .get_result(conn)
                    .await?;
                    let enabled = changes.enabled.unwrap_or(!current.disabled);
                    let re_enabled = enabled && current.disabled;
                    let row: EndpointRow = diesel::sql_query(format!(
                        "UPDATE endpoints SET url = $3, description = $4, event_types = $5, channels = $6, \
                         rate_limit_per_second = $7, metadata = $8, disabled = $9, \
                         disabled_reason = CASE WHEN $9 THEN COALESCE(disabled_reason, 'disabled by an operator') END, \
                         disabled_at = CASE WHEN $9 THEN COALESCE(disabled_at, $10) END, \
                         failing_since = CASE WHEN $11 THEN NULL ELSE failing_since END, \
                         throttled_until = CASE WHEN $11 THEN NULL ELSE throttled_until END, \
                         updated_at = $10 WHERE tenant = $1 AND id = $2 RETURNING {ENDPOINT_COLUMNS}"
                    ))
                    .bind::<Text, _>(&tenant)
                    .bind::<Text, _>(&id)
                    .bind::<Text, _>(changes.url.as_ref().unwrap_or(&current.url))
                    .bind::<Text, _>(changes.description.as_ref().unwrap_or(&current.description))
                    .bind::<Nullable<Array<Text>>, _>(changes.event_types.clone().unwrap_or(current.event_types.clone()))
                    .bind::<Nullable<Array<Text>>, _>(changes.channels.clone().unwrap_or(current.channels.clone()))
                    .bind::<Nullable<Integer>, _>(changes.rate_limit_per_second.unwrap_or(current.rate_limit_per_second))
                    .bind::<Jsonb, _>(changes.metadata.as_ref().unwrap_or(&current.metadata))
                    .bind::<Bool, _>(!enabled)
                    .bind::<Timestamptz, _>(now)
                    .bind::<Bool, _>(re_enabled)
                    .get_result(conn)
                    .await?;
                    let details = serde_json::json!({
                        "url_changed": changes.url.is_some(),
                        "enabled": enabled,
                        "re_enabled": re_enabled,
                    });
                    audit(conn, &tenant, Some(&id), "endpoint.updated", details, now).await?;
                    Ok(row)
            })
            .await?;
        Ok(row)
    }

    pub async fn delete_endpoint(&self, tenant: &str, id: &str, now: DateTime<Utc>) -> Result<()> {
        let mut conn = self.conn().await?;
        let (tenant, id) = (tenant.to_owned(), id.to_owned());
        conn.transaction::<_, StoreError, _>(async move |conn| {
            let deleted = diesel::sql_query("DELETE FROM endpoints WHERE tenant = $1 AND id = $2")
                .bind::<Text, _>(&tenant)
                .bind::<Text, _>(&id)
                .execute(conn)
                .await?;
            if deleted == 0 {
                return Err(StoreError::NotFound);
            }
            audit(
                conn,
                &tenant,
                Some(&id),
                "endpoint.deleted",
                serde_json::json!({}),
                now,
            )
            .await?;
            Ok(())
        })
        .await
    }

    /// The live signing keys of each endpoint, newest first: the current secret, then any old
    /// one still inside its rotation window.
    pub async fn signing_keys(
        &self,
        endpoint_ids: &[String],
        now: DateTime<Utc>,
    ) -> Result<HashMap<String, Vec<SigningKey>>> {
        let mut conn = self.conn().await?;
        let rows: Vec<SecretRow> = diesel::sql_query(
            "SELECT id, endpoint_id, ciphertext FROM endpoint_secrets \
             WHERE endpoint_id = ANY($1) AND (expires_at IS NULL OR expires_at > $2) \
             ORDER BY endpoint_id, created_at DESC, id DESC",
        )
        .bind::<Array<Text>, _>(endpoint_ids)
        .bind::<Timestamptz, _>(now)
        .load(&mut conn)
        .await?;
        let mut keys: HashMap<String, Vec<SigningKey>> = HashMap::new();
        for row in rows {
            let key = self.open_secret(&row)?;
            keys.entry(row.endpoint_id).or_default().push(key);
        }
        Ok(keys)
    }

    fn open_secret(&self, row: &SecretRow) -> Result<SigningKey> {
        self.open_sealed(&row.ciphertext, &row.endpoint_id)
    }

    /// Opens one sealed secret of `endpoint_id` into a signing key.
    pub fn open_sealed(&self, sealed: &[u8], endpoint_id: &str) -> Result<SigningKey> {
        let plain = self
            .keyring
            .open(sealed, endpoint_id)
            .map_err(|e| StoreError::Secret(e.to_string()))?;
        let text = String::from_utf8(plain).map_err(|e| StoreError::Secret(e.to_string()))?;
        SigningKey::parse(&text).map_err(|e| StoreError::Secret(e.to_string()))
    }

    /// The endpoint's current key.
    pub async fn current_key(
        &self,
        tenant: &str,
        id: &str,
        now: DateTime<Utc>,
    ) -> Result<SigningKey> {
        self.get_endpoint(tenant, id).await?;
        self.signing_keys(&[id.to_owned()], now)
            .await?
            .remove(id)
            .and_then(|keys| keys.into_iter().next())
            .ok_or(StoreError::NotFound)
    }

    /// Makes `secret` current; the old live secrets expire after `old_ttl`.
    pub async fn rotate_secret(
        &self,
        tenant: &str,
        id: &str,
        secret: &SigningKey,
        old_ttl: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.get_endpoint(tenant, id).await?;
        let sealed = self.keyring.seal(secret.to_secret_string().as_bytes(), id);
        let key_id = self.keyring.current_key_id().to_owned();
        let mut conn = self.conn().await?;
        let (tenant, id) = (tenant.to_owned(), id.to_owned());
        conn.transaction::<_, StoreError, _>(async move |conn| {
                diesel::sql_query(
                    "UPDATE endpoint_secrets SET expires_at = LEAST(COALESCE(expires_at, $2), $2) \
                     WHERE endpoint_id = $1 AND (expires_at IS NULL OR expires_at > $3)",
                )
                .bind::<Text, _>(&id)
                .bind::<Timestamptz, _>(now + old_ttl)
                .bind::<Timestamptz, _>(now)
                .execute(conn)
                .await?;
                // Secrets that expired long ago serve nothing; keep the table small.
                diesel::sql_query("DELETE FROM endpoint_secrets WHERE endpoint_id = $1 AND expires_at <= $2")
                    .bind::<Text, _>(&id)
                    .bind::<Timestamptz, _>(now)
                    .execute(conn)
                    .await?;
                diesel::sql_query(
                    "INSERT INTO endpoint_secrets (endpoint_id, key_id, ciphertext, created_at) VALUES ($1, $2, $3, $4)",
                )
                .bind::<Text, _>(&id)
                .bind::<Text, _>(&key_id)
                .bind::<Bytea, _>(&sealed)
                .bind::<Timestamptz, _>(now)
                .execute(conn)
                .await?;
                let details = serde_json::json!({ "old_secret_expires_at": now + old_ttl });
                audit(conn, &tenant, Some(&id), "endpoint.secret_rotated", details, now).await?;
                Ok(())
        })
        .await
    }

    /// Re-encrypts every secret sealed with a key other than the current one, a batch at a time;
    /// returns how many were re-encrypted. Safe while workers run: each row is replaced in place.
    pub async fn reseal_secrets(&self) -> Result<u64> {
        let mut done = 0u64;
        let mut after = 0i64;
        loop {
            let mut conn = self.conn().await?;
            let rows: Vec<SecretRow> = diesel::sql_query(
                "SELECT id, endpoint_id, ciphertext FROM endpoint_secrets WHERE id > $1 ORDER BY id LIMIT 500",
            )
            .bind::<BigInt, _>(after)
            .load(&mut conn)
            .await?;
            let Some(last) = rows.last() else { break };
            after = last.id;
            for row in rows {
                if !self
                    .keyring
                    .needs_reseal(&row.ciphertext)
                    .map_err(|e| StoreError::Secret(e.to_string()))?
                {
                    continue;
                }
                let plain = self
                    .keyring
                    .open(&row.ciphertext, &row.endpoint_id)
                    .map_err(|e| StoreError::Secret(e.to_string()))?;
                let sealed = self.keyring.seal(&plain, &row.endpoint_id);
                diesel::sql_query("UPDATE endpoint_secrets SET ciphertext = $2, key_id = $3 WHERE id = $1 AND ciphertext = $4")
                    .bind::<BigInt, _>(row.id)
                    .bind::<Bytea, _>(&sealed)
                    .bind::<Text, _>(self.keyring.current_key_id())
                    .bind::<Bytea, _>(&row.ciphertext)
                    .execute(&mut conn)
                    .await?;
                done += 1;
            }
        }
        Ok(done)
    }

    // ---- Messages and the queue ----------------------------------------------------------

    /// Stores a message and enqueues a delivery for every enabled endpoint subscribed to it, in
    /// one transaction; the same (tenant, event id) again changes nothing.
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
               RETURNING d.id, d.message_id, d.endpoint_id, d.attempt_count, d.max_attempts, d.created_at \
             ) \
             SELECT c.id, c.message_id, c.endpoint_id, c.attempt_count, c.max_attempts, \
                    c.created_at AS enqueued_at, m.tenant, m.event_type, m.payload, e.url, e.rate_limit_per_second, \
                    (SELECT array_agg(s.ciphertext ORDER BY s.created_at DESC, s.id DESC) FROM endpoint_secrets s \
                      WHERE s.endpoint_id = c.endpoint_id AND (s.expires_at IS NULL OR s.expires_at > $1)) AS sealed_secrets \
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

    pub async fn list_messages(
        &self,
        tenant: &str,
        event_type: Option<&str>,
        after: Option<DateTime<Utc>>,
        before: Option<DateTime<Utc>>,
        page_token: &str,
        page_size: u32,
    ) -> Result<Vec<MessageRow>> {
        let mut conn = self.conn().await?;
        Ok(diesel::sql_query(
            "SELECT id, tenant, event_id, event_type, payload, channels, created_at FROM messages \
             WHERE tenant = $1 AND ($2::text IS NULL OR event_type = $2) \
               AND ($3::timestamptz IS NULL OR created_at >= $3) AND ($4::timestamptz IS NULL OR created_at < $4) \
               AND ($5 = '' OR id < $5) \
             ORDER BY id DESC LIMIT $6",
        )
        .bind::<Text, _>(tenant)
        .bind::<Nullable<Text>, _>(event_type)
        .bind::<Nullable<Timestamptz>, _>(after)
        .bind::<Nullable<Timestamptz>, _>(before)
        .bind::<Text, _>(page_token)
        .bind::<BigInt, _>(page(page_size))
        .load(&mut conn)
        .await?)
    }

    pub async fn list_deliveries(
        &self,
        tenant: &str,
        endpoint_id: Option<&str>,
        message_id: Option<&str>,
        status: Option<&str>,
        after_id: i64,
        page_size: u32,
    ) -> Result<Vec<DeliveryRow>> {
        let mut conn = self.conn().await?;
        Ok(diesel::sql_query(format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN endpoints e ON e.id = d.endpoint_id \
             WHERE e.tenant = $1 AND ($2::text IS NULL OR d.endpoint_id = $2) \
               AND ($3::text IS NULL OR d.message_id = $3) AND ($4::text IS NULL OR d.status = $4) \
               AND d.id > $5 ORDER BY d.id LIMIT $6"
        ))
        .bind::<Text, _>(tenant)
        .bind::<Nullable<Text>, _>(endpoint_id)
        .bind::<Nullable<Text>, _>(message_id)
        .bind::<Nullable<Text>, _>(status)
        .bind::<BigInt, _>(after_id)
        .bind::<BigInt, _>(page(page_size))
        .load(&mut conn)
        .await?)
    }

    pub async fn list_attempts(
        &self,
        tenant: &str,
        endpoint_id: Option<&str>,
        message_id: Option<&str>,
        delivery_id: Option<i64>,
        after_id: i64,
        page_size: u32,
    ) -> Result<Vec<AttemptRow>> {
        let mut conn = self.conn().await?;
        Ok(diesel::sql_query(
            "SELECT a.id, a.delivery_id, a.message_id, a.endpoint_id, a.attempted_at, a.duration_ms, \
                    a.request_headers, a.response_status, a.response_body, a.error, a.outcome \
             FROM attempts a JOIN endpoints e ON e.id = a.endpoint_id \
             WHERE e.tenant = $1 AND ($2::text IS NULL OR a.endpoint_id = $2) \
               AND ($3::text IS NULL OR a.message_id = $3) AND ($4::bigint IS NULL OR a.delivery_id = $4) \
               AND a.id > $5 ORDER BY a.id LIMIT $6",
        )
        .bind::<Text, _>(tenant)
        .bind::<Nullable<Text>, _>(endpoint_id)
        .bind::<Nullable<Text>, _>(message_id)
        .bind::<Nullable<BigInt>, _>(delivery_id)
        .bind::<BigInt, _>(after_id)
        .bind::<BigInt, _>(page(page_size))
        .load(&mut conn)
        .await?)
    }

    /// Makes one delivery due now, with a fresh attempt budget if it had run out.
    pub async fn retry_delivery(
        &self,
        tenant: &str,
        delivery_id: i64,
        max_attempts: i32,
        now: DateTime<Utc>,
    ) -> Result<DeliveryRow> {
        let mut conn = self.conn().await?;
        let row: DeliveryRow = diesel::sql_query(format!(
            "UPDATE deliveries d SET status = 'pending', next_retry_at = $3, \
               max_attempts = GREATEST(d.max_attempts, d.attempt_count + $4), claim_id = NULL, lease_expires_at = NULL \
             FROM endpoints e WHERE e.id = d.endpoint_id AND e.tenant = $1 AND d.id = $2 \
             RETURNING {DELIVERY_COLUMNS}"
        ))
        .bind::<Text, _>(tenant)
        .bind::<BigInt, _>(delivery_id)
        .bind::<Timestamptz, _>(now)
        .bind::<Integer, _>(max_attempts)
        .get_result(&mut conn)
        .await?;
        notify(&mut conn).await?;
        Ok(row)
    }

    /// Puts an endpoint's dead letters (created within the range, when given) back in the queue
    /// with a fresh attempt budget.
    pub async fn redrive(
        &self,
        tenant: &str,
        endpoint_id: &str,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        max_attempts: i32,
        now: DateTime<Utc>,
    ) -> Result<u64> {
        self.get_endpoint(tenant, endpoint_id).await?;
        let mut conn = self.conn().await?;
        let count = diesel::sql_query(
            "UPDATE deliveries SET status = 'pending', next_retry_at = $4, \
               max_attempts = attempt_count + $5, claim_id = NULL, lease_expires_at = NULL \
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
            Some(endpoint_id),
            "endpoint.redriven",
            serde_json::json!({ "deliveries": count }),
            now,
        )
        .await?;
        notify(&mut conn).await?;
        Ok(count as u64)
    }

    pub async fn queue_stats(&self, tenant: Option<&str>) -> Result<QueueStats> {
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

    /// Every delivery's status, counted, for the queue-size gauge.
    pub async fn status_counts(&self) -> Result<BTreeMap<String, i64>> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            status: String,
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

async fn audit(
    conn: &mut AsyncPgConnection,
    tenant: &str,
    endpoint_id: Option<&str>,
    action: &str,
    details: serde_json::Value,
    now: DateTime<Utc>,
) -> std::result::Result<(), diesel::result::Error> {
    diesel::sql_query(
        "INSERT INTO audit_log (tenant, endpoint_id, action, details, at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind::<Text, _>(tenant)
    .bind::<Nullable<Text>, _>(endpoint_id)
    .bind::<Text, _>(action)
    .bind::<Jsonb, _>(details)
    .bind::<Timestamptz, _>(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Wakes the workers listening on the queue channel (delivered on commit).
async fn notify(conn: &mut AsyncPgConnection) -> std::result::Result<(), diesel::result::Error> {
    diesel::sql_query("SELECT pg_notify('delivery_queue', '')")
        .execute(conn)
        .await?;
    Ok(())
}

/// The channel workers `LISTEN` on.
pub const QUEUE_CHANNEL: &str = "delivery_queue";

async fn publish_in(
    conn: &mut AsyncPgConnection,
    message: &NewMessage,
    max_attempts: i32,
    now: DateTime<Utc>,
) -> std::result::Result<Published, diesel::result::Error> {
    let id = new_id("msg");
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
        "INSERT INTO deliveries (message_id, endpoint_id, max_attempts, next_retry_at, created_at) \
         SELECT $1, e.id, $2, $3, $3 FROM endpoints e \
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

/// Event types the worker itself publishes; their own failures raise no further events.
fn is_operational(event_type: &str) -> bool {
    event_type.starts_with("endpoint.") || event_type.starts_with("message.attempt.")
}

async fn record_in(
    conn: &mut AsyncPgConnection,
    outcomes: &[Outcome],
    disable_after: chrono::Duration,
    failing_after_attempts: i32,
    max_attempts: i32,
    now: DateTime<Utc>,
) -> std::result::Result<Recorded, diesel::result::Error> {
    let ids: Vec<i64> = outcomes.iter().map(|o| o.delivery_id).collect();
    let claims: Vec<Uuid> = outcomes.iter().map(|o| o.claim_id).collect();
    let statuses: Vec<&str> = outcomes.iter().map(|o| o.status).collect();
    let attempts: Vec<i32> = outcomes.iter().map(|o| o.attempt_count).collect();
    let next: Vec<DateTime<Utc>> = outcomes.iter().map(|o| o.next_retry_at).collect();
    let response: Vec<Option<i32>> = outcomes.iter().map(|o| o.response_status).collect();
    let errors: Vec<Option<&str>> = outcomes.iter().map(|o| o.error.as_deref()).collect();
    let attempted: Vec<DateTime<Utc>> = outcomes.iter().map(|o| o.attempted_at).collect();

    let applied: Vec<BigIdRow> = diesel::sql_query(
        "UPDATE deliveries d SET status = r.status, attempt_count = r.attempt_count, \
           next_retry_at = r.next_retry_at, last_response_status = r.response_status, last_error = r.error, \
           claim_id = NULL, lease_expires_at = NULL, \
           delivered_at = CASE WHEN r.status = 'delivered' THEN r.attempted_at ELSE d.delivered_at END \
         FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::int[], $5::timestamptz[], $6::int[], $7::text[], $8::timestamptz[]) \
           AS r(id, claim_id, status, attempt_count, next_retry_at, response_status, error, attempted_at) \
         WHERE d.id = r.id AND d.claim_id = r.claim_id RETURNING d.id",
    )
    .bind::<Array<BigInt>, _>(&ids)
    .bind::<Array<SqlUuid>, _>(&claims)
    .bind::<Array<Text>, _>(&statuses)
    .bind::<Array<Integer>, _>(&attempts)
    .bind::<Array<Timestamptz>, _>(&next)
    .bind::<Array<Nullable<Integer>>, _>(&response)
    .bind::<Array<Nullable<Text>>, _>(&errors)
    .bind::<Array<Timestamptz>, _>(&attempted)
    .load(conn)
    .await?;
    let applied_ids: std::collections::HashSet<i64> = applied.into_iter().map(|r| r.id).collect();
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
        "INSERT INTO attempts (delivery_id, message_id, endpoint_id, attempted_at, duration_ms, request_headers, \
           response_status, response_body, error, outcome) \
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::timestamptz[], $5::int[], $6::jsonb[], \
           $7::int[], $8::text[], $9::text[], $10::text[])",
    )
    .bind::<Array<BigInt>, _>(kept.iter().map(|o| o.delivery_id).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(kept.iter().map(|o| o.message_id.as_str()).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(kept.iter().map(|o| o.endpoint_id.as_str()).collect::<Vec<_>>())
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
    let (succeeded, failed): (Vec<&Outcome>, Vec<&Outcome>) =
        kept.iter().partition(|o| o.status == "delivered");
    let failed_ids: Vec<&str> = failed.iter().map(|o| o.endpoint_id.as_str()).collect();
    let succeeded_ids: Vec<&str> = succeeded.iter().map(|o| o.endpoint_id.as_str()).collect();
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

    // Disabling: 410 Gone at once; otherwise after failing with no success for too long.
    let mut disabled: Vec<DisabledRow> = Vec::new();
    for o in kept.iter().filter(|o| o.disable_reason.is_some()) {
        let rows: Vec<DisabledRow> = diesel::sql_query(
            "UPDATE endpoints SET disabled = TRUE, disabled_reason = $2, disabled_at = $3, updated_at = $3 \
             WHERE id = $1 AND NOT disabled RETURNING id, tenant, url, disabled_reason AS reason",
        )
        .bind::<Text, _>(&o.endpoint_id)
        .bind::<Text, _>(o.disable_reason.as_deref().unwrap_or_default())
        .bind::<Timestamptz, _>(now)
        .load(conn)
        .await?;
        disabled.extend(rows);
    }
    if !failed_ids.is_empty() {
        let rows: Vec<DisabledRow> = diesel::sql_query(
            "UPDATE endpoints SET disabled = TRUE, disabled_at = $2, updated_at = $2, \
               disabled_reason = 'failing with no success since ' || to_char(failing_since AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
             WHERE id = ANY($1) AND NOT disabled AND failing_since <= $3 \
             RETURNING id, tenant, url, disabled_reason AS reason",
        )
        .bind::<Array<Text>, _>(&failed_ids)
        .bind::<Timestamptz, _>(now)
        .bind::<Timestamptz, _>(now - disable_after)
        .load(conn)
        .await?;
        disabled.extend(rows);
    }

    // Operational events, published like any other event in the same transaction.
    let mut events = Vec::new();
    for row in &disabled {
        audit(
            conn,
            &row.tenant,
            Some(&row.id),
            "endpoint.disabled",
            serde_json::json!({ "reason": row.reason }),
            now,
        )
        .await?;
        events.push(OperationalEvent {
            tenant: row.tenant.clone(),
            event_type: "endpoint.disabled",
            event_id: format!("endpoint.disabled:{}:{}", row.id, now.timestamp_millis()),
            payload: serde_json::json!({
                "type": "endpoint.disabled",
                "data": { "endpointId": row.id, "url": row.url, "reason": row.reason, "disabledAt": now },
            }),
        });
    }
    for o in kept.iter().filter(|o| !is_operational(&o.event_type)) {
        let event_type = match o.status {
            "dead_letter" => "message.attempt.exhausted",
            "failed" if o.attempt_count == failing_after_attempts => "message.attempt.failing",
            _ => continue,
        };
        events.push(OperationalEvent {
            tenant: o.tenant.clone(),
            event_type,
            event_id: format!("{event_type}:{}:{}", o.delivery_id, o.attempt_count),
            payload: serde_json::json!({
                "type": event_type,
                "data": {
                    "messageId": o.message_id,
                    "endpointId": o.endpoint_id,
                    "eventType": o.event_type,
                    "attempts": o.attempt_count,
                    "lastResponseStatus": o.response_status,
                    "lastError": o.error,
                },
            }),
        });
    }
    for event in &events {
        let message = NewMessage {
            tenant: event.tenant.clone(),
            event_id: event.event_id.clone(),
            event_type: event.event_type.to_owned(),
            payload: event.payload.to_string(),
            channels: Vec::new(),
        };
        publish_in(conn, &message, max_attempts, now).await?;
    }
    Ok(Recorded {
        applied,
        events,
        disabled_endpoints: disabled.into_iter().map(|r| r.id).collect(),
    })
}
