//! `POST /v1/audio/speech` as OpenAI's SDKs call it: the request body of OpenAI's speech API
//! parsed once at the edge into a [`SpeechRequest`] (every OpenAI voice name mapped through
//! [`VoiceMap`], `OPENAI_VOICE_MAP`, to a Sonora voice and speaker), the audio streamed as
//! tts-inference makes it, or as `speech.audio.delta` server-sent events with
//! `stream_format: "sse"`, and every refusal a problem+json that also carries OpenAI's `error`
//! object, so that the SDKs show its message.
//!
//! OpenAI's models are accepted by name only: Sonora's voices decide how speech sounds, and
//! `instructions` is accepted but not applied.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use base64::Engine as _;
use futures::StreamExt as _;
use http_problem::Problem;
use internal_rpc::Scope;
use serde_json::{Map, Value};
use sonora_proto::tts::v1::{AudioFormat as WireFormat, MAX_TEXT_CHARS, SynthesizeRequest};

use crate::{Peers, auth::Caller, routes};

/// The route's path.
pub const PATH: &str = "/v1/audio/speech";

/// Every voice name OpenAI's speech API knows.
pub const VOICES: [&str; 13] = [
    "alloy", "ash", "ballad", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer", "verse",
    "marin", "cedar",
];

/// The models OpenAI's speech API and its SDKs name (`SpeechModel`).
pub const MODELS: [&str; 4] = [
    "tts-1",
    "tts-1-hd",
    "gpt-4o-mini-tts",
    "gpt-4o-mini-tts-2025-12-15",
];

/// The longest `instructions` OpenAI accepts; Sonora accepts as much and applies none of it.
pub const MAX_INSTRUCTIONS_CHARS: usize = 4096;

/// OpenAI's speech is 24 kHz in every format, and its `pcm` is defined as 24 kHz, so Sonora's
/// voices are resampled to it.
pub const SAMPLE_RATE: u32 = 24_000;

/// A Sonora voice and, for a voice with several, one of its speakers.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SonoraVoice {
    /// A voice id from `/v1/voices`; empty for tts-inference's default voice.
    pub voice: String,
    pub speaker: Option<u32>,
}

impl SonoraVoice {
    /// `voice[:speaker]`, as `OPENAI_VOICE_MAP` writes it. The error says what is wrong without
    /// repeating the text.
    fn parse(text: &str) -> Result<Self, String> {
        let (voice, speaker) = match text.rsplit_once(':') {
            Some((voice, speaker)) => (
                voice,
                Some(
                    speaker
                        .parse::<u32>()
                        .map_err(|_| "a speaker after ':' must be a whole number".to_owned())?,
                ),
            ),
            None => (text, None),
        };
        if !is_voice_id(voice) && !voice.is_empty() {
            return Err(
                "a voice id has only letters, digits, '_', '-' and '.', and does not start with '.'"
                    .to_owned(),
            );
        }
        Ok(Self {
            voice: voice.to_owned(),
            speaker,
        })
    }
}

/// Whether `text` can be a voice id (a file stem in the voices directory).
fn is_voice_id(text: &str) -> bool {
    !text.is_empty()
        && !text.starts_with('.')
        && text.len() <= 128
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// `OPENAI_VOICE_MAP`: which Sonora voice and speaker each OpenAI voice name speaks with. A name
/// the setting leaves out speaks with the default voice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VoiceMap(BTreeMap<&'static str, SonoraVoice>);

impl Default for VoiceMap {
    /// Every name speaks with tts-inference's default voice.
    fn default() -> Self {
        Self(
            VOICES
                .iter()
                .map(|&name| (name, SonoraVoice::default()))
                .collect(),
        )
    }
}

impl VoiceMap {
    /// `alloy=en_US-joe-medium,echo=en_US-libritts-high:12,…`, or the same as a JSON object
    /// (`{"alloy": "en_US-joe-medium"}`, the form a TOML table in the settings file takes).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let entries: Vec<(String, String)> = if raw.trim_start().starts_with('{') {
            let object: Map<String, Value> = serde_json::from_str(raw)
                .map_err(|_| "must be name=voice[:speaker],… or a table of names".to_owned())?;
            object
                .into_iter()
                .map(|(name, target)| match target {
                    Value::String(target) => Ok((name, target)),
                    _ => Err(format!("the voice of {name} must be a string")),
                })
                .collect::<Result<_, _>>()?
        } else {
            raw.split(',')
                .map(str::trim)
                .filter(|entry| !entry.is_empty())
                .enumerate()
                .map(|(i, entry)| {
                    entry
                        .split_once('=')
                        .map(|(name, target)| (name.trim().to_owned(), target.trim().to_owned()))
                        .ok_or_else(|| format!("entry {} must be name=voice[:speaker]", i + 1))
                })
                .collect::<Result<_, _>>()?
        };
        let mut map = Self::default();
        let mut seen = Vec::new();
        for (name, target) in entries {
            let Some(&name) = VOICES.iter().find(|&&v| v == name) else {
                return Err(format!(
                    "names a voice OpenAI does not have; the names are {}",
                    VOICES.join(", ")
                ));
            };
            if seen.contains(&name) {
                return Err(format!("maps {name} twice"));
            }
            seen.push(name);
            let voice = SonoraVoice::parse(&target).map_err(|rule| format!("{name}: {rule}"))?;
            map.0.insert(name, voice);
        }
        Ok(map)
    }

    /// The Sonora voice of an OpenAI voice name.
    pub fn get(&self, name: &str) -> Option<&SonoraVoice> {
        self.0.get(name)
    }
}

impl settings::FromSetting for VoiceMap {
    fn from_setting(raw: &str) -> Result<Self, String> {
        Self::parse(raw)
    }
}

/// `response_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFormat {
    Mp3,
    Opus,
    Aac,
    Flac,
    Wav,
    /// Raw 16-bit little-endian mono samples at 24 kHz, no header.
    Pcm,
}

impl ResponseFormat {
    pub const ALL: [Self; 6] = [
        Self::Mp3,
        Self::Opus,
        Self::Aac,
        Self::Flac,
        Self::Wav,
        Self::Pcm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Mp3 => "mp3",
            Self::Opus => "opus",
            Self::Aac => "aac",
            Self::Flac => "flac",
            Self::Wav => "wav",
            Self::Pcm => "pcm",
        }
    }

    fn wire(self) -> WireFormat {
        match self {
            Self::Mp3 => WireFormat::Mp3,
            Self::Opus => WireFormat::Opus,
            Self::Aac => WireFormat::Aac,
            Self::Flac => WireFormat::Flac,
            Self::Wav => WireFormat::Wav,
            Self::Pcm => WireFormat::Pcm16,
        }
    }
}

/// `stream_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFormat {
    /// The audio file's bytes, streamed.
    Audio,
    /// Server-sent events: `speech.audio.delta` with base64 audio, then `speech.audio.done`.
    Sse,
}

/// A speech request, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeechRequest {
    pub model: String,
    pub input: String,
    pub voice: SonoraVoice,
    pub format: ResponseFormat,
    pub speed: f32,
    pub stream: StreamFormat,
}

/// A refused request: the problem, and the request field it is about (OpenAI's `param`).
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Boxed: a problem is large, and every step of parsing returns this.
    pub problem: Box<Problem>,
    pub param: Option<&'static str>,
}

impl From<Problem> for Refusal {
    fn from(problem: Problem) -> Self {
        Self {
            problem: Box::new(problem),
            param: None,
        }
    }
}

fn invalid(param: &'static str, detail: impl Into<String>) -> Refusal {
    Refusal {
        problem: Box::new(Problem::invalid_request(detail)),
        param: Some(param),
    }
}

impl Refusal {
    /// The problem+json, with OpenAI's error object as its `error` member: `message` (the
    /// detail), `type` (`invalid_request_error`, `requests` for 429, `server_error` for 5xx),
    /// `param` (the field, or null) and `code` (`invalid_value` for a bad field,
    /// `invalid_api_key` for 401, `rate_limit_exceeded` for 429, otherwise the problem's kind).
    pub fn into_problem(self) -> Problem {
        let status = self.problem.status;
        let kind = match status {
            429 => "requests",
            500.. => "server_error",
            _ => "invalid_request_error",
        };
        let slug = self
            .problem
            .kind
            .trim_start_matches("/problems/")
            .replace('-', "_");
        let code = match (status, self.param) {
            (401, _) => "invalid_api_key".to_owned(),
            (429, _) => "rate_limit_exceeded".to_owned(),
            (400, Some(_)) => "invalid_value".to_owned(),
            _ => slug,
        };
        let message = self
            .problem
            .detail
            .clone()
            .unwrap_or_else(|| self.problem.title.clone());
        let error = serde_json::json!({
            "message": message,
            "type": kind,
            "param": self.param,
            "code": code,
        });
        (*self.problem).with("error", error)
    }
}

/// An optional member: absent and `null` alike mean "not given".
fn member<'a>(body: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    body.get(name).filter(|v| !v.is_null())
}

fn string<'a>(
    body: &'a Map<String, Value>,
    param: &'static str,
) -> Result<Option<&'a str>, Refusal> {
    match member(body, param) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(invalid(param, format!("{param} must be a string."))),
    }
}

fn one_of<T: Copy>(
    param: &'static str,
    given: Option<&str>,
    default: T,
    choices: &[(&str, T)],
) -> Result<T, Refusal> {
    let Some(given) = given else {
        return Ok(default);
    };
    choices
        .iter()
        .find(|(name, _)| *name == given)
        .map(|(_, value)| *value)
        .ok_or_else(|| {
            let names: Vec<&str> = choices.iter().map(|(name, _)| *name).collect();
            invalid(
                param,
                format!("{param} {given:?} is not one of {}.", names.join(", ")),
            )
        })
}

impl SpeechRequest {
    /// Checks a request body (a JSON object) as OpenAI's API defines it. Members OpenAI does not
    /// define are ignored, as Sonora did before.
    pub fn parse(body: &Map<String, Value>, voices: &VoiceMap) -> Result<Self, Refusal> {
        let model = string(body, "model")?.ok_or_else(|| {
            invalid(
                "model",
                format!("model is required: one of {}.", MODELS.join(", ")),
            )
        })?;
        if !MODELS.contains(&model) {
            return Err(invalid(
                "model",
                format!("model {model:?} is not one of {}.", MODELS.join(", ")),
            ));
        }
        let input = string(body, "input")?.ok_or_else(|| invalid("input", "input is required."))?;
        if input.trim().is_empty() {
            return Err(invalid("input", "input is empty."));
        }
        let chars = input.chars().count();
        if chars > MAX_TEXT_CHARS {
            return Err(invalid(
                "input",
                format!("input has {chars} characters; the limit is {MAX_TEXT_CHARS}."),
            ));
        }
        let voice = Self::voice(body, voices)?;
        if let Some(instructions) = string(body, "instructions")? {
            let chars = instructions.chars().count();
            if chars > MAX_INSTRUCTIONS_CHARS {
                return Err(invalid(
                    "instructions",
                    format!(
                        "instructions has {chars} characters; the limit is {MAX_INSTRUCTIONS_CHARS}."
                    ),
                ));
            }
        }
        let format = one_of(
            "response_format",
            string(body, "response_format")?,
            ResponseFormat::Mp3,
            &ResponseFormat::ALL.map(|f| (f.name(), f)),
        )?;
        let speed = match member(body, "speed") {
            None => 1.0,
            Some(value) => value
                .as_f64()
                .filter(|s| (0.25..=4.0).contains(s))
                .ok_or_else(|| invalid("speed", "speed must be a number between 0.25 and 4."))?,
        };
        let stream = one_of(
            "stream_format",
            string(body, "stream_format")?,
            StreamFormat::Audio,
            &[("audio", StreamFormat::Audio), ("sse", StreamFormat::Sse)],
        )?;
        Ok(Self {
            model: model.to_owned(),
            input: input.to_owned(),
            voice,
            format,
            // Within 0.25..=4, so f32 holds it.
            speed: speed as f32,
            stream,
        })
    }

    /// `voice`: an OpenAI name, `{"id": name}`, or a Sonora voice id (as a string or an id).
    fn voice(body: &Map<String, Value>, voices: &VoiceMap) -> Result<SonoraVoice, Refusal> {
        let unknown = || {
            invalid(
                "voice",
                format!(
                    "voice must be one of {}, an object {{\"id\": …}} naming one, or the id of an installed Sonora voice (GET /v1/voices).",
                    VOICES.join(", ")
                ),
            )
        };
        let name = match member(body, "voice") {
            None => return Err(invalid("voice", "voice is required.")),
            Some(Value::String(name)) => name.as_str(),
            Some(Value::Object(object)) => match (object.get("id"), object.len()) {
                (Some(Value::String(id)), 1) => id.as_str(),
                _ => {
                    return Err(invalid(
                        "voice",
                        "voice as an object must be {\"id\": \"…\"} and nothing else.",
                    ));
                }
            },
            Some(_) => return Err(unknown()),
        };
        if let Some(voice) = voices.get(name) {
            return Ok(voice.clone());
        }
        // Not an OpenAI name: a Sonora voice id, which tts-inference looks up.
        if is_voice_id(name) {
            Ok(SonoraVoice {
                voice: name.to_owned(),
                speaker: None,
            })
        } else {
            Err(unknown())
        }
    }

    fn synthesize_request(&self) -> SynthesizeRequest {
        SynthesizeRequest {
            text: self.input.clone(),
            voice: self.voice.voice.clone(),
            speaker: self.voice.speaker,
            speed: self.speed,
            format: self.format.wire().into(),
            sample_rate: SAMPLE_RATE,
            ..Default::default()
        }
    }
}

/// What tts-inference refused, as this route tells it: an unknown voice or speaker is a bad
/// `voice` (400, as OpenAI answers an unknown voice), a text it cannot speak a bad `input`.
fn backend_refusal(error: &routes::StartError) -> Refusal {
    let routes::StartError::Backend(status) = error else {
        return error.problem().into();
    };
    let message = status.message();
    match status.code() {
        tonic::Code::NotFound => invalid(
            "voice",
            format!(
                "voice: {message}. Name one of {}, or a voice from GET /v1/voices.",
                VOICES.join(", ")
            ),
        ),
        tonic::Code::InvalidArgument => {
            let param = match message.split_once(':').map(|(field, _)| field) {
                Some("voice") => Some("voice"),
                Some("speed") => Some("speed"),
                _ => Some("input"),
            };
            Refusal {
                problem: Box::new(error.problem()),
                param,
            }
        }
        _ => error.problem().into(),
    }
}

/// The body of `POST /v1/audio/speech`, as OpenAI defines it (for the API document; the route
/// reads the JSON object itself, see [`SpeechRequest::parse`]).
#[derive(utoipa::ToSchema)]
#[schema(as = OpenAiSpeechRequest)]
#[allow(dead_code, reason = "describes the body for the API document only")]
pub struct SpeechRequestDoc {
    /// `tts-1`, `tts-1-hd` or `gpt-4o-mini-tts` (all speak with the mapped Sonora voice).
    model: String,
    /// The text to speak: 1 to 4,096 characters.
    input: String,
    /// An OpenAI voice name (`alloy`, `ash`, `ballad`, `coral`, `echo`, `fable`, `onyx`, `nova`,
    /// `sage`, `shimmer`, `verse`, `marin`, `cedar`), `{"id": …}`, or a Sonora voice id, mapped
    /// by `OPENAI_VOICE_MAP`.
    voice: serde_json::Value,
    /// Accepted (at most 4,096 characters) and not applied.
    instructions: Option<String>,
    /// `mp3` (the default), `opus`, `aac`, `flac`, `wav` or `pcm` (raw 16-bit little-endian mono
    /// at 24 kHz).
    response_format: Option<String>,
    /// 0.25 to 4; 1 when absent.
    #[schema(minimum = 0.25, maximum = 4.0)]
    speed: Option<f32>,
    /// `audio` (the default: the file, streamed) or `sse` (`speech.audio.delta` events with
    /// base64 audio, then `speech.audio.done` with `usage`).
    stream_format: Option<String>,
}

/// Speech for a text, as OpenAI's speech API and its SDKs call it.
///
/// Every refusal is problem+json that also carries OpenAI's `error` object (`message`, `type`,
/// `param`, `code`), so the SDKs show its message.
#[utoipa::path(
    post,
    path = "/v1/audio/speech",
    tag = crate::openapi::tag::SPEECH,
    request_body = SpeechRequestDoc,
    responses(
        (status = 200, description = "The audio, streamed (`Content-Type` names its format), or with `stream_format: sse` server-sent events.",
            headers(
                ("X-Sample-Rate" = u32, description = "The audio's sample rate in Hz (24,000)."),
                ("X-Skipped-Characters" = u32, description = "Characters of a script the voice does not read, skipped rather than spelled out."),
            ),
            content(
                (crate::openapi::AudioBytes = "audio/mpeg"),
                (crate::openapi::AudioBytes = "audio/ogg"),
                (crate::openapi::AudioBytes = "audio/aac"),
                (crate::openapi::AudioBytes = "audio/flac"),
                (crate::openapi::AudioBytes = "audio/wav"),
                (crate::openapi::AudioBytes = "audio/L16"),
                (String = "text/event-stream"),
            )),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 413, response = crate::openapi::PayloadTooLarge),
        (status = 422, response = crate::openapi::UnprocessableEntity),
        (status = 502, response = crate::openapi::BadGateway),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
#[tracing::instrument(skip_all, fields(model, format, stream_format))]
pub async fn audio_speech(
    caller: Result<Caller, Problem>,
    peers: web::Data<Peers>,
    voices: web::Data<VoiceMap>,
    body: Result<http_problem::JsonObject<Map<String, Value>>, actix_web::Error>,
) -> Result<HttpResponse, Problem> {
    speech(caller, &peers, &voices, body)
        .await
        .map_err(Refusal::into_problem)
}

async fn speech(
    caller: Result<Caller, Problem>,
    peers: &Peers,
    voices: &VoiceMap,
    body: Result<http_problem::JsonObject<Map<String, Value>>, actix_web::Error>,
) -> Result<HttpResponse, Refusal> {
    let caller = caller?;
    let key = caller.require(Scope::Tts)?;
    let body = body.map_err(|error| {
        error
            .as_error::<Problem>()
            .cloned()
            .unwrap_or_else(|| Problem::invalid_request("The JSON body could not be read."))
    })?;
    let request = SpeechRequest::parse(&body.0, voices)?;
    let span = tracing::Span::current();
    span.record("model", request.model.as_str());
    span.record("format", request.format.name());
    span.record("stream_format", tracing::field::debug(request.stream));
    let started = routes::start_synthesis(peers, key, request.synthesize_request())
        .await
        .map_err(|error| backend_refusal(&error))?;
    let mut response = HttpResponse::Ok();
    response
        .insert_header(("x-sample-rate", started.sample_rate.to_string()))
        .insert_header(("x-skipped-characters", started.skipped))
        .insert_header(("cache-control", "no-store"));
    let audio = routes::body_of(
        started.first,
        started.stream,
        started.metering.audio(),
        "synthesis",
    );
    Ok(match request.stream {
        StreamFormat::Audio => response.content_type(started.content_type).streaming(audio),
        StreamFormat::Sse => response
            .content_type("text/event-stream")
            // Proxies such as nginx would otherwise hold events back.
            .insert_header(("x-accel-buffering", "no"))
            .streaming(events(audio, request.input.chars().count())),
    })
}

/// The audio as server-sent events: a `speech.audio.delta` per non-empty chunk, then
/// `speech.audio.done` with the usage. A stream that breaks off ends with the error, before any
/// `done` event, so the client sees a failed transfer rather than a finished one.
///
/// Sonora counts `input_tokens` as the characters of `input` (what speech is metered by) and
/// `output_tokens` as the audio deltas sent.
fn events(
    audio: impl futures::Stream<Item = Result<web::Bytes, actix_web::Error>> + 'static,
    input_tokens: usize,
) -> impl futures::Stream<Item = Result<web::Bytes, actix_web::Error>> {
    let event = |value: Value| web::Bytes::from(format!("data: {value}\n\n"));
    futures::stream::unfold(
        (Box::pin(audio), 0usize, false),
        move |(mut audio, deltas, ended)| async move {
            if ended {
                return None;
            }
            loop {
                match audio.next().await {
                    Some(Ok(bytes)) if bytes.is_empty() => {}
                    Some(Ok(bytes)) => {
                        let delta = event(serde_json::json!({
                            "type": "speech.audio.delta",
                            "audio": base64::engine::general_purpose::STANDARD.encode(&bytes),
                        }));
                        return Some((Ok(delta), (audio, deltas + 1, false)));
                    }
                    Some(Err(error)) => return Some((Err(error), (audio, deltas, true))),
                    None => {
                        let done = event(serde_json::json!({
                            "type": "speech.audio.done",
                            "usage": {
                                "input_tokens": input_tokens,
                                "output_tokens": deltas,
                                "total_tokens": input_tokens + deltas,
                            },
                        }));
                        return Some((Ok(done), (audio, deltas, true)));
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    fn refused(value: Value) -> (Option<&'static str>, String) {
        let refusal = SpeechRequest::parse(&body(value), &VoiceMap::default()).unwrap_err();
        (refusal.param, refusal.problem.detail.unwrap_or_default())
    }

    #[test]
    fn the_voice_map_parses_names_voices_and_speakers() {
        let map =
            VoiceMap::parse("alloy=en_US-joe-medium, echo=en_US-libritts-high:12,nova=").unwrap();
        assert_eq!(
            map.get("alloy"),
            Some(&SonoraVoice {
                voice: "en_US-joe-medium".into(),
                speaker: None
            })
        );
        assert_eq!(map.get("echo").unwrap().speaker, Some(12));
        assert_eq!(map.get("nova"), Some(&SonoraVoice::default()));
        // Names left out keep the default voice.
        assert_eq!(map.get("cedar"), Some(&SonoraVoice::default()));
        assert_eq!(
            VoiceMap::parse(r#"{"ash": "en_US-joe-medium:0"}"#)
                .unwrap()
                .get("ash")
                .unwrap()
                .speaker,
            Some(0)
        );
        for bad in [
            "robot=en_US-joe-medium",
            "alloy",
            "alloy=a,alloy=b",
            "alloy=../etc",
            "alloy=x:y",
        ] {
            assert!(VoiceMap::parse(bad).is_err(), "{bad}");
        }
        assert!(
            !VoiceMap::parse("robot=secret-voice")
                .unwrap_err()
                .contains("robot")
        );
    }

    #[test]
    fn requests_default_as_openai_does() {
        let request = SpeechRequest::parse(
            &body(serde_json::json!({"model": "tts-1", "input": "Hi.", "voice": "alloy"})),
            &VoiceMap::default(),
        )
        .unwrap();
        assert_eq!(request.format, ResponseFormat::Mp3);
        assert_eq!(request.stream, StreamFormat::Audio);
        assert_eq!(request.speed, 1.0);
        assert_eq!(request.voice, SonoraVoice::default());
        let wire = request.synthesize_request();
        assert_eq!(wire.sample_rate, SAMPLE_RATE);

        let request = SpeechRequest::parse(
            &body(serde_json::json!({
                "model": "gpt-4o-mini-tts", "input": "Hi.", "voice": {"id": "en_US-joe-medium"},
                "instructions": "Speak warmly.", "response_format": "pcm", "speed": 2,
                "stream_format": "sse", "extra": true
            })),
            &VoiceMap::default(),
        )
        .unwrap();
        assert_eq!(request.voice.voice, "en_US-joe-medium");
        assert_eq!(request.format, ResponseFormat::Pcm);
        assert_eq!(request.stream, StreamFormat::Sse);
        assert_eq!(request.speed, 2.0);
        assert_eq!(
            request.synthesize_request().format,
            i32::from(WireFormat::Pcm16)
        );
    }

    #[test]
    fn refusals_name_the_field_and_the_rule() {
        let ok = serde_json::json!({"model": "tts-1", "input": "Hi.", "voice": "alloy"});
        let with = |key: &str, value: Value| {
            let mut body = ok.clone();
            body[key] = value;
            body
        };
        for (body, param, words) in [
            (with("model", "tts-2".into()), "model", "tts-1-hd"),
            (with("model", 3.into()), "model", "string"),
            (with("voice", "robot/1".into()), "voice", "alloy"),
            (
                with("voice", serde_json::json!({"name": "x"})),
                "voice",
                "id",
            ),
            (with("voice", Value::Null), "voice", "required"),
            (with("input", " ".into()), "input", "empty"),
            (with("input", "x".repeat(5000).into()), "input", "4096"),
            (
                with("response_format", "ogg".into()),
                "response_format",
                "aac",
            ),
            (with("speed", 5.into()), "speed", "0.25"),
            (with("stream_format", "ws".into()), "stream_format", "sse"),
            (
                with("instructions", "x".repeat(5000).into()),
                "instructions",
                "4096",
            ),
        ] {
            let (got, detail) = refused(body);
            assert_eq!(got, Some(param), "{detail}");
            assert!(detail.contains(param), "{detail}");
            assert!(detail.contains(words), "{detail}");
        }
    }

    #[test]
    fn the_error_object_rides_on_the_problem() {
        let problem = invalid("voice", "voice is required.").into_problem();
        let json = serde_json::to_value(&problem).unwrap();
        assert_eq!(json["type"], "/problems/invalid-request");
        assert_eq!(
            json["error"],
            serde_json::json!({
                "message": "voice is required.",
                "type": "invalid_request_error",
                "param": "voice",
                "code": "invalid_value",
            })
        );
        let busy = Refusal::from(Problem::unavailable("later")).into_problem();
        assert_eq!(busy.extensions["error"]["type"], "server_error");
        assert_eq!(busy.extensions["error"]["code"], "unavailable");
    }
}
