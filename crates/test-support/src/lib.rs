//! Helpers for the services' integration tests: fresh databases, the shared Redis, a TCP proxy
//! that can cut a dependency off and bring it back, an in-process OTLP receiver, an S3-compatible
//! server (moto) with a fresh bucket, a partner's webhook receiver, a fake of the code-generation
//! API, and polling.
//!
//! Tests talk to the real PostgreSQL and Redis that `scripts/test` starts on loopback; their
//! addresses come from `TEST_DATABASE_URL` and `TEST_REDIS_URL` when set.

pub mod codegen;
pub mod keys;
pub mod otlp;
pub mod proxy;
pub mod receiver;
pub mod s3;

pub use keys::internal_keys;

use std::{future::Future, time::Duration};

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use settings::Sources;

/// The PostgreSQL server tests use: an URL whose user may create databases.
pub fn postgres_admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| {
        "postgres://sonora:sonora-dev-password@127.0.0.1:5432/postgres".to_owned()
    })
}

/// The Redis server tests use.
pub fn redis_url() -> String {
    // Database 15, not the development stack's 0.
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/15".to_owned())
}

/// A database made for one test, so tests run in parallel without seeing each other's rows.
/// `scripts/test` drops the ones left by earlier runs.
#[derive(Debug, Clone)]
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    /// Creates an empty database named `sonora_test_<random>`.
    pub async fn create() -> anyhow::Result<Self> {
        let admin = postgres_admin_url();
        let name = format!("sonora_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = AsyncPgConnection::establish(&admin).await?;
        conn.batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        let mut url = url::Url::parse(&admin)?;
        url.set_path(&name);
        Ok(Self {
            name,
            url: url.to_string(),
        })
    }

    /// The same database reached through another host and port (a [`proxy::TcpProxy`]).
    pub fn url_via(&self, port: u16) -> String {
        let mut url = url::Url::parse(&self.url).expect("valid URL");
        url.set_host(Some("127.0.0.1")).expect("valid host");
        url.set_port(Some(port)).expect("valid port");
        url.to_string()
    }
}

/// The host and port of a `scheme://host:port/...` URL, for pointing a proxy at it.
pub fn host_port(url: &str) -> String {
    let url = url::Url::parse(url).expect("valid URL");
    format!(
        "{}:{}",
        url.host_str().expect("URL has a host"),
        url.port_or_known_default().expect("URL has a port")
    )
}

/// Settings for a service under test: loopback addresses on port 0, text logs, a short grace
/// period, and the test process's internal-auth keys (every calling service trusted); `pairs`
/// add to or override them. A calling service also needs its `INTERNAL_AUTH_KEY`
/// ([`keys::InternalKeys::signing`]).
pub fn sources<'a>(pairs: impl IntoIterator<Item = (&'a str, String)>) -> Sources {
    let mut src = Sources::from_pairs([
        ("HTTP_ADDR", "127.0.0.1:0"),
        ("GRPC_ADDR", "127.0.0.1:0"),
        ("OPS_ADDR", "127.0.0.1:0"),
        ("LOG_FORMAT", "text"),
        ("SHUTDOWN_GRACE_PERIOD", "5s"),
        ("INTERNAL_AUTH_TRUSTED_KEYS", internal_keys().trusted()),
    ])
    .expect("no settings file");
    for (key, value) in pairs {
        src.set(key, value);
    }
    src
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An HTTP client for tests, with a timeout so a hung server fails the test instead of hanging it.
pub fn http_client() -> reqwest::Client {
    client_builder().build().expect("client builds")
}

/// A client that opens a new connection for every request, for checking whether a server still
/// accepts connections.
pub fn fresh_http_client() -> reqwest::Client {
    client_builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client builds")
}

fn client_builder() -> reqwest::ClientBuilder {
    // The workspace builds reqwest with rustls and no default crypto provider: ring is ours.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().timeout(Duration::from_secs(30))
}

/// GETs `url` and returns the status and the body parsed as JSON (`Null` when it is not JSON).
pub async fn get_json(url: &str) -> anyhow::Result<(u16, serde_json::Value)> {
    let response = http_client().get(url).send().await?;
    let status = response.status().as_u16();
    let body = response.text().await?;
    Ok((
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    ))
}

/// Where the set-up installed the default voice (`TEST_VOICES_DIR`, or the set-up's cache).
pub fn voices_dir() -> std::path::PathBuf {
    std::env::var_os("TEST_VOICES_DIR").map_or_else(
        || {
            let home = std::env::var_os("HOME").unwrap_or_default();
            std::path::PathBuf::from(home).join(".cache/sonora/voices")
        },
        std::path::PathBuf::from,
    )
}

/// What a finished process left behind.
#[derive(Debug)]
pub struct RunOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs a program with exactly `env` as its environment (plus nothing inherited) and waits for it;
/// for checking how a service binary refuses bad settings, or running a one-off command.
pub fn run_binary(path: &str, args: &[&str], env: &[(&str, &str)]) -> RunOutput {
    let output = std::process::Command::new(path)
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("the binary runs");
    RunOutput {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The overall status of a gRPC server's standard health service, or `None` when it cannot be
/// reached.
pub async fn grpc_health(
    port: u16,
) -> Option<tonic_health::pb::health_check_response::ServingStatus> {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .ok()?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .ok()?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()?;
    Some(response.into_inner().status())
}

/// Polls `GET {base}/ready` until it answers `status`, and returns the body.
pub async fn wait_ready(base: &str, status: u16) -> serde_json::Value {
    let url = format!("{base}/ready");
    eventually(
        Duration::from_secs(30),
        &format!("{url} to answer {status}"),
        || async {
            match get_json(&url).await {
                Ok((s, body)) if s == status => Some(body),
                _ => None,
            }
        },
    )
    .await
}

/// Checks `/health`, `/ready` (200, with `components` all up) and `/metrics` of a service.
pub async fn assert_operational(base: &str, components: &[&str]) {
    let (status, body) = get_json(&format!("{base}/health"))
        .await
        .expect("/health answers");
    assert_eq!(status, 200, "{body}");
    assert!(
        matches!(body["status"].as_str(), Some("healthy" | "degraded")),
        "{body}"
    );
    // 200 comes as soon as the required components are up; wait for the others too.
    let url = format!("{base}/ready");
    let body = eventually(Duration::from_secs(30), "every component up", || async {
        let (status, body) = get_json(&url).await.ok()?;
        (status == 200 && body["status"] == "ready").then_some(body)
    })
    .await;
    let names: Vec<&str> = body["components"]
        .as_object()
        .expect("components")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(names, components, "{body}");
    let response = http_client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("/metrics answers");
    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await.expect("text");
    assert!(
        text.contains("# TYPE http_requests_total counter"),
        "{text}"
    );
    assert!(text.contains("route=\"/health\""), "{text}");
}

/// A fixed key for `WEBHOOK_SECRET_ENCRYPTION_KEY` in tests only (base64 of 32 ASCII bytes that
/// say so). Never use it anywhere else.
pub const TEST_WEBHOOK_ENCRYPTION_KEY: &str = "dGVzdC1vbmx5LWtleS1uZXZlci1pbi1wcm9kdWN0biE=";
