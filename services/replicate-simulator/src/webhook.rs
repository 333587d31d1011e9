//! Sends a prediction's webhooks as Replicate does: the prediction object as the body, signed
//! with Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,…`), and
//! retried with backoff on a non-2xx answer or a connection error, with the same `webhook-id`.
//! The knobs can lose a webhook, send it twice, or sign it with the wrong secret.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use webhook_signature::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, SigningKey};

use crate::{
    metrics::SimulatorMetrics,
    settings::{KnobsHandle, WebhookSecret},
};

/// How long one attempt may take: Replicate asks for an answer "within a few seconds".
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("the receiver answered {0}")]
    Status(u16),
    #[error("the request failed: {0}")]
    Request(#[from] reqwest::Error),
}

#[derive(Clone)]
pub struct WebhookSender {
    client: reqwest::Client,
    key: SigningKey,
    /// Signs when `SIMULATOR_WRONG_WEBHOOK_SECRET` is on: a secret nobody was told.
    wrong_key: SigningKey,
    knobs: KnobsHandle,
    metrics: SimulatorMetrics,
}

impl WebhookSender {
    pub fn new(
        secret: &WebhookSecret,
        knobs: KnobsHandle,
        metrics: SimulatorMetrics,
    ) -> Result<Self, reqwest::Error> {
        // The workspace builds reqwest with rustls and no default crypto provider: ring is ours.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            // Replicate does not follow redirects for webhooks.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            client,
            key: secret.key().clone(),
            wrong_key: WebhookSecret::generate().key().clone(),
            knobs,
            metrics,
        })
    }

    /// Sends one webhook with `body`, honouring the knobs, until it is accepted, the attempts run
    /// out, or `shutdown` is cancelled. `draw` is uniform in [0, 1) and decides whether the
    /// webhook is lost.
    pub async fn deliver(
        &self,
        url: &url::Url,
        body: Vec<u8>,
        draw: f64,
        shutdown: &CancellationToken,
    ) {
        let webhook_id = format!("msg_{}", uuid::Uuid::new_v4().simple());
        let knobs = self.knobs.get();
        if knobs.lost_webhook_rate.happens(draw) {
            tracing::info!(%webhook_id, "lost the webhook on purpose (SIMULATOR_LOST_WEBHOOK_RATE)");
            self.metrics.webhook("lost");
            return;
        }
        let copies = if knobs.duplicate_webhooks { 2 } else { 1 };
        for _ in 0..copies {
            self.deliver_once(url, &webhook_id, &body, shutdown).await;
        }
    }

    async fn deliver_once(
        &self,
        url: &url::Url,
        webhook_id: &str,
        body: &[u8],
        shutdown: &CancellationToken,
    ) {
        let knobs = self.knobs.get();
        let mut delay = knobs.webhook_retry_delay;
        for attempt in 1..=knobs.webhook_attempts {
            match self.attempt(url, webhook_id, body).await {
                Ok(()) => {
                    tracing::info!(%webhook_id, attempt, "webhook delivered");
                    self.metrics.webhook("delivered");
                    return;
                }
                Err(error) => {
                    self.metrics.webhook(match error {
                        SendError::Status(_) => "refused",
                        SendError::Request(_) => "failed",
                    });
                    tracing::warn!(%webhook_id, attempt, %error, "webhook attempt failed");
                }
            }
            if attempt == knobs.webhook_attempts {
                break;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
            delay = delay.saturating_mul(2);
        }
        tracing::warn!(%webhook_id, "gave up on the webhook");
        self.metrics.webhook("gave_up");
    }

    async fn attempt(
        &self,
        url: &url::Url,
        webhook_id: &str,
        body: &[u8],
    ) -> Result<(), SendError> {
        let timestamp = chrono::Utc::now().timestamp();
        let key = if self.knobs.get().wrong_webhook_secret {
            &self.wrong_key
        } else {
            &self.key
        };
        let signature = key.sign(webhook_id, timestamp, body);
        let response = self
            .client
            .post(url.clone())
            .header(HEADER_ID, webhook_id)
            .header(HEADER_TIMESTAMP, timestamp.to_string())
            .header(HEADER_SIGNATURE, signature)
            .header("content-type", "application/json")
            .body(body.to_vec())
            .send()
            .await?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(SendError::Status(status.as_u16()))
        }
    }
}
