//! The client side: the one place channels to other services are built, from settings, with the
//! internal token, the trace context and a deadline attached to every call.

use std::{sync::Arc, time::Duration};

use settings::{SettingError, Sources, Url};
use tonic::{
    Status,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};
use tonic_health::pb::{HealthCheckRequest, health_check_response, health_client::HealthClient};

use crate::token::{Minter, Principal};

/// Where a peer service is and how long to wait for it.
#[derive(Debug, Clone)]
pub struct PeerSettings {
    /// The peer's service name, the audience of the tokens sent to it (`tts-inference`).
    pub name: &'static str,
    /// `<PREFIX>_URL`, such as `http://tts-inference:50051`.
    pub url: Url,
    /// `<PREFIX>_CONNECT_TIMEOUT`: how long opening a connection may take.
    pub connect_timeout: Duration,
    /// `<PREFIX>_TIMEOUT`: the deadline of one call (until its answer starts, for a stream);
    /// sent to the peer as `grpc-timeout` so it stops working on a call nobody waits for.
    pub timeout: Duration,
}

impl PeerSettings {
    /// Reads `<prefix>_URL`, `<prefix>_CONNECT_TIMEOUT` and `<prefix>_TIMEOUT`.
    pub fn load(
        src: &Sources,
        name: &'static str,
        prefix: &str,
        default_url: &str,
        default_timeout: Duration,
    ) -> Result<Self, SettingError> {
        let url_name = format!("{prefix}_URL");
        let url: Url = src.or(
            &url_name,
            Url::parse(default_url).expect("default peer URL parses"),
        )?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(SettingError::new(
                url_name,
                format!("must be an http:// or https:// URL with a host, such as {default_url}"),
            ));
        }
        let bounded = |suffix: &str, default: Duration| -> Result<Duration, SettingError> {
            let setting = format!("{prefix}_{suffix}");
            let value: Duration = src.or(&setting, default)?;
            if value < Duration::from_millis(10) || value > Duration::from_secs(600) {
                return Err(SettingError::new(setting, "must be between 10ms and 10m"));
            }
            Ok(value)
        };
        Ok(Self {
            name,
            url,
            connect_timeout: bounded("CONNECT_TIMEOUT", Duration::from_secs(2))?,
            timeout: bounded("TIMEOUT", default_timeout)?,
        })
    }
}

/// Marks a request as made for an API client: its token then carries the client's tenant, key
/// id and scopes. Put it in the request's extensions, or use [`on_behalf`].
#[derive(Debug, Clone)]
pub struct OnBehalfOf(pub Principal);

/// A request acting for `principal`.
pub fn on_behalf<T>(message: T, principal: &Principal) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .extensions_mut()
        .insert(OnBehalfOf(principal.clone()));
    request
}

/// Attaches the trace context, a token for the peer and the call's deadline to every call.
#[derive(Debug, Clone)]
pub struct PeerAuth {
    minter: Arc<Minter>,
    audience: &'static str,
    timeout: Duration,
}

impl Interceptor for PeerAuth {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let mut request = telemetry::propagation::InjectTraceContext.call(request)?;
        let principal = request.extensions().get::<OnBehalfOf>().map(|o| &o.0);
        let token = self
            .minter
            .token(self.audience, principal)
            .map_err(|error| {
                tracing::error!(%error, "cannot sign an internal token");
                Status::internal("cannot sign an internal token")
            })?;
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Status::internal("an internal token is not a valid header"))?;
        request.metadata_mut().insert("authorization", value);
        if !request.metadata().contains_key("grpc-timeout") {
            request.set_timeout(self.timeout);
        }
        Ok(request)
    }
}

/// The channel type every generated client is built on: `FooClient::new(peer.channel())`.
pub type PeerChannel = InterceptedService<Channel, PeerAuth>;

/// A peer service: a lazily connected channel that reconnects by itself.
#[derive(Debug, Clone)]
pub struct Peer {
    channel: Channel,
    auth: PeerAuth,
}

impl Peer {
    /// Builds the channel; nothing connects until the first call.
    pub fn new(
        settings: &PeerSettings,
        minter: Arc<Minter>,
    ) -> Result<Self, tonic::transport::Error> {
        let channel = Endpoint::from_shared(settings.url.to_string())?
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true)
            .connect_lazy();
        Ok(Self {
            channel,
            auth: PeerAuth {
                minter,
                audience: settings.name,
                timeout: settings.timeout,
            },
        })
    }

    /// The channel for calls, with token, trace context and deadline.
    pub fn channel(&self) -> PeerChannel {
        InterceptedService::new(self.channel.clone(), self.auth.clone())
    }

    /// [`Peer::check`] in the shape readiness checks take.
    pub fn readiness_check(
        &self,
    ) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>
    + Send
    + Sync
    + 'static {
        let peer = self.clone();
        move || {
            let peer = peer.clone();
            Box::pin(async move { peer.check().await })
        }
    }

    /// Asks the peer's health service whether it is SERVING; a readiness check.
    pub async fn check(&self) -> Result<(), String> {
        let response = HealthClient::new(self.channel.clone())
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
}

/// Whether a failed call got no answer from the peer: the connection refused, cut or reset
/// mid-call (a killed process), or the deadline passed. That is the peer being down, which a
/// client is told as 503 with `Retry-After`, not the peer answering wrongly (502).
pub fn unreachable(status: &tonic::Status) -> bool {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => true,
        // A status made from a transport error keeps it as its source; one the peer sent has
        // none.
        tonic::Code::Unknown => std::error::Error::source(status).is_some(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::unreachable;

    #[test]
    fn a_cut_connection_is_unreachable_and_a_peers_answer_is_not() {
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let cut = tonic::Status::from_error(Box::new(reset));
        assert_eq!(cut.code(), tonic::Code::Unknown);
        assert!(unreachable(&cut), "a transport failure: the peer is down");
        for down in [
            tonic::Status::unavailable("tcp connect error"),
            tonic::Status::deadline_exceeded("timeout"),
            tonic::Status::cancelled("operation was canceled"),
        ] {
            assert!(unreachable(&down), "{down:?}");
        }
        for answered in [
            tonic::Status::unknown("the peer said so"),
            tonic::Status::internal("a bug"),
            tonic::Status::invalid_argument("text: is empty"),
            tonic::Status::resource_exhausted("busy"),
        ] {
            assert!(!unreachable(&answered), "{answered:?}");
        }
    }
}
