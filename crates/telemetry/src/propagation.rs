//! W3C trace context (`traceparent`, `tracestate`) in and out of HTTP headers and gRPC metadata.
//!
//! Inbound, the context found in a request becomes the parent of the request's span, so the
//! server's spans join the caller's trace. Outbound, the current span's context is written into
//! the request, so the callee's spans join ours.

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector},
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

struct HttpHeaders<'a>(&'a http::HeaderMap);

impl Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HttpHeadersMut<'a>(&'a mut http::HeaderMap);

impl Injector for HttpHeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct ActixHeaders<'a>(&'a actix_web::http::header::HeaderMap);

impl Extractor for ActixHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct Metadata<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            tonic::metadata::MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

fn extract(extractor: &dyn Extractor) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(extractor))
}

fn inject(injector: &mut dyn Injector) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, injector));
}

/// Makes the context carried by `headers` (if any) the parent of `span`.
pub fn adopt_http_parent(span: &tracing::Span, headers: &http::HeaderMap) {
    let _ = span.set_parent(extract(&HttpHeaders(headers)));
}

/// Makes the context carried by actix-web request headers (if any) the parent of `span`.
pub fn adopt_actix_parent(span: &tracing::Span, headers: &actix_web::http::header::HeaderMap) {
    let _ = span.set_parent(extract(&ActixHeaders(headers)));
}

/// Writes the current span's context into outgoing HTTP headers.
pub fn inject_http(headers: &mut http::HeaderMap) {
    inject(&mut HttpHeadersMut(headers));
}

/// A tonic client interceptor that writes the current span's context into every request's
/// metadata: `FooClient::with_interceptor(channel, InjectTraceContext)`.
#[derive(Debug, Clone, Copy, Default)]
pub struct InjectTraceContext;

impl tonic::service::Interceptor for InjectTraceContext {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        inject(&mut Metadata(request.metadata_mut()));
        Ok(request)
    }
}

/// The span of one incoming gRPC call, parented to the caller's context; pass it to tonic's
/// `Server::builder().trace_fn(..)`.
pub fn grpc_server_span(request: &http::Request<()>) -> tracing::Span {
    let path = request.uri().path();
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    let span = tracing::info_span!(
        "grpc.request",
        otel.name = %path.trim_start_matches('/'),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
    );
    adopt_http_parent(&span, request.headers());
    span
}
