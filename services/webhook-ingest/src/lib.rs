//! `webhook-ingest`: verified inbound webhooks from Replicate, GitHub and any Standard-Webhooks
//! source, stored durably before they are acknowledged.
//!
//! - [`replicate`], [`github`]: the receivers, which verify a webhook and commit it to the
//!   [`inbox`] before they answer.
//! - [`dispatch`]: the dispatcher, which runs each stored event's [`actions`] with retries,
//!   across replicas, and records every attempt.
//! - [`monitor`]: failures per webhook path, `/webhook-status` and `WEBHOOK ALERT`.

pub mod actions;
pub mod codegen;
pub mod dispatch;
pub mod generic;
pub mod github;
pub mod grpc;
pub mod inbox;
pub mod monitor;
pub mod ratelimit;
pub mod replicate;
pub mod replicate_secret;
mod request;
pub mod routing;
pub mod sources;

use std::{net::SocketAddr, time::Duration};

use actix_web::web;
use database::{Database, DatabaseConfig, EmbeddedMigrations, MigrationSet, embed_migrations};
use internal_rpc::{InternalAuthSettings, Peer, PeerSettings};
use lifecycle::{
    Readiness, Signals,
    cli::ServiceMain,
    http::{HttpServerTask, bind, public_app, serve_ops},
};
use outbox::{Relay, RelaySettings, relay::OutboxMetrics};
use settings::{
    CommonSettings, DatabaseSettings, ExposeSecret as _, RedisSettings, SecretString, SettingError,
    Sources,
};
use telemetry::metrics::Metrics;
use webhook_signature::VerifyingKey;

pub const NAME: &str = "webhook-ingest";
/// The PostgreSQL schema this service owns.
pub const SCHEMA: &str = "ingest";
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!();

/// The service's migrations and those of its outbox table, in its schema.
pub fn migrations() -> MigrationSet {
    MigrationSet::from(MIGRATIONS).and(outbox::MIGRATIONS)
}

/// Everything `webhook-ingest` can be configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub common: CommonSettings,
    /// The key webhook-ingest signs its calls with.
    pub internal_auth: InternalAuthSettings,
    /// The public receivers (`HTTP_ADDR`), behind the Ingress.
    pub http_addr: SocketAddr,
    /// `/health`, `/ready` and `/metrics` for probes and Prometheus (`OPS_ADDR`); never routed
    /// by the Ingress.
    pub ops_addr: SocketAddr,
    /// The `WebhookIngest` gRPC API for the gateway (`GRPC_ADDR`).
    pub grpc_addr: SocketAddr,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub audio_generation: PeerSettings,
    pub delivery_worker: PeerSettings,
    /// How the outbox relay hands events to delivery-worker.
    pub outbox: RelaySettings,
    /// Replicate's webhook signing secret (`REPLICATE_WEBHOOK_SECRET`, `whsec_…`).
    pub replicate_webhook_secret: Option<VerifyingKey>,
    /// Replicate's API, to fetch the signing secret (`REPLICATE_API_URL`).
    pub replicate_api_url: settings::Url,
    /// A Replicate API token (`REPLICATE_API_TOKEN`): when set, the signing secret is fetched at
    /// start-up and again when a signature fails.
    pub replicate_api_token: Option<SecretString>,
    /// How often a failing signature may fetch the secret again (a minute; tests shorten it).
    pub secret_refresh: Duration,
    /// The largest webhook body accepted (`WEBHOOK_MAX_BODY_BYTES`); GitHub's is 25 MiB.
    pub max_body: usize,
    /// How long a webhook's body may take to arrive (`WEBHOOK_BODY_TIMEOUT`).
    pub body_timeout: Duration,
    /// Webhooks per minute per client address (`WEBHOOK_RATE_LIMIT_PER_IP`); 0: no limit.
    pub rate_limit_per_ip: u32,
    /// Proxies whose `X-Forwarded-For` names the client (`TRUSTED_PROXIES`).
    pub trusted_proxies: Vec<settings::IpNet>,
    /// GitHub's webhook secret (`GITHUB_WEBHOOK_SECRET`).
    pub github_webhook_secret: Option<SecretString>,
    /// Failure monitoring (`WEBHOOK_MONITORING_ENABLED`, `WEBHOOK_FAILURE_ALERT_THRESHOLD`,
    /// `WEBHOOK_TIMEOUT_SECONDS`).
    pub monitoring: monitor::MonitorSettings,
    /// How stored events are dispatched (`INBOX_…`).
    pub dispatch: dispatch::DispatchSettings,
    /// The public URL of the receivers (`BASE_URL`), as senders are told it; `https://` in
    /// production.
    pub base_url: Option<settings::Url>,
    /// Whether an `http://` `BASE_URL` was upgraded to `https://` (production), to be warned
    /// about once logging runs.
    pub base_url_upgraded: bool,
    /// Which browser origins may call the public port (`CORS_ORIGINS`, in production).
    pub cors: lifecycle::cors::CorsPolicy,
    /// Seals the generic sources' secrets (`WEBHOOK_SECRET_ENCRYPTION_KEY`, and
    /// `WEBHOOK_SECRET_ENCRYPTION_PREVIOUS_KEYS` during a rotation); without it no source can be
    /// registered.
    pub encryption_key: Option<SecretString>,
    pub previous_encryption_keys: Vec<SecretString>,
    /// Which events set off which actions (`ROUTING_RULES`).
    pub rules: Vec<routing::Rule>,
    /// The code-generation API agent runs are started on (`CODEGEN_API_URL`, `CODEGEN_ORG_ID`,
    /// `CODEGEN_TOKEN`), when configured.
    pub codegen: Option<codegen::CodegenSettings>,
    /// Where outbound requests (the code-generation API, Replicate's signing secret) may
    /// connect: in production public addresses only, plus `OUTBOUND_ALLOWED_NETWORKS`.
    pub outbound: std::sync::Arc<egress::AddressPolicy>,
}

/// The route a source's webhooks arrive on, under which the monitor counts failures on too many
/// distinct paths.
pub(crate) fn route_of(source: &str) -> &'static str {
    match source {
        "replicate" => replicate::ROUTE,
        "github" => github::ROUTE,
        _ => generic::ROUTE,
    }
}

/// The default largest webhook body: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

impl Settings {
    pub fn load(src: &Sources) -> Result<Self, SettingError> {
        let delivery_worker = PeerSettings::load(
            src,
            "delivery-worker",
            "DELIVERY_WORKER",
            "http://127.0.0.1:50053",
            Duration::from_secs(10),
        )?;
        let replicate_webhook_secret = src
            .optional::<SecretString>("REPLICATE_WEBHOOK_SECRET")?
            .map(|secret| {
                VerifyingKey::parse(secret.expose_secret()).map_err(|_| {
                    SettingError::new(
                        "REPLICATE_WEBHOOK_SECRET",
                        "must be a whsec_ secret, as Replicate's GET /v1/webhooks/default/secret gives it",
                    )
                })
            })
            .transpose()?;
        let max_body = src.or("WEBHOOK_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)?;
        if !(1024..=25 * 1024 * 1024).contains(&max_body) {
            return Err(SettingError::new(
                "WEBHOOK_MAX_BODY_BYTES",
                "must be between 1024 and 26214400 (25 MiB)",
            ));
        }
        let github_webhook_secret: Option<SecretString> = src.optional("GITHUB_WEBHOOK_SECRET")?;
        if github_webhook_secret
            .as_ref()
            .is_some_and(|s| s.expose_secret().len() < 16)
        {
            return Err(SettingError::new(
                "GITHUB_WEBHOOK_SECRET",
                "must be at least 16 characters: a guessable secret lets anyone forge events",
            ));
        }
        let threshold: u32 = src.or("WEBHOOK_FAILURE_ALERT_THRESHOLD", 5)?;
        if !(1..=100_000).contains(&threshold) {
            return Err(SettingError::new(
                "WEBHOOK_FAILURE_ALERT_THRESHOLD",
                "must be between 1 and 100000",
            ));
        }
        let timeout_seconds: u32 = src.or("WEBHOOK_TIMEOUT_SECONDS", 30)?;
        if !(1..=600).contains(&timeout_seconds) {
            return Err(SettingError::new(
                "WEBHOOK_TIMEOUT_SECONDS",
                "must be between 1 and 600",
            ));
        }
        let replicate_api_url: settings::Url = src.or(
            "REPLICATE_API_URL",
            settings::Url::parse("https://api.replicate.com").expect("a valid URL"),
        )?;
        if !matches!(replicate_api_url.scheme(), "http" | "https") {
            return Err(SettingError::new(
                "REPLICATE_API_URL",
                "must be an http:// or https:// URL, such as https://api.replicate.com",
            ));
        }
        let body_timeout: Duration = src.or("WEBHOOK_BODY_TIMEOUT", Duration::from_secs(10))?;
        if body_timeout < Duration::from_millis(100) || body_timeout > Duration::from_secs(300) {
            return Err(SettingError::new(
                "WEBHOOK_BODY_TIMEOUT",
                "must be between 100ms and 5m",
            ));
        }
        let audio_generation = PeerSettings::load(
            src,
            "audio-generation",
            "AUDIO_GENERATION",
            "http://127.0.0.1:50052",
            Duration::from_secs(10),
        )?;
        let common = CommonSettings::load(src, NAME)?;
        let production = common.environment == settings::Environment::Production;
        let (base_url, base_url_upgraded) = match src.optional::<String>("BASE_URL")? {
            None => (None, false),
            Some(text) => {
                let mut url = settings::Url::parse(&text)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                    .ok_or_else(|| {
                        SettingError::new(
                            "BASE_URL",
                            "must be an absolute https:// URL, such as https://hooks.example.com",
                        )
                    })?;
                let upgrade = production && url.scheme() == "http";
                if upgrade {
                    url.set_scheme("https").map_err(|()| {
                        SettingError::new("BASE_URL", "cannot be made an https:// URL")
                    })?;
                }
                (Some(url), upgrade)
            }
        };
        let origins =
            lifecycle::cors::parse_origins(&src.or("CORS_ORIGINS", Vec::<String>::new())?)
                .map_err(|problem| SettingError::new("CORS_ORIGINS", problem))?;
        // Webhook senders are servers and never need CORS; a browser reading /webhook-status may.
        let cors = lifecycle::cors::CorsPolicy::new(
            production,
            origins,
            "GET, POST",
            "content-type, webhook-id, webhook-timestamp, webhook-signature",
        );
        let encryption_key: Option<SecretString> = src.optional("WEBHOOK_SECRET_ENCRYPTION_KEY")?;
        let previous_encryption_keys: Vec<SecretString> = src
            .or::<Vec<String>>("WEBHOOK_SECRET_ENCRYPTION_PREVIOUS_KEYS", Vec::new())?
            .into_iter()
            .map(SecretString::from)
            .collect();
        if let Some(key) = &encryption_key {
            secret_box::Keyring::new(key.expose_secret(), &[])
                .map_err(|e| SettingError::new("WEBHOOK_SECRET_ENCRYPTION_KEY", e.to_string()))?;
        }
        for key in &previous_encryption_keys {
            secret_box::Keyring::new(key.expose_secret(), &[]).map_err(|e| {
                SettingError::new("WEBHOOK_SECRET_ENCRYPTION_PREVIOUS_KEYS", e.to_string())
            })?;
        }
        let rules = src
            .optional::<String>("ROUTING_RULES")?
            .map(|text| routing::parse_rules(&text))
            .transpose()
            .map_err(|problem| SettingError::new("ROUTING_RULES", problem))?
            .unwrap_or_default();
        let codegen_api_url: settings::Url = src.or(
            "CODEGEN_API_URL",
            settings::Url::parse("https://api.codegen.com").expect("a valid URL"),
        )?;
        if !matches!(codegen_api_url.scheme(), "http" | "https") {
            return Err(SettingError::new(
                "CODEGEN_API_URL",
                "must be an http:// or https:// URL, such as https://api.codegen.com",
            ));
        }
        let codegen_org: Option<u64> = src.optional("CODEGEN_ORG_ID")?;
        let codegen_token: Option<SecretString> = src.optional("CODEGEN_TOKEN")?;
        let codegen = match (codegen_org, codegen_token) {
            (Some(org_id), Some(token)) => Some(codegen::CodegenSettings {
                api_url: codegen_api_url,
                org_id,
                token,
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(SettingError::new(
                    "CODEGEN_TOKEN",
                    "is required when CODEGEN_ORG_ID is set: agent runs are started with it",
                ));
            }
            (None, Some(_)) => {
                return Err(SettingError::new(
                    "CODEGEN_ORG_ID",
                    "is required when CODEGEN_TOKEN is set: the organisation agent runs start in",
                ));
            }
        };
        if codegen.is_none()
            && let Some(rule) = rules
                .iter()
                .find(|r| r.actions.contains(&routing::RuleAction::AgentRun))
        {
            return Err(SettingError::new(
                "CODEGEN_TOKEN",
                format!(
                    "and CODEGEN_ORG_ID are required: ROUTING_RULES rule {:?} starts agent runs",
                    rule.name
                ),
            ));
        }
        Ok(Self {
            encryption_key,
            previous_encryption_keys,
            base_url,
            base_url_upgraded,
            cors,
            rules,
            codegen,
            outbound: std::sync::Arc::new(egress::AddressPolicy::new(
                common.environment,
                src.or("OUTBOUND_ALLOWED_NETWORKS", Vec::new())?,
            )),
            dispatch: dispatch::DispatchSettings::load(
                src,
                audio_generation.timeout.max(actions::LONGEST_HTTP_ACTION),
            )?,
            audio_generation,
            rate_limit_per_ip: src.or("WEBHOOK_RATE_LIMIT_PER_IP", 6000)?,
            trusted_proxies: src.or("TRUSTED_PROXIES", Vec::new())?,
            body_timeout,
            replicate_api_url,
            replicate_api_token: src.optional("REPLICATE_API_TOKEN")?,
            secret_refresh: replicate_secret::REFRESH_INTERVAL,
            monitoring: monitor::MonitorSettings {
                enabled: src.or("WEBHOOK_MONITORING_ENABLED", true)?,
                threshold,
                timeout_seconds,
            },
            github_webhook_secret,
            replicate_webhook_secret,
            max_body,
            outbox: RelaySettings::load(src, delivery_worker.timeout)?,
            delivery_worker,
            common,
            internal_auth: InternalAuthSettings::load(src, NAME)?,
            http_addr: src.or("HTTP_ADDR", ([0, 0, 0, 0], 8081).into())?,
            ops_addr: src.or("OPS_ADDR", ([0, 0, 0, 0], 9104).into())?,
            grpc_addr: src.or("GRPC_ADDR", ([0, 0, 0, 0], 50054).into())?,
            database: DatabaseSettings::load(src)?,
            redis: RedisSettings::load(src)?,
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
    http: HttpServerTask,
    ops: HttpServerTask,
    relay: tokio::task::JoinHandle<()>,
    dispatcher: tokio::task::JoinHandle<()>,
    grpc_port: u16,
    grpc: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    health: tokio::task::JoinHandle<()>,
}

impl Application {
    /// Binds its port and starts serving; port 0 in the settings picks a free port.
    pub fn build(settings: Settings, signals: Signals) -> anyhow::Result<Self> {
        let database = Database::start(
            DatabaseConfig::from_settings(&settings.database, SCHEMA),
            migrations,
            signals.shutdown.clone(),
        )?;
        let redis = redis_pool::connect(&redis_pool::RedisConfig::from_settings(&settings.redis))?;
        let minter = settings.internal_auth.minter()?;
        let audio = Peer::new(&settings.audio_generation, minter.clone())?;
        let delivery = Peer::new(&settings.delivery_worker, minter)?;
        // Nothing is acknowledged before it is committed, so without the database there is
        // nothing to serve. Redis and the peers are shared by every replica and needed only
        // after an event is stored (the outbox and the inbox retry): degradations.
        let readiness = Readiness::builder()
            .check("database", database.readiness_check())
            .degraded_without("redis", redis_pool::readiness_check(&redis))
            .degraded_without("audio-generation", audio.readiness_check())
            .degraded_without("delivery-worker", delivery.readiness_check())
            .build();
        let metrics = Metrics::new();
        let received = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "webhook_received_total",
                "Inbound webhooks by source and outcome (accepted, duplicate, malformed, unauthorized, refused).",
            ),
            &["source", "outcome"],
        )?;
        metrics.registry().register(Box::new(received.clone()))?;
        let processing = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new(
                "webhook_processing_seconds",
                "From an inbound webhook's request to its answer (verification and the commit included).",
            )
            .buckets(vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0]),
            &["source"],
        )?;
        metrics.registry().register(Box::new(processing.clone()))?;
        let inbox_events = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "webhook_inbox_events",
                "Inbound events stored, by state (refreshed every 15 s).",
            ),
            &["state"],
        )?;
        metrics
            .registry()
            .register(Box::new(inbox_events.clone()))?;
        spawn_inbox_gauge(database.clone(), inbox_events, signals.shutdown.clone());
        let monitor = monitor::Monitor::new(
            redis.clone(),
            settings.monitoring.clone(),
            metrics.registry(),
        )?;
        let fetcher = settings
            .replicate_api_token
            .clone()
            .map(|token| {
                replicate_secret::Fetcher::new(
                    &settings.replicate_api_url,
                    token,
                    &settings.outbound,
                )
            })
            .transpose()?;
        let replicate_secret = replicate_secret::ReplicateSecret::new(
            settings.replicate_webhook_secret.clone(),
            fetcher,
            settings.secret_refresh,
        );
        {
            // Fetch at start-up, in the background: start-up never waits for Replicate.
            let secret = replicate_secret.clone();
            tokio::spawn(async move { secret.refresh().await });
        }
        let limiter = ratelimit::RateLimiter::new(
            redis.clone(),
            settings.rate_limit_per_ip,
            settings.trusted_proxies.clone(),
        );
        let audio_client =
            sonora_proto::audio::v1::audio_generation_client::AudioGenerationClient::new(
                audio.channel(),
            );
        let rules = std::sync::Arc::new(settings.rules.clone());
        let dispatcher = dispatch::Dispatcher::new(
            database.pool().clone(),
            settings.dispatch.clone(),
            actions::Actions {
                audio: audio_client.clone(),
                rules: rules.clone(),
                codegen: settings
                    .codegen
                    .as_ref()
                    .map(|c| codegen::Codegen::new(c, redis.clone(), &settings.outbound))
                    .transpose()?,
            },
            monitor.clone(),
            dispatch::DispatchMetrics::register(metrics.registry())?,
        );
        let waker = dispatcher.waker();
        let dispatcher = dispatcher.spawn(
            &database,
            settings.database.url.expose().to_owned(),
            SCHEMA,
            signals.shutdown.clone(),
        );
        let replicate = web::Data::new(replicate::ReplicateReceiver {
            wake: waker.clone(),
            jobs: audio_client,
            limiter: limiter.clone(),
            monitor: monitor.clone(),
            pool: database.pool().clone(),
            secret: replicate_secret,
            body: request::BodyLimits {
                max_bytes: settings.max_body,
                timeout: settings.body_timeout,
            },
            received,
            processing: processing.clone(),
        });
        let sources = settings
            .encryption_key
            .as_ref()
            .map(|key| {
                let previous: Vec<String> = settings
                    .previous_encryption_keys
                    .iter()
                    .map(|k| k.expose_secret().to_owned())
                    .collect();
                secret_box::Keyring::new(key.expose_secret(), &previous).map(|keyring| {
                    sources::Sources {
                        pool: database.pool().clone(),
                        keyring: std::sync::Arc::new(keyring),
                    }
                })
            })
            .transpose()?;
        let generic = web::Data::new(generic::GenericReceiver {
            wake: waker.clone(),
            pool: database.pool().clone(),
            sources: sources.clone(),
            body: request::BodyLimits {
                max_bytes: settings.max_body,
                timeout: settings.body_timeout,
            },
            received: replicate.received.clone(),
            processing: processing.clone(),
            monitor: monitor.clone(),
            limiter: limiter.clone(),
            rules: rules.clone(),
        });
        let github = web::Data::new(github::GithubReceiver {
            wake: waker,
            rules: rules.clone(),
            limiter,
            body_timeout: settings.body_timeout,
            monitor: monitor.clone(),
            pool: database.pool().clone(),
            secret: settings.github_webhook_secret.as_ref().map(|secret| {
                ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.expose_secret().as_bytes())
            }),
            received: replicate.received.clone(),
            processing,
        });
        let relay = Relay::new(
            database.pool().clone(),
            &delivery,
            settings.outbox.clone(),
            OutboxMetrics::register(metrics.registry()),
        )
        .spawn(
            &database,
            settings.database.url.expose().to_owned(),
            SCHEMA,
            signals.shutdown.clone(),
        );
        // The gRPC API is served once the callers it trusts are configured; until then the
        // receivers and the dispatcher work as before, and the gateway cannot list the inbox.
        let (grpc_port, grpc, health) = if settings.internal_auth.trusted.is_empty() {
            tracing::warn!(
                "INTERNAL_AUTH_TRUSTED_KEYS is not set: the WebhookIngest gRPC API (GRPC_ADDR) is not served"
            );
            (0, tokio::spawn(async { Ok(()) }), tokio::spawn(async {}))
        } else {
            let grpc_listener = bind(settings.grpc_addr)?;
            let grpc_port = grpc_listener.local_addr()?.port();
            let grpc_listener = tokio::net::TcpListener::from_std(grpc_listener)?;
            let (reporter, health_service) = tonic_health::server::health_reporter();
            let health = lifecycle::grpc::sync_health(
                reporter,
                vec![sonora_proto::ingest::v1::SERVICE],
                readiness.clone(),
                signals.shutdown.clone(),
                Duration::from_secs(1),
            );
            let server = tonic::transport::Server::builder()
                .trace_fn(telemetry::propagation::grpc_server_span)
                .layer(settings.internal_auth.guard(grpc::policy())?)
                .add_service(
                    sonora_proto::ingest::v1::webhook_ingest_server::WebhookIngestServer::new(
                        grpc::IngestApi {
                            pool: database.pool().clone(),
                            sources: sources.clone(),
                            monitor: monitor.clone(),
                            rules: rules.clone(),
                        },
                    ),
                )
                .add_service(health_service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
                    signals.shutdown.clone().cancelled_owned(),
                );
            let grpc = tokio::spawn(lifecycle::grpc::serve_until_drained(
                server,
                signals.shutdown.clone(),
                settings.common.shutdown_grace_period,
            ));
            (grpc_port, grpc, health)
        };
        let ops = serve_ops(
            settings.ops_addr,
            readiness.clone(),
            metrics.clone(),
            signals.shutdown.clone(),
            settings.common.shutdown_grace_period,
        )?;
        if settings.base_url_upgraded {
            tracing::warn!(
                "BASE_URL is an http:// URL in production: webhooks must reach this service over HTTPS, so https:// is used"
            );
        }
        if let Some(base) = &settings.base_url {
            let base = base.as_str().trim_end_matches('/');
            tracing::info!(
                replicate = %format!("{base}/api/replicate-webhook/{{content_type}}/{{content_id}}"),
                github = %format!("{base}/api/v1/webhooks/github"),
                "webhook URLs"
            );
        }
        let cors_policy = web::Data::new(settings.cors.clone());
        let app_readiness = readiness.clone();
        let http = lifecycle::http::serve(
            bind(settings.http_addr)?,
            move || {
                public_app(app_readiness.clone(), metrics.clone())
                    .app_data(cors_policy.clone())
                    .wrap(actix_web::middleware::from_fn(lifecycle::cors::middleware))
                    .app_data(replicate.clone())
                    .app_data(github.clone())
                    .app_data(web::Data::new(monitor.clone()))
                    .route("/webhook-status", web::get().to(monitor::webhook_status))
                    .app_data(generic.clone())
                    .route("/api/v1/webhooks/github", web::post().to(github::receive))
                    .route(
                        "/api/v1/webhooks/{source}",
                        web::post().to(generic::receive),
                    )
                    .app_data(web::PathConfig::default().error_handler(http_problem::path_error))
                    .route(
                        "/api/replicate-webhook/{content_type}/{content_id}",
                        web::post().to(replicate::receive),
                    )
                    .default_service(web::to(http_problem::not_found))
            },
            readiness,
            signals.shutdown.clone(),
            settings.common.shutdown_grace_period,
        )?;
        tracing::info!(
            port = http.port(),
            ops_port = ops.port(),
            grpc_port,
            "listening"
        );
        Ok(Self {
            http,
            ops,
            relay,
            dispatcher,
            grpc_port,
            grpc,
            health,
        })
    }

    /// The public port.
    pub fn port(&self) -> u16 {
        self.http.port()
    }

    /// The ops port.
    pub fn ops_port(&self) -> u16 {
        self.ops.port()
    }

    /// The gRPC port (0 when the API is not served).
    pub fn grpc_port(&self) -> u16 {
        self.grpc_port
    }

    /// Resolves once shutdown was requested, in-flight requests have finished and the relay and
    /// the dispatcher have stopped.
    pub async fn stopped(self) -> anyhow::Result<()> {
        self.http.stopped().await?;
        self.ops.stopped().await?;
        self.grpc
            .await
            .map_err(|_| anyhow::anyhow!("the gRPC server task panicked"))??;
        let _ = self.health.await;
        let _ = self.relay.await;
        let _ = self.dispatcher.await;
        Ok(())
    }
}

/// Refreshes `webhook_inbox_events{state}` every 15 seconds.
fn spawn_inbox_gauge(
    database: Database,
    gauge: prometheus::IntGaugeVec,
    shutdown: tokio_util::sync::CancellationToken,
) {
    tokio::spawn(async move {
        tokio::select! {
            () = database.migrated() => {}
            () = shutdown.cancelled() => return,
        }
        loop {
            if let Ok(counts) = inbox::counts(database.pool()).await {
                for state in [
                    "received",
                    "dispatched",
                    "done",
                    "failed",
                    "dead_letter",
                    "malformed",
                ] {
                    let count = counts
                        .iter()
                        .find(|(s, _)| s == state)
                        .map_or(0, |(_, n)| *n);
                    gauge.with_label_values(&[state]).set(count);
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(15)) => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, SettingError> {
        let mut all = vec![
            ("DATABASE_URL", "postgres://127.0.0.1/x"),
            ("REDIS_URL", "redis://127.0.0.1"),
        ];
        all.extend_from_slice(pairs);
        Settings::load(&Sources::from_pairs(all).unwrap())
    }

    #[test]
    fn base_url_is_https_in_production() {
        let dev = load(&[("BASE_URL", "http://localhost:8081")]).unwrap();
        assert_eq!(dev.base_url.unwrap().as_str(), "http://localhost:8081/");
        assert!(!dev.base_url_upgraded);
        let prod = load(&[
            ("ENVIRONMENT", "production"),
            ("BASE_URL", "http://hooks.example.com"),
        ])
        .unwrap();
        assert_eq!(
            prod.base_url.unwrap().as_str(),
            "https://hooks.example.com/"
        );
        assert!(prod.base_url_upgraded);
        for bad in ["hooks.example.com", "ftp://hooks.example.com", "https://"] {
            let error = load(&[("ENVIRONMENT", "production"), ("BASE_URL", bad)]).unwrap_err();
            assert_eq!(error.name, "BASE_URL", "{bad}");
        }
    }

    #[test]
    fn cors_is_restricted_to_the_listed_origins_in_production() {
        assert_eq!(
            load(&[("CORS_ORIGINS", "https://console.example.com")])
                .unwrap()
                .cors,
            lifecycle::cors::CorsPolicy::new(
                false,
                Vec::new(),
                "GET, POST",
                "content-type, webhook-id, webhook-timestamp, webhook-signature"
            )
        );
        assert_eq!(
            load(&[
                ("ENVIRONMENT", "production"),
                ("CORS_ORIGINS", "https://console.example.com")
            ])
            .unwrap()
            .cors,
            lifecycle::cors::CorsPolicy::new(
                true,
                vec!["https://console.example.com".to_owned()],
                "GET, POST",
                "content-type, webhook-id, webhook-timestamp, webhook-signature"
            )
        );
        let error = load(&[("CORS_ORIGINS", "https://console.example.com/app")]).unwrap_err();
        assert_eq!(error.name, "CORS_ORIGINS");
    }

    #[test]
    fn routing_rules_come_from_the_settings_file() {
        let dir = std::env::temp_dir().join(format!("ingest-rules-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("sonora.toml");
        std::fs::write(
            &file,
            r#"
CODEGEN_ORG_ID = 42

[[ROUTING_RULES]]
name = "agent-on-label"
source = "github"
event = "issues"
action = "labeled"
repository = "acme/*"
label = "agent"
tenant = "acme"
actions = ["publish", "agent_run"]
prompt = "Fix {repository}#{issue.number}"
"#,
        )
        .unwrap();
        let src = Sources::from_pairs([
            ("SONORA_CONFIG_FILE", file.to_str().unwrap()),
            ("DATABASE_URL", "postgres://127.0.0.1/x"),
            ("REDIS_URL", "redis://127.0.0.1"),
            ("CODEGEN_TOKEN", "a-token"),
        ])
        .unwrap();
        let settings = Settings::load(&src).unwrap();
        assert_eq!(settings.rules.len(), 1);
        let rule = &settings.rules[0];
        assert_eq!(
            (
                rule.name.as_str(),
                rule.repository.as_deref(),
                rule.label.as_deref()
            ),
            ("agent-on-label", Some("acme/*"), Some("agent"))
        );
        assert_eq!(settings.codegen.as_ref().unwrap().org_id, 42);
        assert!(!format!("{:?}", settings.codegen).contains("a-token"));
    }
}
