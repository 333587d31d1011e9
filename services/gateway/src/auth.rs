//! Who is calling: the API key in `x-api-key` (what the old clients send) or
//! `Authorization: Bearer`, looked up by its keyed hash, or a short-lived token made from a key
//! ([`crate::token`]), and the [`Caller`] every route takes.
//!
//! A token carries its key's id and is honoured only while that key is: each use looks the key
//! up (through the same cache), so revoking a key ends its tokens as fast as the key itself.
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

use crate::{
    keys::{self, KeyRecord, Pepper, Unusable},
    token::TokenSigner,
};

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
    signer: TokenSigner,
    /// By key hash, and by `id:{key_id}` for tokens.
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
    /// A console session that ended, or a request of it without its CSRF token.
    Session,
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
            Refusal::Session => unauthorized(
                "The console session has ended or the request lacks its CSRF token; sign in again.",
            ),
            Refusal::Unavailable => {
                Problem::unavailable("Keys cannot be checked right now; retry shortly.")
                    .retry_after(2)
            }
        }
    }
}

impl Authenticator {
    pub fn new(pool: Pool, pepper: Pepper, signer: TokenSigner) -> Self {
        Self {
            pool,
            pepper,
            signer,
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

    pub fn signer(&self) -> &TokenSigner {
        &self.signer
    }

    /// A key's or a token's record, if it may be used now. A token's record has the token's
    /// scopes (never more than its key has now).
    pub async fn authenticate(&self, credential: &str) -> Result<KeyRecord, Refusal> {
        if crate::token::looks_like_token(credential) {
            let claims = self
                .signer
                .verify(credential, Utc::now())
                .map_err(|expired| {
                    if expired {
                        Refusal::Expired
                    } else {
                        Refusal::Unknown
                    }
                })?;
            let mut record = self
                .lookup(format!("id:{}", claims.key_id), || {
                    keys::find_by_id(&self.pool, claims.key_id)
                })
                .await?;
            if record.tenant != claims.tenant {
                return Err(Refusal::Unknown);
            }
            record.scopes = record.scopes.intersection(claims.scopes);
            return usable(record);
        }
        if !keys::plausible(credential) {
            return Err(Refusal::Unknown);
        }
        let hash = self.pepper.hash(credential);
        let record = self
            .lookup(hash.clone(), || keys::find_by_hash(&self.pool, &hash))
            .await?;
        usable(record)
    }

    /// The record of a console session's key, if it may be used now and is still the tenant's.
    pub async fn authenticate_session(
        &self,
        session: &crate::console::session::Session,
    ) -> Result<KeyRecord, Refusal> {
        let key_id = session.key_id;
        let record = self
            .lookup(format!("id:{key_id}"), || {
                keys::find_by_id(&self.pool, key_id)
            })
            .await?;
        if record.tenant != session.tenant {
            return Err(Refusal::Session);
        }
        usable(record)
    }

    /// A record from the cache, or from the database (then cached).
    async fn lookup<F>(
        &self,
        cache_key: String,
        find: impl FnOnce() -> F,
    ) -> Result<KeyRecord, Refusal>
    where
        F: Future<Output = Result<Option<KeyRecord>, database::DatabaseError>>,
    {
        let ttl = if self.subscribed.load(Ordering::Relaxed) {
            TTL_SUBSCRIBED
        } else {
            TTL_UNSUBSCRIBED
        };
        let cached = {
            let cache = self.cache.lock().expect("not poisoned");
            cache
                .get(&cache_key)
                .filter(|c| c.at.elapsed() < ttl)
                .map(|c| c.record.clone())
        };
        if let Some(record) = cached {
            return Ok(record);
        }
        let found = find().await.map_err(|error| {
            tracing::warn!(%error, "cannot look up an API key");
            Refusal::Unavailable
        })?;
        let record = found.ok_or(Refusal::Unknown)?;
        let mut cache = self.cache.lock().expect("not poisoned");
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(
            cache_key,
            Cached {
                record: record.clone(),
                at: Instant::now(),
            },
        );
        Ok(record)
    }
}

fn usable(record: KeyRecord) -> Result<KeyRecord, Refusal> {
    record
        .usable(Utc::now())
        .map_err(|unusable| match unusable {
            Unusable::Revoked => Refusal::Revoked,
            Unusable::Expired => Refusal::Expired,
        })?;
    Ok(record)
}

impl Authenticator {
    /// Drops a key (by its hash and its id) from this replica's cache.
    pub fn forget(&self, hash: &str, id: Option<&str>) {
        let mut cache = self.cache.lock().expect("not poisoned");
        cache.remove(hash);
        if let Some(id) = id {
            cache.remove(&format!("id:{id}"));
        }
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
                            // "{hash} {key_id}".
                            if let Ok(payload) = message.get_payload::<String>() {
                                let mut parts = payload.split_whitespace();
                                if let Some(hash) = parts.next() {
                                    self.forget(hash, parts.next());
                                }
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
pub async fn publish_revoked(redis: &deadpool_redis::Pool, record: &KeyRecord) {
    let published = async {
        let mut conn = redis_pool::get(redis).await.map_err(|e| e.to_string())?;
        deadpool_redis::redis::cmd("PUBLISH")
            .arg(REVOKED_CHANNEL)
            .arg(format!("{} {}", record.hash, record.id))
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

/// The outcome of checking a request's credential, kept in the request's extensions by the
/// rate limiter (which needs the key first) so that the route's [`Caller`] does not check again.
#[derive(Debug, Clone)]
pub struct Authenticated(Result<KeyRecord, Refusal>);

impl Authenticated {
    pub async fn of(authenticator: &Authenticator, req: &HttpRequest) -> Self {
        let outcome = match presented(req).filter(|k| !k.is_empty()) {
            None => match crate::console::session_caller(authenticator, req).await {
                Some(outcome) => outcome,
                None => Err(Refusal::Missing),
            },
            Some(credential) => authenticator.authenticate(&credential).await,
        };
        Self(outcome)
    }

    pub fn record(&self) -> Option<&KeyRecord> {
        self.0.as_ref().ok()
    }
}

/// Whether the request carried an API key itself (not a token).
pub fn presented_api_key(req: &HttpRequest) -> bool {
    presented(req).is_some_and(|c| !crate::token::looks_like_token(&c))
}

impl FromRequest for Caller {
    type Error = Problem;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Problem>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        use actix_web::HttpMessage as _;
        let known = req.extensions().get::<Authenticated>().cloned();
        let authenticator = req.app_data::<web::Data<Authenticator>>().cloned();
        let req = req.clone();
        Box::pin(async move {
            let authenticated = match known {
                Some(known) => known,
                None => {
                    let authenticator = authenticator.ok_or_else(Problem::internal)?;
                    Authenticated::of(&authenticator, &req).await
                }
            };
            Ok(Caller(authenticated.0?))
        })
    }
}
