//! Piper-compatible neural voices (VITS), run on the CPU with candle.
//!
//! A Piper voice is an `.onnx` file (the weights) with an `.onnx.json` beside it (sample rate,
//! phoneme map, speakers, default scales). This crate reads the weights straight out of the ONNX
//! protobuf in pure Rust ([`Weights`]), parses the configuration ([`VoiceConfig`]), and runs the
//! VITS inference itself ([`model::Vits`]): the ONNX graph is never executed.
//!
//! The crate does no network IO. It reads voice files, and it starts `espeak-ng` as a separate
//! process for phonemes (espeak-ng is GPL, so it is never linked).

pub mod config;
pub mod weights;

use std::path::PathBuf;

pub use config::VoiceConfig;
pub use weights::Weights;

/// Everything that can go wrong while loading or running a voice.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A voice file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The `.onnx` file is not a valid protobuf model.
    #[error("the voice model is not valid ONNX: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The files are readable but do not hold what a Piper voice holds.
    #[error("the voice is malformed: {0}")]
    Format(String),
    /// A tensor the model needs is absent.
    #[error("the voice model lacks the tensor {0}")]
    MissingTensor(String),
    /// A tensor computation failed (usually a shape mismatch: a voice of another architecture).
    #[error("tensor computation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}
