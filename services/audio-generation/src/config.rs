//! How jobs are worked: talking to Replicate, the submitter, reconciliation, and finishing
//! (download, processing). Each limit is a setting with a documented default and range.

use std::time::Duration;

use settings::{BaseUrl, Environment, SecretString, SettingError, Sources, Url};

use crate::models::Models;

/// Replicate, and what is sent to it.
#[derive(Debug, Clone)]
pub struct ReplicateSettings {
    /// `REPLICATE_API_URL`: Replicate, or the simulator.
    pub api_url: Url,
    /// `REPLICATE_API_TOKEN`: without it nothing is submitted (jobs wait, queued; `/ready` shows
    /// `replicate` down).
    pub api_token: Option<SecretString>,
    /// `REPLICATE_TIMEOUT`: for each call to Replicate.
    pub timeout: Duration,
    /// `BASE_URL`: where Replicate's webhooks reach webhook-ingest.
    pub base_url: BaseUrl,
    pub models: Models,
}

/// The background work on jobs.
#[derive(Debug, Clone)]
pub struct WorkSettings {
    /// `REPLICATE_SUBMIT_BUDGET`: prediction creations a minute, across every replica.
    pub submit_budget: u32,
    /// `SUBMIT_CONCURRENCY`: predictions being created at once by one replica.
    pub submit_concurrency: usize,
    /// `SUBMIT_MAX_ATTEMPTS`: tries of a failing submission (5xx, network) before the job fails.
    pub submit_max_attempts: i32,
    /// `JOB_LEASE`: how long a replica holds a job it is submitting or finishing.
    pub lease: Duration,
    /// `JOB_POLL_INTERVAL`: how often the queues are looked at without a notification.
    pub poll_interval: Duration,
    /// `WEBHOOK_OVERDUE_AFTER`: a submitted job with no webhook for this long is asked about.
    pub overdue_after: Duration,
    /// `RECONCILE_INTERVAL`: how often overdue jobs are looked for.
    pub reconcile_interval: Duration,
    /// `SOUND_EFFECTS_VOLUME_LEVEL`: the level of effects mixed under speech, stored with each
    /// sound-effect job.
    pub sound_effects_volume_level: f64,
    pub finish: FinishSettings,
}

/// Fetching and processing a finished prediction's output.
#[derive(Debug, Clone)]
pub struct FinishSettings {
    /// `AUDIO_DOWNLOAD_TIMEOUT`: for the whole download.
    pub download_timeout: Duration,
    /// `AUDIO_DOWNLOAD_MAX_BYTES`: a larger output is refused while it streams.
    pub download_max_bytes: u64,
    /// `AUDIO_DOWNLOAD_ATTEMPTS`: tries before the job fails.
    pub download_attempts: i32,
    /// `AUDIO_DOWNLOAD_ALLOWED_HOSTS`: hosts outputs may come from (`*.` for subdomains);
    /// enforced, with `https` only, in production.
    pub allowed_hosts: Vec<String>,
    /// Production: https and the allow-list are enforced.
    pub strict_downloads: bool,
    /// `AUDIO_LOUDNESS_TARGET`: integrated loudness of stored audio, in LUFS.
    pub loudness_target: f64,
    /// `AUDIO_FADE_OUT`: the fade at the end of every stored file (generated audio often stops
    /// abruptly, and a cut one always does).
    pub fade_out: Duration,
    /// `AUDIO_FORMAT`: `mp3` or `wav`.
    pub format: audio_codec::AudioFormat,
    /// Where outbound requests (outputs, Replicate's API) may connect: in production public
    /// addresses only, plus `OUTBOUND_ALLOWED_NETWORKS`.
    pub outbound: std::sync::Arc<egress::AddressPolicy>,
}

fn range<T: PartialOrd + Copy>(
    name: &str,
    value: T,
    (min, max): (T, T),
    rule: &str,
) -> Result<T, SettingError> {
    if value < min || value > max {
        return Err(SettingError::new(name, format!("must be {rule}")));
    }
    Ok(value)
}

impl ReplicateSettings {
    pub fn load(src: &Sources, environment: Environment) -> Result<Self, SettingError> {
        let api_url: Url = src.or(
            "REPLICATE_API_URL",
            Url::parse("https://api.replicate.com").expect("a valid URL"),
        )?;
        if !matches!(api_url.scheme(), "http" | "https") {
            return Err(SettingError::new(
                "REPLICATE_API_URL",
                "must be an http:// or https:// URL, such as https://api.replicate.com",
            ));
        }
        Ok(Self {
            api_url,
            api_token: src.optional("REPLICATE_API_TOKEN")?,
            timeout: range(
                "REPLICATE_TIMEOUT",
                src.or("REPLICATE_TIMEOUT", Duration::from_secs(15))?,
                (Duration::from_secs(1), Duration::from_secs(120)),
                "between 1s and 2m",
            )?,
            base_url: BaseUrl::load(src, environment, "http://localhost:8081")?,
            models: Models::load(src)?,
        })
    }
}

impl WorkSettings {
    pub fn load(src: &Sources, environment: Environment) -> Result<Self, SettingError> {
        let format_name: String = src.or("AUDIO_FORMAT", "mp3".to_owned())?;
        let format = match audio_codec::AudioFormat::parse(&format_name) {
            Some(f @ (audio_codec::AudioFormat::Mp3 | audio_codec::AudioFormat::Wav)) => f,
            _ => return Err(SettingError::new("AUDIO_FORMAT", "must be mp3 or wav")),
        };
        let allowed_hosts: Vec<String> = src.or(
            "AUDIO_DOWNLOAD_ALLOWED_HOSTS",
            vec![
                "replicate.delivery".to_owned(),
                "*.replicate.delivery".to_owned(),
            ],
        )?;
        if allowed_hosts.is_empty() || allowed_hosts.iter().any(|h| h.trim().is_empty()) {
            return Err(SettingError::new(
                "AUDIO_DOWNLOAD_ALLOWED_HOSTS",
                "must list host names, such as replicate.delivery,*.replicate.delivery",
            ));
        }
        let lease = range(
            "JOB_LEASE",
            src.or("JOB_LEASE", Duration::from_secs(120))?,
            (Duration::from_secs(5), Duration::from_secs(3600)),
            "between 5s and 1h",
        )?;
        let download_timeout = range(
            "AUDIO_DOWNLOAD_TIMEOUT",
            src.or("AUDIO_DOWNLOAD_TIMEOUT", Duration::from_secs(60))?,
            (Duration::from_secs(1), Duration::from_secs(600)),
            "between 1s and 10m",
        )?;
        // A claim must outlast the step it covers, or a second replica starts the same work.
        if lease < download_timeout * 2 {
            return Err(SettingError::new(
                "JOB_LEASE",
                "must be at least twice AUDIO_DOWNLOAD_TIMEOUT, so a claim outlasts the download it covers",
            ));
        }
        Ok(Self {
            submit_budget: range(
                "REPLICATE_SUBMIT_BUDGET",
                src.or("REPLICATE_SUBMIT_BUDGET", 600)?,
                (1, 100_000),
                "between 1 and 100000 a minute",
            )?,
            submit_concurrency: range(
                "SUBMIT_CONCURRENCY",
                src.or("SUBMIT_CONCURRENCY", 8)?,
                (1, 256),
                "between 1 and 256",
            )?,
            submit_max_attempts: range(
                "SUBMIT_MAX_ATTEMPTS",
                src.or("SUBMIT_MAX_ATTEMPTS", 8)?,
                (1, 100),
                "between 1 and 100",
            )?,
            lease,
            poll_interval: range(
                "JOB_POLL_INTERVAL",
                src.or("JOB_POLL_INTERVAL", Duration::from_secs(1))?,
                (Duration::from_millis(10), Duration::from_secs(60)),
                "between 10ms and 1m",
            )?,
            overdue_after: range(
                "WEBHOOK_OVERDUE_AFTER",
                src.or("WEBHOOK_OVERDUE_AFTER", Duration::from_secs(600))?,
                (Duration::from_millis(100), Duration::from_secs(86_400)),
                "between 100ms and 24h",
            )?,
            reconcile_interval: range(
                "RECONCILE_INTERVAL",
                src.or("RECONCILE_INTERVAL", Duration::from_secs(30))?,
                (Duration::from_millis(100), Duration::from_secs(3600)),
                "between 100ms and 1h",
            )?,
            sound_effects_volume_level: range(
                "SOUND_EFFECTS_VOLUME_LEVEL",
                src.or("SOUND_EFFECTS_VOLUME_LEVEL", 0.3)?,
                (0.0, 1.0),
                "between 0 and 1",
            )?,
            finish: FinishSettings {
                download_timeout,
                download_max_bytes: range(
                    "AUDIO_DOWNLOAD_MAX_BYTES",
                    src.or("AUDIO_DOWNLOAD_MAX_BYTES", 100 * 1024 * 1024)?,
                    (1024, 1024 * 1024 * 1024),
                    "between 1024 and 1073741824 (1 GiB)",
                )?,
                download_attempts: range(
                    "AUDIO_DOWNLOAD_ATTEMPTS",
                    src.or("AUDIO_DOWNLOAD_ATTEMPTS", 5)?,
                    (1, 50),
                    "between 1 and 50",
                )?,
                allowed_hosts: allowed_hosts
                    .into_iter()
                    .map(|h| h.trim().to_ascii_lowercase())
                    .collect(),
                strict_downloads: environment == Environment::Production,
                outbound: std::sync::Arc::new(egress::AddressPolicy::load(
                    src,
                    environment,
                    "OUTBOUND_ALLOWED_NETWORKS",
                )?),
                loudness_target: range(
                    "AUDIO_LOUDNESS_TARGET",
                    src.or("AUDIO_LOUDNESS_TARGET", -16.0)?,
                    (-40.0, -5.0),
                    "between -40 and -5 LUFS",
                )?,
                fade_out: range(
                    "AUDIO_FADE_OUT",
                    src.or("AUDIO_FADE_OUT", Duration::from_millis(50))?,
                    (Duration::ZERO, Duration::from_secs(5)),
                    "between 0s and 5s",
                )?,
                format,
            },
        })
    }
}
