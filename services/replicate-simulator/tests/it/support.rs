//! A simulator per test, and the small requests every test makes.

use std::time::Duration;

use lifecycle::Signals;
use replicate_simulator::{Application, DEVELOPMENT_API_TOKEN, Settings};
use serde_json::Value;
use test_support::{eventually, http_client, sources};

pub struct Sim {
    pub base: String,
    pub secret: String,
    pub client: reqwest::Client,
    /// The running simulator's knobs, to change while it runs.
    pub knobs: replicate_simulator::settings::KnobsHandle,
    signals: Signals,
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.signals.shutdown.cancel();
    }
}

impl Sim {
    /// A simulator with a short generation delay and fast webhook retries; `pairs` override.
    pub fn start(pairs: &[(&str, &str)]) -> Self {
        let mut all = vec![
            ("SIMULATOR_GENERATION_DELAY", "200ms".to_owned()),
            ("SIMULATOR_WEBHOOK_RETRY_DELAY", "100ms".to_owned()),
        ];
        all.extend(pairs.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let signals = Signals::new();
        let app =
            Application::build(Settings::load(&sources(all)).unwrap(), signals.clone()).unwrap();
        let sim = Self {
            base: app.base_url().to_owned(),
            secret: app.webhook_secret().to_owned(),
            client: http_client(),
            knobs: app.knobs(),
            signals,
        };
        tokio::spawn(app.stopped());
        sim
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value, reqwest::header::HeaderMap) {
        let response = self
            .client
            .post(self.url(path))
            .bearer_auth(DEVELOPMENT_API_TOKEN)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (
            status,
            response.json().await.unwrap_or(Value::Null),
            headers,
        )
    }

    pub async fn get(&self, url: &str) -> (u16, Value) {
        let response = self
            .client
            .get(url)
            .bearer_auth(DEVELOPMENT_API_TOKEN)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Creates a prediction and returns it, asserting 201.
    pub async fn create(&self, body: Value) -> Value {
        let (status, prediction, _) = self.post("/v1/predictions", &body).await;
        assert_eq!(status, 201, "{prediction}");
        prediction
    }

    /// Waits until the prediction has finished and returns it.
    pub async fn finished(&self, prediction: &Value) -> Value {
        let url = prediction["urls"]["get"].as_str().unwrap().to_owned();
        eventually(
            Duration::from_secs(20),
            "the prediction to finish",
            || async {
                let (_, p) = self.get(&url).await;
                matches!(
                    p["status"].as_str(),
                    Some("succeeded" | "failed" | "canceled" | "aborted")
                )
                .then_some(p)
            },
        )
        .await
    }
}

/// A sound-effect prediction body for the stable-audio-open version Sonora's notes name.
pub fn effect(seconds: f64, extra: Value) -> Value {
    let mut input = serde_json::json!({"prompt": "rain on a tin roof", "seconds_total": seconds});
    if let Value::Object(extra) = extra {
        input.as_object_mut().unwrap().extend(extra);
    }
    serde_json::json!({
        "version": "stackadoc/stable-audio-open-1.0:2cd7d762d12df80757b18439c8fcd0ac3311251eb94ac6bdc026bb4ce4540868",
        "input": input,
    })
}
