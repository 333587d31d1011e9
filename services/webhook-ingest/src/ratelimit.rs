//! A per-client-address limit on the webhook paths, counted in Redis so every replica shares it:
//! a fixed window of one minute per address (`rl:webhook:<address>:<minute>`). Senders are few
//! and genuine webhooks must not be lost, so the default is generous and a Redis outage lets
//! requests through (logged, at most once a minute) rather than refusing them.

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use actix_web::{HttpRequest, http::StatusCode};
use http_problem::Problem;
use redis_pool::{Pool, redis};
use settings::IpNet;

/// The limit and who may say who the client is.
#[derive(Clone)]
pub struct RateLimiter {
    redis: Pool,
    /// Requests per minute per client address (`WEBHOOK_RATE_LIMIT_PER_IP`); 0: no limit.
    per_minute: u32,
    /// Proxies whose `X-Forwarded-For` is believed (`TRUSTED_PROXIES`), such as the Ingress.
    trusted: Arc<Vec<IpNet>>,
    last_complaint: Arc<Mutex<Option<Instant>>>,
}

impl RateLimiter {
    pub fn new(redis: Pool, per_minute: u32, trusted: Vec<IpNet>) -> Self {
        Self {
            redis,
            per_minute,
            trusted: Arc::new(trusted),
            last_complaint: Arc::default(),
        }
    }

    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(ip))
    }

    /// The client's address: the connection's peer, unless the peer is a trusted proxy, in which
    /// case the last address in `X-Forwarded-For` that is not itself a trusted proxy. A client
    /// cannot choose its address by writing the header: only trusted proxies are read.
    pub fn client_ip(&self, req: &HttpRequest) -> Option<IpAddr> {
        let peer = req.peer_addr()?.ip();
        if !self.is_trusted(peer) {
            return Some(peer);
        }
        let forwarded: Vec<IpAddr> = req
            .headers()
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse().ok())
            .collect();
        Some(
            forwarded
                .iter()
                .rev()
                .copied()
                .find(|ip| !self.is_trusted(*ip))
                .or_else(|| forwarded.first().copied())
                .unwrap_or(peer),
        )
    }

    /// Counts one request of `req`'s client; 429 with `Retry-After` past the limit.
    pub async fn check(&self, req: &HttpRequest) -> Result<(), Problem> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let Some(ip) = self.client_ip(req) else {
            return Ok(());
        };
        let now = chrono::Utc::now().timestamp();
        let (minute, left) = (now / 60, 60 - now % 60);
        let key = format!("rl:webhook:{ip}:{minute}");
        let counted: Result<(u64,), redis_pool::RedisError> = async {
            let mut conn = redis_pool::get(&self.redis).await?;
            Ok(redis::pipe()
                .atomic()
                .incr(&key, 1)
                .expire(&key, 120)
                .ignore()
                .query_async(&mut *conn)
                .await?)
        }
        .await;
        match counted {
            Ok((count,)) if count > u64::from(self.per_minute) => {
                tracing::warn!(%ip, count, "webhook rate limit reached");
                Err(Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate-limited",
                    "Too Many Requests",
                )
                .detail(format!(
                    "More than {} webhooks a minute from this address; retry later.",
                    self.per_minute
                ))
                .retry_after(u64::try_from(left).unwrap_or(60)))
            }
            Ok(_) => Ok(()),
            Err(error) => {
                let mut last = self.last_complaint.lock().expect("not poisoned");
                if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
                    tracing::warn!(%error, "webhook rate limit not applied while Redis is away");
                    *last = Some(Instant::now());
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use actix_web::test::TestRequest;

    use super::*;

    fn limiter(trusted: &[&str]) -> RateLimiter {
        let redis = redis_pool::connect(&redis_pool::RedisConfig {
            url: "redis://127.0.0.1:1/0".to_owned(),
            pool_size: 1,
            timeout: Duration::from_millis(100),
        })
        .unwrap();
        RateLimiter::new(
            redis,
            10,
            trusted.iter().map(|t| t.parse().unwrap()).collect(),
        )
    }

    fn request(peer: &str, forwarded: Option<&str>) -> HttpRequest {
        let mut request = TestRequest::default().peer_addr(peer.parse().unwrap());
        if let Some(forwarded) = forwarded {
            request = request.insert_header(("x-forwarded-for", forwarded));
        }
        request.to_http_request()
    }

    #[test]
    fn only_trusted_proxies_name_the_client() {
        let l = limiter(&["10.0.0.0/8"]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // An untrusted peer's header is ignored: a client cannot pick its address.
        assert_eq!(
            l.client_ip(&request("203.0.113.7:5000", Some("198.51.100.1"))),
            Some(ip("203.0.113.7"))
        );
        // Through the trusted ingress, the last address it did not add itself.
        assert_eq!(
            l.client_ip(&request(
                "10.1.2.3:5000",
                Some("198.51.100.1, 203.0.113.9, 10.4.5.6")
            )),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(
            l.client_ip(&request("10.1.2.3:5000", Some("not an address"))),
            Some(ip("10.1.2.3"))
        );
        assert_eq!(
            l.client_ip(&request("10.1.2.3:5000", None)),
            Some(ip("10.1.2.3"))
        );
    }
}
