//! PostgreSQL access for the services: a pool of diesel-async connections confined to the
//! service's own schema, and that schema's embedded migrations applied under an advisory lock.
//!
//! Every service owns one PostgreSQL schema (DESIGN.md, "Data"). Connections from [`connect`] have
//! their `search_path` set to that schema, so a service's SQL names its tables without a prefix and
//! can never read another service's tables by accident. [`migrate`] creates the schema, then runs
//! the pending migrations while holding a PostgreSQL advisory lock derived from the schema's name,
//! so several replicas starting at once apply them exactly once.

use std::time::Duration;

use diesel::{
    QueryableByName,
    sql_types::{BigInt, Integer},
};
use diesel_async::{
    AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection,
    async_connection_wrapper::AsyncConnectionWrapper,
    pooled_connection::{
        AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
        deadpool::{self, Object},
    },
};
use diesel_migrations::MigrationHarness;
pub use diesel_migrations::{EmbeddedMigrations, embed_migrations};

/// The migrations of one schema: the service's own, and those of the shared crates whose tables
/// live in that schema (the outbox). diesel applies the pending ones of all sets in version order
/// and records them in the schema's one bookkeeping table.
pub struct MigrationSet(Vec<EmbeddedMigrations>);

impl MigrationSet {
    /// Adds another set, such as `outbox::MIGRATIONS`.
    pub fn and(mut self, more: EmbeddedMigrations) -> Self {
        self.0.push(more);
        self
    }
}

impl From<EmbeddedMigrations> for MigrationSet {
    fn from(migrations: EmbeddedMigrations) -> Self {
        Self(vec![migrations])
    }
}

impl diesel::migration::MigrationSource<diesel::pg::Pg> for MigrationSet {
    fn migrations(
        &self,
    ) -> diesel::migration::Result<Vec<Box<dyn diesel::migration::Migration<diesel::pg::Pg>>>> {
        let mut all = Vec::new();
        for set in &self.0 {
            all.extend(diesel::migration::MigrationSource::<diesel::pg::Pg>::migrations(set)?);
        }
        Ok(all)
    }
}

/// Keeps a `LISTEN channel` connection open and wakes `wake` on every notification (and once
/// after each (re)connection, for whatever was missed); reconnects with backoff when PostgreSQL
/// goes away, until `shutdown`. Callers poll as a backstop, so a gap costs latency, not work.
pub async fn listen(
    url: String,
    channel: String,
    wake: std::sync::Arc<tokio::sync::Notify>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use futures::StreamExt as _;
    let mut delay = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        let connected = async {
            let mut conn = AsyncPgConnection::establish(&url).await?;
            diesel::sql_query(format!("LISTEN {channel}"))
                .execute(&mut conn)
                .await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(conn)
        };
        let mut conn = match tokio::time::timeout(Duration::from_secs(5), connected).await {
            Ok(Ok(conn)) => conn,
            outcome => {
                if let Ok(Err(error)) = outcome {
                    tracing::debug!(%error, channel, "LISTEN connection failed");
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
        wake.notify_one();
        let mut stream = std::pin::pin!(conn.notifications_stream());
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                next = stream.next() => match next {
                    Some(Ok(_)) => wake.notify_one(),
                    Some(Err(_)) | None => break,
                },
            }
        }
    }
}
use futures::FutureExt as _;

/// A pool of connections whose `search_path` is the service's schema.
pub type Pool = deadpool::Pool<AsyncPgConnection>;
/// A connection borrowed from a [`Pool`].
pub type PooledConnection = Object<AsyncPgConnection>;

/// How to reach PostgreSQL and which schema is the service's own.
#[derive(Clone)]
pub struct DatabaseConfig {
    /// A `postgres://` URL; it may hold a password, so it is never logged.
    pub url: String,
    /// The service's schema, such as `gateway`; letters, digits and `_` only.
    pub schema: &'static str,
    pub pool_size: usize,
    /// How long to wait for a connection, from the pool or from the server.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("schema", &self.schema)
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

/// What can go wrong while reaching the database; messages never include the URL.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error("cannot connect to PostgreSQL: {0}")]
    Connect(String),
    #[error("timed out after {0:?} waiting for PostgreSQL")]
    Timeout(Duration),
    #[error("PostgreSQL query failed: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("migration of schema {schema} failed: {message}")]
    Migration {
        schema: &'static str,
        message: String,
    },
    #[error("invalid schema name {0:?}")]
    SchemaName(&'static str),
}

fn check_schema(schema: &'static str) -> Result<(), DatabaseError> {
    let ok = !schema.is_empty()
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !schema.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(DatabaseError::SchemaName(schema))
    }
}

/// Builds the pool. No connection is opened until one is needed, so a service can start, report
/// itself not ready, and become ready when PostgreSQL comes up.
pub fn connect(config: &DatabaseConfig) -> Result<Pool, DatabaseError> {
    check_schema(config.schema)?;
    let schema = config.schema;
    let timeout = config.connect_timeout;
    let mut manager_config = ManagerConfig::<AsyncPgConnection>::default();
    // A borrowed connection is not pinged first (diesel-async's default sends `SELECT 1` on every
    // checkout, a round trip per query): one whose socket closed, or that is inside a broken
    // transaction, is still replaced, and any other failure surfaces on its first query.
    manager_config.recycling_method = RecyclingMethod::Fast;
    manager_config.custom_setup = Box::new(move |url| {
        let url = url.to_owned();
        async move {
            let mut conn = tokio::time::timeout(timeout, AsyncPgConnection::establish(&url))
                .await
                .map_err(|_| {
                    diesel::ConnectionError::BadConnection(format!(
                        "timed out after {timeout:?} connecting"
                    ))
                })??;
            conn.batch_execute(&format!("SET search_path TO {schema}"))
                .await
                .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            Ok(conn)
        }
        .boxed()
    });
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
        &config.url,
        manager_config,
    );
    deadpool::Pool::builder(manager)
        .max_size(config.pool_size)
        .runtime(::deadpool::Runtime::Tokio1)
        .wait_timeout(Some(config.connect_timeout))
        .create_timeout(Some(config.connect_timeout))
        .recycle_timeout(Some(config.connect_timeout))
        .build()
        .map_err(|e| DatabaseError::Connect(e.to_string()))
}

/// A query whose server-side prepared statement is kept on its connection and reused, keyed by
/// its SQL text and bind types: each later run is one round trip instead of two (prepare, then
/// execute). `diesel::sql_query` never caches, because its text may be built from values; wrap
/// only queries whose text is fixed (constants, or `format!` of constants), or every distinct
/// text would add a statement to every connection's cache.
#[derive(Debug, Clone)]
pub struct Prepared<Q>(pub Q);

/// `.prepared()` on a query with its binds: the query in [`Prepared`].
pub trait PrepareQuery: Sized {
    fn prepared(self) -> Prepared<Self> {
        Prepared(self)
    }
}

impl<Q: diesel::query_builder::Query> PrepareQuery for Q {}

impl<Q> diesel::query_builder::QueryId for Prepared<Q> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: diesel::query_builder::Query> diesel::query_builder::Query for Prepared<Q> {
    type SqlType = Q::SqlType;
}

impl<Q: diesel::query_builder::QueryFragment<diesel::pg::Pg>>
    diesel::query_builder::QueryFragment<diesel::pg::Pg> for Prepared<Q>
{
    fn walk_ast<'b>(
        &'b self,
        pass: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> diesel::QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &diesel::pg::Pg) -> diesel::QueryResult<bool> {
        Ok(true)
    }
}

/// Borrows a connection, mapping pool errors to [`DatabaseError`].
pub async fn get(pool: &Pool) -> Result<PooledConnection, DatabaseError> {
    pool.get().await.map_err(|e| match e {
        deadpool::PoolError::Timeout(_) => {
            DatabaseError::Timeout(pool.timeouts().wait.unwrap_or_default())
        }
        deadpool::PoolError::Backend(e) => DatabaseError::Connect(e.to_string()),
        other => DatabaseError::Connect(other.to_string()),
    })
}

#[derive(QueryableByName)]
struct One {
    #[diesel(sql_type = Integer)]
    one: i32,
}

/// Checks that PostgreSQL answers a query through the pool; readiness probes call it.
pub async fn ping(pool: &Pool) -> Result<(), DatabaseError> {
    let mut conn = get(pool).await?;
    let row: One = diesel::sql_query("SELECT 1 AS one")
        .get_result(&mut conn)
        .await?;
    debug_assert_eq!(row.one, 1);
    Ok(())
}

/// The advisory-lock key for a schema's migrations: a stable 63-bit hash of its name.
fn lock_key(schema: &str) -> i64 {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in b"sonora-migrations:".iter().chain(schema.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash >> 1) as i64
}

#[derive(QueryableByName)]
struct Locked {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    locked: bool,
}

/// Creates the schema if needed and applies its pending migrations, holding an advisory lock so
/// that concurrent callers wait for each other. Returns the versions that were applied.
pub async fn migrate(
    config: &DatabaseConfig,
    migrations: impl Into<MigrationSet>,
) -> Result<Vec<String>, DatabaseError> {
    let migrations = migrations.into();
    check_schema(config.schema)?;
    let schema = config.schema;
    let mut conn = tokio::time::timeout(
        config.connect_timeout,
        AsyncPgConnection::establish(&config.url),
    )
    .await
    .map_err(|_| DatabaseError::Timeout(config.connect_timeout))?
    .map_err(|e| DatabaseError::Connect(e.to_string()))?;

    // Wait for the lock in short polls rather than one blocking call, so a stuck holder shows up
    // in the logs instead of as a silent hang.
    let key = lock_key(schema);
    loop {
        let row: Locked = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS locked")
            .bind::<BigInt, _>(key)
            .get_result(&mut conn)
            .await?;
        if row.locked {
            break;
        }
        tracing::info!(schema, "waiting for another instance to finish migrating");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    conn.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path TO {schema}"
    ))
    .await?;

    // diesel's migration harness is synchronous; run it on a blocking thread through the wrapper
    // that drives the async connection from there.
    let outcome = tokio::task::spawn_blocking(move || {
        let mut wrapper: AsyncConnectionWrapper<AsyncPgConnection> = conn.into();
        let applied = wrapper
            .run_pending_migrations(migrations)
            .map(|versions| versions.iter().map(ToString::to_string).collect::<Vec<_>>())
            .map_err(|e| e.to_string());
        (wrapper.into_inner(), applied)
    })
    .await
    .map_err(|e| DatabaseError::Migration {
        schema,
        message: e.to_string(),
    })?;
    let (mut conn, applied) = outcome;
    // Closing the connection would release the lock too; unlocking says so explicitly.
    let _ = diesel::sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(key)
        .execute(&mut conn)
        .await;
    let applied = applied.map_err(|message| DatabaseError::Migration { schema, message })?;
    if !applied.is_empty() {
        tracing::info!(schema, versions = ?applied, "applied migrations");
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_checked() {
        assert!(check_schema("delivery_worker").is_ok());
        assert!(check_schema("Gateway").is_err());
        assert!(check_schema("x; drop table y").is_err());
        assert!(check_schema("1abc").is_err());
    }

    #[test]
    fn lock_keys_differ_per_schema_and_are_stable() {
        assert_ne!(lock_key("gateway"), lock_key("webhook_ingest"));
        assert_eq!(lock_key("gateway"), lock_key("gateway"));
        assert!(lock_key("gateway") >= 0);
    }
}

/// A service's database: the pool, and its migrations applied in the background.
///
/// A service starts serving before PostgreSQL is necessarily up: [`Database::start`] returns at
/// once and keeps trying to migrate, with backoff, until it succeeds or shutdown is requested.
/// [`Database::check`] (the readiness check) fails until then, and afterwards whenever PostgreSQL
/// does not answer; nothing needs a restart when it comes back.
#[derive(Clone)]
pub struct Database {
    pool: Pool,
    migrated: std::sync::Arc<tokio::sync::watch::Sender<MigrationState>>,
}

#[derive(Debug, Clone)]
enum MigrationState {
    Pending(Option<String>),
    Done,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database").finish_non_exhaustive()
    }
}

impl Database {
    /// Builds the pool and starts applying the migrations `migrations` returns (a service's
    /// `const` set, as `|| MIGRATIONS`); `stop` ends the attempts early.
    pub fn start<M: Into<MigrationSet> + Send + 'static>(
        config: DatabaseConfig,
        migrations: fn() -> M,
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<Self, DatabaseError> {
        let pool = connect(&config)?;
        let (tx, _) = tokio::sync::watch::channel(MigrationState::Pending(None));
        let migrated = std::sync::Arc::new(tx);
        let state = std::sync::Arc::clone(&migrated);
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(250);
            loop {
                match migrate(&config, migrations()).await {
                    Ok(_) => {
                        state.send_replace(MigrationState::Done);
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(%error, retry_in = ?delay, "database not migrated yet");
                        state.send_replace(MigrationState::Pending(Some(error.to_string())));
                    }
                }
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        });
        Ok(Self { pool, migrated })
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Ok when the migrations are applied and PostgreSQL answers.
    pub async fn check(&self) -> Result<(), String> {
        if let MigrationState::Pending(error) = &*self.migrated.borrow() {
            return Err(match error {
                Some(error) => format!("not migrated yet: {error}"),
                None => "migrations are being applied".to_owned(),
            });
        }
        ping(&self.pool).await.map_err(|e| e.to_string())
    }

    /// [`Database::check`] in the shape readiness checks take.
    pub fn readiness_check(
        &self,
    ) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
    + Send
    + Sync
    + 'static {
        let database = self.clone();
        move || {
            let database = database.clone();
            Box::pin(async move { database.check().await })
        }
    }

    /// True once the migrations are applied.
    pub fn is_migrated(&self) -> bool {
        matches!(&*self.migrated.borrow(), MigrationState::Done)
    }

    /// Resolves once the migrations are applied.
    pub async fn migrated(&self) {
        let mut rx = self.migrated.subscribe();
        let _ = rx.wait_for(|s| matches!(s, MigrationState::Done)).await;
    }
}

/// The `migrate` subcommand of a service: applies `migrations` to `schema` and returns.
pub async fn migrate_command(
    settings: &settings::DatabaseSettings,
    schema: &'static str,
    migrations: impl Into<MigrationSet>,
) -> Result<(), DatabaseError> {
    let applied = migrate(&DatabaseConfig::from_settings(settings, schema), migrations).await?;
    tracing::info!(schema, applied = applied.len(), "migrations are up to date");
    Ok(())
}

impl DatabaseConfig {
    /// The configuration for `schema` from a service's database settings.
    pub fn from_settings(settings: &settings::DatabaseSettings, schema: &'static str) -> Self {
        Self {
            url: settings.url.expose().to_owned(),
            schema,
            pool_size: settings.pool_size,
            connect_timeout: settings.connect_timeout,
        }
    }
}
