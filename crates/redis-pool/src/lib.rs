//! A Redis connection pool with bounded waits, for state that may be lost or rebuilt (rate-limit
//! windows, caches, counters with a TTL).
//!
//! Every wait is bounded: borrowing a connection, opening one and checking one on return each time
//! out after the configured duration, so a stopped Redis makes callers fail fast with a clear error
//! instead of hanging, and the pool heals by itself when Redis returns.

use std::time::Duration;

pub use deadpool_redis::{Connection, Pool, redis};

/// How to reach Redis.
#[derive(Clone)]
pub struct RedisConfig {
    /// A `redis://` URL; it may hold a password, so it is never logged.
    pub url: String,
    pub pool_size: usize,
    /// The bound on every wait: borrowing, connecting, recycling and each command of [`ping`].
    pub timeout: Duration,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("pool_size", &self.pool_size)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("invalid Redis configuration: {0}")]
    Config(String),
    #[error("cannot get a Redis connection: {0}")]
    Pool(String),
    #[error("timed out after {0:?} waiting for Redis")]
    Timeout(Duration),
    #[error("Redis command failed: {0}")]
    Command(#[from] redis::RedisError),
}

/// Builds the pool; no connection is opened until one is needed.
pub fn connect(config: &RedisConfig) -> Result<Pool, RedisError> {
    deadpool_redis::Config::from_url(config.url.clone())
        .builder()
        .map_err(|e| RedisError::Config(e.to_string()))?
        .max_size(config.pool_size)
        .wait_timeout(Some(config.timeout))
        .create_timeout(Some(config.timeout))
        .recycle_timeout(Some(config.timeout))
        .runtime(deadpool_redis::Runtime::Tokio1)
        .build()
        .map_err(|e| RedisError::Config(e.to_string()))
}

/// Borrows a connection, mapping pool errors to [`RedisError`].
pub async fn get(pool: &Pool) -> Result<Connection, RedisError> {
    pool.get().await.map_err(|e| match e {
        deadpool_redis::PoolError::Timeout(_) => {
            RedisError::Timeout(pool.timeouts().wait.unwrap_or_default())
        }
        other => RedisError::Pool(other.to_string()),
    })
}

/// Checks that Redis answers `PING` within the pool's timeout; readiness probes call it.
pub async fn ping(pool: &Pool) -> Result<(), RedisError> {
    let limit = pool.timeouts().wait.unwrap_or(Duration::from_secs(2));
    tokio::time::timeout(limit, async {
        let mut conn = get(pool).await?;
        let pong: String = redis::cmd("PING").query_async(&mut conn).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(RedisError::Pool(format!(
                "unexpected answer to PING: {pong}"
            )))
        }
    })
    .await
    .map_err(|_| RedisError::Timeout(limit))?
}

impl RedisConfig {
    /// The configuration from a service's Redis settings.
    pub fn from_settings(settings: &settings::RedisSettings) -> Self {
        Self {
            url: settings.url.expose().to_owned(),
            pool_size: settings.pool_size,
            timeout: settings.timeout,
        }
    }
}

/// [`ping`] in the shape readiness checks take.
pub fn readiness_check(
    pool: &Pool,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), RedisError>> + Send>>
+ Send
+ Sync
+ 'static {
    let pool = pool.clone();
    move || {
        let pool = pool.clone();
        Box::pin(async move { ping(&pool).await })
    }
}
