//! `gateway`: the public HTTP API.
//!
//! Today it serves the voice catalogue (`GET /v1/voices`, from `tts-inference` over gRPC), the
//! operational endpoints, and readiness over its database, Redis and every gRPC peer. API keys,
//! rate limits, metering and speech arrive with their own issues.

mod routes;

use std::{net::SocketAddr, time::Duration};

use actix_web::web;
use database::{Database, DatabaseConfig, EmbeddedMigrations, embed_migrations};
use lifecycle::{
    Readiness, Signals,
    cli::ServiceMain,
    grpc::{check_peer, peer_channel},
    http::{HttpServerTask, base_app, bind},
};
use settings::{
    CommonSettings, DatabaseSettings, RedisSettings, SettingError, Sources, Url, grpc_peer,
};
use sonora_proto::tts::v1::tts_inference_client::TtsInferenceClient;
use telemetry::{metrics::Metrics, propagation::InjectTraceContext};

pub const NAME: &str = "gateway";
/// The PostgreSQL schema this service owns.
pub const SCHEMA: &str = "gateway";
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!();

/// The largest JSON body the API accepts.
pub const MAX_JSON_BODY_BYTES: usize = 64 * 1024;

/// Everything `gateway` can be configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub common: CommonSettings,
    pub http_addr: SocketAddr,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub tts_inference_url: Url,
    pub audio_generation_url: Url,
    pub delivery_worker_url: Url,
}

impl Settings {
    pub fn load(src: &Sources) -> Result<Self, SettingError> {
        Ok(Self {
            common: CommonSettings::load(src, NAME)?,
            http_addr: src.or("HTTP_ADDR", ([0, 0, 0, 0], 8080).into())?,
            database: DatabaseSettings::load(src)?,
            redis: RedisSettings::load(src)?,
            tts_inference_url: grpc_peer(src, "TTS_INFERENCE_URL", "http://127.0.0.1:50051")?,
            audio_generation_url: grpc_peer(src, "AUDIO_GENERATION_URL", "http://127.0.0.1:50052")?,
            delivery_worker_url: grpc_peer(src, "DELIVERY_WORKER_URL", "http://127.0.0.1:50053")?,
        })
    }
}

/// The process entry point's description of this service.
pub fn service() -> ServiceMain<Settings> {
    ServiceMain {
        name: NAME,
        about: "the public HTTP API of Sonora",
        load: Settings::load,
        common: |s| &s.common,
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

/// The gRPC clients of the services behind the gateway.
#[derive(Clone)]
pub struct Peers {
    pub tts: TtsInferenceClient<
        tonic::service::interceptor::InterceptedService<
            tonic::transport::Channel,
            InjectTraceContext,
        >,
    >,
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
        let call_timeout = Duration::from_secs(30);
        let tts = peer_channel(settings.tts_inference_url.as_str(), call_timeout)?;
        let audio = peer_channel(settings.audio_generation_url.as_str(), call_timeout)?;
        let delivery = peer_channel(settings.delivery_worker_url.as_str(), call_timeout)?;

        let readiness = {
            let (tts, redis) = (tts.clone(), redis.clone());
            Readiness::builder()
                .check("database", database.readiness_check())
                .check("redis", redis_pool::readiness_check(&redis))
                .check("tts-inference", move || check_peer(tts.clone()))
                .check("audio-generation", move || check_peer(audio.clone()))
                .check("delivery-worker", move || check_peer(delivery.clone()))
                .build()
        };
        let peers = Peers {
            tts: TtsInferenceClient::with_interceptor(tts, InjectTraceContext),
        };
        let metrics = Metrics::new();
        let app_readiness = readiness.clone();
        let http = lifecycle::http::serve(
            bind(settings.http_addr)?,
            move || {
                base_app(app_readiness.clone(), metrics.clone())
                    .app_data(web::Data::new(peers.clone()))
                    .app_data(
                        web::JsonConfig::default()
                            .limit(MAX_JSON_BODY_BYTES)
                            .error_handler(http_problem::json_error),
                    )
                    .app_data(web::QueryConfig::default().error_handler(http_problem::query_error))
                    .app_data(web::PathConfig::default().error_handler(http_problem::path_error))
                    .configure(routes::configure)
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
