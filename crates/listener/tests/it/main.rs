//! Integration tests of the listener: the real Whisper tiny.en model on real speech.

mod common;
mod espeak;
mod model;
mod voice;
