//! The outbound HTTP client: signs each request at send time, sends it over rustls with
//! keep-alive, never follows redirects, and reads at most 1 KiB of the answer.

use std::error::Error as StdError;
use std::time::{Duration, Instant};

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use thiserror::Error;

use crate::config::Config;
use crate::domain::netguard::NetworkPolicy;
use crate::domain::signature::{kamiyo_signature, standard_webhooks_signature};

/// Bytes of the endpoint's answer kept in the delivery log.
pub const RESPONSE_SNIPPET_BYTES: usize = 1024;
const USER_AGENT: &str = concat!("kamiyo-webhooks/", env!("CARGO_PKG_VERSION"));

// Names built once: a `&str` name is parsed and checked again at every insert.
const X_KAMIYO_SIGNATURE: HeaderName = HeaderName::from_static("x-kamiyo-signature");
const X_KAMIYO_EVENT: HeaderName = HeaderName::from_static("x-kamiyo-event");
const X_KAMIYO_DELIVERY: HeaderName = HeaderName::from_static("x-kamiyo-delivery");
const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot read KAMIYO_EXTRA_CA_CERTS file {path}: {source}")]
    CaFile {
        path: String,
        source: std::io::Error,
    },
    #[error("KAMIYO_EXTRA_CA_CERTS file {path} holds no usable PEM certificate: {source}")]
    CaPem {
        path: String,
        source: reqwest::Error,
    },
    #[error("{0}")]
    Policy(String),
    #[error("cannot build the HTTP client: {0}")]
    Build(#[from] reqwest::Error),
}

/// One request to send.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    pub url: &'a str,
    pub secret: &'a str,
    pub event: &'a str,
    pub delivery_id: i64,
    pub body: &'a Bytes,
}

/// What happened to one request.
#[derive(Debug, Clone, PartialEq)]
pub struct SendOutcome {
    pub status_code: Option<u16>,
    pub latency_ms: i64,
    /// `None` on success; otherwise timeout, connect, tls, http_status, redirect, gone or request.
    pub error_kind: Option<&'static str>,
    pub error: Option<String>,
    pub response_body: Option<String>,
}

impl SendOutcome {
    pub fn succeeded(&self) -> bool {
        self.error_kind.is_none()
    }
    pub fn gone(&self) -> bool {
        self.status_code == Some(410)
    }
}

/// Signs and sends deliveries. Cheap to share: one connection pool for the process.
pub struct Sender {
    client: reqwest::Client,
    timeout: Duration,
    policy: NetworkPolicy,
    /// Webhook URLs as parsed, with the guard's verdict on a literal address: parsing
    /// (IDNA included) cost more per attempt than signing the body.
    targets: Mutex<HashMap<String, Arc<Target>>>,
}

/// A webhook URL once parsed.
struct Target {
    url: Option<url::Url>,
    /// Why the guard refuses the URL's literal IP address, if it does.
    blocked: Option<String>,
}

/// Parsed URLs kept at most; past that the cache starts again (URLs are re-parsed).
const TARGET_CACHE: usize = 65_536;

/// A name resolved only to addresses the guard allows; the connection then goes to one
/// of exactly those addresses, so DNS rebinding between check and connect cannot work.
/// Names in `overrides` (`KAMIYO_RESOLVE`) skip DNS; their addresses are judged the same.
struct GuardedResolver {
    policy: NetworkPolicy,
    overrides: Arc<HashMap<String, Vec<IpAddr>>>,
}

/// Every address a name resolved to is refused by the network guard.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct BlockedAddress(String);

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        let overrides = self.overrides.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let key = host.trim_end_matches('.').to_ascii_lowercase();
            let resolved: Vec<SocketAddr> = match overrides.get(&key) {
                Some(ips) => ips.iter().map(|ip| SocketAddr::new(*ip, 0)).collect(),
                None => tokio::net::lookup_host((host.as_str(), 0)).await?.collect(),
            };
            let mut refused = None;
            let allowed: Vec<SocketAddr> = resolved
                .into_iter()
                .filter(|a| match policy.check(a.ip()) {
                    Ok(()) => true,
                    Err(why) => {
                        refused.get_or_insert(why);
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let why = refused.unwrap_or_else(|| "no address".to_string());
                return Err(
                    Box::new(BlockedAddress(format!("{host} resolves to {why}")))
                        as Box<dyn StdError + Send + Sync>,
                );
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

impl Sender {
    pub fn new(config: &Config) -> Result<Sender, ClientError> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .redirect(reqwest::redirect::Policy::none())
            // Our own schedule retries; reqwest's (for protocol NACKs) would also copy
            // every request's headers in case it had to.
            .retry(reqwest::retry::never().max_retries_per_request(0))
            // No total timeout here: `send` bounds the request and the answer's reading
            // with one timer, where reqwest would start a second for every request.
            .connect_timeout(config.delivery_timeout)
            // Many webhooks may share a host: keep as many connections as can be in use.
            .pool_max_idle_per_host(config.max_in_flight)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .user_agent(USER_AGENT);
        let policy = config
            .network_policy()
            .map_err(|e| ClientError::Policy(e.to_string()))?;
        let mut overrides: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for o in &config.resolve {
            overrides.entry(o.host.clone()).or_default().push(o.ip);
        }
        builder = builder.dns_resolver(Arc::new(GuardedResolver {
            policy: policy.clone(),
            overrides: Arc::new(overrides),
        }));
        if let Some(path) = &config.extra_ca_certs {
            let display = path.display().to_string();
            let pem = std::fs::read(path).map_err(|source| ClientError::CaFile {
                path: display.clone(),
                source,
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
                ClientError::CaPem {
                    path: display.clone(),
                    source,
                }
            })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(Sender {
            client: builder.build()?,
            timeout: config.delivery_timeout,
            policy,
            targets: Mutex::new(HashMap::new()),
        })
    }

    fn target(&self, raw: &str) -> Arc<Target> {
        let mut targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = targets.get(raw) {
            return t.clone();
        }
        let url = url::Url::parse(raw).ok();
        // IP literals never reach the resolver: the guard judges them here.
        let ip = url.as_ref().and_then(|u| match u.host()? {
            url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
            url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
            url::Host::Domain(_) => None,
        });
        let blocked = ip.and_then(|ip| self.policy.check(ip).err());
        let target = Arc::new(Target { url, blocked });
        if targets.len() >= TARGET_CACHE {
            targets.clear();
        }
        targets.insert(raw.to_string(), target.clone());
        target
    }

    fn headers(out: &Outgoing<'_>, timestamp: i64) -> HeaderMap {
        let body: &[u8] = out.body;
        // Room for reqwest's own (user agent, accept) without growing.
        let mut h = HeaderMap::with_capacity(12);
        // Values from owned strings take the string's buffer rather than a copy.
        let owned = |s: String| HeaderValue::try_from(s).expect("header-safe ASCII");
        let id = HeaderValue::from(out.delivery_id);
        let standard =
            standard_webhooks_signature(out.secret, id.to_str().expect("digits"), timestamp, body);
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(
            X_KAMIYO_SIGNATURE,
            owned(kamiyo_signature(out.secret, body)),
        );
        h.insert(
            X_KAMIYO_EVENT,
            HeaderValue::from_str(out.event).expect("header-safe ASCII"),
        );
        h.insert(X_KAMIYO_DELIVERY, id.clone());
        h.insert(WEBHOOK_ID, id);
        h.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(timestamp));
        h.insert(WEBHOOK_SIGNATURE, owned(standard));
        h
    }

    /// Sends one signed request; never fails, every problem is in the outcome.
    pub async fn send(&self, out: &Outgoing<'_>) -> SendOutcome {
        let started = Instant::now();
        let target = self.target(out.url);
        if let Some(why) = &target.blocked {
            return SendOutcome {
                status_code: None,
                latency_ms: 0,
                error_kind: Some("blocked_address"),
                error: Some(why.clone()),
                response_body: None,
            };
        }
        let timestamp = chrono::Utc::now().timestamp();
        // An unparsable URL (none is stored: URLs are checked at create) is left to
        // reqwest, which reports it as a request error.
        let request = match &target.url {
            // Built whole: a builder would copy every header into a map of its own.
            Some(url) => {
                let mut request = reqwest::Request::new(reqwest::Method::POST, url.clone());
                *request.headers_mut() = Self::headers(out, timestamp);
                *request.body_mut() = Some(out.body.clone().into());
                Ok(request)
            }
            None => self
                .client
                .post(out.url)
                .headers(Self::headers(out, timestamp))
                .body(out.body.clone())
                .build(),
        };
        // One timer for the request and the reading of the answer.
        let result = tokio::time::timeout(self.timeout, async {
            let mut response = self.client.execute(request?).await?;
            let status = response.status();
            let mut snippet = Vec::new();
            while snippet.len() < RESPONSE_SNIPPET_BYTES {
                match response.chunk().await? {
                    Some(chunk) => snippet.extend_from_slice(&chunk),
                    None => break,
                }
            }
            snippet.truncate(RESPONSE_SNIPPET_BYTES);
            Ok::<_, reqwest::Error>((status, snippet))
        })
        .await;
        let latency_ms = started.elapsed().as_millis() as i64;
        match result {
            Err(_) => SendOutcome {
                status_code: None,
                latency_ms,
                error_kind: Some("timeout"),
                error: Some(format!(
                    "no complete answer within {} ms",
                    self.timeout.as_millis()
                )),
                response_body: None,
            },
            Ok(Err(e)) => {
                let e = e.without_url();
                let (kind, message) = classify(&e);
                SendOutcome {
                    status_code: e.status().map(|s| s.as_u16()),
                    latency_ms,
                    error_kind: Some(kind),
                    error: Some(message),
                    response_body: None,
                }
            }
            Ok(Ok((status, snippet))) => {
                let code = status.as_u16();
                let response_body =
                    (!snippet.is_empty()).then(|| String::from_utf8_lossy(&snippet).into_owned());
                let (kind, error) = if status.is_success() {
                    (None, None)
                } else if status.is_redirection() {
                    (
                        Some("redirect"),
                        Some(format!("HTTP {code}: redirects are not followed")),
                    )
                } else if code == 410 {
                    (Some("gone"), Some("HTTP 410 Gone".to_string()))
                } else {
                    (Some("http_status"), Some(format!("HTTP {code}")))
                };
                SendOutcome {
                    status_code: Some(code),
                    latency_ms,
                    error_kind: kind,
                    error,
                    response_body,
                }
            }
        }
    }
}

/// Names a transport failure and describes it without any secret (URLs carry none:
/// credentials in webhook URLs are refused).
fn classify(e: &reqwest::Error) -> (&'static str, String) {
    let mut chain = e.to_string();
    let mut tls = false;
    let mut blocked = false;
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if s.is::<BlockedAddress>() {
            blocked = true;
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
            {
                tls = true;
            }
        }
        if s.is::<rustls::Error>() || text.contains("certificate") || text.contains("handshake") {
            tls = true;
        }
        if !chain.contains(&text) {
            chain.push_str(": ");
            chain.push_str(&text);
        }
        source = s.source();
    }
    let kind = if blocked {
        "blocked_address"
    } else if e.is_timeout() {
        "timeout"
    } else if tls {
        "tls"
    } else if e.is_connect() {
        "connect"
    } else {
        "request"
    };
    (kind, chain)
}
