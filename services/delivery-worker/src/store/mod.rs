//! Everything delivery-worker keeps in PostgreSQL, in its own schema, one module per concern:
//!
//! - [`endpoints`]: endpoints and their sealed secrets;
//! - [`messages`]: messages and publishing (the fan-out to subscribed endpoints);
//! - [`queue`]: the delivery queue: claiming under a lease, recording outcomes, retry and redrive;
//! - [`listings`]: what the API lists and counts.
//!
//! These modules are SQL and nothing else. What an outcome means (the retry rules, which
//! operational events to raise and what they say) is decided by [`crate::rules`], pure functions
//! the store calls inside its transactions.
//!
//! Every timestamp comes from the caller's clock. The queue is claimed with
//! `FOR UPDATE SKIP LOCKED` and a lease (claim id + expiry): several workers never hold the same
//! row, and a dead worker's rows become claimable again once its lease expires. A result is only
//! recorded by the claim that holds the row.

mod endpoints;
mod listings;
mod messages;
mod queue;

use chrono::{DateTime, Utc};
use database::{DatabaseError, Pool};
use diesel::sql_types::{Jsonb, Nullable, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use ids::{EndpointId, Tenant};
use secret_box::Keyring;

pub use self::{
    endpoints::{EndpointChanges, EndpointRow, NewEndpoint},
    listings::{AttemptRow, DeliveryFilter, DeliveryRow, MessageRow, QueueStats},
    messages::{NewMessage, Published},
    queue::{Claimed, Outcome, Recorded},
};

/// Errors of the store; each maps once to a gRPC status in `grpc.rs`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Database(#[from] DatabaseError),
    /// The named resource does not exist for the tenant (or at all).
    #[error("no such {0} for this tenant")]
    NotFound(&'static str),
    /// The tenant already has the most it may have.
    #[error("the tenant already has {max} {what}, the most it may have")]
    Limit { what: &'static str, max: i64 },
    #[error("a stored secret cannot be decrypted: {0}")]
    Secret(String),
}

impl From<diesel::result::Error> for StoreError {
    fn from(error: diesel::result::Error) -> Self {
        match error {
            diesel::result::Error::NotFound => Self::NotFound("resource"),
            other => Self::Database(DatabaseError::Query(other)),
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The store: a pool and the keyring that seals endpoint secrets.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    keyring: std::sync::Arc<Keyring>,
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
}

async fn audit(
    conn: &mut AsyncPgConnection,
    tenant: &Tenant,
    endpoint_id: Option<&EndpointId>,
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
