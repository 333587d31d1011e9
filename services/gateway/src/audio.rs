//! Sound effects and background music, proxied to audio-generation for the caller's tenant
//! (`audio` scope): create (202 with the job), read and list jobs, cancel, and download the
//! audio with HTTP range requests. Also `GET /v1/event-types`, the catalogue of the events
//! partners receive.

use actix_web::{
    HttpRequest, HttpResponse,
    http::{StatusCode, header},
    web,
};
use chrono::{DateTime, Utc};
use http_problem::Problem;
use internal_rpc::{PeerChannel, Scope, on_behalf};
use serde::{Deserialize, Serialize};
use sonora_proto::audio::v1::{self as pb, audio_generation_client::AudioGenerationClient};
use utoipa::{IntoParams, ToSchema};

use crate::{
    auth::Caller,
    openapi::{self, AudioBytes, tag},
    routes::resource,
    usage::{Counts, Meter},
};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/sound-effects", "POST").route(web::post().to(create_sound_effect)))
        .service(
            resource("/v1/background-music", "POST").route(web::post().to(create_background_music)),
        )
        .service(resource("/v1/audio-jobs", "GET").route(web::get().to(list_jobs)))
        .service(
            resource("/v1/audio-jobs/{id}", "GET, DELETE")
                .route(web::get().to(get_job))
                .route(web::delete().to(cancel_job)),
        )
        .service(resource("/v1/audio-jobs/{id}/audio", "GET").route(web::get().to(read_audio)))
        .service(resource("/v1/event-types", "GET").route(web::get().to(event_types)));
}

type Client = AudioGenerationClient<PeerChannel>;

/// Maps audio-generation's answer to the client's problem; its own words go to the client only
/// for refusals of the request itself.
fn problem(status: &tonic::Status) -> Problem {
    match status.code() {
        tonic::Code::InvalidArgument => Problem::invalid_request(status.message()),
        tonic::Code::NotFound => {
            Problem::not_found().detail("No audio job with this id exists for this tenant.")
        }
        tonic::Code::OutOfRange => Problem::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "range-not-satisfiable",
            "Range Not Satisfiable",
        )
        .detail(status.message()),
        _ if internal_rpc::client::unreachable(status) => {
            tracing::warn!(code = ?status.code(), message = status.message(), "audio-generation unavailable");
            Problem::unavailable("The audio service is not available right now; retry later.")
                .retry_after(5)
        }
        _ => {
            tracing::warn!(code = ?status.code(), message = status.message(), "audio-generation failed");
            Problem::bad_gateway("The audio service failed to answer; it has been logged.")
        }
    }
}

/// A job's audio, once it has succeeded.
#[derive(Serialize, ToSchema)]
#[schema(as = JobAudio)]
struct AudioBody {
    /// `mp3`, `wav` or `flac`.
    format: String,
    content_type: String,
    size_bytes: u64,
    duration_seconds: f64,
    sha256: String,
    /// Where to download it.
    url: String,
}

#[derive(Serialize, ToSchema)]
#[schema(as = AudioJob)]
struct JobBody {
    id: String,
    /// `sound_effect` or `background_music`.
    #[serde(rename = "type")]
    job_type: &'static str,
    /// `queued`, `submitted`, `processing`, `succeeded`, `failed` or `canceled`.
    status: &'static str,
    prompt: String,
    duration_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prediction_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    audio: Option<AudioBody>,
    created_at: Option<DateTime<Utc>>,
    updated_at: Option<DateTime<Utc>>,
    /// When the job was submitted to the model; absent until then.
    #[serde(skip_serializing_if = "Option::is_none")]
    submitted_at: Option<DateTime<Utc>>,
    /// When the model's answer arrived (its webhook, or a later check); absent until then.
    #[serde(skip_serializing_if = "Option::is_none")]
    completed_at: Option<DateTime<Utc>>,
    /// When the job ended: its audio stored, or failed or canceled.
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_at: Option<DateTime<Utc>>,
    /// The event the job ended with (`evt_…`): delivery-worker's event id for the message
    /// partners receive.
    #[serde(skip_serializing_if = "Option::is_none")]
    event_id: Option<String>,
}

/// A time the backend sends as Unix milliseconds, 0 for "not yet".
fn moment(unix_ms: i64) -> Option<DateTime<Utc>> {
    (unix_ms != 0)
        .then(|| DateTime::from_timestamp_millis(unix_ms))
        .flatten()
}

fn type_name(job_type: pb::JobType) -> &'static str {
    match job_type {
        pb::JobType::SoundEffect => "sound_effect",
        pb::JobType::BackgroundMusic => "background_music",
        pb::JobType::Unspecified => "unknown",
    }
}

fn status_name(status: pb::JobStatus) -> &'static str {
    match status {
        pb::JobStatus::Queued => "queued",
        pb::JobStatus::Submitted => "submitted",
        pb::JobStatus::Processing => "processing",
        pb::JobStatus::Succeeded => "succeeded",
        pb::JobStatus::Failed => "failed",
        pb::JobStatus::Canceled => "canceled",
        pb::JobStatus::Unspecified => "unknown",
    }
}

impl From<pb::Job> for JobBody {
    fn from(job: pb::Job) -> Self {
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        Self {
            job_type: type_name(job.r#type()),
            status: status_name(job.status()),
            audio: job.audio.map(|a| AudioBody {
                format: a.format,
                content_type: a.content_type,
                size_bytes: a.size_bytes,
                duration_seconds: a.duration_seconds,
                sha256: a.sha256,
                url: format!("/v1/audio-jobs/{}/audio", job.id),
            }),
            id: job.id,
            prompt: job.prompt,
            duration_seconds: job.duration_seconds,
            error: non_empty(job.error),
            prediction_id: non_empty(job.prediction_id),
            created_at: DateTime::from_timestamp_millis(job.created_at_unix_ms),
            updated_at: DateTime::from_timestamp_millis(job.updated_at_unix_ms),
            submitted_at: moment(job.submitted_at_unix_ms),
            completed_at: moment(job.completed_at_unix_ms),
            finished_at: moment(job.finished_at_unix_ms),
            event_id: non_empty(job.event_id),
        }
    }
}

fn accepted(job: pb::Job) -> HttpResponse {
    let location = format!("/v1/audio-jobs/{}", job.id);
    HttpResponse::Accepted()
        .insert_header((header::LOCATION, location))
        .json(JobBody::from(job))
}

#[derive(Deserialize, ToSchema)]
#[schema(as = CreateSoundEffect)]
#[serde(deny_unknown_fields)]
struct SoundEffectBody {
    /// What to hear, at most 2,000 characters.
    prompt: String,
    /// 0.5 to 47 seconds (`duration` is accepted too).
    #[serde(alias = "duration")]
    duration_seconds: f64,
    #[serde(default)]
    seed: Option<i64>,
}

/// A sound effect, made as a job.
///
/// 202 with the queued job and its `Location`; the audio is read once the job has succeeded.
#[utoipa::path(
    post,
    path = "/v1/sound-effects",
    tag = tag::AUDIO_JOBS,
    request_body = SoundEffectBody,
    responses(
        (status = 202, description = "The queued job.", body = JobBody,
            headers(("Location" = String, description = "The job: `/v1/audio-jobs/{id}`."))),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 502, response = openapi::BadGateway),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
async fn create_sound_effect(
    caller: Caller,
    client: web::Data<Client>,
    meter: web::Data<Meter>,
    body: http_problem::JsonObject<SoundEffectBody>,
) -> Result<HttpResponse, Problem> {
    let principal = caller.require(Scope::Audio)?.principal();
    let body = body.0;
    let job = client
        .get_ref()
        .clone()
        .create_sound_effect(on_behalf(
            pb::CreateSoundEffectRequest {
                prompt: body.prompt,
                duration_seconds: body.duration_seconds,
                seed: body.seed,
            },
            &principal,
        ))
        .await
        .map_err(|s| problem(&s))?
        .into_inner();
    meter.record(
        &caller.0,
        Counts {
            jobs: 1,
            ..Counts::default()
        },
    );
    Ok(accepted(job))
}

#[derive(Deserialize, ToSchema)]
#[schema(as = CreateBackgroundMusic)]
#[serde(deny_unknown_fields)]
struct MusicBody {
    /// What to hear.
    prompt: String,
    /// 1 to 300 seconds (`duration` is accepted too); when absent, the reading time of `text`.
    #[serde(default, alias = "duration")]
    duration_seconds: Option<f64>,
    /// A text the music goes under: its reading time at 150 words a minute (5 to 300 s) sets the
    /// duration when none is given.
    #[serde(default)]
    text: Option<String>,
}

/// Background music, made as a job.
///
/// 202 with the queued job and its `Location`; the duration is given, or set by the reading time
/// of `text`.
#[utoipa::path(
    post,
    path = "/v1/background-music",
    tag = tag::AUDIO_JOBS,
    request_body = MusicBody,
    responses(
        (status = 202, description = "The queued job.", body = JobBody,
            headers(("Location" = String, description = "The job: `/v1/audio-jobs/{id}`."))),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 502, response = openapi::BadGateway),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
async fn create_background_music(
    caller: Caller,
    client: web::Data<Client>,
    meter: web::Data<Meter>,
    body: http_problem::JsonObject<MusicBody>,
) -> Result<HttpResponse, Problem> {
    let principal = caller.require(Scope::Audio)?.principal();
    let body = body.0;
    if body.duration_seconds == Some(0.0) {
        return Err(Problem::invalid_request(
            "duration_seconds: must be between 1 and 300",
        ));
    }
    let job = client
        .get_ref()
        .clone()
        .create_background_music(on_behalf(
            pb::CreateBackgroundMusicRequest {
                prompt: body.prompt,
                duration_seconds: body.duration_seconds.unwrap_or(0.0),
                text: body.text.unwrap_or_default(),
            },
            &principal,
        ))
        .await
        .map_err(|s| problem(&s))?
        .into_inner();
    meter.record(
        &caller.0,
        Counts {
            jobs: 1,
            ..Counts::default()
        },
    );
    Ok(accepted(job))
}

/// One audio job.
///
/// Its type, status, prompt, duration, error, and once it has succeeded its `audio`.
#[utoipa::path(
    get,
    path = "/v1/audio-jobs/{id}",
    tag = tag::AUDIO_JOBS,
    params(("id" = String, Path, description = "The job's id.")),
    responses(
        (status = 200, description = "The job.", body = JobBody),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 502, response = openapi::BadGateway),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
async fn get_job(
    caller: Caller,
    client: web::Data<Client>,
    id: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let principal = caller.require(Scope::Audio)?.principal();
    let job = client
        .get_ref()
        .clone()
        .get_job(on_behalf(
            pb::GetJobRequest {
                id: id.into_inner(),
            },
            &principal,
        ))
        .await
        .map_err(|s| problem(&s))?
        .into_inner();
    Ok(HttpResponse::Ok().json(JobBody::from(job)))
}

/// Cancels an audio job.
///
/// A job that has finished is returned as it is.
#[utoipa::path(
    delete,
    path = "/v1/audio-jobs/{id}",
    tag = tag::AUDIO_JOBS,
    params(("id" = String, Path, description = "The job's id.")),
    responses(
        (status = 200, description = "The job, canceled unless it had finished.", body = JobBody),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 502, response = openapi::BadGateway),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
async fn cancel_job(
    caller: Caller,
    client: web::Data<Client>,
    id: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let principal = caller.require(Scope::Audio)?.principal();
    let job = client
        .get_ref()
        .clone()
        .cancel_job(on_behalf(
            pb::CancelJobRequest {
                id: id.into_inner(),
            },
            &principal,
        ))
        .await
        .map_err(|s| problem(&s))?
        .into_inner();
    Ok(HttpResponse::Ok().json(JobBody::from(job)))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    /// `sound_effect` or `background_music`.
    #[serde(default, rename = "type")]
    job_type: Option<String>,
    /// `queued`, `submitted`, `processing`, `succeeded`, `failed` or `canceled`.
    #[serde(default)]
    status: Option<String>,
    /// 1 to 500.
    #[serde(default)]
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// The last page's `next_cursor`.
    #[serde(default)]
    cursor: Option<String>,
    /// Jobs created at or after this time (RFC 3339).
    #[serde(default)]
    created_after: Option<DateTime<Utc>>,
    /// Jobs created before this time (RFC 3339).
    #[serde(default)]
    created_before: Option<DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = AudioJobs)]
struct ListBody {
    jobs: Vec<JobBody>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// The tenant's audio jobs, newest first.
///
/// Filtered by type, status and creation time, a page at a time.
#[utoipa::path(
    get,
    path = "/v1/audio-jobs",
    tag = tag::AUDIO_JOBS,
    params(ListQuery),
    responses(
        (status = 200, description = "A page of jobs.", body = ListBody),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 502, response = openapi::BadGateway),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
pub(crate) async fn list_jobs(
    caller: Caller,
    client: web::Data<Client>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, Problem> {
    let principal = caller.require(Scope::Audio)?.principal();
    let query = query.into_inner();
    let job_type = match query.job_type.as_deref() {
        None => pb::JobType::Unspecified,
        Some("sound_effect") => pb::JobType::SoundEffect,
        Some("background_music") => pb::JobType::BackgroundMusic,
        Some(_) => {
            return Err(Problem::invalid_request(
                "type must be sound_effect or background_music",
            ));
        }
    };
    let status = match query.status.as_deref() {
        None => pb::JobStatus::Unspecified,
        Some("queued") => pb::JobStatus::Queued,
        Some("submitted") => pb::JobStatus::Submitted,
        Some("processing") => pb::JobStatus::Processing,
        Some("succeeded") => pb::JobStatus::Succeeded,
        Some("failed") => pb::JobStatus::Failed,
        Some("canceled") => pb::JobStatus::Canceled,
        Some(_) => {
            return Err(Problem::invalid_request(
                "status must be one of queued, submitted, processing, succeeded, failed, canceled",
            ));
        }
    };
    if query.limit.is_some_and(|l| !(1..=500).contains(&l)) {
        return Err(Problem::invalid_request("limit must be between 1 and 500"));
    }
    let page = client
        .get_ref()
        .clone()
        .list_jobs(on_behalf(
            pb::ListJobsRequest {
                r#type: job_type.into(),
                status: status.into(),
                page_size: query.limit.unwrap_or(0),
                page_token: query.cursor.unwrap_or_default(),
                created_after_unix_ms: query.created_after.map(|t| t.timestamp_millis()),
                created_before_unix_ms: query.created_before.map(|t| t.timestamp_millis()),
            },
            &principal,
        ))
        .await
        .map_err(|s| match s.code() {
            tonic::Code::InvalidArgument if s.message().starts_with("page_token") => {
                Problem::invalid_request("cursor is not one this API gave out")
            }
            _ => problem(&s),
        })?
        .into_inner();
    Ok(HttpResponse::Ok().json(ListBody {
        jobs: page.jobs.into_iter().map(JobBody::from).collect(),
        next_cursor: (!page.next_page_token.is_empty()).then_some(page.next_page_token),
    }))
}

/// The first and last byte asked for; either may be open (`bytes=500-`, `bytes=-500`).
type ByteRange = (Option<u64>, Option<u64>);

/// A single `Range: bytes=…` request, or `None` for anything this server does not serve
/// partially (several ranges, other units), which gets the whole file.
fn byte_range(req: &HttpRequest) -> Result<Option<ByteRange>, Problem> {
    let Some(value) = req.headers().get(header::RANGE) else {
        return Ok(None);
    };
    let Some(spec) = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().strip_prefix("bytes="))
    else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let invalid =
        || Problem::invalid_request("Range must be bytes=first-last, bytes=first- or bytes=-count");
    let (first, last) = spec.split_once('-').ok_or_else(invalid)?;
    let number = |text: &str| -> Result<Option<u64>, Problem> {
        let text = text.trim();
        if text.is_empty() {
            Ok(None)
        } else {
            text.parse().map(Some).map_err(|_| invalid())
        }
    };
    match (number(first)?, number(last)?) {
        (None, None) => Err(invalid()),
        (Some(first), Some(last)) if last < first => Err(invalid()),
        range => Ok(Some(range)),
    }
}

fn unsatisfiable(size: u64) -> HttpResponse {
    let mut response = Problem::new(
        StatusCode::RANGE_NOT_SATISFIABLE,
        "range-not-satisfiable",
        "Range Not Satisfiable",
    )
    .detail(format!("The audio has {size} bytes."))
    .to_response();
    if let Ok(value) = header::HeaderValue::from_str(&format!("bytes */{size}")) {
        response.headers_mut().insert(header::CONTENT_RANGE, value);
    }
    response
}

/// A job's audio file.
///
/// Whole (200), or one byte range (206 with `Content-Range`) for `Range: bytes=first-last`,
/// `bytes=first-` or `bytes=-count`; a range beyond the end is 416 with
/// `Content-Range: bytes */size`, and several ranges get the whole file.
#[utoipa::path(
    get,
    path = "/v1/audio-jobs/{id}/audio",
    tag = tag::AUDIO_JOBS,
    params(
        ("id" = String, Path, description = "The job's id."),
        ("Range" = Option<String>, Header, description = "One byte range: `bytes=first-last`, `bytes=first-` or `bytes=-count`."),
    ),
    responses(
        (status = 200, description = "The whole file.",
            headers(
                ("Accept-Ranges" = String, description = "`bytes`."),
                ("ETag" = String, description = "The file's SHA-256."),
            ),
            content(
                (AudioBytes = "audio/mpeg"),
                (AudioBytes = "audio/wav"),
                (AudioBytes = "audio/flac"),
            )),
        (status = 206, description = "The byte range asked for.",
            headers(
                ("Content-Range" = String, description = "`bytes first-last/size`."),
                ("ETag" = String, description = "The file's SHA-256."),
            ),
            content(
                (AudioBytes = "audio/mpeg"),
                (AudioBytes = "audio/wav"),
                (AudioBytes = "audio/flac"),
            )),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 416, description = "The range starts beyond the end of the file.",
            body = openapi::ProblemSchema, content_type = "application/problem+json",
            headers(("Content-Range" = String, description = "`bytes */size`."))),
        (status = 502, response = openapi::BadGateway),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
async fn read_audio(
    req: HttpRequest,
    caller: Caller,
    client: web::Data<Client>,
    id: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let principal = caller.require(Scope::Audio)?.principal();
    let id = id.into_inner();
    let range = byte_range(&req)?;
    let mut client = client.get_ref().clone();
    // A suffix range (`bytes=-500`) needs the size first.
    let (start, end) = match range {
        None => (None, None),
        Some((Some(first), last)) => (Some(first), last),
        Some((None, Some(count))) => {
            let job = client
                .get_job(on_behalf(pb::GetJobRequest { id: id.clone() }, &principal))
                .await
                .map_err(|s| problem(&s))?
                .into_inner();
            let size = job.audio.map_or(0, |a| a.size_bytes);
            if count == 0 || size == 0 {
                return Ok(unsatisfiable(size));
            }
            (Some(size.saturating_sub(count)), None)
        }
        Some((None, None)) => (None, None),
    };
    let id_for_size = id.clone();
    let mut stream = match client
        .read_audio(on_behalf(
            pb::ReadAudioRequest {
                id,
                range_start: start,
                range_end: end,
            },
            &principal,
        ))
        .await
    {
        Ok(stream) => stream.into_inner(),
        Err(status) if status.code() == tonic::Code::OutOfRange => {
            let job = client
                .get_job(on_behalf(pb::GetJobRequest { id: id_for_size }, &principal))
                .await
                .map_err(|s| problem(&s))?
                .into_inner();
            return Ok(unsatisfiable(job.audio.map_or(0, |a| a.size_bytes)));
        }
        Err(status) => return Err(problem(&status)),
    };
    let first = stream
        .message()
        .await
        .map_err(|s| problem(&s))?
        .ok_or_else(|| Problem::bad_gateway("The audio service sent no audio."))?;
    let audio = first.audio.clone().unwrap_or_default();
    let (from, to) = (first.range_start, first.range_end);
    let length = if audio.size_bytes == 0 {
        0
    } else {
        to - from + 1
    };
    let body = crate::routes::body_of(first.data, stream, |c| c.data, "reading the audio");
    let partial = start.is_some() || end.is_some();
    let mut response = if partial {
        let mut r = HttpResponse::PartialContent();
        r.insert_header((
            header::CONTENT_RANGE,
            format!("bytes {from}-{to}/{}", audio.size_bytes),
        ));
        r
    } else {
        HttpResponse::Ok()
    };
    Ok(response
        .content_type(audio.content_type)
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header((header::CACHE_CONTROL, "private, max-age=3600"))
        .insert_header((header::ETAG, format!("\"{}\"", audio.sha256)))
        .no_chunking(length)
        .streaming(body))
}

/// The events partners can receive.
///
/// Every event type, with its JSON Schema and an example.
#[utoipa::path(
    get,
    path = "/v1/event-types",
    tag = tag::PARTNER_WEBHOOKS,
    responses(
        (status = 200, description = "`{\"event_types\": [...]}`: each type's name, JSON Schema and example.",
            body = Object),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
async fn event_types(_caller: Caller) -> HttpResponse {
    let types: Vec<serde_json::Value> = sonora_proto::events::CATALOGUE
        .iter()
        .filter_map(|(_, document)| serde_json::from_str(document).ok())
        .collect();
    HttpResponse::Ok().json(serde_json::json!({ "event_types": types }))
}
