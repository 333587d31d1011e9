//! A real HTTP receiver on loopback that verifies every webhook with the library, and helpers to
//! run delivery-worker against a fresh database.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use delivery_worker::{Application, Settings};
use lifecycle::Signals;
use sonora_proto::delivery::v1::{
    CreateEndpointRequest, PublishRequest, delivery_service_client::DeliveryServiceClient,
};
use test_support::{TestDatabase, sources};
use tonic::transport::Channel;
use webhook_signature::{SignedHeaders, VerifyingKey, verify};

/// How the receiver answers on one path.
#[derive(Debug, Clone)]
pub struct Behavior {
    pub status: u16,
    pub delay: Duration,
    pub retry_after: Option<u64>,
}

impl Behavior {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            delay: Duration::ZERO,
            retry_after: None,
        }
    }
}

/// One webhook as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub id: String,
    pub timestamp: String,
    pub signature: String,
    pub body: String,
    /// Whether the signature verified with the keys registered for the path.
    pub verified: bool,
}

#[derive(Default)]
struct State {
    behaviors: HashMap<String, Behavior>,
    keys: HashMap<String, Vec<VerifyingKey>>,
    received: Vec<Received>,
}

/// The receiver; each path is one partner endpoint.
#[derive(Clone)]
pub struct Receiver {
    pub base: String,
    state: Arc<Mutex<State>>,
}

async fn receive(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<Arc<Mutex<State>>>,
) -> HttpResponse {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let path = req.path().to_owned();
    let (id, timestamp, signature) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    );
    let (behavior, verified) = {
        let state = state.lock().unwrap();
        let keys = state.keys.get(&path).cloned().unwrap_or_default();
        let now = chrono::Utc::now().timestamp();
        let verified = verify(
            &keys,
            SignedHeaders {
                id: &id,
                timestamp: &timestamp,
                signature: &signature,
            },
            &body,
            now,
            // The worker signs with its own (possibly manual) clock; tolerance is wide here and
            // the timestamp itself is checked by the tests that care.
            10 * 365 * 24 * 3600,
        )
        .is_ok();
        (
            state
                .behaviors
                .get(&path)
                .cloned()
                .unwrap_or(Behavior::status(200)),
            verified,
        )
    };
    state.lock().unwrap().received.push(Received {
        path,
        id,
        timestamp,
        signature,
        body: String::from_utf8_lossy(&body).into_owned(),
        verified,
    });
    if !behavior.delay.is_zero() {
        tokio::time::sleep(behavior.delay).await;
    }
    let status = if verified { behavior.status } else { 401 };
    let mut response = HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap());
    if let Some(seconds) = behavior.retry_after {
        response.insert_header(("retry-after", seconds.to_string()));
    }
    response.body(format!("answered {status}"))
}

impl Receiver {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let data = web::Data::new(Arc::clone(&state));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(receive))
        })
        .workers(2)
        .disable_signals()
        .bind("127.0.0.1:0")
        .unwrap();
        let port = server.addrs()[0].port();
        tokio::spawn(server.run());
        Self {
            base: format!("http://127.0.0.1:{port}"),
            state,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn set(&self, path: &str, behavior: Behavior) {
        self.state
            .lock()
            .unwrap()
            .behaviors
            .insert(path.to_owned(), behavior);
    }

    pub fn trust(&self, path: &str, key: &str) {
        self.state
            .lock()
            .unwrap()
            .keys
            .entry(path.to_owned())
            .or_default()
            .push(VerifyingKey::parse(key).unwrap());
    }

    /// Replaces the keys a path verifies with.
    pub fn trust_only(&self, path: &str, keys: &[&str]) {
        self.state.lock().unwrap().keys.insert(
            path.to_owned(),
            keys.iter()
                .map(|k| VerifyingKey::parse(k).unwrap())
                .collect(),
        );
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    pub fn received_on(&self, path: &str) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }
}

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

/// A running delivery-worker and a gRPC client to it.
pub struct Running {
    pub client: DeliveryServiceClient<Channel>,
    pub signals: Signals,
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
    let database = app.database().clone();
    tokio::time::timeout(Duration::from_secs(30), database.migrated())
        .await
        .unwrap();
    tokio::spawn(app.stopped());
    Running {
        client: client(grpc).await,
        signals,
    }
}

pub async fn client(port: u16) -> DeliveryServiceClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    DeliveryServiceClient::new(channel)
}

/// Creates an endpoint and registers its key with the receiver; returns (endpoint id, key).
pub async fn endpoint(
    client: &mut DeliveryServiceClient<Channel>,
    receiver: &Receiver,
    tenant: &str,
    path: &str,
    event_types: &[&str],
) -> (String, String) {
    let response = client
        .create_endpoint(CreateEndpointRequest {
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
) -> PublishRequest {
    PublishRequest {
        tenant: tenant.to_owned(),
        event_id: event_id.to_owned(),
        event_type: event_type.to_owned(),
        payload_json: payload.to_string(),
        channels: Vec::new(),
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
