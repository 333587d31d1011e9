//! The Replicate simulator, started in-process on port 0 for a test: Replicate's API, real
//! audio files and signed completion webhooks, with knobs to misbehave.

use lifecycle::Signals;
use test_support::sources;

/// A running simulator; it stops when dropped.
pub struct Simulator {
    pub base_url: String,
    /// The `whsec_` secret its webhooks are signed with.
    pub webhook_secret: String,
    /// The bearer token its API accepts.
    pub api_token: String,
    signals: Signals,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.signals.shutdown.cancel();
    }
}

impl Simulator {
    /// Starts with a fast generation (200 ms) and fast webhook retries, then `knobs`
    /// (`SIMULATOR_*` settings).
    pub fn start(knobs: &[(&str, &str)]) -> Self {
        let mut pairs = vec![
            ("SIMULATOR_GENERATION_DELAY", "200ms".to_owned()),
            ("SIMULATOR_WEBHOOK_RETRY_DELAY", "100ms".to_owned()),
            ("HTTP_ADDR", "127.0.0.1:0".to_owned()),
        ];
        pairs.extend(knobs.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let settings =
            replicate_simulator::Settings::load(&sources(pairs)).expect("simulator settings");
        let signals = Signals::new();
        let app = replicate_simulator::Application::build(settings, signals.clone())
            .expect("the simulator starts");
        let simulator = Self {
            base_url: app.base_url().to_owned(),
            webhook_secret: app.webhook_secret().to_owned(),
            api_token: replicate_simulator::DEVELOPMENT_API_TOKEN.to_owned(),
            signals,
        };
        tokio::spawn(app.stopped());
        simulator
    }

    /// The settings that point a service at this simulator as its Replicate.
    pub fn settings(&self) -> [(&'static str, String); 3] {
        [
            ("REPLICATE_API_URL", self.base_url.clone()),
            ("REPLICATE_API_TOKEN", self.api_token.clone()),
            ("REPLICATE_WEBHOOK_SECRET", self.webhook_secret.clone()),
        ]
    }
}
