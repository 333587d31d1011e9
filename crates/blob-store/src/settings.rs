//! The storage settings, read once at start-up:
//!
//! - `AUDIO_STORAGE_PATH` (default `/var/lib/sonora/audio`): the folder, when no bucket is set.
//! - `AUDIO_STORAGE_URL`: `s3://bucket` or `s3://bucket/prefix`; when set it wins over the path.
//! - `AUDIO_STORAGE_S3_ENDPOINT`: the S3 API's URL for MinIO and other S3-compatible servers
//!   (default: AWS's endpoint for the region).
//! - `AUDIO_STORAGE_S3_REGION` (default `us-east-1`).
//! - `AUDIO_STORAGE_S3_ACCESS_KEY_ID` and `AUDIO_STORAGE_S3_SECRET_ACCESS_KEY` (a secret), or
//!   `AUDIO_STORAGE_S3_SECRET_ACCESS_KEY_FILE` naming a file that holds it (a mounted Secret).
//!   Without keys the instance's role is used, from the EC2 instance metadata service.
//! - `AUDIO_STORAGE_S3_ALLOW_HTTP` (default false): allows an `http://` endpoint.
//!
//! An S3 setting without `AUDIO_STORAGE_URL` is refused: the operator meant to use a bucket, and
//! silently writing to the local disk instead would lose files between replicas.

use std::{fmt, path::PathBuf};

use settings::{ExposeSecret as _, SecretString, SettingError, Sources, Url};

use crate::key::validate_key;

/// Where the audio files live.
#[derive(Debug, Clone)]
pub struct StorageSettings {
    pub backend: Backend,
}

/// One of the two places a store can keep its objects.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A folder on this machine; right for one machine, or one replica.
    Local { root: PathBuf },
    /// A bucket every replica shares; right for a cluster with more than one replica.
    S3(S3Settings),
}

/// An S3-compatible bucket.
#[derive(Debug, Clone)]
pub struct S3Settings {
    pub bucket: String,
    /// The folder inside the bucket, without a `/` at either end; empty for the bucket's root.
    pub prefix: String,
    /// The S3 API's URL for a server other than AWS.
    pub endpoint: Option<Url>,
    pub region: String,
    /// Static keys; without them the instance's role is used.
    pub credentials: Option<S3Credentials>,
    pub allow_http: bool,
}

/// An access key pair. `Debug` shows the secret as redacted.
#[derive(Debug, Clone)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: SecretString,
}

const PATH: &str = "AUDIO_STORAGE_PATH";
const URL: &str = "AUDIO_STORAGE_URL";
const ENDPOINT: &str = "AUDIO_STORAGE_S3_ENDPOINT";
const REGION: &str = "AUDIO_STORAGE_S3_REGION";
const ACCESS_KEY_ID: &str = "AUDIO_STORAGE_S3_ACCESS_KEY_ID";
const SECRET: &str = "AUDIO_STORAGE_S3_SECRET_ACCESS_KEY";
const SECRET_FILE: &str = "AUDIO_STORAGE_S3_SECRET_ACCESS_KEY_FILE";
const ALLOW_HTTP: &str = "AUDIO_STORAGE_S3_ALLOW_HTTP";

impl StorageSettings {
    pub fn load(src: &Sources) -> Result<Self, SettingError> {
        let url: Option<Url> = src.optional("AUDIO_STORAGE_URL")?;
        let backend = match url {
            Some(url) => Backend::S3(load_s3(src, &url)?),
            None => {
                refuse_s3_settings_without_url(src)?;
                Backend::Local {
                    root: load_root(src)?,
                }
            }
        };
        Ok(Self { backend })
    }

    /// Settings for a folder, for tests and tools.
    pub fn local(root: impl Into<PathBuf>) -> Self {
        Self {
            backend: Backend::Local { root: root.into() },
        }
    }
}

fn load_root(src: &Sources) -> Result<PathBuf, SettingError> {
    let root = src.or("AUDIO_STORAGE_PATH", PathBuf::from("/var/lib/sonora/audio"))?;
    if !root.is_absolute() {
        return Err(SettingError::new(PATH, "must be an absolute path"));
    }
    Ok(root)
}

fn refuse_s3_settings_without_url(src: &Sources) -> Result<(), SettingError> {
    for name in [
        ENDPOINT,
        REGION,
        ACCESS_KEY_ID,
        SECRET,
        SECRET_FILE,
        ALLOW_HTTP,
    ] {
        if src.optional::<String>(name)?.is_some() {
            return Err(SettingError::new(
                name,
                format!(
                    "is set but {URL} is not: set {URL}=s3://bucket/prefix to store audio in a \
                     bucket, or remove {name} to keep it in {PATH}"
                ),
            ));
        }
    }
    Ok(())
}

fn load_s3(src: &Sources, url: &Url) -> Result<S3Settings, SettingError> {
    let (bucket, prefix) = parse_bucket_url(url).map_err(|p| SettingError::new(URL, p))?;
    let allow_http = src.or("AUDIO_STORAGE_S3_ALLOW_HTTP", false)?;
    let endpoint: Option<Url> = src.optional("AUDIO_STORAGE_S3_ENDPOINT")?;
    if let Some(endpoint) = &endpoint {
        check_endpoint(endpoint, allow_http).map_err(|p| SettingError::new(ENDPOINT, p))?;
    }
    Ok(S3Settings {
        bucket,
        prefix,
        endpoint,
        region: src.or("AUDIO_STORAGE_S3_REGION", "us-east-1".to_owned())?,
        credentials: load_credentials(src)?,
        allow_http,
    })
}

/// Splits `s3://bucket/some/prefix` into the bucket and the prefix.
fn parse_bucket_url(url: &Url) -> Result<(String, String), String> {
    if url.scheme() != "s3" {
        return Err("must be an s3://bucket or s3://bucket/prefix URL".to_owned());
    }
    if !url.username().is_empty()
        || url.password().is_some()
        || url.port().is_some()
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return Err(
            "must be s3://bucket or s3://bucket/prefix, without a user, port, query or fragment \
             (the keys have their own settings)"
                .to_owned(),
        );
    }
    let bucket = url.host_str().unwrap_or_default();
    let valid_bucket = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
    if !valid_bucket {
        return Err(
            "must name a bucket of 3 to 63 lowercase letters, digits, '.' and '-'".to_owned(),
        );
    }
    let prefix = url.path().trim_matches('/');
    if !prefix.is_empty() {
        validate_key(prefix).map_err(|_| {
            "has a prefix that is not a plain folder name (ASCII letters, digits, '.', '_', '-' \
             and '/', no empty, '.' or '..' segment)"
                .to_owned()
        })?;
    }
    Ok((bucket.to_owned(), prefix.to_owned()))
}

fn check_endpoint(endpoint: &Url, allow_http: bool) -> Result<(), String> {
    match endpoint.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => {
            return Err(format!(
                "is an http:// URL: set {ALLOW_HTTP}=true to allow unencrypted HTTP (for a \
                 server on the same machine or network only)"
            ));
        }
        _ => return Err("must be an http:// or https:// URL".to_owned()),
    }
    if !endpoint.username().is_empty() || endpoint.password().is_some() {
        return Err(format!(
            "must not hold a user or password: set {ACCESS_KEY_ID} and {SECRET}"
        ));
    }
    Ok(())
}

/// The access key pair, or none to use the instance's role. Both halves or neither; the secret
/// inline or from a file, not both.
fn load_credentials(src: &Sources) -> Result<Option<S3Credentials>, SettingError> {
    let access_key_id: Option<String> = src.optional("AUDIO_STORAGE_S3_ACCESS_KEY_ID")?;
    let secret = load_secret(src)?;
    match (access_key_id, secret) {
        (Some(access_key_id), Some(secret_access_key)) => Ok(Some(S3Credentials {
            access_key_id,
            secret_access_key,
        })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(SettingError::new(
            SECRET,
            format!("is required when {ACCESS_KEY_ID} is set (or set {SECRET_FILE})"),
        )),
        (None, Some(_)) => Err(SettingError::new(
            ACCESS_KEY_ID,
            "is required when the secret access key is set",
        )),
    }
}

fn load_secret(src: &Sources) -> Result<Option<SecretString>, SettingError> {
    let inline: Option<SecretString> = src.optional("AUDIO_STORAGE_S3_SECRET_ACCESS_KEY")?;
    let file: Option<PathBuf> = src.optional("AUDIO_STORAGE_S3_SECRET_ACCESS_KEY_FILE")?;
    match (inline, file) {
        (Some(_), Some(_)) => Err(SettingError::new(
            SECRET_FILE,
            format!("cannot be set together with {SECRET}"),
        )),
        (Some(secret), None) => Ok(Some(secret)),
        (None, Some(path)) => read_secret_file(&path).map(Some),
        (None, None) => Ok(None),
    }
}

/// Reads a secret from a file, without the line break an editor or `echo` leaves at its end.
fn read_secret_file(path: &std::path::Path) -> Result<SecretString, SettingError> {
    let text = std::fs::read_to_string(path)
        .map(SecretString::from)
        .map_err(|e| {
            SettingError::new(
                SECRET_FILE,
                format!("cannot read {}: {}", path.display(), e.kind()),
            )
        })?;
    let trimmed = text.expose_secret().trim();
    if trimmed.is_empty() {
        return Err(SettingError::new(
            SECRET_FILE,
            format!("names an empty file ({})", path.display()),
        ));
    }
    Ok(SecretString::from(trimmed.to_owned()))
}

/// Where the files go, fit for logs and error messages: never a key.
impl fmt::Display for StorageSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.backend {
            Backend::Local { root } => write!(f, "the folder {}", root.display()),
            Backend::S3(s3) => {
                write!(f, "s3://{}/{} (", s3.bucket, s3.prefix)?;
                if let Some(endpoint) = &s3.endpoint {
                    write!(f, "endpoint {endpoint}, ")?;
                }
                match &s3.credentials {
                    Some(c) => write!(f, "region {}, access key {})", s3.region, c.access_key_id),
                    None => write!(f, "region {}, the instance's role)", s3.region),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(pairs: &[(&str, &str)]) -> Sources {
        Sources::from_pairs(pairs.iter().map(|(k, v)| (*k, *v))).unwrap()
    }

    fn s3(pairs: &[(&str, &str)]) -> Result<S3Settings, SettingError> {
        match StorageSettings::load(&sources(pairs))?.backend {
            Backend::S3(s3) => Ok(s3),
            Backend::Local { .. } => panic!("expected S3"),
        }
    }

    #[test]
    fn the_folder_is_the_default() {
        let settings = StorageSettings::load(&sources(&[])).unwrap();
        assert!(
            matches!(&settings.backend, Backend::Local { root } if root == std::path::Path::new("/var/lib/sonora/audio"))
        );
        assert_eq!(settings.to_string(), "the folder /var/lib/sonora/audio");
        let err = StorageSettings::load(&sources(&[(PATH, "audio")])).unwrap_err();
        assert_eq!(err.name, PATH);
    }

    #[test]
    fn the_bucket_wins_over_the_folder() {
        let s3 = s3(&[
            (PATH, "/srv/audio"),
            (URL, "s3://sonora-audio/prod/audio/"),
            (ENDPOINT, "https://minio.example.com:9000"),
        ])
        .unwrap();
        assert_eq!(s3.bucket, "sonora-audio");
        assert_eq!(s3.prefix, "prod/audio");
        assert_eq!(s3.region, "us-east-1");
        assert!(!s3.allow_http);
        assert!(s3.credentials.is_none());
    }

    #[test]
    fn bad_bucket_urls_are_named() {
        for url in [
            "https://bucket/x",
            "s3://B/x",
            "s3://user:pw@bucket/x",
            "s3://bucket/a b",
            "s3://bucket/a?b=c",
            "not a url",
        ] {
            let err = s3(&[(URL, url)]).unwrap_err();
            assert_eq!(err.name, URL, "{url}");
            assert!(!err.to_string().contains("pw"), "{err}");
        }
    }

    #[test]
    fn plain_http_needs_allow_http() {
        let pairs = [(URL, "s3://bucket"), (ENDPOINT, "http://127.0.0.1:9000")];
        let err = s3(&pairs).unwrap_err();
        assert_eq!(err.name, ENDPOINT);
        assert!(err.to_string().contains(ALLOW_HTTP), "{err}");
        let ok = s3(&[pairs[0], pairs[1], (ALLOW_HTTP, "true")]).unwrap();
        assert!(ok.allow_http);
    }

    #[test]
    fn keys_come_in_pairs_and_the_secret_is_never_shown() {
        let only_id = s3(&[(URL, "s3://bucket"), (ACCESS_KEY_ID, "AKIDEXAMPLE")]).unwrap_err();
        assert_eq!(only_id.name, SECRET);
        let only_secret = s3(&[(URL, "s3://bucket"), (SECRET, "hunter2")]).unwrap_err();
        assert_eq!(only_secret.name, ACCESS_KEY_ID);
        assert!(!only_secret.to_string().contains("hunter2"));

        let src = sources(&[
            (URL, "s3://bucket/p"),
            (ACCESS_KEY_ID, "AKIDEXAMPLE"),
            (SECRET, "hunter2"),
        ]);
        let settings = StorageSettings::load(&src).unwrap();
        for text in [settings.to_string(), format!("{settings:?}")] {
            assert!(!text.contains("hunter2"), "{text}");
        }
        assert_eq!(
            settings.to_string(),
            "s3://bucket/p (region us-east-1, access key AKIDEXAMPLE)"
        );
    }

    #[test]
    fn the_secret_can_come_from_a_file() {
        let dir = std::env::temp_dir().join(format!("blob-store-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("secret");
        std::fs::write(&file, "from-a-file\n").unwrap();
        let path = file.to_str().unwrap();
        let s3 = s3(&[
            (URL, "s3://bucket"),
            (ACCESS_KEY_ID, "AKIDEXAMPLE"),
            (SECRET_FILE, path),
        ])
        .unwrap();
        let secret = s3.credentials.unwrap().secret_access_key;
        assert_eq!(secret.expose_secret(), "from-a-file");

        let both = StorageSettings::load(&sources(&[
            (URL, "s3://bucket"),
            (ACCESS_KEY_ID, "AKIDEXAMPLE"),
            (SECRET, "x"),
            (SECRET_FILE, path),
        ]))
        .unwrap_err();
        assert_eq!(both.name, SECRET_FILE);
        let missing = StorageSettings::load(&sources(&[
            (URL, "s3://bucket"),
            (ACCESS_KEY_ID, "AKIDEXAMPLE"),
            (SECRET_FILE, "/nonexistent/secret"),
        ]))
        .unwrap_err();
        assert_eq!(missing.name, SECRET_FILE);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn s3_settings_without_a_bucket_are_refused() {
        let err = StorageSettings::load(&sources(&[(ENDPOINT, "https://minio:9000")])).unwrap_err();
        assert_eq!(err.name, ENDPOINT);
        assert!(err.to_string().contains(URL), "{err}");
    }
}
