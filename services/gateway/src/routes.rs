//! The public `/v1` API.

use actix_web::{HttpResponse, web};
use http_problem::Problem;
use serde::Serialize;
use sonora_proto::tts::v1::ListVoicesRequest;

use crate::Peers;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/voices", web::get().to(list_voices));
}

/// Maps a failed call to a backend to the problem the client sees. The backend's own message
/// goes to the log only.
fn backend_problem(backend: &str, status: &tonic::Status) -> Problem {
    tracing::warn!(backend, code = ?status.code(), message = status.message(), "backend call failed");
    match status.code() {
        tonic::Code::Unavailable
        | tonic::Code::DeadlineExceeded
        | tonic::Code::ResourceExhausted => Problem::unavailable(format!(
            "The {backend} service is not available right now; retry later."
        ))
        .with("retry_after_seconds", 5),
        _ => Problem::bad_gateway(format!(
            "The {backend} service failed to answer; it has been logged."
        )),
    }
}

#[derive(Serialize)]
struct VoiceBody {
    id: String,
    name: String,
    language: String,
    sample_rate: u32,
    quality: String,
    speakers: Vec<SpeakerBody>,
    default: bool,
}

#[derive(Serialize)]
struct SpeakerBody {
    id: u32,
    name: String,
}

#[derive(Serialize)]
struct VoicesBody {
    voices: Vec<VoiceBody>,
}

/// `GET /v1/voices`: every installed voice and its speakers.
#[tracing::instrument(skip_all)]
async fn list_voices(peers: web::Data<Peers>) -> Result<HttpResponse, Problem> {
    let mut tts = peers.tts.clone();
    let voices = tts
        .list_voices(ListVoicesRequest {})
        .await
        .map_err(|status| backend_problem("tts-inference", &status))?
        .into_inner()
        .voices;
    Ok(HttpResponse::Ok().json(VoicesBody {
        voices: voices
            .into_iter()
            .map(|v| VoiceBody {
                id: v.id,
                name: v.name,
                language: v.language,
                sample_rate: v.sample_rate,
                quality: v.quality,
                speakers: v
                    .speakers
                    .into_iter()
                    .map(|s| SpeakerBody {
                        id: s.id,
                        name: s.name,
                    })
                    .collect(),
                default: v.is_default,
            })
            .collect(),
    }))
}
