//! Configuration: loaded once from `KAMIYO_*` variables into one typed struct, validated at start.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use thiserror::Error;

use crate::domain::secretbox::{SecretBox, SecretCodec};

/// Which parts of the service a `serve` process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Role {
    /// HTTP API and delivery workers.
    #[default]
    All,
    /// HTTP API only.
    Api,
    /// Delivery workers only.
    Worker,
}

impl Role {
    pub fn runs_api(self) -> bool {
        matches!(self, Role::All | Role::Api)
    }
    pub fn runs_workers(self) -> bool {
        matches!(self, Role::All | Role::Worker)
    }
}

/// Requests per second per API key on the user API, with a burst allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Tokens added per second; 0 disables the limit.
    pub per_second: u32,
    /// Bucket size: how many requests may come at once after a quiet spell.
    pub burst: u32,
}

impl RateLimit {
    pub const DEFAULT: RateLimit = RateLimit {
        per_second: 20,
        burst: 40,
    };
    pub const DISABLED: RateLimit = RateLimit {
        per_second: 0,
        burst: 0,
    };

    pub fn enabled(self) -> bool {
        self.per_second > 0
    }
}

/// One `host=ip` pair of `KAMIYO_RESOLVE`: the address a name resolves to, before DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveOverride {
    /// Lower case, without a trailing dot.
    pub host: String,
    pub ip: IpAddr,
}

/// Parses `host=ip,host=ip` (IPv6 with or without brackets); a host may repeat.
pub fn parse_resolve(s: &str) -> Result<Vec<ResolveOverride>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (host, ip) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not a host=ip pair"))?;
            let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
            if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
                return Err(format!("{pair:?} does not start with a host name"));
            }
            let ip = ip
                .trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .map_err(|_| format!("{pair:?} does not end with an IP address"))?;
            Ok(ResolveOverride { host, ip })
        })
        .collect()
}

#[derive(Debug, Error)]
#[error("{var}: {message}")]
pub struct ConfigError {
    pub var: &'static str,
    pub message: String,
}

fn config_error(var: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        message: message.into(),
    }
}

/// Every tunable of the service. Tests start from `Config::default()` and change fields.
#[derive(Clone)]
pub struct Config {
    /// `sqlite://PATH` or `postgres://...`.
    pub database_url: String,
    /// Address the HTTP API binds (`127.0.0.1:0` picks a free port).
    pub listen: String,
    /// Bearer token of the operator API; the operator API refuses every call while unset.
    pub admin_token: Option<String>,
    /// Delays between delivery attempts: N delays mean N+1 attempts.
    pub retry_schedule: Vec<Duration>,
    /// Per attempt, connect to last byte.
    pub delivery_timeout: Duration,
    /// Accept `http://` webhook URLs (development only).
    pub allow_http: bool,
    /// CIDRs exempt from the outbound network guard.
    pub allow_private_networks: Vec<String>,
    /// PEM file of extra trusted roots for outbound TLS.
    pub extra_ca_certs: Option<PathBuf>,
    /// Base64 32-byte key encrypting webhook secrets at rest.
    pub encryption_key: Option<String>,
    /// Requests per second (and burst) per API key on the user API; per process.
    pub rate_limit: RateLimit,
    /// Names resolved to fixed addresses before DNS (`KAMIYO_RESOLVE`, like curl's
    /// `--resolve`); the network guard still judges the addresses.
    pub resolve: Vec<ResolveOverride>,
    /// Which parts of the service `serve` runs.
    pub role: Role,
    /// Maximum concurrent delivery attempts in this process.
    pub max_in_flight: usize,
    /// Maximum concurrent delivery attempts to one webhook.
    pub max_in_flight_per_endpoint: usize,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// How long a worker's claim on a delivery lasts; a crashed worker's claims are taken
    /// over once it runs out.
    pub lease: Duration,
    /// PostgreSQL connections per process.
    pub db_pool_size: u32,
    /// Fallback poll for deliveries queued by other processes (in-process ingests wake
    /// the workers at once).
    pub poll_interval: Duration,
}

impl std::fmt::Debug for Config {
    // Secrets are never printed, not even in debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("database_url", &redact_url(&self.database_url))
            .field("listen", &self.listen)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<set>"))
            .field("retry_schedule", &self.retry_schedule)
            .field("delivery_timeout", &self.delivery_timeout)
            .field("allow_http", &self.allow_http)
            .field("allow_private_networks", &self.allow_private_networks)
            .field("extra_ca_certs", &self.extra_ca_certs)
            .field(
                "encryption_key",
                &self.encryption_key.as_ref().map(|_| "<set>"),
            )
            .field("rate_limit", &self.rate_limit)
            .field("resolve", &self.resolve)
            .field("role", &self.role)
            .field("max_in_flight", &self.max_in_flight)
            .field(
                "max_in_flight_per_endpoint",
                &self.max_in_flight_per_endpoint,
            )
            .field("max_body_bytes", &self.max_body_bytes)
            .field("db_pool_size", &self.db_pool_size)
            .field("lease", &self.lease)
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

/// Hides a password in a database URL.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

pub const DEFAULT_DATABASE_URL: &str = "sqlite://kamiyo-webhooks.db";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_RETRY_SCHEDULE: &str = "1m,5m,15m";
pub const DEFAULT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for Config {
    fn default() -> Self {
        Config {
            database_url: DEFAULT_DATABASE_URL.to_string(),
            listen: DEFAULT_LISTEN.to_string(),
            admin_token: None,
            retry_schedule: parse_schedule(DEFAULT_RETRY_SCHEDULE).expect("default schedule"),
            delivery_timeout: DEFAULT_DELIVERY_TIMEOUT,
            allow_http: false,
            allow_private_networks: Vec::new(),
            extra_ca_certs: None,
            encryption_key: None,
            rate_limit: RateLimit::DEFAULT,
            resolve: Vec::new(),
            role: Role::All,
            max_in_flight: 256,
            max_in_flight_per_endpoint: 16,
            max_body_bytes: 1024 * 1024,
            db_pool_size: 16,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
        }
    }
}

impl Config {
    /// The outbound network guard this configuration asks for.
    pub fn network_policy(&self) -> Result<crate::domain::netguard::NetworkPolicy, ConfigError> {
        crate::domain::netguard::NetworkPolicy::new(&self.allow_private_networks)
            .map_err(|m| config_error("KAMIYO_ALLOW_PRIVATE_NETWORKS", m))
    }

    /// How the stores write and read webhook secrets: sealed with `encryption_key` when set.
    pub fn secret_codec(&self) -> Result<SecretCodec, ConfigError> {
        self.encryption_key
            .as_deref()
            .map(SecretBox::from_base64)
            .transpose()
            .map(SecretCodec::new)
            .map_err(|m| config_error("KAMIYO_ENCRYPTION_KEY", m))
    }

    /// Defaults overridden by `KAMIYO_*` environment variables.
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Same as `from_env`, reading variables through `get` (for tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        if let Some(v) = get("KAMIYO_DATABASE_URL") {
            c.database_url = v;
        }
        if let Some(v) = get("KAMIYO_LISTEN") {
            c.listen = v;
        }
        c.admin_token = get("KAMIYO_ADMIN_TOKEN");
        if let Some(v) = get("KAMIYO_RETRY_SCHEDULE") {
            c.retry_schedule =
                parse_schedule(&v).map_err(|m| config_error("KAMIYO_RETRY_SCHEDULE", m))?;
        }
        if let Some(v) = get("KAMIYO_DELIVERY_TIMEOUT") {
            c.delivery_timeout =
                parse_duration(&v).map_err(|m| config_error("KAMIYO_DELIVERY_TIMEOUT", m))?;
        }
        if let Some(v) = get("KAMIYO_ALLOW_HTTP") {
            c.allow_http = parse_bool(&v).map_err(|m| config_error("KAMIYO_ALLOW_HTTP", m))?;
        }
        if let Some(v) = get("KAMIYO_ALLOW_PRIVATE_NETWORKS") {
            c.allow_private_networks = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
        }
        c.extra_ca_certs = get("KAMIYO_EXTRA_CA_CERTS").map(PathBuf::from);
        c.encryption_key = get("KAMIYO_ENCRYPTION_KEY");
        if let Some(v) = get("KAMIYO_RATE_LIMIT") {
            let per_second = v.trim().parse::<u32>().map_err(|_| {
                config_error(
                    "KAMIYO_RATE_LIMIT",
                    format!("{v:?} is not a whole number of requests per second (0 disables)"),
                )
            })?;
            c.rate_limit = RateLimit {
                per_second,
                burst: per_second.saturating_mul(2),
            };
        }
        if let Some(v) = get("KAMIYO_RATE_LIMIT_BURST") {
            c.rate_limit.burst = parse_positive(&v)
                .map_err(|m| config_error("KAMIYO_RATE_LIMIT_BURST", m))?
                .try_into()
                .map_err(|_| config_error("KAMIYO_RATE_LIMIT_BURST", "is too large"))?;
        }
        if let Some(v) = get("KAMIYO_RESOLVE") {
            c.resolve = parse_resolve(&v).map_err(|m| config_error("KAMIYO_RESOLVE", m))?;
        }
        if let Some(v) = get("KAMIYO_MAX_IN_FLIGHT") {
            c.max_in_flight =
                parse_positive(&v).map_err(|m| config_error("KAMIYO_MAX_IN_FLIGHT", m))?;
        }
        if let Some(v) = get("KAMIYO_MAX_IN_FLIGHT_PER_ENDPOINT") {
            c.max_in_flight_per_endpoint = parse_positive(&v)
                .map_err(|m| config_error("KAMIYO_MAX_IN_FLIGHT_PER_ENDPOINT", m))?;
        }
        if let Some(v) = get("KAMIYO_MAX_BODY_BYTES") {
            c.max_body_bytes =
                parse_positive(&v).map_err(|m| config_error("KAMIYO_MAX_BODY_BYTES", m))?;
        }
        if let Some(v) = get("KAMIYO_DB_POOL_SIZE") {
            c.db_pool_size = parse_positive(&v)
                .map_err(|m| config_error("KAMIYO_DB_POOL_SIZE", m))?
                .try_into()
                .map_err(|_| config_error("KAMIYO_DB_POOL_SIZE", "is too large"))?;
        }
        if let Some(v) = get("KAMIYO_LEASE") {
            c.lease = parse_duration(&v).map_err(|m| config_error("KAMIYO_LEASE", m))?;
        }
        if let Some(v) = get("KAMIYO_POLL_INTERVAL") {
            c.poll_interval =
                parse_duration(&v).map_err(|m| config_error("KAMIYO_POLL_INTERVAL", m))?;
        }
        c.validate()?;
        Ok(c)
    }

    /// Checks values that cannot be expressed by types alone.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.database_url.starts_with("sqlite:")
            || crate::store::is_postgres_url(&self.database_url))
        {
            return Err(config_error(
                "KAMIYO_DATABASE_URL",
                "must start with sqlite:// or postgres://",
            ));
        }
        if self.listen.parse::<SocketAddr>().is_err() {
            return Err(config_error(
                "KAMIYO_LISTEN",
                format!("{:?} is not an address such as 127.0.0.1:8080", self.listen),
            ));
        }
        if let Some(t) = &self.admin_token {
            if t.len() < 16 {
                return Err(config_error(
                    "KAMIYO_ADMIN_TOKEN",
                    "must be at least 16 characters",
                ));
            }
        }
        if self.lease <= self.delivery_timeout {
            return Err(config_error(
                "KAMIYO_LEASE",
                "must be longer than KAMIYO_DELIVERY_TIMEOUT, or attempts in flight would be taken over",
            ));
        }
        if self.poll_interval.is_zero() {
            return Err(config_error(
                "KAMIYO_POLL_INTERVAL",
                "must be greater than zero",
            ));
        }
        crate::domain::netguard::NetworkPolicy::new(&self.allow_private_networks)
            .map_err(|m| config_error("KAMIYO_ALLOW_PRIVATE_NETWORKS", m))?;
        self.secret_codec()?;
        if self.rate_limit.enabled() && self.rate_limit.burst == 0 {
            return Err(config_error(
                "KAMIYO_RATE_LIMIT_BURST",
                "must be at least 1 while KAMIYO_RATE_LIMIT is on",
            ));
        }
        if self.delivery_timeout.is_zero() {
            return Err(config_error(
                "KAMIYO_DELIVERY_TIMEOUT",
                "must be greater than zero",
            ));
        }
        Ok(())
    }
}

/// Parses `1m,5m,15m` (units ms, s, m, h); an empty string means a single attempt.
pub fn parse_schedule(s: &str) -> Result<Vec<Duration>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(parse_duration)
        .collect()
}

/// Parses one duration such as `250ms`, `10s`, `5m` or `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{s:?} needs a unit (ms, s, m or h)"))?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration such as 30s"))?;
    let ms = match unit {
        "ms" => n,
        "s" => n.saturating_mul(1000),
        "m" => n.saturating_mul(60_000),
        "h" => n.saturating_mul(3_600_000),
        _ => return Err(format!("{s:?} has an unknown unit; use ms, s, m or h")),
    };
    Ok(Duration::from_millis(ms))
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        other => Err(format!("{other:?} is not true or false")),
    }
}

fn parse_positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{s:?} is not a positive integer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_parses_every_unit() {
        assert_eq!(
            parse_schedule("250ms, 2s,1m,1h").unwrap(),
            vec![
                Duration::from_millis(250),
                Duration::from_secs(2),
                Duration::from_secs(60),
                Duration::from_secs(3600)
            ]
        );
        assert!(parse_schedule("").unwrap().is_empty());
        assert!(parse_schedule("5").is_err());
        assert!(parse_schedule("5d").is_err());
        assert!(parse_schedule("-5s").is_err());
    }

    #[test]
    fn environment_overrides_defaults_and_bad_values_name_the_variable() {
        let c = Config::from_lookup(|k| match k {
            "KAMIYO_RETRY_SCHEDULE" => Some("10ms,20ms".into()),
            "KAMIYO_ALLOW_HTTP" => Some("true".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.retry_schedule.len(), 2);
        assert!(c.allow_http);
        let e = Config::from_lookup(|k| (k == "KAMIYO_DELIVERY_TIMEOUT").then(|| "soon".into()))
            .unwrap_err();
        assert!(e.to_string().starts_with("KAMIYO_DELIVERY_TIMEOUT"));
    }

    #[test]
    fn the_encryption_key_must_be_base64_of_32_bytes() {
        use base64::Engine as _;
        let good = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let c =
            Config::from_lookup(|k| (k == "KAMIYO_ENCRYPTION_KEY").then(|| good.clone())).unwrap();
        assert!(c.secret_codec().unwrap().encrypts());
        for bad in ["hunter2hunter2", "c2hvcnQ=", "%%%%"] {
            let e = Config::from_lookup(|k| (k == "KAMIYO_ENCRYPTION_KEY").then(|| bad.into()))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("KAMIYO_ENCRYPTION_KEY: "), "{e}");
            assert!(!e.contains(bad), "the message must not repeat the key: {e}");
        }
        assert!(!Config::default().secret_codec().unwrap().encrypts());
    }

    #[test]
    fn rate_limit_and_resolve_overrides_parse() {
        let c = Config::from_lookup(|k| match k {
            "KAMIYO_RATE_LIMIT" => Some("5".into()),
            "KAMIYO_RESOLVE" => Some("Evil.Test.=127.0.0.1, v6.test=[::1],v6.test=10.0.0.1".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(
            c.rate_limit,
            RateLimit {
                per_second: 5,
                burst: 10
            }
        );
        assert_eq!(c.resolve.len(), 3);
        assert_eq!(c.resolve[0].host, "evil.test");
        assert_eq!(c.resolve[1].ip, "::1".parse::<IpAddr>().unwrap());
        let off = Config::from_lookup(|k| (k == "KAMIYO_RATE_LIMIT").then(|| "0".into())).unwrap();
        assert!(!off.rate_limit.enabled());
        assert_eq!(Config::default().rate_limit, RateLimit::DEFAULT);
        for bad in ["evil.test", "=1.2.3.4", "evil.test=banana"] {
            let e =
                Config::from_lookup(|k| (k == "KAMIYO_RESOLVE").then(|| bad.into())).unwrap_err();
            assert!(e.to_string().starts_with("KAMIYO_RESOLVE"), "{e}");
        }
        let e =
            Config::from_lookup(|k| (k == "KAMIYO_RATE_LIMIT").then(|| "fast".into())).unwrap_err();
        assert!(e.to_string().starts_with("KAMIYO_RATE_LIMIT"), "{e}");
    }

    #[test]
    fn debug_output_hides_secrets() {
        let c = Config {
            admin_token: Some("supersecretadmintoken".into()),
            database_url: "postgres://u:hunter2@localhost/db".into(),
            encryption_key: Some("c2VjcmV0IGtleSBtYXRlcmlhbCBvZiAzMiBieXRlcyE=".into()),
            ..Config::default()
        };
        let s = format!("{c:?}");
        assert!(!s.contains("c2VjcmV0"));
        assert!(!s.contains("supersecretadmintoken"));
        assert!(!s.contains("hunter2"));
    }
}
