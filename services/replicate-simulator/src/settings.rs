//! The simulator's settings: where it listens, whom it lets in, how it signs, and the knobs that
//! make it misbehave on purpose.

use std::{
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use secrecy::SecretString;
use settings::{CommonSettings, FromSetting, SettingError, Sources};
use webhook_signature::SigningKey;

use crate::NAME;

/// The token accepted when `SIMULATOR_API_TOKEN` is not set. It is public on purpose: the
/// simulator holds nothing worth protecting, and the local stack must work without set-up.
pub const DEVELOPMENT_API_TOKEN: &str = "r8_simulator_development_token";

/// Everything the simulator can be configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub common: CommonSettings,
    /// The API, the output files and the operational endpoints (`HTTP_ADDR`).
    pub http_addr: SocketAddr,
    /// How clients reach the simulator (`SIMULATOR_PUBLIC_URL`), used in `urls.get` and in the
    /// output file URLs; by default `http://` and the bound address.
    pub public_url: Option<url::Url>,
    /// The bearer token the API accepts (`SIMULATOR_API_TOKEN`).
    pub api_token: SecretString,
    /// The `whsec_` secret webhooks are signed with (`REPLICATE_WEBHOOK_SECRET`, as webhook-ingest
    /// verifies them), generated at start when it is not set.
    pub webhook_secret: WebhookSecret,
    /// How many predictions are kept in memory (`SIMULATOR_MAX_PREDICTIONS`); the oldest is
    /// forgotten, with its file, when a new one would exceed it.
    pub max_predictions: usize,
    /// How many bytes of output files are kept in memory (`SIMULATOR_MAX_STORED_BYTES`); beyond,
    /// the oldest files are removed early, with `data_removed`, as after the retention period.
    pub max_stored_bytes: usize,
    /// Predictions per page of `GET /v1/predictions` (`SIMULATOR_PAGE_SIZE`, Replicate's 100).
    pub page_size: usize,
    pub knobs: Knobs,
}

/// How the simulated Replicate behaves, including its deliberate failures.
#[derive(Debug, Clone)]
pub struct Knobs {
    /// From creation to the prediction's end (`SIMULATOR_GENERATION_DELAY`).
    pub generation_delay: Duration,
    /// The share of predictions that fail (`SIMULATOR_FAILURE_RATE`, 0 to 1).
    pub failure_rate: Rate,
    /// The share of webhooks never sent (`SIMULATOR_LOST_WEBHOOK_RATE`, 0 to 1).
    pub lost_webhook_rate: Rate,
    /// Every webhook is delivered twice with the same `webhook-id`
    /// (`SIMULATOR_DUPLICATE_WEBHOOKS`).
    pub duplicate_webhooks: bool,
    /// Webhooks are signed with a random secret instead of the published one
    /// (`SIMULATOR_WRONG_WEBHOOK_SECRET`).
    pub wrong_webhook_secret: bool,
    /// Attempts per webhook, the first included (`SIMULATOR_WEBHOOK_ATTEMPTS`).
    pub webhook_attempts: u32,
    /// The wait before the first retry, doubled at each further one
    /// (`SIMULATOR_WEBHOOK_RETRY_DELAY`).
    pub webhook_retry_delay: Duration,
    /// How long each file download waits before answering (`SIMULATOR_DOWNLOAD_DELAY`).
    pub download_delay: Duration,
    /// The first this many downloads of every file fail (`SIMULATOR_DOWNLOAD_FAILURES`).
    pub download_failures: u32,
    /// How those downloads fail (`SIMULATOR_DOWNLOAD_FAILURE_MODE`).
    pub download_failure: DownloadFailure,
    /// After this long a finished prediction's file is deleted and `data_removed` becomes true
    /// (`SIMULATOR_FILE_RETENTION`, Replicate's hour).
    pub file_retention: Duration,
    /// Prediction creations allowed per minute before 429 (`SIMULATOR_CREATE_RATE_LIMIT`,
    /// Replicate's 600; 0 turns the limit off).
    pub create_rate_limit: u32,
}

/// The knobs of a running simulator, shared by its API and its prediction tasks, which read them
/// afresh at each decision: a test (the chaos run) can make the simulator misbehave for a while
/// and then behave again, without a restart that would forget every prediction.
#[derive(Debug, Clone)]
pub struct KnobsHandle(Arc<RwLock<Knobs>>);

impl KnobsHandle {
    pub fn new(knobs: Knobs) -> Self {
        Self(Arc::new(RwLock::new(knobs)))
    }

    /// The knobs as they are now.
    pub fn get(&self) -> Knobs {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Changes the knobs from now on; webhooks and downloads already under way keep the knobs
    /// they started with. `webhook_attempts` stays within 1 to 10, as its setting.
    pub fn update(&self, change: impl FnOnce(&mut Knobs)) {
        let mut knobs = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        change(&mut knobs);
        knobs.webhook_attempts = knobs.webhook_attempts.clamp(1, 10);
    }
}

impl Rate {
    /// A share from 0 to 1 (clamped), for changing a knob at run time.
    pub fn of(share: f64) -> Self {
        Rate(if share.is_nan() {
            0.0
        } else {
            share.clamp(0.0, 1.0)
        })
    }
}

impl Settings {
    pub fn load(src: &Sources) -> Result<Self, SettingError> {
        let knobs = Knobs {
            generation_delay: src.or("SIMULATOR_GENERATION_DELAY", Duration::from_secs(2))?,
            failure_rate: src.or("SIMULATOR_FAILURE_RATE", Rate::NEVER)?,
            lost_webhook_rate: src.or("SIMULATOR_LOST_WEBHOOK_RATE", Rate::NEVER)?,
            duplicate_webhooks: src.or("SIMULATOR_DUPLICATE_WEBHOOKS", false)?,
            wrong_webhook_secret: src.or("SIMULATOR_WRONG_WEBHOOK_SECRET", false)?,
            webhook_attempts: src.or("SIMULATOR_WEBHOOK_ATTEMPTS", 4)?,
            webhook_retry_delay: src.or("SIMULATOR_WEBHOOK_RETRY_DELAY", Duration::from_secs(1))?,
            download_delay: src.or("SIMULATOR_DOWNLOAD_DELAY", Duration::ZERO)?,
            download_failures: src.or("SIMULATOR_DOWNLOAD_FAILURES", 0)?,
            download_failure: src.or("SIMULATOR_DOWNLOAD_FAILURE_MODE", DownloadFailure::Status)?,
            file_retention: src.or("SIMULATOR_FILE_RETENTION", Duration::from_secs(3600))?,
            create_rate_limit: src.or("SIMULATOR_CREATE_RATE_LIMIT", 600)?,
        };
        if !(1..=10).contains(&knobs.webhook_attempts) {
            return Err(SettingError::new(
                "SIMULATOR_WEBHOOK_ATTEMPTS",
                "must be from 1 to 10",
            ));
        }
        let public_url: Option<url::Url> = src.optional("SIMULATOR_PUBLIC_URL")?;
        if let Some(url) = &public_url
            && !matches!(url.scheme(), "http" | "https")
        {
            return Err(SettingError::new(
                "SIMULATOR_PUBLIC_URL",
                "must be an http:// or https:// URL",
            ));
        }
        let max_predictions = src.or("SIMULATOR_MAX_PREDICTIONS", 1000)?;
        if !(1..=1_000_000).contains(&max_predictions) {
            return Err(SettingError::new(
                "SIMULATOR_MAX_PREDICTIONS",
                "must be from 1 to 1000000",
            ));
        }
        // The default fits the development pod's 256 MiB limit with room for synthesis.
        let max_stored_bytes = src.or("SIMULATOR_MAX_STORED_BYTES", 128 * 1024 * 1024)?;
        let page_size = src.or("SIMULATOR_PAGE_SIZE", 100)?;
        if !(1..=1000).contains(&page_size) {
            return Err(SettingError::new(
                "SIMULATOR_PAGE_SIZE",
                "must be from 1 to 1000",
            ));
        }
        Ok(Self {
            common: CommonSettings::load(src, NAME)?,
            http_addr: src.or("HTTP_ADDR", ([127, 0, 0, 1], 8090).into())?,
            public_url,
            api_token: src.or(
                "SIMULATOR_API_TOKEN",
                SecretString::from(DEVELOPMENT_API_TOKEN.to_owned()),
            )?,
            // The setting webhook-ingest verifies Replicate's webhooks with: one value (the
            // deployment's Secret, `scripts/dev`) serves both, so they cannot disagree.
            webhook_secret: src
                .optional("REPLICATE_WEBHOOK_SECRET")?
                .unwrap_or_else(WebhookSecret::generate),
            max_predictions,
            max_stored_bytes,
            page_size,
            knobs,
        })
    }
}

/// How a deliberately broken download fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownloadFailure {
    /// `status`: a 500 with a `detail`.
    Status,
    /// `cut`: a 200 whose connection is cut halfway through the announced length, as a
    /// network failure mid-transfer looks to the client.
    Cut,
}

impl FromSetting for DownloadFailure {
    fn from_setting(raw: &str) -> Result<Self, String> {
        match raw {
            "status" => Ok(Self::Status),
            "cut" => Ok(Self::Cut),
            _ => Err("must be status or cut".to_owned()),
        }
    }
}

/// A probability from 0 (never) to 1 (always).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate(f64);

impl Rate {
    pub const NEVER: Rate = Rate(0.0);

    /// Whether an event of this rate happens, given `draw` uniform in [0, 1).
    pub fn happens(self, draw: f64) -> bool {
        draw < self.0
    }
}

impl FromSetting for Rate {
    fn from_setting(raw: &str) -> Result<Self, String> {
        match raw.trim().parse::<f64>() {
            Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(Rate(rate)),
            _ => Err("must be a number from 0 to 1".to_owned()),
        }
    }
}

/// The `whsec_` secret the simulator signs webhooks with, as `GET /v1/webhooks/default/secret`
/// publishes it. Only HMAC secrets: Replicate signs with `v1` only.
#[derive(Debug, Clone)]
pub struct WebhookSecret(SigningKey);

impl WebhookSecret {
    pub fn generate() -> Self {
        Self(SigningKey::parse(&SigningKey::generate_hmac()).expect("a generated key parses"))
    }

    pub fn key(&self) -> &SigningKey {
        &self.0
    }

    /// The secret's text, `whsec_…`.
    pub fn expose(&self) -> String {
        self.0.to_secret_string()
    }
}

impl FromSetting for WebhookSecret {
    fn from_setting(raw: &str) -> Result<Self, String> {
        if !raw.starts_with("whsec_") {
            return Err("must be a whsec_ secret".to_owned());
        }
        SigningKey::parse(raw)
            .map(Self)
            .map_err(|_| "must be whsec_ followed by 24 to 64 bytes in base64".to_owned())
    }
}
