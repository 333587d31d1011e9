//! gRPC serving: a tonic server behind the internal-auth guard that drains on shutdown, with the
//! standard health service kept in step with readiness. Channels to other services are built by
//! `internal_rpc::Peer`.

use std::{future::Future, time::Duration};

use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::Readiness;

/// Runs a gRPC server future (built with `serve_with_incoming_shutdown(…, shutdown.cancelled())`)
/// and bounds its drain: once `shutdown` is cancelled, calls still running after `grace` are
/// dropped so the process can exit.
pub async fn serve_until_drained<F>(
    server: F,
    shutdown: CancellationToken,
    grace: Duration,
) -> Result<(), tonic::transport::Error>
where
    F: Future<Output = Result<(), tonic::transport::Error>>,
{
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => result,
        () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace = ?grace, "gRPC calls still running after the grace period were dropped");
            Ok(())
        }
    }
}

/// Keeps the gRPC health service in step with readiness: every `interval`, the overall status
/// (service `""`) and each named service are set to SERVING while the replica can serve (every
/// required component up; a degradation does not count) and NOT_SERVING otherwise; on shutdown,
/// NOT_SERVING for good.
pub fn sync_health(
    reporter: HealthReporter,
    services: Vec<&'static str>,
    readiness: Readiness,
    shutdown: CancellationToken,
    interval: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let status = if readiness.report().await.is_ready() {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            for name in std::iter::once("").chain(services.iter().copied()) {
                reporter.set_service_status(name, status).await;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(interval) => {}
            }
        }
        for name in std::iter::once("").chain(services.iter().copied()) {
            reporter
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
    })
}

/// Why a gRPC service stopped other than by a clean drain.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("the gRPC server task panicked")]
    Panicked,
    #[error("the gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("the operational HTTP server failed: {0}")]
    Http(#[from] std::io::Error),
}

/// Where and how a gRPC service serves: its gRPC port, and the HTTP port for `/health`,
/// `/ready` and `/metrics`.
#[derive(Debug, Clone)]
pub struct GrpcAppConfig {
    pub grpc_addr: std::net::SocketAddr,
    pub http_addr: std::net::SocketAddr,
    /// The fully qualified gRPC service names served, such as `sonora.tts.v1.TtsInference`; each
    /// gets a health status beside the overall one.
    pub service_names: Vec<&'static str>,
    pub readiness: Readiness,
    pub metrics: telemetry::metrics::Metrics,
    pub shutdown: CancellationToken,
    pub grace: Duration,
    /// Admits only calls with a valid internal token that the method's policy allows; the
    /// health service stays open.
    pub guard: internal_rpc::Guard,
}

/// A running gRPC service with its operational HTTP server.
pub struct GrpcApp {
    grpc_port: u16,
    http: crate::http::HttpServerTask,
    grpc: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    health: tokio::task::JoinHandle<()>,
}

impl GrpcApp {
    /// Binds both ports and starts serving `routes` (plus the standard health service) behind
    /// the guard, and the operational endpoints. Port 0 picks a free port; see
    /// [`GrpcApp::grpc_port`].
    pub fn start(config: GrpcAppConfig, routes: tonic::service::Routes) -> std::io::Result<Self> {
        let grpc_listener = crate::http::bind(config.grpc_addr)?;
        let grpc_port = grpc_listener.local_addr()?.port();
        let grpc_listener = tokio::net::TcpListener::from_std(grpc_listener)?;

        let (reporter, health_service) = tonic_health::server::health_reporter();
        let health = sync_health(
            reporter,
            config.service_names.clone(),
            config.readiness.clone(),
            config.shutdown.clone(),
            Duration::from_secs(1),
        );
        let server = tonic::transport::Server::builder()
            .trace_fn(telemetry::propagation::grpc_server_span)
            .layer(config.guard.clone())
            .add_routes(routes)
            .add_service(health_service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
                config.shutdown.clone().cancelled_owned(),
            );
        let grpc = tokio::spawn(serve_until_drained(
            server,
            config.shutdown.clone(),
            config.grace,
        ));

        let http = crate::http::serve_ops(
            config.http_addr,
            config.readiness,
            config.metrics,
            config.shutdown,
            config.grace,
        )?;
        tracing::info!(grpc_port, http_port = http.port(), "listening");
        Ok(Self {
            grpc_port,
            http,
            grpc,
            health,
        })
    }

    pub fn grpc_port(&self) -> u16 {
        self.grpc_port
    }

    pub fn http_port(&self) -> u16 {
        self.http.port()
    }

    /// Resolves once shutdown was requested and both servers have drained.
    pub async fn stopped(self) -> Result<(), ServeError> {
        self.grpc.await.map_err(|_| ServeError::Panicked)??;
        self.http.stopped().await?;
        let _ = self.health.await;
        Ok(())
    }
}
