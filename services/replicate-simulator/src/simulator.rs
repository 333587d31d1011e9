//! The simulated Replicate: creates predictions and runs each one to its end (a delay, then
//! success with a real file or a failure), sends its webhooks, and removes its data after the
//! retention period. The HTTP layer (`api`) only parses and answers.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::{Map, Value};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::{
    limit::CreationLimit,
    metrics::SimulatorMetrics,
    prediction::{
        self, AudioRequest, EventFilter, InputError, ModelRef, Prediction, PredictionId, Status,
    },
    settings::{KnobsHandle, Settings, WebhookSecret},
    store::{Store, StoredFile},
    synth,
    webhook::WebhookSender,
};

/// A creation request, parsed.
#[derive(Debug)]
pub struct NewPrediction {
    pub model: ModelRef,
    pub input: Map<String, Value>,
    pub audio: AudioRequest,
    pub webhook: Option<url::Url>,
    pub events: EventFilter,
    /// The `Cancel-After` deadline, from creation.
    pub cancel_after: Option<Duration>,
}

impl NewPrediction {
    /// Reads `input`, `webhook` and `webhook_events_filter` from a creation body.
    pub fn parse(model: ModelRef, body: &Map<String, Value>) -> Result<Self, InputError> {
        let input = match body.get("input") {
            Some(Value::Object(input)) => input.clone(),
            Some(_) => {
                return Err(InputError {
                    field: "input",
                    problem: "must be an object".to_owned(),
                });
            }
            None => {
                return Err(InputError {
                    field: "input",
                    problem: "is required".to_owned(),
                });
            }
        };
        let webhook = webhook_url(body, "webhook")?;
        let events = EventFilter::parse(body.get("webhook_events_filter"))?;
        // The legacy `webhook_completed` is a webhook for the end only; `webhook` wins over it.
        let (webhook, events) = match (webhook, webhook_url(body, "webhook_completed")?) {
            (None, Some(completed)) => (Some(completed), EventFilter::completed_only()),
            (webhook, _) => (webhook, events),
        };
        let audio = AudioRequest::from_input(model.kind, &input)?;
        Ok(Self {
            model,
            input,
            audio,
            webhook,
            events,
            cancel_after: None,
        })
    }
}

/// An optional webhook URL field of a creation body: `http://` (for loopback receivers while
/// developing) or `https://`.
fn webhook_url(
    body: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<url::Url>, InputError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => value
            .as_str()
            .and_then(|raw| url::Url::parse(raw).ok())
            .filter(|url| matches!(url.scheme(), "http" | "https"))
            .map(Some)
            .ok_or(InputError {
                field,
                problem: "must be an http:// or https:// URL".to_owned(),
            }),
    }
}

/// Why a creation was refused.
#[derive(Debug)]
pub enum Refusal {
    /// Past the creation rate; retry after this many seconds.
    RateLimited(u64),
}

/// Everything the API handlers and the prediction tasks share.
pub struct Simulator {
    pub store: Store,
    /// Where clients reach the simulator, without a trailing slash.
    pub base_url: String,
    pub secret: WebhookSecret,
    pub page_size: usize,
    pub metrics: SimulatorMetrics,
    knobs: KnobsHandle,
    limit: CreationLimit,
    sender: WebhookSender,
    /// One synthesis per core at a time, so that a burst of predictions queues instead of
    /// holding every request's samples in memory at once.
    synthesis: tokio::sync::Semaphore,
    /// The runtime prediction tasks run on: the one that built the application, not the HTTP
    /// worker that happened to take the request, so tasks outlive a worker's restart.
    runtime: Handle,
    shutdown: CancellationToken,
}

/// Uniform in [0, 1), for the probabilistic knobs.
fn draw() -> f64 {
    (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64
}

impl Simulator {
    pub fn new(
        settings: &Settings,
        base_url: String,
        knobs: KnobsHandle,
        metrics: SimulatorMetrics,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, reqwest::Error> {
        Ok(Arc::new(Self {
            store: Store::new(settings.max_predictions, settings.max_stored_bytes),
            base_url,
            secret: settings.webhook_secret.clone(),
            page_size: settings.page_size,
            knobs: knobs.clone(),
            limit: CreationLimit::new(settings.knobs.create_rate_limit),
            sender: WebhookSender::new(&settings.webhook_secret, knobs, metrics.clone())?,
            metrics,
            synthesis: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get),
            ),
            runtime: Handle::current(),
            shutdown,
        }))
    }

    /// Creates a prediction (status `starting`) and starts running it.
    pub fn create(self: &Arc<Self>, new: NewPrediction) -> Result<Prediction, Refusal> {
        self.limit
            .admit(Instant::now())
            .map_err(Refusal::RateLimited)?;
        let prediction = self.store.insert(|seq| Prediction {
            id: PredictionId::generate(),
            seq,
            model: new.model,
            input: Value::Object(new.input),
            audio: new.audio,
            webhook: new.webhook,
            events: new.events,
            status: Status::Starting,
            logs: String::new(),
            output: None,
            error: None,
            created_at: prediction::now(),
            started_at: None,
            completed_at: None,
            predict_time: None,
            data_removed: false,
        });
        tracing::info!(prediction_id = %prediction.id, model = %prediction.model.model, "prediction created");
        self.metrics.created();
        let this = Arc::clone(self);
        let id = prediction.id.clone();
        self.runtime.spawn(async move { this.run(id).await });
        if let Some(deadline) = new.cancel_after {
            let this = Arc::clone(self);
            let id = prediction.id.clone();
            self.runtime.spawn(async move {
                if this.pause(deadline).await {
                    this.expire(&id);
                }
            });
        }
        Ok(prediction)
    }

    /// The `Cancel-After` deadline has passed: a prediction that has not started is `aborted`,
    /// one that is running is `canceled`, and a finished one stays as it is.
    fn expire(self: &Arc<Self>, id: &PredictionId) {
        let expired = self.store.update_running(id, |p| {
            p.status = if p.status == Status::Starting {
                Status::Aborted
            } else {
                Status::Canceled
            };
            p.completed_at = Some(prediction::now());
            p.logs.push_str("The Cancel-After deadline passed.\n");
        });
        if let Some(prediction) = expired {
            tracing::info!(prediction_id = %id, status = ?prediction.status, "prediction past its deadline");
            self.on_finished(&prediction);
        }
    }

    /// Waits until the prediction has finished or `limit` has passed (`Prefer: wait`), and
    /// returns it as it is then. Polling is enough here: a simulator, and 50 ms steps.
    pub async fn wait_for(&self, id: &PredictionId, limit: Duration) -> Option<Prediction> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let prediction = self.store.get(id)?;
            if prediction.status.is_terminal() || tokio::time::Instant::now() >= deadline {
                return Some(prediction);
            }
            if !self.pause(Duration::from_millis(50)).await {
                return Some(prediction);
            }
        }
    }

    /// Cancels a running prediction; a finished one is returned unchanged, as Replicate does.
    pub fn cancel(self: &Arc<Self>, id: &PredictionId) -> Option<Prediction> {
        let canceled = self.store.update_running(id, |p| {
            p.status = Status::Canceled;
            p.completed_at = Some(prediction::now());
            p.logs.push_str("Canceled.\n");
        });
        match canceled {
            Some(prediction) => {
                tracing::info!(prediction_id = %id, "prediction canceled");
                self.on_finished(&prediction);
                Some(prediction)
            }
            None => self.store.get(id),
        }
    }

    /// Waits out the cancellable pause `duration`; false when the simulator is shutting down.
    async fn pause(&self, duration: Duration) -> bool {
        tokio::select! {
            () = self.shutdown.cancelled() => false,
            () = tokio::time::sleep(duration) => true,
        }
    }

    #[tracing::instrument(name = "prediction", skip(self), fields(prediction_id = %id))]
    async fn run(self: Arc<Self>, id: PredictionId) {
        // A quarter of the delay in `starting` (queued for a GPU), the rest in `processing`.
        let delay = self.knobs.get().generation_delay;
        if !self.pause(delay / 4).await {
            return;
        }
        let Some(started) = self.store.update_running(&id, |p| {
            p.status = Status::Processing;
            p.started_at = Some(prediction::now());
            p.logs.push_str("Generating audio (simulated)...\n");
        }) else {
            return;
        };
        if started.events.start
            && let Some(url) = started.webhook.clone()
        {
            self.spawn_webhook(url, &started);
        }
        if !self.pause(delay - delay / 4).await {
            return;
        }
        let finished = if self.knobs.get().failure_rate.happens(draw()) {
            self.store.update_running(&id, |p| {
                finish(p, Status::Failed);
                p.error =
                    Some("Prediction failed (simulated by SIMULATOR_FAILURE_RATE).".to_owned());
            })
        } else {
            self.generate(&started).await
        };
        let Some(finished) = finished else {
            return;
        };
        tracing::info!(prediction_id = %id, status = ?finished.status, "prediction finished");
        self.on_finished(&finished);
    }

    /// Makes the audio off the executor and stores it; a codec failure fails the prediction.
    async fn generate(&self, prediction: &Prediction) -> Option<Prediction> {
        let request = prediction.audio.clone();
        let seed = uuid::Uuid::new_v4().as_u128() as u64;
        let span = tracing::Span::current();
        let _permit = self
            .synthesis
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let rendered = self
            .runtime
            .spawn_blocking(move || span.in_scope(|| synth::render(&request, seed)))
            .await;
        let id = &prediction.id;
        match rendered {
            Ok(Ok(bytes)) => {
                let format = prediction.audio.format;
                let output = format!("{}/files/{id}.{}", self.base_url, format.name());
                self.store.complete_with_file(
                    id,
                    StoredFile {
                        seq: prediction.seq,
                        bytes: Arc::new(bytes),
                        format,
                        downloads: 0,
                    },
                    |p| {
                        finish(p, Status::Succeeded);
                        p.output = Some(output);
                        p.logs.push_str("Done.\n");
                    },
                )
            }
            Ok(Err(error)) => {
                tracing::error!(prediction_id = %id, %error, "could not encode the audio");
                self.store.update_running(id, |p| {
                    finish(p, Status::Failed);
                    p.error = Some(format!("Could not encode the audio: {error}"));
                })
            }
            Err(error) => {
                tracing::error!(prediction_id = %id, %error, "the synthesis task failed");
                self.store.update_running(id, |p| {
                    finish(p, Status::Failed);
                    p.error = Some("The synthesis failed.".to_owned());
                })
            }
        }
    }

    /// A prediction has just finished, however: count it, send its `completed` webhook, and
    /// remove its data once the retention period has passed, as Replicate does for every API
    /// prediction.
    fn on_finished(self: &Arc<Self>, prediction: &Prediction) {
        self.metrics.finished(prediction.status.name());
        if prediction.events.completed
            && let Some(url) = prediction.webhook.clone()
        {
            self.spawn_webhook(url, prediction);
        }
        let this = Arc::clone(self);
        let id = prediction.id.clone();
        self.runtime.spawn(
            async move {
                if this.pause(this.knobs.get().file_retention).await {
                    this.store.remove_data(&id);
                    tracing::info!(
                        prediction_id = %id,
                        "prediction data removed after the retention period"
                    );
                }
            }
            .instrument(tracing::Span::current()),
        );
    }

    fn spawn_webhook(&self, url: url::Url, prediction: &Prediction) {
        let body = serde_json::to_vec(&prediction.to_json(&self.base_url))
            .expect("the prediction object serialises");
        let sender = self.sender.clone();
        let shutdown = self.shutdown.clone();
        // The webhook's logs stay under the prediction's span, wherever the task runs.
        self.runtime.spawn(
            async move {
                sender.deliver(&url, body, draw(), &shutdown).await;
            }
            .instrument(tracing::Span::current()),
        );
    }
}

/// Marks a prediction finished now, with its times.
fn finish(prediction: &mut Prediction, status: Status) {
    let now = prediction::now();
    prediction.status = status;
    prediction.completed_at = Some(now);
    prediction.predict_time = prediction
        .started_at
        .map(|start| (now - start).as_seconds_f64());
}
