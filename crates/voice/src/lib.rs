//! Piper-compatible neural voices (VITS), run on the CPU with candle.
//!
//! A Piper voice is an `.onnx` file (the weights) with an `.onnx.json` beside it (sample rate,
//! phoneme map, speakers, default scales). This crate reads the weights straight out of the ONNX
//! protobuf in pure Rust ([`Weights`]), parses the configuration ([`VoiceConfig`]), and runs the
//! VITS inference itself ([`model::Vits`]): the ONNX graph is never executed.
//!
//! # Equivalence with Piper's ONNX model
//!
//! `tests/it/equivalence.rs` runs each stage on the reference's own input for that stage and
//! compares it with onnxruntime running the same `.onnx` file (noise off: `noise_scale = noise_w =
//! 0`, `length_scale = 1`). Reference tensors are made at test time by
//! `tests/reference/make_reference.py`. Largest absolute differences allowed, and measured for
//! `en_US-joe-medium` on a 105-id sentence and a 5-id one:
//!
//! | stage | output | allowed | measured |
//! | --- | --- | --- | --- |
//! | text encoder | `x`, `m_p`, `logs_p` | 5e-5 | 5.2e-6 |
//! | duration predictor (`noise_w = 0`) | `logw` | 1e-4 | 4.7e-6, and identical frame counts |
//! | length regulation | expanded prior `z_p` | exact | 0 |
//! | coupling flows (reverse) | `z` | 2e-4 | 4.2e-5 |
//! | decoder (on the chain's `z` and on a random `z`) | audio | 1e-5 | 8.0e-7 |
//! | all stages, ids to audio | audio | 1e-4 | 1.1e-5 |
//!
//! # Limits
//!
//! - Batch size 1, one sentence at a time, no padding masks (Piper synthesises that way too).
//! - Hyper-parameters that the weights do not reveal are Piper's: 2 attention heads, window 4,
//!   spline with 10 bins and tail bound 5, upsampling stride = kernel / 2, `ResBlock2` dilations
//!   chosen by kernel size (3 → 1,2; 5 → 2,6; 7 → 3,12), `ResBlock1` dilations 1,3,5.
//! - Only `en_US-joe-medium` is installed here. The decoder shape of Piper's high quality voices
//!   (`ResBlock1`, four upsamplers) is tested against its direct definition in candle's own
//!   operators, with random weights (`model::tests`).
//! - Multi-speaker conditioning (`emb_g`, `dp.cond`, the flows' `cond_layer`, `dec.cond`) is
//!   tested on the default voice given synthetic speaker layers (`tests/it/speakers.rs`: zero
//!   layers must leave the audio unchanged, random ones must tell speakers apart), not against a
//!   reference: no multi-speaker voice is installed here.
//!
//! The crate does no network IO. It reads voice files, and it starts `espeak-ng` as a separate
//! process for phonemes (espeak-ng is GPL, so it is never linked).

pub mod config;
mod fused;
mod kernels;
pub mod model;
pub mod phonemes;
pub mod process;
pub mod script;
mod spline;
pub mod ssml;
mod synth;
pub mod text;
pub mod weights;

use std::path::PathBuf;

pub use config::VoiceConfig;
pub use model::{Encoded, Latent, Plan, Scales, Vits};
pub use phonemes::{Phonemized, Phonemizer, WordPhonemes, phoneme_id_starts, phoneme_ids};
pub use process::{prepare_process, release_free_memory};

pub use synth::{Chunk, FIRST_WINDOW_FRAMES, Limits, PHONEME_BATCH_CHARS, Part, Step, Voice, Word};
pub use weights::Weights;

/// Threads a synthesis spreads its convolutions over: the size of rayon's global pool, which is
/// `RAYON_NUM_THREADS` when set and otherwise the cores this process may use.
pub fn inference_threads() -> usize {
    rayon::current_num_threads()
}

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
    /// espeak-ng could not be run or gave no usable answer.
    #[error("phonemisation failed: {0}")]
    Phonemizer(String),
    /// The text cannot be spoken by this voice.
    #[error("text: {0}")]
    Text(#[from] text::TextError),
    /// A piece of the text has more phonemes than the limit allows.
    #[error("a piece of the text has {phonemes} phonemes; the limit is {limit} a piece")]
    TooManyPhonemes {
        /// The piece's phonemes.
        phonemes: usize,
        /// The limit.
        limit: usize,
    },
    /// The text would make more audio than the limit allows.
    #[error("the text makes more than {limit} s of audio")]
    TooMuchAudio {
        /// The limit, in seconds.
        limit: f64,
    },
    /// A tensor computation failed (usually a shape mismatch: a voice of another architecture).
    #[error("tensor computation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}
