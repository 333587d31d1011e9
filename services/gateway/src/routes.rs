//! The public `/v1` API.

use actix_web::{HttpResponse, web};
use futures::StreamExt as _;
use http_problem::Problem;
use serde::Serialize;
use sonora_proto::tts::v1::ListVoicesRequest;

use crate::{Peers, auth::Caller, usage::Counts};
use internal_rpc::{Scope, on_behalf};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/voices", "GET").route(web::get().to(list_voices)))
        .service(resource("/v1/tts", "POST").route(web::post().to(tts)))
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
fn backend_problem(backend: &str, status: &tonic::Status) -> Problem {
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
async fn list_voices(_caller: Caller, peers: web::Data<Peers>) -> Result<HttpResponse, Problem> {
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

/// The body of `POST /v1/tts`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TtsBody {
    text: String,
    /// The voice's id; `voice_id` is what the old clients send.
    #[serde(default, alias = "voice_id")]
    voice: Option<String>,
    #[serde(default)]
    speaker: Option<u32>,
    #[serde(default)]
    speed: Option<f32>,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    sample_rate: Option<u32>,
    #[serde(default)]
    noise_scale: Option<f32>,
    #[serde(default)]
    noise_w: Option<f32>,
    /// Word timings: the answer becomes NDJSON ([`Framing::Timed`]) instead of raw audio.
    #[serde(default)]
    timestamps: bool,
    /// `text` or `ssml`; without it, text that starts with `<speak` is SSML.
    #[serde(default)]
    text_type: Option<String>,
}

fn text_type(name: Option<&str>) -> Result<i32, Problem> {
    use sonora_proto::tts::v1::TextType as T;
    let kind = match name {
        None => T::Unspecified,
        Some("text") => T::Plain,
        Some("ssml") => T::Ssml,
        Some(_) => return Err(Problem::invalid_request("text_type must be text or ssml")),
    };
    Ok(kind.into())
}

/// The body of `POST /v1/audio/speech`, in the shape OpenAI-style clients send.
#[derive(Debug, serde::Deserialize)]
struct SpeechBody {
    input: String,
    #[serde(default)]
    voice: Option<String>,
    #[serde(default)]
    response_format: Option<String>,
    #[serde(default)]
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

/// How a synthesis is framed for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// The encoded audio itself, in the format's media type.
    Audio,
    /// `application/x-ndjson`: one JSON object a line, `{"audio": base64, "words": [...]}` for
    /// each message of the stream, then `{"done": true, "audio_seconds": ...}`. JSON lines rather
    /// than multipart or a JSON array: each line stands alone, so a client can play a part and
    /// show its words as soon as the line arrives, and a stream that breaks off midway is seen
    /// (no `done` line) rather than parsed as a shorter whole.
    Timed,
}

#[derive(Serialize)]
struct WordBody<'a> {
    word: &'a str,
    start: f64,
    end: f64,
}

#[derive(Serialize)]
struct TimedLine<'a> {
    audio: String,
    words: Vec<WordBody<'a>>,
}

#[derive(Serialize)]
struct DoneLine {
    done: bool,
    audio_seconds: f64,
}

/// The NDJSON lines of one message of a timed stream ([`Framing::Timed`]).
fn timed_lines(m: &sonora_proto::tts::v1::SynthesizeResponse) -> Vec<u8> {
    use base64::Engine as _;
    let mut out = Vec::new();
    if !m.audio.is_empty() || !m.words.is_empty() {
        let line = TimedLine {
            audio: base64::engine::general_purpose::STANDARD.encode(&m.audio),
            words: m
                .words
                .iter()
                .map(|w| WordBody {
                    word: &w.word,
                    start: w.start,
                    end: w.end,
                })
                .collect(),
        };
        serde_json::to_writer(&mut out, &line).expect("a line serialises");
        out.push(b'\n');
    }
    if m.done {
        let done = DoneLine {
            done: true,
            audio_seconds: m.audio_seconds,
        };
        serde_json::to_writer(&mut out, &done).expect("a line serialises");
        out.push(b'\n');
    }
    out
}

/// Starts synthesis and streams the audio as it is made; errors before the first audio are
/// problem+json, errors after it end the stream early (the status line is already sent).
async fn speak(
    peers: &Peers,
    caller: &Caller,
    request: sonora_proto::tts::v1::SynthesizeRequest,
) -> Result<HttpResponse, Problem> {
    speak_as(peers, caller, request, Framing::Audio).await
}

/// [`speak`], framed as `framing` says.
async fn speak_as(
    peers: &Peers,
    caller: &Caller,
    request: sonora_proto::tts::v1::SynthesizeRequest,
    framing: Framing,
) -> Result<HttpResponse, Problem> {
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
    meter.record(
        &record,
        Counts {
            characters: i64::try_from(characters).unwrap_or(i64::MAX),
            audio_seconds: if first.done { first.audio_seconds } else { 0.0 },
            ..Counts::default()
        },
    );
    let sample_rate = first.sample_rate;
    let (content_type, first) = match framing {
        Framing::Audio => (first.content_type.clone(), first.audio),
        Framing::Timed => ("application/x-ndjson".to_owned(), timed_lines(&first)),
    };
    let body = body_of(
        first,
        stream,
        move |m: sonora_proto::tts::v1::SynthesizeResponse| {
            if m.done {
                meter.record(
                    &record,
                    Counts {
                        audio_seconds: m.audio_seconds,
                        ..Counts::default()
                    },
                );
            }
            match framing {
                Framing::Audio => m.audio,
                Framing::Timed => timed_lines(&m),
            }
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

/// `POST /v1/tts`: speech for `text`, streamed as tts-inference makes it (sentence by sentence,
/// each in parts); with `"timestamps": true`, NDJSON with each part's words ([`Framing::Timed`]).
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
        timestamps: body.timestamps,
        text_type: text_type(body.text_type.as_deref())?,
    };
    let framing = if body.timestamps {
        Framing::Timed
    } else {
        Framing::Audio
    };
    speak_as(&peers, &caller, request, framing).await
}

/// `POST /v1/audio/speech`: the same, for clients written against OpenAI's speech endpoint.
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
