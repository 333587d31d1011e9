//! Short-lived access tokens: `POST /v1/auth/token` exchanges an API key for a JWT (HS256) with
//! the key's tenant and scopes, valid at most 15 minutes, accepted as `Authorization: Bearer`.
//!
//! The signing key is derived from `API_KEY_PEPPER` (HMAC-SHA256 of a fixed label), so every
//! replica shares it without another secret, and changing the pepper ends every token as it ends
//! every key. A token names its key (`sub`), and the gateway honours it only while that key is
//! usable: revoking the key ends its tokens on every replica within the second that the key's
//! own revocation takes (see [`crate::auth`]).

use actix_web::{HttpRequest, HttpResponse, web};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use http_problem::Problem;
use ids::{KeyId, Tenant};
use internal_rpc::Scopes;
use serde::{Deserialize, Serialize};
use settings::{ExposeSecret as _, SecretString};
use utoipa::ToSchema;

use crate::{
    auth::{Caller, presented_api_key},
    openapi::{self, tag},
    routes::resource,
};

/// The longest a token lives, and the default.
pub const MAX_TTL_SECONDS: i64 = 900;
/// The shortest lifetime a client may ask for.
pub const MIN_TTL_SECONDS: i64 = 60;
const ISSUER: &str = "sonora";
/// `{"alg":"HS256","typ":"JWT"}`, the only header accepted.
const HEADER: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";

/// Signs and checks tokens; cheap to clone.
#[derive(Clone)]
pub struct TokenSigner(ring::hmac::Key);

impl TokenSigner {
    pub fn new(pepper: &SecretString) -> Self {
        let derive =
            ring::hmac::Key::new(ring::hmac::HMAC_SHA256, pepper.expose_secret().as_bytes());
        let key = ring::hmac::sign(&derive, b"sonora gateway access token signing key v1");
        Self(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_ref()))
    }

    /// A token for `claims`.
    pub fn issue(&self, claims: &Claims) -> String {
        let body =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&Wire::from(claims)).expect("serializable"));
        let signed = format!("{HEADER}.{body}");
        let signature = URL_SAFE_NO_PAD.encode(ring::hmac::sign(&self.0, signed.as_bytes()));
        format!("{signed}.{signature}")
    }

    /// The claims of a genuine token still valid at `now`; `Err(true)` when it has expired,
    /// `Err(false)` when it is not a token of this gateway.
    pub fn verify(&self, token: &str, now: DateTime<Utc>) -> Result<Claims, bool> {
        let mut parts = token.rsplitn(2, '.');
        let (Some(signature), Some(signed)) = (parts.next(), parts.next()) else {
            return Err(false);
        };
        let Some((header, body)) = signed.split_once('.') else {
            return Err(false);
        };
        if header != HEADER {
            return Err(false);
        }
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|_| false)?;
        ring::hmac::verify(&self.0, signed.as_bytes(), &signature).map_err(|_| false)?;
        let wire: Wire = URL_SAFE_NO_PAD
            .decode(body)
            .ok()
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(false)?;
        let claims = Claims::try_from(wire).map_err(|()| false)?;
        if claims.expires_at <= now {
            return Err(true);
        }
        Ok(claims)
    }
}

/// Whether a credential is a token rather than an API key (keys never contain a dot).
pub fn looks_like_token(credential: &str) -> bool {
    credential.len() <= 4096 && credential.starts_with("eyJ") && credential.contains('.')
}

/// What a token says.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    pub key_id: KeyId,
    pub tenant: Tenant,
    pub scopes: Scopes,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// The JWT's claims as written.
#[derive(Serialize, Deserialize)]
struct Wire {
    iss: String,
    sub: String,
    tenant: String,
    scope: String,
    iat: i64,
    exp: i64,
}

impl From<&Claims> for Wire {
    fn from(c: &Claims) -> Self {
        Self {
            iss: ISSUER.to_owned(),
            sub: c.key_id.to_string(),
            tenant: c.tenant.to_string(),
            scope: c.scopes.to_string(),
            iat: c.issued_at.timestamp(),
            exp: c.expires_at.timestamp(),
        }
    }
}

impl TryFrom<Wire> for Claims {
    type Error = ();

    fn try_from(w: Wire) -> Result<Self, ()> {
        if w.iss != ISSUER || w.exp - w.iat > MAX_TTL_SECONDS {
            return Err(());
        }
        Ok(Self {
            key_id: KeyId::parse(&w.sub).map_err(drop)?,
            tenant: Tenant::parse(&w.tenant).map_err(drop)?,
            scopes: Scopes::parse(&w.scope).map_err(drop)?,
            issued_at: DateTime::from_timestamp(w.iat, 0).ok_or(())?,
            expires_at: DateTime::from_timestamp(w.exp, 0).ok_or(())?,
        })
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/v1/auth/token", "POST").route(web::post().to(exchange)));
}

#[derive(Deserialize, Default, ToSchema)]
#[schema(as = TokenRequest)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    /// Seconds, 60 to 900; 900 when absent.
    #[serde(default)]
    #[schema(minimum = 60, maximum = 900)]
    expires_in: Option<i64>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = Token)]
struct TokenResponse {
    /// The JWT, to send as `Authorization: Bearer`.
    access_token: String,
    /// `Bearer`.
    token_type: &'static str,
    /// Seconds it is valid for (less than asked when the key expires sooner).
    expires_in: i64,
    expires_at: DateTime<Utc>,
    /// The key's scopes, which the token carries.
    scopes: Vec<&'static str>,
}

/// A short-lived token for the calling key.
///
/// A JWT with the key's tenant and scopes, valid `expires_in` seconds (60 to 900, 900 when the
/// body is left out), accepted as `Authorization: Bearer` while its key is; revoking the key ends
/// it. Made from an API key only, not from another token (403).
#[utoipa::path(
    post,
    path = "/v1/auth/token",
    tag = tag::KEYS,
    operation_id = "create_token",
    request_body(content = Option<TokenBody>),
    responses(
        (status = 200, description = "The token.", body = TokenResponse),
        (status = 400, response = openapi::BadRequest),
        (status = 403, response = openapi::Forbidden),
    ),
    security(("api_key" = []), ("bearer" = [])),
)]
async fn exchange(
    req: HttpRequest,
    caller: Caller,
    signer: web::Data<TokenSigner>,
    body: web::Bytes,
) -> Result<HttpResponse, Problem> {
    if !presented_api_key(&req) {
        return Err(Problem::new(
            actix_web::http::StatusCode::FORBIDDEN,
            "forbidden",
            "Forbidden",
        )
        .detail("A token is made from an API key, not from another token."));
    }
    let body: TokenBody = crate::webhooks::optional_body(&body)?;
    let ttl = body.expires_in.unwrap_or(MAX_TTL_SECONDS);
    if !(MIN_TTL_SECONDS..=MAX_TTL_SECONDS).contains(&ttl) {
        return Err(Problem::invalid_request(format!(
            "expires_in must be between {MIN_TTL_SECONDS} and {MAX_TTL_SECONDS} seconds"
        )));
    }
    let record = &caller.0;
    let now = Utc::now();
    let expires_at = (now + chrono::Duration::seconds(ttl)).min(
        record
            .expires_at
            .unwrap_or(now + chrono::Duration::seconds(ttl)),
    );
    let claims = Claims {
        key_id: record.id,
        tenant: record.tenant.clone(),
        scopes: record.scopes,
        issued_at: now,
        expires_at,
    };
    Ok(HttpResponse::Ok()
        .insert_header(("cache-control", "no-store"))
        .json(TokenResponse {
            access_token: signer.issue(&claims),
            token_type: "Bearer",
            expires_in: (expires_at - now).num_seconds(),
            expires_at,
            scopes: record.scope_names(),
        }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use internal_rpc::Scope;

    fn signer(secret: &str) -> TokenSigner {
        TokenSigner::new(&SecretString::from(secret.to_owned()))
    }

    fn claims(now: DateTime<Utc>) -> Claims {
        Claims {
            key_id: KeyId::new(),
            tenant: Tenant::parse("acme").unwrap(),
            scopes: Scopes::of([Scope::Tts, Scope::Usage]),
            issued_at: now,
            expires_at: now + chrono::Duration::seconds(600),
        }
    }

    #[test]
    fn a_token_verifies_only_with_its_signer_and_before_it_expires() {
        let now = Utc::now();
        let a = signer("pepper-a-0123456789abcdef0123456789");
        let b = signer("pepper-b-0123456789abcdef0123456789");
        let claims = claims(now);
        let token = a.issue(&claims);
        assert!(looks_like_token(&token));
        let mut expected = claims.clone();
        expected.issued_at = DateTime::from_timestamp(now.timestamp(), 0).unwrap();
        expected.expires_at = DateTime::from_timestamp(claims.expires_at.timestamp(), 0).unwrap();
        assert_eq!(a.verify(&token, now), Ok(expected));
        assert_eq!(b.verify(&token, now), Err(false));
        assert_eq!(
            a.verify(&token, now + chrono::Duration::seconds(601)),
            Err(true)
        );
        // A changed claim breaks the signature.
        let parts: Vec<&str> = token.split('.').collect();
        let forged_body = URL_SAFE_NO_PAD.encode(
            String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap())
                .unwrap()
                .replace("tts usage", "tts usage admin"),
        );
        let forged = format!("{}.{forged_body}.{}", parts[0], parts[2]);
        assert_eq!(a.verify(&forged, now), Err(false));
        // "alg": "none" and other headers are refused before anything else.
        let none = format!("eyJhbGciOiJub25lIn0.{}.", parts[1]);
        assert_eq!(a.verify(&none, now), Err(false));
        for junk in [
            "",
            ".",
            "..",
            "eyJ.a.b",
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.!.!",
        ] {
            assert_eq!(a.verify(junk, now), Err(false), "{junk:?}");
        }
    }

    #[test]
    fn a_token_cannot_claim_a_longer_life_than_the_maximum() {
        let now = Utc::now();
        let a = signer("pepper-a-0123456789abcdef0123456789");
        let mut long = claims(now);
        long.expires_at = now + chrono::Duration::seconds(MAX_TTL_SECONDS + 1);
        assert_eq!(a.verify(&a.issue(&long), now), Err(false));
    }
}
