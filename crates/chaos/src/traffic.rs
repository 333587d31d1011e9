//! Steady mixed traffic with bounded concurrency: speech (plain, streamed with word timings, the
//! OpenAI route with server-sent events), sound-effect and music jobs, GitHub and generic-source
//! webhooks (retried by the sender like real senders, and sometimes sent twice on purpose),
//! partner endpoint changes and secret rotations. Every request is recorded with what it was told.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use reqwest::Method;
use serde_json::{Value, json};

use crate::{
    services::{Instance, Service},
    stack::{CHURN_PATHS, SOURCE, STEADY_PATHS, Stack},
};

/// A small seeded generator (SplitMix64), so a run's choices repeat with its `--seed`.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What a request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Tts,
    TtsStream,
    OpenAi,
    SoundEffect,
    Music,
    GitHub,
    GitHubAgent,
    Generic,
    EndpointChange,
    EndpointRotation,
    SourceRotation,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Tts => "tts",
            Self::TtsStream => "tts streamed (timestamps)",
            Self::OpenAi => "openai speech (sse)",
            Self::SoundEffect => "sound effect",
            Self::Music => "background music",
            Self::GitHub => "github push",
            Self::GitHubAgent => "github issue (agent)",
            Self::Generic => "generic source",
            Self::EndpointChange => "endpoint change",
            Self::EndpointRotation => "endpoint secret rotation",
            Self::SourceRotation => "source secret rotation",
        }
    }

    pub fn is_speech(self) -> bool {
        matches!(self, Self::Tts | Self::TtsStream | Self::OpenAi)
    }

    pub fn is_job(self) -> bool {
        matches!(self, Self::SoundEffect | Self::Music)
    }

    pub fn is_webhook(self) -> bool {
        matches!(self, Self::GitHub | Self::GitHubAgent | Self::Generic)
    }
}

/// What a request was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// 2xx, with a complete body where the body is a stream.
    Accepted,
    /// 4xx: a refusal the client can act on (429 busy, 409, …).
    Refused,
    /// 5xx, a broken stream, or no answer at all.
    Failed,
    /// The client's own 30 s deadline passed while the server was still working or streaming:
    /// slow, not a failure the server reported. Counted and listed, not explained by a fault.
    TimedOut,
}

#[derive(Debug, Clone)]
pub struct Record {
    pub kind: Kind,
    /// The instance the request went to.
    pub target: Instance,
    /// From the start of the traffic.
    pub start: Duration,
    pub end: Duration,
    /// The HTTP status, when one came.
    pub status: Option<u16>,
    pub outcome: Outcome,
    pub detail: String,
}

/// An inbound webhook some replica accepted (2xx).
#[derive(Debug, Clone)]
pub struct AcceptedWebhook {
    pub kind: Kind,
    pub source: &'static str,
    pub delivery_id: String,
    /// The event type partners receive.
    pub event_type: &'static str,
    /// For agent runs: the issue number the prompt names.
    pub issue: Option<u64>,
}

#[derive(Debug, Default)]
pub struct Ledger {
    pub records: Vec<Record>,
    /// Jobs the gateway accepted (202), with their kind.
    pub jobs: Vec<(String, Kind)>,
    /// Job creations whose answer never came (the job may exist).
    pub ambiguous_jobs: usize,
    pub webhooks: Vec<AcceptedWebhook>,
    /// Webhooks sent a second time on purpose after being accepted.
    pub duplicates_sent: usize,
    pub rotations: usize,
    /// Times audio-generation was killed and started again.
    pub audio_restarts: usize,
}

pub struct Traffic {
    pub stack: Arc<Stack>,
    pub ledger: Arc<Mutex<Ledger>>,
    pub started: Instant,
    client: reqwest::Client,
    issue_counter: std::sync::atomic::AtomicU64,
}

/// The hook id the run's GitHub webhooks carry.
const GITHUB_HOOK_ID: &str = "4242";

const TEXTS: [&str; 4] = [
    "The quick brown fox jumps over the lazy dog.",
    "Sonora keeps every promise it makes.",
    "Nothing accepted is lost. Nothing happens twice.",
    "Rain falls softly on the tin roof tonight.",
];

impl Traffic {
    /// After [`Stack::start`], whose `test_support::http_client` installed ring as rustls's
    /// crypto provider (the workspace builds reqwest without a default one).
    pub fn new(stack: Arc<Stack>) -> Self {
        Self {
            stack,
            ledger: Arc::new(Mutex::new(Ledger::default())),
            started: Instant::now(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .connect_timeout(Duration::from_secs(2))
                .pool_max_idle_per_host(0)
                .build()
                .expect("a client"),
            issue_counter: std::sync::atomic::AtomicU64::new(1),
        }
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn record(
        &self,
        kind: Kind,
        target: Instance,
        start: Duration,
        status: Option<u16>,
        outcome: Outcome,
        detail: impl Into<String>,
    ) {
        let end = self.now();
        let detail = detail.into();
        let outcome = if outcome == Outcome::Failed
            && matches!(status, None | Some(200..=299))
            && detail.contains("operation timed out")
        {
            Outcome::TimedOut
        } else {
            outcome
        };
        self.ledger
            .lock()
            .expect("not poisoned")
            .records
            .push(Record {
                kind,
                target,
                start,
                end,
                status,
                outcome,
                detail,
            });
    }

    fn classify(status: u16) -> Outcome {
        match status {
            200..=299 => Outcome::Accepted,
            400..=499 => Outcome::Refused,
            _ => Outcome::Failed,
        }
    }

    /// One worker: picks requests by weight until `until`, pausing a little between them.
    pub async fn worker(self: Arc<Self>, seed: u64, until: Instant) {
        let mut rng = Rng::new(seed);
        let weighted: [(Kind, u64); 10] = [
            (Kind::Tts, 3),
            (Kind::TtsStream, 1),
            (Kind::OpenAi, 1),
            (Kind::SoundEffect, 3),
            (Kind::Music, 1),
            (Kind::GitHub, 3),
            (Kind::GitHubAgent, 1),
            (Kind::Generic, 3),
            (Kind::EndpointChange, 1),
            (Kind::EndpointRotation, 1),
        ];
        let total: u64 = weighted.iter().map(|(_, w)| w).sum();
        while Instant::now() < until {
            let mut pick = rng.below(total);
            let mut kind = Kind::Tts;
            for (k, w) in weighted {
                if pick < w {
                    kind = k;
                    break;
                }
                pick -= w;
            }
            // Half the rotations are of the generic source's secret.
            if kind == Kind::EndpointRotation && rng.chance(50) {
                kind = Kind::SourceRotation;
            }
            let replica = 1 + u8::from(rng.chance(50));
            match kind {
                k if k.is_speech() => self.speech(k, replica, &mut rng).await,
                k if k.is_job() => self.job(k, replica, &mut rng).await,
                k if k.is_webhook() => self.webhook(k, replica, &mut rng).await,
                Kind::EndpointChange => self.endpoint_change(replica, &mut rng).await,
                _ => self.rotation(kind, replica, &mut rng).await,
            }
            tokio::time::sleep(Duration::from_millis(150 + rng.below(250))).await;
        }
    }

    fn gateway(replica: u8) -> Instance {
        Instance {
            service: Service::Gateway,
            replica,
        }
    }

    async fn speech(&self, kind: Kind, replica: u8, rng: &mut Rng) {
        let target = Self::gateway(replica);
        let text = TEXTS[rng.below(TEXTS.len() as u64) as usize];
        let (path, body) = match kind {
            Kind::Tts => ("/v1/tts", json!({"text": text, "format": "wav"})),
            Kind::TtsStream => (
                "/v1/tts",
                json!({"text": text, "format": "mp3", "timestamps": true}),
            ),
            _ => (
                "/v1/audio/speech",
                json!({"model": "tts-1", "input": text, "voice": "alloy",
                       "response_format": "mp3", "stream_format": "sse"}),
            ),
        };
        let start = self.now();
        let response = self
            .gateway_request(replica, Method::POST, path)
            .json(&body)
            .send()
            .await;
        let response = match response {
            Ok(r) => r,
            Err(error) => {
                return self.record(
                    kind,
                    target,
                    start,
                    None,
                    Outcome::Failed,
                    error_text(&error),
                );
            }
        };
        let status = response.status().as_u16();
        let bytes = match response.bytes().await {
            Ok(b) => b,
            Err(error) => {
                return self.record(
                    kind,
                    target,
                    start,
                    Some(status),
                    Outcome::Failed,
                    format!("broken stream: {}", error_text(&error)),
                );
            }
        };
        let outcome = Self::classify(status);
        if outcome != Outcome::Accepted {
            let detail = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
            return self.record(kind, target, start, Some(status), outcome, detail);
        }
        let complete = match kind {
            Kind::Tts => bytes.starts_with(b"RIFF") && bytes.len() > 1000,
            Kind::TtsStream => String::from_utf8_lossy(&bytes)
                .lines()
                .last()
                .is_some_and(|l| l.contains("\"done\":true")),
            _ => String::from_utf8_lossy(&bytes).contains("speech.audio.done"),
        };
        if complete {
            self.record(kind, target, start, Some(status), Outcome::Accepted, "");
        } else {
            self.record(
                kind,
                target,
                start,
                Some(status),
                Outcome::Failed,
                "a 200 whose body is incomplete",
            );
        }
    }

    async fn job(&self, kind: Kind, replica: u8, rng: &mut Rng) {
        let target = Self::gateway(replica);
        let n = rng.below(1_000_000);
        let (path, body) = if kind == Kind::SoundEffect {
            (
                "/v1/sound-effects",
                json!({"prompt": format!("rain on a tin roof {n}"), "duration_seconds": 1 + rng.below(2)}),
            )
        } else {
            (
                "/v1/background-music",
                json!({"prompt": format!("calm piano {n}"), "duration_seconds": 2}),
            )
        };
        let start = self.now();
        let response = self
            .gateway_request(replica, Method::POST, path)
            .json(&body)
            .send()
            .await;
        let (status, body) = match response {
            Ok(r) => {
                let status = r.status().as_u16();
                match r.text().await {
                    Ok(text) => (status, text),
                    Err(error) => {
                        self.ledger.lock().expect("not poisoned").ambiguous_jobs += 1;
                        return self.record(
                            kind,
                            target,
                            start,
                            Some(status),
                            Outcome::Failed,
                            error_text(&error),
                        );
                    }
                }
            }
            Err(error) => {
                // Sent, perhaps received: the job may exist without the client knowing it.
                self.ledger.lock().expect("not poisoned").ambiguous_jobs += 1;
                return self.record(
                    kind,
                    target,
                    start,
                    None,
                    Outcome::Failed,
                    error_text(&error),
                );
            }
        };
        let outcome = Self::classify(status);
        if outcome == Outcome::Accepted {
            let id = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["id"].as_str().map(str::to_owned));
            match id {
                Some(id) => {
                    self.ledger
                        .lock()
                        .expect("not poisoned")
                        .jobs
                        .push((id, kind));
                    self.record(kind, target, start, Some(status), outcome, "");
                }
                None => self.record(
                    kind,
                    target,
                    start,
                    Some(status),
                    Outcome::Failed,
                    format!("accepted without an id: {body}"),
                ),
            }
        } else {
            self.record(kind, target, start, Some(status), outcome, truncate(&body));
        }
    }

    /// A webhook into a webhook-ingest replica, retried by the sender (1 s, 2 s, 4 s, 8 s, then
    /// the other replica) until it is accepted, like a real sender's redelivery with the same id.
    async fn webhook(&self, kind: Kind, replica: u8, rng: &mut Rng) {
        let delivery_id = uuid::Uuid::new_v4().to_string();
        let issue = (kind == Kind::GitHubAgent).then(|| {
            self.issue_counter
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        });
        let (source, event_type, body) = match kind {
            Kind::GitHub => (
                "github",
                "github.push",
                json!({"ref": "refs/heads/main", "after": delivery_id,
                       "repository": {"full_name": "acme/chaos"}, "pusher": {"name": "chaos"}}),
            ),
            Kind::GitHubAgent => (
                "github",
                "github.issues.labeled",
                json!({"action": "labeled", "label": {"name": "agent"},
                       "issue": {"number": issue, "title": format!("chaos {delivery_id}"),
                                 "labels": [{"name": "agent"}]},
                       "repository": {"full_name": "acme/chaos"}}),
            ),
            _ => (
                SOURCE,
                "chaos-src.order.created",
                json!({"type": "order.created", "order": delivery_id, "amount": rng.below(10_000)}),
            ),
        };
        let body = body.to_string();
        let mut accepted = false;
        let mut delay = Duration::from_secs(1);
        let mut replica = replica;
        for attempt in 1..=6 {
            if attempt == 6 {
                replica = 3 - replica;
            }
            if self
                .send_webhook(kind, replica, &delivery_id, &body)
                .await
                .is_some_and(|o| o == Outcome::Accepted)
            {
                accepted = true;
                break;
            }
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        if !accepted {
            return;
        }
        // webhook-ingest keys a GitHub delivery by hook and delivery id.
        let stored_id = if kind == Kind::Generic {
            delivery_id.clone()
        } else {
            format!("{GITHUB_HOOK_ID}:{delivery_id}")
        };
        self.ledger
            .lock()
            .expect("not poisoned")
            .webhooks
            .push(AcceptedWebhook {
                kind,
                source,
                delivery_id: stored_id,
                event_type,
                issue,
            });
        if rng.chance(10) {
            // A sender's duplicate: the same delivery again, to either replica.
            let again = 1 + u8::from(rng.chance(50));
            if self
                .send_webhook(kind, again, &delivery_id, &body)
                .await
                .is_some_and(|o| o == Outcome::Accepted)
            {
                self.ledger.lock().expect("not poisoned").duplicates_sent += 1;
            }
        }
    }

    async fn send_webhook(
        &self,
        kind: Kind,
        replica: u8,
        delivery_id: &str,
        body: &str,
    ) -> Option<Outcome> {
        let target = Instance {
            service: Service::WebhookIngest,
            replica,
        };
        let base = self.stack.ingest_url(replica);
        let request = if kind == Kind::Generic {
            let secret = self.stack.source_secret();
            let key = webhook_signature::SigningKey::parse(&secret).ok()?;
            let timestamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
            self.client
                .post(format!("{base}/api/v1/webhooks/{SOURCE}"))
                .header("content-type", "application/json")
                .header("webhook-id", delivery_id)
                .header("webhook-timestamp", timestamp.to_string())
                .header(
                    "webhook-signature",
                    key.sign(delivery_id, timestamp, body.as_bytes()),
                )
        } else {
            let tag = ring::hmac::sign(
                &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.stack.github_secret.as_bytes()),
                body.as_bytes(),
            );
            let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
            let event = if kind == Kind::GitHub {
                "push"
            } else {
                "issues"
            };
            self.client
                .post(format!("{base}/api/v1/webhooks/github"))
                .header("content-type", "application/json")
                .header("x-github-event", event)
                .header("x-github-hook-id", GITHUB_HOOK_ID)
                .header("x-github-delivery", delivery_id)
                .header("x-hub-signature-256", format!("sha256={hex}"))
        };
        let sent = self
            .send_recorded(kind, target, request.body(body.to_owned()))
            .await;
        Some(sent.map_or(Outcome::Failed, |(outcome, _)| outcome))
    }

    /// Moves the churned endpoint between its two paths and its two subscriptions.
    async fn endpoint_change(&self, replica: u8, rng: &mut Rng) {
        let Some(churn) = &self.stack.churn else {
            return;
        };
        let path = CHURN_PATHS[rng.below(2) as usize];
        let types = if rng.chance(50) {
            json!(["audio.sound_effect.completed"])
        } else {
            json!(["github.push", "chaos-src.order.created"])
        };
        let body = json!({"url": self.stack.receiver.url(path), "event_types": types,
                          "description": format!("churn {}", rng.below(1000))});
        self.gateway_call(
            Kind::EndpointChange,
            replica,
            Method::PATCH,
            &format!("/v1/webhook-endpoints/{}", churn.id),
            Some(body),
        )
        .await;
    }

    async fn rotation(&self, kind: Kind, replica: u8, rng: &mut Rng) {
        if kind == Kind::SourceRotation {
            let answer = self
                .gateway_call(
                    kind,
                    replica,
                    Method::POST,
                    &format!("/v1/inbound/sources/{SOURCE}/secret/rotate"),
                    Some(json!({"old_secret_ttl_seconds": 3600})),
                )
                .await;
            if let Some(secret) = answer.and_then(|b| b["secret"].as_str().map(str::to_owned)) {
                *self.stack.source_secret.lock().expect("not poisoned") = secret;
                self.ledger.lock().expect("not poisoned").rotations += 1;
            }
            return;
        }
        let endpoint = &self.stack.endpoints[rng.below(STEADY_PATHS.len() as u64) as usize];
        let answer = self
            .gateway_call(
                kind,
                replica,
                Method::POST,
                &format!("/v1/webhook-endpoints/{}/secret/rotate", endpoint.id),
                Some(json!({"old_secret_ttl_seconds": 3600})),
            )
            .await;
        if let Some(key) = answer.and_then(|b| b["key"].as_str().map(str::to_owned)) {
            self.stack.receiver.trust(endpoint.path, &key);
            self.ledger.lock().expect("not poisoned").rotations += 1;
        }
    }

    /// A request to a gateway replica with the run's API key.
    fn gateway_request(&self, replica: u8, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.stack.gateway_url(replica)))
            .header("x-api-key", &self.stack.api_key)
    }

    /// A JSON call to a gateway replica, recorded; the body of a 2xx answer.
    async fn gateway_call(
        &self,
        kind: Kind,
        replica: u8,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Option<Value> {
        let mut request = self.gateway_request(replica, method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let (outcome, text) = self
            .send_recorded(kind, Self::gateway(replica), request)
            .await?;
        (outcome == Outcome::Accepted)
            .then(|| serde_json::from_str(&text).ok())
            .flatten()
    }

    /// Sends `request` to `target` and records what came of it: the outcome and the answer's
    /// text, or `None` when no answer came (recorded as failed).
    async fn send_recorded(
        &self,
        kind: Kind,
        target: Instance,
        request: reqwest::RequestBuilder,
    ) -> Option<(Outcome, String)> {
        let start = self.now();
        match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let text = response.text().await.unwrap_or_default();
                let outcome = Self::classify(status);
                self.record(kind, target, start, Some(status), outcome, truncate(&text));
                Some((outcome, text))
            }
            Err(error) => {
                self.record(
                    kind,
                    target,
                    start,
                    None,
                    Outcome::Failed,
                    error_text(&error),
                );
                None
            }
        }
    }
}

fn truncate(text: &str) -> String {
    text.chars().take(300).collect()
}

/// An error with its causes (reqwest's own message hides whether it was a refused connection or
/// a timeout).
pub fn error_text(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
