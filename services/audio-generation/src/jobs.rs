//! The jobs table: SQL only.

use chrono::{DateTime, Utc};
use database::{DatabaseError, Pool};
use diesel::{
    QueryableByName,
    sql_types::{BigInt, Double, Nullable, Text, Timestamptz},
};
use diesel_async::RunQueryDsl as _;
use ids::{JobId, Tenant};

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
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Submitted => "submitted",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Queued,
            Self::Submitted,
            Self::Succeeded,
            Self::Failed,
            Self::Canceled,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error(transparent)]
    Database(#[from] DatabaseError),
    #[error("a stored job has an unknown {0}")]
    Corrupt(&'static str),
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
    job_type: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Text)]
    prompt: String,
    #[diesel(sql_type = Double)]
    duration_seconds: f64,
    #[diesel(sql_type = Nullable<Text>)]
    error: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    created_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    updated_at: DateTime<Utc>,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: JobId,
    pub job_type: JobType,
    pub status: JobStatus,
    pub prompt: String,
    pub duration_seconds: f64,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl TryFrom<Row> for Job {
    type Error = JobsError;

    fn try_from(row: Row) -> Result<Self, JobsError> {
        Ok(Self {
            id: row.id,
            job_type: JobType::parse(&row.job_type).ok_or(JobsError::Corrupt("type"))?,
            status: JobStatus::parse(&row.status).ok_or(JobsError::Corrupt("status"))?,
            prompt: row.prompt,
            duration_seconds: row.duration_seconds,
            error: row.error,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// A job to record, already checked.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub tenant: Tenant,
    pub job_type: JobType,
    pub prompt: String,
    pub duration_seconds: f64,
    pub seed: Option<i64>,
}

const COLUMNS: &str =
    "id, job_type, status, prompt, duration_seconds, error, created_at, updated_at";

/// Records a queued job.
pub async fn create(pool: &Pool, job: &NewJob, now: DateTime<Utc>) -> Result<Job, JobsError> {
    let mut conn = database::get(pool).await?;
    let row: Row = diesel::sql_query(format!(
        "INSERT INTO jobs (id, tenant, job_type, status, prompt, duration_seconds, seed, created_at, updated_at) \
         VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $7) RETURNING {COLUMNS}"
    ))
    .bind::<Text, _>(JobId::new())
    .bind::<Text, _>(&job.tenant)
    .bind::<Text, _>(job.job_type.as_str())
    .bind::<Text, _>(&job.prompt)
    .bind::<Double, _>(job.duration_seconds)
    .bind::<Nullable<BigInt>, _>(job.seed)
    .bind::<Timestamptz, _>(now)
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
    rows.into_iter().next().map(Job::try_from).transpose()
}

/// `tenant`'s jobs, newest first, before `before` when given.
pub async fn list(
    pool: &Pool,
    tenant: &Tenant,
    job_type: Option<JobType>,
    status: Option<JobStatus>,
    before: Option<JobId>,
    limit: i64,
) -> Result<Vec<Job>, JobsError> {
    let mut conn = database::get(pool).await?;
    let rows: Vec<Row> = diesel::sql_query(format!(
        "SELECT {COLUMNS} FROM jobs WHERE tenant = $1 \
           AND ($2::text IS NULL OR job_type = $2) AND ($3::text IS NULL OR status = $3) \
           AND ($4::text IS NULL OR id < $4) \
         ORDER BY id DESC LIMIT $5"
    ))
    .bind::<Text, _>(tenant)
    .bind::<Nullable<Text>, _>(job_type.map(JobType::as_str))
    .bind::<Nullable<Text>, _>(status.map(JobStatus::as_str))
    .bind::<Nullable<Text>, _>(before)
    .bind::<BigInt, _>(limit)
    .load(&mut conn)
    .await?;
    rows.into_iter().map(Job::try_from).collect()
}

/// Whether a job exists, whatever its tenant.
pub async fn exists(pool: &Pool, id: JobId) -> Result<bool, JobsError> {
    #[derive(QueryableByName)]
    struct Found {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        found: bool,
    }
    let mut conn = database::get(pool).await?;
    let found: Found =
        diesel::sql_query("SELECT EXISTS (SELECT 1 FROM jobs WHERE id = $1) AS found")
            .bind::<Text, _>(id)
            .get_result(&mut conn)
            .await?;
    Ok(found.found)
}
