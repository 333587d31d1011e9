//! The code-generation API's agent runs, as the old orchestrator started them:
//! `POST {CODEGEN_API_URL}/v1/organizations/{CODEGEN_ORG_ID}/agent/run` with
//! `Authorization: Bearer {CODEGEN_TOKEN}` and `{"prompt": …, "metadata": …}`; the answer's `id`
//! and `web_url` are recorded on the attempt.
//!
//! The API starts at most 10 runs a minute per organisation. The replicas share that budget in
//! Redis (a fixed one-minute window, `codegen-runs:<org>:<minute>`), so a burst of events waits
//! its turn instead of collecting 429s; a 429 all the same (another client of the same
//! organisation) is retried after its `Retry-After` (a minute without one) and never counts
//! against the retry schedule. While Redis is away the API's own 429 is the only limit.

use std::time::Duration;

use redis_pool::{Pool, redis};
use settings::{ExposeSecret as _, SecretString, Url};

use crate::dispatch::Outcome;

/// Runs the API starts per minute per organisation.
pub const RUNS_PER_MINUTE: u64 = 10;
/// The deadline of one call.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Where the API is and who calls it.
#[derive(Clone)]
pub struct CodegenSettings {
    /// `CODEGEN_API_URL`.
    pub api_url: Url,
    /// `CODEGEN_ORG_ID`.
    pub org_id: u64,
    /// `CODEGEN_TOKEN`.
    pub token: SecretString,
}

impl std::fmt::Debug for CodegenSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodegenSettings")
            .field("api_url", &self.api_url.as_str())
            .field("org_id", &self.org_id)
            .finish_non_exhaustive()
    }
}

/// Starts agent runs.
#[derive(Clone)]
pub struct Codegen {
    client: reqwest::Client,
    url: String,
    org_id: u64,
    token: SecretString,
    redis: Pool,
}

impl Codegen {
    /// A client of the configured API, connecting only where `outbound` allows.
    pub fn new(
        settings: &CodegenSettings,
        redis: Pool,
        outbound: &std::sync::Arc<egress::AddressPolicy>,
    ) -> Result<Self, reqwest::Error> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = egress::guard(reqwest::Client::builder(), outbound)
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            client,
            url: format!(
                "{}/v1/organizations/{}/agent/run",
                settings.api_url.as_str().trim_end_matches('/'),
                settings.org_id
            ),
            org_id: settings.org_id,
            token: settings.token.clone(),
            redis,
        })
    }

    /// Takes one run from this minute's budget: `Some(wait)` until the next minute when it is
    /// spent; `None` to go ahead (also when Redis cannot say).
    async fn budget(&self) -> Option<Duration> {
        let now = chrono::Utc::now().timestamp();
        let (minute, left) = (now / 60, 60 - now % 60);
        let key = format!("codegen-runs:{}:{minute}", self.org_id);
        let counted: Result<(u64,), redis_pool::RedisError> = async {
            let mut conn = redis_pool::get(&self.redis).await?;
            Ok(redis::pipe()
                .atomic()
                .incr(&key, 1)
                .expire(&key, 120)
                .ignore()
                .query_async(&mut *conn)
                .await?)
        }
        .await;
        match counted {
            Ok((count,)) if count > RUNS_PER_MINUTE => {
                Some(Duration::from_secs(u64::try_from(left).unwrap_or(60)))
            }
            Ok(_) => None,
            Err(error) => {
                tracing::warn!(%error, "the agent-run budget cannot be counted while Redis is away; the API's own limit applies");
                None
            }
        }
    }

    /// Starts a run with `prompt`; `metadata` goes with it (the event and rule, for whoever reads
    /// the run).
    pub async fn start_run(&self, prompt: &str, metadata: serde_json::Value) -> Outcome {
        if let Some(wait) = self.budget().await {
            return Outcome::Throttled {
                error: format!(
                    "agent_run: {RUNS_PER_MINUTE} runs a minute already started; waiting for the next minute"
                ),
                wait,
            };
        }
        let response = self
            .client
            .post(&self.url)
            .bearer_auth(self.token.expose_secret())
            .json(&serde_json::json!({ "prompt": prompt, "metadata": metadata }))
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(error) => {
                return Outcome::Failed(format!(
                    "agent_run: cannot reach the code-generation API: {}",
                    error.without_url()
                ));
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let body = response.text().await.unwrap_or_default();
        // The API's messages are short and hold no secret; they say what it did not like.
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| {
                v["message"]
                    .as_str()
                    .or(v["detail"].as_str())
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        let said = |text: &str| {
            let message: String = message.chars().take(300).collect();
            if message.is_empty() {
                format!("agent_run: the code-generation API answered {status}: {text}")
            } else {
                format!("agent_run: the code-generation API answered {status}: {text} ({message})")
            }
        };
        match status.as_u16() {
            200..=299 => {
                #[derive(serde::Deserialize)]
                struct Run {
                    id: i64,
                    #[serde(default)]
                    web_url: Option<String>,
                    #[serde(default)]
                    status: Option<String>,
                }
                match serde_json::from_str::<Run>(&body) {
                    Ok(run) => Outcome::Succeeded {
                        result: Some(
                            serde_json::json!({
                                "agent_run_id": run.id,
                                "web_url": run.web_url,
                                "status": run.status,
                            })
                            .to_string(),
                        ),
                    },
                    // The run may have started: retrying could start a second one, so this is
                    // left for an operator to look at.
                    Err(_) => Outcome::Rejected(said("the answer is not an agent run")),
                }
            }
            429 => Outcome::Throttled {
                error: said("rate limited; tried again later"),
                wait: Duration::from_secs(retry_after.unwrap_or(60).clamp(1, 3600)),
            },
            // The token, the organisation or the prompt is wrong: no retry mends it (a redrive
            // does, once the setting is fixed).
            401 | 403 | 404 | 422 => Outcome::Rejected(said("refused")),
            // 402: the organisation's runs are used up for now; 5xx: the API's trouble.
            _ => Outcome::Failed(said("not started")),
        }
    }
}
