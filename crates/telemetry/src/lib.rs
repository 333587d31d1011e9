//! Logs, traces and metrics for every service.
//!
//! - [`init`] installs the process-wide `tracing` subscriber: JSON (or text) lines on standard
//!   output filtered by `RUST_LOG`, and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, an OpenTelemetry
//!   layer that exports spans over OTLP/gRPC in batches. It also installs the W3C trace-context
//!   propagator.
//! - [`propagation`] carries the trace context across process boundaries in both directions: into
//!   and out of HTTP headers (actix-web and `http` header maps) and gRPC metadata, so one request
//!   is one trace across services.
//! - [`metrics`] is a Prometheus registry per service, rendered in the text format on `/metrics`,
//!   with the HTTP and gRPC request metrics every service records.

pub mod metrics;
pub mod propagation;

use opentelemetry::{KeyValue, trace::TracerProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_subscriber::{
    EnvFilter, Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _,
};

/// How telemetry should be set up; built from a service's common settings.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    pub service_name: String,
    /// A `tracing` filter directive such as `info,gateway=debug`.
    pub log_filter: String,
    /// JSON lines when true, human-readable text otherwise.
    pub json_logs: bool,
    /// The OTLP/gRPC receiver to export spans to; none disables the export.
    pub otlp_endpoint: Option<String>,
    /// `deployment.environment` on every span.
    pub environment: String,
    /// Log to standard error instead of standard output: one-off commands whose output is
    /// their answer (`gateway keys create --sql > keys.sql`).
    pub logs_to_stderr: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter: {0}")]
    Filter(String),
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Keeps the span exporter alive; flushing and shutting it down on [`TelemetryGuard::shutdown`]
/// (or on drop) sends the spans still buffered.
#[must_use = "dropping the guard stops the trace export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports every finished span that is still buffered. Blocks; call it off the async executor.
    pub fn flush(&self) {
        if let Some(provider) = &self.provider
            && let Err(error) = provider.force_flush()
        {
            tracing::warn!(%error, "could not flush spans");
        }
    }

    /// Flushes and stops the exporter.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "could not shut the span exporter down cleanly");
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Installs the global subscriber and propagator. Must be called from within a Tokio runtime when
/// an OTLP endpoint is set (the exporter's gRPC channel lives on it), and only once per process.
pub fn init(config: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let filter = EnvFilter::try_new(&config.log_filter)
        .map_err(|e| TelemetryError::Filter(e.to_string()))?;
    let writer = if config.logs_to_stderr {
        tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr)
    } else {
        tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stdout)
    };
    let fmt_layer = if config.json_logs {
        tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed()
    } else {
        // Colours only on a terminal, so log files stay plain text.
        let ansi = if config.logs_to_stderr {
            std::io::IsTerminal::is_terminal(&std::io::stderr())
        } else {
            std::io::IsTerminal::is_terminal(&std::io::stdout())
        };
        tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .compact()
            .with_ansi(ansi)
            .boxed()
    };

    let provider = match &config.otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
            let resource = Resource::builder()
                .with_service_name(config.service_name.clone())
                .with_attribute(KeyValue::new(
                    "deployment.environment",
                    config.environment.clone(),
                ))
                .build();
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        }
        None => None,
    };
    let otel_layer = provider.as_ref().map(|provider| {
        let tracer = provider.tracer(config.service_name.clone());
        tracing_opentelemetry::layer().with_tracer(tracer)
    });
    // Without an exporter the OpenTelemetry layer is left out entirely, so spans cost nothing
    // extra; trace context is then neither recorded nor passed on.
    tracing_subscriber::registry()
        .with(filter)
        .with(otel_layer)
        .with(fmt_layer)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(TelemetryGuard { provider })
}
