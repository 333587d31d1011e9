//! The operational endpoints every service serves, and an actix-web server that drains on
//! shutdown.
//!
//! Two kinds of port: the **ops port** serves `/health`, `/ready` (which names each dependency
//! and its error) and `/metrics` to probes and scrapers inside the cluster, and no Ingress routes
//! to it; the public port of the gateway and webhook-ingest serves their API and `/health` only,
//! so dependency errors and metrics never reach the internet.

use std::{net::TcpListener, time::Duration};

use actix_web::{
    App, HttpResponse, HttpServer,
    body::MessageBody,
    dev::{ServiceFactory, ServiceRequest, ServiceResponse},
    http::header,
    middleware::from_fn,
    web,
};
use telemetry::metrics::{Metrics, http_middleware};
use tokio_util::sync::CancellationToken;

use crate::Readiness;

/// `GET /health`: 200 while the process is alive and serving HTTP. It checks nothing now, so a
/// slow dependency never gets a healthy process restarted; it reports, in the old TTS API's body,
/// what the last readiness check saw: `{"status": "healthy" | "degraded", "timestamp",
/// "components": {"database": true, "tts_model": true, …}}` (names with `_`, one boolean each;
/// `tts_model` is the old name of the voice, tts-inference).
async fn health(readiness: web::Data<Readiness>) -> HttpResponse {
    let mut components = serde_json::Map::new();
    let mut all_up = true;
    if let Some(report) = readiness.last_report() {
        for (name, component) in &report.components {
            let up = component.status == "up";
            all_up &= up;
            components.insert(name.replace('-', "_"), serde_json::Value::Bool(up));
            if name == "tts-inference" || name == "voice" {
                components.insert("tts_model".to_owned(), serde_json::Value::Bool(up));
            }
        }
    }
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(serde_json::json!({
            "status": if all_up { "healthy" } else { "degraded" },
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "components": components,
        }))
}

/// `GET /ready`: 200 while the replica can serve (every required component is up; degraded
/// ones are named in the body), 503 naming the required ones that are down.
async fn ready(readiness: web::Data<Readiness>) -> HttpResponse {
    let report = readiness.report().await;
    let mut response = if report.is_ready() {
        HttpResponse::Ok()
    } else {
        HttpResponse::ServiceUnavailable()
    };
    response
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(report)
}

/// `GET /metrics`: the service's registry in the Prometheus text format, with the dependency
/// gauges checked afresh.
async fn metrics(metrics: web::Data<Metrics>, readiness: web::Data<Readiness>) -> HttpResponse {
    readiness.report().await;
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(metrics.render())
}

/// Whether answers carry `Strict-Transport-Security` (production, behind TLS): app data for
/// [`security_headers`].
#[derive(Debug, Clone, Copy)]
pub struct Hsts(pub bool);

/// Security headers on every answer of a public port: no MIME sniffing, no framing, no
/// referrer, a Content-Security-Policy that allows nothing (the API serves data, not pages; a
/// route serving pages sets its own), and HSTS when [`Hsts`] says so. Headers a route set
/// itself are kept. An HTTP/1.0 client's streamed answer is sent without chunks and ended by
/// closing the connection.
pub async fn security_headers(
    req: ServiceRequest,
    next: actix_web::middleware::Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let hsts = req.app_data::<web::Data<Hsts>>().is_some_and(|h| h.0);
    let http_1_0 = req.version() == actix_web::http::Version::HTTP_10;
    let mut response = next.call(req).await?.map_into_boxed_body();
    if http_1_0 {
        // HTTP/1.0 has no chunked encoding: a body of unknown length ends with the connection.
        let head = response.response_mut().head_mut();
        head.no_chunking(true);
        head.set_connection_type(actix_web::http::ConnectionType::Close);
    }
    let headers = response.headers_mut();
    let defaults = [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; frame-ancestors 'none'; base-uri 'none'",
        ),
    ];
    for (name, value) in defaults {
        if !headers.contains_key(&name) {
            headers.insert(name, header::HeaderValue::from_static(value));
        }
    }
    if hsts {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            header::HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        );
    }
    Ok(response)
}

/// How long a client may take to send a request's whole body, from when its head arrived (as app
/// data, read by [`body_deadline`]). The head itself must arrive within actix-web's 5 seconds.
#[derive(Debug, Clone, Copy)]
pub struct BodyDeadline(pub Duration);

/// A request body that ends in an error ([`std::io::ErrorKind::TimedOut`]) once its deadline
/// passes, so a client that stalls midway cannot hold a connection and a buffer for ever.
struct DeadlineStream {
    inner: actix_web::dev::Payload,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    done: bool,
}

impl futures::Stream for DeadlineStream {
    type Item = Result<web::Bytes, actix_web::error::PayloadError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        if self.done {
            return Poll::Ready(None);
        }
        if let Poll::Ready(item) = std::pin::Pin::new(&mut self.inner).poll_next(cx) {
            self.done = item.is_none();
            return Poll::Ready(item);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(Some(Err(actix_web::error::PayloadError::Io(
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the request body did not arrive in time",
                ),
            ))));
        }
        Poll::Pending
    }
}

/// Gives every request body the deadline of the app's [`BodyDeadline`], if it has one. A
/// WebSocket upgrade is exempt: its "body" is the connection itself, which lasts as long as the
/// session and is bounded by the route's own idle and duration limits.
pub async fn body_deadline(
    mut req: ServiceRequest,
    next: actix_web::middleware::Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let websocket = req
        .headers()
        .get(actix_web::http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if let Some(deadline) = req
        .app_data::<web::Data<BodyDeadline>>()
        .map(|d| d.0)
        .filter(|_| !websocket)
    {
        let inner = actix_web::HttpMessage::take_payload(&mut req);
        let stream = DeadlineStream {
            inner,
            sleep: Box::pin(tokio::time::sleep(deadline)),
            done: false,
        };
        req.set_payload(actix_web::dev::Payload::Stream {
            payload: Box::pin(stream),
        });
    }
    next.call(req).await
}

/// The app of a public port: readiness and metrics as app data, the tracing and metrics
/// middleware, security headers, and `/health` only; the service adds its API.
pub fn public_app(
    readiness: Readiness,
    metrics: Metrics,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(web::Data::new(readiness))
        .app_data(web::Data::new(metrics))
        .wrap(from_fn(body_deadline))
        .wrap(from_fn(security_headers))
        .wrap(from_fn(http_middleware))
        .route("/health", web::get().to(health))
}

/// The app of an ops port: the public app's `/health`, plus `/ready` and `/metrics`.
pub fn ops_app(
    readiness: Readiness,
    metrics: Metrics,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    public_app(readiness, metrics)
        .route("/ready", web::get().to(ready))
        .route("/metrics", web::get().to(self::metrics))
}

/// A running HTTP server; await [`HttpServerTask::stopped`] to know it has drained.
pub struct HttpServerTask {
    port: u16,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl HttpServerTask {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Resolves when the server has stopped: after shutdown, once in-flight requests finished or
    /// the grace period ran out.
    pub async fn stopped(self) -> std::io::Result<()> {
        self.task.await.map_err(std::io::Error::other)?
    }
}

/// Serves `factory`'s app on `listener` until `shutdown` is cancelled; then marks `readiness` as
/// draining, stops accepting connections, and lets in-flight requests finish within `grace`.
pub fn serve<F, A, B>(
    listener: TcpListener,
    factory: F,
    readiness: Readiness,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<HttpServerTask>
where
    F: Fn() -> App<A> + Send + Clone + 'static,
    A: ServiceFactory<
            ServiceRequest,
            Config = (),
            Response = ServiceResponse<B>,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
    B: MessageBody + 'static,
{
    let port = listener.local_addr()?.port();
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4));
    let server = HttpServer::new(factory)
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(grace.as_secs().max(1))
        .listen(listener)?
        .run();
    let handle = server.handle();
    tokio::spawn(async move {
        shutdown.cancelled().await;
        readiness.set_draining();
        handle.stop(true).await;
    });
    let task = tokio::spawn(server);
    Ok(HttpServerTask { port, task })
}

/// Serves the ops app on `addr` until shutdown, with the readiness gauges registered once in the
/// service's registry.
pub fn serve_ops(
    addr: std::net::SocketAddr,
    readiness: Readiness,
    metrics: Metrics,
    shutdown: CancellationToken,
    grace: Duration,
) -> std::io::Result<HttpServerTask> {
    metrics
        .registry()
        .register(Box::new(readiness.gauge()))
        .map_err(std::io::Error::other)?;
    let app_readiness = readiness.clone();
    serve(
        bind(addr)?,
        move || ops_app(app_readiness.clone(), metrics.clone()),
        readiness,
        shutdown,
        grace,
    )
}

/// Binds a TCP listener, with a message that names the address when it cannot.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}
