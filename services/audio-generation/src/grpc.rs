//! The `sonora.audio.v1.AudioGeneration` gRPC API: requests are checked here, at the edge, and
//! each store error maps once to a status. The tenant always comes from the internal token.

use chrono::Utc;
use database::{Database, DatabaseError};
use futures::StreamExt as _;
use ids::JobId;
use internal_rpc::caller;
use sonora_proto::audio::v1::{self as pb, audio_generation_server::AudioGeneration};
use tonic::{Request, Response, Status};

use crate::{
    completion,
    config::{FinishSettings, WorkSettings},
    events,
    jobs::{self, Job, JobStatus, JobType, JobsError, NewJob},
    replicate::{Prediction, Replicate},
};

/// The longest prompt accepted.
pub const MAX_PROMPT_CHARS: usize = 2000;
/// Sound effects: 0.5 s to 47 s (the longest stable-audio-open makes).
pub const SOUND_EFFECT_SECONDS: (f64, f64) = (0.5, 47.0);
/// Background music: 1 s to 300 s.
pub const MUSIC_SECONDS: (f64, f64) = (1.0, 300.0);
/// Reading speed for a text's reading time, and its bounds.
const WORDS_PER_MINUTE: f64 = 150.0;
const READING_SECONDS: (f64, f64) = (5.0, 300.0);

impl From<JobsError> for Status {
    fn from(error: JobsError) -> Self {
        match error {
            JobsError::Database(DatabaseError::Timeout(_) | DatabaseError::Connect(_)) => {
                tracing::warn!(%error, "database unavailable");
                Status::unavailable("the database is not reachable; retry later")
            }
            other => {
                tracing::error!(error = %other, "jobs store failure");
                Status::internal("internal error; it has been logged")
            }
        }
    }
}

fn invalid(field: &str, problem: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {problem}"))
}

fn prompt(text: &str) -> Result<String, Status> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(invalid("prompt", "is required"));
    }
    if trimmed.chars().count() > MAX_PROMPT_CHARS {
        return Err(invalid(
            "prompt",
            format!("must be at most {MAX_PROMPT_CHARS} characters"),
        ));
    }
    if trimmed
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(invalid("prompt", "must not contain control characters"));
    }
    Ok(trimmed.to_owned())
}

fn seconds(field: &str, value: f64, (min, max): (f64, f64)) -> Result<f64, Status> {
    if !value.is_finite() || value < min || value > max {
        return Err(invalid(field, format!("must be between {min} and {max}")));
    }
    Ok(value)
}

/// The duration a text's reading time sets: words at 150 a minute, within 5 s and 300 s.
pub fn reading_seconds(text: &str) -> f64 {
    let words = text.split_whitespace().count() as f64;
    (words / WORDS_PER_MINUTE * 60.0)
        .ceil()
        .clamp(READING_SECONDS.0, READING_SECONDS.1)
}

fn job_id(field: &str, text: &str) -> Result<JobId, Status> {
    JobId::parse(text).map_err(|e| invalid(field, e))
}

fn millis(t: chrono::DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn audio_to_proto(job: &Job, audio: &jobs::StoredAudio) -> pb::Audio {
    pb::Audio {
        format: audio.format.clone(),
        content_type: events::content_type(&audio.format).to_owned(),
        size_bytes: audio.size,
        duration_seconds: audio.duration_seconds,
        sha256: audio.sha256.clone(),
        path: events::audio_path(job),
    }
}

fn to_proto(job: Job) -> pb::Job {
    let audio = job.audio.as_ref().map(|audio| audio_to_proto(&job, audio));
    pb::Job {
        id: job.id.to_string(),
        r#type: match job.job_type {
            JobType::SoundEffect => pb::JobType::SoundEffect,
            JobType::BackgroundMusic => pb::JobType::BackgroundMusic,
        }
        .into(),
        status: match job.status {
            JobStatus::Queued => pb::JobStatus::Queued,
            JobStatus::Submitted => pb::JobStatus::Submitted,
            JobStatus::Succeeded => pb::JobStatus::Succeeded,
            JobStatus::Failed => pb::JobStatus::Failed,
            JobStatus::Canceled => pb::JobStatus::Canceled,
            JobStatus::Processing => pb::JobStatus::Processing,
        }
        .into(),
        prompt: job.prompt,
        duration_seconds: job.duration_seconds,
        error: job.error.unwrap_or_default(),
        created_at_unix_ms: millis(job.created_at),
        updated_at_unix_ms: millis(job.updated_at),
        audio,
        prediction_id: job.prediction_id.unwrap_or_default(),
        submitted_at_unix_ms: job.submitted_at.map_or(0, millis),
        completed_at_unix_ms: job.completed_at.map_or(0, millis),
        finished_at_unix_ms: job.finished_at.map_or(0, millis),
        event_id: job.event_id.map(|id| id.to_string()).unwrap_or_default(),
    }
}

/// The service.
pub struct AudioApi {
    pub database: Database,
    pub store: blob_store::BlobStore,
    pub replicate: Replicate,
    pub work: WorkSettings,
    pub finish: FinishSettings,
}

impl AudioApi {
    /// Calls that arrive before the schema exists get a retryable answer.
    fn ready(&self) -> Result<(), Status> {
        if self.database.is_migrated() {
            Ok(())
        } else {
            Err(Status::unavailable(
                "starting: the database migrations are being applied; retry shortly",
            ))
        }
    }

    async fn create(&self, job: NewJob) -> Result<Response<pb::Job>, Status> {
        let created = jobs::create(self.database.pool(), &job, Utc::now()).await?;
        tracing::info!(job_id = %created.id, job_type = job.job_type.as_str(), "job queued");
        Ok(Response::new(to_proto(created)))
    }
}

#[tonic::async_trait]
impl AudioGeneration for AudioApi {
    async fn create_sound_effect(
        &self,
        request: Request<pb::CreateSoundEffectRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        self.ready()?;
        let tenant = caller(&request)?.tenant("")?;
        let r = request.into_inner();
        self.create(NewJob {
            tenant,
            job_type: JobType::SoundEffect,
            prompt: prompt(&r.prompt)?,
            duration_seconds: seconds(
                "duration_seconds",
                r.duration_seconds,
                SOUND_EFFECT_SECONDS,
            )?,
            seed: r.seed,
            volume_level: Some(self.work.sound_effects_volume_level),
            traceparent: telemetry::propagation::current_traceparent(),
        })
        .await
    }

    async fn create_background_music(
        &self,
        request: Request<pb::CreateBackgroundMusicRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        self.ready()?;
        let tenant = caller(&request)?.tenant("")?;
        let r = request.into_inner();
        let (given, text) = (r.duration_seconds != 0.0, r.text.trim());
        let duration_seconds = match (given, text.is_empty()) {
            (false, true) => {
                return Err(invalid(
                    "duration_seconds",
                    "is required unless text is given",
                ));
            }
            (true, true) => seconds("duration_seconds", r.duration_seconds, MUSIC_SECONDS)?,
            (false, false) => reading_seconds(text),
            (true, false) => {
                return Err(invalid(
                    "text",
                    "sets the duration: give either duration_seconds or text, not both",
                ));
            }
        };
        self.create(NewJob {
            tenant,
            job_type: JobType::BackgroundMusic,
            prompt: prompt(&r.prompt)?,
            duration_seconds,
            seed: None,
            volume_level: None,
            traceparent: telemetry::propagation::current_traceparent(),
        })
        .await
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        self.ready()?;
        let tenant = caller(&request)?.tenant("")?;
        let id = job_id("id", &request.get_ref().id)?;
        let job = jobs::get(self.database.pool(), &tenant, id)
            .await?
            .ok_or_else(|| Status::not_found("no such job for this tenant"))?;
        Ok(Response::new(to_proto(job)))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        self.ready()?;
        let tenant = caller(&request)?.tenant("")?;
        let r = request.into_inner();
        let job_type =
            match pb::JobType::try_from(r.r#type).map_err(|_| invalid("type", "is unknown"))? {
                pb::JobType::Unspecified => None,
                pb::JobType::SoundEffect => Some(JobType::SoundEffect),
                pb::JobType::BackgroundMusic => Some(JobType::BackgroundMusic),
            };
        let status =
            match pb::JobStatus::try_from(r.status).map_err(|_| invalid("status", "is unknown"))? {
                pb::JobStatus::Unspecified => None,
                pb::JobStatus::Queued => Some(JobStatus::Queued),
                pb::JobStatus::Submitted => Some(JobStatus::Submitted),
                pb::JobStatus::Succeeded => Some(JobStatus::Succeeded),
                pb::JobStatus::Failed => Some(JobStatus::Failed),
                pb::JobStatus::Canceled => Some(JobStatus::Canceled),
                pb::JobStatus::Processing => Some(JobStatus::Processing),
            };
        let page_size = match r.page_size {
            0 => 100,
            1..=500 => r.page_size,
            _ => return Err(invalid("page_size", "must be at most 500")),
        };
        let before = (!r.page_token.is_empty())
            .then(|| {
                JobId::parse(&r.page_token)
                    .map_err(|_| invalid("page_token", "is not a token this API gave out"))
            })
            .transpose()?;
        let time = |field: &str, ms: Option<i64>| {
            ms.map(|ms| {
                chrono::DateTime::from_timestamp_millis(ms)
                    .ok_or_else(|| invalid(field, "is not a time"))
            })
            .transpose()
        };
        let created = (
            time("created_after_unix_ms", r.created_after_unix_ms)?,
            time("created_before_unix_ms", r.created_before_unix_ms)?,
        );
        let found = jobs::list(
            self.database.pool(),
            &tenant,
            job_type,
            status,
            before,
            created,
            i64::from(page_size),
        )
        .await?;
        let next_page_token = match found.last() {
            Some(last) if found.len() == usize::try_from(page_size).unwrap_or(usize::MAX) => {
                last.id.to_string()
            }
            _ => String::new(),
        };
        Ok(Response::new(pb::ListJobsResponse {
            jobs: found.into_iter().map(to_proto).collect(),
            next_page_token,
        }))
    }

    async fn job_exists(
        &self,
        request: Request<pb::JobExistsRequest>,
    ) -> Result<Response<pb::JobExistsResponse>, Status> {
        self.ready()?;
        // A path segment that cannot be a job id names no job.
        let job = match JobId::parse(&request.get_ref().id) {
            Ok(id) => jobs::get_any(self.database.pool(), id).await?,
            Err(_) => None,
        };
        Ok(Response::new(pb::JobExistsResponse {
            exists: job.is_some(),
            traceparent: job.and_then(|j| j.traceparent).unwrap_or_default(),
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        self.ready()?;
        let tenant = caller(&request)?.tenant("")?;
        let id = job_id("id", &request.get_ref().id)?;
        let pool = self.database.pool();
        let job = jobs::get(pool, &tenant, id)
            .await?
            .ok_or_else(|| Status::not_found("no such job for this tenant"))?;
        if job.status.is_final() {
            return Ok(Response::new(to_proto(job)));
        }
        // Marked first, so that a submitter creating the prediction right now cancels it.
        jobs::request_cancel(pool, id).await?;
        completion::fail(
            pool,
            &job,
            JobStatus::Canceled,
            "canceled by the client",
            None,
            Utc::now(),
        )
        .await?;
        if let Some(prediction_id) = &job.prediction_id
            && job.status == JobStatus::Submitted
        {
            // Best effort: the job is canceled either way, and Replicate's webhook for the
            // canceled prediction then changes nothing.
            if let Err(error) = self.replicate.cancel(prediction_id).await {
                tracing::warn!(job_id = %id, %error, "cannot cancel the prediction on Replicate");
            }
        }
        tracing::info!(job_id = %id, "job canceled");
        let job = jobs::get(pool, &tenant, id)
            .await?
            .ok_or_else(|| Status::not_found("no such job for this tenant"))?;
        Ok(Response::new(to_proto(job)))
    }

    async fn complete_prediction(
        &self,
        request: Request<pb::CompletePredictionRequest>,
    ) -> Result<Response<pb::CompletePredictionResponse>, Status> {
        self.ready()?;
        let r = request.into_inner();
        let prediction = Prediction::parse(&r.prediction).map_err(|e| invalid("prediction", e))?;
        let content_type = JobType::parse(&r.content_type)
            .ok_or_else(|| invalid("content_type", "must be sound_effect or background_music"))?;
        // An id that cannot be a job's names no job.
        let Ok(id) = JobId::parse(&r.job_id) else {
            return Err(Status::not_found("the job does not exist"));
        };
        let pool = self.database.pool();
        let job = jobs::get_any(pool, id)
            .await?
            .ok_or_else(|| Status::not_found("the job does not exist"))?;
        if job.job_type != content_type {
            return Err(invalid(
                "content_type",
                format!("the job is a {}", job.job_type.as_str()),
            ));
        }
        let changed =
            completion::complete(pool, &job, &prediction, &self.finish, Utc::now()).await?;
        let job = jobs::get_any(pool, id)
            .await?
            .ok_or_else(|| Status::not_found("the job does not exist"))?;
        Ok(Response::new(pb::CompletePredictionResponse {
            job: Some(to_proto(job)),
            changed,
        }))
    }

    type ReadAudioStream = std::pin::Pin<
        Box<dyn tokio_stream::Stream<Item = Result<pb::AudioChunk, Status>> + Send + 'static>,
    >;

    async fn read_audio(
        &self,
        request: Request<pb::ReadAudioRequest>,
    ) -> Result<Response<Self::ReadAudioStream>, Status> {
        self.ready()?;
        let tenant = caller(&request)?.tenant("")?;
        let r = request.into_inner();
        let id = job_id("id", &r.id)?;
        let job = jobs::get(self.database.pool(), &tenant, id)
            .await?
            .ok_or_else(|| Status::not_found("no such job for this tenant"))?;
        let Some(audio) = job.audio.as_ref() else {
            return Err(Status::not_found(format!(
                "the job has no audio: it is {}",
                job.status.as_str()
            )));
        };
        let range = match (r.range_start, r.range_end) {
            (None, None) => None,
            (Some(start), end) => Some((start, end)),
            (None, Some(_)) => return Err(invalid("range_end", "needs range_start")),
        };
        let blob = self.store.get(&audio.key, range).await.map_err(|e| match e {
            blob_store::StoreError::RangeNotSatisfiable { size } => Status::out_of_range(format!(
                "range_start: the audio has {size} bytes"
            )),
            blob_store::StoreError::InvalidRange => {
                invalid("range_end", "must not be before range_start")
            }
            blob_store::StoreError::NotFound { .. } => {
                tracing::error!(job_id = %id, "a succeeded job's audio is missing from the store");
                Status::internal("the job's audio is missing; it has been logged")
            }
            other => {
                tracing::warn!(job_id = %id, error = %other, "cannot read audio");
                Status::unavailable("the audio storage is not reachable; retry later")
            }
        })?;
        let mut first = Some(pb::AudioChunk {
            audio: Some(audio_to_proto(&job, audio)),
            range_start: blob.range.0,
            range_end: blob.range.1,
            data: Vec::new(),
        });
        let chunks = blob.stream.map(move |chunk| {
            let data = chunk.map_err(|e| {
                tracing::warn!(error = %e, "reading audio broke off");
                Status::unavailable("reading the audio broke off; retry")
            })?;
            let mut message = first.take().unwrap_or_default();
            message.data = data.to_vec();
            Ok(message)
        });
        // An empty object still sends its metadata.
        Ok(Response::new(Box::pin(chunks)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_texts_reading_time_sets_the_duration() {
        assert_eq!(reading_seconds("one two"), 5.0);
        assert_eq!(reading_seconds(&"word ".repeat(150)), 60.0);
        assert_eq!(reading_seconds(&"word ".repeat(151)), 61.0);
        assert_eq!(reading_seconds(&"word ".repeat(100_000)), 300.0);
    }

    #[test]
    fn bounds_name_the_field() {
        for bad in [f64::NAN, f64::INFINITY, 0.1, 48.0, -1.0] {
            let status = seconds("duration_seconds", bad, SOUND_EFFECT_SECONDS).unwrap_err();
            assert_eq!(
                status.message(),
                "duration_seconds: must be between 0.5 and 47"
            );
        }
        assert!(prompt("  ").is_err());
        assert!(prompt("rain\u{0}").is_err());
        assert_eq!(prompt(" rain on a roof ").unwrap(), "rain on a roof");
        assert!(prompt(&"x".repeat(2001)).is_err());
    }
}
