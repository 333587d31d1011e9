//! Dev-only: any set of Sonora's real services, started in-process on port 0 against one fresh
//! database, wired to each other and signing their calls with the test process's internal-auth
//! keys. Every cross-service test starts its services here, so no test copies the code that
//! starts a peer.
//!
//! ```ignore
//! let db = TestDatabase::create().await?;
//! let stack = Stack::new(&db).with_tts().with_delivery().with_gateway().start().await;
//! let voices = get_json(&format!("{}/v1/voices", stack.http_url(Service::Gateway))).await?;
//! ```
//!
//! A service that is not started is reached at `http://127.0.0.1:1`, where nothing listens, so
//! its callers see it as down. Services stop when the stack is dropped.

use std::{collections::BTreeMap, time::Duration};

mod simulator;
pub use simulator::Simulator;

/// A benchmark's `main`: runs `body` on a multi-threaded runtime, in a process tuned as
/// tts-inference's own `main` tunes it ([`tts_inference::prepare_process`], done before the
/// runtime starts its threads), since the stack runs tts-inference in this process. Call it first
/// thing in `main`.
pub fn benchmark_main(body: impl std::future::Future<Output = ()>) {
    if !tts_inference::prepare_process() {
        eprintln!("benchmark_main: other threads were running; candle's pool is left as it is");
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(body);
}

use internal_rpc::Peer;
use lifecycle::Signals;
use test_support::{
    TEST_WEBHOOK_ENCRYPTION_KEY, TestDatabase, internal_keys, proxy::TcpProxy, redis_url, sources,
};

/// A service of the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    TtsInference,
    DeliveryWorker,
    // webhook-ingest starts before audio-generation, whose Replicate webhooks it receives
    // (`BASE_URL`); it reaches audio-generation through a proxy told the port once it is known.
    WebhookIngest,
    AudioGeneration,
    Gateway,
}

impl Service {
    /// The service's name, as in its settings and tokens.
    pub fn name(self) -> &'static str {
        match self {
            Self::TtsInference => tts_inference::NAME,
            Self::DeliveryWorker => delivery_worker::NAME,
            Self::AudioGeneration => audio_generation::NAME,
            Self::WebhookIngest => webhook_ingest::NAME,
            Self::Gateway => gateway::NAME,
        }
    }

    fn calls_others(self) -> bool {
        matches!(
            self,
            Self::Gateway | Self::WebhookIngest | Self::AudioGeneration
        )
    }
}

/// What to start; see [`Stack::new`].
#[must_use]
pub struct StackBuilder {
    db: TestDatabase,
    services: Vec<Service>,
    settings: BTreeMap<Service, Vec<(String, String)>>,
}

impl StackBuilder {
    pub fn with(mut self, service: Service) -> Self {
        if !self.services.contains(&service) {
            self.services.push(service);
        }
        self
    }

    pub fn with_tts(self) -> Self {
        self.with(Service::TtsInference)
    }

    pub fn with_delivery(self) -> Self {
        self.with(Service::DeliveryWorker)
    }

    pub fn with_audio(self) -> Self {
        self.with(Service::AudioGeneration)
    }

    pub fn with_ingest(self) -> Self {
        self.with(Service::WebhookIngest)
    }

    pub fn with_gateway(self) -> Self {
        self.with(Service::Gateway)
    }

    /// Every service.
    pub fn with_all(self) -> Self {
        self.with_tts()
            .with_delivery()
            .with_audio()
            .with_ingest()
            .with_gateway()
    }

    /// Sets (or overrides) one setting of one service, such as a peer URL pointing through a
    /// proxy.
    pub fn setting(mut self, service: Service, name: &str, value: impl Into<String>) -> Self {
        self.settings
            .entry(service)
            .or_default()
            .push((name.to_owned(), value.into()));
        self
    }

    /// Points audio-generation and webhook-ingest at a Replicate simulator: its API and token
    /// for the first, its webhook signing secret for the second.
    pub fn replicate(self, simulator: &Simulator) -> Self {
        let [url, token, secret] = simulator.settings();
        self.setting(Service::AudioGeneration, url.0, url.1)
            .setting(Service::AudioGeneration, token.0, token.1)
            .setting(Service::WebhookIngest, secret.0, secret.1)
    }

    /// Starts the services, each after the peers it calls, and returns once each has bound its
    /// ports and delivery-worker (when started) has migrated its schema.
    pub async fn start(self) -> Stack {
        let signals = Signals::new();
        let mut services = self.services.clone();
        services.sort();
        let audio_proxy = if services.contains(&Service::AudioGeneration)
            && services.contains(&Service::WebhookIngest)
        {
            Some(TcpProxy::start_deferred().await.expect("a loopback port"))
        } else {
            None
        };
        let mut stack = Stack {
            signals: signals.clone(),
            db: self.db.clone(),
            ports: BTreeMap::new(),
            tasks: Vec::new(),
            audio_proxy,
        };
        for service in services {
            let src = stack.sources(service, self.settings.get(&service));
            let ports = match service {
                Service::TtsInference => {
                    let app = tts_inference::Application::build(
                        tts_inference::Settings::load(&src).expect("tts-inference settings"),
                        signals.clone(),
                    )
                    .expect("tts-inference starts");
                    let ports = Ports {
                        grpc: Some(app.grpc_port()),
                        http: app.http_port(),
                        ops: app.http_port(),
                    };
                    stack.tasks.push(tokio::spawn(app.stopped()));
                    ports
                }
                Service::DeliveryWorker => {
                    let app = delivery_worker::Application::build(
                        delivery_worker::Settings::load(&src).expect("delivery-worker settings"),
                        signals.clone(),
                    )
                    .expect("delivery-worker starts");
                    let ports = Ports {
                        grpc: Some(app.grpc_port()),
                        http: app.http_port(),
                        ops: app.http_port(),
                    };
                    tokio::time::timeout(Duration::from_secs(60), app.database().migrated())
                        .await
                        .expect("delivery-worker migrates within a minute");
                    stack.tasks.push(tokio::spawn(app.stopped()));
                    ports
                }
                Service::AudioGeneration => {
                    let app = audio_generation::Application::build(
                        audio_generation::Settings::load(&src).expect("audio-generation settings"),
                        signals.clone(),
                    )
                    .expect("audio-generation starts");
                    let ports = Ports {
                        grpc: Some(app.grpc_port()),
                        http: app.http_port(),
                        ops: app.http_port(),
                    };
                    if let Some(proxy) = &stack.audio_proxy {
                        proxy.set_upstream(format!("127.0.0.1:{}", app.grpc_port()));
                    }
                    stack.tasks.push(tokio::spawn(app.stopped()));
                    ports
                }
                Service::WebhookIngest => {
                    let app = webhook_ingest::Application::build(
                        webhook_ingest::Settings::load(&src).expect("webhook-ingest settings"),
                        signals.clone(),
                    )
                    .expect("webhook-ingest starts");
                    let ports = Ports {
                        grpc: Some(app.grpc_port()),
                        http: app.port(),
                        ops: app.ops_port(),
                    };
                    stack.tasks.push(tokio::spawn(app.stopped()));
                    ports
                }
                Service::Gateway => {
                    let app = gateway::Application::build(
                        gateway::Settings::load(&src).expect("gateway settings"),
                        signals.clone(),
                    )
                    .expect("gateway starts");
                    let ports = Ports {
                        grpc: None,
                        http: app.port(),
                        ops: app.ops_port(),
                    };
                    stack.tasks.push(tokio::spawn(app.stopped()));
                    ports
                }
            };
            stack.ports.insert(service, ports);
        }
        stack
    }
}

#[derive(Debug, Clone, Copy)]
struct Ports {
    grpc: Option<u16>,
    /// The public port of the gateway and webhook-ingest; the ops port of the gRPC services.
    http: u16,
    /// `/health`, `/ready` and `/metrics`.
    ops: u16,
}

/// Running services; they stop when it is dropped (or on [`Stack::stop`]).
pub struct Stack {
    /// Cancelling its shutdown token stops every service.
    pub signals: Signals,
    pub db: TestDatabase,
    ports: BTreeMap<Service, Ports>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// webhook-ingest's way to audio-generation when both run (see [`Service`]).
    audio_proxy: Option<TcpProxy>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.signals.shutdown.cancel();
    }
}

impl Stack {
    /// A stack on `db` (shared by every service, each in its own schema), to be given services
    /// and started: `Stack::new(&db).with_tts().start().await`.
    #[allow(
        clippy::new_ret_no_self,
        reason = "reads as the stack it describes; `start` makes the Stack"
    )]
    pub fn new(db: &TestDatabase) -> StackBuilder {
        StackBuilder {
            db: db.clone(),
            services: Vec::new(),
            settings: BTreeMap::new(),
        }
    }

    fn peer_url(&self, service: Service) -> String {
        match self.ports.get(&service).and_then(|p| p.grpc) {
            Some(port) => format!("http://127.0.0.1:{port}"),
            // Port 1 (tcpmux) is never served here, so connections are refused; a port picked as
            // free could be taken by a parallel test's server in the meantime.
            None => "http://127.0.0.1:1".to_owned(),
        }
    }

    /// The settings of `service` on this stack: the shared database and Redis, the peers started
    /// so far, the test keys, then the test's own overrides.
    pub fn sources(
        &self,
        service: Service,
        overrides: Option<&Vec<(String, String)>>,
    ) -> settings::Sources {
        let keys = internal_keys();
        let mut pairs: Vec<(&str, String)> = vec![
            ("DATABASE_URL", self.db.url.clone()),
            ("REDIS_URL", redis_url()),
            (
                "VOICES_DIR",
                test_support::voices_dir().display().to_string(),
            ),
            (
                "WEBHOOK_SECRET_ENCRYPTION_KEY",
                TEST_WEBHOOK_ENCRYPTION_KEY.to_owned(),
            ),
            ("WORKER_POLL_INTERVAL", "100ms".to_owned()),
            // Every test's clients share 127.0.0.1 (and Redis's `rl:ip:127.0.0.1`) with the tests
            // running beside it; the per-IP limit is tested by setting it.
            ("RATE_LIMIT_PER_IP", "100000/s,burst=100000".to_owned()),
            // Every test signs in to the console from 127.0.0.1, against one Redis.
            ("CONSOLE_SIGN_IN_LIMIT", "100000".to_owned()),
            ("USAGE_FLUSH_INTERVAL", "200ms".to_owned()),
            (
                "AUDIO_STORAGE_PATH",
                std::env::temp_dir()
                    .join(format!("sonora-stack-{}", self.db.name))
                    .display()
                    .to_string(),
            ),
            ("TTS_INFERENCE_URL", self.peer_url(Service::TtsInference)),
            (
                "DELIVERY_WORKER_URL",
                self.peer_url(Service::DeliveryWorker),
            ),
            // webhook-ingest starts before the gateway (see [`Service`]), so its port is known.
            ("WEBHOOK_INGEST_URL", self.peer_url(Service::WebhookIngest)),
            (
                "AUDIO_GENERATION_URL",
                match &self.audio_proxy {
                    Some(proxy) => format!("http://127.0.0.1:{}", proxy.port()),
                    None => self.peer_url(Service::AudioGeneration),
                },
            ),
        ];
        if let Some(ingest) = self.ports.get(&Service::WebhookIngest) {
            pairs.push(("BASE_URL", format!("http://127.0.0.1:{}", ingest.http)));
        }
        if service.calls_others() {
            pairs.push(("INTERNAL_AUTH_KEY", keys.signing(service.name()).to_owned()));
        }
        let mut src = sources(pairs);
        for (name, value) in overrides.into_iter().flatten() {
            src.set(name, value.clone());
        }
        src
    }

    /// The gRPC port of a started gRPC service.
    pub fn grpc_port(&self, service: Service) -> u16 {
        self.ports
            .get(&service)
            .and_then(|p| p.grpc)
            .unwrap_or_else(|| panic!("{} is not a started gRPC service", service.name()))
    }

    /// The base URL of a started service's HTTP port: the API of the gateway and
    /// webhook-ingest, the operational endpoints of the gRPC services.
    pub fn http_url(&self, service: Service) -> String {
        let port = self
            .ports
            .get(&service)
            .unwrap_or_else(|| panic!("{} is not started", service.name()))
            .http;
        format!("http://127.0.0.1:{port}")
    }

    /// The base URL of a started service's ops port (`/health`, `/ready`, `/metrics`).
    pub fn ops_url(&self, service: Service) -> String {
        let port = self
            .ports
            .get(&service)
            .unwrap_or_else(|| panic!("{} is not started", service.name()))
            .ops;
        format!("http://127.0.0.1:{port}")
    }

    /// The internal-auth keys the services use.
    pub fn keys(&self) -> &'static test_support::keys::InternalKeys {
        internal_keys()
    }

    /// A channel to a started gRPC service, signing as `caller` (`gateway`, `webhook-ingest`,
    /// `audio-generation`).
    pub fn peer(&self, caller: &'static str, service: Service) -> Peer {
        internal_keys().peer(caller, service.name(), self.grpc_port(service))
    }

    /// A new API key of `tenant` with `scopes` (the tenant made if new), hashed with the
    /// development pepper the stack's gateway uses; waits for the gateway's schema.
    pub async fn api_key(&self, tenant: &str, scopes: &[internal_rpc::Scope]) -> String {
        use settings::ExposeSecret as _;
        let tenant = ids::Tenant::parse(tenant).expect("a tenant slug");
        let pool = database::connect(&database::DatabaseConfig {
            url: self.db.url.clone(),
            schema: gateway::SCHEMA,
            pool_size: 2,
            connect_timeout: Duration::from_secs(5),
        })
        .expect("a pool");
        let pepper =
            gateway::keys::Pepper::new(&settings::SecretString::from(gateway::DEVELOPMENT_PEPPER));
        let new = gateway::keys::NewKey {
            tenant: tenant.clone(),
            name: "test key".into(),
            prefix: "cw_test_".into(),
            scopes: internal_rpc::Scopes::of(scopes.iter().copied()),
            plan: "standard".into(),
            expires_at: None,
        };
        let made = gateway::keys::make(&pepper, &new, chrono::Utc::now());
        test_support::eventually(
            Duration::from_secs(30),
            "the gateway's key tables",
            || async {
                gateway::keys::create_tenant(&pool, &tenant, chrono::Utc::now())
                    .await
                    .ok()?;
                gateway::keys::insert(&pool, &made.record).await.ok()
            },
        )
        .await;
        made.key.expose_secret().to_owned()
    }

    /// Stops every service and waits until each has drained.
    pub async fn stop(mut self) {
        self.signals.shutdown.cancel();
        for task in std::mem::take(&mut self.tasks) {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
    }
}
