//! Internal signing keys and the public keys that verify them.
//!
//! - A signing key is `isk_` followed by the standard base64 of a 32-byte Ed25519 seed. Only a
//!   service that calls others has one.
//! - A public key is `ipk_` followed by the standard base64 of the 32-byte Ed25519 public key.
//!   A server trusts a list of `<service>=ipk_…` entries: a token is accepted only if its key is
//!   listed for the service the token names as its caller. During a rotation a service has two
//!   entries, the old key and the new one.
//!
//! Each key is known by its id (`kid` in the token's header): the first 8 bytes of the SHA-256 of
//! the public key, in hex. Key material never appears in `Debug` output or errors.

use std::{collections::HashMap, fmt};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use jsonwebtoken::{DecodingKey, EncodingKey};
use ring::signature::{Ed25519KeyPair, KeyPair as _};

/// Why a key cannot be used. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("must be isk_ followed by the base64 of a 32-byte Ed25519 seed")]
    Signing,
    #[error(
        "must be a comma-separated list of <service>=ipk_<base64 of a 32-byte Ed25519 public key>"
    )]
    Trusted,
    #[error("lists the key {kid} for both {first} and {second}")]
    Duplicate {
        kid: String,
        first: String,
        second: String,
    },
}

/// The PKCS#8 v1 wrapping of an Ed25519 seed (RFC 8410), which the JWT library expects.
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

fn key_id(public: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, public);
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode32(text: &str) -> Option<[u8; 32]> {
    STANDARD.decode(text.trim()).ok()?.try_into().ok()
}

/// The key a calling service signs its tokens with.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    public: [u8; 32],
    encoding: EncodingKey,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Parses `isk_<base64 seed>`.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let seed = text
            .trim()
            .strip_prefix("isk_")
            .and_then(decode32)
            .ok_or(KeyError::Signing)?;
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|_| KeyError::Signing)?;
        let public: [u8; 32] = pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| KeyError::Signing)?;
        let mut der = PKCS8_PREFIX.to_vec();
        der.extend_from_slice(&seed);
        Ok(Self {
            kid: key_id(&public),
            public,
            encoding: EncodingKey::from_ed_der(&der),
        })
    }

    /// A new random key, as `isk_…` text.
    pub fn generate() -> String {
        let seed: [u8; 32] = ring::rand::generate(&ring::rand::SystemRandom::new())
            .expect("the system's random source works")
            .expose();
        format!("isk_{}", STANDARD.encode(seed))
    }

    /// The key's id, as written in the tokens it signs.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key servers trust it by: `ipk_…`.
    pub fn public_key(&self) -> String {
        format!("ipk_{}", STANDARD.encode(self.public))
    }

    pub(crate) fn encoding(&self) -> &EncodingKey {
        &self.encoding
    }
}

/// A public key a server accepts, and the service it belongs to.
#[derive(Clone)]
pub(crate) struct TrustedKey {
    pub service: String,
    pub decoding: DecodingKey,
}

/// The public keys a server accepts tokens from, by key id.
#[derive(Clone, Default)]
pub struct TrustedKeys {
    keys: HashMap<String, TrustedKey>,
}

impl fmt::Debug for TrustedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut entries: Vec<_> = self
            .keys
            .iter()
            .map(|(kid, key)| format!("{}:{kid}", key.service))
            .collect();
        entries.sort();
        f.debug_tuple("TrustedKeys").field(&entries).finish()
    }
}

impl TrustedKeys {
    /// Parses `<service>=ipk_…` entries separated by commas (or new lines).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let mut keys = Self::default();
        for entry in text
            .split([',', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            let (service, key) = entry.split_once('=').ok_or(KeyError::Trusted)?;
            let service = service.trim();
            let valid_name = !service.is_empty()
                && service
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            let public = key
                .trim()
                .strip_prefix("ipk_")
                .and_then(decode32)
                .filter(|_| valid_name)
                .ok_or(KeyError::Trusted)?;
            keys.insert(service, &public)?;
        }
        Ok(keys)
    }

    fn insert(&mut self, service: &str, public: &[u8; 32]) -> Result<(), KeyError> {
        let kid = key_id(public);
        if let Some(existing) = self.keys.get(&kid)
            && existing.service != service
        {
            return Err(KeyError::Duplicate {
                kid,
                first: existing.service.clone(),
                second: service.to_owned(),
            });
        }
        self.keys.insert(
            kid,
            TrustedKey {
                service: service.to_owned(),
                decoding: DecodingKey::from_ed_der(public),
            },
        );
        Ok(())
    }

    /// Trusts `key` as `service`'s; for tests and for building a list from signing keys.
    pub fn trust(&mut self, service: &str, key: &SigningKey) -> Result<(), KeyError> {
        self.insert(service, &key.public)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub(crate) fn get(&self, kid: &str) -> Option<&TrustedKey> {
        self.keys.get(kid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_are_trusted_by_their_public_key() {
        let key = SigningKey::parse(&SigningKey::generate()).unwrap();
        assert_eq!(key.kid().len(), 16);
        let trusted = TrustedKeys::parse(&format!(" gateway = {} ,", key.public_key())).unwrap();
        assert_eq!(trusted.get(key.kid()).unwrap().service, "gateway");
    }

    #[test]
    fn bad_keys_are_refused_without_echoing_them() {
        for bad in ["", "isk_", "isk_AAAA", "whsk_AAAA", "sk_secretsecret"] {
            let error = SigningKey::parse(bad).unwrap_err();
            assert!(!error.to_string().contains("secret"), "{error}");
        }
        for bad in [
            "gateway",
            "gateway=",
            "=ipk_AAAA",
            "Gateway=ipk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            "gateway=isk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ] {
            assert_eq!(
                TrustedKeys::parse(bad).unwrap_err(),
                KeyError::Trusted,
                "{bad}"
            );
        }
    }

    #[test]
    fn one_key_cannot_belong_to_two_services() {
        let key = SigningKey::parse(&SigningKey::generate()).unwrap();
        let text = format!("gateway={0},audio-generation={0}", key.public_key());
        assert!(matches!(
            TrustedKeys::parse(&text),
            Err(KeyError::Duplicate { .. })
        ));
    }

    #[test]
    fn debug_shows_no_key_material() {
        let text = SigningKey::generate();
        let key = SigningKey::parse(&text).unwrap();
        let debug = format!("{key:?}");
        assert!(!debug.contains(&text[4..]), "{debug}");
    }
}
