//! `POST /api/replicate-webhook/{content_type}/{content_id}`: Replicate's completion webhooks,
//! verified (Standard Webhooks, with a timestamp tolerance Replicate's own libraries do not
//! check), stored in the inbox before they are acknowledged, and acknowledged once per
//! `webhook-id` however often Replicate retries.

use actix_web::{HttpRequest, HttpResponse, web};
use http_problem::Problem;
use prometheus::IntCounterVec;
use serde::Deserialize;
use tracing::Instrument as _;
use webhook_signature::{DEFAULT_TOLERANCE_SECS, SignedHeaders, VerifyingKey, verify};

use internal_rpc::PeerChannel;
use sonora_proto::audio::v1::{
    JobExistsRequest, JobExistsResponse, audio_generation_client::AudioGenerationClient,
};

use crate::{
    inbox::{self, NewEvent, State, Stored},
    monitor::Monitor,
    ratelimit::RateLimiter,
    replicate_secret::ReplicateSecret,
    request::{BodyLimits, header, not_stored, read_body, unauthorized, unprocessable},
};

/// What the Replicate receiver needs.
#[derive(Clone)]
pub struct ReplicateReceiver {
    pub pool: database::Pool,
    /// Replicate's signing secret, configured or fetched; without one every webhook is refused,
    /// since none can be verified.
    pub secret: ReplicateSecret,
    /// The largest body accepted (`WEBHOOK_MAX_BODY_BYTES`) and the time it may take.
    pub body: BodyLimits,
    pub received: IntCounterVec,
    /// `webhook_processing_seconds{source}`: from the request to the answer.
    pub processing: prometheus::HistogramVec,
    pub monitor: Monitor,
    pub limiter: RateLimiter,
    /// audio-generation, asked whether the job in the path exists.
    pub jobs: AudioGenerationClient<PeerChannel>,
    /// This replica's dispatcher, woken when an event is stored.
    pub wake: crate::dispatch::Waker,
}

/// How long to wait for audio-generation's answer before accepting the webhook anyway.
const JOB_LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// What audio-generation says of the job: `Some` only on its clear answer, with the trace the
/// job belongs to; `None` when it cannot answer, in which case the webhook is accepted and
/// stored (a genuine webhook is never lost; the dispatcher settles a job that turns out not to
/// exist).
async fn job_exists(
    jobs: &AudioGenerationClient<PeerChannel>,
    id: &str,
) -> Option<JobExistsResponse> {
    let mut jobs = jobs.clone();
    let asked = jobs.job_exists(JobExistsRequest { id: id.to_owned() });
    match tokio::time::timeout(JOB_LOOKUP_TIMEOUT, asked).await {
        Ok(Ok(answer)) => Some(answer.into_inner()),
        Ok(Err(status)) => {
            tracing::warn!(code = ?status.code(), "audio-generation cannot say whether the job exists; the webhook is accepted");
            None
        }
        Err(_) => {
            tracing::warn!("audio-generation did not answer in time; the webhook is accepted");
            None
        }
    }
}

/// The route, under which failures on too many distinct paths are counted.
pub(crate) const ROUTE: &str = "/api/replicate-webhook/{content_type}/{content_id}";

/// The content types Replicate's webhooks finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ContentType {
    SoundEffect,
    BackgroundMusic,
}

impl ContentType {
    fn parse(text: &str) -> Option<Self> {
        match text {
            "sound_effect" => Some(Self::SoundEffect),
            "background_music" => Some(Self::BackgroundMusic),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::SoundEffect => "sound_effect",
            Self::BackgroundMusic => "background_music",
        }
    }
}

/// The part of a prediction the inbox relies on; the rest is stored as received.
#[derive(Debug, Deserialize)]
struct Prediction {
    id: String,
    status: Status,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Status {
    Starting,
    Processing,
    Succeeded,
    Failed,
    Canceled,
    Aborted,
}

impl Status {
    fn as_str(&self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Processing => "processing",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
            Self::Aborted => "aborted",
        }
    }
}

/// A content id as the paths carry them: the job's id.
fn valid_content_id(text: &str) -> bool {
    (1..=128).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The handler; every refusal or failure counts for the path's monitoring.
#[tracing::instrument(skip_all, fields(content_type = %path.0, content_id = %path.1))]
pub async fn receive(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    receiver: web::Data<ReplicateReceiver>,
) -> Result<HttpResponse, Problem> {
    let _timer = receiver
        .processing
        .with_label_values(&["replicate"])
        .start_timer();
    let result = handle(&req, path, payload, &receiver).await;
    if result.is_err() {
        receiver.monitor.failure(req.path(), ROUTE);
    }
    result
}

async fn handle(
    req: &HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    receiver: &ReplicateReceiver,
) -> Result<HttpResponse, Problem> {
    let count = |outcome: &str| {
        receiver
            .received
            .with_label_values(&["replicate", outcome])
            .inc();
    };
    receiver
        .limiter
        .check(req)
        .await
        .inspect_err(|_| count("rate_limited"))?;
    let (content_type, content_id) = path.into_inner();
    let Some(content_type) = ContentType::parse(&content_type) else {
        count("refused");
        return Err(unprocessable(
            "content_type must be sound_effect or background_music.",
        ));
    };
    if !valid_content_id(&content_id) {
        count("refused");
        return Err(Problem::not_found().detail("No such job."));
    }
    let body = read_body(req, payload, receiver.body)
        .await
        .inspect_err(|_| count("refused"))?;
    let headers = SignedHeaders {
        id: header(req, webhook_signature::HEADER_ID),
        timestamp: header(req, webhook_signature::HEADER_TIMESTAMP),
        signature: header(req, webhook_signature::HEADER_SIGNATURE),
    };
    let now = chrono::Utc::now();
    let check = |keys: &[VerifyingKey]| {
        verify(
            keys,
            headers,
            &body,
            now.timestamp(),
            DEFAULT_TOLERANCE_SECS,
        )
    };
    let mut verified = check(&receiver.secret.keys());
    // The secret may have been rotated on Replicate's side: fetch it again (at most once a
    // minute) and try once more.
    if verified.is_err() && receiver.secret.refresh().await {
        verified = check(&receiver.secret.keys());
    }
    if let Err(error) = verified {
        if receiver.secret.keys().is_empty() {
            tracing::error!(
                "a Replicate webhook arrived but no signing secret is known (REPLICATE_WEBHOOK_SECRET, or REPLICATE_API_TOKEN to fetch it); it is refused"
            );
        } else {
            tracing::warn!(%error, "Replicate webhook refused");
        }
        count("unauthorized");
        return Err(unauthorized());
    }
    // Only a verified sender learns whether a job exists.
    let job = job_exists(&receiver.jobs, &content_id).await;
    if job.as_ref().is_some_and(|job| !job.exists) {
        count("refused");
        return Err(Problem::not_found().detail("No such job."));
    }
    // The webhook is stored in the job's trace (the request that created it), linked to this
    // request's own, so dispatching it and finishing the job continue the job's story.
    let in_job = tracing::info_span!("replicate.webhook.store", job_id = %content_id);
    telemetry::propagation::adopt_traceparent(
        &in_job,
        job.as_ref().map(|job| job.traceparent.as_str()),
    );
    telemetry::propagation::link_current(&in_job);
    async move {
        let text = String::from_utf8_lossy(&body);
        let prediction = serde_json::from_slice::<Prediction>(&body);
        let path = req.path();
        let event = |state, event_type, error| NewEvent {
            source: "replicate",
            delivery_id: headers.id,
            path,
            subject_type: Some(content_type.as_str()),
            subject_id: Some(&content_id),
            event_type,
            payload: &text,
            state,
            error,
            tenant: None,
        };
        match prediction {
            Ok(prediction) if !prediction.id.is_empty() => {
                let stored = inbox::store(
                    &receiver.pool,
                    &event(State::Received, Some(prediction.status.as_str()), None),
                    now,
                )
                .await
                .map_err(not_stored)?;
                Ok(match stored {
                    Stored::New(id) => {
                        receiver.wake.wake();
                        count("accepted");
                        tracing::info!(event_id = %id, prediction = %prediction.id, "Replicate webhook stored");
                        HttpResponse::Ok()
                            .json(serde_json::json!({ "status": "accepted", "event_id": id }))
                    }
                    Stored::Duplicate => {
                        count("duplicate");
                        HttpResponse::Ok().json(serde_json::json!({ "status": "duplicate" }))
                    }
                })
            }
            other => {
                let problem = match other {
                    Err(error) => format!(
                        "The body is not a Replicate prediction: {}.",
                        error
                            .to_string()
                            .split(" at line ")
                            .next()
                            .unwrap_or_default()
                    ),
                    Ok(_) => "The body is not a Replicate prediction: id is empty.".to_owned(),
                };
                // Kept for inspection, once per webhook-id.
                inbox::store(
                    &receiver.pool,
                    &event(State::Malformed, None, Some(&problem)),
                    now,
                )
                .await
                .map_err(not_stored)?;
                count("malformed");
                Err(unprocessable(problem))
            }
        }
    }
    .instrument(in_job)
    .await
}
