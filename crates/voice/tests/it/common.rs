//! Finding the test voice and its reference tensors.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
};

use candle_core::{Device, Tensor};
use voice::{Vits, VoiceConfig, Weights};

pub const VOICE: &str = "en_US-joe-medium";

fn home() -> PathBuf {
    PathBuf::from(std::env::var_os("HOME").expect("HOME is set"))
}

pub fn voices_dir() -> PathBuf {
    std::env::var_os("TEST_VOICES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cache/sonora/voices"))
}

pub fn model_path() -> PathBuf {
    let path = voices_dir().join(format!("{VOICE}.onnx"));
    assert!(
        path.is_file(),
        "the test voice {} is missing: run scripts/lib/setup.sh or set TEST_VOICES_DIR",
        path.display()
    );
    path
}

pub fn config() -> VoiceConfig {
    VoiceConfig::from_file(&voices_dir().join(format!("{VOICE}.onnx.json"))).expect("config")
}

pub fn weights() -> &'static Weights {
    static WEIGHTS: OnceLock<Weights> = OnceLock::new();
    WEIGHTS.get_or_init(|| Weights::from_onnx_file(&model_path(), &Device::Cpu).expect("weights"))
}

pub fn model() -> &'static Vits {
    static MODEL: OnceLock<Vits> = OnceLock::new();
    MODEL.get_or_init(|| Vits::load(weights(), &Device::Cpu).expect("model"))
}

/// The folder of reference tensors, made once per model file (keyed by its size).
pub fn reference_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let model = model_path();
        let len = std::fs::metadata(&model).expect("model metadata").len();
        let dir = home()
            .join(".cache/sonora-tools/voice-ref-data")
            .join(format!("{VOICE}-{len}"));
        if !dir.join("DONE").is_file() {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/setup.sh");
            let status = Command::new("bash")
                .arg(script)
                .arg(&model)
                .arg(&dir)
                .status()
                .expect("run tests/reference/setup.sh");
            assert!(status.success(), "making the reference tensors failed");
        }
        dir
    })
}

pub fn reference(case: &str, name: &str) -> Tensor {
    let path = reference_dir().join(case).join(format!("{name}.npy"));
    Tensor::read_npy(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The largest absolute difference between two tensors of the same shape.
/// The largest absolute difference between two sample sequences, compared up to the shorter.
pub fn largest_difference(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("difference")
}
