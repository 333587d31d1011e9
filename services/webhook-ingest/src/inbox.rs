//! The inbox table: verified inbound webhooks, stored once per (source, delivery id) before they
//! are acknowledged. SQL only.

use chrono::{DateTime, Utc};
use database::{DatabaseError, Pool};
use diesel::sql_types::{Nullable, Text, Timestamptz};
use diesel_async::RunQueryDsl as _;
use ids::EventId;

/// The state of a stored event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Stored, waiting for its actions.
    Received,
    /// Nothing to do (a GitHub `ping`): recorded only.
    Done,
    /// Verified but not a valid event: kept for inspection, never dispatched.
    Malformed,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::Done => "done",
            Self::Malformed => "malformed",
        }
    }
}

/// An event to store.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    pub source: &'a str,
    pub delivery_id: &'a str,
    pub path: &'a str,
    pub subject_type: Option<&'a str>,
    pub subject_id: Option<&'a str>,
    pub event_type: Option<&'a str>,
    pub payload: &'a str,
    pub state: State,
    pub error: Option<&'a str>,
}

/// Whether an event was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    New(EventId),
    /// The sender had delivered it before; nothing was written.
    Duplicate,
}

/// How many stored events are in each state, for the `webhook_inbox_events` gauge.
pub async fn counts(pool: &Pool) -> Result<Vec<(String, i64)>, DatabaseError> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        state: String,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        count: i64,
    }
    let mut conn = database::get(pool).await?;
    let rows: Vec<Row> =
        diesel::sql_query("SELECT state, count(*) AS count FROM inbox GROUP BY state")
            .load(&mut conn)
            .await
            .map_err(DatabaseError::Query)?;
    Ok(rows.into_iter().map(|r| (r.state, r.count)).collect())
}

/// Stores `event` unless its (source, delivery id) is already there; committed when this returns.
pub async fn store(
    pool: &Pool,
    event: &NewEvent<'_>,
    now: DateTime<Utc>,
) -> Result<Stored, DatabaseError> {
    let id = EventId::new();
    let mut conn = database::get(pool).await?;
    let inserted = diesel::sql_query(
        "INSERT INTO inbox (id, source, delivery_id, path, subject_type, subject_id, event_type, \
           payload, state, last_error, received_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
         ON CONFLICT (source, delivery_id) DO NOTHING",
    )
    .bind::<Text, _>(id)
    .bind::<Text, _>(event.source)
    .bind::<Text, _>(event.delivery_id)
    .bind::<Text, _>(event.path)
    .bind::<Nullable<Text>, _>(event.subject_type)
    .bind::<Nullable<Text>, _>(event.subject_id)
    .bind::<Nullable<Text>, _>(event.event_type)
    .bind::<Text, _>(event.payload)
    .bind::<Text, _>(event.state.as_str())
    .bind::<Nullable<Text>, _>(event.error)
    .bind::<Timestamptz, _>(now)
    .execute(&mut conn)
    .await
    .map_err(DatabaseError::Query)?;
    Ok(if inserted == 1 {
        Stored::New(id)
    } else {
        Stored::Duplicate
    })
}
