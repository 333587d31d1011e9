//! The store itself: one `object_store` backend behind a small API that speaks in keys, files,
//! byte ranges and plain errors.

use std::{path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _, stream::BoxStream};
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt as _,
    PutPayload, RetryConfig, aws::AmazonS3Builder, buffered::BufWriter, local::LocalFileSystem,
    prefix::PrefixStore,
};
use settings::ExposeSecret as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{Backend, S3Settings, StorageSettings, StoreError, key::to_path};

/// How much of a file is read at a time while it is hashed and sent.
const READ_CHUNK: usize = 256 * 1024;
/// Up to this many bytes an upload is one request; past it, a multipart upload in parts of this
/// size (S3 wants at least 5 MiB per part). Bounds the memory one upload holds.
const UPLOAD_PART: usize = 8 * 1024 * 1024;
/// Where [`BlobStore::check`] writes its probe objects; a key no caller would choose.
const PROBE_PREFIX: &str = ".sonora-probe";
/// A readiness probe that takes longer than this fails, so a hung bucket makes the pod unready
/// instead of leaving the probe waiting.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// What [`BlobStore::put_file`] and [`BlobStore::put_bytes`] stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub size: u64,
    /// The SHA-256 of the content, lowercase hex.
    pub sha256: String,
}

/// An object being read: its whole size, the part being sent, and the bytes of that part.
pub struct Blob {
    /// The whole object's size, whatever the range.
    pub size: u64,
    /// The first and last byte sent, inclusive, as in `Content-Range: bytes first-last/size`. An
    /// empty object read whole sends nothing and says `(0, 0)`.
    pub range: (u64, u64),
    pub stream: BoxStream<'static, Result<Bytes, StoreError>>,
}

impl std::fmt::Debug for Blob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blob")
            .field("size", &self.size)
            .field("range", &self.range)
            .finish_non_exhaustive()
    }
}

/// The audio files of every replica. Cloning is cheap: clones share one backend and its
/// connection pool.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<dyn ObjectStore>,
    /// Where the objects live, for messages (never a secret).
    location: Arc<str>,
    /// The one key this store's readiness probes write, read and delete. One key per store, not
    /// one per probe: a probe cut short between its write and its delete (the readiness check's
    /// time limit, a killed process) leaves at most this object, which the next probe overwrites
    /// and deletes, instead of a new orphan each time (the chaos run found them piling up).
    probe_key: Arc<str>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl BlobStore {
    /// Opens the folder (creating it when missing) or the bucket. Nothing is sent to a bucket
    /// here; [`BlobStore::check`] tells whether it answers.
    pub fn open(settings: &StorageSettings) -> Result<Self, StoreError> {
        let location = settings.to_string();
        let inner = match &settings.backend {
            Backend::Local { root } => open_local(root),
            Backend::S3(s3) => open_s3(s3),
        }
        .map_err(|problem| StoreError::Open {
            location: location.clone(),
            problem,
        })?;
        Ok(Self {
            inner,
            location: location.into(),
            probe_key: format!("{PROBE_PREFIX}/{}", uuid::Uuid::new_v4().simple()).into(),
        })
    }

    /// Stores the file at `path` under `key`, reading it in chunks, and replaces any older object
    /// at once: readers see the old object or the new one, never a part.
    pub async fn put_file(&self, key: &str, path: &Path) -> Result<Stored, StoreError> {
        let location = to_path(key)?;
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| read_error(path, e))?;
        let mut writer = BufWriter::with_capacity(self.inner.clone(), location, UPLOAD_PART)
            .with_max_concurrency(2);
        let stored = upload(file, &mut writer, key, path).await;
        if stored.is_err() {
            // Drops the parts of a multipart upload; a single request was never sent.
            let _ = writer.abort().await;
        }
        stored
    }

    /// Stores `bytes` under `key`, replacing any older object at once.
    pub async fn put_bytes(
        &self,
        key: &str,
        bytes: impl Into<Bytes>,
    ) -> Result<Stored, StoreError> {
        let location = to_path(key)?;
        let bytes = bytes.into();
        let stored = Stored {
            size: bytes.len() as u64,
            sha256: hex(ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref()),
        };
        self.inner
            .put(&location, PutPayload::from(bytes))
            .await
            .map_err(|e| StoreError::from_backend("writing", key, e))?;
        Ok(stored)
    }

    /// Reads the object under `key`, whole or the bytes from `first` to `last` inclusive (`last`
    /// absent: to the end; past the end: cut at the end), as HTTP's `Range: bytes=first-last`.
    pub async fn get(
        &self,
        key: &str,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<Blob, StoreError> {
        let location = to_path(key)?;
        let options = GetOptions {
            range: range.map(to_get_range).transpose()?,
            ..GetOptions::default()
        };
        let result = match self.inner.get_opts(&location, options).await {
            Ok(result) => result,
            Err(e) => return Err(self.explain_get_error(key, range, e).await),
        };
        let size = result.meta.size;
        let sent = result.range.clone();
        let owned_key = key.to_owned();
        let stream = result
            .into_stream()
            .map_err(move |e| StoreError::from_backend("reading", &owned_key, e))
            .boxed();
        Ok(Blob {
            size,
            range: (sent.start, sent.end.saturating_sub(1).max(sent.start)),
            stream,
        })
    }

    /// A failed ranged read may have asked past the end; the backends say so in different ways,
    /// so the object's size decides.
    async fn explain_get_error(
        &self,
        key: &str,
        range: Option<(u64, Option<u64>)>,
        error: object_store::Error,
    ) -> StoreError {
        let error = StoreError::from_backend("reading", key, error);
        let (Some((first, _)), StoreError::Backend { .. }) = (range, &error) else {
            return error;
        };
        match self.head(key).await {
            Ok(size) if first >= size => StoreError::RangeNotSatisfiable { size },
            Err(not_found @ StoreError::NotFound { .. }) => not_found,
            _ => error,
        }
    }

    /// The size of the object under `key`.
    pub async fn head(&self, key: &str) -> Result<u64, StoreError> {
        let location = to_path(key)?;
        let meta = self
            .inner
            .head(&location)
            .await
            .map_err(|e| StoreError::from_backend("looking up", key, e))?;
        Ok(meta.size)
    }

    /// Deletes the object under `key`; an object that is not there is fine.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let location = to_path(key)?;
        match self.inner.delete(&location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StoreError::from_backend("deleting", key, e)),
        }
    }

    /// A readiness probe: writes a small object, reads it back and deletes it, within 5 s. The
    /// error is one plain sentence for `/ready` and the log. Each call costs three requests to a
    /// bucket, so a caller probing often may keep the last answer for a few seconds.
    pub async fn check(&self) -> Result<(), String> {
        match tokio::time::timeout(CHECK_TIMEOUT, self.probe()).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "{} did not answer within {} s",
                self.location,
                CHECK_TIMEOUT.as_secs()
            )),
        }
    }

    /// The key of this store's readiness probe object (under `.sonora-probe/`).
    pub fn probe_key(&self) -> &str {
        &self.probe_key
    }

    async fn probe(&self) -> Result<(), String> {
        let key = &*self.probe_key;
        let body = Bytes::from_static(b"sonora audio storage probe");
        let location = &self.location;
        let failed = |doing: &str, e: StoreError| match e {
            StoreError::Backend { cause, .. } => format!("cannot {doing} {location}: {cause}"),
            other => format!("cannot {doing} {location}: {other}"),
        };
        self.put_bytes(key, body.clone())
            .await
            .map_err(|e| failed("write to", e))?;
        let read = self.read_all(key).await;
        let deleted = self.delete(key).await;
        match read {
            Ok(bytes) if bytes == body => {}
            Ok(_) => {
                return Err(format!(
                    "{location} gave back other bytes than were written"
                ));
            }
            Err(e) => return Err(failed("read from", e)),
        }
        deleted.map_err(|e| failed("delete from", e))
    }

    async fn read_all(&self, key: &str) -> Result<Bytes, StoreError> {
        let blob = self.get(key, None).await?;
        let chunks: Vec<Bytes> = blob.stream.try_collect().await?;
        Ok(chunks.concat().into())
    }
}

/// Sends the file through `writer`, hashing it on the way, and completes the upload: the single
/// request or the multipart upload's last step, and only then does the object appear.
async fn upload(
    mut file: tokio::fs::File,
    writer: &mut BufWriter,
    key: &str,
    path: &Path,
) -> Result<Stored, StoreError> {
    let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
    let mut size = 0u64;
    while let Some(chunk) = read_chunk(&mut file)
        .await
        .map_err(|e| read_error(path, e))?
    {
        hasher.update(&chunk);
        size += chunk.len() as u64;
        writer
            .put(chunk)
            .await
            .map_err(|e| StoreError::from_backend("writing", key, e))?;
    }
    writer
        .shutdown()
        .await
        .map_err(|e| StoreError::backend("writing", key, &e))?;
    Ok(Stored {
        size,
        sha256: hex(hasher.finish().as_ref()),
    })
}

/// The next chunk of the file, or none at its end.
async fn read_chunk(file: &mut tokio::fs::File) -> std::io::Result<Option<Bytes>> {
    let mut chunk = Vec::with_capacity(READ_CHUNK);
    file.take(READ_CHUNK as u64).read_to_end(&mut chunk).await?;
    Ok((!chunk.is_empty()).then(|| Bytes::from(chunk)))
}

fn read_error(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::ReadFile {
        path: path.to_owned(),
        source,
    }
}

fn to_get_range((first, last): (u64, Option<u64>)) -> Result<GetRange, StoreError> {
    match last {
        None => Ok(GetRange::Offset(first)),
        Some(last) if last < first => Err(StoreError::InvalidRange),
        Some(last) => Ok(GetRange::Bounded(first..last.saturating_add(1))),
    }
}

fn open_local(root: &Path) -> Result<Arc<dyn ObjectStore>, String> {
    // A folder that cannot be created now (a volume not mounted yet, a file in the way) is not
    // fatal: the service starts, `check` says what is wrong, and writes create what they need
    // once it is fixed, as a bucket that is down would be treated.
    if let Err(error) = std::fs::create_dir_all(root) {
        tracing::warn!(root = %root.display(), %error, "cannot create the audio folder yet");
    }
    let prefix = object_store::path::Path::from_absolute_path(root)
        .map_err(|_| "it must be an absolute path".to_owned())?;
    // A finished file is worth the flush: the job that made it is marked done right after.
    let store = LocalFileSystem::new().with_fsync(true);
    Ok(Arc::new(PrefixStore::new(store, prefix)))
}

fn open_s3(s3: &S3Settings) -> Result<Arc<dyn ObjectStore>, String> {
    // reqwest's rustls has no crypto provider of its own in this workspace: ring is ours.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&s3.bucket)
        .with_region(&s3.region)
        .with_allow_http(s3.allow_http)
        .with_client_options(client_options(s3.allow_http))
        .with_retry(RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 3,
            retry_timeout: Duration::from_secs(30),
        });
    if let Some(endpoint) = &s3.endpoint {
        builder = builder.with_endpoint(endpoint.as_str().trim_end_matches('/'));
    }
    if let Some(keys) = &s3.credentials {
        builder = builder
            .with_access_key_id(&keys.access_key_id)
            .with_secret_access_key(keys.secret_access_key.expose_secret());
    }
    let store = builder.build().map_err(|e| e.to_string())?;
    Ok(if s3.prefix.is_empty() {
        Arc::new(store)
    } else {
        Arc::new(PrefixStore::new(store, s3.prefix.as_str()))
    })
}

/// No deadline on a whole request: a download streams to a client at the client's pace. A stalled
/// connection still fails: no byte for 30 s ends the request.
fn client_options(allow_http: bool) -> ClientOptions {
    ClientOptions::new()
        .with_allow_http(allow_http)
        .with_connect_timeout(Duration::from_secs(5))
        .with_read_timeout(Duration::from_secs(30))
        .with_timeout_disabled()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
