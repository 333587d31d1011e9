//! Standard Webhooks signatures: signing outbound webhooks and verifying inbound ones.
//!
//! A webhook carries three headers: `webhook-id`, `webhook-timestamp` (Unix seconds) and
//! `webhook-signature`, a space-separated list of `version,base64` signatures over
//! `{id}.{timestamp}.{body}`. Version `v1` is HMAC-SHA256 with a symmetric secret written
//! `whsec_<base64>`; version `v1a` is Ed25519 with a signing key `whsk_<base64 seed>` and a public
//! key `whpk_<base64>`. During a secret rotation a sender signs with every live secret, so a
//! receiver holding either the old or the new one accepts the message.
//!
//! [`verify`] checks the timestamp against a tolerance (5 minutes by default) to stop replays,
//! and compares signatures in constant time. Partners, `webhook-ingest` and `delivery-worker`
//! share this code. This crate does no IO and never reads the clock: callers pass `now`.

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use ring::{
    hmac,
    rand::SystemRandom,
    signature::{self, Ed25519KeyPair, KeyPair as _},
};

/// The header names, as Standard Webhooks spells them.
pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";

/// How far a timestamp may be from the receiver's clock, by default.
pub const DEFAULT_TOLERANCE_SECS: i64 = 5 * 60;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the secret is not a valid {0} key")]
    BadKey(&'static str),
    #[error("the webhook-timestamp header is not a Unix time in seconds")]
    BadTimestamp,
    #[error("the webhook timestamp is too old")]
    TooOld,
    #[error("the webhook timestamp is too far in the future")]
    TooNew,
    #[error("the webhook-id header is empty")]
    MissingId,
    #[error("no signature matches")]
    NoMatch,
}

/// A key that signs outbound webhooks.
#[derive(Clone)]
pub enum SigningKey {
    /// `whsec_…`: HMAC-SHA256, signature version `v1`.
    Hmac(hmac::Key, Vec<u8>),
    /// `whsk_…`: Ed25519, signature version `v1a`.
    Ed25519(std::sync::Arc<Ed25519KeyPair>, [u8; 32]),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Hmac(..) => "SigningKey::Hmac(..)",
            Self::Ed25519(..) => "SigningKey::Ed25519(..)",
        })
    }
}

impl SigningKey {
    /// Parses `whsec_<base64>` or `whsk_<base64 of a 32-byte seed>`.
    pub fn parse(secret: &str) -> Result<Self, SignatureError> {
        if let Some(b64) = secret.strip_prefix("whsec_") {
            let bytes = B64
                .decode(b64)
                .map_err(|_| SignatureError::BadKey("whsec_"))?;
            if !(24..=64).contains(&bytes.len()) {
                return Err(SignatureError::BadKey("whsec_"));
            }
            Ok(Self::Hmac(hmac::Key::new(hmac::HMAC_SHA256, &bytes), bytes))
        } else if let Some(b64) = secret.strip_prefix("whsk_") {
            let seed: [u8; 32] = B64
                .decode(b64)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or(SignatureError::BadKey("whsk_"))?;
            let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
                .map_err(|_| SignatureError::BadKey("whsk_"))?;
            Ok(Self::Ed25519(std::sync::Arc::new(pair), seed))
        } else {
            Err(SignatureError::BadKey("whsec_ or whsk_"))
        }
    }

    /// A new random HMAC secret (`whsec_` with 32 random bytes).
    pub fn generate_hmac() -> String {
        let bytes: [u8; 32] = ring::rand::generate(&SystemRandom::new())
            .expect("the system random source works")
            .expose();
        format!("whsec_{}", B64.encode(bytes))
    }

    /// A new random Ed25519 signing key (`whsk_` with a 32-byte seed).
    pub fn generate_ed25519() -> String {
        let seed: [u8; 32] = ring::rand::generate(&SystemRandom::new())
            .expect("the system random source works")
            .expose();
        format!("whsk_{}", B64.encode(seed))
    }

    /// The text form of this key (`whsec_…` or `whsk_…`).
    pub fn to_secret_string(&self) -> String {
        match self {
            Self::Hmac(_, bytes) => format!("whsec_{}", B64.encode(bytes)),
            Self::Ed25519(_, seed) => format!("whsk_{}", B64.encode(seed)),
        }
    }

    /// What a receiver needs to verify: the same `whsec_` secret, or the `whpk_` public key.
    pub fn verification_key(&self) -> String {
        match self {
            Self::Hmac(..) => self.to_secret_string(),
            Self::Ed25519(pair, _) => format!("whpk_{}", B64.encode(pair.public_key().as_ref())),
        }
    }

    /// One signature, `v1,<base64>` or `v1a,<base64>`, over `{id}.{timestamp}.{body}`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let content = signed_content(id, timestamp, body);
        match self {
            Self::Hmac(key, _) => format!("v1,{}", B64.encode(hmac::sign(key, &content))),
            Self::Ed25519(pair, _) => format!("v1a,{}", B64.encode(pair.sign(&content))),
        }
    }
}

fn signed_content(id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(id.len() + body.len() + 24);
    content.extend_from_slice(id.as_bytes());
    content.push(b'.');
    content.extend_from_slice(timestamp.to_string().as_bytes());
    content.push(b'.');
    content.extend_from_slice(body);
    content
}

/// The `webhook-signature` header value for a message signed with every key in `keys` (the
/// current secret first, then any secret still valid during a rotation).
pub fn signature_header(keys: &[SigningKey], id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|key| key.sign(id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A key that verifies inbound webhooks.
#[derive(Clone)]
pub enum VerifyingKey {
    Hmac(hmac::Key),
    Ed25519(Vec<u8>),
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Hmac(..) => "VerifyingKey::Hmac(..)",
            Self::Ed25519(..) => "VerifyingKey::Ed25519(..)",
        })
    }
}

impl VerifyingKey {
    /// Parses `whsec_<base64>` or `whpk_<base64 public key>`.
    pub fn parse(key: &str) -> Result<Self, SignatureError> {
        if key.starts_with("whsec_") {
            match SigningKey::parse(key)? {
                SigningKey::Hmac(key, _) => Ok(Self::Hmac(key)),
                SigningKey::Ed25519(..) => unreachable!("whsec_ parses as HMAC"),
            }
        } else if let Some(b64) = key.strip_prefix("whpk_") {
            let bytes = B64
                .decode(b64)
                .map_err(|_| SignatureError::BadKey("whpk_"))?;
            if bytes.len() != 32 {
                return Err(SignatureError::BadKey("whpk_"));
            }
            Ok(Self::Ed25519(bytes))
        } else {
            Err(SignatureError::BadKey("whsec_ or whpk_"))
        }
    }

    fn matches(&self, version: &str, signature: &[u8], content: &[u8]) -> bool {
        match (self, version) {
            // `hmac::verify` compares in constant time.
            (Self::Hmac(key), "v1") => hmac::verify(key, content, signature).is_ok(),
            (Self::Ed25519(public), "v1a") => {
                signature::UnparsedPublicKey::new(&signature::ED25519, public)
                    .verify(content, signature)
                    .is_ok()
            }
            _ => false,
        }
    }
}

/// The headers of a received webhook.
#[derive(Debug, Clone, Copy)]
pub struct SignedHeaders<'a> {
    pub id: &'a str,
    pub timestamp: &'a str,
    pub signature: &'a str,
}

/// Checks a received webhook: the timestamp is within `tolerance_secs` of `now` (Unix seconds),
/// and at least one signature in the header matches one of `keys`.
pub fn verify(
    keys: &[VerifyingKey],
    headers: SignedHeaders<'_>,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    if headers.id.is_empty() {
        return Err(SignatureError::MissingId);
    }
    let timestamp: i64 = headers
        .timestamp
        .trim()
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    if timestamp < now - tolerance_secs {
        return Err(SignatureError::TooOld);
    }
    if timestamp > now + tolerance_secs {
        return Err(SignatureError::TooNew);
    }
    let content = signed_content(headers.id, timestamp, body);
    let matched = headers.signature.split_ascii_whitespace().any(|entry| {
        let Some((version, b64)) = entry.split_once(',') else {
            return false;
        };
        let Ok(signature) = B64.decode(b64) else {
            return false;
        };
        keys.iter()
            .any(|key| key.matches(version, &signature, &content))
    });
    if matched {
        Ok(())
    } else {
        Err(SignatureError::NoMatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const EXPECTED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn headers<'a>(ts: &'a str, sig: &'a str) -> SignedHeaders<'a> {
        SignedHeaders {
            id: ID,
            timestamp: ts,
            signature: sig,
        }
    }

    #[test]
    fn standard_webhooks_vector() {
        let key = SigningKey::parse(SECRET).unwrap();
        assert_eq!(key.sign(ID, TS, BODY), EXPECTED);
        let verifying = [VerifyingKey::parse(SECRET).unwrap()];
        let ts = TS.to_string();
        verify(&verifying, headers(&ts, EXPECTED), BODY, TS, 300).unwrap();
    }

    #[test]
    fn rejects_tampering_staleness_and_wrong_keys() {
        let verifying = [VerifyingKey::parse(SECRET).unwrap()];
        let ts = TS.to_string();
        assert_eq!(
            verify(
                &verifying,
                headers(&ts, EXPECTED),
                b"{\"test\": 1}",
                TS,
                300
            ),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            verify(&verifying, headers(&ts, EXPECTED), BODY, TS + 301, 300),
            Err(SignatureError::TooOld)
        );
        assert_eq!(
            verify(&verifying, headers(&ts, EXPECTED), BODY, TS - 301, 300),
            Err(SignatureError::TooNew)
        );
        let other = [VerifyingKey::parse(&SigningKey::generate_hmac()).unwrap()];
        assert_eq!(
            verify(&other, headers(&ts, EXPECTED), BODY, TS, 300),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            verify(&verifying, headers("soon", EXPECTED), BODY, TS, 300),
            Err(SignatureError::BadTimestamp)
        );
    }

    #[test]
    fn rotation_header_verifies_with_either_secret() {
        let old = SigningKey::parse(SECRET).unwrap();
        let new = SigningKey::parse(&SigningKey::generate_hmac()).unwrap();
        let header = signature_header(&[new.clone(), old.clone()], ID, TS, BODY);
        assert_eq!(header.split(' ').count(), 2);
        let ts = TS.to_string();
        for key in [old, new] {
            let verifying = [VerifyingKey::parse(&key.verification_key()).unwrap()];
            verify(&verifying, headers(&ts, &header), BODY, TS, 300).unwrap();
        }
    }

    #[test]
    fn ed25519_round_trip() {
        let key = SigningKey::parse(&SigningKey::generate_ed25519()).unwrap();
        let signature = key.sign(ID, TS, BODY);
        assert!(signature.starts_with("v1a,"));
        let public = key.verification_key();
        assert!(public.starts_with("whpk_"));
        let verifying = [VerifyingKey::parse(&public).unwrap()];
        let ts = TS.to_string();
        verify(&verifying, headers(&ts, &signature), BODY, TS, 300).unwrap();
        // An HMAC key never accepts a v1a signature, nor the other way round.
        let hmac = [VerifyingKey::parse(SECRET).unwrap()];
        assert!(verify(&hmac, headers(&ts, &signature), BODY, TS, 300).is_err());
        // The text form round-trips.
        let again = SigningKey::parse(&key.to_secret_string()).unwrap();
        assert_eq!(again.sign(ID, TS, BODY), signature);
    }

    #[test]
    fn bad_keys_are_refused() {
        assert!(SigningKey::parse("secret").is_err());
        assert!(SigningKey::parse("whsec_!!!").is_err());
        assert!(SigningKey::parse("whsk_AAAA").is_err());
        assert!(VerifyingKey::parse("whpk_AAAA").is_err());
    }

    /// Properties over arbitrary input: the parsers never panic, nothing but a genuine signature
    /// verifies, and any change to what was signed fails. `PROPTEST_CASES` runs more.
    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

            #[test]
            fn arbitrary_headers_never_verify(
                id in "\\PC{0,40}",
                timestamp in prop_oneof!["\\PC{0,24}", Just(TS.to_string()), any::<i64>().prop_map(|t| t.to_string())],
                signature in prop_oneof!["\\PC{0,200}", "v1,[A-Za-z0-9+/=]{0,60}", "v1a,[A-Za-z0-9+/=]{0,100}"],
                body in prop::collection::vec(any::<u8>(), 0..256),
            ) {
                let keys = [VerifyingKey::parse(SECRET).unwrap()];
                let headers = SignedHeaders { id: &id, timestamp: &timestamp, signature: &signature };
                prop_assert!(verify(&keys, headers, &body, TS, 300).is_err());
            }

            #[test]
            fn genuine_signatures_verify_and_any_change_fails(
                ed25519 in any::<bool>(),
                id in "[!-~]{1,60}",
                body in prop::collection::vec(any::<u8>(), 0..512),
                flip in any::<prop::sample::Index>(),
                bit in 0u8..8,
            ) {
                let secret = if ed25519 { SigningKey::generate_ed25519() } else { SigningKey::generate_hmac() };
                let key = SigningKey::parse(&secret).unwrap();
                let keys = [VerifyingKey::parse(&key.verification_key()).unwrap()];
                let header = signature_header(&[key], &id, TS, &body);
                let ts = TS.to_string();
                let genuine = SignedHeaders { id: &id, timestamp: &ts, signature: &header };
                prop_assert!(verify(&keys, genuine, &body, TS, 300).is_ok());
                if !body.is_empty() {
                    let mut changed = body.clone();
                    changed[flip.index(body.len())] ^= 1 << bit;
                    prop_assert!(verify(&keys, genuine, &changed, TS, 300).is_err());
                }
                let later = (TS + 1).to_string();
                let moved = SignedHeaders { timestamp: &later, ..genuine };
                prop_assert!(verify(&keys, moved, &body, TS, 300).is_err());
                let other_id = format!("{id}x");
                let renamed = SignedHeaders { id: &other_id, ..genuine };
                prop_assert!(verify(&keys, renamed, &body, TS, 300).is_err());
            }

            #[test]
            fn key_parsing_never_panics(text in prop_oneof!["\\PC{0,80}", "whsec_[A-Za-z0-9+/=]{0,60}", "whpk_[A-Za-z0-9+/=]{0,60}", "whsk_[A-Za-z0-9+/=]{0,90}"]) {
                let _ = SigningKey::parse(&text);
                let _ = VerifyingKey::parse(&text);
            }
        }
    }
}
