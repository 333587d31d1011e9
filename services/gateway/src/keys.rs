//! API keys: how they look, how they are hashed, and the SQL that keeps them.
//!
//! A key is a prefix (`cw_live_`, `cw_test_`, as the old key generator made them) and 32 random
//! bytes in URL-safe base64. Only HMAC-SHA256(pepper, key) is stored: a stolen table gives no key,
//! and without the pepper (`API_KEY_PEPPER`, outside the database) not even a way to test
//! guesses. The key itself is shown once, when it is made.

use std::fmt::Write as _;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use database::{DatabaseError, Pool};
use diesel::{
    QueryableByName,
    sql_types::{Nullable, Text, Timestamptz},
};
use diesel_async::RunQueryDsl as _;
use ids::{KeyId, Tenant};
use internal_rpc::{Principal, Scope, Scopes};
use ring::rand::SecureRandom as _;
use settings::{ExposeSecret as _, SecretString};

/// What a new key starts with unless told otherwise.
pub const DEFAULT_PREFIX: &str = "cw_live_";
/// The random part: 32 bytes.
const SECRET_BYTES: usize = 32;
/// The longest text taken as a key; anything longer is refused without hashing it.
const MAX_KEY_CHARS: usize = 256;
/// A key's name: 1 to 100 characters.
const MAX_NAME_CHARS: usize = 100;
/// Key plans: the limits and quotas a key gets.
pub const PLANS: &[&str] = &["free", "standard", "enterprise"];

/// Where a plan stands among [`PLANS`] (an unknown one ranks highest, so it is never below).
pub fn plan_rank(plan: &str) -> usize {
    PLANS.iter().position(|p| *p == plan).unwrap_or(PLANS.len())
}

/// The server's secret that keys are hashed with.
#[derive(Clone)]
pub struct Pepper(ring::hmac::Key);

impl Pepper {
    pub fn new(secret: &SecretString) -> Self {
        Self(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            secret.expose_secret().as_bytes(),
        ))
    }

    /// The stored form of `key`.
    pub fn hash(&self, key: &str) -> String {
        hex(ring::hmac::sign(&self.0, key.as_bytes()).as_ref())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Whether a prefix is one a key may start with: 1 to 16 lowercase letters, digits and `_`,
/// ending with `_` (`cw_live_`).
pub fn valid_prefix(prefix: &str) -> bool {
    (2..=16).contains(&prefix.len())
        && prefix.ends_with('_')
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Makes a new key.
pub fn generate(prefix: &str) -> SecretString {
    let mut bytes = [0_u8; SECRET_BYTES];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random source works");
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    SecretString::from(format!("{prefix}{secret}"))
}

/// Whether text could be a key at all (checked before hashing, so huge headers cost nothing).
pub fn plausible(text: &str) -> bool {
    (16..=MAX_KEY_CHARS).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_graphic())
}

/// Why a key cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unusable {
    Revoked,
    Expired,
}

/// A key as stored (never the key itself).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyRecord {
    pub id: KeyId,
    pub tenant: Tenant,
    pub name: String,
    pub prefix: String,
    /// The first characters of the key's random part, for people to tell keys apart.
    pub hint: String,
    pub hash: String,
    pub scopes: Scopes,
    pub plan: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl KeyRecord {
    /// Who calls with this key, as the backends are told.
    pub fn principal(&self) -> Principal {
        Principal {
            tenant: self.tenant.clone(),
            key_id: Some(self.id),
            scopes: self.scopes,
        }
    }

    pub fn usable(&self, now: DateTime<Utc>) -> Result<(), Unusable> {
        if self.revoked_at.is_some_and(|at| at <= now) {
            return Err(Unusable::Revoked);
        }
        if self.expires_at.is_some_and(|at| at <= now) {
            return Err(Unusable::Expired);
        }
        Ok(())
    }

    /// How people see the key: `cw_live_Ab12…`.
    pub fn display(&self) -> String {
        format!("{}{}…", self.prefix, self.hint)
    }

    pub fn scope_names(&self) -> Vec<&'static str> {
        self.scopes.iter().map(Scope::as_str).collect()
    }
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    id: KeyId,
    #[diesel(sql_type = Text)]
    tenant: Tenant,
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Text)]
    prefix: String,
    #[diesel(sql_type = Text)]
    hint: String,
    #[diesel(sql_type = Text)]
    hash: String,
    #[diesel(sql_type = Text)]
    scopes: String,
    #[diesel(sql_type = Text)]
    plan: String,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    expires_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    revoked_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
}

impl From<Row> for KeyRecord {
    fn from(row: Row) -> Self {
        Self {
            id: row.id,
            tenant: row.tenant,
            name: row.name,
            prefix: row.prefix,
            hint: row.hint,
            hash: row.hash,
            // Written by this module only; an unknown name in the column grants nothing.
            scopes: Scopes::of(row.scopes.split_whitespace().filter_map(Scope::parse)),
            plan: row.plan,
            expires_at: row.expires_at,
            revoked_at: row.revoked_at,
            created_at: row.created_at,
        }
    }
}

const COLUMNS: &str =
    "id, tenant, name, prefix, hint, hash, scopes, plan, expires_at, revoked_at, created_at";

/// A key to make, already checked (see [`NewKey::check`]).
#[derive(Debug, Clone)]
pub struct NewKey {
    pub tenant: Tenant,
    pub name: String,
    pub prefix: String,
    pub scopes: Scopes,
    pub plan: String,
    pub expires_at: Option<DateTime<Utc>>,
}

impl NewKey {
    /// Checks what a person asked for; the message names the field and the rule.
    pub fn check(&self, now: DateTime<Utc>) -> Result<(), String> {
        let name = self.name.trim();
        if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
            return Err(format!("name must be 1 to {MAX_NAME_CHARS} characters"));
        }
        if name.chars().any(char::is_control) {
            return Err("name must not contain control characters".to_owned());
        }
        if !valid_prefix(&self.prefix) {
            return Err(
                "prefix must be 2 to 16 lowercase letters, digits and '_', ending with '_' (such as cw_live_)"
                    .to_owned(),
            );
        }
        if self.scopes.is_empty() {
            return Err(
                "scopes must name at least one of tts, audio, webhooks, usage, admin".to_owned(),
            );
        }
        if !PLANS.contains(&self.plan.as_str()) {
            return Err(format!("plan must be one of {}", PLANS.join(", ")));
        }
        if self.expires_at.is_some_and(|at| at <= now) {
            return Err("expires_at must be in the future".to_owned());
        }
        Ok(())
    }
}

/// A key just made: the only time the key itself exists outside its owner's hands.
#[derive(Debug)]
pub struct CreatedKey {
    pub record: KeyRecord,
    pub key: SecretString,
}

/// Makes the key and its record (not yet stored).
pub fn make(pepper: &Pepper, new: &NewKey, now: DateTime<Utc>) -> CreatedKey {
    let key = generate(&new.prefix);
    let hint: String = key.expose_secret()[new.prefix.len()..]
        .chars()
        .take(4)
        .collect();
    CreatedKey {
        record: KeyRecord {
            id: KeyId::new(),
            tenant: new.tenant.clone(),
            name: new.name.trim().to_owned(),
            prefix: new.prefix.clone(),
            hint,
            hash: pepper.hash(key.expose_secret()),
            scopes: new.scopes,
            plan: new.plan.clone(),
            expires_at: new.expires_at,
            revoked_at: None,
            created_at: now,
        },
        key,
    }
}

fn scopes_text(scopes: Scopes) -> String {
    scopes
        .iter()
        .map(Scope::as_str)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Records a tenant if it is new; true when it was.
pub async fn create_tenant(
    pool: &Pool,
    tenant: &Tenant,
    now: DateTime<Utc>,
) -> Result<bool, DatabaseError> {
    let mut conn = database::get(pool).await?;
    let created = diesel::sql_query(
        "INSERT INTO tenants (id, name, created_at) VALUES ($1, $1, $2) ON CONFLICT (id) DO NOTHING",
    )
    .bind::<Text, _>(tenant)
    .bind::<Timestamptz, _>(now)
    .execute(&mut conn)
    .await
    .map_err(DatabaseError::Query)?;
    Ok(created == 1)
}

/// Why a key could not be stored.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the tenant {0} does not exist; create it first")]
    UnknownTenant(Tenant),
    #[error(transparent)]
    Database(#[from] DatabaseError),
}

/// Stores a made key.
pub async fn insert(pool: &Pool, created: &KeyRecord) -> Result<(), StoreError> {
    let mut conn = database::get(pool).await?;
    let inserted = diesel::sql_query(
        "INSERT INTO api_keys (id, tenant, name, prefix, hint, hash, scopes, plan, expires_at, created_at) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 WHERE EXISTS (SELECT 1 FROM tenants WHERE id = $2)",
    )
    .bind::<Text, _>(created.id)
    .bind::<Text, _>(&created.tenant)
    .bind::<Text, _>(&created.name)
    .bind::<Text, _>(&created.prefix)
    .bind::<Text, _>(&created.hint)
    .bind::<Text, _>(&created.hash)
    .bind::<Text, _>(scopes_text(created.scopes))
    .bind::<Text, _>(&created.plan)
    .bind::<Nullable<Timestamptz>, _>(created.expires_at)
    .bind::<Timestamptz, _>(created.created_at)
    .execute(&mut conn)
    .await
    .map_err(DatabaseError::Query)?;
    if inserted == 0 {
        return Err(StoreError::UnknownTenant(created.tenant.clone()));
    }
    Ok(())
}

/// The SQL that stores a made key, for `gateway keys create --sql` (the operator runs it).
pub fn insert_sql(record: &KeyRecord) -> String {
    let quote = |text: &str| format!("'{}'", text.replace('\'', "''"));
    let expires = record
        .expires_at
        .map_or_else(|| "NULL".to_owned(), |at| quote(&at.to_rfc3339()));
    format!(
        "INSERT INTO gateway.api_keys (id, tenant, name, prefix, hint, hash, scopes, plan, expires_at, created_at) \
         VALUES ({}, {}, {}, {}, {}, {}, {}, {}, {}, {});",
        quote(&record.id.to_string()),
        quote(record.tenant.as_str()),
        quote(&record.name),
        quote(&record.prefix),
        quote(&record.hint),
        quote(&record.hash),
        quote(&scopes_text(record.scopes)),
        quote(&record.plan),
        expires,
        quote(&record.created_at.to_rfc3339()),
    )
}

/// The key with this hash, if any.
pub async fn find_by_hash(pool: &Pool, hash: &str) -> Result<Option<KeyRecord>, DatabaseError> {
    let mut conn = database::get(pool).await?;
    let rows: Vec<Row> =
        diesel::sql_query(format!("SELECT {COLUMNS} FROM api_keys WHERE hash = $1"))
            .bind::<Text, _>(hash)
            .load(&mut conn)
            .await
            .map_err(DatabaseError::Query)?;
    Ok(rows.into_iter().next().map(KeyRecord::from))
}

/// The key with this id, if any.
pub async fn find_by_id(pool: &Pool, id: KeyId) -> Result<Option<KeyRecord>, DatabaseError> {
    let mut conn = database::get(pool).await?;
    let rows: Vec<Row> = diesel::sql_query(format!("SELECT {COLUMNS} FROM api_keys WHERE id = $1"))
        .bind::<Text, _>(id)
        .load(&mut conn)
        .await
        .map_err(DatabaseError::Query)?;
    Ok(rows.into_iter().next().map(KeyRecord::from))
}

/// A tenant's keys (every tenant's when `None`), newest first.
pub async fn list(pool: &Pool, tenant: Option<&Tenant>) -> Result<Vec<KeyRecord>, DatabaseError> {
    let mut conn = database::get(pool).await?;
    let rows: Vec<Row> = diesel::sql_query(format!(
        "SELECT {COLUMNS} FROM api_keys WHERE ($1::text IS NULL OR tenant = $1) ORDER BY id DESC LIMIT 1000"
    ))
    .bind::<Nullable<Text>, _>(tenant)
    .load(&mut conn)
    .await
    .map_err(DatabaseError::Query)?;
    Ok(rows.into_iter().map(KeyRecord::from).collect())
}

/// Revokes a key (of `tenant` only, when given); the record as it now is, or `None` when no such
/// key exists for that tenant. Revoking twice keeps the first time.
pub async fn revoke(
    pool: &Pool,
    tenant: Option<&Tenant>,
    id: KeyId,
    now: DateTime<Utc>,
) -> Result<Option<KeyRecord>, DatabaseError> {
    let mut conn = database::get(pool).await?;
    let rows: Vec<Row> = diesel::sql_query(format!(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $3) \
         WHERE id = $1 AND ($2::text IS NULL OR tenant = $2) RETURNING {COLUMNS}"
    ))
    .bind::<Text, _>(id)
    .bind::<Nullable<Text>, _>(tenant)
    .bind::<Timestamptz, _>(now)
    .load(&mut conn)
    .await
    .map_err(DatabaseError::Query)?;
    Ok(rows.into_iter().next().map(KeyRecord::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_random_and_hashed_with_the_pepper() {
        let a = generate("cw_test_");
        let b = generate("cw_test_");
        assert!(a.expose_secret().starts_with("cw_test_"));
        assert_eq!(
            a.expose_secret().len(),
            "cw_test_".len() + 43,
            "32 bytes in base64url"
        );
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert!(plausible(a.expose_secret()));
        let pepper = Pepper::new(&SecretString::from("pepper-one-for-tests-0123456789abcdef"));
        let other = Pepper::new(&SecretString::from("pepper-two-for-tests-0123456789abcdef"));
        let hash = pepper.hash(a.expose_secret());
        assert_eq!(hash.len(), 64);
        assert_eq!(hash, pepper.hash(a.expose_secret()));
        assert_ne!(
            hash,
            other.hash(a.expose_secret()),
            "the pepper is part of the hash"
        );
    }

    #[test]
    fn what_a_person_asks_for_is_checked() {
        let now = Utc::now();
        let good = NewKey {
            tenant: Tenant::parse("acme").unwrap(),
            name: "Production Key 1".into(),
            prefix: DEFAULT_PREFIX.into(),
            scopes: Scopes::of([Scope::Tts]),
            plan: "standard".into(),
            expires_at: None,
        };
        assert!(good.check(now).is_ok());
        for (bad, field) in [
            (
                NewKey {
                    name: " ".into(),
                    ..good.clone()
                },
                "name",
            ),
            (
                NewKey {
                    prefix: "CW-".into(),
                    ..good.clone()
                },
                "prefix",
            ),
            (
                NewKey {
                    scopes: Scopes::of([]),
                    ..good.clone()
                },
                "scopes",
            ),
            (
                NewKey {
                    plan: "gold".into(),
                    ..good.clone()
                },
                "plan",
            ),
            (
                NewKey {
                    expires_at: Some(now),
                    ..good.clone()
                },
                "expires_at",
            ),
        ] {
            assert!(bad.check(now).unwrap_err().starts_with(field), "{field}");
        }
    }

    #[test]
    fn the_sql_quotes_what_it_writes() {
        let pepper = Pepper::new(&SecretString::from("pepper-for-tests-0123456789abcdef"));
        let new = NewKey {
            tenant: Tenant::parse("acme").unwrap(),
            name: "Bob's key".into(),
            prefix: DEFAULT_PREFIX.into(),
            scopes: Scopes::all(),
            plan: "standard".into(),
            expires_at: None,
        };
        let made = make(&pepper, &new, Utc::now());
        let sql = insert_sql(&made.record);
        assert!(sql.contains("'Bob''s key'"), "{sql}");
        assert!(
            !sql.contains(made.key.expose_secret()),
            "the key itself is never written"
        );
        assert!(sql.contains(&made.record.hash));
    }
}
