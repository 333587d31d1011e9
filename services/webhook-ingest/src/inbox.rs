//! The inbox table: verified inbound webhooks, stored once per (source, delivery id) before they
//! are acknowledged. SQL only.

use chrono::{DateTime, Utc};
use database::{DatabaseError, Pool, PrepareQuery as _};
use diesel::sql_types::{Array, BigInt, Integer, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
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
    /// The tenant whose source it came from: the event is shown to that tenant.
    pub tenant: Option<&'a str>,
}

/// Whether an event was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    New(EventId),
    /// The sender had delivered it before; nothing was written.
    Duplicate,
}

/// The SQL of [`counts`].
const COUNTS: &str = "WITH pending AS ( \
       SELECT s AS state, (SELECT count(*) FROM inbox WHERE inbox.state = s) AS count \
       FROM unnest(ARRAY['received', 'dispatched', 'failed', 'dead_letter', 'malformed']) AS s) \
     SELECT state, count FROM pending \
     UNION ALL \
     SELECT 'done', CASE WHEN c.reltuples < 0 \
         THEN (SELECT count(*) FROM inbox WHERE state = 'done') \
         ELSE greatest(c.reltuples::bigint - (SELECT sum(count) FROM pending)::bigint, 0) END \
     FROM pg_class c WHERE c.oid = 'inbox'::regclass";

/// How many stored events are in each state, for the `webhook_inbox_events` gauge. Each state
/// but `done` is counted exactly, over the `inbox_state` index. `done` is nearly the whole table
/// (a week of traffic under the default retention), so counting it would read every row every 15 s
/// in every replica: it is the table's row estimate from its statistics less the other states,
/// and an exact count only while the table has never been analysed (small).
pub async fn counts(pool: &Pool) -> Result<Vec<(String, i64)>, DatabaseError> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        state: String,
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        count: i64,
    }
    let mut conn = database::get(pool).await?;
    let rows: Vec<Row> = diesel::sql_query(COUNTS)
        .load(&mut conn)
        .await
        .map_err(DatabaseError::Query)?;
    Ok(rows.into_iter().map(|r| (r.state, r.count)).collect())
}

/// Stores `event` unless its (source, delivery id) is already there; committed when this returns.
/// The current span's trace is kept with it: dispatching it continues that trace.
pub async fn store(
    pool: &Pool,
    event: &NewEvent<'_>,
    now: DateTime<Utc>,
) -> Result<Stored, DatabaseError> {
    let id = EventId::new();
    let mut conn = database::get(pool).await?;
    let inserted = diesel::sql_query(
        "INSERT INTO inbox (id, source, delivery_id, path, subject_type, subject_id, event_type, \
           payload, state, last_error, received_at, tenants, traceparent) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
           CASE WHEN $12::text IS NULL THEN '{}'::text[] ELSE ARRAY[$12::text] END, $13) \
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
    .bind::<Nullable<Text>, _>(event.tenant)
    .bind::<Nullable<Text>, _>(telemetry::propagation::current_traceparent())
    .prepared()
    .execute(&mut conn)
    .await
    .map_err(DatabaseError::Query)?;
    Ok(if inserted == 1 {
        Stored::New(id)
    } else {
        Stored::Duplicate
    })
}

/// A stored event the dispatcher holds the claim of.
#[derive(Debug, Clone, diesel::QueryableByName)]
pub struct ClaimedEvent {
    #[diesel(sql_type = Text)]
    pub id: EventId,
    #[diesel(sql_type = Text)]
    pub source: String,
    #[diesel(sql_type = Text)]
    pub delivery_id: String,
    #[diesel(sql_type = Text)]
    pub path: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub subject_type: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub subject_id: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub event_type: Option<String>,
    #[diesel(sql_type = Text)]
    pub payload: String,
    /// This attempt's number, counted against the retry schedule.
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    /// The trace dispatching continues: the receiving request's (for Replicate, the job's).
    #[diesel(sql_type = Nullable<Text>)]
    pub traceparent: Option<String>,
}

/// Claims up to `limit` events that have work left and are due: new ones, failed ones whose
/// retry is due, and dispatched ones whose claim expired (their dispatcher died). Each is moved
/// to `dispatched` under `claim_id` until `lease_until`, its attempt counted.
pub async fn claim(
    pool: &Pool,
    claim_id: uuid::Uuid,
    limit: i64,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
) -> Result<Vec<ClaimedEvent>, DatabaseError> {
    let mut conn = database::get(pool).await?;
    let events = diesel::sql_query(
        "WITH due AS ( \
           SELECT id FROM inbox \
           WHERE state IN ('received', 'dispatched', 'failed') \
             AND (next_attempt_at IS NULL OR next_attempt_at <= $1) \
             AND (lease_expires_at IS NULL OR lease_expires_at <= $1) \
           ORDER BY next_attempt_at NULLS FIRST, received_at \
           LIMIT $2 FOR UPDATE SKIP LOCKED) \
         UPDATE inbox i SET state = 'dispatched', claim_id = $3, lease_expires_at = $4, \
           attempts = i.attempts + 1 \
         FROM due WHERE i.id = due.id \
         RETURNING i.id, i.source, i.delivery_id, i.path, i.subject_type, i.subject_id, i.event_type, \
           i.payload, i.attempts, i.traceparent",
    )
    .bind::<Timestamptz, _>(now)
    .bind::<BigInt, _>(limit)
    .bind::<SqlUuid, _>(claim_id)
    .bind::<Timestamptz, _>(lease_until)
    .prepared()
    .load(&mut conn)
    .await
    .map_err(DatabaseError::Query)?;
    Ok(events)
}

/// The actions of `event` that already succeeded (on an earlier attempt, or before a redrive):
/// they are not run again.
pub async fn succeeded_actions(pool: &Pool, event: EventId) -> Result<Vec<String>, DatabaseError> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        action: String,
    }
    let mut conn = database::get(pool).await?;
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT DISTINCT action FROM inbox_attempts WHERE event_id = $1 AND outcome = 'succeeded'",
    )
    .bind::<Text, _>(event)
    .load(&mut conn)
    .await
    .map_err(DatabaseError::Query)?;
    Ok(rows.into_iter().map(|r| r.action).collect())
}

/// One attempt of one action, as recorded.
#[derive(Debug, Clone)]
pub struct NewAttempt<'a> {
    pub event: EventId,
    pub attempt: i32,
    pub action: &'a str,
    /// `succeeded`, `failed`, `rejected` or `throttled`.
    pub outcome: &'a str,
    pub error: Option<&'a str>,
    pub result: Option<&'a str>,
    pub duration_ms: i32,
    pub at: DateTime<Utc>,
    /// The tenant of the rule it ran for, if any.
    pub tenant: Option<&'a str>,
}

/// Whether the claim still holds the event; locks its row for the rest of the transaction, so a
/// dispatcher that lost its claim writes nothing.
pub async fn hold(
    conn: &mut AsyncPgConnection,
    event: EventId,
    claim_id: uuid::Uuid,
) -> Result<bool, diesel::result::Error> {
    let held = diesel::sql_query("SELECT 1 FROM inbox WHERE id = $1 AND claim_id = $2 FOR UPDATE")
        .bind::<Text, _>(event)
        .bind::<SqlUuid, _>(claim_id)
        .execute(conn)
        .await?;
    Ok(held == 1)
}

/// Records an attempt (inside the caller's transaction).
pub async fn record_attempt(
    conn: &mut AsyncPgConnection,
    attempt: &NewAttempt<'_>,
) -> Result<(), diesel::result::Error> {
    diesel::sql_query(
        "INSERT INTO inbox_attempts (event_id, attempt, action, outcome, error, result, duration_ms, at, tenant) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind::<Text, _>(attempt.event)
    .bind::<Integer, _>(attempt.attempt)
    .bind::<Text, _>(attempt.action)
    .bind::<Text, _>(attempt.outcome)
    .bind::<Nullable<Text>, _>(attempt.error)
    .bind::<Nullable<Text>, _>(attempt.result)
    .bind::<Integer, _>(attempt.duration_ms)
    .bind::<Timestamptz, _>(attempt.at)
    .bind::<Nullable<Text>, _>(attempt.tenant)
    .execute(conn)
    .await?;
    Ok(())
}

/// Adds `tenants` to the tenants an event was handed to (inside the caller's transaction).
pub async fn add_tenants(
    conn: &mut AsyncPgConnection,
    event: EventId,
    tenants: &[String],
) -> Result<(), diesel::result::Error> {
    diesel::sql_query(
        "UPDATE inbox SET tenants = ARRAY(SELECT DISTINCT unnest(tenants || $2) ORDER BY 1) \
         WHERE id = $1",
    )
    .bind::<Text, _>(event)
    .bind::<Array<Text>, _>(tenants)
    .execute(conn)
    .await?;
    Ok(())
}

/// Where a dispatched event goes next.
#[derive(Debug, Clone, PartialEq)]
pub enum Settled {
    Done,
    /// To be tried again at `next_at`; `counted: false` gives the attempt back (the far side
    /// asked to wait, so the wait must not use up the schedule).
    Failed {
        next_at: DateTime<Utc>,
        error: String,
        counted: bool,
    },
    DeadLetter {
        error: String,
    },
}

/// Moves a dispatched event on, if `claim_id` still holds it; false when the claim was lost.
/// Settles claimed events that had nothing to do, all at once; how many the claim still held.
pub async fn settle_done(
    pool: &Pool,
    events: &[EventId],
    claim_id: uuid::Uuid,
    now: DateTime<Utc>,
) -> Result<usize, DatabaseError> {
    let mut conn = database::get(pool).await?;
    diesel::sql_query(
        "UPDATE inbox SET state = 'done', next_attempt_at = NULL, last_error = NULL, settled_at = $3, \
           claim_id = NULL, lease_expires_at = NULL \
         WHERE id = ANY($1) AND claim_id = $2",
    )
    .bind::<diesel::sql_types::Array<Text>, _>(events)
    .bind::<SqlUuid, _>(claim_id)
    .bind::<Timestamptz, _>(now)
    .prepared()
    .execute(&mut conn)
    .await
    .map_err(DatabaseError::Query)
}

pub async fn settle(
    pool: &Pool,
    event: EventId,
    claim_id: uuid::Uuid,
    settled: &Settled,
    now: DateTime<Utc>,
) -> Result<bool, DatabaseError> {
    let (state, next_at, error, give_back) = match settled {
        Settled::Done => ("done", None, None, 0),
        Settled::Failed {
            next_at,
            error,
            counted,
        } => (
            "failed",
            Some(*next_at),
            Some(error.as_str()),
            i32::from(!counted),
        ),
        Settled::DeadLetter { error } => ("dead_letter", None, Some(error.as_str()), 0),
    };
    let settled_at = matches!(settled, Settled::Done | Settled::DeadLetter { .. }).then_some(now);
    let mut conn = database::get(pool).await?;
    let updated = diesel::sql_query(
        "UPDATE inbox SET state = $3, next_attempt_at = $4, last_error = $5, \
           attempts = attempts - $6, settled_at = $7, claim_id = NULL, lease_expires_at = NULL \
         WHERE id = $1 AND claim_id = $2",
    )
    .bind::<Text, _>(event)
    .bind::<SqlUuid, _>(claim_id)
    .bind::<Text, _>(state)
    .bind::<Nullable<Timestamptz>, _>(next_at)
    .bind::<Nullable<Text>, _>(error)
    .bind::<Integer, _>(give_back)
    .bind::<Nullable<Timestamptz>, _>(settled_at)
    .prepared()
    .execute(&mut conn)
    .await
    .map_err(DatabaseError::Query)?;
    Ok(updated == 1)
}

/// Deletes settled events (done, dead letters, malformed) older than `before`, with their
/// attempts; returns how many.
pub async fn clean_up(pool: &Pool, before: DateTime<Utc>) -> Result<usize, DatabaseError> {
    let mut conn = database::get(pool).await?;
    diesel::sql_query(
        "DELETE FROM inbox WHERE settled_at < $1 \
           OR (settled_at IS NULL AND state IN ('done', 'malformed') AND received_at < $1)",
    )
    .bind::<Timestamptz, _>(before)
    .execute(&mut conn)
    .await
    .map_err(DatabaseError::Query)
}

/// A stored event as the API shows it.
#[derive(Debug, Clone, diesel::QueryableByName)]
pub struct EventRow {
    #[diesel(sql_type = Text)]
    pub id: EventId,
    #[diesel(sql_type = Text)]
    pub source: String,
    #[diesel(sql_type = Text)]
    pub delivery_id: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub event_type: Option<String>,
    #[diesel(sql_type = Text)]
    pub state: String,
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    #[diesel(sql_type = Nullable<Text>)]
    pub last_error: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    pub received_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    pub next_attempt_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Array<Text>)]
    pub tenants: Vec<String>,
}

/// Which events a listing or a redrive covers; every filter is optional.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Events handed to this tenant (among others).
    pub tenant: Option<String>,
    /// Events handed to this tenant and no other (a client's redrive).
    pub only_tenant: Option<String>,
    pub id: Option<EventId>,
    pub source: Option<String>,
    pub state: Option<String>,
    pub after: Option<DateTime<Utc>>,
    pub before: Option<DateTime<Utc>>,
}

const FILTER: &str = "($1::text IS NULL OR $1 = ANY(tenants)) \
     AND ($2::text IS NULL OR tenants = ARRAY[$2::text]) \
     AND ($3::text IS NULL OR id = $3) \
     AND ($4::text IS NULL OR source = $4) \
     AND ($5::text IS NULL OR state = $5) \
     AND ($6::timestamptz IS NULL OR received_at >= $6) \
     AND ($7::timestamptz IS NULL OR received_at < $7)";

const EVENT_COLUMNS: &str = "id, source, delivery_id, event_type, state, attempts, last_error, \
     received_at, next_attempt_at, tenants";

/// Events matching `filter`, newest first, up to `limit`, older than the event `after_id`.
pub async fn list(
    pool: &Pool,
    filter: &EventFilter,
    after_id: Option<EventId>,
    limit: i64,
) -> Result<Vec<EventRow>, DatabaseError> {
    let mut conn = database::get(pool).await?;
    diesel::sql_query(format!(
        "SELECT {EVENT_COLUMNS} FROM inbox WHERE {FILTER} AND ($8::text IS NULL OR id < $8) \
         ORDER BY id DESC LIMIT $9"
    ))
    .bind::<Nullable<Text>, _>(filter.tenant.as_deref())
    .bind::<Nullable<Text>, _>(filter.only_tenant.as_deref())
    .bind::<Nullable<Text>, _>(filter.id)
    .bind::<Nullable<Text>, _>(filter.source.as_deref())
    .bind::<Nullable<Text>, _>(filter.state.as_deref())
    .bind::<Nullable<Timestamptz>, _>(filter.after)
    .bind::<Nullable<Timestamptz>, _>(filter.before)
    .bind::<Nullable<Text>, _>(after_id)
    .bind::<BigInt, _>(limit)
    .load(&mut conn)
    .await
    .map_err(DatabaseError::Query)
}

/// One event and its payload, if `filter` lets it be seen.
pub async fn get(
    pool: &Pool,
    filter: &EventFilter,
) -> Result<Option<(EventRow, String)>, DatabaseError> {
    #[derive(diesel::QueryableByName)]
    struct Payload {
        #[diesel(sql_type = Text)]
        payload: String,
    }
    let Some(row) = list(pool, filter, None, 1).await?.into_iter().next() else {
        return Ok(None);
    };
    let mut conn = database::get(pool).await?;
    let payload: Payload = diesel::sql_query("SELECT payload FROM inbox WHERE id = $1")
        .bind::<Text, _>(row.id)
        .get_result(&mut conn)
        .await
        .map_err(DatabaseError::Query)?;
    Ok(Some((row, payload.payload)))
}

/// One recorded attempt.
#[derive(Debug, Clone, diesel::QueryableByName)]
pub struct AttemptRow {
    #[diesel(sql_type = Integer)]
    pub attempt: i32,
    #[diesel(sql_type = Text)]
    pub action: String,
    #[diesel(sql_type = Text)]
    pub outcome: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub error: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    pub result: Option<String>,
    #[diesel(sql_type = Integer)]
    pub duration_ms: i32,
    #[diesel(sql_type = Timestamptz)]
    pub at: DateTime<Utc>,
}

/// An event's attempts in order; only those of `tenant`'s rules when given.
pub async fn attempts(
    pool: &Pool,
    event: EventId,
    tenant: Option<&str>,
) -> Result<Vec<AttemptRow>, DatabaseError> {
    let mut conn = database::get(pool).await?;
    diesel::sql_query(
        "SELECT attempt, action, outcome, error, result, duration_ms, at FROM inbox_attempts \
         WHERE event_id = $1 AND ($2::text IS NULL OR tenant = $2) ORDER BY id",
    )
    .bind::<Text, _>(event)
    .bind::<Nullable<Text>, _>(tenant)
    .load(&mut conn)
    .await
    .map_err(DatabaseError::Query)
}

/// Puts the dead letters matching `filter` back as `received`, with a full run of the retry
/// schedule, and wakes the dispatchers; returns how many.
pub async fn redrive(pool: &Pool, filter: &EventFilter) -> Result<usize, DatabaseError> {
    let mut conn = database::get(pool).await?;
    let redriven = diesel::sql_query(format!(
        "UPDATE inbox SET state = 'received', attempts = 0, next_attempt_at = NULL, \
           settled_at = NULL \
         WHERE state = 'dead_letter' AND {FILTER}"
    ))
    .bind::<Nullable<Text>, _>(filter.tenant.as_deref())
    .bind::<Nullable<Text>, _>(filter.only_tenant.as_deref())
    .bind::<Nullable<Text>, _>(filter.id)
    .bind::<Nullable<Text>, _>(filter.source.as_deref())
    .bind::<Nullable<Text>, _>(filter.state.as_deref())
    .bind::<Nullable<Timestamptz>, _>(filter.after)
    .bind::<Nullable<Timestamptz>, _>(filter.before)
    .execute(&mut conn)
    .await
    .map_err(DatabaseError::Query)?;
    if redriven > 0 {
        diesel::sql_query("SELECT pg_notify('inbox_' || current_schema(), '')")
            .execute(&mut conn)
            .await
            .map_err(DatabaseError::Query)?;
    }
    Ok(redriven)
}
