//! Typed service configuration, read once at start-up.
//!
//! A service's settings come from three layers, later ones winning: the defaults written in the
//! service's own `Settings::load`, an optional TOML file named by `SONORA_CONFIG_FILE`, and the
//! process environment. The keys are the environment variable names operators already know
//! (`DATABASE_URL`, `REDIS_URL`, …) in every layer, so one reference table describes them all.
//!
//! [`Sources`] is the only place in the workspace that reads the environment. Every value is parsed
//! into its type here, at the edge; a bad or missing value becomes a [`SettingError`] that names the
//! setting and never repeats its value (it may be a secret). Services turn that error into one line
//! on standard error and exit code [`EXIT_CONFIG`].

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    str::FromStr,
    time::Duration,
};

pub use secrecy::{ExposeSecret, SecretString};
pub use url::Url;

/// The exit code of a service that stops because of a bad setting (`EX_CONFIG` is 78, but
/// operators of the original services know 64, `EX_USAGE`, and scripts test for it).
pub const EXIT_CONFIG: u8 = 64;

/// The environment variable naming an optional TOML settings file.
pub const CONFIG_FILE_VAR: &str = "SONORA_CONFIG_FILE";

/// A setting that is missing or cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid setting {name}: {problem}")]
pub struct SettingError {
    /// The setting's name, as written in the environment.
    pub name: String,
    /// What is wrong, without the value itself.
    pub problem: String,
}

impl SettingError {
    pub fn new(name: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            problem: problem.into(),
        }
    }
}

/// The raw key/value pairs a service reads its settings from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    values: BTreeMap<String, String>,
}

impl Sources {
    /// Reads the process environment, and the file named by `SONORA_CONFIG_FILE` if it is set.
    pub fn from_env() -> Result<Self, SettingError> {
        Self::from_pairs(std::env::vars())
    }

    /// Builds sources from explicit pairs, as the environment would give them; the file named by
    /// `SONORA_CONFIG_FILE` among them is read as the layer below them.
    pub fn from_pairs<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> Result<Self, SettingError>
    where
        K: Into<String>,
        V: Into<String>,
    {
        let env: BTreeMap<String, String> = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let mut values = match env.get(CONFIG_FILE_VAR).filter(|p| !p.is_empty()) {
            Some(path) => read_file(&PathBuf::from(path))?,
            None => BTreeMap::new(),
        };
        values.extend(env);
        Ok(Self { values })
    }

    /// Sets one value, overriding every layer; tests use it to adjust a base configuration.
    pub fn set(&mut self, name: &str, value: impl Into<String>) -> &mut Self {
        self.values.insert(name.to_owned(), value.into());
        self
    }

    /// Removes one value from every layer.
    pub fn remove(&mut self, name: &str) -> &mut Self {
        self.values.remove(name);
        self
    }

    fn raw(&self, name: &str) -> Option<&str> {
        self.values
            .get(name)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    /// A setting that must be present.
    pub fn required<T: FromSetting>(&self, name: &str) -> Result<T, SettingError> {
        self.optional(name)?.ok_or_else(|| {
            SettingError::new(
                name,
                format!("is required; set it in the environment or in the file named by {CONFIG_FILE_VAR}"),
            )
        })
    }

    /// A setting that may be absent.
    pub fn optional<T: FromSetting>(&self, name: &str) -> Result<Option<T>, SettingError> {
        self.raw(name)
            .map(|raw| T::from_setting(raw).map_err(|problem| SettingError::new(name, problem)))
            .transpose()
    }

    /// A setting with a default used when it is absent.
    pub fn or<T: FromSetting>(&self, name: &str, default: T) -> Result<T, SettingError> {
        Ok(self.optional(name)?.unwrap_or(default))
    }
}

fn read_file(path: &PathBuf) -> Result<BTreeMap<String, String>, SettingError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        SettingError::new(
            CONFIG_FILE_VAR,
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        SettingError::new(
            CONFIG_FILE_VAR,
            format!("{} is not valid TOML: {}", path.display(), e.message()),
        )
    })?;
    table
        .into_iter()
        .map(|(key, value)| {
            let text = match value {
                // Structured values (a table, an array of tables such as `[[ROUTING_RULES]]`)
                // are kept as JSON, the form the same setting takes in the environment; the
                // service that reads the setting parses it.
                toml::Value::Table(_) => serde_json::to_string(&value).ok(),
                toml::Value::Array(items)
                    if items
                        .iter()
                        .any(|i| matches!(i, toml::Value::Table(_) | toml::Value::Array(_))) =>
                {
                    serde_json::to_string(&items).ok()
                }
                toml::Value::Array(items) => items
                    .iter()
                    .map(scalar_text)
                    .collect::<Option<Vec<_>>>()
                    .map(|v| v.join(",")),
                other => scalar_text(&other),
            };
            match text {
                Some(text) => Ok((key, text)),
                None => Err(SettingError::new(
                    key,
                    format!(
                        "in {} must be a string, number, boolean, list, or table",
                        path.display()
                    ),
                )),
            }
        })
        .collect()
}

fn scalar_text(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A type that a setting's text can be parsed into. The error is a description of the problem
/// that does not repeat the value.
pub trait FromSetting: Sized {
    fn from_setting(raw: &str) -> Result<Self, String>;
}

macro_rules! from_str_setting {
    ($($ty:ty => $what:literal),* $(,)?) => {$(
        impl FromSetting for $ty {
            fn from_setting(raw: &str) -> Result<Self, String> {
                <$ty>::from_str(raw).map_err(|_| format!("must be {}", $what))
            }
        }
    )*};
}

from_str_setting! {
    u16 => "a whole number from 0 to 65535",
    u32 => "a whole number from 0 to 4294967295",
    u64 => "a non-negative whole number",
    usize => "a non-negative whole number",
    i32 => "a whole number",
    SocketAddr => "an address with a port, such as 0.0.0.0:8080",
}

impl FromSetting for f64 {
    fn from_setting(raw: &str) -> Result<Self, String> {
        f64::from_str(raw.trim())
            .ok()
            .filter(|v| v.is_finite())
            .ok_or_else(|| "must be a number, such as 0.3 or -16".to_owned())
    }
}

impl FromSetting for String {
    fn from_setting(raw: &str) -> Result<Self, String> {
        Ok(raw.to_owned())
    }
}

impl FromSetting for PathBuf {
    fn from_setting(raw: &str) -> Result<Self, String> {
        Ok(PathBuf::from(raw))
    }
}

impl FromSetting for bool {
    fn from_setting(raw: &str) -> Result<Self, String> {
        match raw.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => Err("must be true or false".to_owned()),
        }
    }
}

impl FromSetting for Duration {
    fn from_setting(raw: &str) -> Result<Self, String> {
        humantime::parse_duration(raw)
            .map_err(|_| "must be a duration such as 500ms, 20s or 5m".to_owned())
    }
}

impl FromSetting for Url {
    fn from_setting(raw: &str) -> Result<Self, String> {
        Url::parse(raw).map_err(|e| format!("must be an absolute URL ({e})"))
    }
}

impl FromSetting for SecretString {
    fn from_setting(raw: &str) -> Result<Self, String> {
        Ok(SecretString::from(raw.to_owned()))
    }
}

impl<T: FromSetting> FromSetting for Vec<T> {
    fn from_setting(raw: &str) -> Result<Self, String> {
        raw.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(T::from_setting)
            .collect()
    }
}

/// A URL whose scheme is one of a few, checked without echoing the URL (it may hold a password).
#[derive(Clone)]
pub struct SecretUrl {
    url: SecretString,
}

impl SecretUrl {
    pub fn parse(raw: &str, schemes: &[&str]) -> Result<Self, String> {
        let url = Url::parse(raw).map_err(|e| format!("must be a URL ({e})"))?;
        if !schemes.contains(&url.scheme()) {
            return Err(format!(
                "must be a URL with scheme {}",
                schemes.join(" or ")
            ));
        }
        Ok(Self {
            url: SecretString::from(raw.to_owned()),
        })
    }

    pub fn expose(&self) -> &str {
        self.url.expose_secret()
    }

    /// The URL with its password replaced by `***`, fit for logs.
    pub fn redacted(&self) -> String {
        match Url::parse(self.url.expose_secret()) {
            Ok(mut url) => {
                if url.password().is_some() {
                    let _ = url.set_password(Some("***"));
                }
                url.to_string()
            }
            Err(_) => "<unparseable>".to_owned(),
        }
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SecretUrl").field(&self.redacted()).finish()
    }
}

/// Where the service runs; production tightens what development allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Environment {
    #[default]
    Development,
    Production,
}

impl FromSetting for Environment {
    fn from_setting(raw: &str) -> Result<Self, String> {
        match raw.to_ascii_lowercase().as_str() {
            "development" | "dev" | "local" => Ok(Self::Development),
            "production" | "prod" => Ok(Self::Production),
            _ => Err("must be development or production".to_owned()),
        }
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Development => "development",
            Self::Production => "production",
        })
    }
}

/// How log lines are written to standard output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// One JSON object per line, for collectors.
    #[default]
    Json,
    /// Human-readable lines, for a terminal.
    Text,
}

impl FromSetting for LogFormat {
    fn from_setting(raw: &str) -> Result<Self, String> {
        match raw.to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "text" | "pretty" => Ok(Self::Text),
            _ => Err("must be json or text".to_owned()),
        }
    }
}

/// The settings every service has.
#[derive(Debug, Clone)]
pub struct CommonSettings {
    /// The service's name in logs, metrics and traces (`OTEL_SERVICE_NAME`).
    pub service_name: String,
    pub environment: Environment,
    pub log_format: LogFormat,
    /// A `tracing` filter directive such as `info` or `info,gateway=debug` (`RUST_LOG`).
    pub log_filter: String,
    /// Where traces are exported over OTLP/gRPC; none disables the export.
    pub otlp_endpoint: Option<Url>,
    /// How long in-flight work may take to finish after SIGTERM.
    pub shutdown_grace_period: Duration,
}

impl CommonSettings {
    pub fn load(src: &Sources, default_service_name: &str) -> Result<Self, SettingError> {
        let otlp_endpoint: Option<Url> = src.optional("OTEL_EXPORTER_OTLP_ENDPOINT")?;
        if let Some(url) = &otlp_endpoint
            && !matches!(url.scheme(), "http" | "https")
        {
            return Err(SettingError::new(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "must be an http:// or https:// URL of an OTLP/gRPC receiver",
            ));
        }
        let shutdown_grace_period = src.or("SHUTDOWN_GRACE_PERIOD", Duration::from_secs(20))?;
        if shutdown_grace_period > Duration::from_secs(600) {
            return Err(SettingError::new(
                "SHUTDOWN_GRACE_PERIOD",
                "must be at most 10m",
            ));
        }
        Ok(Self {
            service_name: src.or("OTEL_SERVICE_NAME", default_service_name.to_owned())?,
            environment: src.or("ENVIRONMENT", Environment::Development)?,
            log_format: src.or("LOG_FORMAT", LogFormat::Json)?,
            log_filter: src.or("RUST_LOG", "info".to_owned())?,
            otlp_endpoint,
            shutdown_grace_period,
        })
    }
}

/// The PostgreSQL connection settings of a service that keeps state.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub url: SecretUrl,
    pub pool_size: usize,
    pub connect_timeout: Duration,
}

impl DatabaseSettings {
    pub fn load(src: &Sources) -> Result<Self, SettingError> {
        let raw: SecretString = src.required("DATABASE_URL")?;
        let url = SecretUrl::parse(raw.expose_secret(), &["postgres", "postgresql"])
            .map_err(|p| SettingError::new("DATABASE_URL", p))?;
        let pool_size = src.or("DATABASE_POOL_SIZE", 10usize)?;
        if !(1..=512).contains(&pool_size) {
            return Err(SettingError::new(
                "DATABASE_POOL_SIZE",
                "must be between 1 and 512",
            ));
        }
        Ok(Self {
            url,
            pool_size,
            connect_timeout: src.or("DATABASE_CONNECT_TIMEOUT", Duration::from_secs(5))?,
        })
    }
}

/// The Redis connection settings of a service that uses Redis.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: SecretUrl,
    pub pool_size: usize,
    pub timeout: Duration,
}

impl RedisSettings {
    pub fn load(src: &Sources) -> Result<Self, SettingError> {
        let raw: SecretString = src.required("REDIS_URL")?;
        let url = SecretUrl::parse(raw.expose_secret(), &["redis", "rediss"])
            .map_err(|p| SettingError::new("REDIS_URL", p))?;
        let pool_size = src.or("REDIS_POOL_SIZE", 16usize)?;
        if !(1..=512).contains(&pool_size) {
            return Err(SettingError::new(
                "REDIS_POOL_SIZE",
                "must be between 1 and 512",
            ));
        }
        Ok(Self {
            url,
            pool_size,
            timeout: src.or("REDIS_TIMEOUT", Duration::from_secs(2))?,
        })
    }
}

/// The public `https://` address at which Sonora receives webhooks (`BASE_URL`), as the old
/// narration app treated it: in production an `http://` address is upgraded to `https://` (the
/// caller logs [`BaseUrl::upgraded`] as a warning), and anything that is not an absolute
/// http(s) URL without query or fragment stops the service with the setting named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    /// Without a trailing slash, so that paths are appended as `{url}/api/...`.
    pub url: String,
    /// Set when production upgraded an `http://` address; the original is kept to be logged.
    pub upgraded: Option<String>,
    /// Whether `BASE_URL` was not set and the development default is in use: a production
    /// service refuses to serve so (see [`BaseUrl::require`]), while its one-off commands run.
    pub defaulted: bool,
}

impl BaseUrl {
    pub fn load(
        src: &Sources,
        environment: Environment,
        default: &str,
    ) -> Result<Self, SettingError> {
        let given: Option<String> = src.optional("BASE_URL")?;
        let defaulted = given.is_none();
        let raw = given.unwrap_or_else(|| default.to_owned());
        let invalid = || {
            SettingError::new(
                "BASE_URL",
                "must be the absolute https:// address webhooks reach, such as https://sonora.example.com",
            )
        };
        let parsed = Url::parse(raw.trim()).map_err(|_| invalid())?;
        if !matches!(parsed.scheme(), "http" | "https")
            || parsed.host_str().is_none_or(str::is_empty)
            || parsed.query().is_some()
            || parsed.fragment().is_some()
            || !parsed.username().is_empty()
        {
            return Err(invalid());
        }
        let text = parsed.as_str().trim_end_matches('/').to_owned();
        if environment == Environment::Production && parsed.scheme() == "http" && !defaulted {
            return Ok(Self {
                url: format!("https{}", &text["http".len()..]),
                upgraded: Some(text),
                defaulted,
            });
        }
        Ok(Self {
            url: text,
            upgraded: None,
            defaulted,
        })
    }

    /// Refuses to serve in production on the development default, which reaches nothing
    /// outside the machine.
    pub fn require(&self, environment: Environment) -> Result<(), SettingError> {
        if environment == Environment::Production && self.defaulted {
            return Err(SettingError::new(
                "BASE_URL",
                "is required in production: the public https:// address webhooks reach",
            ));
        }
        Ok(())
    }
}

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

impl FromSetting for IpNet {
    fn from_setting(raw: &str) -> Result<Self, String> {
        raw.parse()
    }
}

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical_ip(ip)) {
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
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(pairs: &[(&str, &str)]) -> Sources {
        Sources::from_pairs(pairs.iter().map(|(k, v)| (*k, *v))).unwrap()
    }

    #[test]
    fn base_url_is_https_in_production() {
        let load = |env, raw: &str| {
            BaseUrl::load(&sources(&[("BASE_URL", raw)]), env, "http://localhost:8081")
        };
        let missing = BaseUrl::load(
            &sources(&[]),
            Environment::Production,
            "http://localhost:8081",
        )
        .unwrap();
        assert_eq!(
            missing.require(Environment::Production).unwrap_err().name,
            "BASE_URL",
            "required to serve in production"
        );
        assert!(missing.require(Environment::Development).is_ok());
        let dev = load(Environment::Development, "http://localhost:8081/").unwrap();
        assert_eq!(
            dev,
            BaseUrl {
                url: "http://localhost:8081".into(),
                upgraded: None,
                defaulted: false,
            }
        );
        let prod = load(Environment::Production, "http://sonora.example.com/hooks").unwrap();
        assert_eq!(prod.url, "https://sonora.example.com/hooks");
        assert_eq!(
            prod.upgraded.as_deref(),
            Some("http://sonora.example.com/hooks")
        );
        for bad in [
            "sonora.example.com",
            "ftp://x",
            "https://x/?a=1",
            "https://user:pw@x",
            "https://",
        ] {
            let e = load(Environment::Production, bad).unwrap_err();
            assert_eq!(e.name, "BASE_URL", "{bad}");
            assert!(!e.to_string().contains("pw"));
        }
    }

    #[test]
    fn missing_required_setting_is_named() {
        let err = DatabaseSettings::load(&sources(&[])).unwrap_err();
        assert_eq!(err.name, "DATABASE_URL");
        assert!(
            err.to_string()
                .starts_with("invalid setting DATABASE_URL: is required")
        );
    }

    #[test]
    fn bad_value_is_named_but_not_echoed() {
        let err =
            DatabaseSettings::load(&sources(&[("DATABASE_URL", "mysql://user:hunter2@db/x")]))
                .unwrap_err();
        assert_eq!(err.name, "DATABASE_URL");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn durations_and_numbers_parse() {
        let src = sources(&[
            ("SHUTDOWN_GRACE_PERIOD", "1500ms"),
            ("DATABASE_POOL_SIZE", "3"),
        ]);
        let common = CommonSettings::load(&src, "svc").unwrap();
        assert_eq!(common.shutdown_grace_period, Duration::from_millis(1500));
        let err = CommonSettings::load(&sources(&[("SHUTDOWN_GRACE_PERIOD", "soon")]), "svc")
            .unwrap_err();
        assert_eq!(err.name, "SHUTDOWN_GRACE_PERIOD");
    }

    #[test]
    fn environment_overrides_file() {
        let dir = std::env::temp_dir().join(format!("settings-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("sonora.toml");
        std::fs::write(
            &file,
            "RUST_LOG = \"debug\"\nDATABASE_POOL_SIZE = 7\nLOG_FORMAT = \"text\"\n",
        )
        .unwrap();
        let src = sources(&[
            (CONFIG_FILE_VAR, file.to_str().unwrap()),
            ("RUST_LOG", "warn"),
        ]);
        let common = CommonSettings::load(&src, "svc").unwrap();
        assert_eq!(common.log_filter, "warn");
        assert_eq!(common.log_format, LogFormat::Text);
        assert_eq!(src.or("DATABASE_POOL_SIZE", 1usize).unwrap(), 7);
    }

    #[test]
    fn tables_in_the_file_become_json() {
        let dir = std::env::temp_dir().join(format!("settings-tables-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("sonora.toml");
        std::fs::write(
            &file,
            "TRUSTED_PROXIES = [\"10.0.0.0/8\", \"192.168.0.0/16\"]\n\
             [[ROUTING_RULES]]\nname = \"one\"\nactions = [\"publish\"]\n\
             [[ROUTING_RULES]]\nname = \"two\"\n",
        )
        .unwrap();
        let src = sources(&[(CONFIG_FILE_VAR, file.to_str().unwrap())]);
        let rules: String = src.required("ROUTING_RULES").unwrap();
        assert_eq!(
            rules,
            r#"[{"actions":["publish"],"name":"one"},{"name":"two"}]"#
        );
        let proxies: String = src.required("TRUSTED_PROXIES").unwrap();
        assert_eq!(proxies, "10.0.0.0/8,192.168.0.0/16");
    }

    #[test]
    fn unreadable_file_names_the_file_setting() {
        let err = Sources::from_pairs([(CONFIG_FILE_VAR, "/nonexistent/sonora.toml")]).unwrap_err();
        assert_eq!(err.name, CONFIG_FILE_VAR);
    }

    #[test]
    fn redacted_url_hides_password() {
        let url = SecretUrl::parse("postgres://u:secret@h/db", &["postgres"]).unwrap();
        assert_eq!(url.redacted(), "postgres://u:***@h/db");
        assert!(!format!("{url:?}").contains("secret"));
    }
}
