//! Where Replicate's webhook signing secret comes from: configured (`REPLICATE_WEBHOOK_SECRET`),
//! or fetched with `REPLICATE_API_TOKEN` from Replicate's `GET /v1/webhooks/default/secret`, at
//! start-up and again (at most once a minute) when a signature does not verify, so a secret
//! rotated on Replicate's side is picked up without a restart.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use settings::{ExposeSecret as _, SecretString, Url};
use webhook_signature::VerifyingKey;

/// How often a failing signature may trigger a fetch.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// Fetches the secret from Replicate's API.
#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    url: String,
    token: SecretString,
}

impl Fetcher {
    /// A fetcher of `{api_url}/v1/webhooks/default/secret` with `token`, connecting only where
    /// `outbound` allows.
    pub fn new(
        api_url: &Url,
        token: SecretString,
        outbound: &std::sync::Arc<egress::AddressPolicy>,
    ) -> Result<Self, reqwest::Error> {
        // ring is the TLS crypto provider; installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = egress::guard(reqwest::Client::builder(), outbound)
            .timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let url = format!(
            "{}/v1/webhooks/default/secret",
            api_url.as_str().trim_end_matches('/')
        );
        Ok(Self { client, url, token })
    }

    /// The key and a digest of its text, to tell a rotated key from the same one.
    async fn fetch(&self) -> Result<(Vec<u8>, VerifyingKey), String> {
        #[derive(serde::Deserialize)]
        struct Secret {
            key: String,
        }
        let response = self
            .client
            .get(&self.url)
            .bearer_auth(self.token.expose_secret())
            .send()
            .await
            .map_err(|e| format!("cannot reach Replicate: {}", e.without_url()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("Replicate answered {status}"));
        }
        let secret: Secret = response
            .json()
            .await
            .map_err(|_| "Replicate's answer has no key".to_owned())?;
        let key = VerifyingKey::parse(&secret.key)
            .map_err(|_| "Replicate's key is not a whsec_ secret".to_owned())?;
        let digest = ring::digest::digest(&ring::digest::SHA256, secret.key.as_bytes());
        Ok((digest.as_ref().to_vec(), key))
    }
}

/// A fetched key, with a digest of its text to tell a rotated key from the same one.
type Fetched = Option<(Vec<u8>, VerifyingKey)>;

/// The secrets a Replicate webhook may be signed with.
#[derive(Clone)]
pub struct ReplicateSecret {
    configured: Option<VerifyingKey>,
    fetcher: Option<Fetcher>,
    fetched: Arc<Mutex<Fetched>>,
    last_fetch: Arc<Mutex<Option<Instant>>>,
    refresh_interval: Duration,
}

impl ReplicateSecret {
    pub fn new(
        configured: Option<VerifyingKey>,
        fetcher: Option<Fetcher>,
        refresh_interval: Duration,
    ) -> Self {
        Self {
            configured,
            fetcher,
            fetched: Arc::default(),
            last_fetch: Arc::default(),
            refresh_interval,
        }
    }

    /// The keys to verify with now: the configured one, and the last one fetched.
    pub fn keys(&self) -> Vec<VerifyingKey> {
        self.configured
            .iter()
            .cloned()
            .chain(
                self.fetched
                    .lock()
                    .expect("not poisoned")
                    .iter()
                    .map(|(_, key)| key.clone()),
            )
            .collect()
    }

    /// Fetches the secret again unless that was done less than the refresh interval ago;
    /// returns whether a different key was found.
    pub async fn refresh(&self) -> bool {
        let Some(fetcher) = &self.fetcher else {
            return false;
        };
        {
            let mut last = self.last_fetch.lock().expect("not poisoned");
            if last.is_some_and(|at| at.elapsed() < self.refresh_interval) {
                return false;
            }
            *last = Some(Instant::now());
        }
        match fetcher.fetch().await {
            Ok((digest, key)) => {
                let mut fetched = self.fetched.lock().expect("not poisoned");
                let changed = fetched.as_ref().is_none_or(|(known, _)| *known != digest);
                if changed {
                    tracing::info!("Replicate's webhook signing secret fetched");
                }
                *fetched = Some((digest, key));
                changed
            }
            Err(error) => {
                tracing::warn!(%error, "cannot fetch Replicate's webhook signing secret");
                false
            }
        }
    }
}
