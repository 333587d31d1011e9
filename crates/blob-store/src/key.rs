//! The rules a key must follow, checked before any IO so that no key can reach outside the
//! store's folder or the bucket's prefix.

use object_store::path::Path;

use crate::StoreError;

/// The longest key accepted, in bytes (S3 allows 1024 for the whole name, prefix included).
pub const MAX_KEY_LEN: usize = 512;

/// Checks `key` against the key rules: 1 to [`MAX_KEY_LEN`] characters, only ASCII letters,
/// digits, `.`, `_`, `-` and `/`, no `/` at either end, and no empty, `.` or `..` segment.
pub fn validate_key(key: &str) -> Result<(), StoreError> {
    if key.is_empty() {
        return Err(StoreError::InvalidKey("the key is empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(StoreError::InvalidKey(
            "the key is longer than 512 characters",
        ));
    }
    if !key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'))
    {
        return Err(StoreError::InvalidKey(
            "a key may hold only ASCII letters, digits, '.', '_', '-' and '/'",
        ));
    }
    if key.starts_with('/') || key.ends_with('/') {
        return Err(StoreError::InvalidKey(
            "a key must not start or end with '/'",
        ));
    }
    if key
        .split('/')
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        return Err(StoreError::InvalidKey(
            "a key must not hold an empty, '.' or '..' segment",
        ));
    }
    Ok(())
}

/// The store's path for a valid key.
pub(crate) fn to_path(key: &str) -> Result<Path, StoreError> {
    validate_key(key)?;
    // The rules above are stricter than object_store's own, so this does not fail; if it ever
    // did, the key is refused rather than trusted.
    Path::parse(key).map_err(|_| StoreError::InvalidKey("the storage refuses this key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_keys_pass() {
        for key in ["a", "audio/job_01/out.mp3", "x-1.2/y_3", ".probe/abc"] {
            assert!(validate_key(key).is_ok(), "{key}");
        }
    }

    #[test]
    fn escaping_and_odd_keys_are_refused() {
        let long = "a".repeat(MAX_KEY_LEN + 1);
        for key in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/./b",
            "a//b",
            "a/",
            "..",
            "a\\b",
            "a b",
            "é",
            "a#1",
            "a%2e",
            long.as_str(),
        ] {
            assert!(
                matches!(validate_key(key), Err(StoreError::InvalidKey(_))),
                "{key}"
            );
        }
    }
}
