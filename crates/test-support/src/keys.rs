//! Internal-auth keys for tests: one signing key per calling service, made once per test process,
//! and the trusted-key list that accepts all of them. Never used outside tests.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
    time::Duration,
};

use internal_rpc::{Minter, Peer, PeerSettings, SigningKey};

/// The services that call others, and so sign their calls.
pub const CALLERS: [&str; 3] = ["gateway", "webhook-ingest", "audio-generation"];

/// The keys of this test process.
#[derive(Debug)]
pub struct InternalKeys {
    signing: HashMap<&'static str, String>,
    trusted: String,
}

impl InternalKeys {
    fn generate() -> Self {
        let signing: HashMap<&'static str, String> = CALLERS
            .iter()
            .map(|&service| (service, SigningKey::generate()))
            .collect();
        let trusted = CALLERS
            .iter()
            .map(|service| {
                let key = SigningKey::parse(&signing[service]).expect("generated keys parse");
                format!("{service}={}", key.public_key())
            })
            .collect::<Vec<_>>()
            .join(",");
        Self { signing, trusted }
    }

    /// `INTERNAL_AUTH_KEY` of a calling service.
    pub fn signing(&self, service: &str) -> &str {
        self.signing
            .get(service)
            .unwrap_or_else(|| panic!("{service} is not a calling service"))
    }

    /// `INTERNAL_AUTH_TRUSTED_KEYS` accepting every calling service.
    pub fn trusted(&self) -> &str {
        &self.trusted
    }

    /// Signs calls as `service`.
    pub fn minter(&self, service: &'static str) -> Arc<Minter> {
        Minter::new(
            service,
            SigningKey::parse(self.signing(service)).expect("generated keys parse"),
        )
    }

    /// A channel to the gRPC server of `peer` (`delivery-worker`) on `port`, signing as `caller`.
    pub fn peer(&self, caller: &'static str, peer: &'static str, port: u16) -> Peer {
        let settings = PeerSettings {
            name: peer,
            url: format!("http://127.0.0.1:{port}")
                .parse()
                .expect("valid URL"),
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(30),
        };
        Peer::new(&settings, self.minter(caller)).expect("valid peer URL")
    }
}

/// The keys of this test process, made on first use.
pub fn internal_keys() -> &'static InternalKeys {
    static KEYS: OnceLock<InternalKeys> = OnceLock::new();
    KEYS.get_or_init(InternalKeys::generate)
}
