//! The jobs table: SQL only.

use chrono::{DateTime, Utc};
use database::{DatabaseError, Pool};
use diesel::{
    QueryableByName,
    sql_types::{BigInt, Bool, Double, Integer, Jsonb, Nullable, Text, Timestamptz},
};
use diesel_async::{AsyncConnection as _, RunQueryDsl as _};
use ids::{EventId, JobId, Tenant};

/// What a job makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobType {
    SoundEffect,
    BackgroundMusic,
}

impl JobType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SoundEffect => "sound_effect",
            Self::BackgroundMusic => "background_music",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "sound_effect" => Some(Self::SoundEffect),
            "background_music" => Some(Self::BackgroundMusic),
            _ => None,
        }
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Queued,
    Submitted,
    Succeeded,
    Failed,
    Canceled,
    /// Replicate finished; the output is being downloaded, processed and stored.
    Processing,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Submitted => "submitted",
            Self::Processing => "processing",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Queued,
            Self::Submitted,
            Self::Processing,
            Self::Succeeded,
            Self::Failed,
            Self::Canceled,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    /// Whether the job has settled for good.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Canceled)
    }
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error(transparent)]
    Database(#[from] DatabaseError),
    #[error("a stored job has an unknown {0}")]
    Corrupt(&'static str),
    #[error("the job's event cannot be written: {0}")]
    Event(#[from] outbox::EventError),
}

impl From<diesel::result::Error> for JobsError {
    fn from(error: diesel::result::Error) -> Self {
        Self::Database(DatabaseError::Query(error))
    }
}

#[derive(QueryableByName)]
struct Row {
    #[diesel(sql_type = Text)]
    id: JobId,
    #[diesel(sql_type = Text)]
    tenant: Tenant,
    #[diesel(sql_type = Text)]
    job_type: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Text)]
    prompt: String,
    #[diesel(sql_type = Double)]
    duration_seconds: f64,
    #[diesel(sql_type = Nullable<BigInt>)]
    seed: Option<i64>,
    #[diesel(sql_type = Nullable<Double>)]
    volume_level: Option<f64>,
    #[diesel(sql_type = Nullable<Text>)]
    error: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    prediction_id: Option<String>,
    #[diesel(sql_type = Integer)]
    attempts: i32,
    #[diesel(sql_type = Bool)]
    cancel_requested: bool,
    #[diesel(sql_type = Nullable<Text>)]
    output_url: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    audio_key: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    audio_format: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    audio_size: Option<i64>,
    #[diesel(sql_type = Nullable<Double>)]
    audio_duration: Option<f64>,
    #[diesel(sql_type = Nullable<Text>)]
    audio_sha256: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    updated_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    submitted_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Text>)]
    traceparent: Option<String>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    completed_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    finished_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Nullable<Text>)]
    event_id: Option<EventId>,
}

/// A finished job's stored audio: the bytes are in the audio store under `key`.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAudio {
    pub key: String,
    /// `mp3` or `wav`.
    pub format: String,
    pub size: u64,
    pub duration_seconds: f64,
    pub sha256: String,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: JobId,
    pub tenant: Tenant,
    pub job_type: JobType,
    pub status: JobStatus,
    pub prompt: String,
    pub duration_seconds: f64,
    pub seed: Option<i64>,
    pub volume_level: Option<f64>,
    pub error: Option<String>,
    pub prediction_id: Option<String>,
    /// Tries of the current step (submission or finishing).
    pub attempts: i32,
    pub cancel_requested: bool,
    pub output_url: Option<String>,
    pub audio: Option<StoredAudio>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub submitted_at: Option<DateTime<Utc>>,
    /// The trace the job's next step continues: the creating request's, then the webhook's.
    pub traceparent: Option<String>,
    /// When Replicate's answer (webhook or reconciliation) arrived.
    pub completed_at: Option<DateTime<Utc>>,
    /// When the job ended: its audio stored, or failed or canceled.
    pub finished_at: Option<DateTime<Utc>>,
    /// The event it ended with, handed to delivery-worker by the outbox.
    pub event_id: Option<EventId>,
}

impl TryFrom<Row> for Job {
    type Error = JobsError;

    fn try_from(row: Row) -> Result<Self, JobsError> {
        let audio = match (
            row.audio_key,
            row.audio_format,
            row.audio_size,
            row.audio_duration,
            row.audio_sha256,
        ) {
            (Some(key), Some(format), Some(size), Some(duration_seconds), Some(sha256)) => {
                Some(StoredAudio {
                    key,
                    format,
                    size: u64::try_from(size).map_err(|_| JobsError::Corrupt("audio size"))?,
                    duration_seconds,
                    sha256,
                })
            }
            _ => None,
        };
        Ok(Self {
            id: row.id,
            tenant: row.tenant,
            job_type: JobType::parse(&row.job_type).ok_or(JobsError::Corrupt("type"))?,
            status: JobStatus::parse(&row.status).ok_or(JobsError::Corrupt("status"))?,
            prompt: row.prompt,
            duration_seconds: row.duration_seconds,
            seed: row.seed,
            volume_level: row.volume_level,
            error: row.error,
            prediction_id: row.prediction_id,
            attempts: row.attempts,
            cancel_requested: row.cancel_requested,
            output_url: row.output_url,
            audio,
            created_at: row.created_at,
            updated_at: row.updated_at,
            submitted_at: row.submitted_at,
            traceparent: row.traceparent,
            completed_at: row.completed_at,
            finished_at: row.finished_at,
            event_id: row.event_id,
        })
    }
}

fn jobs(rows: Vec<Row>) -> Result<Vec<Job>, JobsError> {
    rows.into_iter().map(Job::try_from).collect()
}

/// A job to record, already checked.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub tenant: Tenant,
    pub job_type: JobType,
    pub prompt: String,
    pub duration_seconds: f64,
    pub seed: Option<i64>,
    pub volume_level: Option<f64>,
    /// The trace of the request that asks for the job.
    pub traceparent: Option<String>,
}

const COLUMNS: &str = "id, tenant, job_type, status, prompt, duration_seconds, seed, volume_level, \
     error, prediction_id, attempts, cancel_requested, output_url, audio_key, audio_format, \
     audio_size, audio_duration, audio_sha256, created_at, updated_at, submitted_at, traceparent, \
     completed_at, finished_at, event_id";

/// Records a queued job; the trigger on `jobs` wakes the submitters.
pub async fn create(pool: &Pool, job: &NewJob, now: DateTime<Utc>) -> Result<Job, JobsError> {
    let mut conn = database::get(pool).await?;
    let row: Row = diesel::sql_query(format!(
        "INSERT INTO jobs (id, tenant, job_type, status, prompt, duration_seconds, seed, volume_level, created_at, updated_at, traceparent) \
         VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $8, $9) RETURNING {COLUMNS}"
    ))
    .bind::<Text, _>(JobId::new())
    .bind::<Text, _>(&job.tenant)
    .bind::<Text, _>(job.job_type.as_str())
    .bind::<Text, _>(&job.prompt)
    .bind::<Double, _>(job.duration_seconds)
    .bind::<Nullable<BigInt>, _>(job.seed)
    .bind::<Nullable<Double>, _>(job.volume_level)
    .bind::<Timestamptz, _>(now)
    .bind::<Nullable<Text>, _>(&job.traceparent)
    .get_result(&mut conn)
    .await?;
    row.try_into()
}

/// One job of `tenant`.
pub async fn get(pool: &Pool, tenant: &Tenant, id: JobId) -> Result<Option<Job>, JobsError> {
    let mut conn = database::get(pool).await?;
    let rows: Vec<Row> = diesel::sql_query(format!(
        "SELECT {COLUMNS} FROM jobs WHERE tenant = $1 AND id = $2"
    ))
    .bind::<Text, _>(tenant)
    .bind::<Text, _>(id)
    .load(&mut conn)
    .await?;
    jobs(rows).map(|found| found.into_iter().next())
}

/// One job, whatever its tenant: for Replicate's answers, which name only the job.
pub async fn get_any(pool: &Pool, id: JobId) -> Result<Option<Job>, JobsError> {
    let mut conn = database::get(pool).await?;
    let rows: Vec<Row> = diesel::sql_query(format!("SELECT {COLUMNS} FROM jobs WHERE id = $1"))
        .bind::<Text, _>(id)
        .load(&mut conn)
        .await?;
    jobs(rows).map(|found| found.into_iter().next())
}

/// `tenant`'s jobs, newest first, before `before` when given.
pub async fn list(
    pool: &Pool,
    tenant: &Tenant,
    job_type: Option<JobType>,
    status: Option<JobStatus>,
    before: Option<JobId>,
    created: (Option<DateTime<Utc>>, Option<DateTime<Utc>>),
    limit: i64,
) -> Result<Vec<Job>, JobsError> {
    let mut conn = database::get(pool).await?;
    let rows: Vec<Row> = diesel::sql_query(format!(
        "SELECT {COLUMNS} FROM jobs WHERE tenant = $1 \
           AND ($2::text IS NULL OR job_type = $2) AND ($3::text IS NULL OR status = $3) \
           AND ($4::text IS NULL OR id < $4) \
           AND ($6::timestamptz IS NULL OR created_at >= $6) \
           AND ($7::timestamptz IS NULL OR created_at < $7) \
         ORDER BY id DESC LIMIT $5"
    ))
    .bind::<Text, _>(tenant)
    .bind::<Nullable<Text>, _>(job_type.map(JobType::as_str))
    .bind::<Nullable<Text>, _>(status.map(JobStatus::as_str))
    .bind::<Nullable<Text>, _>(before)
    .bind::<BigInt, _>(limit)
    .bind::<Nullable<Timestamptz>, _>(created.0)
    .bind::<Nullable<Timestamptz>, _>(created.1)
    .load(&mut conn)
    .await?;
    jobs(rows)
}

/// Which queue a worker takes jobs from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// Queued jobs, to be submitted to Replicate.
    Submit,
    /// Processing jobs, whose output is to be downloaded, processed and stored.
    Finish,
}

impl Queue {
    /// The status of the jobs waiting in it.
    fn status(self) -> &'static str {
        match self {
            Self::Submit => "queued",
            Self::Finish => "processing",
        }
    }
}

/// Claims up to `limit` due jobs of a queue for `lease`: no other replica takes them until it
/// expires, so a job held by a killed process is taken again once its lease runs out.
pub async fn claim(
    pool: &Pool,
    queue: Queue,
    limit: i64,
    lease: std::time::Duration,
    now: DateTime<Utc>,
) -> Result<Vec<Job>, JobsError> {
    let status = queue.status();
    let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(60));
    let mut conn = database::get(pool).await?;
    let rows: Vec<Row> = diesel::sql_query(format!(
        "UPDATE jobs SET lease_until = $4 WHERE id IN ( \
           SELECT id FROM jobs WHERE status = $1 \
             AND (next_attempt_at IS NULL OR next_attempt_at <= $2) \
             AND (lease_until IS NULL OR lease_until <= $2) \
           ORDER BY next_attempt_at NULLS FIRST, created_at LIMIT $3 \
           FOR UPDATE SKIP LOCKED) \
         AND status = $1 RETURNING {COLUMNS}"
    ))
    .bind::<Text, _>(status)
    .bind::<Timestamptz, _>(now)
    .bind::<BigInt, _>(limit)
    .bind::<Timestamptz, _>(until)
    .load(&mut conn)
    .await?;
    jobs(rows)
}

/// Takes one prediction creation from this minute's budget, shared by every replica; false
/// when the minute's budget is spent.
pub async fn take_budget(
    pool: &Pool,
    per_minute: u32,
    now: DateTime<Utc>,
) -> Result<bool, JobsError> {
    let mut conn = database::get(pool).await?;
    let taken = diesel::sql_query(
        "INSERT INTO submission_budget (minute, used) VALUES (date_trunc('minute', $1), 1) \
         ON CONFLICT (minute) DO UPDATE SET used = submission_budget.used + 1 \
         WHERE submission_budget.used < $2",
    )
    .bind::<Timestamptz, _>(now)
    .bind::<Integer, _>(i32::try_from(per_minute).unwrap_or(i32::MAX))
    .execute(&mut conn)
    .await?;
    // Minutes long past are of no use to anyone.
    if taken == 1 && rand_tick(now) {
        diesel::sql_query("DELETE FROM submission_budget WHERE minute < $1 - interval '1 hour'")
            .bind::<Timestamptz, _>(now)
            .execute(&mut conn)
            .await?;
    }
    Ok(taken == 1)
}

/// Roughly one call in a hundred cleans the budget table.
fn rand_tick(now: DateTime<Utc>) -> bool {
    now.timestamp_subsec_micros().is_multiple_of(100)
}

/// Records the created prediction, if the job is still queued (a cancel may have come while
/// Replicate was answering): false otherwise, and the caller cancels the prediction.
pub async fn mark_submitted(
    pool: &Pool,
    id: JobId,
    prediction_id: &str,
    model_version: &str,
    input: &serde_json::Value,
    now: DateTime<Utc>,
) -> Result<bool, JobsError> {
    let mut conn = database::get(pool).await?;
    let updated = diesel::sql_query(
        "UPDATE jobs SET status = 'submitted', prediction_id = $2, model_version = $3, input = $4, \
           submitted_at = $5, updated_at = $5, attempts = 0, next_attempt_at = NULL, \
           lease_until = NULL, last_error = NULL \
         WHERE id = $1 AND status = 'queued'",
    )
    .bind::<Text, _>(id)
    .bind::<Text, _>(prediction_id)
    .bind::<Text, _>(model_version)
    .bind::<Jsonb, _>(input)
    .bind::<Timestamptz, _>(now)
    .execute(&mut conn)
    .await?;
    Ok(updated == 1)
}

/// Puts a claimed job back for a later try. `counted` is false for waits that are not the
/// job's fault (a rate limit, an exhausted budget).
pub async fn retry_later(
    pool: &Pool,
    id: JobId,
    at: DateTime<Utc>,
    error: &str,
    counted: bool,
) -> Result<(), JobsError> {
    let mut conn = database::get(pool).await?;
    diesel::sql_query(
        "UPDATE jobs SET next_attempt_at = $2, lease_until = NULL, last_error = $3, \
           attempts = attempts + CASE WHEN $4 THEN 1 ELSE 0 END \
         WHERE id = $1",
    )
    .bind::<Text, _>(id)
    .bind::<Timestamptz, _>(at)
    .bind::<Text, _>(error)
    .bind::<Bool, _>(counted)
    .execute(&mut conn)
    .await?;
    Ok(())
}

/// Settles a job that is not yet final as failed (or canceled), with its event, in one
/// transaction: false when it had already settled, in which case nothing changed.
pub async fn settle_failed(
    pool: &Pool,
    id: JobId,
    status: JobStatus,
    error: &str,
    prediction_id: Option<&str>,
    event: outbox::Event,
    now: DateTime<Utc>,
) -> Result<bool, JobsError> {
    debug_assert!(matches!(status, JobStatus::Failed | JobStatus::Canceled));
    let error = error.to_owned();
    let prediction_id = prediction_id.map(str::to_owned);
    let mut conn = database::get(pool).await?;
    conn.transaction::<_, JobsError, _>(async move |conn| {
        let updated = diesel::sql_query(
            "UPDATE jobs SET status = $2, error = $3, prediction_id = COALESCE(prediction_id, $4), \
               updated_at = $5, finished_at = $5, lease_until = NULL, next_attempt_at = NULL \
             WHERE id = $1 AND status NOT IN ('succeeded', 'failed', 'canceled')",
        )
        .bind::<Text, _>(id)
        .bind::<Text, _>(status.as_str())
        .bind::<Text, _>(&error)
        .bind::<Nullable<Text>, _>(prediction_id.as_deref())
        .bind::<Timestamptz, _>(now)
        .execute(conn)
        .await?;
        if updated == 1 {
            record_event(conn, id, &event, now).await?;
        }
        Ok(updated == 1)
    })
    .await
}

/// Enqueues the job's final event and keeps its id on the job, inside the caller's transaction.
async fn record_event(
    conn: &mut diesel_async::AsyncPgConnection,
    id: JobId,
    event: &outbox::Event,
    now: DateTime<Utc>,
) -> Result<(), JobsError> {
    let event_id = outbox::enqueue(conn, event, now).await?;
    diesel::sql_query("UPDATE jobs SET event_id = $2 WHERE id = $1")
        .bind::<Text, _>(id)
        .bind::<Text, _>(event_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records Replicate's success: the job moves to `processing` with the output to fetch (the
/// finisher takes it from there, continuing the trace of the answer when it has one). False when
/// the job had already moved on.
pub async fn begin_processing(
    pool: &Pool,
    id: JobId,
    prediction_id: &str,
    output_url: &str,
    now: DateTime<Utc>,
) -> Result<bool, JobsError> {
    let mut conn = database::get(pool).await?;
    let updated = diesel::sql_query(
        "UPDATE jobs SET status = 'processing', prediction_id = COALESCE(prediction_id, $2), \
           output_url = $3, completed_at = $4, updated_at = $4, attempts = 0, \
           next_attempt_at = NULL, lease_until = NULL, last_error = NULL, \
           traceparent = COALESCE($5, traceparent) \
         WHERE id = $1 AND status IN ('queued', 'submitted')",
    )
    .bind::<Text, _>(id)
    .bind::<Text, _>(prediction_id)
    .bind::<Text, _>(output_url)
    .bind::<Timestamptz, _>(now)
    .bind::<Nullable<Text>, _>(telemetry::propagation::current_traceparent())
    .execute(&mut conn)
    .await?;
    Ok(updated == 1)
}

/// Records the stored audio and the job's event in one transaction, if the job is still
/// processing (a cancel may have come meanwhile): false otherwise.
pub async fn settle_succeeded(
    pool: &Pool,
    id: JobId,
    audio: &StoredAudio,
    event: outbox::Event,
    now: DateTime<Utc>,
) -> Result<bool, JobsError> {
    let audio = audio.clone();
    let mut conn = database::get(pool).await?;
    conn.transaction::<_, JobsError, _>(async move |conn| {
        let updated = diesel::sql_query(
            "UPDATE jobs SET status = 'succeeded', audio_key = $2, audio_format = $3, \
               audio_size = $4, audio_duration = $5, audio_sha256 = $6, updated_at = $7, \
               finished_at = $7, lease_until = NULL, next_attempt_at = NULL, last_error = NULL \
             WHERE id = $1 AND status = 'processing'",
        )
        .bind::<Text, _>(id)
        .bind::<Text, _>(&audio.key)
        .bind::<Text, _>(&audio.format)
        .bind::<BigInt, _>(i64::try_from(audio.size).unwrap_or(i64::MAX))
        .bind::<Double, _>(audio.duration_seconds)
        .bind::<Text, _>(&audio.sha256)
        .bind::<Timestamptz, _>(now)
        .execute(conn)
        .await?;
        if updated == 1 {
            record_event(conn, id, &event, now).await?;
        }
        Ok(updated == 1)
    })
    .await
}

/// Submitted jobs whose webhook is overdue (submitted before `before`), not asked about since
/// `before` either; each is marked as asked so that the next sweep skips it for a while.
pub async fn overdue(
    pool: &Pool,
    before: DateTime<Utc>,
    limit: i64,
    now: DateTime<Utc>,
) -> Result<Vec<Job>, JobsError> {
    let mut conn = database::get(pool).await?;
    let rows: Vec<Row> = diesel::sql_query(format!(
        "UPDATE jobs SET next_attempt_at = $3 WHERE id IN ( \
           SELECT id FROM jobs WHERE status = 'submitted' AND submitted_at < $1 \
             AND (next_attempt_at IS NULL OR next_attempt_at < $1) \
           ORDER BY submitted_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
         RETURNING {COLUMNS}"
    ))
    .bind::<Timestamptz, _>(before)
    .bind::<BigInt, _>(limit)
    .bind::<Timestamptz, _>(now)
    .load(&mut conn)
    .await?;
    jobs(rows)
}

/// Marks a job to be canceled by whoever holds it: the submitter cancels a prediction created
/// while the cancel was being recorded.
pub async fn request_cancel(pool: &Pool, id: JobId) -> Result<(), JobsError> {
    let mut conn = database::get(pool).await?;
    diesel::sql_query("UPDATE jobs SET cancel_requested = TRUE WHERE id = $1")
        .bind::<Text, _>(id)
        .execute(&mut conn)
        .await?;
    Ok(())
}
