//! `replicate-simulator`: a local stand-in for Replicate's prediction API, used by the local
//! stack when no Replicate token is configured and by the tests.
//!
//! It serves, on `HTTP_ADDR`, Replicate's `POST /v1/predictions`,
//! `POST /v1/models/{owner}/{name}/predictions`, `GET /v1/predictions/{id}`, `GET /v1/predictions`
//! (newest first, `next`/`previous`/`results` cursor pages of `SIMULATOR_PAGE_SIZE`, 100),
//! `POST /v1/predictions/{id}/cancel` and `GET /v1/webhooks/default/secret`, behind
//! `Authorization: Bearer <SIMULATOR_API_TOKEN>` (or the older `Token` scheme; default
//! [`DEVELOPMENT_API_TOKEN`]), with Replicate's prediction object and `{"detail": …}` errors
//! (401, 404, 422 naming the field, 429 with `Retry-After`). Beside them are the output files
//! (`GET /files/{id}.{wav|mp3}`, no token, like `replicate.delivery`), each prediction's page
//! (`urls.web`, `GET /p/{id}`, with the audio to listen to), and `/health`, `/ready` and
//! `/metrics` (with `simulator_predictions_created_total`,
//! `simulator_predictions_finished_total{status}`, `simulator_webhook_attempts_total{outcome}`
//! and `simulator_downloads_total{outcome}`).
//!
//! The model decides the sound: the music models in Sonora's notes (and any model whose name
//! says `music`) make a chord progression, every other model, including a bare version id the
//! simulator does not know, makes shaped noise. A prediction spends a quarter of
//! `SIMULATOR_GENERATION_DELAY` `starting` and the rest `processing`, then succeeds with real
//! audio of the requested length (`seconds_total` or `duration`, default 8 s, at most 300 s;
//! `output_format` `wav` or `mp3`), synthesised here and encoded with `audio-codec`. Its
//! `completed` webhook (for every end: success, failure, cancel, deadline; `start` too when the
//! filter asks) carries the prediction object, signed with Standard Webhooks under the `whsec_`
//! secret (`REPLICATE_WEBHOOK_SECRET`, the setting webhook-ingest verifies with, else one
//! generated at start) and retried with doubling delays and the same `webhook-id`.
//! `SIMULATOR_FILE_RETENTION` after its end, a prediction's file, input, output and logs are
//! removed and `data_removed` is true.
//!
//! Everything lives in memory, and a restart starts empty: at most `SIMULATOR_MAX_PREDICTIONS`
//! predictions (1000; the oldest is forgotten first) and `SIMULATOR_MAX_STORED_BYTES` of files
//! (128 MiB; the oldest files are removed early, with `data_removed`). At most one synthesis
//! per core runs at a time, off the async executor.
//!
//! Knobs (first set by settings, see [`settings::Knobs`]; an in-process user such as the chaos run
//! changes them while it runs through [`Application::knobs`]): `SIMULATOR_GENERATION_DELAY` (2s),
//! `SIMULATOR_FAILURE_RATE` (0; 1 fails every prediction), `SIMULATOR_LOST_WEBHOOK_RATE` (0; 1
//! never sends), `SIMULATOR_DUPLICATE_WEBHOOKS` (false), `SIMULATOR_WRONG_WEBHOOK_SECRET`
//! (false), `SIMULATOR_WEBHOOK_ATTEMPTS` (4), `SIMULATOR_WEBHOOK_RETRY_DELAY` (1s, doubling),
//! `SIMULATOR_DOWNLOAD_DELAY` (0), `SIMULATOR_DOWNLOAD_FAILURES` (0: the first N downloads of
//! each file fail) with `SIMULATOR_DOWNLOAD_FAILURE_MODE` (`status`: a 500; `cut`: the
//! connection is cut halfway through the body), `SIMULATOR_FILE_RETENTION` (1h) and
//! `SIMULATOR_CREATE_RATE_LIMIT` (600 a minute; 0 for none).
//!
//! Creation honours `Prefer: wait[=n]` (answers once the prediction has finished, or after n
//! seconds, at most 60) and `Cancel-After` (a deadline from creation: `aborted` if it passes
//! before the start, `canceled` after it), and the legacy `webhook_completed` field. Webhook
//! URLs may be `http://` (Replicate wants `https://`) so that loopback receivers work. The
//! listing takes `created_after` and `created_before`. Not simulated: `output`/`logs` webhooks
//! (the only output arrives with `completed`), deployments, and streaming.

mod api;
mod limit;
mod metrics;
pub mod prediction;
pub mod settings;
mod simulator;
mod store;
pub mod synth;
mod webhook;

use actix_web::web;
use lifecycle::{
    Readiness, Signals,
    cli::ServiceMain,
    http::{HttpServerTask, bind, ops_app},
};
use telemetry::metrics::Metrics;

pub use crate::settings::{DEVELOPMENT_API_TOKEN, Settings};
use crate::{api::ApiToken, metrics::SimulatorMetrics, simulator::Simulator};

pub const NAME: &str = "replicate-simulator";

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
    base_url: String,
    webhook_secret: String,
    knobs: settings::KnobsHandle,
}

impl Application {
    pub fn build(settings: Settings, signals: Signals) -> anyhow::Result<Self> {
        let listener = bind(settings.http_addr)?;
        let bound = listener.local_addr()?;
        // A wildcard address is where the simulator listens, not where anyone reaches it.
        let host = if bound.ip().is_unspecified() {
            std::net::SocketAddr::from(([127, 0, 0, 1], bound.port()))
        } else {
            bound
        };
        let base_url = settings.public_url.as_ref().map_or_else(
            || format!("http://{host}"),
            |url| url.as_str().trim_end_matches('/').to_owned(),
        );
        let readiness = Readiness::builder().build();
        let metrics = Metrics::new();
        let knobs = settings::KnobsHandle::new(settings.knobs.clone());
        let simulator = Simulator::new(
            &settings,
            base_url.clone(),
            knobs.clone(),
            SimulatorMetrics::register(metrics.registry()),
            signals.shutdown.clone(),
        )?;
        let webhook_secret = settings.webhook_secret.expose();
        let app_readiness = readiness.clone();
        let simulator = web::Data::new(simulator);
        let token = web::Data::new(ApiToken(settings.api_token.clone()));
        let app_knobs = web::Data::new(knobs.clone());
        let http = lifecycle::http::serve(
            listener,
            move || {
                ops_app(app_readiness.clone(), metrics.clone())
                    .app_data(simulator.clone())
                    .app_data(token.clone())
                    .app_data(app_knobs.clone())
                    .configure(api::routes)
                    .default_service(web::to(api::not_found))
            },
            readiness,
            signals.shutdown.clone(),
            settings.common.shutdown_grace_period,
        )?;
        Ok(Self {
            http,
            base_url,
            webhook_secret,
            knobs,
        })
    }

    pub fn port(&self) -> u16 {
        self.http.port()
    }

    /// Where clients reach the simulator, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The `whsec_` secret its webhooks are signed with.
    pub fn webhook_secret(&self) -> &str {
        &self.webhook_secret
    }

    /// The knobs, to change while it runs (the settings only give their first values).
    pub fn knobs(&self) -> settings::KnobsHandle {
        self.knobs.clone()
    }

    pub async fn stopped(self) -> anyhow::Result<()> {
        Ok(self.http.stopped().await?)
    }
}
