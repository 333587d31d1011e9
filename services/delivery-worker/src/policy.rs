//! Which addresses webhooks may be sent to (server-side request forgery protection).
//!
//! In production only public unicast addresses are allowed, plus the networks an operator lists
//! in `WEBHOOK_ALLOWED_NETWORKS`; loopback, private, link-local (cloud metadata at
//! 169.254.169.254), carrier-grade NAT, multicast, documentation and other special ranges are
//! refused. The check runs twice: on the URL when an endpoint is saved (IP literals), and on every
//! address a host name resolves to, at delivery time, so a name that later resolves to a private
//! address is still refused. Development allows every address, so a local receiver works.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use settings::Environment;
use url::Url;

/// An IP network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for IpNet {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| "must be networks in CIDR notation, such as 10.1.0.0/16".to_owned())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("has a prefix length above {max}"))?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }
}

impl settings::FromSetting for IpNet {
    fn from_setting(raw: &str) -> Result<Self, String> {
        raw.parse()
    }
}

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// IPv4-mapped and IPv4-compatible IPv6 addresses are judged as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || a >= 240 // reserved
        || (a == 100 && (64..128).contains(&b)) // carrier-grade NAT
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b))) // benchmarking
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
        || first == 0x2001 && ip.segments()[1] == 0x0db8 // documentation
        || first == 0x0064 && ip.segments()[1] == 0xff9b) // NAT64: would reach IPv4 anywhere
}

/// True for addresses on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

/// Where webhooks may go.
#[derive(Debug, Clone)]
pub struct AddressPolicy {
    environment: Environment,
    allowed: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlRefused {
    #[error("the URL is not valid: {0}")]
    Invalid(String),
    #[error("the URL must use https in production")]
    NotHttps,
    #[error("the URL must use http or https")]
    Scheme,
    #[error("the URL must not carry a user name or password")]
    Credentials,
    #[error("the address {0} is not public and not in WEBHOOK_ALLOWED_NETWORKS")]
    Address(IpAddr),
}

impl AddressPolicy {
    pub fn new(environment: Environment, allowed: Vec<IpNet>) -> Self {
        Self {
            environment,
            allowed,
        }
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        self.environment == Environment::Development
            || is_public(ip)
            || self.allowed.iter().any(|net| net.contains(ip))
    }

    /// Checks an endpoint URL as written: scheme, credentials, and the address when the host is an
    /// IP literal. Host names are checked when they resolve ([`PolicyResolver`]).
    pub fn check_url(&self, raw: &str) -> Result<Url, UrlRefused> {
        let url = Url::parse(raw).map_err(|e| UrlRefused::Invalid(e.to_string()))?;
        match url.scheme() {
            "https" => {}
            "http" if self.environment == Environment::Development => {}
            "http" => return Err(UrlRefused::NotHttps),
            _ => return Err(UrlRefused::Scheme),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlRefused::Credentials);
        }
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) => None,
            None => return Err(UrlRefused::Invalid("it has no host".to_owned())),
        };
        if let Some(ip) = ip
            && !self.allows(ip)
        {
            return Err(UrlRefused::Address(ip));
        }
        Ok(url)
    }
}

/// A DNS resolver for the HTTP client that drops every address the policy refuses, so a host
/// name is checked at the moment it is used, not only when the endpoint was saved.
#[derive(Debug, Clone)]
pub struct PolicyResolver {
    pub policy: Arc<AddressPolicy>,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = Arc::clone(&self.policy);
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<_> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<_> = addrs
                .iter()
                .copied()
                .filter(|a| policy.allows(a.ip()))
                .collect();
            if allowed.is_empty() {
                let refused = addrs
                    .first()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                return Err(format!(
                    "refused: {host} resolves only to addresses that are not public ({refused})"
                )
                .into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn production() -> AddressPolicy {
        AddressPolicy::new(
            Environment::Production,
            vec!["10.20.0.0/16".parse().unwrap()],
        )
    }

    #[test]
    fn production_refuses_special_addresses() {
        let policy = production();
        for url in [
            "https://127.0.0.1/hook",
            "https://10.0.0.1/hook",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/hook",
            "https://[::ffff:127.0.0.1]/hook",
            "https://[fd00::1]/hook",
            "https://100.64.0.1/hook",
            "https://0.0.0.0/hook",
        ] {
            assert!(
                matches!(policy.check_url(url), Err(UrlRefused::Address(_))),
                "{url} was allowed"
            );
        }
        assert_eq!(
            policy.check_url("http://example.com/"),
            Err(UrlRefused::NotHttps)
        );
        assert_eq!(
            policy.check_url("https://user:pw@example.com/"),
            Err(UrlRefused::Credentials)
        );
        assert!(policy.check_url("https://93.184.216.34/hook").is_ok());
        assert!(policy.check_url("https://example.com/hook").is_ok());
        // The allow-list opens a private network on purpose.
        assert!(policy.check_url("https://10.20.3.4/hook").is_ok());
        assert!(policy.check_url("https://10.21.3.4/hook").is_err());
    }

    #[test]
    fn development_allows_loopback_over_http() {
        let policy = AddressPolicy::new(Environment::Development, vec![]);
        assert!(policy.check_url("http://127.0.0.1:9000/hook").is_ok());
        assert_eq!(
            policy.check_url("ftp://example.com/"),
            Err(UrlRefused::Scheme)
        );
    }

    #[test]
    fn cidr_parsing() {
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("nonsense".parse::<IpNet>().is_err());
        let net: IpNet = "2001:db8::/32".parse().unwrap();
        assert!(net.contains("2001:db8::5".parse().unwrap()));
        assert!(!net.contains("2001:db9::5".parse().unwrap()));
    }
}
