//! `delivery-worker`: signed outbound webhooks to partners from a PostgreSQL queue.
//!
//! Today it owns its schema (migrated at start-up and by `delivery-worker migrate`), serves the
//! gRPC health service and the operational endpoints; the queue, the workers and the partner API
//! arrive with their own issue.

use std::net::SocketAddr;

use database::{Database, DatabaseConfig, EmbeddedMigrations, embed_migrations};
use lifecycle::{
    Readiness, Signals,
    cli::ServiceMain,
    grpc::{GrpcApp, GrpcAppConfig},
};
use settings::{CommonSettings, DatabaseSettings, SettingError, Sources};
use telemetry::{metrics::Metrics, propagation::grpc_server_span};

pub const NAME: &str = "delivery-worker";
/// The PostgreSQL schema this service owns.
pub const SCHEMA: &str = "delivery";
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!();

/// Everything `delivery-worker` can be configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub common: CommonSettings,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub database: DatabaseSettings,
}

impl Settings {
    pub fn load(src: &Sources) -> Result<Self, SettingError> {
        Ok(Self {
            common: CommonSettings::load(src, NAME)?,
            grpc_addr: src.or("GRPC_ADDR", ([0, 0, 0, 0], 50053).into())?,
            http_addr: src.or("HTTP_ADDR", ([0, 0, 0, 0], 9103).into())?,
            database: DatabaseSettings::load(src)?,
        })
    }
}

/// The process entry point's description of this service.
pub fn service() -> ServiceMain<Settings> {
    ServiceMain {
        name: NAME,
        about: "signed outbound webhooks to partners from a PostgreSQL queue",
        load: Settings::load,
        common: |s| &s.common,
        migrate: Some(|settings| {
            Box::pin(async move {
                Ok(database::migrate_command(&settings.database, SCHEMA, MIGRATIONS).await?)
            })
        }),
        serve: |settings, signals| {
            Box::pin(async move { Application::build(settings, signals)?.stopped().await })
        },
    }
}

/// The running service.
pub struct Application {
    app: GrpcApp,
    database: Database,
}

impl Application {
    /// Binds its ports and starts serving; port 0 in the settings picks free ports.
    pub fn build(settings: Settings, signals: Signals) -> anyhow::Result<Self> {
        let database = Database::start(
            DatabaseConfig::from_settings(&settings.database, SCHEMA),
            || MIGRATIONS,
            signals.shutdown.clone(),
        )?;
        let readiness = {
            let database = database.clone();
            Readiness::builder()
                .check("database", database.readiness_check())
                .build()
        };
        let router = tonic::transport::Server::builder()
            .trace_fn(grpc_server_span)
            .add_routes(tonic::service::Routes::default());
        let app = GrpcApp::start(
            GrpcAppConfig {
                grpc_addr: settings.grpc_addr,
                http_addr: settings.http_addr,
                service_names: vec![],
                readiness,
                metrics: Metrics::new(),
                shutdown: signals.shutdown.clone(),
                grace: settings.common.shutdown_grace_period,
            },
            router,
        )?;
        Ok(Self { app, database })
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

    /// Resolves once shutdown was requested and the servers have drained.
    pub async fn stopped(self) -> anyhow::Result<()> {
        self.app.stopped().await
    }
}
