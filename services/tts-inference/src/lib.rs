//! `tts-inference`: Piper-compatible neural voices behind gRPC: the voice catalogue
//! (`ListVoices`) from the voices directory, and speech (`Synthesize`) on a pool of workers.
//! It is ready once the default voice is loaded.

pub mod catalogue;
mod grpc;
pub mod synthesis;

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use internal_rpc::{Access, InternalAuthSettings, Policy, Scope};
use lifecycle::{
    Readiness, Signals,
    cli::ServiceMain,
    grpc::{GrpcApp, GrpcAppConfig},
};
use settings::{CommonSettings, SettingError, Sources};
use sonora_proto::tts::v1::{SERVICE, tts_inference_server::TtsInferenceServer};
use telemetry::metrics::Metrics;

/// Tunes the process for synthesis, as this service's `main` does first of all; a program that
/// runs the service in its own process (a benchmark) calls it the same way, before it starts any
/// thread. See [`voice::prepare_process`].
pub use voice::prepare_process;

pub const NAME: &str = "tts-inference";

/// Everything `tts-inference` can be configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub common: CommonSettings,
    /// The keys of the services allowed to call this one.
    pub internal_auth: InternalAuthSettings,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// Where Piper voices (`<id>.onnx` + `<id>.onnx.json`) are installed.
    pub voices_dir: PathBuf,
    /// The voice used when a request names none; the service is ready once it is loaded.
    pub default_voice: String,
    /// Requests synthesised at once (`TTS_WORKERS`, default: twice [`voice::inference_threads`],
    /// the threads one synthesis spreads over). Each request's convolutions already spread over every core, so more workers than
    /// cores do not add throughput; they let a request that arrives behind a long one start at
    /// once, sharing the cores, instead of waiting for it to finish (docs/benchmarks.md).
    pub workers: usize,
    /// Requests that may wait for a thread before new ones are refused (`TTS_QUEUE_CAPACITY`).
    pub queue_capacity: usize,
    /// What one request may cost: phonemes per piece (`TTS_MAX_PHONEMES_PER_PIECE`) and seconds
    /// of audio (`TTS_MAX_AUDIO_SECONDS`); see [`voice::Limits`].
    pub limits: voice::Limits,
}

impl Settings {
    pub fn load(src: &Sources) -> Result<Self, SettingError> {
        let default_voice: String = src.or("DEFAULT_VOICE", "en_US-joe-medium".to_owned())?;
        if default_voice.contains(['/', '\\']) || default_voice.starts_with('.') {
            return Err(SettingError::new(
                "DEFAULT_VOICE",
                "must be a voice id, not a path",
            ));
        }
        Ok(Self {
            common: CommonSettings::load(src, NAME)?,
            internal_auth: InternalAuthSettings::load(src, NAME)?,
            grpc_addr: src.or("GRPC_ADDR", ([0, 0, 0, 0], 50051).into())?,
            http_addr: src.or("HTTP_ADDR", ([0, 0, 0, 0], 9101).into())?,
            voices_dir: src.or("VOICES_DIR", PathBuf::from("/var/lib/sonora/voices"))?,
            default_voice,
            workers: bounded(
                "TTS_WORKERS",
                src.or("TTS_WORKERS", (2 * voice::inference_threads()).min(1024))?,
            )?,
            queue_capacity: bounded("TTS_QUEUE_CAPACITY", src.or("TTS_QUEUE_CAPACITY", 8usize)?)?,
            limits: voice::Limits {
                max_phonemes_per_piece: within(
                    "TTS_MAX_PHONEMES_PER_PIECE",
                    src.or(
                        "TTS_MAX_PHONEMES_PER_PIECE",
                        voice::Limits::DEFAULT.max_phonemes_per_piece,
                    )?,
                    MAX_PHONEMES_PER_PIECE,
                )?,
                max_audio_seconds: within(
                    "TTS_MAX_AUDIO_SECONDS",
                    src.or(
                        "TTS_MAX_AUDIO_SECONDS",
                        voice::Limits::DEFAULT.max_audio_seconds as usize,
                    )?,
                    MAX_AUDIO_SECONDS,
                )? as f64,
            },
        })
    }
}

/// Who may call which method: the gateway, for its clients (`tts` scope) or for itself (the
/// voice catalogue).
pub fn policy() -> Policy {
    const GATEWAY: &[&str] = &["gateway"];
    Policy::new()
        .allow(
            SERVICE,
            "ListVoices",
            GATEWAY,
            Access::ServiceOrClient(Scope::Tts),
        )
        .allow(
            SERVICE,
            "Synthesize",
            GATEWAY,
            Access::ServiceOrClient(Scope::Tts),
        )
}

/// The highest `TTS_MAX_PHONEMES_PER_PIECE` allowed: a piece's memory grows with its phonemes
/// (the text encoder's with their square, the flows' with the frames they last), and at the
/// default 1,000 the worst piece found adds about 250 MB (docs/deployment.md).
pub const MAX_PHONEMES_PER_PIECE: usize = 2000;
/// The highest `TTS_MAX_AUDIO_SECONDS` allowed (an hour).
pub const MAX_AUDIO_SECONDS: usize = 3600;

fn within(name: &str, value: usize, max: usize) -> Result<usize, SettingError> {
    if (1..=max).contains(&value) {
        Ok(value)
    } else {
        Err(SettingError::new(
            name,
            format!("must be between 1 and {max}"),
        ))
    }
}

fn bounded(name: &str, value: usize) -> Result<usize, SettingError> {
    if (1..=1024).contains(&value) {
        Ok(value)
    } else {
        Err(SettingError::new(name, "must be between 1 and 1024"))
    }
}

/// The process entry point's description of this service.
pub fn service() -> ServiceMain<Settings> {
    ServiceMain {
        name: NAME,
        about: "Piper-compatible neural text-to-speech over gRPC",
        load: Settings::load,
        common: |s| &s.common,
        serve_check: |s| s.internal_auth.require(false, true),
        commands: Vec::new(),
        serve: |settings, signals| {
            Box::pin(async move { Application::build(settings, signals)?.stopped().await })
        },
    }
}

/// The running service.
pub struct Application {
    app: GrpcApp,
}

impl Application {
    /// Binds its ports and starts serving; port 0 in the settings picks free ports.
    pub fn build(settings: Settings, signals: Signals) -> anyhow::Result<Self> {
        let voices_dir = Arc::new(settings.voices_dir.clone());
        let default_voice: Arc<str> = settings.default_voice.clone().into();

        let metrics = Metrics::new();
        let synthesis_metrics = synthesis::SynthesisMetrics::register(metrics.registry());
        let voices = Arc::new(synthesis::Voices::new(
            settings.voices_dir.clone(),
            synthesis_metrics.model_loaded_gauge(),
        ));
        let pool = Arc::new(synthesis::InferencePool::new(
            settings.workers,
            settings.queue_capacity,
            synthesis_metrics.queue_depth_gauge(),
        ));
        // Load the default voice now, off the executor; until it is in memory, not ready.
        {
            let (voices, id) = (Arc::clone(&voices), Arc::clone(&default_voice));
            std::thread::spawn(move || voices.get(&id));
        }
        let readiness = {
            let (dir, id, voices) = (
                Arc::clone(&voices_dir),
                Arc::clone(&default_voice),
                Arc::clone(&voices),
            );
            Readiness::builder()
                .check("voice", move || {
                    let (dir, id, voices) =
                        (Arc::clone(&dir), Arc::clone(&id), Arc::clone(&voices));
                    async move {
                        // Files first: a voice that is not installed says so plainly.
                        catalogue::load_voice(&dir, &id).map_err(|e| e.to_string())?;
                        if voices.loaded(&id).is_err() {
                            // Installed after start-up (or a failed load): try again, off the executor.
                            let (voices, id) = (Arc::clone(&voices), Arc::clone(&id));
                            tokio::task::spawn_blocking(move || voices.get(&id).map(|_| ()))
                                .await
                                .map_err(|e| e.to_string())??;
                        }
                        Ok::<_, String>(())
                    }
                })
                .timeout(std::time::Duration::from_secs(10))
                .build()
        };

        let routes = tonic::service::Routes::new(TtsInferenceServer::new(grpc::TtsService {
            voices_dir,
            default_voice,
            voices,
            pool,
            metrics: synthesis_metrics,
            limits: settings.limits,
        }));
        let app = GrpcApp::start(
            GrpcAppConfig {
                grpc_addr: settings.grpc_addr,
                http_addr: settings.http_addr,
                service_names: vec!["sonora.tts.v1.TtsInference"],
                readiness,
                metrics,
                shutdown: signals.shutdown.clone(),
                grace: settings.common.shutdown_grace_period,
                guard: settings.internal_auth.guard(policy())?,
            },
            routes,
        )?;
        Ok(Self { app })
    }

    pub fn grpc_port(&self) -> u16 {
        self.app.grpc_port()
    }

    pub fn http_port(&self) -> u16 {
        self.app.http_port()
    }

    /// Resolves once shutdown was requested and the servers have drained.
    pub async fn stopped(self) -> anyhow::Result<()> {
        Ok(self.app.stopped().await?)
    }
}
