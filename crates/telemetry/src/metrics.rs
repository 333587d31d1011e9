//! A Prometheus registry per service, and the HTTP request metrics every HTTP server records.
//!
//! Each service owns its registry rather than using the process-global one, so several services
//! can run in one test process without their metrics colliding.

use std::time::Instant;

use actix_web::{
    Error,
    body::MessageBody,
    dev::{ServiceRequest, ServiceResponse},
    middleware::Next,
    web,
};
use prometheus::{
    Encoder as _, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};
use tracing::Instrument as _;

use crate::propagation::adopt_actix_parent;

/// The service's metrics registry and the request metrics recorded by [`http_middleware`].
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests answered, by route and status.",
            ),
            &["method", "route", "status"],
        )
        .expect("metric definition is valid");
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time from receiving an HTTP request to sending its response head.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["method", "route"],
        )
        .expect("metric definition is valid");
        registry
            .register(Box::new(http_requests.clone()))
            .expect("metric names are unique");
        registry
            .register(Box::new(http_duration.clone()))
            .expect("metric names are unique");
        Self {
            registry,
            http_requests,
            http_duration,
        }
    }

    /// The registry a service adds its own metrics to.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Every metric in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("encoding to memory does not fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Paths polled by probes and scrapers: measured, but given no span, so traces stay readable.
fn is_probe(path: &str) -> bool {
    matches!(path, "/health" | "/ready" | "/metrics")
}

/// actix-web middleware (`App::wrap(from_fn(http_middleware))`): one span per request, parented to
/// the caller's trace context, and the request counted and timed in the [`Metrics`] found in the
/// app data.
pub async fn http_middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let method = req.method().as_str().to_owned();
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let metrics = req.app_data::<web::Data<Metrics>>().cloned();
    let span = if is_probe(req.path()) {
        tracing::Span::none()
    } else {
        let span = tracing::info_span!(
            "http.request",
            otel.name = %format!("{method} {route}"),
            otel.kind = "server",
            http.request.method = %method,
            http.route = %route,
            url.path = %req.path(),
            http.response.status_code = tracing::field::Empty,
        );
        adopt_actix_parent(&span, req.headers());
        span
    };
    let started = Instant::now();
    let result = next.call(req).instrument(span.clone()).await;
    let status = match &result {
        Ok(response) => response.status().as_u16(),
        Err(error) => error.as_response_error().status_code().as_u16(),
    };
    span.record("http.response.status_code", status);
    if let Some(metrics) = metrics {
        metrics
            .http_requests
            .with_label_values(&[method.as_str(), route.as_str(), &status.to_string()])
            .inc();
        metrics
            .http_duration
            .with_label_values(&[method.as_str(), route.as_str()])
            .observe(started.elapsed().as_secs_f64());
    }
    result
}
