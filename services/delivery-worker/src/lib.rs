//! `delivery-worker`: the partner side of Sonora. Other services publish events over gRPC; every
//! partner endpoint subscribed to an event's type receives it as a signed HTTP POST (Standard
//! Webhooks), reliably.
//!
//! - [`store`]: endpoints, encrypted secrets, messages, the delivery queue, attempts, audit log.
//! - [`worker`]: claims due deliveries with `SKIP LOCKED` and a lease, sends them within global
//!   and per-endpoint limits, and records what became of them.
//! - [`rules`]: what an attempt means (retry on a schedule, dead-letter, disable a failing
//!   endpoint) and which operational events it raises, as pure functions.
//! - [`sender`] and [`policy`] (the shared `egress` crate): the HTTP side, and where it may
//!   connect (SSRF protection).
//! - [`grpc`]: the `DeliveryService` API.
//!
//! One binary runs both roles; `WORKER_ENABLED=false` runs the API only.

pub mod clock;
pub mod grpc;
pub mod metrics;
pub mod model;
pub use egress as policy;
pub mod retry;
pub mod rules;
pub mod sender;
pub mod store;
pub mod worker;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use database::{Database, DatabaseConfig, EmbeddedMigrations, embed_migrations};
use internal_rpc::{Access, InternalAuthSettings, Scope};
use lifecycle::{
    Readiness, Signals,
    cli::{Command, ServiceMain},
    grpc::{GrpcApp, GrpcAppConfig},
};
use secret_box::Keyring;
use settings::{
    CommonSettings, DatabaseSettings, ExposeSecret as _, SecretString, SettingError, Sources,
};
use sonora_proto::delivery::v1::{SERVICE, delivery_service_server::DeliveryServiceServer};
use telemetry::metrics::Metrics;
use tokio::sync::watch;

use crate::{
    clock::{Clock, SystemClock},
    model::DeliveryStatus,
    policy::{AddressPolicy, IpNet},
    retry::{Delays, RetrySchedule},
    rules::Policy,
    store::Store,
    worker::{Tuning, Worker},
};

pub const NAME: &str = "delivery-worker";
/// The PostgreSQL schema this service owns.
pub const SCHEMA: &str = "delivery";
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!();

/// Everything `delivery-worker` can be configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub common: CommonSettings,
    /// The keys of the services allowed to call this one.
    pub internal_auth: InternalAuthSettings,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub database: DatabaseSettings,
    /// Seals endpoint secrets (`WEBHOOK_SECRET_ENCRYPTION_KEY`, base64 of 32 bytes).
    pub encryption_key: SecretString,
    /// Keys that only open, during a key rotation.
    pub previous_encryption_keys: Vec<SecretString>,
    pub worker_enabled: bool,
    pub tuning: Tuning,
    pub lease: Duration,
    pub schedule: RetrySchedule,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub disable_after: Duration,
    pub failing_after_attempts: i32,
    pub allowed_networks: Vec<IpNet>,
    /// How often the queue gauge and the delivered series are refreshed: 15 s. Not read from
    /// the environment (operators have no reason to change it); tests shorten it.
    pub metrics_refresh: Duration,
}

fn bounded<T: PartialOrd + std::fmt::Display>(
    name: &str,
    value: T,
    min: T,
    max: T,
) -> Result<T, SettingError> {
    if value < min || value > max {
        return Err(SettingError::new(
            name,
            format!("must be between {min} and {max}"),
        ));
    }
    Ok(value)
}

/// The limits SIGHUP may change.
pub fn load_tuning(src: &Sources) -> Result<Tuning, SettingError> {
    let poll_interval: Duration = src.or("WORKER_POLL_INTERVAL", Duration::from_secs(1))?;
    if poll_interval < Duration::from_millis(10) || poll_interval > Duration::from_secs(300) {
        return Err(SettingError::new(
            "WORKER_POLL_INTERVAL",
            "must be between 10ms and 5m",
        ));
    }
    Ok(Tuning {
        batch_size: bounded(
            "WORKER_BATCH_SIZE",
            src.or("WORKER_BATCH_SIZE", 100usize)?,
            1,
            5000,
        )?,
        poll_interval,
        max_concurrent: bounded(
            "MAX_CONCURRENT_DELIVERIES",
            src.or("MAX_CONCURRENT_DELIVERIES", 64usize)?,
            1,
            10_000,
        )?,
        per_endpoint: bounded(
            "MAX_CONCURRENT_PER_ENDPOINT",
            src.or("MAX_CONCURRENT_PER_ENDPOINT", 16usize)?,
            1,
            10_000,
        )?,
    })
}

impl Settings {
    pub fn load(src: &Sources) -> Result<Self, SettingError> {
        let encryption_key: SecretString = src.required("WEBHOOK_SECRET_ENCRYPTION_KEY")?;
        let previous_encryption_keys: Vec<SecretString> = src
            .or::<Vec<String>>("WEBHOOK_SECRET_ENCRYPTION_PREVIOUS_KEYS", Vec::new())?
            .into_iter()
            .map(SecretString::from)
            .collect();
        // Parse the keys now, so a bad one stops the service at start with its name.
        Keyring::new(encryption_key.expose_secret(), &[])
            .map_err(|e| SettingError::new("WEBHOOK_SECRET_ENCRYPTION_KEY", e.to_string()))?;
        for key in &previous_encryption_keys {
            Keyring::new(key.expose_secret(), &[]).map_err(|e| {
                SettingError::new("WEBHOOK_SECRET_ENCRYPTION_PREVIOUS_KEYS", e.to_string())
            })?;
        }
        let database = DatabaseSettings::load(src)?;
        // The lease is what a killed worker's rows wait out before another worker takes them, so
        // it is short; a live worker keeps its rows by renewing their leases every third of it
        // (`worker` module), however long a delivery takes. A renewal may wait for a database
        // connection as long as DATABASE_CONNECT_TIMEOUT, so a lease shorter than three of those
        // could run out while a healthy worker waits for the pool.
        let lease: Duration = src.or("WORKER_LEASE", Duration::from_secs(15))?;
        if lease < database.connect_timeout * 3 || lease < Duration::from_secs(1) {
            return Err(SettingError::new(
                "WORKER_LEASE",
                "must be at least 1s and at least three times DATABASE_CONNECT_TIMEOUT: it is \
                 renewed every third of it while deliveries are in flight, and a renewal may wait \
                 that long for a database connection",
            ));
        }
        let request_timeout: Duration =
            src.or("WEBHOOK_REQUEST_TIMEOUT", Duration::from_secs(15))?;
        let defaults = RetrySchedule::default();
        let jitter: f64 = src
            .or("WEBHOOK_RETRY_JITTER", "0.2".to_owned())?
            .parse()
            .ok()
            .filter(|j: &f64| (0.0..=0.5).contains(j))
            .ok_or_else(|| {
                SettingError::new(
                    "WEBHOOK_RETRY_JITTER",
                    "must be a fraction between 0 and 0.5",
                )
            })?;
        Ok(Self {
            common: CommonSettings::load(src, NAME)?,
            internal_auth: InternalAuthSettings::load(src, NAME)?,
            grpc_addr: src.or("GRPC_ADDR", ([0, 0, 0, 0], 50053).into())?,
            http_addr: src.or("HTTP_ADDR", ([0, 0, 0, 0], 9103).into())?,
            database,
            encryption_key,
            previous_encryption_keys,
            worker_enabled: src.or("WORKER_ENABLED", true)?,
            tuning: load_tuning(src)?,
            lease,
            schedule: RetrySchedule {
                delays: src.or("WEBHOOK_RETRY_SCHEDULE", Delays(defaults.delays))?.0,
                jitter,
            },
            connect_timeout: src.or("WEBHOOK_CONNECT_TIMEOUT", Duration::from_secs(5))?,
            request_timeout,
            disable_after: src.or("WEBHOOK_DISABLE_AFTER", Duration::from_secs(5 * 24 * 3600))?,
            failing_after_attempts: bounded(
                "WEBHOOK_FAILING_AFTER_ATTEMPTS",
                src.or("WEBHOOK_FAILING_AFTER_ATTEMPTS", 4u32)?,
                1,
                1000,
            )
            .map(|n| i32::try_from(n).expect("bounded"))?,
            allowed_networks: src.or("WEBHOOK_ALLOWED_NETWORKS", Vec::new())?,
            metrics_refresh: Duration::from_secs(15),
        })
    }

    /// The worker's fixed rules, from these settings.
    pub fn worker_policy(&self) -> Policy {
        Policy {
            lease: self.lease,
            schedule: self.schedule.clone(),
            disable_after: self.disable_after,
            failing_after_attempts: self.failing_after_attempts,
            throttle: Duration::from_secs(5),
        }
    }

    pub fn keyring(&self) -> Keyring {
        let previous: Vec<String> = self
            .previous_encryption_keys
            .iter()
            .map(|k| k.expose_secret().to_owned())
            .collect();
        Keyring::new(self.encryption_key.expose_secret(), &previous).expect("checked when loading")
    }
}

/// Who may call which method.
///
/// - Services publish their own events (audio-generation's and webhook-ingest's outbox relays);
///   the gateway publishes a client's test event.
/// - Everything about a tenant's endpoints, messages and deliveries is asked by the gateway for
///   a client whose key has the `webhooks` scope; the tenant is the client's.
/// - A tenant's usage (webhooks delivered per day) is asked by the gateway for a client whose key
///   has the `usage` scope.
/// - Cleaning up delivered rows spans every tenant: only the gateway acting for itself (an
///   operator's tool), never for a client.
pub fn api_policy() -> internal_rpc::Policy {
    const GATEWAY: &[&str] = &["gateway"];
    let client = Access::Client(Scope::Webhooks);
    let mut policy = internal_rpc::Policy::new()
        .allow(
            SERVICE,
            "Publish",
            &["audio-generation", "webhook-ingest", "gateway"],
            Access::ServiceOrClient(Scope::Webhooks),
        )
        .allow(
            SERVICE,
            "PublishBatch",
            &["audio-generation", "webhook-ingest"],
            Access::Service,
        );
    for method in [
        "CreateEndpoint",
        "GetEndpoint",
        "ListEndpoints",
        "UpdateEndpoint",
        "DeleteEndpoint",
        "GetEndpointSecret",
        "RotateEndpointSecret",
        "ListMessages",
        "ListDeliveries",
        "ListAttempts",
        "RetryDelivery",
        "RedriveDeadLetters",
    ] {
        policy = policy.allow(SERVICE, method, GATEWAY, client);
    }
    policy
        .allow(
            SERVICE,
            "GetQueueStats",
            GATEWAY,
            Access::ServiceOrClient(Scope::Webhooks),
        )
        .allow(SERVICE, "GetUsage", GATEWAY, Access::Client(Scope::Usage))
        .allow(SERVICE, "CleanupDelivered", GATEWAY, Access::Service)
}

/// The process entry point's description of this service.
pub fn service() -> ServiceMain<Settings> {
    ServiceMain {
        name: NAME,
        about: "signed outbound webhooks to partners from a PostgreSQL queue",
        load: Settings::load,
        common: |s| &s.common,
        serve_check: |s| s.internal_auth.require(false, true),
        commands: vec![
            Command::migrate(|settings, _| {
                Box::pin(async move {
                    Ok(database::migrate_command(&settings.database, SCHEMA, MIGRATIONS).await?)
                })
            }),
            Command {
                name: "rotate-secrets",
                about: "re-encrypt every endpoint secret under WEBHOOK_SECRET_ENCRYPTION_KEY and exit",
                takes_args: false,
                run: |settings, _| {
                    Box::pin(async move {
                        let config = DatabaseConfig::from_settings(&settings.database, SCHEMA);
                        let store =
                            Store::new(database::connect(&config)?, Arc::new(settings.keyring()));
                        let count = store.reseal_secrets().await?;
                        tracing::info!(
                            count,
                            "endpoint secrets re-encrypted under the current key"
                        );
                        Ok(())
                    })
                },
            },
        ],
        serve: |settings, signals| {
            Box::pin(async move { Application::build(settings, signals)?.stopped().await })
        },
    }
}

/// The running service.
pub struct Application {
    app: GrpcApp,
    database: Database,
    worker: Option<tokio::task::JoinHandle<()>>,
}

impl Application {
    /// Binds its ports and starts serving and delivering; port 0 picks free ports.
    pub fn build(settings: Settings, signals: Signals) -> anyhow::Result<Self> {
        Self::build_with_clock(settings, signals, Arc::new(SystemClock))
    }

    /// As [`Application::build`], with a chosen clock.
    pub fn build_with_clock(
        settings: Settings,
        signals: Signals,
        clock: Arc<dyn Clock>,
    ) -> anyhow::Result<Self> {
        let db_config = DatabaseConfig::from_settings(&settings.database, SCHEMA);
        let database = Database::start(db_config, || MIGRATIONS, signals.shutdown.clone())?;
        let store = Store::new(database.pool().clone(), Arc::new(settings.keyring()));
        let policy = Arc::new(AddressPolicy::new(
            settings.common.environment,
            settings.allowed_networks.clone(),
        ));
        let metrics = Metrics::new();
        let delivery_metrics = metrics::DeliveryMetrics::register(metrics.registry());

        let worker = if settings.worker_enabled {
            let sender = sender::Sender::new(
                Arc::clone(&policy),
                settings.connect_timeout,
                settings.request_timeout,
            )?;
            let (tuning_tx, tuning_rx) = watch::channel(settings.tuning);
            let worker = Worker::new(
                store.clone(),
                sender,
                Arc::clone(&clock),
                delivery_metrics.clone(),
                settings.worker_policy(),
                tuning_rx,
            );
            spawn_reloader(signals.clone(), tuning_tx);
            spawn_metrics_refresh(
                store.clone(),
                delivery_metrics,
                settings.metrics_refresh,
                signals.shutdown.clone(),
            );
            let url = settings.database.url.expose().to_owned();
            let (shutdown, grace) = (
                signals.shutdown.clone(),
                settings.common.shutdown_grace_period,
            );
            let database = database.clone();
            Some(tokio::spawn(async move {
                // Deliveries need the tables: wait for the migrations (or for shutdown).
                tokio::select! {
                    () = database.migrated() => worker.run(url, shutdown, grace).await,
                    () = shutdown.cancelled() => {}
                }
            }))
        } else {
            None
        };

        let readiness = Readiness::builder()
            .check("database", database.readiness_check())
            .build();
        let routes = tonic::service::Routes::new(DeliveryServiceServer::new(grpc::DeliveryApi {
            database: database.clone(),
            store,
            clock,
            policy,
            schedule: settings.schedule.clone(),
        }));
        let app = GrpcApp::start(
            GrpcAppConfig {
                grpc_addr: settings.grpc_addr,
                http_addr: settings.http_addr,
                service_names: vec!["sonora.delivery.v1.DeliveryService"],
                readiness,
                metrics,
                shutdown: signals.shutdown.clone(),
                grace: settings.common.shutdown_grace_period,
                guard: settings.internal_auth.guard(api_policy())?,
            },
            routes,
        )?;
        Ok(Self {
            app,
            database,
            worker,
        })
    }

    pub fn grpc_port(&self) -> u16 {
        self.app.grpc_port()
    }

    pub fn http_port(&self) -> u16 {
        self.app.http_port()
    }

    pub fn database(&self) -> &Database {
        &self.database
    }

    /// Resolves once shutdown was requested, the servers have drained and the worker has
    /// finished or abandoned its deliveries in flight.
    pub async fn stopped(self) -> anyhow::Result<()> {
        let served = self.app.stopped().await;
        if let Some(worker) = self.worker {
            let _ = worker.await;
        }
        Ok(served?)
    }
}

/// On SIGHUP, reads the worker limits again (from the settings file and the environment) and
/// hands them to the running worker; a bad value is logged and the old limits stay.
fn spawn_reloader(signals: Signals, tuning: watch::Sender<Tuning>) {
    let mut reloads = signals.reloads();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = signals.shutdown.cancelled() => return,
                changed = reloads.changed() => if changed.is_err() { return },
            }
            match Sources::from_env().and_then(|src| load_tuning(&src)) {
                Ok(new) => {
                    tracing::info!(?new, "worker limits reloaded");
                    tuning.send_replace(new);
                }
                Err(error) => tracing::error!(%error, "reload refused; the current limits stay"),
            }
        }
    });
}

/// Every `every` (15 s): refreshes `webhook_queue_size{status}`, and drops the
/// `webhooks_delivered_total` series of endpoints deleted since (on any instance: each instance
/// asks the store which of its labelled endpoints still exist). A failed query leaves the
/// metrics as they are until the next round.
fn spawn_metrics_refresh(
    store: Store,
    metrics: metrics::DeliveryMetrics,
    every: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    tokio::spawn(async move {
        loop {
            if let Ok(counts) = store.status_counts().await {
                for status in DeliveryStatus::ALL {
                    metrics
                        .queue_size
                        .with_label_values(&[status.as_str()])
                        .set(counts.get(status).copied().unwrap_or(0));
                }
            }
            let labelled = metrics.delivered_endpoints();
            match store.existing_endpoints(&labelled).await {
                Ok(existing) => {
                    let dropped = metrics.forget_deleted(&existing);
                    if dropped > 0 {
                        tracing::debug!(dropped, "delivered series of deleted endpoints dropped");
                    }
                }
                Err(error) => tracing::debug!(%error, "cannot check the labelled endpoints"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, SettingError> {
        let mut all = vec![
            ("DATABASE_URL", "postgres://127.0.0.1/x".to_owned()),
            ("WEBHOOK_SECRET_ENCRYPTION_KEY", secret_box::generate_key()),
        ];
        all.extend(pairs.iter().map(|(k, v)| (*k, (*v).to_owned())));
        Settings::load(&Sources::from_pairs(all).expect("no settings file"))
    }

    #[test]
    fn the_lease_is_short_and_fits_its_heartbeat() {
        assert_eq!(load(&[]).unwrap().lease, Duration::from_secs(15));
        // A lease shorter than a request is fine now: the heartbeat keeps the row.
        let slow = load(&[("WORKER_LEASE", "15s"), ("WEBHOOK_REQUEST_TIMEOUT", "60s")]).unwrap();
        assert!(slow.lease < slow.request_timeout);
        // Too short for a renewal that waits DATABASE_CONNECT_TIMEOUT (5 s) for a connection.
        let error = load(&[("WORKER_LEASE", "10s")]).unwrap_err();
        assert_eq!(error.name, "WORKER_LEASE");
        assert!(
            error
                .problem
                .contains("at least three times DATABASE_CONNECT_TIMEOUT"),
            "{error}"
        );
        assert!(load(&[("WORKER_LEASE", "3s"), ("DATABASE_CONNECT_TIMEOUT", "1s")]).is_ok());
        assert!(
            load(&[
                ("WORKER_LEASE", "600ms"),
                ("DATABASE_CONNECT_TIMEOUT", "200ms")
            ])
            .is_err()
        );
    }
}
