//! W3C trace context (`traceparent`, `tracestate`) in and out of HTTP headers and gRPC metadata.
//!
//! Inbound, the context found in a request becomes the parent of the request's span, so the
//! server's spans join the caller's trace. Outbound, the current span's context is written into
//! the request, so the callee's spans join ours.
//!
//! Work that another task, replica or service picks up later (a job, an inbox event, an outbox
//! event, a delivery) keeps the `traceparent` of the span that asked for it
//! ([`current_traceparent`]); the span doing the work takes it as its parent
//! ([`adopt_traceparent`]), so one request is one trace however many queues it crosses.

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector},
    trace::TraceContextExt as _,
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

/// A lone `traceparent`, as stored beside queued work.
#[derive(Default)]
struct Traceparent(Option<String>);

impl Extractor for Traceparent {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0.as_deref()).flatten()
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

impl Injector for Traceparent {
    fn set(&mut self, key: &str, value: String) {
        if key == TRACEPARENT {
            self.0 = Some(value);
        }
    }
}

/// The W3C header (and gRPC metadata key) carrying the trace context.
pub const TRACEPARENT: &str = "traceparent";

/// The longest `traceparent` kept with queued work (version `00` is 55 characters; later
/// versions may append fields). Longer values are not kept, so a peer cannot grow a row.
pub const MAX_TRACEPARENT_BYTES: usize = 256;

fn extract(extractor: &dyn Extractor) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(extractor))
}

fn inject(injector: &mut dyn Injector) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, injector));
}

/// The current span's context as a W3C `traceparent`, to keep with work picked up later; `None`
/// when there is no trace to continue (tracing off, or no valid span).
pub fn current_traceparent() -> Option<String> {
    let mut carrier = Traceparent::default();
    inject(&mut carrier);
    carrier
        .0
        .filter(|value| value.len() <= MAX_TRACEPARENT_BYTES)
}

/// The context a `traceparent` names, if it is a valid one of at most [`MAX_TRACEPARENT_BYTES`].
fn parse_traceparent(value: &str) -> Option<Context> {
    if value.len() > MAX_TRACEPARENT_BYTES {
        return None;
    }
    let cx = extract(&Traceparent(Some(value.to_owned())));
    cx.span().span_context().is_valid().then_some(cx)
}

/// `value` if it is a valid `traceparent` worth keeping, else `None`: a peer's malformed trace
/// context is dropped, never a reason to refuse the work it came with.
pub fn valid_traceparent(value: &str) -> Option<String> {
    parse_traceparent(value).map(|_| value.to_owned())
}

/// Makes the context in a kept `traceparent` the parent of `span`, which must not have been
/// entered yet. Nothing, or something that is not a valid `traceparent`, leaves `span` a root.
pub fn adopt_traceparent(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(cx) = traceparent.and_then(parse_traceparent) {
        let _ = span.set_parent(cx);
    }
}

/// Links `span` to the current span without making it the parent: for work that continues a
/// kept trace (its parent) while running inside another request, such as a webhook's, so each
/// trace leads to the other.
pub fn link_current(span: &tracing::Span) {
    let current = tracing::Span::current()
        .context()
        .span()
        .span_context()
        .clone();
    if current.is_valid() {
        span.add_link(current);
    }
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
