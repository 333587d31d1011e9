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

pub use synth::{Chunk, FIRST_WINDOW_FRAMES, Limits, PHONEME_BATCH_CHARS, Part, Step, Voice, Word};
pub use weights::Weights;

/// The environment variable that sizes candle's own pool of threads for element-wise operations.
pub const CANDLE_THREADS_VARIABLE: &str = "CANDLE_NUM_THREADS";

/// glibc's allocator hands out blocks of at least this size with `mmap` (and gives them back
/// with `munmap`); see [`prepare_process`].
pub const MMAP_THRESHOLD: usize = 64 << 20;
/// glibc gives the free memory at the top of an arena back to the system past this size.
pub const TRIM_THRESHOLD: usize = 128 << 20;

/// Tunes the process for synthesis. Call it first thing in the `main` of a program that
/// synthesises.
///
/// - candle's element-wise operations stay on the calling thread (`CANDLE_NUM_THREADS=1`,
///   unless the environment says otherwise). candle runs an operation of 64K values or more
///   on a pool of its own, apart from rayon's, whose idle threads then spin for about 25,000
///   rounds before they sleep. The voice's parallel work (the decoder's kernels, and candle's
///   matrix products) is on rayon, so on a small machine the spinning takes a core from the
///   next product: on a 2-core AMD EPYC with 2 threads, the flows took 45 to 50 ms on a 3.6 s
///   sentence with candle's pool and 32 to 38 ms without it.
/// - With glibc, blocks under [`MMAP_THRESHOLD`] come from the heap, and up to
///   [`TRIM_THRESHOLD`] of free memory stays in it. Each decoder layer allocates its output,
///   megabytes at a time; by default glibc maps such blocks afresh and unmaps them when freed, so
///   every layer paid for page faults and for the kernel zeroing its pages (172,000 faults for
///   the benchmark's paragraph). Kept in the heap, they are reused: 52,000 faults, and the
///   paragraph's real-time factor went from 0.059 to 0.050 (2 threads, same machine). The cost
///   is memory kept after a burst; [`release_free_memory`] gives it back.
///
/// # Safety
///
/// It changes the process's environment, which is sound only while no other thread may read or
/// write it: call it before any runtime or thread is started.
#[allow(unsafe_code)]
pub unsafe fn prepare_process() {
    if std::env::var_os(CANDLE_THREADS_VARIABLE).is_none() {
        // SAFETY: the caller guarantees that no other thread exists yet.
        unsafe { std::env::set_var(CANDLE_THREADS_VARIABLE, "1") };
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets the allocator's parameters (under its own lock); the values are
    // in range for a 64-bit process.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int);
    }
}

/// Gives the allocator's free memory back to the system (glibc's `malloc_trim`), for example when
/// a service has nothing left to synthesise. A no-op elsewhere.
#[allow(unsafe_code)]
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes the allocator's own locks; it only returns free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

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
