//! A real S3-compatible server on loopback: moto in server mode, one process per [`S3Server`],
//! with a fresh bucket, killed when the value is dropped.
//!
//! moto is a Python package, installed by `scripts/test` into a venv outside the repository
//! (`${XDG_CACHE_HOME:-~/.cache}/sonora-tools/moto-venv`), so the tests need no Rust build of an S3
//! server. `TEST_MOTO_SERVER` names another `moto_server` binary. moto accepts any access key,
//! but requests must still be signed, as AWS wants them.

use std::{
    net::{Ipv4Addr, TcpListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

/// The moto release `scripts/test` installs; keep the two the same.
pub const MOTO_VERSION: &str = "5.2.5";

/// A running moto server with one empty bucket.
pub struct S3Server {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret: String,
    child: Option<Child>,
    log: PathBuf,
}

impl S3Server {
    /// Starts moto on a free loopback port, waits until it answers and creates a bucket. Panics
    /// with the command that installs moto when it is not installed.
    pub async fn start() -> Self {
        let binary = moto_server_binary();
        // A port picked free can be taken before moto binds it; another try takes another port.
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Self::spawn(&binary).await {
                Ok(mut server) => {
                    server.create_bucket().await;
                    return server;
                }
                Err(problem) => failures.push(problem),
            }
        }
        panic!("moto did not start:\n{}", failures.join("\n"));
    }

    async fn spawn(binary: &PathBuf) -> Result<Self, String> {
        let port = free_port();
        let id = uuid::Uuid::new_v4().simple().to_string();
        let log = std::env::temp_dir().join(format!("sonora-moto-{id}.log"));
        let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let child = Command::new(binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
        let mut server = Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: format!("sonora-test-{id}"),
            access_key: "sonora-test-access-key".to_owned(),
            secret: format!("sonora-test-secret-{id}"),
            child: Some(child),
            log,
        };
        server.wait_until_it_answers().await?;
        Ok(server)
    }

    async fn wait_until_it_answers(&mut self) -> Result<(), String> {
        let client = crate::http_client();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(Some(status)) = self.child.as_mut().map(|c| c.try_wait().ok().flatten()) {
                return Err(format!("moto exited ({status}): {}", self.log_text()));
            }
            if client.get(&self.endpoint).send().await.is_ok() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "moto did not answer within 60 s: {}",
                    self.log_text()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// moto leaves unsigned bucket creation open, which keeps this free of a signing client.
    async fn create_bucket(&mut self) {
        let url = format!("{}/{}", self.endpoint, self.bucket);
        let response = crate::http_client()
            .put(&url)
            .send()
            .await
            .expect("moto answers");
        assert!(
            response.status().is_success(),
            "moto refused to create the bucket: {}",
            response.text().await.unwrap_or_default()
        );
    }

    /// The settings that point audio storage at this bucket, under `prefix`.
    pub fn storage_settings(&self, prefix: &str) -> Vec<(&'static str, String)> {
        vec![
            (
                "AUDIO_STORAGE_URL",
                format!("s3://{}/{prefix}", self.bucket),
            ),
            ("AUDIO_STORAGE_S3_ENDPOINT", self.endpoint.clone()),
            ("AUDIO_STORAGE_S3_ALLOW_HTTP", "true".to_owned()),
            ("AUDIO_STORAGE_S3_ACCESS_KEY_ID", self.access_key.clone()),
            ("AUDIO_STORAGE_S3_SECRET_ACCESS_KEY", self.secret.clone()),
        ]
    }

    /// Kills the server, as if the bucket's service went away.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// `TEST_MOTO_SERVER`, else the venv `scripts/test` installs.
fn moto_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TEST_MOTO_SERVER").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    let venv = tools_dir().join("moto-venv");
    let binary = venv.join("bin/moto_server");
    assert!(
        binary.is_file(),
        "moto, the S3 server these tests start, is not installed at {}. Install it with\n  \
         python3 -m venv {venv} && {venv}/bin/pip install 'moto[server]=={MOTO_VERSION}'\n\
         (scripts/test does this), or set TEST_MOTO_SERVER to a moto_server binary.",
        binary.display(),
        venv = venv.display(),
    );
    binary
}

/// `SONORA_TOOLS_DIR`, else `${XDG_CACHE_HOME:-$HOME/.cache}/sonora-tools`, as the scripts use.
fn tools_dir() -> PathBuf {
    let non_empty = |name| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = non_empty("SONORA_TOOLS_DIR") {
        return PathBuf::from(dir);
    }
    let cache = non_empty("XDG_CACHE_HOME").map_or_else(
        || PathBuf::from(non_empty("HOME").unwrap_or_default()).join(".cache"),
        PathBuf::from,
    );
    cache.join("sonora-tools")
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}
