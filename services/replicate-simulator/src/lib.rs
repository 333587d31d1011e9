//! `replicate-simulator`: a local stand-in for Replicate, used by the local stack and the tests
//! when no Replicate token is configured.
//!
//! Today it serves only the operational endpoints; the prediction API (accepting predictions,
//! making real audio, sending signed completion webhooks, with knobs for delay, failure,
//! duplicates and lost webhooks) arrives with the audio-generation issue.

use std::net::SocketAddr;

use actix_web::web;
use lifecycle::{
    Readiness, Signals,
    cli::ServiceMain,
    http::{HttpServerTask, bind, ops_app},
};
use settings::{CommonSettings, SettingError, Sources};
use telemetry::metrics::Metrics;

pub const NAME: &str = "replicate-simulator";

/// Everything the simulator can be configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub common: CommonSettings,
    pub http_addr: SocketAddr,
}

impl Settings {
    pub fn load(src: &Sources) -> Result<Self, SettingError> {
        Ok(Self {
            common: CommonSettings::load(src, NAME)?,
            http_addr: src.or("HTTP_ADDR", ([127, 0, 0, 1], 8090).into())?,
        })
    }
}

/// The process entry point's description of this service.
pub fn service() -> ServiceMain<Settings> {
    ServiceMain {
        name: NAME,
        about: "a local stand-in for Replicate's prediction API",
        load: Settings::load,
        common: |s| &s.common,
        serve_check: |_| Ok(()),
        commands: Vec::new(),
        serve: |settings, signals| {
            Box::pin(async move { Application::build(settings, signals)?.stopped().await })
        },
    }
}

/// The running simulator.
pub struct Application {
    http: HttpServerTask,
}

impl Application {
    pub fn build(settings: Settings, signals: Signals) -> anyhow::Result<Self> {
        let readiness = Readiness::builder().build();
        let metrics = Metrics::new();
        let app_readiness = readiness.clone();
        let http = lifecycle::http::serve(
            bind(settings.http_addr)?,
            move || {
                ops_app(app_readiness.clone(), metrics.clone())
                    .default_service(web::to(http_problem::not_found))
            },
            readiness,
            signals.shutdown.clone(),
            settings.common.shutdown_grace_period,
        )?;
        Ok(Self { http })
    }

    pub fn port(&self) -> u16 {
        self.http.port()
    }

    pub async fn stopped(self) -> anyhow::Result<()> {
        Ok(self.http.stopped().await?)
    }
}
