//! The public `/v1` API.

use actix_web::{HttpResponse, web};
use futures::StreamExt as _;
use http_problem::Problem;

use crate::{Peers, auth::Caller, keys::KeyRecord, usage::Counts};
use internal_rpc::{Scope, on_behalf};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/tts", "POST").route(web::post().to(tts)))
        .service(
            resource(crate::openai::PATH, "POST")
                .route(web::post().to(crate::openai::audio_speech)),
        );
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
    // Down (no answer, the connection cut) or busy: the client may retry.
    if internal_rpc::client::unreachable(status) || status.code() == tonic::Code::ResourceExhausted
    {
        Problem::unavailable(format!(
            "The {backend} service is not available right now; retry later."
        ))
        .retry_after(5)
    } else {
        Problem::bad_gateway(format!(
            "The {backend} service failed to answer; it has been logged."
        ))
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
    /// Word timings: the answer becomes `application/x-ndjson`, one line per part
    /// (`{"audio": base64, "words": [{"word", "start", "end"}]}`), then
    /// `{"done": true, "audio_seconds"}`.
    #[serde(default)]
    timestamps: bool,
    /// `text` or `ssml` (the documented subset); without it, text that starts with `<speak` is
    /// SSML.
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

fn audio_format(name: Option<&str>) -> Result<i32, Problem> {
    use sonora_proto::tts::v1::AudioFormat as F;
    let format = match name.unwrap_or("wav").to_ascii_lowercase().as_str() {
        "wav" => F::Wav,
        "pcm" | "pcm16" => F::Pcm16,
        "mp3" => F::Mp3,
        "opus" | "ogg" => F::Opus,
        "flac" => F::Flac,
        "aac" => F::Aac,
        "mulaw" | "ulaw" => F::Mulaw,
        other => {
            return Err(Problem::invalid_request(format!(
                "format {other:?} is not one of wav, pcm16, mp3, opus, flac, aac, mulaw"
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

pub(crate) fn synthesis_problem(status: &tonic::Status) -> Problem {
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

#[derive(serde::Serialize)]
struct WordBody<'a> {
    word: &'a str,
    start: f64,
    end: f64,
}

#[derive(serde::Serialize)]
struct TimedLine<'a> {
    audio: String,
    words: Vec<WordBody<'a>>,
}

#[derive(serde::Serialize)]
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

/// Synthesis that has made its first audio: what a response needs to start.
pub(crate) struct Started {
    pub first: Vec<u8>,
    pub stream: tonic::Streaming<sonora_proto::tts::v1::SynthesizeResponse>,
    pub content_type: String,
    pub sample_rate: u32,
    /// Characters of a script the voice does not read, skipped rather than spelled out.
    pub skipped: String,
    /// The first message's word timings (when asked for), and whether it was the last.
    pub first_words: Vec<sonora_proto::tts::v1::WordTiming>,
    pub first_done: bool,
    pub first_audio_seconds: f64,
    /// Meters the rest of the stream; see [`Metering::audio`].
    pub metering: Metering,
}

/// What is counted when a synthesis stream ends: its seconds of audio in the key's usage, and
/// `tts_generation_duration_seconds`.
pub(crate) struct Metering {
    meter: crate::usage::Meter,
    key: KeyRecord,
    generation: prometheus::Histogram,
    received: std::time::Instant,
}

impl Metering {
    fn ended(&self, audio_seconds: f64) {
        self.generation
            .observe(self.received.elapsed().as_secs_f64());
        self.meter.record(
            &self.key,
            Counts {
                audio_seconds,
                ..Counts::default()
            },
        );
    }

    /// The bytes of each further message, metering the stream when its final message passes
    /// (for [`body_of`]).
    pub fn audio(self) -> impl FnMut(sonora_proto::tts::v1::SynthesizeResponse) -> Vec<u8> {
        self.framed(Framing::Audio)
    }

    /// The same, framed as `framing` says.
    fn framed(
        self,
        framing: Framing,
    ) -> impl FnMut(sonora_proto::tts::v1::SynthesizeResponse) -> Vec<u8> {
        move |m| {
            if m.done {
                self.ended(m.audio_seconds);
            }
            match framing {
                Framing::Audio => m.audio,
                Framing::Timed => timed_lines(&m),
            }
        }
    }
}

/// Why synthesis did not start: tts-inference refused or failed (its status, which the routes
/// map to their problems), it ended without audio, or the gateway refused first (the voice is
/// unknown or disabled, the quota is spent).
pub(crate) enum StartError {
    Backend(tonic::Status),
    NoAudio,
    Refused(Problem),
}

impl StartError {
    pub fn problem(&self) -> Problem {
        match self {
            Self::Backend(status) => synthesis_problem(status),
            Self::NoAudio => Problem::bad_gateway("tts-inference ended the stream without audio."),
            Self::Refused(problem) => problem.clone(),
        }
    }
}

/// Resolves the voice, spends the text's characters from `key`'s monthly quota, calls
/// `Synthesize` on the key's behalf and waits for the first audio, so that a refusal still gets
/// a proper status code. Characters are given back when no audio comes of it; they are counted
/// in the key's usage once it does.
pub(crate) async fn start_synthesis(
    peers: &Peers,
    key: &KeyRecord,
    mut request: sonora_proto::tts::v1::SynthesizeRequest,
) -> Result<Started, StartError> {
    let received = std::time::Instant::now();
    request.voice = peers
        .catalogue
        .resolve(peers, &request.voice)
        .await
        .map_err(StartError::Refused)?;
    let characters = request.text.chars().count() as u64;
    if let Err(refusal) = peers
        .limiter
        .spend_characters(key, characters, &peers.pool)
        .await
    {
        if matches!(refusal, crate::ratelimit::QuotaRefusal::Exceeded { .. }) {
            peers.limiter.quota_exceeded();
        }
        return Err(StartError::Refused(refusal.into()));
    }
    let started = async {
        let mut tts = peers.tts.clone();
        let response = tts
            .synthesize(on_behalf(request, &key.principal()))
            .await
            .map_err(StartError::Backend)?;
        let skipped = response
            .metadata()
            .get(sonora_proto::tts::v1::SKIPPED_METADATA)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("0")
            .to_owned();
        let mut stream = response.into_inner();
        let first = stream
            .message()
            .await
            .map_err(StartError::Backend)?
            .ok_or(StartError::NoAudio)?;
        Ok((skipped, stream, first))
    };
    let (skipped, stream, first) = match started.await {
        Ok(started) => started,
        Err(error) => {
            peers.limiter.refund_characters(key, characters).await;
            return Err(error);
        }
    };
    let metering = Metering {
        meter: peers.meter.clone(),
        key: key.clone(),
        generation: peers.generation_seconds.clone(),
        received,
    };
    peers.meter.record(
        key,
        Counts {
            characters: i64::try_from(characters).unwrap_or(i64::MAX),
            ..Counts::default()
        },
    );
    if first.done {
        metering.ended(first.audio_seconds);
    }
    Ok(Started {
        content_type: first.content_type,
        sample_rate: first.sample_rate,
        first: first.audio,
        first_words: first.words,
        first_done: first.done,
        first_audio_seconds: first.audio_seconds,
        stream,
        skipped,
        metering,
    })
}

/// Starts synthesis and streams the audio as it is made; errors before the first audio are
/// problem+json, errors after it end the stream early (the status line is already sent).
async fn speak(
    peers: &Peers,
    caller: &Caller,
    request: sonora_proto::tts::v1::SynthesizeRequest,
    framing: Framing,
) -> Result<HttpResponse, Problem> {
    let key = caller.require(Scope::Tts)?;
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
    let started = start_synthesis(peers, key, request)
        .await
        .map_err(|error| error.problem())?;
    let (content_type, first) = match framing {
        Framing::Audio => (started.content_type, started.first),
        Framing::Timed => (
            "application/x-ndjson".to_owned(),
            timed_lines(&sonora_proto::tts::v1::SynthesizeResponse {
                audio: started.first,
                words: started.first_words,
                done: started.first_done,
                audio_seconds: started.first_audio_seconds,
                ..Default::default()
            }),
        ),
    };
    let body = body_of(
        first,
        started.stream,
        started.metering.framed(framing),
        "synthesis",
    );
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header(("x-sample-rate", started.sample_rate.to_string()))
        .insert_header(("x-skipped-characters", started.skipped))
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
                (crate::openapi::AudioBytes = "audio/aac"),
                (String = "application/x-ndjson"),
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
        timestamps: body.timestamps,
        text_type: text_type(body.text_type.as_deref())?,
    };
    let framing = if body.timestamps {
        Framing::Timed
    } else {
        Framing::Audio
    };
    speak(&peers, &caller, request, framing).await
}
