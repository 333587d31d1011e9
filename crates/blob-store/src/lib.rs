//! Where audio-generation keeps finished audio files: a folder on the local disk, or an
//! S3-compatible bucket that every replica shares.
//!
//! audio-generation runs as several replicas, and a file written to one pod's disk cannot be served
//! by another; a bucket can. One machine (or one replica with its own volume) uses the folder
//! (`AUDIO_STORAGE_PATH`); a cluster with more than one replica uses the bucket
//! (`AUDIO_STORAGE_URL=s3://bucket/prefix`). [`StorageSettings`] reads the choice once at start-up
//! and [`BlobStore`] hides which one it is behind one small API over the `object_store` crate:
//! whole files in ([`BlobStore::put_file`], [`BlobStore::put_bytes`], each replacing an older
//! object atomically), whole objects or byte ranges out ([`BlobStore::get`]), and a readiness
//! probe ([`BlobStore::check`]).
//!
//! Keys are checked before any IO ([`StoreError::InvalidKey`]): ASCII letters, digits, `.`, `_`,
//! `-` and `/`, no leading `/`, no empty, `.` or `..` segment, so a key can never name anything
//! outside the folder or the bucket's prefix.

mod error;
mod key;
mod settings;
mod store;

pub use error::StoreError;
pub use key::{MAX_KEY_LEN, validate_key};
pub use settings::{Backend, S3Credentials, S3Settings, StorageSettings};
pub use store::{Blob, BlobStore, Stored};
