//! The public `/v1` API.

use actix_web::{HttpResponse, web};
use futures::StreamExt as _;
use http_problem::Problem;

use crate::{Peers, auth::Caller, usage::Counts};
use internal_rpc::{Scope, on_behalf};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/tts", "POST").route(web::post().to(tts)))
        .service(resource("/v1/audio/speech", "POST").route(web::post().to(audio_speech)));
}

/// A resource that answers a method it does not serve with 405 and `Allow: allow` (a
/// problem+json), instead of falling through to 404.
pub fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move || async move {
        let mut response = Problem::method_not_allowed()
            .detail(format!("This path accepts {allow}."))
            .to_response();
        response.headers_mut().insert(
            actix_web::http::header::ALLOW,
            actix_web::http::header::HeaderValue::from_static(allow),
        );
        response
    }))
}

/// Maps a failed call to a backend to the problem the client sees. The backend's own message
/// goes to the log only.
pub(crate) fn backend_problem(backend: &str, status: &tonic::Status) -> Problem {
    tracing::warn!(backend, code = ?status.code(), message = status.message(), "backend call failed");
    match status.code() {
        tonic::Code::Unavailable
        | tonic::Code::DeadlineExceeded
        | tonic::Code::ResourceExhausted => Problem::unavailable(format!(
            "The {backend} service is not available right now; retry later."
        ))
        .retry_after(5),
        _ => Problem::bad_gateway(format!(
            "The {backend} service failed to answer; it has been logged."
        )),
    }
}

/// The body of `POST /v1/tts`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[schema(as = TtsRequest)]
#[serde(deny_unknown_fields)]
struct TtsBody {
    /// The text to speak: 1 to 4,096 characters, with at least one letter or digit.
    text: String,
    /// The voice: its UUID or its slug (`en_US-joe-medium`); `voice_id` is what the old clients
    /// send. The installation's default voice when absent.
    #[serde(default, alias = "voice_id")]
    voice: Option<String>,
    /// The speaker of a voice that has several.
    #[serde(default)]
    speaker: Option<u32>,
    /// 0.25 to 4; 1 when absent.
    #[serde(default)]
    #[schema(minimum = 0.25, maximum = 4.0)]
    speed: Option<f32>,
    /// `wav` (the default), `pcm16`, `mp3`, `opus`, `flac` or `mulaw`.
    #[serde(default)]
    format: Option<String>,
    /// 8000 to 48000 Hz; the voice's own rate when absent.
    #[serde(default)]
    #[schema(minimum = 8000, maximum = 48000)]
    sample_rate: Option<u32>,
    /// 0 to 2: how varied the voice sounds; the voice's own when absent.
    #[serde(default)]
    noise_scale: Option<f32>,
    /// 0 to 2: how varied the length of its sounds is; the voice's own when absent.
    #[serde(default)]
    noise_w: Option<f32>,
}

/// The body of `POST /v1/audio/speech`, in the shape OpenAI-style clients send.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[schema(as = SpeechRequest)]
struct SpeechBody {
    /// The text to speak: 1 to 4,096 characters, with at least one letter or digit.
    input: String,
    /// The voice: its UUID or its slug; the installation's default voice when absent.
    #[serde(default)]
    voice: Option<String>,
    /// `wav` (the default), `pcm16`, `mp3`, `opus`, `flac` or `mulaw`.
    #[serde(default)]
    response_format: Option<String>,
    /// 0.25 to 4; 1 when absent.
    #[serde(default)]
    #[schema(minimum = 0.25, maximum = 4.0)]
    speed: Option<f32>,
    /// Accepted and ignored: the voice decides the model.
    #[serde(default, rename = "model")]
    _model: Option<String>,
}

fn audio_format(name: Option<&str>) -> Result<i32, Problem> {
    use sonora_proto::tts::v1::AudioFormat as F;
    let format = match name.unwrap_or("wav").to_ascii_lowercase().as_str() {
        "wav" => F::Wav,
        "pcm" | "pcm16" => F::Pcm16,
        "mp3" => F::Mp3,
        "opus" | "ogg" => F::Opus,
        "flac" => F::Flac,
        "mulaw" | "ulaw" => F::Mulaw,
        other => {
            return Err(Problem::invalid_request(format!(
                "format {other:?} is not one of wav, pcm16, mp3, opus, flac, mulaw"
            )));
        }
    };
    Ok(format.into())
}

/// `speed` and `sample_rate`, checked here so a client hears which field and which rule.
fn check_voice_options(speed: f32, sample_rate: Option<u32>) -> Result<(), Problem> {
    if !speed.is_finite() || !(0.25..=4.0).contains(&speed) {
        return Err(Problem::invalid_request("speed must be between 0.25 and 4"));
    }
    if let Some(rate) = sample_rate
        && !(8_000..=48_000).contains(&rate)
    {
        return Err(Problem::invalid_request(
            "sample_rate must be between 8000 and 48000",
        ));
    }
    Ok(())
}

/// The largest text a request may carry, as tts-inference enforces it.
pub use sonora_proto::tts::v1::MAX_TEXT_CHARS;

fn synthesis_problem(status: &tonic::Status) -> Problem {
    use actix_web::http::StatusCode;
    use sonora_proto::tts::v1::{REFUSAL_METADATA, REFUSAL_UNSUPPORTED_SCRIPT};
    let refusal = status
        .metadata()
        .get(REFUSAL_METADATA)
        .and_then(|v| v.to_str().ok());
    match status.code() {
        tonic::Code::InvalidArgument if refusal == Some(REFUSAL_UNSUPPORTED_SCRIPT) => {
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unsupported-script",
                "Unsupported Script",
            )
            .detail(status.message())
        }
        tonic::Code::InvalidArgument => Problem::invalid_request(status.message()),
        tonic::Code::NotFound => {
            Problem::new(StatusCode::NOT_FOUND, "not-found", "Not Found").detail(status.message())
        }
        tonic::Code::ResourceExhausted => {
            Problem::new(StatusCode::TOO_MANY_REQUESTS, "busy", "Too Many Requests")
                .detail("Speech synthesis is at capacity; retry shortly.")
                .retry_after(1)
        }
        _ => backend_problem("tts-inference", status),
    }
}

/// The body of a response relaying a backend's gRPC stream: `first` (already received, so that a
/// refusal could still get its status code), then the bytes of every further message. A stream
/// that breaks off midway ends the body with an error, which aborts the transfer: the client
/// sees a broken download, never a short file that looks complete.
pub fn body_of<M: Send + 'static>(
    first: Vec<u8>,
    stream: tonic::Streaming<M>,
    bytes: impl FnMut(M) -> Vec<u8> + 'static,
    what: &'static str,
) -> impl futures::Stream<Item = Result<web::Bytes, actix_web::Error>> {
    let rest = futures::stream::unfold(Some((stream, bytes)), move |state| async move {
        let (mut stream, mut bytes) = state?;
        match stream.message().await {
            Ok(Some(message)) => {
                let chunk = web::Bytes::from(bytes(message));
                Some((Ok(chunk), Some((stream, bytes))))
            }
            Ok(None) => None,
            Err(status) => {
                tracing::error!(code = ?status.code(), what, "a backend stream broke off; the response is aborted");
                Some((
                    Err(actix_web::error::ErrorBadGateway(format!(
                        "{what} broke off"
                    ))),
                    None,
                ))
            }
        }
    });
    futures::stream::once(async move { Ok(web::Bytes::from(first)) }).chain(rest)
}

/// Starts synthesis and streams the audio as it is made; errors before the first audio are
/// problem+json, errors after it end the stream early (the status line is already sent).
async fn speak(
    peers: &Peers,
    caller: &Caller,
    request: sonora_proto::tts::v1::SynthesizeRequest,
) -> Result<HttpResponse, Problem> {
    let received = std::time::Instant::now();
    let key = caller.require(Scope::Tts)?;
    let principal = key.principal();
    if request.text.trim().is_empty() {
        return Err(Problem::invalid_request("The text is empty."));
    }
    let chars = request.text.chars().count();
    if chars > MAX_TEXT_CHARS {
        return Err(Problem::invalid_request(format!(
            "The text has {chars} characters; the limit is {MAX_TEXT_CHARS}."
        ))
        .with("limit_chars", MAX_TEXT_CHARS));
    }
    let mut request = request;
    request.voice = peers.catalogue.resolve(peers, &request.voice).await?;
    // The month's quota is spent before the work and given back if no audio comes of it.
    let characters = chars as u64;
    if let Err(refusal) = peers
        .limiter
        .spend_characters(key, characters, &peers.pool)
        .await
    {
        if matches!(refusal, crate::ratelimit::QuotaRefusal::Exceeded { .. }) {
            peers.limiter.quota_exceeded();
        }
        return Err(refusal.into());
    }
    let started = async {
        let mut tts = peers.tts.clone();
        let response = tts
            .synthesize(on_behalf(request, &principal))
            .await
            .map_err(|status| synthesis_problem(&status))?;
        // Characters of a script the voice does not read, skipped rather than spelled out.
        let skipped = response
            .metadata()
            .get(sonora_proto::tts::v1::SKIPPED_METADATA)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("0")
            .to_owned();
        let mut stream = response.into_inner();
        // Wait for the first audio so that a refusal still gets a proper status code.
        let first = stream
            .message()
            .await
            .map_err(|status| synthesis_problem(&status))?
            .ok_or_else(|| Problem::bad_gateway("tts-inference ended the stream without audio."))?;
        Ok::<_, Problem>((skipped, stream, first))
    };
    let (skipped, stream, first) = match started.await {
        Ok(started) => started,
        Err(problem) => {
            peers.limiter.refund_characters(key, characters).await;
            return Err(problem);
        }
    };
    let meter = peers.meter.clone();
    let record = key.clone();
    let generation = peers.generation_seconds.clone();
    if first.done {
        generation.observe(received.elapsed().as_secs_f64());
    }
    meter.record(
        &record,
        Counts {
            characters: i64::try_from(characters).unwrap_or(i64::MAX),
            audio_seconds: if first.done { first.audio_seconds } else { 0.0 },
            ..Counts::default()
        },
    );
    let content_type = first.content_type.clone();
    let sample_rate = first.sample_rate;
    let body = body_of(
        first.audio,
        stream,
        move |m: sonora_proto::tts::v1::SynthesizeResponse| {
            if m.done {
                generation.observe(received.elapsed().as_secs_f64());
                meter.record(
                    &record,
                    Counts {
                        audio_seconds: m.audio_seconds,
                        ..Counts::default()
                    },
                );
            }
            m.audio
        },
        "synthesis",
    );
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(("x-sample-rate", sample_rate.to_string()))
        .insert_header(("x-skipped-characters", skipped))
        .insert_header(("cache-control", "no-store"))
        .streaming(body))
}

/// Speech for a text, streamed as it is made.
///
/// The audio comes as tts-inference makes it, sentence by sentence and each in parts; the text
/// counts against the key's monthly character quota. A refusal before the first audio is a
/// problem with its status; a failure after it aborts the transfer, so a broken download never
/// looks like a complete file.
#[utoipa::path(
    post,
    path = "/v1/tts",
    tag = crate::openapi::tag::SPEECH,
    request_body = TtsBody,
    responses(
        (status = 200, description = "The audio, streamed; `Content-Type` names its format.",
            headers(
                ("X-Sample-Rate" = u32, description = "The audio's sample rate in Hz."),
                ("X-Skipped-Characters" = u32, description = "Characters of a script the voice does not read, skipped rather than spelled out."),
            ),
            content(
                (crate::openapi::AudioBytes = "audio/wav"),
                (crate::openapi::AudioBytes = "audio/L16"),
                (crate::openapi::AudioBytes = "audio/mpeg"),
                (crate::openapi::AudioBytes = "audio/ogg"),
                (crate::openapi::AudioBytes = "audio/flac"),
                (crate::openapi::AudioBytes = "audio/basic"),
            )),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 422, response = crate::openapi::UnprocessableEntity),
        (status = 502, response = crate::openapi::BadGateway),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
#[tracing::instrument(skip_all)]
async fn tts(
    caller: Caller,
    peers: web::Data<Peers>,
    body: http_problem::JsonObject<TtsBody>,
) -> Result<HttpResponse, Problem> {
    let body = body.0;
    check_voice_options(body.speed.unwrap_or(1.0), body.sample_rate)?;
    let request = sonora_proto::tts::v1::SynthesizeRequest {
        text: body.text,
        voice: body.voice.unwrap_or_default(),
        speaker: body.speaker,
        speed: body.speed.unwrap_or(1.0),
        noise_scale: body.noise_scale,
        noise_w: body.noise_w,
        format: audio_format(body.format.as_deref())?,
        sample_rate: body.sample_rate.unwrap_or(0),
    };
    speak(&peers, &caller, request).await
}

/// Speech for a text, for clients of OpenAI's speech endpoint.
///
/// The same as `POST /v1/tts`, with the body OpenAI-style clients send.
#[utoipa::path(
    post,
    path = "/v1/audio/speech",
    tag = crate::openapi::tag::SPEECH,
    request_body = SpeechBody,
    responses(
        (status = 200, description = "The audio, streamed; `Content-Type` names its format.",
            headers(
                ("X-Sample-Rate" = u32, description = "The audio's sample rate in Hz."),
                ("X-Skipped-Characters" = u32, description = "Characters of a script the voice does not read, skipped rather than spelled out."),
            ),
            content(
                (crate::openapi::AudioBytes = "audio/wav"),
                (crate::openapi::AudioBytes = "audio/L16"),
                (crate::openapi::AudioBytes = "audio/mpeg"),
                (crate::openapi::AudioBytes = "audio/ogg"),
                (crate::openapi::AudioBytes = "audio/flac"),
                (crate::openapi::AudioBytes = "audio/basic"),
            )),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 422, response = crate::openapi::UnprocessableEntity),
        (status = 502, response = crate::openapi::BadGateway),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
#[tracing::instrument(skip_all)]
async fn audio_speech(
    caller: Caller,
    peers: web::Data<Peers>,
    body: http_problem::JsonObject<SpeechBody>,
) -> Result<HttpResponse, Problem> {
    let body = body.0;
    check_voice_options(body.speed.unwrap_or(1.0), None)?;
    let request = sonora_proto::tts::v1::SynthesizeRequest {
        text: body.input,
        voice: body.voice.unwrap_or_default(),
        speed: body.speed.unwrap_or(1.0),
        format: audio_format(body.response_format.as_deref())?,
        ..Default::default()
    };
    speak(&peers, &caller, request).await
}
