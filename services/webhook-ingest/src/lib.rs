//! `webhook-ingest`: verified inbound webhooks from Replicate, GitHub and any Standard-Webhooks
//! source, stored durably before they are acknowledged.
//!
//! Today it owns its schema (migrated at start-up and by `webhook-ingest migrate`), serves the
//! operational endpoints and reports readiness over its database, Redis and gRPC peers; the
//! receivers arrive with their own issue.

use std::{net::SocketAddr, time::Duration};

use actix_web::web;
use database::{Database, DatabaseConfig, EmbeddedMigrations, embed_migrations};
use internal_rpc::{InternalAuthSettings, Peer, PeerSettings};
use lifecycle::{
    Readiness, Signals,
    cli::ServiceMain,
    http::{HttpServerTask, base_app, bind},
};
use settings::{CommonSettings, DatabaseSettings, RedisSettings, SettingError, Sources};
use telemetry::metrics::Metrics;

pub const NAME: &str = "webhook-ingest";
/// The PostgreSQL schema this service owns.
pub const SCHEMA: &str = "ingest";
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!();

/// Everything `webhook-ingest` can be configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub common: CommonSettings,
    /// The key webhook-ingest signs its calls with.
    pub internal_auth: InternalAuthSettings,
    pub http_addr: SocketAddr,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub audio_generation: PeerSettings,
    pub delivery_worker: PeerSettings,
}

impl Settings {
    pub fn load(src: &Sources) -> Result<Self, SettingError> {
        Ok(Self {
            common: CommonSettings::load(src, NAME)?,
            internal_auth: InternalAuthSettings::load(src, NAME)?,
            http_addr: src.or("HTTP_ADDR", ([0, 0, 0, 0], 8081).into())?,
            database: DatabaseSettings::load(src)?,
            redis: RedisSettings::load(src)?,
            audio_generation: PeerSettings::load(
                src,
                "audio-generation",
                "AUDIO_GENERATION",
                "http://127.0.0.1:50052",
                Duration::from_secs(10),
            )?,
            delivery_worker: PeerSettings::load(
                src,
                "delivery-worker",
                "DELIVERY_WORKER",
                "http://127.0.0.1:50053",
                Duration::from_secs(10),
            )?,
        })
    }
}

/// The process entry point's description of this service.
pub fn service() -> ServiceMain<Settings> {
    ServiceMain {
        name: NAME,
        about: "verified inbound webhooks, stored before they are acknowledged",
        load: Settings::load,
        common: |s| &s.common,
        serve_check: |s| s.internal_auth.require(true, false),
        commands: vec![lifecycle::cli::Command::migrate(|settings| {
            Box::pin(async move {
                Ok(database::migrate_command(&settings.database, SCHEMA, MIGRATIONS).await?)
            })
        })],
        serve: |settings, signals| {
            Box::pin(async move { Application::build(settings, signals)?.stopped().await })
        },
    }
}

/// The running service.
pub struct Application {
    http: HttpServerTask,
}

impl Application {
    /// Binds its port and starts serving; port 0 in the settings picks a free port.
    pub fn build(settings: Settings, signals: Signals) -> anyhow::Result<Self> {
        let database = Database::start(
            DatabaseConfig::from_settings(&settings.database, SCHEMA),
            || MIGRATIONS,
            signals.shutdown.clone(),
        )?;
        let redis = redis_pool::connect(&redis_pool::RedisConfig::from_settings(&settings.redis))?;
        let minter = settings.internal_auth.minter()?;
        let audio = Peer::new(&settings.audio_generation, minter.clone())?;
        let delivery = Peer::new(&settings.delivery_worker, minter)?;
        let readiness = Readiness::builder()
            .check("database", database.readiness_check())
            .check("redis", redis_pool::readiness_check(&redis))
            .check("audio-generation", move || {
                let audio = audio.clone();
                async move { audio.check().await }
            })
            .check("delivery-worker", move || {
                let delivery = delivery.clone();
                async move { delivery.check().await }
            })
            .build();
        let metrics = Metrics::new();
        let app_readiness = readiness.clone();
        let http = lifecycle::http::serve(
            bind(settings.http_addr)?,
            move || {
                base_app(app_readiness.clone(), metrics.clone())
                    .default_service(web::to(http_problem::not_found))
            },
            readiness,
            signals.shutdown.clone(),
            settings.common.shutdown_grace_period,
        )?;
        tracing::info!(port = http.port(), "listening");
        Ok(Self { http })
    }

    pub fn port(&self) -> u16 {
        self.http.port()
    }

    /// Resolves once shutdown was requested and in-flight requests have finished.
    pub async fn stopped(self) -> anyhow::Result<()> {
        Ok(self.http.stopped().await?)
    }
}
