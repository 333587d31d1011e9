//! Generic sources: a name, the tenant that registered it, and its `whsec_` secrets, sealed with
//! `secret-box` (bound to the row's id). The SQL, and the sealing around it.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use database::{DatabaseError, Pool};
use diesel::sql_types::{Bytea, Nullable, Text, Timestamptz};
use diesel_async::RunQueryDsl as _;
use ids::SourceId;
use secret_box::Keyring;
use webhook_signature::{SigningKey, VerifyingKey};

/// Names the built-in receivers use.
pub const RESERVED: [&str; 2] = ["github", "replicate"];

/// Whether `name` can name a source.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b))
}

/// A source as listed.
#[derive(Debug, Clone, diesel::QueryableByName)]
pub struct SourceRow {
    #[diesel(sql_type = Text)]
    pub id: SourceId,
    #[diesel(sql_type = Text)]
    pub name: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub tenant: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    pub created_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub rotated_at: Option<DateTime<Utc>>,
}

#[derive(diesel::QueryableByName)]
struct SecretsRow {
    #[diesel(sql_type = Text)]
    id: SourceId,
    #[diesel(sql_type = Nullable<Text>)]
    tenant: Option<String>,
    #[diesel(sql_type = Bytea)]
    secret: Vec<u8>,
    #[diesel(sql_type = Nullable<Bytea>)]
    previous_secret: Option<Vec<u8>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    previous_expires_at: Option<DateTime<Utc>>,
}

/// What can go wrong with sources.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Database(#[from] DatabaseError),
    #[error("a source named {0} exists already")]
    Exists(String),
    #[error("a stored source secret cannot be opened: {0}")]
    Sealed(#[from] secret_box::SecretBoxError),
}

fn query(error: diesel::result::Error) -> SourceError {
    SourceError::Database(DatabaseError::Query(error))
}

/// The sources, sealed with a keyring.
#[derive(Clone)]
pub struct Sources {
    pub pool: Pool,
    pub keyring: Arc<Keyring>,
}

/// A source's secrets that verify now, and its tenant.
pub struct Verifying {
    pub tenant: Option<String>,
    pub keys: Vec<VerifyingKey>,
}

impl Sources {
    /// Registers `name` for `tenant` with a new secret; returns the row and the secret.
    pub async fn create(
        &self,
        name: &str,
        tenant: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(SourceRow, String), SourceError> {
        let id = SourceId::new();
        let secret = SigningKey::generate_hmac();
        let sealed = self.keyring.seal(secret.as_bytes(), &id.to_string());
        let mut conn = database::get(&self.pool).await?;
        let inserted = diesel::sql_query(
            "INSERT INTO sources (id, name, tenant, secret, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind::<Text, _>(id)
        .bind::<Text, _>(name)
        .bind::<Nullable<Text>, _>(tenant)
        .bind::<Bytea, _>(&sealed)
        .bind::<Timestamptz, _>(now)
        .execute(&mut conn)
        .await
        .map_err(query)?;
        if inserted == 0 {
            return Err(SourceError::Exists(name.to_owned()));
        }
        let row = SourceRow {
            id,
            name: name.to_owned(),
            tenant: tenant.map(str::to_owned),
            created_at: now,
            rotated_at: None,
        };
        Ok((row, secret))
    }

    /// The sources of `tenant` (every source when `None`), by name.
    pub async fn list(&self, tenant: Option<&str>) -> Result<Vec<SourceRow>, SourceError> {
        let mut conn = database::get(&self.pool).await?;
        diesel::sql_query(
            "SELECT id, name, tenant, created_at, rotated_at FROM sources \
             WHERE ($1::text IS NULL OR tenant = $1) ORDER BY name",
        )
        .bind::<Nullable<Text>, _>(tenant)
        .load(&mut conn)
        .await
        .map_err(query)
    }

    /// Makes a new secret current, keeping the old one until `now + keep_old`; `None` when
    /// there is no such source (of `tenant`, when given).
    pub async fn rotate(
        &self,
        name: &str,
        tenant: Option<&str>,
        keep_old: chrono::Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<(SourceRow, String)>, SourceError> {
        let Some(row) = self
            .list(tenant)
            .await?
            .into_iter()
            .find(|r| r.name == name)
        else {
            return Ok(None);
        };
        let secret = SigningKey::generate_hmac();
        let sealed = self.keyring.seal(secret.as_bytes(), &row.id.to_string());
        let mut conn = database::get(&self.pool).await?;
        diesel::sql_query(
            "UPDATE sources SET previous_secret = secret, previous_expires_at = $2, secret = $3, \
               rotated_at = $4 WHERE id = $1",
        )
        .bind::<Text, _>(row.id)
        .bind::<Timestamptz, _>(now + keep_old)
        .bind::<Bytea, _>(&sealed)
        .bind::<Timestamptz, _>(now)
        .execute(&mut conn)
        .await
        .map_err(query)?;
        Ok(Some((
            SourceRow {
                rotated_at: Some(now),
                ..row
            },
            secret,
        )))
    }

    /// Deletes a source (of `tenant`, when given); false when there is none. Its stored events
    /// stay until the retention takes them.
    pub async fn delete(&self, name: &str, tenant: Option<&str>) -> Result<bool, SourceError> {
        let mut conn = database::get(&self.pool).await?;
        let deleted = diesel::sql_query(
            "DELETE FROM sources WHERE name = $1 AND ($2::text IS NULL OR tenant = $2)",
        )
        .bind::<Text, _>(name)
        .bind::<Nullable<Text>, _>(tenant)
        .execute(&mut conn)
        .await
        .map_err(query)?;
        Ok(deleted == 1)
    }

    /// The keys a webhook to `name` verifies with now; `None` when there is no such source.
    pub async fn verifying(
        &self,
        name: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Verifying>, SourceError> {
        let mut conn = database::get(&self.pool).await?;
        let row: Option<SecretsRow> = diesel::sql_query(
            "SELECT id, tenant, secret, previous_secret, previous_expires_at FROM sources WHERE name = $1",
        )
        .bind::<Text, _>(name)
        .get_result(&mut conn)
        .await
        .map(Some)
        .or_else(|e| match e {
            diesel::result::Error::NotFound => Ok(None),
            other => Err(other),
        })
        .map_err(query)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let context = row.id.to_string();
        let mut sealed = vec![row.secret];
        if let (Some(previous), Some(until)) = (row.previous_secret, row.previous_expires_at)
            && until > now
        {
            sealed.push(previous);
        }
        let mut keys = Vec::new();
        for value in sealed {
            let text = String::from_utf8(self.keyring.open(&value, &context)?).unwrap_or_default();
            if let Ok(key) = VerifyingKey::parse(&text) {
                keys.push(key);
            }
        }
        Ok(Some(Verifying {
            tenant: row.tenant,
            keys,
        }))
    }
}
