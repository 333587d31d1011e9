//! Sending one webhook: sign it, POST it with bounded times and a bounded body read, and say what
//! happened. It never follows redirects and always verifies TLS certificates; where it may
//! connect is decided by the [`AddressPolicy`](crate::policy::AddressPolicy).

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use ids::MessageId;
use webhook_signature::{
    HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, SigningKey, signature_header,
};

use crate::policy::{AddressPolicy, PolicyResolver};

/// How much of a response body is kept in the attempt log.
pub const MAX_STORED_BODY: usize = 20 * 1024;
/// How much of a response body is read at all; the rest is dropped with the connection.
const MAX_READ_BODY: usize = 64 * 1024;

/// What one attempt produced.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    pub status: Option<u16>,
    pub body: Option<String>,
    pub error: Option<String>,
    pub timed_out: bool,
    pub duration: Duration,
    /// Seconds the receiver asked us to wait (`Retry-After`), when it did.
    pub retry_after: Option<u64>,
    /// The headers sent, without the signature.
    pub request_headers: serde_json::Value,
}

impl AttemptResult {
    pub fn succeeded(&self) -> bool {
        self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

/// The HTTP side of delivery.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    policy: Arc<AddressPolicy>,
}

impl Sender {
    pub fn new(
        policy: Arc<AddressPolicy>,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        // ring is the TLS crypto provider; installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(connect_timeout)
            .timeout(request_timeout)
            .no_proxy()
            .pool_max_idle_per_host(32)
            .tcp_nodelay(true)
            .user_agent(concat!("Sonora-Webhooks/", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(PolicyResolver {
                policy: Arc::clone(&policy),
            }))
            .build()?;
        Ok(Self { client, policy })
    }

    /// Signs `payload` with every key in `keys` and POSTs it to `url`.
    pub async fn send(
        &self,
        url: &str,
        message_id: MessageId,
        payload: &str,
        keys: &[SigningKey],
        now: DateTime<Utc>,
    ) -> AttemptResult {
        let timestamp = now.timestamp();
        let message_id = message_id.to_string();
        // The partner can join the trace: W3C trace context, as the current span's.
        let traceparent = telemetry::propagation::current_traceparent();
        let mut request_headers = serde_json::json!({
            "content-type": "application/json",
            HEADER_ID: &message_id,
            HEADER_TIMESTAMP: timestamp.to_string(),
        });
        if let Some(traceparent) = &traceparent {
            request_headers[telemetry::propagation::TRACEPARENT] = traceparent.as_str().into();
        }
        let started = std::time::Instant::now();
        let failed = |error: String, timed_out: bool| AttemptResult {
            status: None,
            body: None,
            error: Some(error),
            timed_out,
            duration: started.elapsed(),
            retry_after: None,
            request_headers: request_headers.clone(),
        };
        // The URL was checked when the endpoint was saved, but the policy may have changed since
        // (a production deployment of rows made in development); check again before any traffic.
        if let Err(refused) = self.policy.check_url(url) {
            return failed(format!("refused: {refused}"), false);
        }
        if keys.is_empty() {
            return failed("the endpoint has no live signing secret".to_owned(), false);
        }
        let signature = signature_header(keys, &message_id, timestamp, payload.as_bytes());
        let mut request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(HEADER_ID, &message_id)
            .header(HEADER_TIMESTAMP, timestamp.to_string())
            .header(HEADER_SIGNATURE, signature);
        if let Some(traceparent) = traceparent {
            request = request.header(telemetry::propagation::TRACEPARENT, traceparent);
        }
        let response = request.body(payload.to_owned()).send().await;
        let mut response = match response {
            Ok(response) => response,
            Err(error) => return failed(describe(&error), error.is_timeout()),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let mut body = Vec::new();
        let mut body_error = None;
        while body.len() < MAX_READ_BODY {
            match response.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(error) => {
                    body_error = Some(describe(&error));
                    break;
                }
            }
        }
        body.truncate(MAX_STORED_BODY);
        AttemptResult {
            status: Some(status),
            body: Some(String::from_utf8_lossy(&body).into_owned()),
            error: body_error,
            timed_out: false,
            duration: started.elapsed(),
            retry_after,
            request_headers,
        }
    }
}

/// A transport error in one line, with its cause (reqwest's own text hides it).
fn describe(error: &reqwest::Error) -> String {
    let mut text = if error.is_timeout() {
        "timed out".to_owned()
    } else if error.is_connect() {
        "could not connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
