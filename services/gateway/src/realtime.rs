//! `GET /v1/tts/realtime`: text streamed in over a WebSocket as a language model writes it, and
//! audio streamed back phrase by phrase.
//!
//! The protocol (JSON text messages, documented in ARCHITECTURE.md and docs/realtime.md):
//!
//! - The client opens with `{"type": "start", "voice"?, "speaker"?, "format"?, "sample_rate"?,
//!   "speed"?, "timestamps"?, "audio"?, "chunk_length_schedule"?, "api_key"?}`. The key may come
//!   in the upgrade request's `x-api-key` or `Authorization: Bearer` header instead (browsers
//!   cannot set headers on a WebSocket, so they send it here).
//! - Then any number of `{"type": "text", "text": "..."}` fragments, `{"type": "flush"}` to speak
//!   what is buffered now, and `{"type": "close"}` to speak the rest and end.
//! - The server answers `{"type": "ready", ...}`, then for each phrase `{"type": "phrase"}`, its
//!   audio (binary frames, or `{"type": "audio", "audio": base64}` when `"audio": "base64"`), its
//!   words when asked (`{"type": "words"}`), `{"type": "phrase_end"}`; after `close`,
//!   `{"type": "done", "usage": {...}}` and a normal close (1000). Any refusal is
//!   `{"type": "error", "code", "message"}` followed by a close with the code's close status.
//!
//! Each phrase ([`phrases::Assembler`]) is one `Synthesize` call made through
//! [`crate::routes::start_synthesis`], so it is limited, quota-counted and metered exactly like
//! `POST /v1/tts`. Only raw formats (`pcm16`, `mulaw`) are offered, since phrases are separate
//! streams whose bytes are simply concatenated.
//!
//! Backpressure: phrases wait in a channel of [`PHRASE_QUEUE`] places; audio goes out through
//! actix-ws's bounded session channel; a client that does not read stalls the sender, which
//! stops pulling from tts-inference (whose stream holds one message), which stops the request's
//! synthesis; the reader then stops taking text once the phrase queue is full. Nothing in the
//! chain grows with what the client fails to read.

pub mod phrases;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, ProtocolError, Session};
use base64::Engine as _;
use http_problem::Problem;
use ids::KeyId;
use internal_rpc::Scope;
use serde::Deserialize;
use serde_json::json;
use settings::{SettingError, Sources};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{Peers, auth::Authenticator, keys::KeyRecord, usage::Counts};

pub const PATH: &str = "/v1/tts/realtime";
/// Phrases waiting for synthesis at most, per connection.
pub const PHRASE_QUEUE: usize = 2;
/// How long the last messages of a failing connection may take to go out.
const FAREWELL: Duration = Duration::from_secs(2);

/// `REALTIME_*`: the limits of realtime connections.
#[derive(Debug, Clone)]
pub struct RealtimeSettings {
    /// `REALTIME_MAX_CONNECTIONS_PER_KEY`: open connections one key may hold on one replica.
    pub max_connections_per_key: u32,
    /// `REALTIME_IDLE_TIMEOUT`: how long a connection may go without a client message while
    /// nothing is being spoken.
    pub idle_timeout: Duration,
    /// `REALTIME_MAX_DURATION`: how long one connection may last.
    pub max_duration: Duration,
    /// `REALTIME_MAX_TEXT_CHARS`: the largest text fragment a message may carry (and so the most
    /// text the server holds unspoken beyond the phrase being made).
    pub max_text_chars: usize,
}

impl RealtimeSettings {
    pub fn load(src: &Sources) -> Result<Self, SettingError> {
        let max_connections_per_key: u32 = src.or("REALTIME_MAX_CONNECTIONS_PER_KEY", 10)?;
        if !(1..=10_000).contains(&max_connections_per_key) {
            return Err(SettingError::new(
                "REALTIME_MAX_CONNECTIONS_PER_KEY",
                "must be between 1 and 10000",
            ));
        }
        let idle_timeout = src.or("REALTIME_IDLE_TIMEOUT", Duration::from_secs(20))?;
        if idle_timeout < Duration::from_millis(100) || idle_timeout > Duration::from_secs(3600) {
            return Err(SettingError::new(
                "REALTIME_IDLE_TIMEOUT",
                "must be between 100ms and 1h",
            ));
        }
        let max_duration = src.or("REALTIME_MAX_DURATION", Duration::from_secs(3600))?;
        if max_duration < Duration::from_secs(1) || max_duration > Duration::from_secs(24 * 3600) {
            return Err(SettingError::new(
                "REALTIME_MAX_DURATION",
                "must be between 1s and 24h",
            ));
        }
        let max_text_chars: usize = src.or("REALTIME_MAX_TEXT_CHARS", 2_000)?;
        if !(100..=crate::routes::MAX_TEXT_CHARS).contains(&max_text_chars) {
            return Err(SettingError::new(
                "REALTIME_MAX_TEXT_CHARS",
                format!("must be between 100 and {}", crate::routes::MAX_TEXT_CHARS),
            ));
        }
        Ok(Self {
            max_connections_per_key,
            idle_timeout,
            max_duration,
            max_text_chars,
        })
    }

    /// The largest WebSocket message accepted: a fragment of the largest text, JSON-escaped.
    fn max_message_bytes(&self) -> usize {
        self.max_text_chars * 6 + 4096
    }
}

/// What every realtime connection shares: the limits, the open connections per key, and the
/// shutdown signal. Cheap to clone.
#[derive(Clone)]
pub struct Realtime {
    settings: RealtimeSettings,
    open: Arc<Mutex<HashMap<KeyId, u32>>>,
    shutdown: CancellationToken,
}

impl Realtime {
    pub fn new(settings: RealtimeSettings, shutdown: CancellationToken) -> Self {
        Self {
            settings,
            open: Arc::default(),
            shutdown,
        }
    }

    pub fn settings(&self) -> &RealtimeSettings {
        &self.settings
    }

    /// A place for one more connection of `key`, held until the guard drops.
    pub(crate) fn admit(&self, key: KeyId) -> Option<ConnectionGuard> {
        let mut open = self.open.lock().expect("not poisoned");
        let count = open.entry(key).or_default();
        if *count >= self.settings.max_connections_per_key {
            return None;
        }
        *count += 1;
        Some(ConnectionGuard {
            open: Arc::clone(&self.open),
            key,
        })
    }

    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }
}

/// One open connection, counted against its key until dropped.
pub(crate) struct ConnectionGuard {
    open: Arc<Mutex<HashMap<KeyId, u32>>>,
    key: KeyId,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("not poisoned");
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(crate::routes::resource(PATH, "GET").route(web::get().to(realtime)));
}

/// Why a connection ends early: the `code` of the error message and the WebSocket close status.
#[derive(Debug, Clone)]
pub struct Failure {
    pub code: String,
    pub message: String,
    pub close: CloseCode,
}

impl Failure {
    pub fn new(code: &str, message: impl Into<String>, close: CloseCode) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
            close,
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new("invalid_message", message, CloseCode::Invalid)
    }

    /// A refusal the HTTP routes would answer with `problem`: the same name (`quota_exceeded`,
    /// `not_found`, `busy`, ...) and a close status for its kind.
    pub fn from_problem(problem: &Problem) -> Self {
        let code = problem
            .kind
            .rsplit('/')
            .next()
            .unwrap_or("error")
            .replace('-', "_");
        let close = match problem.status {
            429 if code == "busy" => CloseCode::Again,
            503 => CloseCode::Again,
            400..=499 => CloseCode::Policy,
            _ => CloseCode::Error,
        };
        Self {
            code,
            message: problem
                .detail
                .clone()
                .unwrap_or_else(|| problem.title.clone()),
            close,
        }
    }
}

/// Sends `{"type": "error"}` and closes; both bounded in time, since a client that does not read
/// must not hold the task.
pub async fn fail(mut session: Session, failure: &Failure) {
    tracing::debug!(code = %failure.code, "realtime connection refused or ended");
    let message = json!({"type": "error", "code": failure.code, "message": failure.message});
    let _ = tokio::time::timeout(FAREWELL, session.text(message.to_string())).await;
    let reason = CloseReason {
        code: failure.close,
        description: Some(failure.code.clone()),
    };
    let _ = tokio::time::timeout(FAREWELL, session.close(Some(reason))).await;
}

/// The first message's body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Start {
    #[serde(rename = "type")]
    _type: String,
    #[serde(default, alias = "voice_id")]
    voice: Option<String>,
    #[serde(default)]
    speaker: Option<u32>,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    sample_rate: Option<u32>,
    #[serde(default)]
    speed: Option<f32>,
    #[serde(default)]
    timestamps: bool,
    #[serde(default)]
    audio: Option<String>,
    #[serde(default)]
    chunk_length_schedule: Option<Vec<usize>>,
    #[serde(default)]
    api_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TextMessage {
    #[serde(rename = "type")]
    _type: String,
    text: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Bare {
    #[serde(rename = "type")]
    _type: String,
}

/// A client message after the first.
enum ClientMessage {
    Text(String),
    Flush,
    Close,
}

fn field_error(error: &serde_json::Error) -> String {
    http_problem::serde_message(error)
}

fn message_type(text: &str) -> Result<(serde_json::Value, String), Failure> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|_| Failure::invalid("a message must be a JSON object"))?;
    let kind = value
        .get("type")
        .and_then(|t| t.as_str())
        .ok_or_else(|| Failure::invalid("type: required, a string"))?
        .to_owned();
    Ok((value, kind))
}

fn parse_client_message(text: &str, max_chars: usize) -> Result<ClientMessage, Failure> {
    let (value, kind) = message_type(text)?;
    match kind.as_str() {
        "text" => {
            let message: TextMessage =
                serde_json::from_value(value).map_err(|e| Failure::invalid(field_error(&e)))?;
            let chars = message.text.chars().count();
            if chars > max_chars {
                return Err(Failure::new(
                    "message_too_large",
                    format!("text: {chars} characters in one message; the limit is {max_chars}"),
                    CloseCode::Size,
                ));
            }
            Ok(ClientMessage::Text(message.text))
        }
        "flush" | "close" => {
            serde_json::from_value::<Bare>(value).map_err(|e| Failure::invalid(field_error(&e)))?;
            Ok(if kind == "flush" {
                ClientMessage::Flush
            } else {
                ClientMessage::Close
            })
        }
        "start" => Err(Failure::invalid("type: start may only be sent once, first")),
        other => Err(Failure::invalid(format!(
            "type: {other:?} is not one of text, flush, close"
        ))),
    }
}

/// How audio reaches the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AudioFraming {
    Binary,
    Base64,
}

/// The session's options, checked.
#[derive(Debug, Clone)]
struct Options {
    voice: String,
    speaker: Option<u32>,
    format: sonora_proto::tts::v1::AudioFormat,
    format_name: &'static str,
    sample_rate: u32,
    speed: f32,
    timestamps: bool,
    framing: AudioFraming,
    schedule: Vec<usize>,
}

fn options(start: &Start) -> Result<Options, Failure> {
    use sonora_proto::tts::v1::AudioFormat as F;
    let (format, format_name) = match start
        .format
        .as_deref()
        .unwrap_or("pcm16")
        .to_ascii_lowercase()
        .as_str()
    {
        "pcm16" | "pcm" => (F::Pcm16, "pcm16"),
        "mulaw" | "ulaw" => (F::Mulaw, "mulaw"),
        other => {
            return Err(Failure::invalid(format!(
                "format: {other:?} is not one of pcm16, mulaw (realtime audio is raw, so phrases join)"
            )));
        }
    };
    let sample_rate = match (format, start.sample_rate) {
        (F::Mulaw, None | Some(8000)) => 8000,
        (F::Mulaw, Some(_)) => {
            return Err(Failure::invalid("sample_rate: mulaw is 8000 Hz only"));
        }
        (_, Some(rate)) if !(8_000..=48_000).contains(&rate) => {
            return Err(Failure::invalid(
                "sample_rate: must be between 8000 and 48000",
            ));
        }
        (_, rate) => rate.unwrap_or(0),
    };
    let speed = start.speed.unwrap_or(1.0);
    if !speed.is_finite() || !(0.25..=4.0).contains(&speed) {
        return Err(Failure::invalid("speed: must be between 0.25 and 4"));
    }
    let framing = match start.audio.as_deref().unwrap_or("binary") {
        "binary" => AudioFraming::Binary,
        "base64" => AudioFraming::Base64,
        other => {
            return Err(Failure::invalid(format!(
                "audio: {other:?} is not one of binary, base64"
            )));
        }
    };
    let schedule = match &start.chunk_length_schedule {
        None => phrases::DEFAULT_SCHEDULE.to_vec(),
        Some(s)
            if (1..=8).contains(&s.len())
                && s.iter()
                    .all(|n| (phrases::SCHEDULE_MIN..=phrases::SCHEDULE_MAX).contains(n)) =>
        {
            s.clone()
        }
        Some(_) => {
            return Err(Failure::invalid(format!(
                "chunk_length_schedule: 1 to 8 entries, each {} to {} characters",
                phrases::SCHEDULE_MIN,
                phrases::SCHEDULE_MAX
            )));
        }
    };
    Ok(Options {
        voice: start.voice.clone().unwrap_or_default(),
        speaker: start.speaker,
        format,
        format_name,
        sample_rate,
        speed,
        timestamps: start.timestamps,
        framing,
        schedule,
    })
}

/// Whether the upgrade request carries a credential of its own.
fn has_credential(req: &HttpRequest) -> bool {
    req.headers().contains_key("x-api-key")
        || req
            .headers()
            .contains_key(actix_web::http::header::AUTHORIZATION)
}

/// Text in, speech out, over a WebSocket (see the module's documentation for the protocol).
#[tracing::instrument(skip_all)]
async fn realtime(
    req: HttpRequest,
    body: web::Payload,
    peers: web::Data<Peers>,
    authenticator: web::Data<Authenticator>,
    realtime: web::Data<Realtime>,
) -> Result<HttpResponse, actix_web::Error> {
    // A key in a header that is not valid is refused before the upgrade, as on every route.
    let header_key = if has_credential(&req) {
        use actix_web::FromRequest as _;
        let caller =
            crate::auth::Caller::from_request(&req, &mut actix_web::dev::Payload::None).await?;
        Some(caller.0)
    } else {
        None
    };
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let stream = stream
        .max_frame_size(realtime.settings.max_message_bytes())
        .aggregate_continuations()
        .max_continuation_size(realtime.settings.max_message_bytes());
    let connection = Connection {
        peers: peers.get_ref().clone(),
        authenticator: authenticator.get_ref().clone(),
        realtime: realtime.get_ref().clone(),
        header_key,
    };
    actix_web::rt::spawn(connection.run(session, stream));
    Ok(response)
}

struct Connection {
    peers: Peers,
    authenticator: Authenticator,
    realtime: Realtime,
    header_key: Option<KeyRecord>,
}

/// What a session spoke.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    phrases: u64,
    characters: u64,
    audio_seconds: f64,
}

impl Connection {
    async fn run(self, session: Session, mut stream: actix_ws::AggregatedMessageStream) {
        let settings = self.realtime.settings.clone();
        let first = tokio::time::timeout(settings.idle_timeout, stream.recv()).await;
        let start = match first {
            Err(_) => Err(Failure::new(
                "idle_timeout",
                format!(
                    "no start message within {} ms",
                    settings.idle_timeout.as_millis()
                ),
                CloseCode::Policy,
            )),
            Ok(None | Some(Ok(AggregatedMessage::Close(_)))) => return,
            Ok(Some(message)) => first_message(message),
        };
        let start = match start {
            Ok(start) => start,
            Err(failure) => return fail(session, &failure).await,
        };
        let key = match self.key(&start).await {
            Ok(key) => key,
            Err(failure) => return fail(session, &failure).await,
        };
        let Some(_guard) = self.realtime.admit(key.id) else {
            let failure = Failure::new(
                "too_many_connections",
                format!(
                    "this key already has {} realtime connections open (REALTIME_MAX_CONNECTIONS_PER_KEY)",
                    settings.max_connections_per_key
                ),
                CloseCode::Again,
            );
            return fail(session, &failure).await;
        };
        let mut options = match options(&start) {
            Ok(options) => options,
            Err(failure) => return fail(session, &failure).await,
        };
        options.voice = match self
            .peers
            .catalogue
            .resolve(&self.peers, &options.voice)
            .await
        {
            Ok(voice) => voice,
            Err(problem) => return fail(session, &Failure::from_problem(&problem)).await,
        };
        self.speak(session, stream, key, options).await;
    }

    /// The key in the upgrade request's header, else in the start message; it must have the
    /// `tts` scope.
    async fn key(&self, start: &Start) -> Result<KeyRecord, Failure> {
        let unauthorized = |message: &str| Failure::new("unauthorized", message, CloseCode::Policy);
        let key = match (&self.header_key, start.api_key.as_deref().map(str::trim)) {
            (Some(key), _) => key.clone(),
            (None, Some(credential)) if !credential.is_empty() => {
                let key = self
                    .authenticator
                    .authenticate(credential)
                    .await
                    .map_err(|refusal| Failure::from_problem(&Problem::from(refusal)))?;
                // The upgrade was counted without a key; count it as this key's request now.
                self.peers.meter.record(
                    &key,
                    Counts {
                        requests: 1,
                        ..Counts::default()
                    },
                );
                key
            }
            _ => {
                return Err(unauthorized(
                    "an API key is required: in the x-api-key or Authorization header, or as api_key in the start message",
                ));
            }
        };
        crate::auth::Caller(key.clone())
            .require(Scope::Tts)
            .map_err(|problem| Failure::from_problem(&problem))?;
        Ok(key)
    }

    /// The session after `start`: text in, phrases to the synthesizer, until `close`, a failure,
    /// a limit, or the client going away.
    async fn speak(
        self,
        mut session: Session,
        mut stream: actix_ws::AggregatedMessageStream,
        key: KeyRecord,
        options: Options,
    ) {
        let settings = self.realtime.settings.clone();
        let ready = json!({
            "type": "ready",
            "format": options.format_name,
            "sample_rate": (options.sample_rate != 0).then_some(options.sample_rate),
            "audio": match options.framing { AudioFraming::Binary => "binary", AudioFraming::Base64 => "base64" },
            "timestamps": options.timestamps,
            "limits": {
                "idle_timeout_ms": settings.idle_timeout.as_millis() as u64,
                "max_duration_ms": settings.max_duration.as_millis() as u64,
                "max_text_chars": settings.max_text_chars,
            },
        });
        if session.text(ready.to_string()).await.is_err() {
            return;
        }
        let mut assembler = phrases::Assembler::new(options.schedule.clone());
        let (phrase_tx, phrase_rx) = tokio::sync::mpsc::channel::<String>(PHRASE_QUEUE);
        let pending = Arc::new(AtomicUsize::new(0));
        let synthesizer = Synthesizer {
            peers: self.peers.clone(),
            key,
            options,
            session: session.clone(),
            pending: Arc::clone(&pending),
        };
        let mut synthesis = actix_web::rt::spawn(synthesizer.run(phrase_rx));
        let deadline = tokio::time::sleep(settings.max_duration);
        tokio::pin!(deadline);
        let shutdown = self.realtime.shutdown.clone();
        let mut last_heard = Instant::now();
        let mut phrase_tx = Some(phrase_tx);

        let outcome: Result<(), Failure> = loop {
            let idle_at = last_heard + settings.idle_timeout;
            tokio::select! {
                () = &mut deadline => break Err(Failure::new(
                    "max_duration",
                    format!("the connection reached its limit of {} s (REALTIME_MAX_DURATION)", settings.max_duration.as_secs()),
                    CloseCode::Policy,
                )),
                () = shutdown.cancelled() => break Err(Failure::new(
                    "shutting_down", "the server is restarting; reconnect", CloseCode::Away,
                )),
                () = tokio::time::sleep_until(idle_at) => {
                    if pending.load(Ordering::SeqCst) == 0 {
                        break Err(Failure::new(
                            "idle_timeout",
                            format!("no message for {} ms (REALTIME_IDLE_TIMEOUT)", settings.idle_timeout.as_millis()),
                            CloseCode::Policy,
                        ));
                    }
                    // Speaking counts as activity.
                    last_heard = Instant::now();
                }
                ended = &mut synthesis => {
                    // The synthesizer stops early only on a failure.
                    break match ended {
                        Ok(Err(failure)) => Err(failure),
                        _ => Err(Failure::new("internal", "speech synthesis stopped", CloseCode::Error)),
                    };
                }
                message = stream.recv() => {
                    last_heard = Instant::now();
                    let message = match message {
                        None | Some(Ok(AggregatedMessage::Close(_))) => {
                            // The client left: its synthesis stops with it.
                            synthesis.abort();
                            let _ = tokio::time::timeout(FAREWELL, session.close(None)).await;
                            return;
                        }
                        Some(Ok(AggregatedMessage::Ping(bytes))) => {
                            let _ = session.pong(&bytes).await;
                            continue;
                        }
                        Some(Ok(AggregatedMessage::Pong(_))) => continue,
                        Some(Ok(AggregatedMessage::Binary(_))) => break Err(binary_refused()),
                        Some(Err(error)) => break Err(protocol_failure(&error)),
                        Some(Ok(AggregatedMessage::Text(text))) => {
                            match parse_client_message(&text, settings.max_text_chars) {
                                Ok(message) => message,
                                Err(failure) => break Err(failure),
                            }
                        }
                    };
                    let (phrases, closing) = match message {
                        ClientMessage::Text(text) => (assembler.push(&text), false),
                        ClientMessage::Flush => (assembler.flush().into_iter().collect(), false),
                        ClientMessage::Close => (assembler.flush().into_iter().collect(), true),
                    };
                    let Some(tx) = phrase_tx.as_ref() else { continue };
                    let mut queued = Ok(());
                    for phrase in phrases {
                        pending.fetch_add(1, Ordering::SeqCst);
                        // Waits while the queue is full: the client's text stops being read.
                        tokio::select! {
                            sent = tx.send(phrase) => if sent.is_err() { break },
                            () = &mut deadline => {
                                queued = Err(Failure::new(
                                    "max_duration",
                                    format!("the connection reached its limit of {} s (REALTIME_MAX_DURATION)", settings.max_duration.as_secs()),
                                    CloseCode::Policy,
                                ));
                                break;
                            }
                        }
                    }
                    if let Err(failure) = queued {
                        break Err(failure);
                    }
                    if closing {
                        // The synthesizer ends once the queue is drained.
                        drop(phrase_tx.take());
                        break Ok(());
                    }
                }
            }
        };
        if let Err(failure) = outcome {
            synthesis.abort();
            return fail(session, &failure).await;
        }
        // `close`: the rest is spoken, then the usage.
        let finished = tokio::select! {
            finished = &mut synthesis => finished,
            () = &mut deadline => {
                synthesis.abort();
                return fail(session, &Failure::new("max_duration", "the connection reached its limit (REALTIME_MAX_DURATION)", CloseCode::Policy)).await;
            }
            () = shutdown.cancelled() => {
                synthesis.abort();
                return fail(session, &Failure::new("shutting_down", "the server is restarting; reconnect", CloseCode::Away)).await;
            }
        };
        let totals = match finished {
            Ok(Ok(totals)) => totals,
            Ok(Err(failure)) => return fail(session, &failure).await,
            Err(_) => {
                return fail(
                    session,
                    &Failure::new("internal", "speech synthesis stopped", CloseCode::Error),
                )
                .await;
            }
        };
        let done = json!({
            "type": "done",
            "usage": {
                "phrases": totals.phrases,
                "characters": totals.characters,
                "audio_seconds": totals.audio_seconds,
            },
        });
        let _ = tokio::time::timeout(FAREWELL, session.text(done.to_string())).await;
        let _ = tokio::time::timeout(
            FAREWELL,
            session.close(Some(CloseReason {
                code: CloseCode::Normal,
                description: Some("done".to_owned()),
            })),
        )
        .await;
    }
}

fn binary_refused() -> Failure {
    Failure::new(
        "unsupported_data",
        "binary messages are not accepted; send JSON text messages",
        CloseCode::Unsupported,
    )
}

fn protocol_failure(error: &ProtocolError) -> Failure {
    match error {
        ProtocolError::Overflow => Failure::new(
            "message_too_large",
            "the message is larger than this server accepts (REALTIME_MAX_TEXT_CHARS)",
            CloseCode::Size,
        ),
        _ => Failure::new(
            "protocol_error",
            "the WebSocket framing is invalid",
            CloseCode::Protocol,
        ),
    }
}

fn first_message(message: Result<AggregatedMessage, ProtocolError>) -> Result<Start, Failure> {
    match message {
        Err(error) => Err(protocol_failure(&error)),
        Ok(AggregatedMessage::Binary(_)) => Err(binary_refused()),
        Ok(AggregatedMessage::Text(text)) => {
            let (value, kind) = message_type(&text)?;
            if kind != "start" {
                return Err(Failure::invalid(format!(
                    "type: the first message must be start, not {kind:?}"
                )));
            }
            serde_json::from_value(value).map_err(|e| Failure::invalid(field_error(&e)))
        }
        Ok(_) => Err(Failure::invalid(
            "the first message must be a start message",
        )),
    }
}

/// Speaks phrases one after another, sending each one's audio as it comes.
struct Synthesizer {
    peers: Peers,
    key: KeyRecord,
    options: Options,
    session: Session,
    pending: Arc<AtomicUsize>,
}

impl Synthesizer {
    async fn run(
        mut self,
        mut phrases: tokio::sync::mpsc::Receiver<String>,
    ) -> Result<Totals, Failure> {
        let mut totals = Totals::default();
        let mut index = 0u64;
        while let Some(phrase) = phrases.recv().await {
            let spoken = self.phrase(index, &phrase, totals.audio_seconds).await;
            self.pending.fetch_sub(1, Ordering::SeqCst);
            if let Some(seconds) = spoken? {
                totals.phrases += 1;
                totals.characters += phrase.chars().count() as u64;
                totals.audio_seconds += seconds;
            }
            index += 1;
        }
        Ok(totals)
    }

    async fn send(&mut self, message: serde_json::Value) -> Result<(), Failure> {
        self.session
            .text(message.to_string())
            .await
            .map_err(|_| gone())
    }

    /// One phrase: its seconds of audio, or `None` when tts-inference refused its text (nothing
    /// speakable, a script the voice does not read), which is reported and skipped.
    async fn phrase(
        &mut self,
        index: u64,
        text: &str,
        offset: f64,
    ) -> Result<Option<f64>, Failure> {
        let request = sonora_proto::tts::v1::SynthesizeRequest {
            text: text.to_owned(),
            voice: self.options.voice.clone(),
            speaker: self.options.speaker,
            speed: self.options.speed,
            format: self.options.format.into(),
            sample_rate: self.options.sample_rate,
            timestamps: self.options.timestamps,
            text_type: sonora_proto::tts::v1::TextType::Plain.into(),
            ..Default::default()
        };
        let started = match crate::routes::start_synthesis(&self.peers, &self.key, request).await {
            Ok(started) => started,
            Err(error) => {
                let problem = error.problem();
                if matches!(problem.status, 400 | 422) {
                    let failure = Failure::from_problem(&problem);
                    self.send(json!({
                        "type": "warning",
                        "code": failure.code,
                        "phrase": index,
                        "message": failure.message,
                    }))
                    .await?;
                    return Ok(None);
                }
                return Err(Failure::from_problem(&problem));
            }
        };
        self.send(json!({
            "type": "phrase",
            "phrase": index,
            "text": text,
            "sample_rate": started.sample_rate,
        }))
        .await?;
        let mut meter = started.metering.audio();
        let mut stream = started.stream;
        let mut message = sonora_proto::tts::v1::SynthesizeResponse {
            audio: started.first,
            words: started.first_words,
            done: started.first_done,
            audio_seconds: started.first_audio_seconds,
            ..Default::default()
        };
        // The first message was metered by start_synthesis when it was the last.
        let mut metered = message.done;
        loop {
            let (done, seconds) = (message.done, message.audio_seconds);
            let words = std::mem::take(&mut message.words);
            let audio = if metered {
                std::mem::take(&mut message.audio)
            } else {
                meter(message)
            };
            if !audio.is_empty() {
                match self.options.framing {
                    AudioFraming::Binary => self.session.binary(audio).await.map_err(|_| gone())?,
                    AudioFraming::Base64 => {
                        self.send(json!({
                            "type": "audio",
                            "phrase": index,
                            "audio": base64::engine::general_purpose::STANDARD.encode(&audio),
                        }))
                        .await?;
                    }
                }
            }
            if self.options.timestamps && !words.is_empty() {
                let words: Vec<_> = words
                    .iter()
                    .map(|w| json!({"word": w.word, "start": w.start + offset, "end": w.end + offset}))
                    .collect();
                self.send(json!({"type": "words", "phrase": index, "words": words}))
                    .await?;
            }
            if done {
                self.send(json!({"type": "phrase_end", "phrase": index, "audio_seconds": seconds}))
                    .await?;
                return Ok(Some(seconds));
            }
            message = match stream.message().await {
                Ok(Some(next)) => next,
                Ok(None) => {
                    return Err(Failure::new(
                        "synthesis_failed",
                        "tts-inference ended a phrase early",
                        CloseCode::Error,
                    ));
                }
                Err(status) => {
                    return Err(Failure::from_problem(&crate::routes::synthesis_problem(
                        &status,
                    )));
                }
            };
            metered = false;
        }
    }
}

fn gone() -> Failure {
    Failure::new(
        "client_gone",
        "the client closed the connection",
        CloseCode::Normal,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_become_codes_and_close_statuses() {
        let f = Failure::from_problem(&Problem::not_found().detail("no voice x"));
        assert_eq!((f.code.as_str(), f.close), ("not_found", CloseCode::Policy));
        let f = Failure::from_problem(&Problem::unavailable("later"));
        assert_eq!(f.close, CloseCode::Again);
        let f = Failure::from_problem(&Problem::bad_gateway("broke"));
        assert_eq!(f.close, CloseCode::Error);
    }

    #[test]
    fn client_messages_name_the_field_and_the_rule() {
        let error = |text: &str| match parse_client_message(text, 100) {
            Err(failure) => (failure.code, failure.message),
            Ok(_) => panic!("{text} accepted"),
        };
        assert_eq!(error("nope").1, "a message must be a JSON object");
        assert_eq!(error("{}").1, "type: required, a string");
        assert!(error(r#"{"type":"text"}"#).1.contains("text"));
        assert!(error(r#"{"type":"text","text":"a","x":1}"#).1.contains('x'));
        assert_eq!(
            error(&format!(
                r#"{{"type":"text","text":"{}"}}"#,
                "a".repeat(101)
            ))
            .0,
            "message_too_large"
        );
        assert!(error(r#"{"type":"dance"}"#).1.contains("dance"));
        assert!(matches!(
            parse_client_message(r#"{"type":"flush"}"#, 100),
            Ok(ClientMessage::Flush)
        ));
    }

    #[test]
    fn start_options_are_checked() {
        let start = |json: serde_json::Value| -> Start { serde_json::from_value(json).unwrap() };
        let o = options(&start(json!({"type": "start", "format": "mulaw"}))).unwrap();
        assert_eq!(o.sample_rate, 8000);
        assert!(
            options(&start(
                json!({"type": "start", "format": "mulaw", "sample_rate": 16000})
            ))
            .is_err()
        );
        assert!(options(&start(json!({"type": "start", "format": "mp3"}))).is_err());
        assert!(options(&start(json!({"type": "start", "speed": 9.0}))).is_err());
        assert!(
            options(&start(
                json!({"type": "start", "chunk_length_schedule": [10]})
            ))
            .is_err()
        );
        let o = options(&start(
            json!({"type": "start", "sample_rate": 16000, "audio": "base64"}),
        ))
        .unwrap();
        assert_eq!((o.sample_rate, o.framing), (16000, AudioFraming::Base64));
    }
}
