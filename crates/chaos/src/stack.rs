//! The whole system on loopback for one run: its own PostgreSQL and Redis, the five services as
//! processes (two replicas of the gateway, delivery-worker and webhook-ingest), and the outside
//! world in this process: the Replicate simulator, partner receivers that verify every
//! signature, the fake code-generation API, and TCP proxies that can cut a link.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use lifecycle::Signals;
use replicate_simulator::settings::KnobsHandle;
use test_support::{
    TEST_WEBHOOK_ENCRYPTION_KEY, codegen::FakeCodegen, internal_keys, proxy::TcpProxy,
    receiver::Receiver,
};
use tokio::sync::Mutex;

use crate::{
    infra::{Postgres, Redis, free_port},
    services::{Instance, Ports, Processes, Service},
};

/// The generic inbound source the run registers and posts to.
pub const SOURCE: &str = "chaos-src";
/// The event types the two steady partner endpoints subscribe to; every event of these types
/// must reach both.
pub const STEADY_TYPES: [&str; 6] = [
    "audio.sound_effect.completed",
    "audio.background_music.completed",
    "audio.job.failed",
    "github.push",
    "github.issues.labeled",
    "chaos-src.order.created",
];
/// The paths of the steady partner endpoints on the receiver.
pub const STEADY_PATHS: [&str; 2] = ["/partner-a", "/partner-b"];
/// Every Sonora crate at debug, the libraries under them at info.
const RUST_LOG: &str = "info,gateway=debug,tts_inference=debug,audio_generation=debug,\
    webhook_ingest=debug,delivery_worker=debug,lifecycle=debug,internal_rpc=debug,outbox=debug,\
    database=debug,redis_pool=debug,blob_store=debug,egress=debug,settings=debug,telemetry=debug";

/// The paths the churned endpoint moves between.
pub const CHURN_PATHS: [&str; 2] = ["/churn-1", "/churn-2"];

pub struct Options {
    pub bin_dir: PathBuf,
    pub voices_dir: PathBuf,
    pub run_dir: PathBuf,
}

/// A partner endpoint registered through the gateway.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub id: String,
    pub path: &'static str,
}

pub struct Stack {
    pub pg: Postgres,
    pub redis: Mutex<Redis>,
    pub processes: Processes,
    pub simulator_knobs: KnobsHandle,
    simulator_signals: Signals,
    pub receiver: Receiver,
    pub codegen: FakeCodegen,
    /// gateway → tts-inference.
    pub tts_link: TcpProxy,
    /// webhook-ingest → audio-generation.
    pub audio_link: TcpProxy,
    pub github_secret: String,
    pub api_key: String,
    pub client: reqwest::Client,
    pub audio_dir: PathBuf,
    pub log_dir: PathBuf,
    pub endpoints: Vec<Endpoint>,
    pub churn: Option<Endpoint>,
    /// The generic source's current secret (rotated during the run).
    pub source_secret: std::sync::Mutex<String>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.simulator_signals.shutdown.cancel();
    }
}

fn pairs(list: &[(&str, String)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

impl Stack {
    pub async fn start(options: &Options) -> anyhow::Result<Self> {
        let log_dir = options.run_dir.join("logs");
        let state_dir = options.run_dir.join("state");
        std::fs::create_dir_all(&log_dir)?;
        std::fs::create_dir_all(&state_dir)?;
        let audio_dir = state_dir.join("audio");
        std::fs::create_dir_all(&audio_dir)?;

        eprintln!("chaos: starting PostgreSQL and Redis of the run's own");
        let pg_dir = state_dir.join("postgres");
        std::fs::create_dir_all(&pg_dir)?;
        let pg = Postgres::start(&pg_dir, &log_dir.join("postgresql.log"))?;
        let redis_dir = state_dir.join("redis");
        std::fs::create_dir_all(&redis_dir)?;
        let redis = Redis::start(&redis_dir, &log_dir.join("redis.log"))?;

        // The outside world, in this process.
        let simulator_signals = Signals::new();
        let simulator_settings = replicate_simulator::Settings::load(&test_support::sources([
            ("HTTP_ADDR", "127.0.0.1:0".to_owned()),
            ("SIMULATOR_GENERATION_DELAY", "1s".to_owned()),
            ("SIMULATOR_WEBHOOK_RETRY_DELAY", "1s".to_owned()),
            ("SIMULATOR_WEBHOOK_ATTEMPTS", "4".to_owned()),
            ("SIMULATOR_MAX_PREDICTIONS", "100000".to_owned()),
            ("SIMULATOR_CREATE_RATE_LIMIT", "0".to_owned()),
            ("LOG_FORMAT", "text".to_owned()),
        ]))
        .context("simulator settings")?;
        let simulator =
            replicate_simulator::Application::build(simulator_settings, simulator_signals.clone())?;
        let simulator_url = simulator.base_url().to_owned();
        let simulator_secret = simulator.webhook_secret().to_owned();
        let simulator_knobs = simulator.knobs();
        tokio::spawn(simulator.stopped());
        let receiver = Receiver::start().await;
        let codegen_token = format!("chaos-codegen-{}", uuid::Uuid::new_v4().simple());
        let codegen = FakeCodegen::start(4242, &codegen_token).await;
        let github_secret = format!("chaos-github-{}", uuid::Uuid::new_v4().simple());

        // Ports, then each instance's settings.
        let mut ports = BTreeMap::new();
        for service in Service::ALL {
            for replica in 1..=service.replicas() {
                let public = matches!(service, Service::Gateway | Service::WebhookIngest);
                ports.insert(
                    Instance { service, replica },
                    Ports {
                        http: if public { Some(free_port()?) } else { None },
                        grpc: if service == Service::Gateway {
                            None
                        } else {
                            Some(free_port()?)
                        },
                        ops: free_port()?,
                    },
                );
            }
        }
        let grpc = |service: Service| {
            format!(
                "http://127.0.0.1:{}",
                ports[&Instance {
                    service,
                    replica: 1
                }]
                    .grpc
                    .expect("a gRPC service")
            )
        };
        let tts_link = TcpProxy::start(
            grpc(Service::TtsInference)
                .trim_start_matches("http://")
                .to_owned(),
        )
        .await?;
        let audio_link = TcpProxy::start(
            grpc(Service::AudioGeneration)
                .trim_start_matches("http://")
                .to_owned(),
        )
        .await?;
        let ingest_public = ports[&Instance {
            service: Service::WebhookIngest,
            replica: 1,
        }]
            .http
            .expect("public port");
        let keys = internal_keys();
        let routing_rules = serde_json::json!([
            {"name": "github-to-partners", "source": "github", "tenant": "chaos", "actions": ["publish"]},
            {"name": "agent-on-label", "source": "github", "event": "issues", "action": "labeled",
             "label": "agent", "actions": ["agent_run"],
             "prompt": "Fix {repository}#{issue.number}: {issue.title}"},
            {"name": "source-to-partners", "source": SOURCE, "tenant": "chaos", "actions": ["publish"]},
        ]);
        let mut env = BTreeMap::new();
        for (&instance, p) in &ports {
            let mut e: Vec<(&str, String)> = vec![
                ("ENVIRONMENT", "development".into()),
                ("LOG_FORMAT", "text".into()),
                // Sonora's own crates at debug, so the secrets check reads every level they log.
                ("RUST_LOG", RUST_LOG.into()),
                ("SHUTDOWN_GRACE_PERIOD", "5s".into()),
                ("INTERNAL_AUTH_TRUSTED_KEYS", keys.trusted().to_owned()),
            ];
            if let Some(http) = p.http {
                e.push(("HTTP_ADDR", format!("127.0.0.1:{http}")));
                e.push(("OPS_ADDR", format!("127.0.0.1:{}", p.ops)));
            } else {
                e.push(("HTTP_ADDR", format!("127.0.0.1:{}", p.ops)));
            }
            if let Some(port) = p.grpc {
                e.push(("GRPC_ADDR", format!("127.0.0.1:{port}")));
            }
            if instance.service != Service::TtsInference {
                e.push(("DATABASE_URL", pg.url()));
            }
            if matches!(
                instance.service,
                Service::Gateway | Service::WebhookIngest | Service::AudioGeneration
            ) {
                e.push((
                    "INTERNAL_AUTH_KEY",
                    keys.signing(instance.service.name()).to_owned(),
                ));
                e.push(("DELIVERY_WORKER_URL", grpc(Service::DeliveryWorker)));
            }
            match instance.service {
                Service::TtsInference => {
                    e.push(("VOICES_DIR", options.voices_dir.display().to_string()));
                    e.push(("TTS_QUEUE_CAPACITY", "32".into()));
                }
                Service::DeliveryWorker => e.extend([
                    (
                        "WEBHOOK_SECRET_ENCRYPTION_KEY",
                        TEST_WEBHOOK_ENCRYPTION_KEY.to_owned(),
                    ),
                    ("WORKER_POLL_INTERVAL", "200ms".into()),
                    ("WEBHOOK_CONNECT_TIMEOUT", "1s".into()),
                    ("WEBHOOK_REQUEST_TIMEOUT", "3s".into()),
                    (
                        "WEBHOOK_RETRY_SCHEDULE",
                        "1s,2s,4s,8s,10s,15s,15s,15s,15s,15s,15s,15s".into(),
                    ),
                    ("WEBHOOK_RETRY_JITTER", "0.2".into()),
                ]),
                Service::AudioGeneration => e.extend([
                    ("AUDIO_STORAGE_PATH", audio_dir.display().to_string()),
                    ("BASE_URL", format!("http://127.0.0.1:{ingest_public}")),
                    ("REPLICATE_API_URL", simulator_url.clone()),
                    (
                        "REPLICATE_API_TOKEN",
                        replicate_simulator::DEVELOPMENT_API_TOKEN.to_owned(),
                    ),
                    ("JOB_POLL_INTERVAL", "200ms".into()),
                    ("WEBHOOK_OVERDUE_AFTER", "15s".into()),
                    ("RECONCILE_INTERVAL", "2s".into()),
                    ("JOB_LEASE", "30s".into()),
                    ("REPLICATE_TIMEOUT", "5s".into()),
                    ("AUDIO_DOWNLOAD_TIMEOUT", "10s".into()),
                ]),
                Service::WebhookIngest => e.extend([
                    ("REDIS_URL", redis.url()),
                    ("GITHUB_WEBHOOK_SECRET", github_secret.clone()),
                    ("REPLICATE_WEBHOOK_SECRET", simulator_secret.clone()),
                    ("REPLICATE_API_URL", simulator_url.clone()),
                    (
                        "REPLICATE_API_TOKEN",
                        replicate_simulator::DEVELOPMENT_API_TOKEN.to_owned(),
                    ),
                    (
                        "WEBHOOK_SECRET_ENCRYPTION_KEY",
                        TEST_WEBHOOK_ENCRYPTION_KEY.to_owned(),
                    ),
                    (
                        "AUDIO_GENERATION_URL",
                        format!("http://127.0.0.1:{}", audio_link.port()),
                    ),
                    ("ROUTING_RULES", routing_rules.to_string()),
                    ("CODEGEN_API_URL", codegen.base.clone()),
                    ("CODEGEN_ORG_ID", codegen.org_id.to_string()),
                    ("CODEGEN_TOKEN", codegen_token.clone()),
                    ("INBOX_POLL_INTERVAL", "200ms".into()),
                    ("INBOX_LEASE", "1m".into()),
                    (
                        "INBOX_RETRY_SCHEDULE",
                        "2s,4s,8s,15s,15s,15s,15s,15s,15s,15s".into(),
                    ),
                    ("WEBHOOK_RATE_LIMIT_PER_IP", "0".into()),
                ]),
                Service::Gateway => e.extend([
                    ("REDIS_URL", redis.url()),
                    (
                        "TTS_INFERENCE_URL",
                        format!("http://127.0.0.1:{}", tts_link.port()),
                    ),
                    ("AUDIO_GENERATION_URL", grpc(Service::AudioGeneration)),
                    ("WEBHOOK_INGEST_URL", grpc(Service::WebhookIngest)),
                    ("RATE_LIMIT_PER_IP", "100000/s,burst=100000".into()),
                    ("USAGE_FLUSH_INTERVAL", "1s".into()),
                ]),
            }
            env.insert(instance, pairs(&e));
        }
        let processes = Processes::new(&options.bin_dir, &log_dir, ports, env);

        // Save the secrets beside the logs (never inside them), so a later check can grep the
        // logs for each of them.
        let secrets = serde_json::json!({
            "database_password": pg.password,
            "github_webhook_secret": github_secret,
            "replicate_webhook_secret": simulator_secret,
            "codegen_token": codegen_token,
            "webhook_secret_encryption_key": TEST_WEBHOOK_ENCRYPTION_KEY,
            "internal_auth_keys": test_support::keys::CALLERS.iter().map(|c| keys.signing(c)).collect::<Vec<_>>(),
        });
        write_private(&options.run_dir.join("secrets.json"), &secrets.to_string())?;

        let client = test_support::http_client();
        // Each service after the ones it calls, so every first call finds its peer.
        for service in [
            Service::TtsInference,
            Service::DeliveryWorker,
            Service::AudioGeneration,
            Service::WebhookIngest,
            Service::Gateway,
        ] {
            for replica in 1..=service.replicas() {
                processes.start(Instance { service, replica })?;
            }
            for replica in 1..=service.replicas() {
                let instance = Instance { service, replica };
                let took = processes
                    .wait_ready(&client, instance, Duration::from_secs(180))
                    .await?;
                eprintln!("chaos: {instance} ready in {:.1}s", took.as_secs_f64());
            }
        }

        let api_key = make_api_key(&options.bin_dir, &pg, &redis, &log_dir)?;
        let mut stack = Self {
            pg,
            redis: Mutex::new(redis),
            processes,
            simulator_knobs,
            simulator_signals,
            receiver,
            codegen,
            tts_link,
            audio_link,
            github_secret,
            api_key,
            client,
            audio_dir,
            log_dir,
            endpoints: Vec::new(),
            churn: None,
            source_secret: std::sync::Mutex::new(String::new()),
        };
        stack.register_partners().await?;
        let mut secrets = secrets;
        secrets["api_key"] = serde_json::json!(stack.api_key);
        secrets["source_secret"] = serde_json::json!(stack.source_secret());
        write_private(&options.run_dir.join("secrets.json"), &secrets.to_string())?;
        Ok(stack)
    }

    pub fn gateway_url(&self, replica: u8) -> String {
        let port = self.processes.ports[&Instance {
            service: Service::Gateway,
            replica,
        }]
            .http
            .expect("public port");
        format!("http://127.0.0.1:{port}")
    }

    pub fn ingest_url(&self, replica: u8) -> String {
        let port = self.processes.ports[&Instance {
            service: Service::WebhookIngest,
            replica,
        }]
            .http
            .expect("public port");
        format!("http://127.0.0.1:{port}")
    }

    pub fn source_secret(&self) -> String {
        self.source_secret.lock().expect("not poisoned").clone()
    }

    /// A request to the gateway replica with the run's key.
    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.gateway_url(1)))
            .header("x-api-key", &self.api_key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or_default()))
    }

    /// The generic source, two steady partner endpoints subscribed to every type the run makes,
    /// and one endpoint the traffic changes as it goes.
    async fn register_partners(&mut self) -> anyhow::Result<()> {
        let (status, source) = self
            .api(
                reqwest::Method::POST,
                "/v1/inbound/sources",
                Some(serde_json::json!({"name": SOURCE})),
            )
            .await?;
        if status != 201 {
            bail!("registering the source: {status} {source}");
        }
        *self.source_secret.lock().expect("not poisoned") = source["secret"]
            .as_str()
            .context("the source's secret")?
            .to_owned();
        for path in STEADY_PATHS {
            let endpoint = self.create_endpoint(path, &STEADY_TYPES).await?;
            self.endpoints.push(endpoint);
        }
        let churn = self
            .create_endpoint(CHURN_PATHS[0], &["audio.sound_effect.completed"])
            .await?;
        self.churn = Some(churn);
        Ok(())
    }

    async fn create_endpoint(
        &self,
        path: &'static str,
        types: &[&str],
    ) -> anyhow::Result<Endpoint> {
        let (status, body) = self
            .api(
                reqwest::Method::POST,
                "/v1/webhook-endpoints",
                Some(serde_json::json!({"url": self.receiver.url(path), "event_types": types})),
            )
            .await?;
        if status != 201 {
            bail!("creating the endpoint {path}: {status} {body}");
        }
        let id = body["id"].as_str().context("the endpoint's id")?.to_owned();
        let (status, secret) = self
            .api(
                reqwest::Method::GET,
                &format!("/v1/webhook-endpoints/{id}/secret"),
                None,
            )
            .await?;
        if status != 200 {
            bail!("reading the endpoint's secret: {status} {secret}");
        }
        let key = secret["key"].as_str().context("the secret")?;
        self.receiver.trust(path, key);
        if CHURN_PATHS.contains(&path) {
            for other in CHURN_PATHS {
                if other != path {
                    self.receiver.trust(other, key);
                }
            }
        }
        Ok(Endpoint { id, path })
    }

    /// Every file stored under the audio folder, relative to it.
    pub fn stored_files(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<PathBuf>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for entry in entries.filter_map(Result::ok) {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, base, out);
                } else if let Ok(rel) = path.strip_prefix(base) {
                    out.push(rel.to_owned());
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.audio_dir, &self.audio_dir, &mut out);
        out
    }
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// The run's API key of the tenant `chaos`, every scope, made with the gateway's own key tool.
fn make_api_key(
    bin_dir: &Path,
    pg: &Postgres,
    redis: &Redis,
    log_dir: &Path,
) -> anyhow::Result<String> {
    let out = std::process::Command::new(bin_dir.join("gateway"))
        .args([
            "keys", "create", "--tenant", "chaos", "--prefix", "cw_test_",
        ])
        .args([
            "--scopes",
            "tts audio webhooks usage admin",
            "--plan",
            "enterprise",
        ])
        .args(["--name-prefix", "Chaos run key"])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DATABASE_URL", pg.url())
        .env("REDIS_URL", redis.url())
        .env("LOG_FORMAT", "text")
        .output()
        .context("gateway keys create")?;
    std::fs::write(log_dir.join("gateway-keys.log"), &out.stderr)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let key = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix("Full Key: "))
        .map(str::to_owned);
    match key {
        Some(key) if out.status.success() => Ok(key),
        _ => bail!(
            "the gateway's key tool made no key ({}); see {}",
            out.status,
            log_dir.join("gateway-keys.log").display()
        ),
    }
}
