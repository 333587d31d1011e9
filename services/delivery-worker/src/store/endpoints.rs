//! Endpoints and their secrets, sealed with the keyring and bound to the endpoint's id.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::{
    OptionalExtension as _, QueryableByName,
    sql_types::{Array, BigInt, Bool, Bytea, Integer, Jsonb, Nullable, Text, Timestamptz},
};
use diesel_async::{AsyncConnection as _, RunQueryDsl};
use webhook_signature::SigningKey;

use ids::{EndpointId, Tenant};

use super::{Result, Store, StoreError, audit};
use crate::{model::Signing, rules};

#[derive(Debug, Clone, QueryableByName)]
pub struct EndpointRow {
    #[diesel(sql_type = Text)]
    pub id: EndpointId,
    #[diesel(sql_type = Text)]
    pub tenant: Tenant,
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
    pub signing: Signing,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    pub updated_at: DateTime<Utc>,
}

pub(super) const ENDPOINT_COLUMNS: &str = "id, tenant, url, description, event_types, channels, disabled, \
    disabled_reason, rate_limit_per_second, metadata, signing, created_at, updated_at";

/// A new endpoint, already validated.
#[derive(Debug, Clone)]
pub struct NewEndpoint {
    pub tenant: Tenant,
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

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    count: i64,
}

#[derive(QueryableByName)]
struct SecretRow {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    endpoint_id: EndpointId,
    #[diesel(sql_type = Bytea)]
    ciphertext: Vec<u8>,
}

impl Store {
    /// Creates an endpoint with its first secret, in one transaction with its audit entry,
    /// unless the tenant already has `max_per_tenant` endpoints.
    pub async fn create_endpoint(
        &self,
        new: NewEndpoint,
        secret: &SigningKey,
        max_per_tenant: i64,
        now: DateTime<Utc>,
    ) -> Result<EndpointRow> {
        let id = EndpointId::new();
        let sealed = self
            .keyring
            .seal(secret.to_secret_string().as_bytes(), &id.to_string());
        let key_id = self.keyring.current_key_id().to_owned();
        let mut conn = self.conn().await?;
        let row = conn
            .transaction::<_, StoreError, _>(async move |conn| {
                    // Creations for one tenant take turns, so two at once cannot both pass the
                    // count.
                    let count: Count = diesel::sql_query(
                        "SELECT pg_advisory_xact_lock(hashtextextended('delivery.endpoints:' || $1, 0)), \
                                (SELECT count(*) FROM endpoints WHERE tenant = $1) AS count",
                    )
                    .bind::<Text, _>(&new.tenant)
                    .get_result(conn)
                    .await?;
                    if count.count >= max_per_tenant {
                        return Err(StoreError::Limit {
                            what: "endpoints",
                            max: max_per_tenant,
                        });
                    }
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
                    .bind::<Text, _>(new.signing)
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

    pub async fn get_endpoint(&self, tenant: &Tenant, id: EndpointId) -> Result<EndpointRow> {
        let mut conn = self.conn().await?;
        diesel::sql_query(format!(
            "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE tenant = $1 AND id = $2"
        ))
        .bind::<Text, _>(tenant)
        .bind::<Text, _>(id)
        .get_result(&mut conn)
        .await
        .optional()?
        .ok_or(StoreError::NotFound("endpoint"))
    }

    pub async fn update_endpoint(
        &self,
        tenant: &Tenant,
        id: EndpointId,
        changes: EndpointChanges,
        now: DateTime<Utc>,
    ) -> Result<EndpointRow> {
        let mut conn = self.conn().await?;
        let tenant = tenant.clone();
        let row = conn
            .transaction::<_, StoreError, _>(async move |conn| {
                    let current: EndpointRow = diesel::sql_query(format!(
                        "SELECT {ENDPOINT_COLUMNS} FROM endpoints WHERE tenant = $1 AND id = $2 FOR UPDATE"
                    ))
                    .bind::<Text, _>(&tenant)
                    .bind::<Text, _>(&id)
                    .get_result(conn)
                    .await
                    .optional()?
                    .ok_or(StoreError::NotFound("endpoint"))?;
                    let enabled = changes.enabled.unwrap_or(!current.disabled);
                    let re_enabled = enabled && current.disabled;
                    let row: EndpointRow = diesel::sql_query(format!(
                        "UPDATE endpoints SET url = $3, description = $4, event_types = $5, channels = $6, \
                         rate_limit_per_second = $7, metadata = $8, disabled = $9, \
                         disabled_reason = CASE WHEN $9 THEN COALESCE(disabled_reason, $12) END, \
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
                    .bind::<Text, _>(rules::OPERATOR_REASON)
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

    pub async fn delete_endpoint(
        &self,
        tenant: &Tenant,
        id: EndpointId,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut conn = self.conn().await?;
        let tenant = tenant.clone();
        conn.transaction::<_, StoreError, _>(async move |conn| {
            let deleted = diesel::sql_query("DELETE FROM endpoints WHERE tenant = $1 AND id = $2")
                .bind::<Text, _>(&tenant)
                .bind::<Text, _>(&id)
                .execute(conn)
                .await?;
            if deleted == 0 {
                return Err(StoreError::NotFound("endpoint"));
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

    /// Which of `ids` still exist, with their tenants, whatever the tenant (for the metrics).
    pub async fn existing_endpoints(
        &self,
        ids: &[EndpointId],
    ) -> Result<HashMap<EndpointId, Tenant>> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            id: EndpointId,
            #[diesel(sql_type = Text)]
            tenant: Tenant,
        }
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let mut conn = self.conn().await?;
        let rows: Vec<Row> =
            diesel::sql_query("SELECT id, tenant FROM endpoints WHERE id = ANY($1)")
                .bind::<Array<Text>, _>(ids)
                .load(&mut conn)
                .await?;
        Ok(rows.into_iter().map(|r| (r.id, r.tenant)).collect())
    }

    /// The live signing keys of each endpoint, newest first: the current secret, then any old
    /// one still inside its rotation window.
    pub async fn signing_keys(
        &self,
        endpoint_ids: &[EndpointId],
        now: DateTime<Utc>,
    ) -> Result<HashMap<EndpointId, Vec<SigningKey>>> {
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
        let mut keys: HashMap<EndpointId, Vec<SigningKey>> = HashMap::new();
        for row in rows {
            let key = self.open_secret(&row)?;
            keys.entry(row.endpoint_id).or_default().push(key);
        }
        Ok(keys)
    }

    fn open_secret(&self, row: &SecretRow) -> Result<SigningKey> {
        self.open_sealed(&row.ciphertext, row.endpoint_id)
    }

    /// Opens one sealed secret of `endpoint_id` into a signing key.
    pub fn open_sealed(&self, sealed: &[u8], endpoint_id: EndpointId) -> Result<SigningKey> {
        let plain = self
            .keyring
            .open(sealed, &endpoint_id.to_string())
            .map_err(|e| StoreError::Secret(e.to_string()))?;
        let text = String::from_utf8(plain).map_err(|e| StoreError::Secret(e.to_string()))?;
        SigningKey::parse(&text).map_err(|e| StoreError::Secret(e.to_string()))
    }

    /// The endpoint's current key.
    pub async fn current_key(
        &self,
        tenant: &Tenant,
        id: EndpointId,
        now: DateTime<Utc>,
    ) -> Result<SigningKey> {
        self.get_endpoint(tenant, id).await?;
        self.signing_keys(&[id], now)
            .await?
            .remove(&id)
            .and_then(|keys| keys.into_iter().next())
            .ok_or(StoreError::NotFound("live signing secret"))
    }

    /// Makes `secret` current; the old live secrets expire after `old_ttl`.
    pub async fn rotate_secret(
        &self,
        tenant: &Tenant,
        id: EndpointId,
        secret: &SigningKey,
        old_ttl: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.get_endpoint(tenant, id).await?;
        let sealed = self
            .keyring
            .seal(secret.to_secret_string().as_bytes(), &id.to_string());
        let key_id = self.keyring.current_key_id().to_owned();
        let mut conn = self.conn().await?;
        let tenant = tenant.clone();
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
                    .open(&row.ciphertext, &row.endpoint_id.to_string())
                    .map_err(|e| StoreError::Secret(e.to_string()))?;
                let sealed = self.keyring.seal(&plain, &row.endpoint_id.to_string());
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
}
