//! Who is calling: the API key in `x-api-key` (what the old clients send) or
//! `Authorization: Bearer`, looked up by its keyed hash, and the [`Caller`] every route takes.
//!
//! Lookups are cached in the process. A revocation is published on Redis
//! (`gateway:api-keys:revoked`) and every replica drops the key from its cache at once; while a
//! replica is not subscribed (Redis away) its cache keeps entries one second only, so a revoked
//! key stops working everywhere within a second either way.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use actix_web::{FromRequest, HttpRequest, dev::Payload, http::StatusCode, web};
use chrono::Utc;
use database::Pool;
use futures::StreamExt as _;
use http_problem::Problem;
use internal_rpc::Scope;
use tokio_util::sync::CancellationToken;

use crate::keys::{self, KeyRecord, Pepper, Unusable};

/// The Redis channel revocations are published on.
pub const REVOKED_CHANNEL: &str = "gateway:api-keys:revoked";
/// How long a looked-up key is trusted while revocations arrive over Redis: short enough that a
/// subscription that died silently, or a missed message, lets a revoked key in for 10 s at most.
const TTL_SUBSCRIBED: Duration = Duration::from_secs(10);
/// ... and while they cannot.
const TTL_UNSUBSCRIBED: Duration = Duration::from_secs(1);
/// Keys kept in the cache at most; beyond, it starts over.
const MAX_CACHED: usize = 100_000;

struct Cached {
    record: KeyRecord,
    at: Instant,
}

/// Checks keys; cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    pool: Pool,
    pepper: Pepper,
    cache: Arc<Mutex<HashMap<String, Cached>>>,
    subscribed: Arc<AtomicBool>,
}

/// Why a request is not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Unknown,
    Revoked,
    Expired,
    /// The key store cannot be reached.
    Unavailable,
}

impl From<Refusal> for Problem {
    fn from(refusal: Refusal) -> Self {
        let unauthorized = |detail: &str| {
            Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized").detail(detail)
        };
        match refusal {
            Refusal::Missing => unauthorized(
                "An API key is required: send it in the x-api-key header or as Authorization: Bearer.",
            ),
            Refusal::Unknown => unauthorized("The API key is not valid."),
            Refusal::Revoked => unauthorized("The API key has been revoked."),
            Refusal::Expired => unauthorized("The API key has expired."),
            Refusal::Unavailable => {
                Problem::unavailable("Keys cannot be checked right now; retry shortly.")
                    .retry_after(2)
            }
        }
    }
}

impl Authenticator {
    pub fn new(pool: Pool, pepper: Pepper) -> Self {
        Self {
            pool,
            pepper,
            cache: Arc::default(),
            subscribed: Arc::default(),
        }
    }

    pub fn pepper(&self) -> &Pepper {
        &self.pepper
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The key's record, if the key may be used now.
    pub async fn authenticate(&self, key: &str) -> Result<KeyRecord, Refusal> {
        if !keys::plausible(key) {
            return Err(Refusal::Unknown);
        }
        let hash = self.pepper.hash(key);
        let ttl = if self.subscribed.load(Ordering::Relaxed) {
            TTL_SUBSCRIBED
        } else {
            TTL_UNSUBSCRIBED
        };
        let cached = {
            let cache = self.cache.lock().expect("not poisoned");
            cache
                .get(&hash)
                .filter(|c| c.at.elapsed() < ttl)
                .map(|c| c.record.clone())
        };
        let record = match cached {
            Some(record) => record,
            None => {
                let found = keys::find_by_hash(&self.pool, &hash)
                    .await
                    .map_err(|error| {
                        tracing::warn!(%error, "cannot look up an API key");
                        Refusal::Unavailable
                    })?;
                let record = found.ok_or(Refusal::Unknown)?;
                let mut cache = self.cache.lock().expect("not poisoned");
                if cache.len() >= MAX_CACHED {
                    cache.clear();
                }
                cache.insert(
                    hash,
                    Cached {
                        record: record.clone(),
                        at: Instant::now(),
                    },
                );
                record
            }
        };
        record
            .usable(Utc::now())
            .map_err(|unusable| match unusable {
                Unusable::Revoked => Refusal::Revoked,
                Unusable::Expired => Refusal::Expired,
            })?;
        Ok(record)
    }

    /// Drops a key from this replica's cache.
    pub fn forget(&self, hash: &str) {
        self.cache.lock().expect("not poisoned").remove(hash);
    }

    /// Follows revocations on Redis until shutdown, reconnecting; the cache is emptied whenever
    /// the subscription is lost, since revocations may have been missed meanwhile.
    pub async fn follow_revocations(self, redis_url: String, shutdown: CancellationToken) {
        let mut delay = Duration::from_millis(200);
        while !shutdown.is_cancelled() {
            let subscribed = async {
                let client = deadpool_redis::redis::Client::open(redis_url.as_str())?;
                let mut pubsub = client.get_async_pubsub().await?;
                pubsub.subscribe(REVOKED_CHANNEL).await?;
                Ok::<_, deadpool_redis::redis::RedisError>(pubsub)
            };
            let pubsub = match tokio::time::timeout(Duration::from_secs(5), subscribed).await {
                Ok(Ok(pubsub)) => pubsub,
                outcome => {
                    if let Ok(Err(error)) = outcome {
                        tracing::debug!(%error, "cannot subscribe to key revocations");
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            delay = Duration::from_millis(200);
            self.cache.lock().expect("not poisoned").clear();
            self.subscribed.store(true, Ordering::Relaxed);
            let mut messages = pubsub.into_on_message();
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    message = messages.next() => match message {
                        Some(message) => {
                            if let Ok(hash) = message.get_payload::<String>() {
                                self.forget(&hash);
                            }
                        }
                        None => break,
                    },
                }
            }
            self.subscribed.store(false, Ordering::Relaxed);
            tracing::warn!(
                "lost the key revocation subscription; keys are re-checked every second until it is back"
            );
        }
    }
}

/// Tells every replica that a key was revoked. Best effort: a replica that misses it still
/// stops the key within its cache's lifetime, which is short while it is not subscribed.
pub async fn publish_revoked(redis: &deadpool_redis::Pool, hash: &str) {
    let published = async {
        let mut conn = redis_pool::get(redis).await.map_err(|e| e.to_string())?;
        deadpool_redis::redis::cmd("PUBLISH")
            .arg(REVOKED_CHANNEL)
            .arg(hash)
            .query_async::<i64>(&mut conn)
            .await
            .map_err(|e| e.to_string())
    };
    if let Err(error) = published.await {
        tracing::warn!(%error, "cannot publish a key revocation; other replicas see it when their cache expires (10 s at most)");
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller(pub KeyRecord);

impl Caller {
    /// Refuses a key without `scope` (403, naming it).
    pub fn require(&self, scope: Scope) -> Result<&KeyRecord, Problem> {
        if self.0.scopes.contains(scope) {
            Ok(&self.0)
        } else {
            Err(
                Problem::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden").detail(format!(
                    "This API key does not have the {} scope.",
                    scope.as_str()
                )),
            )
        }
    }
}

/// The key a request carries: `x-api-key`, else `Authorization: Bearer`.
fn presented(req: &HttpRequest) -> Option<String> {
    if let Some(key) = req.headers().get("x-api-key") {
        return key.to_str().ok().map(|k| k.trim().to_owned());
    }
    let authorization = req.headers().get(actix_web::http::header::AUTHORIZATION)?;
    let text = authorization.to_str().ok()?;
    let (scheme, token) = text.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

impl FromRequest for Caller {
    type Error = Problem;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Problem>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let authenticator = req.app_data::<web::Data<Authenticator>>().cloned();
        let key = presented(req);
        Box::pin(async move {
            let authenticator = authenticator.ok_or_else(Problem::internal)?;
            let key = key.filter(|k| !k.is_empty()).ok_or(Refusal::Missing)?;
            Ok(Caller(authenticator.authenticate(&key).await?))
        })
    }
}
