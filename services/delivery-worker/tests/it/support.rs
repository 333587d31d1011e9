//! Helpers to run delivery-worker against a fresh database, with the shared partner receiver
//! (`test_support::receiver`) that verifies every webhook with the library.

use std::{sync::Arc, time::Duration};

use delivery_worker::{Application, Settings};
use internal_rpc::{Principal, Scopes, on_behalf};
use lifecycle::Signals;
use sonora_proto::delivery::v1::{self as pb, delivery_service_client::DeliveryServiceClient};
pub use test_support::receiver::{Behavior, Receiver};
use test_support::{TestDatabase, internal_keys, sources};

/// Settings for a delivery-worker on a fresh database.
pub fn settings(db: &TestDatabase, extra: &[(&str, &str)]) -> Settings {
    let mut pairs = vec![
        ("DATABASE_URL", db.url.clone()),
        ("WEBHOOK_SECRET_ENCRYPTION_KEY", secret_box::generate_key()),
        ("WORKER_POLL_INTERVAL", "100ms".to_owned()),
    ];
    pairs.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    Settings::load(&sources(pairs)).unwrap()
}

/// A gRPC client to delivery-worker that signs each call as its real callers do: events are
/// published by audio-generation acting on its own, everything about a tenant's endpoints by the
/// gateway acting for a client of that tenant (the request's `tenant`, with every scope).
#[derive(Clone)]
pub struct Client {
    gateway: DeliveryServiceClient<internal_rpc::PeerChannel>,
    relay: DeliveryServiceClient<internal_rpc::PeerChannel>,
}

/// A request made by the gateway for a client of `tenant` whose key has every scope.
pub fn acting<T>(tenant: &str, message: T) -> tonic::Request<T> {
    let principal = Principal {
        tenant: ids::Tenant::parse(tenant).expect("a valid tenant"),
        key_id: Some(ids::KeyId::new()),
        scopes: Scopes::all(),
    };
    on_behalf(message, &principal)
}

type Reply<T> = Result<tonic::Response<T>, tonic::Status>;

macro_rules! for_the_requests_tenant {
    ($($method:ident($request:ty) -> $response:ty;)*) => {$(
        pub async fn $method(&mut self, request: $request) -> Reply<$response> {
            let tenant = request.tenant.clone();
            self.gateway.$method(acting(&tenant, request)).await
        }
    )*};
}

#[allow(
    dead_code,
    reason = "the client mirrors the whole API, whichever methods the tests use today"
)]
impl Client {
    pub fn new(port: u16) -> Self {
        let keys = internal_keys();
        Self {
            gateway: DeliveryServiceClient::new(
                keys.peer("gateway", "delivery-worker", port).channel(),
            ),
            relay: DeliveryServiceClient::new(
                keys.peer("audio-generation", "delivery-worker", port)
                    .channel(),
            ),
        }
    }

    pub async fn publish(&mut self, request: pb::PublishRequest) -> Reply<pb::PublishResponse> {
        self.relay.publish(request).await
    }

    pub async fn publish_batch(
        &mut self,
        events: Vec<pb::PublishRequest>,
    ) -> Reply<pb::PublishBatchResponse> {
        self.relay
            .publish_batch(pb::PublishBatchRequest { events })
            .await
    }

    /// Across every tenant (the gateway for itself) when the request names none.
    pub async fn get_queue_stats(
        &mut self,
        request: pb::GetQueueStatsRequest,
    ) -> Reply<pb::QueueStats> {
        if request.tenant.is_empty() {
            self.gateway.get_queue_stats(request).await
        } else {
            let tenant = request.tenant.clone();
            self.gateway.get_queue_stats(acting(&tenant, request)).await
        }
    }

    pub async fn cleanup_delivered(
        &mut self,
        request: pb::CleanupDeliveredRequest,
    ) -> Reply<pb::CleanupDeliveredResponse> {
        self.gateway.cleanup_delivered(request).await
    }

    for_the_requests_tenant! {
        create_endpoint(pb::CreateEndpointRequest) -> pb::CreateEndpointResponse;
        get_endpoint(pb::GetEndpointRequest) -> pb::Endpoint;
        list_endpoints(pb::ListEndpointsRequest) -> pb::ListEndpointsResponse;
        update_endpoint(pb::UpdateEndpointRequest) -> pb::Endpoint;
        delete_endpoint(pb::DeleteEndpointRequest) -> pb::DeleteEndpointResponse;
        get_endpoint_secret(pb::GetEndpointSecretRequest) -> pb::EndpointSecret;
        rotate_endpoint_secret(pb::RotateEndpointSecretRequest) -> pb::EndpointSecret;
        list_messages(pb::ListMessagesRequest) -> pb::ListMessagesResponse;
        list_deliveries(pb::ListDeliveriesRequest) -> pb::ListDeliveriesResponse;
        list_attempts(pb::ListAttemptsRequest) -> pb::ListAttemptsResponse;
        retry_delivery(pb::RetryDeliveryRequest) -> pb::Delivery;
        redrive_dead_letters(pb::RedriveDeadLettersRequest) -> pb::RedriveDeadLettersResponse;
    }
}

/// A running delivery-worker and a gRPC client to it.
pub struct Running {
    pub client: Client,
    pub signals: Signals,
    /// The gRPC port.
    pub port: u16,
    /// The HTTP port of `/health`, `/ready` and `/metrics`.
    pub http_port: u16,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.signals.shutdown.cancel();
    }
}

pub async fn start(
    settings: Settings,
    clock: Option<Arc<dyn delivery_worker::clock::Clock>>,
) -> Running {
    let signals = Signals::new();
    let app = match clock {
        Some(clock) => Application::build_with_clock(settings, signals.clone(), clock),
        None => Application::build(settings, signals.clone()),
    }
    .unwrap();
    let grpc = app.grpc_port();
    let http_port = app.http_port();
    let database = app.database().clone();
    tokio::time::timeout(Duration::from_secs(30), database.migrated())
        .await
        .unwrap();
    tokio::spawn(app.stopped());
    Running {
        client: Client::new(grpc),
        signals,
        port: grpc,
        http_port,
    }
}

/// Creates an endpoint and registers its key with the receiver; returns (endpoint id, key).
pub async fn endpoint(
    client: &mut Client,
    receiver: &Receiver,
    tenant: &str,
    path: &str,
    event_types: &[&str],
) -> (String, String) {
    let response = client
        .create_endpoint(pb::CreateEndpointRequest {
            tenant: tenant.to_owned(),
            url: receiver.url(path),
            event_types: event_types.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    receiver.trust(path, &response.verification_key);
    (response.endpoint.unwrap().id, response.verification_key)
}

pub fn publish(
    tenant: &str,
    event_id: &str,
    event_type: &str,
    payload: serde_json::Value,
) -> pb::PublishRequest {
    pb::PublishRequest {
        tenant: tenant.to_owned(),
        event_id: event_id.to_owned(),
        event_type: event_type.to_owned(),
        payload_json: payload.to_string(),
        channels: Vec::new(),
        traceparent: String::new(),
    }
}

/// A worker driven step by step (`run_once`) on `clock`, beside an API-only application.
pub fn manual_worker(
    settings: &Settings,
    clock: Arc<dyn delivery_worker::clock::Clock>,
) -> Arc<delivery_worker::worker::Worker> {
    use delivery_worker::{
        metrics::DeliveryMetrics, policy::AddressPolicy, sender::Sender, store::Store,
        worker::Worker,
    };
    let config =
        database::DatabaseConfig::from_settings(&settings.database, delivery_worker::SCHEMA);
    let store = Store::new(
        database::connect(&config).unwrap(),
        Arc::new(settings.keyring()),
    );
    let policy = Arc::new(AddressPolicy::new(
        settings.common.environment,
        settings.allowed_networks.clone(),
    ));
    let sender = Sender::new(policy, settings.connect_timeout, settings.request_timeout).unwrap();
    let (_tx, rx) = tokio::sync::watch::channel(settings.tuning);
    Worker::new(
        store,
        sender,
        clock,
        DeliveryMetrics::register(&prometheus::Registry::new()),
        settings.worker_policy(),
        rx,
    )
}

/// Runs SQL in the service's schema, as an operator would with psql.
pub fn psql(db: &TestDatabase, sql: &str) -> String {
    let run = test_support::run_binary(
        "/usr/bin/psql",
        &[&db.url, "-v", "ON_ERROR_STOP=1", "-tAc", sql],
        &[("PGOPTIONS", "-c search_path=delivery")],
    );
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    run.stdout
}
