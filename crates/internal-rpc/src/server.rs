//! The server side: a tower layer that admits a call only with a valid internal token from a
//! caller the method allows, and the [`Caller`] handlers read the tenant from.
//!
//! Every method a server serves must be listed in its [`Policy`]; a method that is not listed is
//! refused to everyone, so a new method cannot be exposed by accident. The standard health
//! service (`grpc.health.v1.Health`) is the one thing open to all.

use std::{
    collections::HashMap,
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::{Either, Ready, ready};
use ids::Tenant;
use tonic::Status;

use crate::token::{Principal, Scope, Verified, Verifier};

/// The methods of the standard gRPC health service, which need no token (exact paths: nothing
/// else under that prefix, however written, is let through).
pub const HEALTH_METHODS: [&str; 2] = [
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
];

/// Who may call a method, besides being one of its listed services.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A service acting on its own (no client in the token), such as a relay publishing events.
    Service,
    /// A service acting for an API client whose key has the scope.
    Client(Scope),
    /// Either of the two.
    ServiceOrClient(Scope),
}

#[derive(Debug, Clone)]
struct Rule {
    callers: &'static [&'static str],
    access: Access,
}

/// Which services may call which methods of one gRPC service, and how.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: HashMap<String, Rule>,
}

impl Policy {
    pub fn new() -> Self {
        Self {
            rules: HashMap::new(),
        }
    }

    /// Allows `service`'s `method` (`"sonora.tts.v1.TtsInference"`, `"Synthesize"`) to the
    /// listed callers.
    pub fn allow(
        mut self,
        service: &str,
        method: &str,
        callers: &'static [&'static str],
        access: Access,
    ) -> Self {
        self.rules
            .insert(format!("/{service}/{method}"), Rule { callers, access });
        self
    }

    fn admit(&self, path: &str, verified: &Verified) -> Result<(), Status> {
        let rule = self.rules.get(path).ok_or_else(|| {
            Status::permission_denied(format!("{path} is not open to internal callers"))
        })?;
        if !rule.callers.contains(&verified.service.as_str()) {
            return Err(Status::permission_denied(format!(
                "{} may not call {path}",
                verified.service
            )));
        }
        match (rule.access, &verified.principal) {
            (Access::Service, Some(_)) => Err(Status::permission_denied(format!(
                "{path} is not called on behalf of a client"
            ))),
            (Access::Client(_), None) => Err(Status::permission_denied(format!(
                "{path} is only called on behalf of a client"
            ))),
            (Access::Client(scope) | Access::ServiceOrClient(scope), Some(principal))
                if !principal.scopes.contains(scope) =>
            {
                Err(Status::permission_denied(format!(
                    "the client's key does not have the {scope} scope"
                )))
            }
            _ => Ok(()),
        }
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self::new()
    }
}

/// The verified caller of a call, put in the request's extensions by the [`Guard`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The calling service.
    pub service: String,
    /// The API client the call acts for, if any.
    pub principal: Option<Principal>,
}

impl Caller {
    /// The tenant a call is about. For a call acting for a client it is the client's tenant
    /// from the token; a tenant written in the request must be empty or the same
    /// (`PERMISSION_DENIED` otherwise). For a service acting on its own it is the request's,
    /// which must then be given.
    pub fn tenant(&self, requested: &str) -> Result<Tenant, Status> {
        match &self.principal {
            Some(principal) if requested.is_empty() || requested == principal.tenant.as_str() => {
                Ok(principal.tenant.clone())
            }
            Some(_) => Err(Status::permission_denied(
                "tenant: the request names a tenant other than the caller's",
            )),
            None if requested.is_empty() => Err(Status::invalid_argument("tenant: is required")),
            None => Tenant::parse(requested)
                .map_err(|e| Status::invalid_argument(format!("tenant: {e}"))),
        }
    }

    /// As [`Caller::tenant`], for the calls where a tenant is optional (a service may ask about
    /// every tenant at once; a client only ever about its own).
    pub fn optional_tenant(&self, requested: &str) -> Result<Option<Tenant>, Status> {
        if self.principal.is_none() && requested.is_empty() {
            return Ok(None);
        }
        self.tenant(requested).map(Some)
    }
}

/// The caller the [`Guard`] admitted. A server wired without the guard answers `INTERNAL`,
/// never serves anonymously.
pub fn caller<T>(request: &tonic::Request<T>) -> Result<&Caller, Status> {
    request.extensions().get::<Caller>().ok_or_else(|| {
        tracing::error!("a gRPC method ran without the internal-auth guard");
        Status::internal("internal error; it has been logged")
    })
}

/// The tower layer that admits calls. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Guard {
    verifier: Arc<Verifier>,
    policy: Arc<Policy>,
}

impl Guard {
    pub fn new(verifier: Verifier, policy: Policy) -> Self {
        Self {
            verifier: Arc::new(verifier),
            policy: Arc::new(policy),
        }
    }

    /// Admits or refuses one call, by its path and headers.
    pub fn check(&self, path: &str, headers: &http::HeaderMap) -> Result<Caller, Status> {
        let token = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                tracing::warn!(path, "gRPC call refused: no internal token");
                Status::unauthenticated("no internal token: every call between services is signed")
            })?;
        let verified = self.verifier.verify(token).map_err(|error| {
            tracing::warn!(path, %error, "gRPC call refused: bad internal token");
            Status::unauthenticated(error.to_string())
        })?;
        self.policy.admit(path, &verified).inspect_err(|status| {
            tracing::warn!(path, caller = %verified.service, reason = status.message(), "gRPC call refused");
        })?;
        Ok(Caller {
            service: verified.service,
            principal: verified.principal,
        })
    }
}

impl<S> tower::Layer<S> for Guard {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Guarded {
            inner,
            guard: self.clone(),
        }
    }
}

/// A service behind the [`Guard`].
#[derive(Debug, Clone)]
pub struct Guarded<S> {
    inner: S,
    guard: Guard,
}

impl<S, B, R> tower::Service<http::Request<B>> for Guarded<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    R: Default,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Self::Response, Self::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        if HEALTH_METHODS.contains(&path) {
            return Either::Right(self.inner.call(request));
        }
        match self.guard.check(path, request.headers()) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Either::Right(self.inner.call(request))
            }
            Err(status) => Either::Left(ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use ids::KeyId;

    use super::*;
    use crate::{
        keys::{SigningKey, TrustedKeys},
        token::{Minter, Scopes},
    };

    const SVC: &str = "sonora.delivery.v1.DeliveryService";

    fn setup() -> (Guard, Arc<Minter>, Arc<Minter>) {
        let gateway = SigningKey::parse(&SigningKey::generate()).unwrap();
        let audio = SigningKey::parse(&SigningKey::generate()).unwrap();
        let mut keys = TrustedKeys::default();
        keys.trust("gateway", &gateway).unwrap();
        keys.trust("audio-generation", &audio).unwrap();
        let policy = Policy::new()
            .allow(SVC, "Publish", &["audio-generation"], Access::Service)
            .allow(
                SVC,
                "CreateEndpoint",
                &["gateway"],
                Access::Client(Scope::Webhooks),
            )
            .allow(
                SVC,
                "GetQueueStats",
                &["gateway"],
                Access::ServiceOrClient(Scope::Admin),
            );
        (
            Guard::new(Verifier::new("delivery-worker", keys), policy),
            Minter::new("gateway", gateway),
            Minter::new("audio-generation", audio),
        )
    }

    fn bearer(token: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        headers
    }

    fn principal(scopes: &[Scope]) -> Principal {
        Principal {
            tenant: Tenant::parse("acme").unwrap(),
            key_id: Some(KeyId::new()),
            scopes: Scopes::of(scopes.iter().copied()),
        }
    }

    #[test]
    fn methods_admit_only_their_callers_and_scopes() {
        let (guard, gateway, audio) = setup();
        let path = |m: &str| format!("/{SVC}/{m}");
        let code = |result: Result<Caller, Status>| result.map(|_| ()).map_err(|s| s.code());

        let relay = audio.token("delivery-worker", None).unwrap();
        assert_eq!(code(guard.check(&path("Publish"), &bearer(&relay))), Ok(()));
        let client = gateway
            .token("delivery-worker", Some(&principal(&[Scope::Webhooks])))
            .unwrap();
        assert_eq!(
            code(guard.check(&path("Publish"), &bearer(&client))),
            Err(tonic::Code::PermissionDenied)
        );
        let caller = guard
            .check(&path("CreateEndpoint"), &bearer(&client))
            .unwrap();
        assert_eq!(caller.service, "gateway");
        assert_eq!(caller.tenant("").unwrap().as_str(), "acme");
        let no_scope = gateway
            .token("delivery-worker", Some(&principal(&[Scope::Tts])))
            .unwrap();
        assert_eq!(
            code(guard.check(&path("CreateEndpoint"), &bearer(&no_scope))),
            Err(tonic::Code::PermissionDenied)
        );
        let service = gateway.token("delivery-worker", None).unwrap();
        assert_eq!(
            code(guard.check(&path("CreateEndpoint"), &bearer(&service))),
            Err(tonic::Code::PermissionDenied)
        );
        assert_eq!(
            code(guard.check(&path("GetQueueStats"), &bearer(&service))),
            Ok(())
        );
        assert_eq!(
            code(guard.check(&path("DeleteEndpoint"), &bearer(&client))),
            Err(tonic::Code::PermissionDenied),
            "a method missing from the policy is closed"
        );
        assert_eq!(
            code(guard.check(&path("Publish"), &http::HeaderMap::new())),
            Err(tonic::Code::Unauthenticated)
        );
    }

    #[test]
    fn the_tenant_comes_from_the_token() {
        let client = Caller {
            service: "gateway".into(),
            principal: Some(principal(&[Scope::Webhooks])),
        };
        assert_eq!(client.tenant("acme").unwrap().as_str(), "acme");
        assert_eq!(
            client.tenant("victim").unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            client.optional_tenant("").unwrap().unwrap().as_str(),
            "acme"
        );
        let service = Caller {
            service: "audio-generation".into(),
            principal: None,
        };
        assert_eq!(service.tenant("acme").unwrap().as_str(), "acme");
        assert_eq!(
            service.tenant("").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            service.tenant("no spaces").unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(service.optional_tenant("").unwrap(), None);
    }
}
