//! Rate limits per API key and per client IP, and the monthly character quota.
//!
//! Both limits are GCRA (the generic cell rate algorithm): each limiter keeps one number, the
//! theoretical arrival time of the next request, so a check is one read and one write whatever
//! the rate, bursts are exact, and nothing needs sweeping. One Lua script checks the key's and
//! the IP's limiter together, atomically, and updates them only when both allow the request, so
//! a refused request costs no budget. Keys are `rl:key:{key_id}` and `rl:ip:{ip}` (the old
//! system's operators look for `rl:*`), with the server's clock (`TIME`), so replicas' clocks
//! do not matter.
//!
//! While Redis cannot be reached, each replica limits with the same algorithm in its own memory
//! (so an outage removes no protection, though N replicas then allow N times the rate), logs it
//! once a minute and counts it in `rate_limit_fallback_total`; `RATE_LIMIT_FAIL_CLOSED=true`
//! refuses with 503 instead.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use actix_web::{
    HttpMessage as _,
    body::{EitherBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    http::header::{HeaderName, HeaderValue},
    middleware::Next,
    web,
};
use chrono::{Datelike as _, TimeZone as _, Utc};
use deadpool_redis::redis;
use http_problem::Problem;
use prometheus::{IntCounter, IntCounterVec, Opts};
use settings::{FromSetting, IpNet, SettingError, Sources};

use crate::{
    auth::{Authenticated, Authenticator},
    keys::KeyRecord,
};

/// A rate: so many requests per second, and how many may come at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

impl Rate {
    /// Microseconds between requests at the steady rate.
    fn emission_us(&self) -> f64 {
        1_000_000.0 / self.per_second
    }

    /// How far ahead of now the next arrival time may run: `burst` requests at once.
    fn tolerance_us(&self) -> f64 {
        self.emission_us() * f64::from(self.burst.saturating_sub(1))
    }

    /// The window a client sees in `RateLimit-Policy`: the time to earn a full burst back.
    fn window_seconds(&self) -> u64 {
        (f64::from(self.burst) / self.per_second).ceil().max(1.0) as u64
    }
}

impl FromSetting for Rate {
    /// `5/s`, `300/m` or `1000/h`, optionally with `,burst=N` (else one second's worth, at least 1).
    fn from_setting(raw: &str) -> Result<Self, String> {
        let rule = || {
            "must be a rate such as 5/s, 300/m or 1000/h, optionally followed by ,burst=N"
                .to_owned()
        };
        let (rate, burst) = match raw.split_once(',') {
            Some((rate, burst)) => (rate, Some(burst)),
            None => (raw, None),
        };
        let (count, unit) = rate.trim().split_once('/').ok_or_else(rule)?;
        let count: f64 = count.trim().parse().map_err(|_| rule())?;
        let seconds = match unit.trim() {
            "s" | "sec" | "second" => 1.0,
            "m" | "min" | "minute" => 60.0,
            "h" | "hour" => 3600.0,
            _ => return Err(rule()),
        };
        if !count.is_finite() || count <= 0.0 || count > 1e7 {
            return Err("must allow between 1 per hour and 10,000,000 per second".to_owned());
        }
        let per_second = count / seconds;
        if per_second < 1.0 / 3600.0 {
            return Err("must allow between 1 per hour and 10,000,000 per second".to_owned());
        }
        let burst = match burst {
            Some(text) => text
                .trim()
                .strip_prefix("burst=")
                .and_then(|n| n.trim().parse::<u32>().ok())
                .filter(|n| (1..=1_000_000).contains(n))
                .ok_or_else(|| {
                    "burst must be written burst=N with N from 1 to 1000000".to_owned()
                })?,
            None => per_second.ceil().clamp(1.0, 1_000_000.0) as u32,
        };
        Ok(Self { per_second, burst })
    }
}

/// What one plan allows a key.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanLimits {
    pub rate: Rate,
    /// Characters of text a key may have spoken per calendar month (UTC).
    pub monthly_characters: u64,
}

/// The limits, from `RATE_LIMIT_*` and `QUOTA_*_CHARACTERS`.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    pub free: PlanLimits,
    pub standard: PlanLimits,
    pub enterprise: PlanLimits,
    /// `RATE_LIMIT_PER_IP`: every client address, with or without a key.
    pub per_ip: Rate,
    /// `TRUSTED_PROXIES`: peers whose `X-Forwarded-For` is believed (the Ingress controller).
    pub trusted_proxies: Vec<IpNet>,
    /// `RATE_LIMIT_FAIL_CLOSED`: refuse (503) instead of limiting locally while Redis is away.
    pub fail_closed: bool,
}

impl LimitSettings {
    pub fn load(src: &Sources) -> Result<Self, SettingError> {
        let rate = |text: &str| Rate::from_setting(text).expect("defaults are valid");
        Ok(Self {
            free: PlanLimits {
                rate: src.or("RATE_LIMIT_FREE", rate("5/s,burst=10"))?,
                monthly_characters: src.or("QUOTA_FREE_CHARACTERS", 100_000)?,
            },
            standard: PlanLimits {
                rate: src.or("RATE_LIMIT_STANDARD", rate("50/s,burst=100"))?,
                monthly_characters: src.or("QUOTA_STANDARD_CHARACTERS", 10_000_000)?,
            },
            enterprise: PlanLimits {
                rate: src.or("RATE_LIMIT_ENTERPRISE", rate("500/s,burst=1000"))?,
                monthly_characters: src.or("QUOTA_ENTERPRISE_CHARACTERS", 1_000_000_000)?,
            },
            per_ip: src.or("RATE_LIMIT_PER_IP", rate("100/s,burst=200"))?,
            trusted_proxies: src.or("TRUSTED_PROXIES", Vec::new())?,
            fail_closed: src.or("RATE_LIMIT_FAIL_CLOSED", false)?,
        })
    }

    /// The limits of a key's plan; an unknown plan gets the free plan's.
    pub fn plan(&self, plan: &str) -> &PlanLimits {
        match plan {
            "enterprise" => &self.enterprise,
            "standard" => &self.standard,
            _ => &self.free,
        }
    }
}

/// One limiter's state after a check.
#[derive(Debug, Clone, Copy)]
struct Window {
    rate: Rate,
    remaining: u64,
    /// Seconds until the whole burst is available again.
    reset: u64,
    /// Seconds until a request would be allowed (0 when allowed).
    retry_after: u64,
}

/// The outcome of checking a request.
#[derive(Debug, Clone)]
pub struct Decision {
    key: Option<Window>,
    ip: Window,
}

impl Decision {
    fn allowed(&self) -> bool {
        self.ip.retry_after == 0 && self.key.is_none_or(|k| k.retry_after == 0)
    }

    fn retry_after(&self) -> u64 {
        self.ip
            .retry_after
            .max(self.key.map_or(0, |k| k.retry_after))
            .max(1)
    }

    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
    fn headers(&self) -> [(HeaderName, HeaderValue); 2] {
        let mut policy = Vec::new();
        let mut state = Vec::new();
        for (name, window) in [("key", self.key), ("ip", Some(self.ip))] {
            if let Some(w) = window {
                policy.push(format!(
                    "\"{name}\";q={};w={}",
                    w.rate.burst,
                    w.rate.window_seconds()
                ));
                state.push(format!("\"{name}\";r={};t={}", w.remaining, w.reset));
            }
        }
        [
            (
                HeaderName::from_static("ratelimit-policy"),
                HeaderValue::from_str(&policy.join(", ")).expect("ASCII"),
            ),
            (
                HeaderName::from_static("ratelimit"),
                HeaderValue::from_str(&state.join(", ")).expect("ASCII"),
            ),
        ]
    }
}

/// Checks both limiters of a request in one step: arguments are, per limiter, its emission
/// interval and tolerance in microseconds. Answers 1 or 0 (allowed), then per limiter its
/// remaining requests, microseconds to full reset, and microseconds until allowed.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {1}
local tats = {}
for i = 1, #KEYS do
  local emission = tonumber(ARGV[2 * i - 1])
  local tolerance = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or now)
  if tat < now then tat = now end
  local allow_at = tat - tolerance
  if now < allow_at then
    out[1] = 0
    table.insert(out, 0)
    table.insert(out, math.ceil(tat - now))
    table.insert(out, math.ceil(allow_at - now))
  else
    local new_tat = tat + emission
    tats[i] = new_tat
    table.insert(out, math.floor((now + tolerance - new_tat) / emission) + 1)
    table.insert(out, math.ceil(new_tat - now))
    table.insert(out, 0)
  end
end
if out[1] == 1 then
  for i = 1, #KEYS do
    redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', math.ceil((tats[i] - now) / 1000) + 1000)
  end
end
return out
";

/// Adds `ARGV[1]` characters to the month's counter `KEYS[1]` unless that would pass the quota
/// `ARGV[2]`; -1 when the counter does not exist (the caller seeds it from PostgreSQL).
/// Answers {1 or 0, characters used after}.
const QUOTA: &str = r"
local used = redis.call('GET', KEYS[1])
if not used then return {-1, 0} end
used = tonumber(used)
local add = tonumber(ARGV[1])
if used + add > tonumber(ARGV[2]) then return {0, used} end
return {1, redis.call('INCRBY', KEYS[1], add)}
";

/// How long a Redis step may take before the replica limits locally.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);
/// After Redis fails, how long the replica limits locally before it tries Redis again.
const AWAY_FOR: Duration = Duration::from_secs(1);
/// How often an outage is logged.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// Local limiters kept at most; beyond, the ones at rest are dropped.
const MAX_LOCAL: usize = 200_000;

struct Script {
    source: &'static str,
    sha: String,
}

impl Script {
    fn new(source: &'static str) -> Self {
        let digest =
            ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, source.as_bytes());
        Self {
            source,
            sha: digest.as_ref().iter().map(|b| format!("{b:02x}")).collect(),
        }
    }

    /// EVALSHA, loading the script when Redis does not have it (after a restart or a flush).
    async fn run(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
        keys: &[String],
        args: &[String],
    ) -> redis::RedisResult<Vec<i64>> {
        let call = |command: &str, first: &str| {
            let mut cmd = redis::cmd(command);
            cmd.arg(first).arg(keys.len()).arg(keys).arg(args);
            cmd
        };
        match call("EVALSHA", &self.sha).query_async(conn).await {
            Err(error)
                if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                call("EVAL", self.source).query_async(conn).await
            }
            other => other,
        }
    }
}

/// Why a synthesis request is refused by the quota.
#[derive(Debug)]
pub enum QuotaRefusal {
    Exceeded {
        used: u64,
        quota: u64,
    },
    /// Redis is away and `RATE_LIMIT_FAIL_CLOSED` is set, or nothing can be counted.
    Unavailable,
}

impl From<QuotaRefusal> for Problem {
    fn from(refusal: QuotaRefusal) -> Self {
        match refusal {
            QuotaRefusal::Exceeded { used, quota } => {
                let resets = next_month_start();
                let seconds = (resets - Utc::now()).num_seconds().max(1);
                Problem::new(
                    actix_web::http::StatusCode::TOO_MANY_REQUESTS,
                    "quota-exceeded",
                    "Quota Exceeded",
                )
                .detail(format!(
                    "This key has used {used} of its {quota} characters this month; the quota resets at {}.",
                    resets.format("%Y-%m-%dT%H:%M:%SZ")
                ))
                .with("quota_characters", quota)
                .with("used_characters", used)
                .with("resets_at", resets.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                .retry_after(u64::try_from(seconds).unwrap_or(1))
            }
            QuotaRefusal::Unavailable => {
                Problem::unavailable("Usage cannot be counted right now; retry shortly.")
                    .retry_after(2)
            }
        }
    }
}

/// The first instant of next month, UTC: when monthly quotas reset.
pub fn next_month_start() -> chrono::DateTime<Utc> {
    let now = Utc::now();
    let (year, month) = if now.month() == 12 {
        (now.year() + 1, 1)
    } else {
        (now.year(), now.month() + 1)
    };
    Utc.with_ymd_and_hms(year, month, 1, 0, 0, 0)
        .single()
        .expect("the first of a month exists")
}

/// The limiter every request goes through; cheap to clone.
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

struct Inner {
    settings: LimitSettings,
    /// One multiplexed connection shared by every request of the replica (not a pool's: a pool
    /// checks each connection with a PING on every checkout, a second round trip per request),
    /// which also pipelines concurrent requests' scripts. Dropped on an error; the next request
    /// connects again.
    client: redis::Client,
    connection: Mutex<Option<redis::aio::MultiplexedConnection>>,
    connecting: tokio::sync::Mutex<()>,
    gcra: Script,
    quota: Script,
    started: Instant,
    /// Milliseconds since `started` until which Redis is not tried.
    away_until: AtomicU64,
    /// Milliseconds since `started` when the outage was last logged (0: never).
    logged_at: AtomicU64,
    local: Mutex<HashMap<String, f64>>,
    /// Characters counted locally this month while Redis was away, by key id.
    local_quota: Mutex<HashMap<String, u64>>,
    exceeded: IntCounterVec,
    fallback: IntCounter,
}

impl Limiter {
    pub fn new(
        settings: LimitSettings,
        redis_url: &str,
        registry: &prometheus::Registry,
    ) -> redis::RedisResult<Self> {
        let client = redis::Client::open(redis_url)?;
        let exceeded = IntCounterVec::new(
            Opts::new(
                "api_key_rate_limit_exceeded_total",
                "Requests refused by a rate limit or quota, by which limit (key, ip or quota).",
            ),
            &["limit"],
        )
        .expect("metric definition is valid");
        let fallback = IntCounter::new(
            "rate_limit_fallback_total",
            "Requests limited in this replica's memory because Redis could not be reached.",
        )
        .expect("metric definition is valid");
        registry
            .register(Box::new(exceeded.clone()))
            .expect("metric names are unique");
        registry
            .register(Box::new(fallback.clone()))
            .expect("metric names are unique");
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                client,
                connection: Mutex::default(),
                connecting: tokio::sync::Mutex::default(),
                gcra: Script::new(GCRA),
                quota: Script::new(QUOTA),
                started: Instant::now(),
                away_until: AtomicU64::new(0),
                logged_at: AtomicU64::new(0),
                local: Mutex::default(),
                local_quota: Mutex::default(),
                exceeded,
                fallback,
            }),
        })
    }

    pub fn settings(&self) -> &LimitSettings {
        &self.inner.settings
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.inner.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The shared connection, opened if there is none.
    async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, String> {
        let current = self.inner.connection.lock().expect("not poisoned").clone();
        if let Some(connection) = current {
            return Ok(connection);
        }
        let _one_at_a_time = self.inner.connecting.lock().await;
        let current = self.inner.connection.lock().expect("not poisoned").clone();
        if let Some(connection) = current {
            return Ok(connection);
        }
        let connection = self
            .inner
            .client
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| e.to_string())?;
        *self.inner.connection.lock().expect("not poisoned") = Some(connection.clone());
        Ok(connection)
    }

    /// Forgets the shared connection after an error or a timeout.
    fn drop_connection(&self) {
        *self.inner.connection.lock().expect("not poisoned") = None;
    }

    fn redis_away(&self) -> bool {
        self.now_ms() < self.inner.away_until.load(Ordering::Relaxed)
    }

    fn mark_away(&self, error: &str) {
        self.drop_connection();
        let now = self.now_ms();
        self.inner.away_until.store(
            now + u64::try_from(AWAY_FOR.as_millis()).unwrap_or(1000),
            Ordering::Relaxed,
        );
        let logged = self.inner.logged_at.load(Ordering::Relaxed);
        let every = u64::try_from(LOG_EVERY.as_millis()).unwrap_or(60_000);
        if (logged == 0 || now.saturating_sub(logged) >= every)
            && self
                .inner
                .logged_at
                .compare_exchange(logged, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            if self.inner.settings.fail_closed {
                tracing::error!(
                    error,
                    "Redis is unreachable: requests are refused (RATE_LIMIT_FAIL_CLOSED)"
                );
            } else {
                tracing::warn!(
                    error,
                    "Redis is unreachable: rate limits are kept in each replica's memory until it is back"
                );
            }
        }
    }

    /// The client's address: the peer, or, when the peer is a trusted proxy, the nearest
    /// untrusted address in `X-Forwarded-For`.
    pub fn client_ip(&self, peer: Option<IpAddr>, forwarded_for: Option<&str>) -> Option<IpAddr> {
        let peer = settings::canonical_ip(peer?);
        let trusted = |ip: IpAddr| {
            self.inner
                .settings
                .trusted_proxies
                .iter()
                .any(|n| n.contains(ip))
        };
        if !trusted(peer) {
            return Some(peer);
        }
        let Some(forwarded) = forwarded_for else {
            return Some(peer);
        };
        let mut client = peer;
        for hop in forwarded.rsplit(',') {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = settings::canonical_ip(ip);
                    if !trusted(client) {
                        break;
                    }
                }
                // A hop that is not an address was not written by a proxy we trust.
                Err(_) => break,
            }
        }
        Some(client)
    }

    /// Checks (and, when allowed, spends) one request of `key` from `ip`.
    pub async fn check(&self, key: Option<&KeyRecord>, ip: IpAddr) -> Result<Decision, Problem> {
        let key_rate = key.map(|k| {
            (
                format!("rl:key:{}", k.id),
                self.inner.settings.plan(&k.plan).rate,
            )
        });
        let ip_limit = (format!("rl:ip:{ip}"), self.inner.settings.per_ip);
        let limits: Vec<(String, Rate)> = key_rate.into_iter().chain([ip_limit]).collect();
        let decision = if self.redis_away() {
            None
        } else {
            match tokio::time::timeout(REDIS_TIMEOUT, self.check_redis(&limits)).await {
                Ok(Ok(decision)) => Some(decision),
                Ok(Err(error)) => {
                    self.mark_away(&error);
                    None
                }
                Err(_) => {
                    self.mark_away("timed out");
                    None
                }
            }
        };
        let decision = match decision {
            Some(decision) => decision,
            None if self.inner.settings.fail_closed => {
                return Err(Problem::unavailable(
                    "Rate limits cannot be checked right now; retry shortly.",
                )
                .retry_after(2));
            }
            None => {
                self.inner.fallback.inc();
                self.check_local(&limits)
            }
        };
        Ok(decision)
    }

    async fn check_redis(&self, limits: &[(String, Rate)]) -> Result<Decision, String> {
        let mut conn = self.connection().await?;
        let keys: Vec<String> = limits.iter().map(|(k, _)| k.clone()).collect();
        let args: Vec<String> = limits
            .iter()
            .flat_map(|(_, r)| {
                [
                    format!("{:.0}", r.emission_us()),
                    format!("{:.0}", r.tolerance_us()),
                ]
            })
            .collect();
        let out = self
            .inner
            .gcra
            .run(&mut conn, &keys, &args)
            .await
            .map_err(|e| e.to_string())?;
        if out.len() != 1 + 3 * limits.len() {
            return Err("unexpected answer from the rate-limit script".to_owned());
        }
        let windows: Vec<Window> = limits
            .iter()
            .enumerate()
            .map(|(i, (_, rate))| window(*rate, out[1 + 3 * i], out[2 + 3 * i], out[3 + 3 * i]))
            .collect();
        Ok(decision_of(windows))
    }

    /// The same algorithm in this replica's memory.
    fn check_local(&self, limits: &[(String, Rate)]) -> Decision {
        let now = self.inner.started.elapsed().as_micros() as f64;
        let mut local = self.inner.local.lock().expect("not poisoned");
        if local.len() > MAX_LOCAL {
            local.retain(|_, tat| *tat > now);
        }
        let mut windows = Vec::new();
        let mut new_tats = Vec::new();
        for (name, rate) in limits {
            let tat = local.get(name).copied().unwrap_or(now).max(now);
            let allow_at = tat - rate.tolerance_us();
            if now < allow_at {
                windows.push(window(
                    *rate,
                    0,
                    (tat - now).ceil() as i64,
                    (allow_at - now).ceil() as i64,
                ));
            } else {
                let new_tat = tat + rate.emission_us();
                new_tats.push((name.clone(), new_tat));
                let remaining =
                    ((now + rate.tolerance_us() - new_tat) / rate.emission_us()).floor() + 1.0;
                windows.push(window(
                    *rate,
                    remaining as i64,
                    (new_tat - now).ceil() as i64,
                    0,
                ));
            }
        }
        let decision = decision_of(windows);
        if decision.allowed() {
            local.extend(new_tats);
        }
        decision
    }

    /// Counts `characters` against the key's monthly quota, refusing when they would pass it.
    pub async fn spend_characters(
        &self,
        key: &KeyRecord,
        characters: u64,
        pool: &database::Pool,
    ) -> Result<(), QuotaRefusal> {
        let quota = self.inner.settings.plan(&key.plan).monthly_characters;
        let month = Utc::now().format("%Y-%m").to_string();
        let counter = format!("rl:quota:{}:{month}", key.id);
        if !self.redis_away() {
            match tokio::time::timeout(
                REDIS_TIMEOUT * 4,
                self.spend_redis(&counter, key, characters, quota, pool),
            )
            .await
            {
                Ok(Ok(outcome)) => return outcome,
                Ok(Err(error)) => self.mark_away(&error),
                Err(_) => self.mark_away("timed out"),
            }
        }
        if self.inner.settings.fail_closed {
            return Err(QuotaRefusal::Unavailable);
        }
        // Redis away: the month's usage as PostgreSQL has it (behind by at most one flush of each
        // replica) plus what this replica counted meanwhile.
        // Without PostgreSQL either, only this replica's own counts.
        let recorded = crate::usage::month_characters(pool, key).await.unwrap_or(0);
        let mut local = self.inner.local_quota.lock().expect("not poisoned");
        let mine = local.entry(format!("{}:{month}", key.id)).or_default();
        let used = recorded + *mine;
        if used + characters > quota {
            return Err(QuotaRefusal::Exceeded { used, quota });
        }
        *mine += characters;
        Ok(())
    }

    async fn spend_redis(
        &self,
        counter: &str,
        key: &KeyRecord,
        characters: u64,
        quota: u64,
        pool: &database::Pool,
    ) -> Result<Result<(), QuotaRefusal>, String> {
        let mut conn = self.connection().await?;
        let keys = [counter.to_owned()];
        let args = [characters.to_string(), quota.to_string()];
        for _ in 0..2 {
            let out = self
                .inner
                .quota
                .run(&mut conn, &keys, &args)
                .await
                .map_err(|e| e.to_string())?;
            match out.as_slice() {
                [1, _] => return Ok(Ok(())),
                [0, used] => {
                    return Ok(Err(QuotaRefusal::Exceeded {
                        used: u64::try_from(*used).unwrap_or(0),
                        quota,
                    }));
                }
                [-1, _] => {
                    // No counter this month (a new month, or Redis lost it): start it from what
                    // PostgreSQL recorded, unless another request just did. Without PostgreSQL
                    // the request is let through uncounted (the next one tries again): speech
                    // does not stop with the database.
                    let Ok(recorded) = crate::usage::month_characters(pool, key).await else {
                        tracing::warn!(
                            "cannot start this month's quota counter without PostgreSQL; the request is let through"
                        );
                        return Ok(Ok(()));
                    };
                    let ttl = (next_month_start() - Utc::now()).num_seconds().max(0) + 7 * 86_400;
                    redis::cmd("SET")
                        .arg(counter)
                        .arg(recorded)
                        .arg("NX")
                        .arg("EX")
                        .arg(ttl)
                        .query_async::<Option<String>>(&mut conn)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                _ => return Err("unexpected answer from the quota script".to_owned()),
            }
        }
        Err("the quota counter could not be started".to_owned())
    }

    /// Gives back characters counted for a request that produced no audio.
    pub async fn refund_characters(&self, key: &KeyRecord, characters: u64) {
        let month = Utc::now().format("%Y-%m").to_string();
        let counter = format!("rl:quota:{}:{month}", key.id);
        let refunded = async {
            let mut conn = self.connection().await?;
            redis::cmd("DECRBY")
                .arg(&counter)
                .arg(characters)
                .query_async::<i64>(&mut conn)
                .await
                .map_err(|e| e.to_string())
        };
        if self.redis_away() || tokio::time::timeout(REDIS_TIMEOUT, refunded).await.is_err() {
            let mut local = self.inner.local_quota.lock().expect("not poisoned");
            if let Some(mine) = local.get_mut(&format!("{}:{month}", key.id)) {
                *mine = mine.saturating_sub(characters);
            }
        }
    }

    fn exceeded(&self, limit: &str) {
        self.inner.exceeded.with_label_values(&[limit]).inc();
    }

    /// Counts a quota refusal in `api_key_rate_limit_exceeded_total`.
    pub fn quota_exceeded(&self) {
        self.exceeded("quota");
    }
}

fn window(rate: Rate, remaining: i64, reset_us: i64, retry_us: i64) -> Window {
    let seconds = |us: i64| u64::try_from(us).unwrap_or(0).div_ceil(1_000_000);
    Window {
        rate,
        remaining: u64::try_from(remaining).unwrap_or(0),
        reset: seconds(reset_us),
        retry_after: seconds(retry_us),
    }
}

/// Windows in the order [key?, ip].
fn decision_of(mut windows: Vec<Window>) -> Decision {
    let ip = windows.pop().expect("the IP limiter is always checked");
    Decision {
        key: windows.pop(),
        ip,
    }
}

/// Limits every `/v1` request by key and client IP before it reaches its route, counts it in the
/// key's usage when admitted, and writes the `RateLimit` headers on its response. The key is checked here (once), and the route's
/// [`crate::auth::Caller`] takes the result.
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let limiter = req.app_data::<web::Data<Limiter>>().cloned();
    let authenticator = req.app_data::<web::Data<Authenticator>>().cloned();
    let (Some(limiter), Some(authenticator)) = (limiter, authenticator) else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    };
    if !req.path().starts_with("/v1/") || req.method() == actix_web::http::Method::OPTIONS {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    }
    let authenticated = Authenticated::of(&authenticator, req.request()).await;
    let key = authenticated.record().cloned();
    let ip = limiter
        .client_ip(
            req.peer_addr().map(|a| a.ip()),
            req.headers()
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok()),
        )
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    req.extensions_mut().insert(authenticated);
    // The OpenAI SDKs show the message of OpenAI's `error` object, so refusals on that route
    // carry it too.
    let openai = req.path() == crate::openai::PATH;
    let dressed = move |problem: Problem| {
        if openai {
            crate::openai::Refusal::from(problem).into_problem()
        } else {
            problem
        }
    };
    let decision = match limiter.check(key.as_ref(), ip).await {
        Ok(decision) => decision,
        Err(problem) => {
            let response = dressed(problem).to_response().map_into_right_body();
            return Ok(req.into_response(response));
        }
    };
    if !decision.allowed() {
        let which = if decision.key.is_some_and(|k| k.retry_after > 0) {
            "key"
        } else {
            "ip"
        };
        limiter.exceeded(which);
        let retry = decision.retry_after();
        let mut response = dressed(
            Problem::new(
                actix_web::http::StatusCode::TOO_MANY_REQUESTS,
                "rate-limited",
                "Too Many Requests",
            )
            .detail(if which == "key" {
                format!("This API key's rate limit is reached; retry in {retry} s.")
            } else {
                format!("This client address's rate limit is reached; retry in {retry} s.")
            })
            .with("limit", which)
            .retry_after(retry),
        )
        .to_response();
        for (name, value) in decision.headers() {
            response.headers_mut().insert(name, value);
        }
        return Ok(req.into_response(response.map_into_right_body()));
    }
    if let (Some(key), Some(meter)) = (&key, req.app_data::<web::Data<crate::usage::Meter>>()) {
        meter.record(
            key,
            crate::usage::Counts {
                requests: 1,
                ..Default::default()
            },
        );
    }
    let mut response = next.call(req).await?;
    for (name, value) in decision.headers() {
        response.headers_mut().insert(name, value);
    }
    Ok(response.map_into_left_body())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_read_as_people_write_them() {
        let r = Rate::from_setting("5/s").unwrap();
        assert_eq!((r.per_second, r.burst), (5.0, 5));
        let r = Rate::from_setting("300/m, burst=20").unwrap();
        assert_eq!((r.per_second, r.burst), (5.0, 20));
        let r = Rate::from_setting("1/h").unwrap();
        assert_eq!(r.burst, 1);
        for bad in [
            "",
            "5",
            "5/d",
            "0/s",
            "-1/s",
            "x/s",
            "5/s,burst=0",
            "5/s,20",
            "inf/s",
        ] {
            assert!(Rate::from_setting(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn policy_windows_are_whole_seconds() {
        let r = Rate::from_setting("5/s,burst=10").unwrap();
        assert_eq!(r.window_seconds(), 2);
        assert!((r.emission_us() - 200_000.0).abs() < 1e-6);
        assert!((r.tolerance_us() - 1_800_000.0).abs() < 1e-6);
    }

    #[test]
    fn forwarded_addresses_are_believed_only_from_trusted_proxies() {
        let settings =
            LimitSettings::load(&Sources::from_pairs([("TRUSTED_PROXIES", "10.0.0.0/8")]).unwrap())
                .unwrap();
        let limiter = Limiter::new(
            settings,
            "redis://127.0.0.1:1",
            &prometheus::Registry::new(),
        )
        .unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // An untrusted peer's header is its own invention.
        assert_eq!(
            limiter.client_ip(Some(ip("198.51.100.7")), Some("1.2.3.4")),
            Some(ip("198.51.100.7"))
        );
        // Through the proxies: the nearest address they did not write themselves.
        assert_eq!(
            limiter.client_ip(Some(ip("10.1.2.3")), Some("6.6.6.6, 203.0.113.9, 10.9.9.9")),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(
            limiter.client_ip(Some(ip("10.1.2.3")), Some("garbage, 10.9.9.9")),
            Some(ip("10.9.9.9"))
        );
        assert_eq!(
            limiter.client_ip(Some(ip("::ffff:10.1.2.3")), None),
            Some(ip("10.1.2.3"))
        );
    }
}
