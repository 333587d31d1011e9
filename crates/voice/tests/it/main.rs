//! Integration tests of the voice crate against the real default voice.
