//! The internal token: its claims, how a caller signs (and caches) it, and how a server checks it.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ids::{KeyId, Tenant};
use jsonwebtoken::{Algorithm, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

use crate::keys::{SigningKey, TrustedKeys};

/// How long a token is valid. Servers refuse tokens that claim more.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// A cached token is replaced this long before it expires, so one never expires in flight.
pub const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(15);
/// How far the clocks of two services may disagree.
pub const CLOCK_LEEWAY: Duration = Duration::from_secs(5);
/// Cached tokens kept per caller before the cache is swept.
const CACHE_LIMIT: usize = 10_000;

/// What an API key may do. The same names are the public API's key scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Tts,
    Audio,
    Webhooks,
    Usage,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 5] = [
        Scope::Tts,
        Scope::Audio,
        Scope::Webhooks,
        Scope::Usage,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tts => "tts",
            Self::Audio => "audio",
            Self::Webhooks => "webhooks",
            Self::Usage => "usage",
            Self::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of scopes; written in tokens as one space-separated string (as OAuth writes `scope`).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Scopes(u8);

impl Scopes {
    pub fn of(scopes: impl IntoIterator<Item = Scope>) -> Self {
        Self(scopes.into_iter().fold(0, |bits, s| bits | s.bit()))
    }

    pub fn all() -> Self {
        Self::of(Scope::ALL)
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    /// The scopes in both sets.
    pub fn intersection(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    /// Parses space-separated scope names; an unknown name is an error naming it.
    pub fn parse(text: &str) -> Result<Self, String> {
        text.split_whitespace()
            .map(|name| Scope::parse(name).ok_or_else(|| format!("unknown scope {name:?}")))
            .collect::<Result<Vec<_>, _>>()
            .map(Self::of)
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Scope::as_str).collect();
        f.write_str(&names.join(" "))
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scopes({self})")
    }
}

impl Serialize for Scopes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Scopes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The API client a call acts for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    pub tenant: Tenant,
    /// The API key the client called with; none for an operator's own tools.
    pub key_id: Option<KeyId>,
    pub scopes: Scopes,
}

/// The claims of an internal token.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    aud: String,
    iat: u64,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tenant: Option<Tenant>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_id: Option<KeyId>,
    #[serde(default, skip_serializing_if = "Scopes::is_empty")]
    scope: Scopes,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Cached tokens by (audience, principal): the token and when to replace it (unix seconds).
type TokenCache = HashMap<(String, Option<Principal>), (String, u64)>;

/// Signs the tokens of one calling service and caches each (audience, principal) pair's token
/// until shortly before it expires.
pub struct Minter {
    service: String,
    key: SigningKey,
    cache: Mutex<TokenCache>,
}

impl fmt::Debug for Minter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Minter")
            .field("service", &self.service)
            .field("kid", &self.key.kid())
            .finish_non_exhaustive()
    }
}

impl Minter {
    pub fn new(service: impl Into<String>, key: SigningKey) -> Arc<Self> {
        Arc::new(Self {
            service: service.into(),
            key,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// A token for a call to `audience`, acting for `principal` when given.
    pub fn token(
        &self,
        audience: &str,
        principal: Option<&Principal>,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let now = unix_now();
        let cache_key = (audience.to_owned(), principal.cloned());
        if let Some((token, refresh_at)) = self.cache.lock().expect("not poisoned").get(&cache_key)
            && now < *refresh_at
        {
            return Ok(token.clone());
        }
        let token = self.sign(audience, principal, now, TOKEN_LIFETIME)?;
        let refresh_at = now + (TOKEN_LIFETIME - REFRESH_BEFORE_EXPIRY).as_secs();
        let mut cache = self.cache.lock().expect("not poisoned");
        if cache.len() >= CACHE_LIMIT {
            cache.retain(|_, (_, refresh)| now < *refresh);
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
        }
        cache.insert(cache_key, (token.clone(), refresh_at));
        Ok(token)
    }

    /// Signs a token issued at `issued_at` (unix seconds) that lives `lifetime`; tests use it to
    /// make expired and over-long tokens.
    pub fn sign(
        &self,
        audience: &str,
        principal: Option<&Principal>,
        issued_at: u64,
        lifetime: Duration,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.key.kid().to_owned());
        let claims = Claims {
            sub: self.service.clone(),
            aud: audience.to_owned(),
            iat: issued_at,
            exp: issued_at + lifetime.as_secs(),
            tenant: principal.map(|p| p.tenant.clone()),
            key_id: principal.and_then(|p| p.key_id),
            scope: principal.map(|p| p.scopes).unwrap_or_default(),
        };
        jsonwebtoken::encode(&header, &claims, self.key.encoding())
    }
}

/// Who made a verified call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The calling service, proven by its key.
    pub service: String,
    /// The API client it acts for, if any.
    pub principal: Option<Principal>,
}

/// Why a token was refused. The text is safe to return to the caller and to log: it never holds
/// the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a well-formed EdDSA JWT")]
    Malformed,
    #[error("the token is signed by a key this service does not trust")]
    UnknownKey,
    #[error("the token's signature is not valid")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is for another service")]
    Audience,
    #[error("the token names a caller other than its key's service")]
    Subject,
    #[error("the token lives longer than {}s or was issued in the future", TOKEN_LIFETIME.as_secs())]
    Lifetime,
    #[error("the token's claims are not valid: {0}")]
    Claims(String),
}

/// Checks the tokens addressed to one service.
pub struct Verifier {
    audience: String,
    keys: TrustedKeys,
    validation: Validation,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("audience", &self.audience)
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn new(audience: impl Into<String>, keys: TrustedKeys) -> Self {
        let audience = audience.into();
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.leeway = CLOCK_LEEWAY.as_secs();
        validation.set_audience(&[audience.as_str()]);
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        Self {
            audience,
            keys,
            validation,
        }
    }

    /// Checks a token's header, signature, audience, expiry and lifetime, and that its caller
    /// owns the key that signed it.
    pub fn verify(&self, token: &str) -> Result<Verified, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenError::Malformed);
        }
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.keys.get(kid))
            .ok_or(TokenError::UnknownKey)?;
        let claims = jsonwebtoken::decode::<Claims>(token, &key.decoding, &self.validation)
            .map_err(|error| match error.kind() {
                ErrorKind::InvalidSignature => TokenError::Signature,
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::InvalidAudience => TokenError::Audience,
                ErrorKind::Json(e) => TokenError::Claims(e.to_string()),
                ErrorKind::MissingRequiredClaim(claim) => {
                    TokenError::Claims(format!("{claim} is missing"))
                }
                _ => TokenError::Malformed,
            })?
            .claims;
        if claims.sub != key.service {
            return Err(TokenError::Subject);
        }
        let leeway = CLOCK_LEEWAY.as_secs();
        if claims.exp.saturating_sub(claims.iat) > TOKEN_LIFETIME.as_secs()
            || claims.iat > unix_now() + leeway
        {
            return Err(TokenError::Lifetime);
        }
        let principal = match (claims.tenant, claims.key_id, claims.scope) {
            (Some(tenant), key_id, scopes) => Some(Principal {
                tenant,
                key_id,
                scopes,
            }),
            (None, None, scopes) if scopes.is_empty() => None,
            _ => {
                return Err(TokenError::Claims(
                    "a key id or scopes without a tenant".to_owned(),
                ));
            }
        };
        Ok(Verified {
            service: claims.sub,
            principal,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        SigningKey::parse(&SigningKey::generate()).unwrap()
    }

    fn trusting(service: &str, key: &SigningKey) -> TrustedKeys {
        let mut keys = TrustedKeys::default();
        keys.trust(service, key).unwrap();
        keys
    }

    fn client() -> Principal {
        Principal {
            tenant: Tenant::parse("acme").unwrap(),
            key_id: Some(KeyId::new()),
            scopes: Scopes::of([Scope::Tts, Scope::Webhooks]),
        }
    }

    #[test]
    fn a_token_carries_its_caller_and_client() {
        let key = key();
        let minter = Minter::new("gateway", key.clone());
        let verifier = Verifier::new("delivery-worker", trusting("gateway", &key));
        let principal = client();
        let token = minter.token("delivery-worker", Some(&principal)).unwrap();
        let verified = verifier.verify(&token).unwrap();
        assert_eq!(verified.service, "gateway");
        assert_eq!(verified.principal, Some(principal));
        let own = minter.token("delivery-worker", None).unwrap();
        assert_eq!(verifier.verify(&own).unwrap().principal, None);
    }

    #[test]
    fn tokens_are_cached_per_audience_and_principal() {
        let minter = Minter::new("gateway", key());
        let a = minter.token("tts-inference", None).unwrap();
        assert_eq!(minter.token("tts-inference", None).unwrap(), a);
        assert_ne!(minter.token("delivery-worker", None).unwrap(), a);
        assert_ne!(minter.token("tts-inference", Some(&client())).unwrap(), a);
    }

    #[test]
    fn refusals() {
        let (gateway, other) = (key(), key());
        let verifier = Verifier::new("delivery-worker", trusting("gateway", &gateway));
        let minter = Minter::new("gateway", gateway.clone());
        let now = unix_now();

        let wrong_audience = minter.token("tts-inference", None).unwrap();
        assert_eq!(verifier.verify(&wrong_audience), Err(TokenError::Audience));

        let expired = minter
            .sign("delivery-worker", None, now - 120, TOKEN_LIFETIME)
            .unwrap();
        assert_eq!(verifier.verify(&expired), Err(TokenError::Expired));

        let too_long = minter
            .sign("delivery-worker", None, now, Duration::from_secs(3600))
            .unwrap();
        assert_eq!(verifier.verify(&too_long), Err(TokenError::Lifetime));

        let untrusted = Minter::new("gateway", other.clone())
            .token("delivery-worker", None)
            .unwrap();
        assert_eq!(verifier.verify(&untrusted), Err(TokenError::UnknownKey));

        // A trusted key used to claim another service's name.
        let mut keys = trusting("gateway", &gateway);
        keys.trust("audio-generation", &other).unwrap();
        let verifier = Verifier::new("delivery-worker", keys);
        let impostor = Minter::new("gateway", other)
            .token("delivery-worker", None)
            .unwrap();
        assert_eq!(verifier.verify(&impostor), Err(TokenError::Subject));

        // A signature that does not match the claims.
        let good = minter.token("delivery-worker", None).unwrap();
        let mut parts: Vec<&str> = good.split('.').collect();
        let forged_claims = {
            use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
            let mut claims: serde_json::Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
            claims["tenant"] = "victim".into();
            claims["scope"] = "admin".into();
            URL_SAFE_NO_PAD.encode(claims.to_string())
        };
        parts[1] = &forged_claims;
        assert_eq!(
            verifier.verify(&parts.join(".")),
            Err(TokenError::Signature)
        );

        for garbage in ["", "a.b.c", "Bearer x", &"x".repeat(10_000)] {
            assert!(verifier.verify(garbage).is_err());
        }
    }

    #[test]
    fn an_hs256_token_is_refused_whatever_its_key() {
        let key = key();
        let verifier = Verifier::new("delivery-worker", trusting("gateway", &key));
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(key.kid().to_owned());
        let now = unix_now();
        let token = jsonwebtoken::encode(
            &header,
            &serde_json::json!({ "sub": "gateway", "aud": "delivery-worker", "iat": now, "exp": now + 30 }),
            &jsonwebtoken::EncodingKey::from_secret(key.public_key().as_bytes()),
        )
        .unwrap();
        assert_eq!(verifier.verify(&token), Err(TokenError::Malformed));
    }

    #[test]
    fn scopes_parse_and_print() {
        let scopes = Scopes::parse("tts  admin").unwrap();
        assert!(scopes.contains(Scope::Admin) && !scopes.contains(Scope::Audio));
        assert_eq!(scopes.to_string(), "tts admin");
        assert!(Scopes::parse("tts root").unwrap_err().contains("root"));
    }
}
