//! The services as separate OS processes (the real binaries), each with its settings, its log
//! file, and a way to kill it with SIGKILL and start it again on the same ports.

use std::{
    collections::BTreeMap,
    fs::OpenOptions,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::Context as _;

/// One of Sonora's five services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Service {
    TtsInference,
    DeliveryWorker,
    AudioGeneration,
    WebhookIngest,
    Gateway,
}

impl Service {
    pub const ALL: [Service; 5] = [
        Self::TtsInference,
        Self::DeliveryWorker,
        Self::AudioGeneration,
        Self::WebhookIngest,
        Self::Gateway,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::TtsInference => "tts-inference",
            Self::DeliveryWorker => "delivery-worker",
            Self::AudioGeneration => "audio-generation",
            Self::WebhookIngest => "webhook-ingest",
            Self::Gateway => "gateway",
        }
    }

    /// How many replicas the run keeps: two of those that scale out by sharing their work
    /// through PostgreSQL, one of the others.
    pub fn replicas(self) -> u8 {
        match self {
            Self::Gateway | Self::DeliveryWorker | Self::WebhookIngest => 2,
            Self::TtsInference | Self::AudioGeneration => 1,
        }
    }
}

/// One running copy of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instance {
    pub service: Service,
    /// 1 or 2.
    pub replica: u8,
}

impl std::fmt::Display for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.service.replicas() > 1 {
            write!(f, "{}#{}", self.service.name(), self.replica)
        } else {
            f.write_str(self.service.name())
        }
    }
}

/// The ports of one instance.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// The public HTTP port (gateway, webhook-ingest), else none.
    pub http: Option<u16>,
    /// The gRPC port (every service but the gateway).
    pub grpc: Option<u16>,
    /// `/health`, `/ready`, `/metrics`.
    pub ops: u16,
}

struct Running {
    child: Option<Child>,
}

/// Every instance: its binary, settings, log file and process.
pub struct Processes {
    bin_dir: PathBuf,
    log_dir: PathBuf,
    pub ports: BTreeMap<Instance, Ports>,
    env: BTreeMap<Instance, Vec<(String, String)>>,
    running: Mutex<BTreeMap<Instance, Running>>,
}

impl Processes {
    pub fn new(
        bin_dir: &Path,
        log_dir: &Path,
        ports: BTreeMap<Instance, Ports>,
        env: BTreeMap<Instance, Vec<(String, String)>>,
    ) -> Self {
        Self {
            bin_dir: bin_dir.to_owned(),
            log_dir: log_dir.to_owned(),
            ports,
            env,
            running: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn instances(&self) -> Vec<Instance> {
        self.ports.keys().copied().collect()
    }

    pub fn log_file(&self, instance: Instance) -> PathBuf {
        self.log_dir
            .join(format!("{}.log", instance.to_string().replace('#', "-")))
    }

    /// Starts the instance's binary with exactly its settings (nothing inherited but `PATH` and
    /// `HOME`), its output appended to its log.
    pub fn start(&self, instance: Instance) -> anyhow::Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file(instance))?;
        let binary = self.bin_dir.join(instance.service.name());
        let child = Command::new(&binary)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", std::env::var_os("HOME").unwrap_or_default())
            .envs(self.env[&instance].iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        self.running
            .lock()
            .expect("not poisoned")
            .insert(instance, Running { child: Some(child) });
        Ok(())
    }

    /// SIGKILL: no drain, no goodbye, as when a node dies.
    pub fn kill9(&self, instance: Instance) {
        let mut running = self.running.lock().expect("not poisoned");
        if let Some(r) = running.get_mut(&instance)
            && let Some(mut child) = r.child.take()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM to every instance, then SIGKILL to any still running after `grace`.
    pub fn stop_all(&self, grace: Duration) {
        let mut running = self.running.lock().expect("not poisoned");
        for r in running.values() {
            if let Some(child) = &r.child {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
            }
        }
        let deadline = Instant::now() + grace;
        for r in running.values_mut() {
            if let Some(mut child) = r.child.take() {
                while Instant::now() < deadline {
                    if matches!(child.try_wait(), Ok(Some(_))) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Whether the instance's process has exited by itself (a crash), with its status.
    pub fn exited(&self, instance: Instance) -> Option<String> {
        let mut running = self.running.lock().expect("not poisoned");
        let r = running.get_mut(&instance)?;
        let child = r.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            _ => None,
        }
    }

    pub fn pid(&self, instance: Instance) -> Option<u32> {
        let running = self.running.lock().expect("not poisoned");
        running.get(&instance)?.child.as_ref().map(Child::id)
    }

    /// The resident memory of the instance's process, in KiB (`VmRSS`).
    pub fn rss_kib(&self, instance: Instance) -> Option<u64> {
        let pid = self.pid(instance)?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    pub fn ready_url(&self, instance: Instance) -> String {
        format!("http://127.0.0.1:{}/ready", self.ports[&instance].ops)
    }

    /// Waits until the instance answers 200 on `/ready`; returns how long that took.
    pub async fn wait_ready(
        &self,
        client: &reqwest::Client,
        instance: Instance,
        limit: Duration,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let url = self.ready_url(instance);
        loop {
            if let Ok(r) = client
                .get(&url)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                && r.status().as_u16() == 200
            {
                return Ok(started.elapsed());
            }
            if let Some(status) = self.exited(instance) {
                anyhow::bail!(
                    "{instance} exited ({status}); see {}",
                    self.log_file(instance).display()
                );
            }
            if started.elapsed() > limit {
                anyhow::bail!("{instance} was not ready after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        let mut running = self.running.lock().expect("not poisoned");
        for r in running.values_mut() {
            if let Some(mut child) = r.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
