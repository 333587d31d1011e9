//! `audio-generation`: sound effects and background music made on Replicate, finished by
//! webhook, then trimmed, normalised and stored where every replica can read them.
//!
//! A job is committed as `queued` and answered at once ([`grpc`]); the [`submitter`] creates its
//! prediction in the background (a budget a minute shared by every replica, Retry-After, retries);
//! Replicate's webhook reaches webhook-ingest, which hands the prediction to `CompletePrediction`
//! ([`completion`]), or reconciliation asks about a job whose webhook is overdue; the
//! [`finisher`] downloads, checks, processes and stores the audio ([`blob_store`]: a folder or an
//! S3 bucket) and settles the job with its event in one transaction, through the outbox.

use std::{net::SocketAddr, sync::Arc};

use database::{Database, DatabaseConfig, EmbeddedMigrations, MigrationSet, embed_migrations};
pub mod completion;
pub mod config;
pub mod events;
pub mod finisher;
pub mod grpc;
pub mod jobs;
pub mod models;
pub mod replicate;
pub mod submitter;

use internal_rpc::{Access, InternalAuthSettings, Peer, PeerSettings, Policy, Scope};
use lifecycle::{
    Readiness, Signals,
    cli::ServiceMain,
    grpc::{GrpcApp, GrpcAppConfig},
};
use outbox::{Relay, RelaySettings, relay::OutboxMetrics};
use replicate::Replicate;
use settings::{CommonSettings, DatabaseSettings, SettingError, Sources};
use sonora_proto::audio::v1::{SERVICE, audio_generation_server::AudioGenerationServer};
use telemetry::metrics::Metrics;
use tokio::sync::Notify;

pub const NAME: &str = "audio-generation";
/// The PostgreSQL schema this service owns.
pub const SCHEMA: &str = "audio";
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!();

/// The service's migrations and those of its outbox table, in its schema.
pub fn migrations() -> MigrationSet {
    MigrationSet::from(MIGRATIONS).and(outbox::MIGRATIONS)
}

/// Everything `audio-generation` can be configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub common: CommonSettings,
    /// Its signing key (it calls delivery-worker) and the keys of its callers.
    pub internal_auth: InternalAuthSettings,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub database: DatabaseSettings,
    /// Where finished audio is stored: a folder (`AUDIO_STORAGE_PATH`) or a bucket
    /// (`AUDIO_STORAGE_URL`).
    pub storage: blob_store::StorageSettings,
    pub delivery_worker: PeerSettings,
    /// How the outbox relay hands events to delivery-worker.
    pub outbox: RelaySettings,
    pub replicate: config::ReplicateSettings,
    pub work: config::WorkSettings,
}

impl Settings {
    pub fn load(src: &Sources) -> Result<Self, SettingError> {
        let delivery_worker = PeerSettings::load(
            src,
            "delivery-worker",
            "DELIVERY_WORKER",
            "http://127.0.0.1:50053",
            std::time::Duration::from_secs(10),
        )?;
        let common = CommonSettings::load(src, NAME)?;
        Ok(Self {
            replicate: config::ReplicateSettings::load(src, common.environment)?,
            work: config::WorkSettings::load(src, common.environment)?,
            outbox: RelaySettings::load(src, delivery_worker.timeout)?,
            delivery_worker,
            common,
            internal_auth: InternalAuthSettings::load(src, NAME)?,
            grpc_addr: src.or("GRPC_ADDR", ([0, 0, 0, 0], 50052).into())?,
            http_addr: src.or("HTTP_ADDR", ([0, 0, 0, 0], 9102).into())?,
            database: DatabaseSettings::load(src)?,
            storage: blob_store::StorageSettings::load(src)?,
        })
    }
}

/// Who may call which method: the gateway for a client whose key has the `audio` scope (the
/// tenant is the client's); webhook-ingest asks whether a job exists before it stores a webhook.
pub fn policy() -> Policy {
    const GATEWAY: &[&str] = &["gateway"];
    let client = Access::Client(Scope::Audio);
    Policy::new()
        .allow(SERVICE, "CreateSoundEffect", GATEWAY, client)
        .allow(SERVICE, "CreateBackgroundMusic", GATEWAY, client)
        .allow(SERVICE, "GetJob", GATEWAY, client)
        .allow(SERVICE, "ListJobs", GATEWAY, client)
        .allow(SERVICE, "CancelJob", GATEWAY, client)
        .allow(SERVICE, "ReadAudio", GATEWAY, client)
        .allow(SERVICE, "JobExists", &["webhook-ingest"], Access::Service)
        .allow(
            SERVICE,
            "CompletePrediction",
            &["webhook-ingest"],
            Access::Service,
        )
}

/// The process entry point's description of this service.
pub fn service() -> ServiceMain<Settings> {
    ServiceMain {
        name: NAME,
        about: "sound effects and background music generated on Replicate",
        load: Settings::load,
        common: |s| &s.common,
        serve_check: |s| {
            s.internal_auth.require(true, true)?;
            s.replicate.base_url.require(s.common.environment)
        },
        commands: vec![lifecycle::cli::Command::migrate(|settings, _| {
            Box::pin(async move {
                Ok(database::migrate_command(&settings.database, SCHEMA, migrations()).await?)
            })
        })],
        serve: |settings, signals| {
            Box::pin(async move { Application::build(settings, signals)?.stopped().await })
        },
    }
}

/// The running service.
pub struct Application {
    app: GrpcApp,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Application {
    /// Binds its ports and starts serving; port 0 in the settings picks free ports.
    pub fn build(settings: Settings, signals: Signals) -> anyhow::Result<Self> {
        let database = Database::start(
            DatabaseConfig::from_settings(&settings.database, SCHEMA),
            migrations,
            signals.shutdown.clone(),
        )?;
        let delivery_worker =
            Peer::new(&settings.delivery_worker, settings.internal_auth.minter()?)?;
        let store = blob_store::BlobStore::open(&settings.storage)?;
        let probe = store.clone();
        // Jobs live in the database: without it nothing can be served. Storage is needed only
        // to finish a job and delivery-worker only to hand events on (the outbox keeps them):
        // degradations, which a shared bucket or peer outage must not turn into every replica
        // leaving its Service.
        let readiness = Readiness::builder()
            .check("database", database.readiness_check())
            .degraded_without("storage", move || {
                let probe = probe.clone();
                async move { probe.check().await }
            })
            .degraded_without("delivery-worker", delivery_worker.readiness_check())
            .degraded_without("replicate", {
                let configured = settings.replicate.api_token.is_some();
                move || async move {
                    if configured {
                        Ok(())
                    } else {
                        Err(
                            "REPLICATE_API_TOKEN is not set: jobs are recorded but not submitted"
                                .to_owned(),
                        )
                    }
                }
            })
            .build();
        let metrics = Metrics::new();
        let relay = Relay::new(
            database.pool().clone(),
            &delivery_worker,
            settings.outbox.clone(),
            OutboxMetrics::register(metrics.registry()),
        )
        .spawn(
            &database,
            settings.database.url.expose().to_owned(),
            SCHEMA,
            signals.shutdown.clone(),
        );
        if let Some(original) = &settings.replicate.base_url.upgraded {
            tracing::warn!(
                original = %original,
                base_url = %settings.replicate.base_url.url,
                "BASE_URL is http:// in production; webhooks are sent to its https:// address"
            );
        }
        let replicate = Replicate::new(
            &settings.replicate.api_url,
            settings.replicate.api_token.clone(),
            settings.replicate.timeout,
            &settings.work.finish.outbound,
        );
        let submit_metrics = submitter::SubmitMetrics::register(metrics.registry());
        // One LISTEN connection wakes the submitter when a job is queued.
        let woken = Arc::new(Notify::new());
        let submit_wake = Arc::new(Notify::new());
        let finish_wake = Arc::new(Notify::new());
        let listener = tokio::spawn(database::listen(
            settings.database.url.expose().to_owned(),
            format!("audio_jobs_{SCHEMA}"),
            Arc::clone(&woken),
            signals.shutdown.clone(),
        ));
        let fan_out = {
            let (woken, submit_wake, finish_wake) = (
                Arc::clone(&woken),
                Arc::clone(&submit_wake),
                Arc::clone(&finish_wake),
            );
            let shutdown = signals.shutdown.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = woken.notified() => {
                            submit_wake.notify_one();
                            finish_wake.notify_one();
                        }
                    }
                }
            })
        };
        let submitter = tokio::spawn(
            submitter::Submitter {
                pool: database.pool().clone(),
                replicate: replicate.clone(),
                models: settings.replicate.models.clone(),
                base_url: settings.replicate.base_url.url.clone(),
                work: settings.work.clone(),
                metrics: submit_metrics.clone(),
                paused_until: Arc::default(),
            }
            .run(submit_wake, signals.shutdown.clone()),
        );
        let reconciler = tokio::spawn(
            submitter::Reconciler {
                pool: database.pool().clone(),
                replicate: replicate.clone(),
                work: settings.work.clone(),
                finish: settings.work.finish.clone(),
                metrics: submit_metrics,
            }
            .run(signals.shutdown.clone()),
        );
        let finisher = tokio::spawn(
            finisher::Finisher {
                pool: database.pool().clone(),
                store: store.clone(),
                http: finisher::download_client(&settings.work.finish),
                work: settings.work.clone(),
                metrics: finisher::FinishMetrics::register(metrics.registry()),
            }
            .run(finish_wake, signals.shutdown.clone()),
        );
        let routes = tonic::service::Routes::new(AudioGenerationServer::new(grpc::AudioApi {
            database: database.clone(),
            store,
            replicate,
            finish: settings.work.finish.clone(),
            work: settings.work.clone(),
        }));
        let app = GrpcApp::start(
            GrpcAppConfig {
                grpc_addr: settings.grpc_addr,
                http_addr: settings.http_addr,
                service_names: vec![SERVICE],
                readiness,
                metrics,
                shutdown: signals.shutdown.clone(),
                grace: settings.common.shutdown_grace_period,
                guard: settings.internal_auth.guard(policy())?,
            },
            routes,
        )?;
        Ok(Self {
            app,
            workers: vec![relay, listener, fan_out, submitter, reconciler, finisher],
        })
    }

    pub fn grpc_port(&self) -> u16 {
        self.app.grpc_port()
    }

    pub fn http_port(&self) -> u16 {
        self.app.http_port()
    }

    /// Resolves once shutdown was requested, the servers have drained and the relay has stopped.
    pub async fn stopped(self) -> anyhow::Result<()> {
        let served = self.app.stopped().await;
        for worker in self.workers {
            let _ = worker.await;
        }
        Ok(served?)
    }
}
