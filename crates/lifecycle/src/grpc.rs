//! gRPC serving and gRPC peers: a tonic server that drains on shutdown, the standard health
//! service kept in step with readiness, and lazily connected channels to other services.

use std::{future::Future, time::Duration};

use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic_health::{
    ServingStatus,
    pb::{HealthCheckRequest, health_check_response, health_client::HealthClient},
    server::HealthReporter,
};

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
/// (service `""`) and each named service are set to SERVING when every component is up and
/// NOT_SERVING otherwise; on shutdown, NOT_SERVING for good.
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

/// A channel to a gRPC peer that connects on first use and reconnects by itself, with bounded
/// connect and call times.
pub fn peer_channel(url: &str, call_timeout: Duration) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(2))
        .timeout(call_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

/// Asks a peer's health service whether it is SERVING; a readiness check for gRPC peers.
pub async fn check_peer(channel: Channel) -> Result<(), String> {
    let mut client = HealthClient::new(channel);
    let response = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|status| match status.code() {
            tonic::Code::Unavailable => "unreachable".to_owned(),
            code => format!("health check failed: {code:?}"),
        })?;
    match response.into_inner().status() {
        health_check_response::ServingStatus::Serving => Ok(()),
        other => Err(format!("reports {}", other.as_str_name())),
    }
}
