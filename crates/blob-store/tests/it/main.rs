//! blob-store against both backends: a folder under the temporary directory, and a bucket on a
//! real S3-compatible server (moto, started per test on loopback by `test_support::s3`). Each
//! behaviour is one function over a [`Fixture`], run once per backend; what only a bucket can do
//! (a second replica, a server that goes away) has its own tests.

mod behaviour;
mod bucket;

use std::path::PathBuf;

use blob_store::{BlobStore, StorageSettings};
use settings::Sources;
use test_support::s3::S3Server;

/// A store under test, and what it stands on.
pub struct Fixture {
    pub store: BlobStore,
    pub settings: StorageSettings,
    /// The folder, for the local backend.
    pub dir: Option<TempDir>,
    /// The server, for the S3 backend.
    pub s3: Option<S3Server>,
}

impl Fixture {
    pub fn local() -> Self {
        let dir = TempDir::new();
        let settings = StorageSettings::local(dir.path.join("audio"));
        Self {
            store: BlobStore::open(&settings).expect("the folder opens"),
            settings,
            dir: Some(dir),
            s3: None,
        }
    }

    /// A bucket, under a prefix so that the prefix is exercised too.
    pub async fn s3() -> Self {
        let server = S3Server::start().await;
        let settings = s3_settings(&server, "audio/test");
        Self {
            store: BlobStore::open(&settings).expect("the bucket opens"),
            settings,
            dir: None,
            s3: Some(server),
        }
    }
}

/// Loads the settings the way a service does, from the variables an operator sets.
pub fn s3_settings(server: &S3Server, prefix: &str) -> StorageSettings {
    let src = Sources::from_pairs(server.storage_settings(prefix)).expect("no settings file");
    StorageSettings::load(&src).expect("valid S3 settings")
}

/// A folder removed when the test ends.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    fn new() -> Self {
        let path =
            std::env::temp_dir().join(format!("blob-store-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).expect("temporary folder");
        Self { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
