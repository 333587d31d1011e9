//! Secrets encrypted at rest: AES-256-GCM from `ring`, with a key id on every ciphertext so keys
//! can rotate.
//!
//! A [`Keyring`] holds the current key, which seals, and any number of previous keys, which only
//! open. A sealed value names the key that sealed it, so after a new key is introduced old rows
//! still open, and a re-encryption pass ([`Keyring::needs_reseal`]) moves them to the new key at its
//! own pace, with no downtime. Each value is bound to a context (for example the owning row's id)
//! as associated data, so a ciphertext copied to another row does not open there.
//!
//! This crate does no IO.

use std::collections::BTreeMap;

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use ring::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    digest,
    rand::{SecureRandom as _, SystemRandom},
};

const MAGIC: &[u8; 3] = b"SB1";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretBoxError {
    #[error("an encryption key must be the base64 encoding of exactly 32 bytes")]
    BadKey,
    #[error("the sealed value is malformed")]
    Malformed,
    #[error("the sealed value was made with key {0}, which this keyring does not hold")]
    UnknownKey(String),
    #[error("the sealed value does not open: wrong key, wrong context, or tampered with")]
    Open,
}

struct Key {
    id: String,
    aead: LessSafeKey,
}

/// The keys that seal and open secrets.
pub struct Keyring {
    current: Key,
    all: BTreeMap<String, Key>,
    random: SystemRandom,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current.id)
            .field("keys", &self.all.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn parse_key(b64: &str) -> Result<Key, SecretBoxError> {
    let bytes = B64.decode(b64.trim()).map_err(|_| SecretBoxError::BadKey)?;
    if bytes.len() != 32 {
        return Err(SecretBoxError::BadKey);
    }
    // The id is derived from the key, so operators never have to name keys, and two services
    // configured with the same key agree on its id.
    let hash = digest::digest(&digest::SHA256, &bytes);
    let id: String = hash.as_ref()[..4]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let unbound = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| SecretBoxError::BadKey)?;
    Ok(Key {
        id,
        aead: LessSafeKey::new(unbound),
    })
}

impl Keyring {
    /// A keyring from the current key and the previous ones, each base64 of 32 bytes.
    pub fn new(current: &str, previous: &[String]) -> Result<Self, SecretBoxError> {
        let mut all = BTreeMap::new();
        for old in previous {
            let key = parse_key(old)?;
            all.insert(key.id.clone(), key);
        }
        let current_key = parse_key(current)?;
        all.insert(current_key.id.clone(), parse_key(current)?);
        Ok(Self {
            current: current_key,
            all,
            random: SystemRandom::new(),
        })
    }

    /// The id of the key that seals.
    pub fn current_key_id(&self) -> &str {
        &self.current.id
    }

    /// Encrypts `plaintext`, bound to `context`.
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .expect("the system random source works");
        let mut out = Vec::with_capacity(MAGIC.len() + 1 + 8 + NONCE_LEN + plaintext.len() + 16);
        out.extend_from_slice(MAGIC);
        out.push(u8::try_from(self.current.id.len()).expect("key ids are 8 characters"));
        out.extend_from_slice(self.current.id.as_bytes());
        out.extend_from_slice(&nonce);
        let mut sealed = plaintext.to_vec();
        self.current
            .aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(&self.current.id, context)),
                &mut sealed,
            )
            .expect("sealing in memory does not fail");
        out.extend_from_slice(&sealed);
        out
    }

    /// Decrypts a value sealed for `context` by any key of this keyring.
    pub fn open(&self, sealed: &[u8], context: &str) -> Result<Vec<u8>, SecretBoxError> {
        let (key_id, nonce, ciphertext) = split(sealed)?;
        let key = self
            .all
            .get(key_id)
            .ok_or_else(|| SecretBoxError::UnknownKey(key_id.to_owned()))?;
        let mut buffer = ciphertext.to_vec();
        let plain = key
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(key_id, context)),
                &mut buffer,
            )
            .map_err(|_| SecretBoxError::Open)?;
        Ok(plain.to_vec())
    }

    /// The id of the key that sealed `sealed`.
    pub fn key_id_of(sealed: &[u8]) -> Result<&str, SecretBoxError> {
        split(sealed).map(|(id, _, _)| id)
    }

    /// True when `sealed` was made with a key other than the current one.
    pub fn needs_reseal(&self, sealed: &[u8]) -> Result<bool, SecretBoxError> {
        Ok(Self::key_id_of(sealed)? != self.current.id)
    }
}

fn aad(key_id: &str, context: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(key_id.len() + context.len() + 1);
    aad.extend_from_slice(key_id.as_bytes());
    aad.push(0);
    aad.extend_from_slice(context.as_bytes());
    aad
}

fn split(sealed: &[u8]) -> Result<(&str, [u8; NONCE_LEN], &[u8]), SecretBoxError> {
    let rest = sealed
        .strip_prefix(MAGIC)
        .ok_or(SecretBoxError::Malformed)?;
    let (&id_len, rest) = rest.split_first().ok_or(SecretBoxError::Malformed)?;
    let id_len = usize::from(id_len);
    if rest.len() < id_len + NONCE_LEN + 16 {
        return Err(SecretBoxError::Malformed);
    }
    let (id, rest) = rest.split_at(id_len);
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let id = std::str::from_utf8(id).map_err(|_| SecretBoxError::Malformed)?;
    Ok((
        id,
        nonce.try_into().expect("split at NONCE_LEN"),
        ciphertext,
    ))
}

/// A new random key, base64 of 32 bytes, for `WEBHOOK_SECRET_ENCRYPTION_KEY`.
pub fn generate_key() -> String {
    let bytes: [u8; 32] = ring::rand::generate(&SystemRandom::new())
        .expect("the system random source works")
        .expose();
    B64.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_bound_to_context() {
        let ring = Keyring::new(&generate_key(), &[]).unwrap();
        let sealed = ring.seal(b"whsec_secret", "ep_1");
        assert!(!sealed.windows(12).any(|w| w == b"whsec_secret"));
        assert_eq!(ring.open(&sealed, "ep_1").unwrap(), b"whsec_secret");
        assert_eq!(ring.open(&sealed, "ep_2"), Err(SecretBoxError::Open));
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(ring.open(&tampered, "ep_1"), Err(SecretBoxError::Open));
    }

    #[test]
    fn rotation_keeps_old_values_readable_and_reseals() {
        let (old, new) = (generate_key(), generate_key());
        let before = Keyring::new(&old, &[]).unwrap();
        let sealed = before.seal(b"s", "ctx");
        let after = Keyring::new(&new, std::slice::from_ref(&old)).unwrap();
        assert!(after.needs_reseal(&sealed).unwrap());
        assert_eq!(after.open(&sealed, "ctx").unwrap(), b"s");
        let resealed = after.seal(&after.open(&sealed, "ctx").unwrap(), "ctx");
        assert!(!after.needs_reseal(&resealed).unwrap());
        let only_new = Keyring::new(&new, &[]).unwrap();
        assert!(matches!(
            only_new.open(&sealed, "ctx"),
            Err(SecretBoxError::UnknownKey(_))
        ));
    }

    #[test]
    fn bad_keys_are_refused() {
        assert_eq!(
            Keyring::new("c2hvcnQ=", &[]).unwrap_err(),
            SecretBoxError::BadKey
        );
        assert_eq!(
            Keyring::new("not base64!", &[]).unwrap_err(),
            SecretBoxError::BadKey
        );
    }
}
