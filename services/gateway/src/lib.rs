//! `gateway`: the public HTTP API.
//!
//! Every `/v1` route takes an API key of a tenant ([`auth`], [`keys`]; managed by tenant admins in
//! [`admin`] and by operators with `gateway keys`, [`cli`]): speech and the voice catalogue from
//! tts-inference, sound-effect and music jobs from audio-generation ([`audio`]), the event
//! catalogue, partner webhook endpoints and their deliveries from delivery-worker ([`webhooks`]),
//! inbound webhook sources and events from webhook-ingest ([`inbound`]); plus the operational
//! endpoints and readiness over its database, Redis and every gRPC peer. Every `/v1` request is
//! limited per key and per client address ([`ratelimit`]), speech is counted against the key's
//! monthly character quota, and usage is metered per key and day ([`usage`]). Keys can be
//! exchanged for short-lived tokens ([`token`]). The API's OpenAPI document, generated from the
//! handlers, is served at `/openapi.json` and rendered at `/docs` ([`openapi`]). The console, a
//! browser interface over the same handlers, is served at `/console` ([`console`]).

pub mod admin;
pub mod audio;
pub mod auth;
pub mod cli;
pub mod console;
pub mod inbound;
pub mod keys;
pub mod legacy_metrics;
pub mod openai;
pub mod openapi;
pub mod ratelimit;
pub mod realtime;
pub mod routes;
pub mod telephony;
pub mod token;
pub mod usage;
pub mod voices;
pub mod webhooks;

use std::{net::SocketAddr, time::Duration};

use actix_web::web;
use database::{Database, DatabaseConfig, EmbeddedMigrations, embed_migrations};
use internal_rpc::{InternalAuthSettings, Peer, PeerChannel, PeerSettings};
use lifecycle::{
    Readiness, Signals,
    cli::ServiceMain,
    http::{HttpServerTask, bind, public_app, serve_ops},
};
use settings::{CommonSettings, DatabaseSettings, RedisSettings, SettingError, Sources};
use sonora_proto::tts::v1::tts_inference_client::TtsInferenceClient;
use telemetry::metrics::Metrics;

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
    /// The key the gateway signs its calls to the backends with.
    pub internal_auth: InternalAuthSettings,
    /// The public API (`HTTP_ADDR`), behind the Ingress.
    pub http_addr: SocketAddr,
    /// `/health`, `/ready` and `/metrics` for probes and Prometheus (`OPS_ADDR`); never routed
    /// by the Ingress.
    pub ops_addr: SocketAddr,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub tts_inference: PeerSettings,
    pub audio_generation: PeerSettings,
    pub delivery_worker: PeerSettings,
    pub webhook_ingest: PeerSettings,
    pub api_keys: ApiKeySettings,
    /// `CORS_ORIGINS`: in production the only origins browsers may call from.
    pub cors: lifecycle::cors::CorsPolicy,
    /// Rate limits, quotas and the trusted proxies.
    pub limits: ratelimit::LimitSettings,
    /// `USAGE_FLUSH_INTERVAL`: how often usage counts are written to PostgreSQL (and so the most
    /// a replica killed without warning loses).
    pub usage_flush_interval: Duration,
    /// `HTTP_BODY_TIMEOUT`: how long a client may take to send a request's body (408 after).
    pub body_timeout: Duration,
    /// `OPENAI_VOICE_MAP`: the Sonora voice and speaker of each OpenAI voice name on
    /// `/v1/audio/speech`; every name not given speaks with the default voice.
    pub openai_voices: openai::VoiceMap,
    /// `CONSOLE_ENABLED`, `CONSOLE_SESSION_TTL`: the browser console at `/console`.
    pub console: console::ConsoleSettings,
    /// `REALTIME_*`: the limits of `/v1/tts/realtime`.
    pub realtime: realtime::RealtimeSettings,
    /// `TWILIO_*` and `PUBLIC_BASE_URL`: phone calls over Twilio Media Streams.
    pub telephony: telephony::TelephonySettings,
}

/// What a browser's preflight may ask the API for.
const CORS_METHODS: &str = "GET, POST, PATCH, DELETE";
const CORS_HEADERS: &str = "content-type, authorization, x-api-key, range";
const CORS_EXPOSE: &str = "location, retry-after, content-range, accept-ranges, x-sample-rate, ratelimit, ratelimit-policy";

/// How API keys are hashed.
#[derive(Debug, Clone)]
pub struct ApiKeySettings {
    /// `API_KEY_PEPPER`: the secret keys are hashed with (HMAC-SHA256). Changing it invalidates
    /// every key. `None` only in production without one, which [`ApiKeySettings::require`]
    /// refuses for serving and for the key tool (not for `migrate`, which needs no keys).
    pub pepper: Option<settings::SecretString>,
    /// Whether the development pepper is in use (logged at start).
    pub development_pepper: bool,
}

/// The pepper development uses when none is set; production refuses to start without one.
pub const DEVELOPMENT_PEPPER: &str = "development-only-api-key-pepper-never-use-in-production";

impl ApiKeySettings {
    pub fn load(src: &Sources, environment: settings::Environment) -> Result<Self, SettingError> {
        use settings::ExposeSecret as _;
        let pepper: Option<settings::SecretString> = src.optional("API_KEY_PEPPER")?;
        match pepper {
            Some(pepper) if pepper.expose_secret().len() < 32 => Err(SettingError::new(
                "API_KEY_PEPPER",
                "must be at least 32 characters (head -c32 /dev/urandom | base64)",
            )),
            Some(pepper) => Ok(Self {
                pepper: Some(pepper),
                development_pepper: false,
            }),
            None if environment == settings::Environment::Production => Ok(Self {
                pepper: None,
                development_pepper: false,
            }),
            None => Ok(Self {
                pepper: Some(settings::SecretString::from(DEVELOPMENT_PEPPER)),
                development_pepper: true,
            }),
        }
    }

    /// The pepper, or the setting named as missing.
    pub fn require(&self) -> Result<&settings::SecretString, SettingError> {
        self.pepper.as_ref().ok_or_else(|| {
            SettingError::new(
                "API_KEY_PEPPER",
                "is required in production (head -c32 /dev/urandom | base64)",
            )
        })
    }
}

impl Settings {
    pub fn load(src: &Sources) -> Result<Self, SettingError> {
        let common = CommonSettings::load(src, NAME)?;
        let origins =
            lifecycle::cors::parse_origins(&src.or("CORS_ORIGINS", Vec::<String>::new())?)
                .map_err(|problem| SettingError::new("CORS_ORIGINS", problem))?;
        let mut cors = lifecycle::cors::CorsPolicy::new(
            common.environment == settings::Environment::Production,
            origins,
            CORS_METHODS,
            CORS_HEADERS,
        );
        cors.expose = CORS_EXPOSE;
        let usage_flush_interval = src.or("USAGE_FLUSH_INTERVAL", Duration::from_secs(5))?;
        if usage_flush_interval.is_zero() || usage_flush_interval > Duration::from_secs(300) {
            return Err(SettingError::new(
                "USAGE_FLUSH_INTERVAL",
                "must be between 1ms and 5m",
            ));
        }
        let body_timeout = src.or("HTTP_BODY_TIMEOUT", Duration::from_secs(10))?;
        if body_timeout < Duration::from_millis(100) || body_timeout > Duration::from_secs(300) {
            return Err(SettingError::new(
                "HTTP_BODY_TIMEOUT",
                "must be between 100ms and 5m",
            ));
        }
        Ok(Self {
            cors,
            body_timeout,
            limits: ratelimit::LimitSettings::load(src)?,
            usage_flush_interval,
            api_keys: ApiKeySettings::load(src, common.environment)?,
            openai_voices: src.or("OPENAI_VOICE_MAP", openai::VoiceMap::default())?,
            console: console::ConsoleSettings::load(src)?,
            realtime: realtime::RealtimeSettings::load(src)?,
            telephony: telephony::TelephonySettings::load(src, common.environment)?,
            common,
            internal_auth: InternalAuthSettings::load(src, NAME)?,
            http_addr: src.or("HTTP_ADDR", ([0, 0, 0, 0], 8080).into())?,
            ops_addr: src.or("OPS_ADDR", ([0, 0, 0, 0], 9100).into())?,
            database: DatabaseSettings::load(src)?,
            redis: RedisSettings::load(src)?,
            // Synthesis answers once its first audio is made, which can wait behind a full queue.
            tts_inference: PeerSettings::load(
                src,
                "tts-inference",
                "TTS_INFERENCE",
                "http://127.0.0.1:50051",
                Duration::from_secs(30),
            )?,
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
            webhook_ingest: PeerSettings::load(
                src,
                "webhook-ingest",
                "WEBHOOK_INGEST",
                "http://127.0.0.1:50054",
                Duration::from_secs(10),
            )?,
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
        serve_check: |s| {
            s.internal_auth.require(true, false)?;
            s.api_keys.require().map(drop)
        },
        commands: vec![
            lifecycle::cli::Command::migrate(|settings, _| {
                Box::pin(async move {
                    Ok(database::migrate_command(&settings.database, SCHEMA, MIGRATIONS).await?)
                })
            }),
            lifecycle::cli::Command {
                name: "keys",
                about: "create, list or revoke API keys (gateway keys create -n 5 --prefix cw_live_)",
                takes_args: true,
                run: |settings, args| Box::pin(cli::keys(settings, args)),
            },
            lifecycle::cli::Command {
                name: "voices",
                about: "list the voice catalogue, rename, disable or enable a voice (gateway voices disable en_US-joe-medium)",
                takes_args: true,
                run: |settings, args| Box::pin(cli::voices(settings, args)),
            },
        ],
        serve: |settings, signals| {
            Box::pin(async move { Application::build(settings, signals)?.stopped().await })
        },
    }
}

/// The gRPC clients of the services behind the gateway, and what speech is limited and
/// metered with.
#[derive(Clone)]
pub struct Peers {
    pub tts: TtsInferenceClient<PeerChannel>,
    pub limiter: ratelimit::Limiter,
    pub meter: usage::Meter,
    pub pool: database::Pool,
    /// `tts_generation_duration_seconds`.
    pub generation_seconds: prometheus::Histogram,
    pub catalogue: voices::Catalogue,
}

/// The running service.
pub struct Application {
    http: HttpServerTask,
    ops: HttpServerTask,
    revocations: tokio::task::JoinHandle<()>,
    usage: tokio::task::JoinHandle<()>,
    meter: usage::Meter,
    pool: database::Pool,
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
        let tts = Peer::new(&settings.tts_inference, minter.clone())?;
        let audio = Peer::new(&settings.audio_generation, minter.clone())?;
        let delivery = Peer::new(&settings.delivery_worker, minter.clone())?;
        let ingest = Peer::new(&settings.webhook_ingest, minter)?;

        // Every dependency is shared by all replicas, and each serves only some routes: none
        // may take the gateway out of its Service. The routes that need a missing one answer
        // 503 with Retry-After (ARCHITECTURE.md, "Readiness").
        let readiness = Readiness::builder()
            .degraded_without("database", database.readiness_check())
            .degraded_without("redis", redis_pool::readiness_check(&redis))
            .degraded_without("tts-inference", tts.readiness_check())
            .degraded_without("audio-generation", audio.readiness_check())
            .degraded_without("delivery-worker", delivery.readiness_check())
            .degraded_without("webhook-ingest", ingest.readiness_check())
            .build();
        let metrics = Metrics::new();
        let limiter = ratelimit::Limiter::new(
            settings.limits.clone(),
            settings.redis.url.expose(),
            metrics.registry(),
        )?;
        let legacy = legacy_metrics::LegacyMetrics::new(metrics.registry());
        tokio::spawn(
            legacy
                .clone()
                .run(readiness.clone(), signals.shutdown.clone()),
        );
        let meter = usage::Meter::default();
        let usage = tokio::spawn(meter.clone().run(
            database.pool().clone(),
            settings.usage_flush_interval,
            signals.shutdown.clone(),
        ));
        let peers = Peers {
            tts: TtsInferenceClient::new(tts.channel()),
            limiter: limiter.clone(),
            meter: meter.clone(),
            pool: database.pool().clone(),
            generation_seconds: legacy.generation.clone(),
            catalogue: voices::Catalogue::new(database.pool().clone()),
        };
        if settings.api_keys.development_pepper {
            tracing::warn!(
                "API_KEY_PEPPER is not set: keys are hashed with the development pepper"
            );
        }
        let signer = token::TokenSigner::new(settings.api_keys.require()?);
        let authenticator = auth::Authenticator::new(
            database.pool().clone(),
            keys::Pepper::new(settings.api_keys.require()?),
            signer.clone(),
        );
        let signer = web::Data::new(signer);
        let body_deadline = web::Data::new(lifecycle::http::BodyDeadline(settings.body_timeout));
        let limiter = web::Data::new(limiter);
        let meter = web::Data::new(meter);
        let pool = web::Data::new(database.pool().clone());
        let (app_meter, app_pool) = (meter.get_ref().clone(), pool.get_ref().clone());
        let revocations = tokio::spawn(authenticator.clone().follow_revocations(
            settings.redis.url.expose().to_owned(),
            signals.shutdown.clone(),
        ));
        let authenticator = web::Data::new(authenticator);
        let redis_data = web::Data::new(redis.clone());
        let cors_policy = web::Data::new(settings.cors.clone());
        let console_enabled = settings.console.enabled;
        let sessions = web::Data::new(console::Sessions::new(
            redis.clone(),
            settings.console.clone(),
            settings.common.environment == settings::Environment::Production,
        ));
        let openai_voices = web::Data::new(settings.openai_voices.clone());
        let hsts = web::Data::new(lifecycle::http::Hsts(
            settings.common.environment == settings::Environment::Production,
        ));
        let audio_client = web::Data::new(
            sonora_proto::audio::v1::audio_generation_client::AudioGenerationClient::new(
                audio.channel(),
            ),
        );
        let delivery_client = web::Data::new(webhooks::Client::new(delivery.channel()));
        let ingest_client = web::Data::new(webhooks::IngestClient::new(ingest.channel()));
        let endpoint_rules = web::Data::new(webhooks::EndpointRules {
            production: settings.common.environment == settings::Environment::Production,
        });
        let realtime_data = web::Data::new(realtime::Realtime::new(
            settings.realtime.clone(),
            signals.shutdown.clone(),
        ));
        let telephony_data = web::Data::new(telephony::Telephony::new(
            settings.telephony.clone(),
            peers.clone(),
            webhooks::Client::new(delivery.channel()),
            redis.clone(),
            settings.redis.url.expose().to_owned(),
            signals.shutdown.clone(),
        ));
        let ops = serve_ops(
            settings.ops_addr,
            readiness.clone(),
            metrics.clone(),
            signals.shutdown.clone(),
            settings.common.shutdown_grace_period,
        )?;
        let app_readiness = readiness.clone();
        let http = lifecycle::http::serve(
            bind(settings.http_addr)?,
            move || {
                let app = public_app(app_readiness.clone(), metrics.clone());
                // Without the sessions store no session is honoured, on /v1 or anywhere.
                let app = if console_enabled {
                    app.app_data(sessions.clone())
                } else {
                    app
                };
                app.app_data(web::Data::new(peers.clone()))
                    .app_data(authenticator.clone())
                    .app_data(redis_data.clone())
                    .app_data(audio_client.clone())
                    .app_data(delivery_client.clone())
                    .app_data(ingest_client.clone())
                    .app_data(endpoint_rules.clone())
                    .app_data(cors_policy.clone())
                    .app_data(openai_voices.clone())
                    .app_data(hsts.clone())
                    .app_data(signer.clone())
                    .app_data(body_deadline.clone())
                    .app_data(limiter.clone())
                    .app_data(meter.clone())
                    .app_data(pool.clone())
                    .app_data(realtime_data.clone())
                    .app_data(telephony_data.clone())
                    .wrap(actix_web::middleware::from_fn(ratelimit::middleware))
                    .wrap(actix_web::middleware::from_fn(lifecycle::cors::middleware))
                    .app_data(
                        web::JsonConfig::default()
                            .limit(MAX_JSON_BODY_BYTES)
                            .error_handler(http_problem::json_error),
                    )
                    .app_data(web::QueryConfig::default().error_handler(http_problem::query_error))
                    .app_data(web::PathConfig::default().error_handler(http_problem::path_error))
                    .configure(routes::configure)
                    .configure(admin::configure)
                    .configure(audio::configure)
                    .configure(token::configure)
                    .configure(usage::configure)
                    .configure(voices::configure)
                    .configure(webhooks::configure)
                    .configure(inbound::configure)
                    .configure(openapi::configure)
                    .configure(|cfg| {
                        if console_enabled {
                            console::configure(cfg);
                        }
                    })
                    .configure(realtime::configure)
                    .configure(telephony::configure)
                    .default_service(web::to(http_problem::not_found))
            },
            readiness,
            signals.shutdown.clone(),
            settings.common.shutdown_grace_period,
        )?;
        tracing::info!(port = http.port(), ops_port = ops.port(), "listening");
        Ok(Self {
            http,
            ops,
            revocations,
            usage,
            meter: app_meter,
            pool: app_pool,
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

    /// Resolves once shutdown was requested and in-flight requests have finished.
    pub async fn stopped(self) -> anyhow::Result<()> {
        self.http.stopped().await?;
        self.ops.stopped().await?;
        let _ = self.revocations.await;
        // The last counts are written once requests have drained.
        let _ = self.usage.await;
        if let Err(error) = self.meter.flush(&self.pool).await {
            tracing::warn!(%error, "the last usage counts could not be written");
        }
        Ok(())
    }
}
