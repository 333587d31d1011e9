//! Replicate's HTTP API, the three calls audio-generation makes (create, get and cancel a
//! prediction), and the prediction object as its webhooks and API return it.
//!
//! Every answer is sorted into what the caller does next ([`ReplicateError`]): wait as long as
//! a 429 says, retry a 5xx or a network failure with backoff, or give up on a refusal and fail
//! the job with Replicate's own message.

use std::time::Duration;

use serde::Deserialize;
use settings::{ExposeSecret as _, SecretString, Url};

/// The longest Replicate error text kept (in a job's error and logs).
const MAX_DETAIL_CHARS: usize = 500;

/// What went wrong talking to Replicate, sorted by what to do about it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ReplicateError {
    /// 429: try again after this long (its `Retry-After`, or a default).
    #[error("Replicate is rate limiting; retry in {}s", .retry_after.as_secs())]
    RateLimited { retry_after: Duration },
    /// A 4xx other than 429: the request will never succeed as it is.
    #[error("Replicate refused the prediction ({status}): {detail}")]
    Refused { status: u16, detail: String },
    /// 401 or 403: the token is wrong; the job is not at fault, so it waits for an operator.
    #[error("Replicate refused the API token ({status}); check REPLICATE_API_TOKEN")]
    Unauthorized { status: u16 },
    /// A 5xx, a timeout, a refused connection or an answer that is not a prediction.
    #[error("{0}")]
    Unavailable(String),
}

/// A prediction, as much of it as Sonora reads.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Prediction {
    pub id: String,
    pub status: PredictionStatus,
    #[serde(default)]
    pub output: Option<serde_json::Value>,
    #[serde(default)]
    pub error: Option<serde_json::Value>,
    #[serde(default)]
    pub data_removed: bool,
}

/// `status` of a prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PredictionStatus {
    Starting,
    Processing,
    Succeeded,
    Failed,
    Canceled,
    Aborted,
}

impl PredictionStatus {
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Starting | Self::Processing)
    }
}

impl Prediction {
    /// Reads a prediction from the JSON Replicate sent; the message names what is wrong.
    pub fn parse(json: &[u8]) -> Result<Self, String> {
        let prediction: Self = serde_json::from_slice(json).map_err(|e| {
            let text = e.to_string();
            let rule = match e.classify() {
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
                    "the body is not JSON".to_owned()
                }
                _ if text.contains("expected struct") => {
                    "must be a JSON object with id and status".to_owned()
                }
                // serde names the field and the rule ("missing field `id`", "unknown variant
                // `x`, expected one of …"); the position is of no use to the sender.
                _ => text
                    .split(" at line ")
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
            };
            format!("not a Replicate prediction: {rule}")
        })?;
        if prediction.id.is_empty() || prediction.id.len() > 128 {
            return Err("not a Replicate prediction: id must be 1 to 128 characters".to_owned());
        }
        Ok(prediction)
    }

    /// The output file's URL: Replicate's audio models give one URI string; a list gives its
    /// first.
    pub fn output_url(&self) -> Option<&str> {
        match self.output.as_ref()? {
            serde_json::Value::String(url) => Some(url),
            serde_json::Value::Array(items) => items.iter().find_map(|v| v.as_str()),
            _ => None,
        }
    }

    /// Replicate's error text, shortened for a job's error.
    pub fn error_text(&self) -> Option<String> {
        let text = match self.error.as_ref()? {
            serde_json::Value::Null => return None,
            serde_json::Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        Some(shorten(&text))
    }
}

fn shorten(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(MAX_DETAIL_CHARS) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// A prediction to create.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NewPrediction<'a> {
    pub version: &'a str,
    pub input: &'a serde_json::Value,
    pub webhook: &'a str,
    pub webhook_events_filter: [&'static str; 1],
}

/// A client for Replicate's API (or the simulator, which speaks it).
#[derive(Clone)]
pub struct Replicate {
    client: reqwest::Client,
    base: String,
    token: Option<SecretString>,
}

/// How long a 429 without `Retry-After` makes the submitter wait.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

impl Replicate {
    /// A client of `api_url`, connecting only where `outbound` allows.
    pub fn new(
        api_url: &Url,
        token: Option<SecretString>,
        timeout: Duration,
        outbound: &std::sync::Arc<egress::AddressPolicy>,
    ) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = egress::guard(reqwest::Client::builder(), outbound)
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("the TLS provider is installed");
        Self {
            client,
            base: api_url.as_str().trim_end_matches('/').to_owned(),
            token,
        }
    }

    /// Whether a token is configured; without one nothing can be submitted.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let builder = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => builder.bearer_auth(token.expose_secret()),
            None => builder,
        }
    }

    /// `POST /v1/predictions`.
    pub async fn create(
        &self,
        prediction: &NewPrediction<'_>,
    ) -> Result<Prediction, ReplicateError> {
        let sent = self
            .request(reqwest::Method::POST, "/v1/predictions")
            .json(prediction)
            .send()
            .await;
        answer(sent).await
    }

    /// `GET /v1/predictions/{id}`.
    pub async fn get(&self, id: &str) -> Result<Prediction, ReplicateError> {
        let sent = self
            .request(
                reqwest::Method::GET,
                &format!("/v1/predictions/{}", segment(id)),
            )
            .send()
            .await;
        answer(sent).await
    }

    /// `POST /v1/predictions/{id}/cancel`.
    pub async fn cancel(&self, id: &str) -> Result<Prediction, ReplicateError> {
        let sent = self
            .request(
                reqwest::Method::POST,
                &format!("/v1/predictions/{}/cancel", segment(id)),
            )
            .send()
            .await;
        answer(sent).await
    }
}

/// A prediction id as one path segment: Replicate's ids are lowercase alphanumerics; anything
/// else is percent-encoded rather than allowed to change the path.
fn segment(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn answer(
    sent: Result<reqwest::Response, reqwest::Error>,
) -> Result<Prediction, ReplicateError> {
    let response = sent.map_err(|e| {
        ReplicateError::Unavailable(format!("cannot reach Replicate: {}", e.without_url()))
    })?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|secs| Duration::from_secs(secs.clamp(1, 600)));
    let body = response.bytes().await.map_err(|e| {
        ReplicateError::Unavailable(format!(
            "Replicate's answer was cut off: {}",
            e.without_url()
        ))
    })?;
    match status {
        200..=299 => Prediction::parse(&body).map_err(ReplicateError::Unavailable),
        429 => Err(ReplicateError::RateLimited {
            retry_after: retry_after.unwrap_or(DEFAULT_RETRY_AFTER),
        }),
        401 | 403 => Err(ReplicateError::Unauthorized { status }),
        400..=499 => Err(ReplicateError::Refused {
            status,
            detail: detail(&body),
        }),
        _ => Err(ReplicateError::Unavailable(format!(
            "Replicate answered {status}: {}",
            detail(&body)
        ))),
    }
}

/// Replicate's explanation: `detail` (or `title`) of its problem body, else the text.
fn detail(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct Problem {
        detail: Option<String>,
        title: Option<String>,
    }
    let text = serde_json::from_slice::<Problem>(body)
        .ok()
        .and_then(|p| p.detail.or(p.title))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    if text.trim().is_empty() {
        "no detail given".to_owned()
    } else {
        shorten(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prediction_is_read_as_replicate_sends_it() {
        let p = Prediction::parse(
            br#"{"id":"ufawqhfynnddngldkgtslldrkq","status":"succeeded",
                 "output":"https://replicate.delivery/pbxt/out.wav","error":null,
                 "metrics":{"predict_time":1.2},"urls":{}}"#,
        )
        .unwrap();
        assert_eq!(p.status, PredictionStatus::Succeeded);
        assert_eq!(
            p.output_url(),
            Some("https://replicate.delivery/pbxt/out.wav")
        );
        assert_eq!(p.error_text(), None);
        let list = Prediction::parse(
            br#"{"id":"a","status":"failed","output":["u1","u2"],"error":"CUDA out of memory"}"#,
        )
        .unwrap();
        assert_eq!(list.output_url(), Some("u1"));
        assert_eq!(list.error_text().as_deref(), Some("CUDA out of memory"));
    }

    #[test]
    fn what_is_not_a_prediction_is_named() {
        let unknown = Prediction::parse(br#"{"id":"a","status":"exploded"}"#).unwrap_err();
        assert!(unknown.contains("unknown variant `exploded`"), "{unknown}");
        let missing = Prediction::parse(br#"{"status":"failed"}"#).unwrap_err();
        assert!(missing.contains("missing field `id`"), "{missing}");
        let array = Prediction::parse(b"[1,2]").unwrap_err();
        assert!(!array.contains("struct"), "{array}");
        assert!(Prediction::parse(b"{").unwrap_err().contains("not JSON"));
        assert!(Prediction::parse(br#"{"id":"","status":"failed"}"#).is_err());
    }

    #[test]
    fn ids_stay_one_path_segment() {
        assert_eq!(segment("abc123"), "abc123");
        assert_eq!(segment("../x"), "%2E%2E%2Fx");
    }

    #[test]
    fn long_errors_are_shortened() {
        let long = "x".repeat(2000);
        assert_eq!(shorten(&long).chars().count(), MAX_DETAIL_CHARS + 1);
    }
}
