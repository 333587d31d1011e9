//! Console sessions: an API key exchanged at sign-in for a random session id in an HttpOnly,
//! SameSite=Strict cookie (Secure in production), kept in Redis for `CONSOLE_SESSION_TTL` with
//! the key's id, its tenant and the session's CSRF token.
//!
//! Redis holds the SHA-256 of the session id, never the id itself, so a copy of Redis signs no
//! one in. The key is looked up again (through the authenticator's cache) on every request, so
//! revoking it ends its sessions as fast as it ends the key. The session is absolute: it ends
//! `CONSOLE_SESSION_TTL` after sign-in whatever the activity, and signing out deletes it at once.

use std::{fmt::Write as _, net::IpAddr, time::Duration};

use actix_web::{HttpRequest, http::StatusCode};
use base64::Engine as _;
use http_problem::Problem;
use ids::{KeyId, Tenant};
use ring::rand::SecureRandom as _;
use settings::{SettingError, Sources};

use crate::keys::KeyRecord;

/// The cookie that carries the session id.
pub const COOKIE: &str = "sonora_console";
/// The header the console's scripts send the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The form field classic forms send it in.
pub const CSRF_FIELD: &str = "csrf";
/// The window of `CONSOLE_SIGN_IN_LIMIT`.
pub const SIGN_IN_WINDOW: Duration = Duration::from_secs(60);

/// `CONSOLE_ENABLED`, `CONSOLE_SESSION_TTL` and `CONSOLE_SIGN_IN_LIMIT`.
#[derive(Debug, Clone)]
pub struct ConsoleSettings {
    pub enabled: bool,
    pub session_ttl: Duration,
    /// Sign-in attempts one client address may make per [`SIGN_IN_WINDOW`].
    pub sign_in_limit: u64,
}

impl ConsoleSettings {
    pub fn load(src: &Sources) -> Result<Self, SettingError> {
        let session_ttl = src.or("CONSOLE_SESSION_TTL", Duration::from_secs(30 * 60))?;
        if session_ttl < Duration::from_secs(1) || session_ttl > Duration::from_secs(24 * 3600) {
            return Err(SettingError::new(
                "CONSOLE_SESSION_TTL",
                "must be between 1s and 24h",
            ));
        }
        let sign_in_limit = src.or("CONSOLE_SIGN_IN_LIMIT", 10_u64)?;
        if !(1..=1_000_000).contains(&sign_in_limit) {
            return Err(SettingError::new(
                "CONSOLE_SIGN_IN_LIMIT",
                "must be between 1 and 1000000 attempts a minute",
            ));
        }
        Ok(Self {
            enabled: src.or("CONSOLE_ENABLED", true)?,
            session_ttl,
            sign_in_limit,
        })
    }
}

/// A signed-in console session.
#[derive(Debug, Clone)]
pub struct Session {
    pub key_id: KeyId,
    pub tenant: Tenant,
    pub csrf: String,
}

/// The sessions store; cheap to clone.
#[derive(Clone)]
pub struct Sessions {
    redis: deadpool_redis::Pool,
    pub settings: ConsoleSettings,
    /// Whether cookies are marked `Secure` (production, behind TLS).
    secure: bool,
}

fn random_token() -> String {
    let mut bytes = [0_u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random source works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn redis_key(session_id: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, session_id.as_bytes());
    let mut key = String::from("console:session:");
    for b in digest.as_ref() {
        let _ = write!(key, "{b:02x}");
    }
    key
}

/// Equality that takes as long whatever the first differing byte.
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0_u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn unavailable<E: std::fmt::Display>(error: E) -> Problem {
    tracing::warn!(%error, "console sessions cannot reach Redis");
    Problem::unavailable("Console sessions cannot be checked right now; retry shortly.")
        .retry_after(2)
}

impl Sessions {
    pub fn new(redis: deadpool_redis::Pool, settings: ConsoleSettings, secure: bool) -> Self {
        Self {
            redis,
            settings,
            secure,
        }
    }

    /// Starts a session for `key`; returns the cookie's value (the session id) and the session.
    pub async fn create(&self, key: &KeyRecord) -> Result<(String, Session), Problem> {
        let id = random_token();
        let session = Session {
            key_id: key.id,
            tenant: key.tenant.clone(),
            csrf: random_token(),
        };
        let value = format!("{} {} {}", session.key_id, session.tenant, session.csrf);
        let mut conn = redis_pool::get(&self.redis).await.map_err(unavailable)?;
        deadpool_redis::redis::cmd("SET")
            .arg(redis_key(&id))
            .arg(value)
            .arg("PX")
            .arg(u64::try_from(self.settings.session_ttl.as_millis()).unwrap_or(u64::MAX))
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok((id, session))
    }

    /// The session a cookie names, while it lasts.
    pub async fn find(&self, session_id: &str) -> Result<Option<Session>, Problem> {
        // Ids are 43 characters of URL-safe base64; anything else is not looked up.
        if session_id.len() != 43
            || !session_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Ok(None);
        }
        let mut conn = redis_pool::get(&self.redis).await.map_err(unavailable)?;
        let value: Option<String> = deadpool_redis::redis::cmd("GET")
            .arg(redis_key(session_id))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(value.and_then(|value| {
            let mut parts = value.split(' ');
            let key_id = KeyId::parse(parts.next()?).ok()?;
            let tenant = parts.next()?.parse().ok()?;
            let csrf = parts.next()?.to_owned();
            Some(Session {
                key_id,
                tenant,
                csrf,
            })
        }))
    }

    /// Ends a session at once.
    pub async fn end(&self, session_id: &str) -> Result<(), Problem> {
        let mut conn = redis_pool::get(&self.redis).await.map_err(unavailable)?;
        deadpool_redis::redis::cmd("DEL")
            .arg(redis_key(session_id))
            .query_async::<()>(&mut conn)
            .await
            .map_err(unavailable)
    }

    /// Counts a sign-in attempt from `ip`; false once it made `CONSOLE_SIGN_IN_LIMIT` in the
    /// window.
    pub async fn admit_sign_in(&self, ip: IpAddr) -> Result<bool, Problem> {
        let key = format!("console:sign-in:{ip}");
        let mut conn = redis_pool::get(&self.redis).await.map_err(unavailable)?;
        let (count,): (u64,) = deadpool_redis::redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(&key)
            .arg(0)
            .arg("EX")
            .arg(SIGN_IN_WINDOW.as_secs())
            .arg("NX")
            .ignore()
            .cmd("INCR")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(count <= self.settings.sign_in_limit)
    }

    /// The `Set-Cookie` value that starts a session.
    pub fn cookie(&self, session_id: &str) -> String {
        format!(
            "{COOKIE}={session_id}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{}",
            self.settings.session_ttl.as_secs().max(1),
            if self.secure { "; Secure" } else { "" }
        )
    }

    /// The `Set-Cookie` value that ends it in the browser.
    pub fn clear_cookie(&self) -> String {
        format!(
            "{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{}",
            if self.secure { "; Secure" } else { "" }
        )
    }
}

/// The session id in a request's cookies.
pub fn session_cookie(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get_all(actix_web::http::header::COOKIE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|pair| {
            let (name, value) = pair.trim().split_once('=')?;
            (name == COOKIE && !value.is_empty()).then(|| value.to_owned())
        })
}

/// 403 for a change without the session's CSRF token.
pub fn csrf_refused() -> Problem {
    Problem::new(StatusCode::FORBIDDEN, "csrf", "Forbidden").detail(
        "The console's CSRF token is missing or does not match this session; reload the page.",
    )
}

/// Whether a sign-in form was posted from this site: browsers send `Sec-Fetch-Site` (and older
/// ones `Origin`) on every POST, so a form on another site that would sign the victim into the
/// attacker's tenant (login CSRF) is refused. Clients that send neither (curl) are let through;
/// they have the key anyway.
pub fn same_site_post(req: &HttpRequest) -> bool {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site") {
        return site == "same-origin" || site == "none";
    }
    match header("origin") {
        None => true,
        // Sent for a page whose referrer policy is no-referrer, or from a sandbox: not ours.
        Some("null") => false,
        Some(origin) => {
            let host = header("host").unwrap_or_default();
            let origin_host = origin
                .split_once("://")
                .map_or(origin, |(_, rest)| rest)
                .trim_end_matches('/');
            !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
        }
    }
}
