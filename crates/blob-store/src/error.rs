//! What can go wrong with the store, in words a log reader or an operator understands.

use std::path::PathBuf;

/// One error type for every operation. The messages name the problem and never hold a secret:
/// the S3 secret key never reaches this crate's messages, and keys are checked to be plain ASCII
/// before they are ever printed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The key breaks the key rules; the text says which one.
    #[error("invalid key: {0}")]
    InvalidKey(&'static str),
    /// Nothing is stored under the key.
    #[error("nothing is stored under {key}")]
    NotFound { key: String },
    /// The requested range starts at or after the object's end (HTTP 416); `size` is the whole
    /// object's, for the `Content-Range: bytes */size` answer.
    #[error("the range starts past the end of the object ({size} bytes)")]
    RangeNotSatisfiable { size: u64 },
    /// The requested range ends before it starts.
    #[error("the range ends before it starts")]
    InvalidRange,
    /// The local file to store could not be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The store could not be set up from its settings.
    #[error("cannot open {location}: {problem}")]
    Open { location: String, problem: String },
    /// The folder or the bucket failed, or could not be reached. `cause` is the innermost
    /// reason (such as "Connection refused (os error 111)"), without the layers of HTTP client
    /// and retry wording around it.
    #[error("the audio storage failed {action} {key}: {cause}")]
    Backend {
        action: &'static str,
        key: String,
        cause: String,
    },
}

impl StoreError {
    /// Converts an `object_store` error met while `action` (`"reading"`, …) `key`, keeping "not
    /// found" apart.
    pub(crate) fn from_backend(
        action: &'static str,
        key: &str,
        error: object_store::Error,
    ) -> Self {
        match error {
            object_store::Error::NotFound { .. } => Self::NotFound {
                key: key.to_owned(),
            },
            other => Self::backend(action, key, &other),
        }
    }

    pub(crate) fn backend(action: &'static str, key: &str, error: &dyn std::error::Error) -> Self {
        Self::Backend {
            action,
            key: key.to_owned(),
            cause: innermost_cause(error),
        }
    }
}

/// The last error of the source chain: the one that says what actually happened.
fn innermost_cause(error: &dyn std::error::Error) -> String {
    let mut innermost = error;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    innermost.to_string()
}
