//! Where Sonora's outbound HTTP requests may go: server-side request forgery protection, shared
//! by every service that fetches a URL. delivery-worker sends partner webhooks to URLs tenants
//! give (allow-list `WEBHOOK_ALLOWED_NETWORKS`); audio-generation downloads Replicate's outputs,
//! whose URLs arrive in webhooks, and calls Replicate's API; webhook-ingest calls the
//! code-generation API and fetches Replicate's signing secret (allow-list
//! `OUTBOUND_ALLOWED_NETWORKS` for the last two services).
//!
//! In production only public unicast addresses are allowed, plus the networks an operator lists;
//! loopback, private, link-local (cloud metadata at 169.254.169.254), carrier-grade NAT,
//! multicast, documentation and other special ranges are refused. Host names that are private by
//! definition (`localhost`, single labels, `.internal`, `.local`, `.home.arpa`) are refused as
//! written, whatever they resolve to here and now.
//!
//! The checks run at three moments: on the URL as written, whenever it is saved and before every
//! request ([`AddressPolicy::check_url`]); when a partner endpoint is saved, on every address its
//! host name resolves to, so a URL that would only ever fail is refused to the client at once
//! ([`AddressPolicy::check_destination`]); and on every address a name resolves to when a
//! connection is made ([`PolicyResolver`], installed by [`guard`]), so a name that later resolves
//! to a private address (DNS rebinding) is still refused. Development allows every address and
//! name, so local receivers and fakes work.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
    time::Duration,
};

use settings::Environment;
use url::Url;

pub use settings::IpNet;
use settings::canonical_ip as canonical;

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

/// Where outbound requests may go.
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
    #[error("the address {0} is not public and not in the allowed networks")]
    Address(IpAddr),
    #[error(
        "the host name is private by definition (localhost, a single label, or a name under \
         .localhost, .internal, .local or .home.arpa)"
    )]
    PrivateName,
    // The addresses are not named: they would tell a client how this network resolves names.
    #[error(
        "the host name resolves to an address that is not public and not in the allowed \
         networks"
    )]
    ResolvesPrivate,
    #[error("the host name does not resolve")]
    Unresolved,
    #[error("the host name did not resolve within {0:?}")]
    ResolveTimeout(Duration),
}

/// How long saving an endpoint waits for its host name to resolve.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Names that only ever mean a machine on a private network: `localhost` and its subdomains
/// (RFC 6761), single labels (resolved through search domains, to hosts nearby), `.internal`
/// (cloud metadata such as `metadata.google.internal`, and private use), `.local` (mDNS) and
/// `.home.arpa` (RFC 8375). A trailing dot changes nothing.
pub fn is_private_name(host: &str) -> bool {
    let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    !name.contains('.')
        || ["localhost", "internal", "local", "home.arpa"]
            .iter()
            .any(|suffix| name == *suffix || name.ends_with(&format!(".{suffix}")))
}

impl AddressPolicy {
    /// The policy of `environment`, opened to the networks listed (CIDRs, comma-separated) in
    /// the setting named `setting`.
    pub fn load(
        src: &settings::Sources,
        environment: Environment,
        setting: &str,
    ) -> Result<Self, settings::SettingError> {
        Ok(Self::new(environment, src.or(setting, Vec::new())?))
    }

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

    /// Checks an endpoint URL as written: scheme, credentials, the address when the host is an
    /// IP literal, and, in production, host names private by definition. What a name resolves
    /// to is checked by [`Self::check_destination`] and [`PolicyResolver`].
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
        self.check_host(&url)?;
        Ok(url)
    }

    /// Checks a URL's host only (an IP literal against the policy; in production, names private
    /// by definition), for URLs whose scheme the caller decides.
    pub fn check_host(&self, url: &Url) -> Result<(), UrlRefused> {
        match url.host() {
            Some(url::Host::Ipv4(ip)) if !self.allows(IpAddr::V4(ip)) => {
                Err(UrlRefused::Address(IpAddr::V4(ip)))
            }
            Some(url::Host::Ipv6(ip)) if !self.allows(IpAddr::V6(ip)) => {
                Err(UrlRefused::Address(IpAddr::V6(ip)))
            }
            Some(url::Host::Domain(name))
                if self.environment != Environment::Development && is_private_name(name) =>
            {
                Err(UrlRefused::PrivateName)
            }
            None => Err(UrlRefused::Invalid("it has no host".to_owned())),
            _ => Ok(()),
        }
    }

    /// Checks where a URL that passed [`Self::check_url`] leads, when it is saved: in production
    /// a host name must resolve (within [`RESOLVE_TIMEOUT`]), and to allowed addresses only.
    /// Delivery would refuse the others at every attempt; a client learns it now instead.
    pub async fn check_destination(&self, url: &Url) -> Result<(), UrlRefused> {
        if self.environment == Environment::Development {
            return Ok(());
        }
        let Some(url::Host::Domain(name)) = url.host() else {
            return Ok(());
        };
        let port = url.port_or_known_default().unwrap_or(443);
        let addresses = match tokio::time::timeout(
            RESOLVE_TIMEOUT,
            tokio::net::lookup_host((name, port)),
        )
        .await
        {
            Ok(Ok(found)) => found.map(|a| a.ip()).collect::<Vec<_>>(),
            Ok(Err(_)) => Vec::new(),
            Err(_) => return Err(UrlRefused::ResolveTimeout(RESOLVE_TIMEOUT)),
        };
        self.check_resolved(&addresses)
    }

    /// The rule for what a name resolved to: at least one address, and every one allowed. (At
    /// delivery the resolver uses the allowed ones; when saving, one refused address is enough
    /// to refuse, since which of them a connection would use is not known.)
    pub fn check_resolved(&self, addresses: &[IpAddr]) -> Result<(), UrlRefused> {
        if addresses.is_empty() {
            return Err(UrlRefused::Unresolved);
        }
        if addresses.iter().all(|ip| self.allows(*ip)) {
            Ok(())
        } else {
            Err(UrlRefused::ResolvesPrivate)
        }
    }
}

/// `builder` with the policy's resolver when it restricts anything (not in development), so every
/// host name the client connects to is checked as it resolves. An IP literal is not resolved:
/// callers check each URL with [`AddressPolicy::check_url`] (or [`AddressPolicy::check_host`])
/// before sending it.
pub fn guard(
    builder: reqwest::ClientBuilder,
    policy: &Arc<AddressPolicy>,
) -> reqwest::ClientBuilder {
    if policy.environment == Environment::Development {
        return builder;
    }
    builder.dns_resolver(Arc::new(PolicyResolver {
        policy: Arc::clone(policy),
    }))
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
        assert!(policy.check_url("https://hooks.example.co.uk./x").is_ok());
        for url in [
            "https://localhost/hook",
            "https://LOCALHOST./hook",
            "https://api.localhost/hook",
            "https://metadata.google.internal/computeMetadata/v1/",
            "https://printer.local/hook",
            "https://router.home.arpa/hook",
            "https://home.arpa/hook",
            "https://intranet/hook",
            "https://intranet./hook",
        ] {
            assert_eq!(
                policy.check_url(url),
                Err(UrlRefused::PrivateName),
                "{url} was allowed"
            );
        }
        // Names that only look alike are public.
        for url in [
            "https://notlocalhost.com/hook",
            "https://internal.example.com/hook",
            "https://local.example/hook",
        ] {
            assert!(policy.check_url(url).is_ok(), "{url} was refused");
        }
        // The allow-list opens a private network on purpose.
        assert!(policy.check_url("https://10.20.3.4/hook").is_ok());
        assert!(policy.check_url("https://10.21.3.4/hook").is_err());
    }

    #[test]
    fn resolved_addresses_must_all_be_allowed() {
        let policy = production();
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        assert_eq!(policy.check_resolved(&[]), Err(UrlRefused::Unresolved));
        assert_eq!(policy.check_resolved(&[ip("93.184.216.34")]), Ok(()));
        // One private address among public ones is enough to refuse.
        assert_eq!(
            policy.check_resolved(&[ip("93.184.216.34"), ip("10.0.0.7")]),
            Err(UrlRefused::ResolvesPrivate)
        );
        assert_eq!(
            policy.check_resolved(&[ip("169.254.169.254")]),
            Err(UrlRefused::ResolvesPrivate)
        );
        // Unless the operator allowed that network.
        assert_eq!(
            policy.check_resolved(&[ip("93.184.216.34"), ip("10.20.0.7")]),
            Ok(())
        );
        let refused = UrlRefused::ResolvesPrivate.to_string();
        assert!(!refused.contains("10."), "{refused}");
    }

    #[tokio::test]
    async fn saving_resolves_names_in_production_only() {
        let url = |text: &str| Url::parse(text).unwrap();
        let production = production();
        assert_eq!(
            production
                .check_destination(&url("https://nothing.invalid/hook"))
                .await,
            Err(UrlRefused::Unresolved)
        );
        assert_eq!(
            production
                .check_destination(&url("https://93.184.216.34/hook"))
                .await,
            Ok(())
        );
        let development = AddressPolicy::new(Environment::Development, vec![]);
        assert_eq!(
            development
                .check_destination(&url("http://nothing.invalid/hook"))
                .await,
            Ok(())
        );
    }

    /// At delivery time the resolver drops what the policy refuses, whatever the name: here a
    /// name that resolves to loopback.
    #[tokio::test]
    async fn the_resolver_refuses_private_addresses_when_it_resolves() {
        use std::str::FromStr as _;

        use reqwest::dns::{Name, Resolve as _};
        let resolver = PolicyResolver {
            policy: Arc::new(production()),
        };
        let refused = resolver
            .resolve(Name::from_str("localhost").unwrap())
            .await
            .err()
            .expect("loopback is refused");
        assert!(refused.to_string().starts_with("refused"), "{refused}");
        let development = PolicyResolver {
            policy: Arc::new(AddressPolicy::new(Environment::Development, vec![])),
        };
        let addrs: Vec<_> = development
            .resolve(Name::from_str("localhost").unwrap())
            .await
            .unwrap()
            .collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }

    #[test]
    fn development_allows_loopback_over_http() {
        let policy = AddressPolicy::new(Environment::Development, vec![]);
        assert!(policy.check_url("http://127.0.0.1:9000/hook").is_ok());
        assert!(policy.check_url("http://localhost:9000/hook").is_ok());
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
