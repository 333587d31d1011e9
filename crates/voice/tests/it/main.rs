//! Integration tests of the voice crate against the real default voice.
//!
//! The voice comes from `TEST_VOICES_DIR` or `~/.cache/sonora/voices` (installed by
//! `scripts/lib/setup.sh`); a missing voice fails the tests rather than skipping them. Reference
//! tensors are made on first use by `tests/reference/setup.sh` (onnxruntime on the same model)
//! and cached under `~/.cache/sonora-tools/voice-ref-data/`.

mod common;
mod equivalence;
mod loading;
mod phonemes;
mod speakers;
mod synthesis;
