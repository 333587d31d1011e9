//! The Media Streams WebSocket, the calls this replica holds, and `say` / `clear`.
//!
//! Twilio's JSON messages (`connected`, `start`, `media`, `mark`, `dtmf`, `stop`) come in; the
//! call answers with `media` (base64 μ-law at 8 kHz in 20 ms frames of 160 bytes), `mark` and
//! `clear`. Each utterance (the number's greeting, then each `say`) is synthesised on its own
//! as μ-law and sent as fast as it is made (Twilio buffers and plays in order), followed by a
//! `mark` named after the utterance; when Twilio echoes the mark, the utterance has been heard:
//! `say?wait=true` returns and partners get `call.utterance.played`.
//!
//! `clear` (barge-in) stops the utterance being made at once (its task is aborted, so no further
//! frame is sent), sends its mark and then Twilio's `clear`, which discards what Twilio had
//! buffered and echoes every pending mark at once: those utterances end `interrupted`, and the
//! ones still queued end `cleared`.
//!
//! A call is held in the memory of the replica its WebSocket reached ([`Registry`]). Another
//! replica that receives a `say` or `clear` for it finds the holder in Redis
//! (`gateway:call:{call_sid}` → the replica's id and the tenant) and forwards the command on the
//! holder's channel (`gateway:replica:{id}`); the holder runs it and answers on a list
//! (`gateway:reply:{request}`) the forwarder waits on. A call belongs to the tenant of its number:
//! another tenant's key gets 404, as for a call that does not exist.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use actix_web::{HttpRequest, HttpResponse, http::StatusCode, web};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, Session};
use base64::Engine as _;
use chrono::{SecondsFormat, Utc};
use http_problem::Problem;
use ids::Tenant;
use internal_rpc::Scope;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sonora_proto::tts::v1::{AudioFormat, SynthesizeRequest, SynthesizeResponse, TextType};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, ToSchema};

use super::{
    Telephony,
    events::{CallEvent, Events},
};
use crate::{Peers, auth::Caller, keys::KeyRecord};

/// 20 ms of μ-law at 8 kHz.
pub const FRAME_BYTES: usize = 160;
/// The largest message accepted from Twilio (its media messages are about 400 bytes).
const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// How long Twilio may take from the upgrade to `start`.
const START_WAIT: Duration = Duration::from_secs(10);
/// A stream silent this long (Twilio sends inbound audio 50 times a second) is over.
const SILENCE: Duration = Duration::from_secs(60);
/// Commands waiting for a call, at most (a `say` beyond is 429).
const COMMAND_QUEUE: usize = 32;
/// Utterances queued on one call, at most.
const MAX_QUEUED: usize = 64;
/// How long the holder of a call has to answer a forwarded command beyond its own wait.
const FORWARD_SLACK: Duration = Duration::from_secs(5);
/// How long a call's holder is remembered in Redis: Twilio's longest call (4 hours).
const HOLDER_TTL_SECONDS: u64 = 4 * 3600;

/// How an utterance ended, as `say?wait=true` and `call.utterance.played` report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Twilio played all of it (its mark came back).
    Played,
    /// A `clear` stopped it while it was being made or played.
    Interrupted,
    /// A `clear` removed it before it began.
    Cleared,
    /// It could not be synthesised (see the gateway's log).
    Failed,
    /// The call ended first.
    CallEnded,
}

/// One thing to say on a call.
struct Utterance {
    id: String,
    text: String,
    text_type: TextType,
    voice: Option<String>,
    /// The key that asked, charged for its characters; none for the number's greeting.
    key: Option<KeyRecord>,
    waiters: Vec<oneshot::Sender<Outcome>>,
    interrupted: bool,
    audio_seconds: f64,
}

impl Utterance {
    fn end(self, outcome: Outcome) {
        for waiter in self.waiters {
            let _ = waiter.send(outcome);
        }
    }
}

fn utterance_id() -> String {
    format!("utt_{}", uuid::Uuid::now_v7().simple())
}

/// What the application asks of a call.
enum Command {
    Say(Box<Utterance>),
    Clear(oneshot::Sender<usize>),
}

#[derive(Clone)]
struct CallHandle {
    tenant: Tenant,
    commands: mpsc::Sender<Command>,
}

/// The calls held by this replica, and where the others' are (Redis). Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    local: Arc<Mutex<HashMap<String, CallHandle>>>,
    redis: deadpool_redis::Pool,
    replica: String,
}

impl Registry {
    pub fn new(redis: deadpool_redis::Pool) -> Self {
        Self {
            local: Arc::default(),
            redis,
            replica: uuid::Uuid::new_v4().simple().to_string(),
        }
    }

    /// The calls this replica holds.
    pub fn len(&self) -> usize {
        self.local.lock().expect("not poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    async fn insert(&self, call_sid: &str, handle: CallHandle) {
        let tenant = handle.tenant.to_string();
        self.local
            .lock()
            .expect("not poisoned")
            .insert(call_sid.to_owned(), handle);
        let recorded = async {
            let mut conn = redis_pool::get(&self.redis)
                .await
                .map_err(|e| e.to_string())?;
            deadpool_redis::redis::cmd("SET")
                .arg(format!("gateway:call:{call_sid}"))
                .arg(format!("{} {tenant}", self.replica))
                .arg("EX")
                .arg(HOLDER_TTL_SECONDS)
                .query_async::<()>(&mut conn)
                .await
                .map_err(|e| e.to_string())
        };
        if let Err(error) = recorded.await {
            tracing::warn!(%error, "cannot record the call's replica in Redis; only this replica can speak on it");
        }
    }

    async fn remove(&self, call_sid: &str) {
        self.local.lock().expect("not poisoned").remove(call_sid);
        let removed = async {
            let mut conn = redis_pool::get(&self.redis)
                .await
                .map_err(|e| e.to_string())?;
            deadpool_redis::redis::cmd("DEL")
                .arg(format!("gateway:call:{call_sid}"))
                .query_async::<i64>(&mut conn)
                .await
                .map_err(|e| e.to_string())
        };
        if let Err(error) = removed.await {
            tracing::debug!(%error, "cannot remove the call's replica from Redis; it expires");
        }
    }

    /// The call `call_sid` of `tenant` held here; another tenant's call is `None`, like a call
    /// that does not exist.
    fn local(&self, call_sid: &str, tenant: &Tenant) -> Option<CallHandle> {
        self.local
            .lock()
            .expect("not poisoned")
            .get(call_sid)
            .filter(|h| &h.tenant == tenant)
            .cloned()
    }
}

fn call_not_found(call_sid: &str) -> Problem {
    Problem::not_found().detail(format!(
        "call_sid: no call {call_sid} is in progress for this tenant"
    ))
}

/// The Media Streams WebSocket Twilio connects to.
#[tracing::instrument(skip_all)]
pub(crate) async fn media(
    req: HttpRequest,
    body: web::Payload,
    telephony: web::Data<Telephony>,
) -> Result<HttpResponse, actix_web::Error> {
    telephony.token()?;
    let url = telephony
        .settings
        .media_url()
        .ok_or_else(Problem::internal)?;
    telephony.verify(&req, &url, &[])?;
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let stream = stream
        .max_frame_size(MAX_MESSAGE_BYTES)
        .aggregate_continuations()
        .max_continuation_size(MAX_MESSAGE_BYTES);
    actix_web::rt::spawn(run_call(telephony.get_ref().clone(), session, stream));
    Ok(response)
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// What `start` said.
struct Started {
    stream_sid: String,
    call_sid: String,
    tenant: Tenant,
    number: super::NumberConfig,
    from: String,
}

fn text_of(value: &serde_json::Value, pointer: &str) -> String {
    value
        .pointer(pointer)
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned()
}

/// Reads up to Twilio's `start` and checks it against the configuration.
async fn await_start(
    telephony: &Telephony,
    stream: &mut actix_ws::AggregatedMessageStream,
) -> Result<Started, &'static str> {
    let deadline = tokio::time::Instant::now() + START_WAIT;
    loop {
        let message = tokio::time::timeout_at(deadline, stream.recv())
            .await
            .map_err(|_| "no start message")?;
        let text = match message {
            Some(Ok(AggregatedMessage::Text(text))) => text,
            Some(Ok(AggregatedMessage::Ping(_) | AggregatedMessage::Pong(_))) => continue,
            _ => return Err("the stream ended before start"),
        };
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|_| "a message is not JSON")?;
        match value.get("event").and_then(|e| e.as_str()) {
            Some("start") => {}
            Some("connected") => continue,
            _ => return Err("the first messages are not connected and start"),
        }
        let stream_sid = text_of(&value, "/start/streamSid");
        let call_sid = text_of(&value, "/start/callSid");
        if stream_sid.is_empty() || call_sid.is_empty() || call_sid.len() > 64 {
            return Err("start lacks streamSid or callSid");
        }
        if let Some(sid) = &telephony.settings.account_sid
            && text_of(&value, "/start/accountSid") != *sid
        {
            return Err("the stream belongs to another Twilio account");
        }
        let number = text_of(&value, "/start/customParameters/number");
        let config = telephony
            .settings
            .numbers
            .get(&number)
            .ok_or("the stream's number is not configured")?;
        // The parameters came from our own TwiML over a signed connection; the tenant is still
        // taken from the configuration, which may have changed since.
        if text_of(&value, "/start/customParameters/tenant") != config.tenant {
            return Err("the stream's tenant is not the number's");
        }
        let tenant = Tenant::parse(&config.tenant).map_err(|_| "the number's tenant is invalid")?;
        return Ok(Started {
            stream_sid,
            call_sid,
            tenant,
            number: config.clone(),
            from: text_of(&value, "/start/customParameters/from"),
        });
    }
}

async fn run_call(
    telephony: Telephony,
    session: Session,
    mut stream: actix_ws::AggregatedMessageStream,
) {
    let started = match await_start(&telephony, &mut stream).await {
        Ok(started) => started,
        Err(why) => {
            tracing::warn!(why, "a media stream was refused");
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                session.close(Some(CloseReason {
                    code: CloseCode::Policy,
                    description: Some(why.to_owned()),
                })),
            )
            .await;
            return;
        }
    };
    let span = tracing::info_span!("call", call = %started.call_sid, tenant = %started.tenant);
    let _entered = span.enter();
    drop(_entered);
    let (commands_tx, commands) = mpsc::channel(COMMAND_QUEUE);
    telephony
        .calls
        .insert(
            &started.call_sid,
            CallHandle {
                tenant: started.tenant.clone(),
                commands: commands_tx,
            },
        )
        .await;
    let started_at = now();
    let clock = std::time::Instant::now();
    telephony.events.publish(CallEvent {
        tenant: started.tenant.clone(),
        event_type: "call.started",
        payload: json!({
            "event_type": "call.started",
            "call_sid": started.call_sid,
            "stream_sid": started.stream_sid,
            "number": started.number.number,
            "from": started.from,
            "started_at": started_at,
        }),
    });
    tracing::info!(call = %started.call_sid, tenant = %started.tenant, "call started");
    let (done_tx, done) = mpsc::channel(4);
    let mut call = Call {
        session,
        stream_sid: started.stream_sid.clone(),
        call_sid: started.call_sid.clone(),
        tenant: started.tenant.clone(),
        default_voice: started.number.voice.clone(),
        peers: telephony.peers.clone(),
        events: telephony.events.clone(),
        queue: VecDeque::new(),
        speaking: None,
        awaiting: HashMap::new(),
        done_tx,
        spoken: 0,
    };
    if let Some(greeting) = started
        .number
        .greeting
        .clone()
        .filter(|g| !g.trim().is_empty())
    {
        call.queue.push_back(Utterance {
            id: utterance_id(),
            text: greeting,
            text_type: TextType::Plain,
            voice: None,
            key: None,
            waiters: Vec::new(),
            interrupted: false,
            audio_seconds: 0.0,
        });
    }
    let reason = call
        .run(&mut stream, commands, done, &telephony.shutdown)
        .await;
    telephony.calls.remove(&started.call_sid).await;
    let spoken = call.spoken;
    call.end().await;
    tracing::info!(call = %started.call_sid, reason, "call completed");
    telephony.events.publish(CallEvent {
        tenant: started.tenant,
        event_type: "call.completed",
        payload: json!({
            "event_type": "call.completed",
            "call_sid": started.call_sid,
            "stream_sid": started.stream_sid,
            "number": started.number.number,
            "started_at": started_at,
            "ended_at": now(),
            "duration_seconds": clock.elapsed().as_secs_f64(),
            "utterances": spoken,
            "reason": reason,
        }),
    });
}

/// A call in progress.
struct Call {
    session: Session,
    stream_sid: String,
    call_sid: String,
    tenant: Tenant,
    default_voice: Option<String>,
    peers: Peers,
    events: Events,
    queue: VecDeque<Utterance>,
    /// The utterance being synthesised and sent, and its task.
    speaking: Option<(Utterance, tokio::task::JoinHandle<()>)>,
    /// Utterances sent whole (their mark too), by mark name, until the mark comes back.
    awaiting: HashMap<String, Utterance>,
    done_tx: mpsc::Sender<(String, Result<f64, String>)>,
    /// Utterances that ended played or interrupted.
    spoken: u64,
}

impl Call {
    async fn run(
        &mut self,
        stream: &mut actix_ws::AggregatedMessageStream,
        mut commands: mpsc::Receiver<Command>,
        mut done: mpsc::Receiver<(String, Result<f64, String>)>,
        shutdown: &CancellationToken,
    ) -> &'static str {
        loop {
            self.start_next();
            tokio::select! {
                () = shutdown.cancelled() => return "shutdown",
                message = tokio::time::timeout(SILENCE, stream.recv()) => {
                    let text = match message {
                        Err(_) => return "silence",
                        Ok(None | Some(Ok(AggregatedMessage::Close(_)))) => return "closed",
                        Ok(Some(Err(_))) => return "protocol error",
                        Ok(Some(Ok(AggregatedMessage::Text(text)))) => text,
                        Ok(Some(Ok(_))) => continue,
                    };
                    let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
                        continue;
                    };
                    match value.get("event").and_then(|e| e.as_str()) {
                        Some("stop") => return "stop",
                        Some("mark") => self.mark_returned(&text_of(&value, "/mark/name")),
                        Some("dtmf") => {
                            let digit = text_of(&value, "/dtmf/digit");
                            if digit.chars().count() == 1 {
                                self.events.publish(CallEvent {
                                    tenant: self.tenant.clone(),
                                    event_type: "call.dtmf",
                                    payload: json!({
                                        "event_type": "call.dtmf",
                                        "call_sid": self.call_sid,
                                        "digit": digit,
                                        "at": now(),
                                    }),
                                });
                            }
                        }
                        // Inbound audio is not listened to (yet).
                        _ => {}
                    }
                }
                command = commands.recv() => match command {
                    Some(Command::Say(utterance)) => {
                        if self.queue.len() >= MAX_QUEUED {
                            utterance.end(Outcome::Cleared);
                        } else {
                            self.queue.push_back(*utterance);
                        }
                    }
                    Some(Command::Clear(reply)) => {
                        let cleared = self.clear().await;
                        let _ = reply.send(cleared);
                    }
                    None => {}
                },
                Some((id, result)) = done.recv() => self.finished(&id, result).await,
            }
        }
    }

    /// Starts the next utterance when none is being made.
    fn start_next(&mut self) {
        if self.speaking.is_some() {
            return;
        }
        let Some(utterance) = self.queue.pop_front() else {
            return;
        };
        let request = SynthesizeRequest {
            text: utterance.text.clone(),
            voice: utterance
                .voice
                .clone()
                .or_else(|| self.default_voice.clone())
                .unwrap_or_default(),
            speed: 1.0,
            format: AudioFormat::Mulaw.into(),
            sample_rate: 8000,
            text_type: utterance.text_type.into(),
            ..Default::default()
        };
        let speaker = Speaker {
            session: self.session.clone(),
            stream_sid: self.stream_sid.clone(),
            peers: self.peers.clone(),
            key: utterance.key.clone(),
        };
        let done = self.done_tx.clone();
        let id = utterance.id.clone();
        let task = actix_web::rt::spawn(async move {
            let result = speaker.speak(request).await;
            let _ = done.send((id, result)).await;
        });
        self.speaking = Some((utterance, task));
    }

    async fn send(&mut self, message: serde_json::Value) {
        let _ = self.session.text(message.to_string()).await;
    }

    async fn send_mark(&mut self, name: &str) {
        let mark = json!({"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}});
        self.send(mark).await;
    }

    /// The current utterance's audio has all been sent (or it failed).
    async fn finished(&mut self, id: &str, result: Result<f64, String>) {
        let Some((mut utterance, _)) = self.speaking.take_if(|(utterance, _)| utterance.id == id)
        else {
            return;
        };
        match result {
            Ok(seconds) => {
                utterance.audio_seconds = seconds;
                self.send_mark(&utterance.id).await;
                self.awaiting.insert(utterance.id.clone(), utterance);
            }
            Err(error) => {
                tracing::warn!(call = %self.call_sid, %error, "an utterance could not be spoken");
                utterance.end(Outcome::Failed);
            }
        }
    }

    /// Barge-in: nothing more of what is being said goes out, Twilio drops what it buffered, and
    /// what was queued is dropped. Returns how many utterances it stopped.
    async fn clear(&mut self) -> usize {
        let mut stopped = 0;
        if let Some((mut utterance, task)) = self.speaking.take() {
            task.abort();
            utterance.interrupted = true;
            self.send_mark(&utterance.id).await;
            self.awaiting.insert(utterance.id.clone(), utterance);
            stopped += 1;
        }
        for utterance in self.awaiting.values_mut() {
            if !utterance.interrupted {
                utterance.interrupted = true;
                stopped += 1;
            }
        }
        for utterance in self.queue.drain(..) {
            utterance.end(Outcome::Cleared);
            stopped += 1;
        }
        let clear = json!({"event": "clear", "streamSid": self.stream_sid});
        self.send(clear).await;
        stopped
    }

    fn mark_returned(&mut self, name: &str) {
        let Some(utterance) = self.awaiting.remove(name) else {
            return;
        };
        let outcome = if utterance.interrupted {
            Outcome::Interrupted
        } else {
            Outcome::Played
        };
        self.spoken += 1;
        self.events.publish(CallEvent {
            tenant: self.tenant.clone(),
            event_type: "call.utterance.played",
            payload: json!({
                "event_type": "call.utterance.played",
                "call_sid": self.call_sid,
                "utterance_id": utterance.id,
                "outcome": outcome,
                "audio_seconds": utterance.audio_seconds,
                "at": now(),
            }),
        });
        utterance.end(outcome);
    }

    /// The call is over: whatever was pending ends with it.
    async fn end(mut self) {
        if let Some((utterance, task)) = self.speaking.take() {
            task.abort();
            utterance.end(Outcome::CallEnded);
        }
        for (_, utterance) in self.awaiting.drain() {
            utterance.end(Outcome::CallEnded);
        }
        for utterance in self.queue.drain(..) {
            utterance.end(Outcome::CallEnded);
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.session.close(None)).await;
    }
}

/// Meters a keyed synthesis stream as its messages pass ([`crate::routes::Metering::audio`]).
type Meter = Box<dyn FnMut(SynthesizeResponse) -> Vec<u8>>;

/// Synthesises one utterance and sends it as media frames.
struct Speaker {
    session: Session,
    stream_sid: String,
    peers: Peers,
    key: Option<KeyRecord>,
}

impl Speaker {
    /// The utterance's seconds of audio once all of it is sent.
    async fn speak(mut self, mut request: SynthesizeRequest) -> Result<f64, String> {
        let mut pending: Vec<u8> = Vec::with_capacity(4 * FRAME_BYTES);
        let (first, mut stream, mut meter): (SynthesizeResponse, _, Option<Meter>) =
            match self.key.take() {
                Some(key) => {
                    let started = crate::routes::start_synthesis(&self.peers, &key, request)
                        .await
                        .map_err(|e| e.problem().detail.unwrap_or_default())?;
                    let first = SynthesizeResponse {
                        audio: started.first,
                        done: started.first_done,
                        audio_seconds: started.first_audio_seconds,
                        ..Default::default()
                    };
                    (
                        first,
                        started.stream,
                        Some(Box::new(started.metering.audio())),
                    )
                }
                None => {
                    // The number's greeting: the operator's words, spoken for the tenant but charged
                    // to no key.
                    request.voice = self
                        .peers
                        .catalogue
                        .resolve(&self.peers, &request.voice)
                        .await
                        .map_err(|p| p.detail.unwrap_or_default())?;
                    let mut stream = self
                        .peers
                        .tts
                        .clone()
                        .synthesize(request)
                        .await
                        .map_err(|s| s.message().to_owned())?
                        .into_inner();
                    let first = stream
                        .message()
                        .await
                        .map_err(|s| s.message().to_owned())?
                        .ok_or("no audio")?;
                    (first, stream, None)
                }
            };
        let mut message = first;
        let mut first_message = true;
        loop {
            let (done, seconds) = (message.done, message.audio_seconds);
            let audio = match meter.as_mut() {
                // start_synthesis metered a first message that was also the last.
                Some(meter) if !(first_message && done) => meter(message),
                _ => message.audio,
            };
            first_message = false;
            pending.extend_from_slice(&audio);
            let whole = pending.len() / FRAME_BYTES * FRAME_BYTES;
            for frame in pending[..whole].chunks(FRAME_BYTES) {
                self.frame(frame).await?;
            }
            pending.drain(..whole);
            if done {
                if !pending.is_empty() {
                    let rest = std::mem::take(&mut pending);
                    self.frame(&rest).await?;
                }
                return Ok(seconds);
            }
            message = stream
                .message()
                .await
                .map_err(|s| s.message().to_owned())?
                .ok_or("the synthesis stream ended early")?;
        }
    }

    async fn frame(&mut self, frame: &[u8]) -> Result<(), String> {
        let media = json!({
            "event": "media",
            "streamSid": self.stream_sid,
            "media": {"payload": base64::engine::general_purpose::STANDARD.encode(frame)},
        });
        self.session
            .text(media.to_string())
            .await
            .map_err(|_| "the stream closed".to_owned())
    }
}

/// `POST /v1/calls/{call_sid}/say`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SayBody {
    /// Plain text to speak, 1 to 4,096 characters; or give `ssml`.
    #[serde(default)]
    text: Option<String>,
    /// SSML (the documented subset) to speak instead of `text`.
    #[serde(default)]
    ssml: Option<String>,
    /// The voice (slug or UUID); the number's voice when absent.
    #[serde(default)]
    voice: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SayQuery {
    /// Wait until the utterance has been played (its mark came back), was interrupted or
    /// cleared, up to `timeout_ms`.
    #[serde(default)]
    wait: bool,
    /// How long to wait, in milliseconds: at most `CALL_SAY_MAX_WAIT` (and so by default).
    #[serde(default)]
    timeout_ms: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct SayAnswer {
    utterance_id: String,
    /// `queued` (not waited for, or still playing when the wait ran out), or how it ended.
    status: String,
}

/// Speaks on a call in progress.
///
/// The text is synthesised as μ-law and sent to Twilio after what is already queued on the call;
/// its characters count against the key's quota like `/v1/tts`. Without `wait` the answer is 202
/// at once; with `wait=true` it comes when the utterance has been played, interrupted or cleared
/// (200), or 202 when `timeout_ms` ran out first. A call of another tenant is 404.
#[utoipa::path(
    post,
    path = "/v1/calls/{id}/say",
    tag = crate::openapi::tag::SPEECH,
    params(("id" = String, Path, description = "The call: Twilio's `CallSid`."), SayQuery),
    request_body = SayBody,
    responses(
        (status = 200, description = "The utterance ended (with `wait=true`).", body = SayAnswer),
        (status = 202, description = "The utterance is queued.", body = SayAnswer),
        (status = 400, response = crate::openapi::BadRequest),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
#[tracing::instrument(skip_all, fields(call = %call_sid))]
pub(crate) async fn say(
    caller: Caller,
    telephony: web::Data<Telephony>,
    call_sid: web::Path<String>,
    query: web::Query<SayQuery>,
    body: http_problem::JsonObject<SayBody>,
) -> Result<HttpResponse, Problem> {
    let key = caller.require(Scope::Tts)?.clone();
    let body = body.0;
    let (text, text_type) = match (body.text, body.ssml) {
        (Some(text), None) => (text, TextType::Plain),
        (None, Some(ssml)) => (ssml, TextType::Ssml),
        _ => {
            return Err(Problem::invalid_request(
                "text, ssml: give exactly one of them",
            ));
        }
    };
    if text.trim().is_empty() {
        return Err(Problem::invalid_request("text: must not be empty"));
    }
    let chars = text.chars().count();
    if chars > crate::routes::MAX_TEXT_CHARS {
        return Err(Problem::invalid_request(format!(
            "text: {chars} characters; the limit is {}",
            crate::routes::MAX_TEXT_CHARS
        )));
    }
    let wait = if query.wait {
        let most = telephony.settings.say_max_wait;
        Some(
            query
                .timeout_ms
                .map_or(most, |ms| Duration::from_millis(ms).min(most)),
        )
    } else {
        None
    };
    let request = Forwarded {
        request: uuid::Uuid::new_v4().simple().to_string(),
        call_sid: call_sid.into_inner(),
        tenant: key.tenant.to_string(),
        key_id: Some(key.id.to_string()),
        action: Action::Say {
            text,
            ssml: text_type == TextType::Ssml,
            voice: body.voice.filter(|v| !v.trim().is_empty()),
            wait_ms: wait.map(|w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX)),
        },
    };
    let answer = match telephony.calls.local(&request.call_sid, &key.tenant) {
        Some(handle) => run_say(&handle, &request, key).await,
        None => forward(&telephony, &request).await,
    };
    answer.map(Answer::into_response)
}

/// What a command answered: its status and JSON body (a problem's when it failed), the same
/// whether it ran here or on the replica holding the call.
#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    status: u16,
    body: serde_json::Value,
}

impl Answer {
    fn into_response(self) -> HttpResponse {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_GATEWAY);
        let mut response = HttpResponse::build(status);
        if self.status >= 400 {
            response.content_type("application/problem+json");
        }
        response.json(self.body)
    }

    fn problem(problem: &Problem) -> Self {
        Self {
            status: problem.status,
            body: serde_json::to_value(problem).unwrap_or_default(),
        }
    }
}

/// A `say` or `clear` as one replica hands it to the replica holding the call.
#[derive(Debug, Serialize, Deserialize)]
struct Forwarded {
    request: String,
    call_sid: String,
    tenant: String,
    key_id: Option<String>,
    action: Action,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Action {
    Say {
        text: String,
        ssml: bool,
        voice: Option<String>,
        wait_ms: Option<u64>,
    },
    Clear,
}

/// Queues a say on a call held here and waits as it asks.
async fn run_say(
    handle: &CallHandle,
    request: &Forwarded,
    key: KeyRecord,
) -> Result<Answer, Problem> {
    let Action::Say {
        text,
        ssml,
        voice,
        wait_ms,
    } = &request.action
    else {
        return Err(Problem::internal());
    };
    let (tx, rx) = oneshot::channel();
    let id = utterance_id();
    let utterance = Utterance {
        id: id.clone(),
        text: text.clone(),
        text_type: if *ssml {
            TextType::Ssml
        } else {
            TextType::Plain
        },
        voice: voice.clone(),
        key: Some(key),
        waiters: vec![tx],
        interrupted: false,
        audio_seconds: 0.0,
    };
    send_command(handle, &request.call_sid, Command::Say(Box::new(utterance)))?;
    let outcome = match wait_ms {
        None => None,
        Some(ms) => match tokio::time::timeout(Duration::from_millis(*ms), rx).await {
            Ok(Ok(outcome)) => Some(outcome),
            Ok(Err(_)) => Some(Outcome::CallEnded),
            Err(_) => None,
        },
    };
    let (status, text) = match outcome {
        Some(outcome) => (
            200,
            serde_json::to_value(outcome)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
        ),
        None => (202, "queued".to_owned()),
    };
    Ok(Answer {
        status,
        body: serde_json::to_value(SayAnswer {
            utterance_id: id,
            status: text,
        })
        .unwrap_or_default(),
    })
}

async fn run_clear(handle: &CallHandle, call_sid: &str) -> Result<Answer, Problem> {
    let (tx, rx) = oneshot::channel();
    send_command(handle, call_sid, Command::Clear(tx))?;
    let cleared = tokio::time::timeout(FORWARD_SLACK, rx)
        .await
        .map_err(|_| Problem::unavailable("The call did not answer in time.").retry_after(1))?
        .map_err(|_| call_not_found(call_sid))?;
    Ok(Answer {
        status: 200,
        body: serde_json::to_value(ClearAnswer { cleared }).unwrap_or_default(),
    })
}

/// Hands `request` to the replica holding its call (found in Redis) and waits for its answer.
async fn forward(telephony: &Telephony, request: &Forwarded) -> Result<Answer, Problem> {
    use deadpool_redis::redis;
    let unavailable = |error: String| {
        tracing::warn!(%error, "cannot reach the replica holding a call");
        Problem::unavailable("The call's replica cannot be reached right now; retry shortly.")
            .retry_after(1)
    };
    let mut conn = redis_pool::get(&telephony.calls.redis)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let holder: Option<String> = redis::cmd("GET")
        .arg(format!("gateway:call:{}", request.call_sid))
        .query_async(&mut conn)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let Some((replica, tenant)) = holder.as_deref().and_then(|h| h.split_once(' ')) else {
        return Err(call_not_found(&request.call_sid));
    };
    if tenant != request.tenant || replica == telephony.calls.replica {
        return Err(call_not_found(&request.call_sid));
    }
    let message = serde_json::to_string(request).map_err(|_| Problem::internal())?;
    let listeners: i64 = redis::cmd("PUBLISH")
        .arg(format!("gateway:replica:{replica}"))
        .arg(message)
        .query_async(&mut conn)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    if listeners == 0 {
        // The holder is gone (its key outlives a crash until it expires).
        return Err(call_not_found(&request.call_sid));
    }
    let wait = match &request.action {
        Action::Say {
            wait_ms: Some(ms), ..
        } => Duration::from_millis(*ms),
        _ => Duration::ZERO,
    } + FORWARD_SLACK;
    let deadline = tokio::time::Instant::now() + wait;
    let reply = format!("gateway:reply:{}", request.request);
    while tokio::time::Instant::now() < deadline {
        // A short block at a time: the pool's connections are multiplexed and time out a
        // command after 500 ms (Redis takes fractional timeouts since 6.0).
        let popped: Option<(String, String)> = redis::cmd("BLPOP")
            .arg(&reply)
            .arg(0.25)
            .query_async(&mut conn)
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        if let Some((_, answer)) = popped {
            return serde_json::from_str(&answer).map_err(|_| Problem::internal());
        }
    }
    Err(Problem::unavailable("The call's replica did not answer in time.").retry_after(1))
}

/// Runs the commands other replicas forward to this one, until shutdown; resubscribes when the
/// connection is lost.
pub(crate) async fn follow_forwarded(telephony: Telephony, redis_url: String) {
    let channel = format!("gateway:replica:{}", telephony.calls.replica);
    let shutdown = telephony.shutdown.clone();
    let mut delay = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        let subscribed = async {
            let client = deadpool_redis::redis::Client::open(redis_url.as_str())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            Ok::<_, deadpool_redis::redis::RedisError>(pubsub)
        };
        let pubsub = match tokio::time::timeout(Duration::from_secs(5), subscribed).await {
            Ok(Ok(pubsub)) => pubsub,
            _ => {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        delay = Duration::from_millis(200);
        let mut messages = pubsub.into_on_message();
        loop {
            use futures::StreamExt as _;
            tokio::select! {
                () = shutdown.cancelled() => return,
                message = messages.next() => match message {
                    Some(message) => {
                        let Ok(payload) = message.get_payload::<String>() else { continue };
                        let Ok(request) = serde_json::from_str::<Forwarded>(&payload) else {
                            tracing::warn!("a forwarded call command could not be read");
                            continue;
                        };
                        tokio::spawn(answer_forwarded(telephony.clone(), request));
                    }
                    None => break,
                },
            }
        }
        tracing::warn!("lost the forwarded call commands' subscription; resubscribing");
    }
}

async fn answer_forwarded(telephony: Telephony, request: Forwarded) {
    let answer = async {
        let tenant = Tenant::parse(&request.tenant).map_err(|_| Problem::internal())?;
        let handle = telephony
            .calls
            .local(&request.call_sid, &tenant)
            .ok_or_else(|| call_not_found(&request.call_sid))?;
        match &request.action {
            Action::Clear => run_clear(&handle, &request.call_sid).await,
            Action::Say { .. } => {
                let key_id = request
                    .key_id
                    .as_deref()
                    .and_then(|id| ids::KeyId::parse(id).ok())
                    .ok_or_else(Problem::internal)?;
                let key = crate::keys::find_by_id(&telephony.peers.pool, key_id)
                    .await
                    .map_err(|_| Problem::unavailable("Keys cannot be checked right now."))?
                    .filter(|k| k.tenant == tenant)
                    .ok_or_else(|| call_not_found(&request.call_sid))?;
                run_say(&handle, &request, key).await
            }
        }
    }
    .await
    .unwrap_or_else(|problem| Answer::problem(&problem));
    let replied = async {
        let mut conn = redis_pool::get(&telephony.calls.redis)
            .await
            .map_err(|e| e.to_string())?;
        let reply = format!("gateway:reply:{}", request.request);
        deadpool_redis::redis::pipe()
            .cmd("RPUSH")
            .arg(&reply)
            .arg(serde_json::to_string(&answer).unwrap_or_default())
            .ignore()
            .cmd("EXPIRE")
            .arg(&reply)
            .arg(60)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(|e| e.to_string())
    };
    if let Err(error) = replied.await {
        tracing::warn!(%error, "cannot answer a forwarded call command");
    }
}

fn send_command(handle: &CallHandle, call_sid: &str, command: Command) -> Result<(), Problem> {
    handle
        .commands
        .try_send(command)
        .map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => {
                Problem::new(StatusCode::TOO_MANY_REQUESTS, "busy", "Too Many Requests")
                    .detail("The call has too many commands waiting; retry shortly.")
                    .retry_after(1)
            }
            mpsc::error::TrySendError::Closed(_) => call_not_found(call_sid),
        })
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ClearAnswer {
    /// Utterances stopped: the one being said, those Twilio was still playing, and those queued.
    cleared: usize,
}

/// Stops speaking at once (barge-in).
///
/// Nothing more of the current utterance is sent, Twilio is told to `clear` what it buffered, and
/// queued utterances are dropped; their `say?wait=true` calls return `interrupted` or `cleared`.
#[utoipa::path(
    post,
    path = "/v1/calls/{id}/clear",
    tag = crate::openapi::tag::SPEECH,
    params(("id" = String, Path, description = "The call: Twilio's `CallSid`.")),
    responses(
        (status = 200, description = "Cleared.", body = ClearAnswer),
        (status = 403, response = crate::openapi::Forbidden),
        (status = 404, response = crate::openapi::NotFound),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
#[tracing::instrument(skip_all, fields(call = %call_sid))]
pub(crate) async fn clear(
    caller: Caller,
    telephony: web::Data<Telephony>,
    call_sid: web::Path<String>,
) -> Result<HttpResponse, Problem> {
    let key = caller.require(Scope::Tts)?;
    let request = Forwarded {
        request: uuid::Uuid::new_v4().simple().to_string(),
        call_sid: call_sid.into_inner(),
        tenant: key.tenant.to_string(),
        key_id: None,
        action: Action::Clear,
    };
    let answer = match telephony.calls.local(&request.call_sid, &key.tenant) {
        Some(handle) => run_clear(&handle, &request.call_sid).await,
        None => forward(&telephony, &request).await,
    };
    answer.map(Answer::into_response)
}
