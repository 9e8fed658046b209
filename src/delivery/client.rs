//! The outbound HTTP client: signs each request at send time, sends it over rustls with
//! keep-alive, never follows redirects, and reads at most 1 KiB of the answer.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, USER_AGENT as USER_AGENT_HEADER,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use thiserror::Error;

use super::connect::{tls_config, Connector, ConnectorConfig, Destination, Origin, OriginHost};
use crate::config::Config;
use crate::domain::netguard::NetworkPolicy;
use crate::domain::payload::{EVENT_EXPLOIT_DETECTED, EVENT_WEBHOOK_TEST};
use crate::domain::signature::SigningKeys;
use crate::domain::time::now_secs;

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
    #[error("KAMIYO_EXTRA_CA_CERTS file {path} holds no usable PEM certificate: {reason}")]
    CaPem { path: String, reason: String },
    #[error("{0}")]
    Policy(String),
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
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

    /// A request that got no answer: nothing sent, or no complete answer in time.
    fn unanswered(kind: &'static str, error: String, latency_ms: i64) -> SendOutcome {
        SendOutcome {
            status_code: None,
            latency_ms,
            error_kind: Some(kind),
            error: Some(error),
            response_body: None,
        }
    }
}

/// Signs and sends deliveries. Cheap to share: one connection pool for the process.
pub struct Sender {
    connector: Connector,
    timeout: Duration,
    policy: NetworkPolicy,
    /// Webhook URLs as parsed, with the guard's verdict on a literal address: parsing
    /// (IDNA included) cost more per attempt than signing the body.
    targets: Mutex<foldhash::HashMap<String, Arc<Target>>>,
}

/// A webhook URL once parsed.
struct Target {
    /// Where requests go, or why none can (no stored URL fails this: they are checked at
    /// create).
    dest: Result<Destination, String>,
    /// Why the guard refuses the URL's literal IP address, if it does.
    blocked: Option<String>,
    /// The signing keys of the secret last used with this URL (normally its webhook's
    /// only one): keyed once, not at every request.
    keys: Mutex<Option<(Box<str>, Arc<SigningKeys>)>>,
}

impl Target {
    fn keys(&self, secret: &str) -> Arc<SigningKeys> {
        let mut last = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        match &*last {
            Some((known, keys)) if **known == *secret => keys.clone(),
            _ => {
                let keys = Arc::new(SigningKeys::new(secret));
                *last = Some((secret.into(), keys.clone()));
                keys
            }
        }
    }
}

/// Parsed URLs kept at most; past that the cache starts again (URLs are re-parsed).
const TARGET_CACHE: usize = 65_536;

/// How long an idle connection is kept for its origin's next request.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

impl Sender {
    pub fn new(config: &Config) -> Result<Sender, ClientError> {
        let policy = config
            .network_policy()
            .map_err(|e| ClientError::Policy(e.to_string()))?;
        let mut overrides: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for o in &config.resolve {
            overrides
                .entry(o.host.trim_end_matches('.').to_ascii_lowercase())
                .or_default()
                .push(o.ip);
        }
        let mut extra_roots = Vec::new();
        if let Some(path) = &config.extra_ca_certs {
            let display = path.display().to_string();
            let pem = std::fs::read(path).map_err(|source| ClientError::CaFile {
                path: display.clone(),
                source,
            })?;
            extra_roots = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ClientError::CaPem {
                    path: display.clone(),
                    reason: e.to_string(),
                })?;
            if extra_roots.is_empty() {
                return Err(ClientError::CaPem {
                    path: display,
                    reason: "no CERTIFICATE block".to_string(),
                });
            }
        }
        let tls = tls_config(extra_roots).map_err(|e| ClientError::Build(e.to_string()))?;
        Ok(Sender {
            connector: Connector::new(ConnectorConfig {
                policy: policy.clone(),
                overrides,
                tls,
                connect_timeout: config.delivery_timeout,
                idle_timeout: IDLE_TIMEOUT,
                // Many webhooks may share a host: keep as many connections as can be in use.
                max_idle_per_origin: config.max_in_flight,
            }),
            timeout: config.delivery_timeout,
            policy,
            targets: Mutex::new(foldhash::HashMap::default()),
        })
    }

    fn target(&self, raw: &str) -> Arc<Target> {
        let mut targets = self.targets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = targets.get(raw) {
            return t.clone();
        }
        let dest = Destination::parse(raw);
        // IP literals never reach the resolver: the guard judges them here.
        let blocked = match &dest {
            Ok(Destination {
                origin:
                    Origin {
                        host: OriginHost::Ip(ip),
                        ..
                    },
                ..
            }) => self.policy.check(*ip).err(),
            _ => None,
        };
        let target = Arc::new(Target {
            dest,
            blocked,
            keys: Mutex::new(None),
        });
        if targets.len() >= TARGET_CACHE {
            targets.clear();
        }
        targets.insert(raw.to_string(), target.clone());
        target
    }

    fn headers(out: &Outgoing<'_>, keys: &SigningKeys, timestamp: i64) -> HeaderMap {
        let body: &[u8] = out.body;
        // Room for the host and user agent without growing.
        let mut h = HeaderMap::with_capacity(12);
        let ascii = |b: &[u8]| HeaderValue::from_bytes(b).expect("header-safe ASCII");
        let id = HeaderValue::from(out.delivery_id);
        let standard = keys.standard_ascii(id.to_str().expect("digits"), timestamp, body);
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(X_KAMIYO_SIGNATURE, ascii(&keys.kamiyo_ascii(body)));
        // The service's own event names need no copy.
        let event = match out.event {
            EVENT_EXPLOIT_DETECTED => HeaderValue::from_static(EVENT_EXPLOIT_DETECTED),
            EVENT_WEBHOOK_TEST => HeaderValue::from_static(EVENT_WEBHOOK_TEST),
            other => HeaderValue::from_str(other).expect("header-safe ASCII"),
        };
        h.insert(X_KAMIYO_EVENT, event);
        h.insert(X_KAMIYO_DELIVERY, id.clone());
        h.insert(WEBHOOK_ID, id);
        h.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(timestamp));
        h.insert(WEBHOOK_SIGNATURE, ascii(&standard));
        h
    }

    /// Sends one signed request; never fails, every problem is in the outcome.
    pub async fn send(&self, out: &Outgoing<'_>) -> SendOutcome {
        let started = Instant::now();
        let target = self.target(out.url);
        if let Some(why) = &target.blocked {
            return SendOutcome::unanswered("blocked_address", why.clone(), 0);
        }
        let dest = match &target.dest {
            Ok(dest) => dest,
            Err(why) => return SendOutcome::unanswered("request", why.clone(), 0),
        };
        let timestamp = now_secs();
        // Built whole: a builder would copy every header into a map of its own.
        let keys = target.keys(out.secret);
        let mut headers = Self::headers(out, &keys, timestamp);
        headers.insert(USER_AGENT_HEADER, HeaderValue::from_static(USER_AGENT));
        let request = dest.post(out.body.clone(), headers);
        // One timer for connecting, the request and the reading of the answer.
        let result = tokio::time::timeout(
            self.timeout,
            self.connector
                .exchange(&dest.origin, request, RESPONSE_SNIPPET_BYTES),
        )
        .await;
        let latency_ms = started.elapsed().as_millis() as i64;
        match result {
            Err(_) => SendOutcome::unanswered(
                "timeout",
                format!("no complete answer within {} ms", self.timeout.as_millis()),
                latency_ms,
            ),
            Ok(Err(failure)) => SendOutcome::unanswered(failure.kind, failure.message, latency_ms),
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

impl Sender {
    /// Idle connections in the pool now.
    pub fn idle_connections(&self) -> usize {
        self.connector.idle_connections()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::signature::{kamiyo_signature, standard_webhooks_signature};

    /// The headers of a request carry both signatures over the body, and they verify.
    #[test]
    fn headers_carry_both_signatures_of_the_body() {
        let body = Bytes::from_static(br#"{"event":"exploit.detected"}"#);
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let out = Outgoing {
            url: "http://127.0.0.1/",
            secret,
            event: EVENT_EXPLOIT_DETECTED,
            delivery_id: 42,
            body: &body,
        };
        let h = Sender::headers(&out, &SigningKeys::new(secret), 1_614_265_330);
        assert_eq!(h[&X_KAMIYO_EVENT], "exploit.detected");
        assert_eq!(h[&X_KAMIYO_DELIVERY], "42");
        assert_eq!(h[&WEBHOOK_ID], "42");
        assert_eq!(h[&WEBHOOK_TIMESTAMP], "1614265330");
        assert_eq!(h[&X_KAMIYO_SIGNATURE], kamiyo_signature(secret, &body));
        assert_eq!(
            h[&WEBHOOK_SIGNATURE],
            standard_webhooks_signature(secret, "42", 1_614_265_330, &body)
        );
        let other = Outgoing {
            event: "webhook.test",
            ..out
        };
        assert_eq!(
            Sender::headers(&other, &SigningKeys::new(secret), 1_614_265_330)[&X_KAMIYO_EVENT],
            "webhook.test"
        );
    }

    /// Instruction counts of building a request's headers, signatures included
    /// (`valgrind --tool=callgrind` on the test binary with `--ignored`).
    #[test]
    #[ignore = "a measurement, run by hand"]
    fn signing_instructions() {
        let body = Bytes::from(vec![b'x'; 291]);
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let keys = SigningKeys::new(secret);
        let mut n = 0;
        for id in 0..100_000 {
            let out = Outgoing {
                url: "http://127.0.0.1/",
                secret,
                event: EVENT_EXPLOIT_DETECTED,
                delivery_id: id,
                body: &body,
            };
            n += Sender::headers(&out, &keys, 1_614_265_330 + id).len();
        }
        assert_eq!(n, 7 * 100_000);
    }

    /// A URL's cached keys follow its secret: after a rotation, requests are signed with
    /// the new secret, not the one the cache held.
    #[test]
    fn a_targets_keys_follow_a_rotated_secret() {
        let target = Target {
            dest: Err("not used".into()),
            blocked: None,
            keys: Mutex::new(None),
        };
        let body = br#"{"a":1}"#;
        let (old, new) = ("whsec_test", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        for secret in [old, old, new, new, old] {
            let keys = target.keys(secret);
            assert_eq!(
                String::from_utf8(keys.kamiyo_ascii(body).to_vec()).unwrap(),
                kamiyo_signature(secret, body)
            );
            assert_eq!(
                String::from_utf8(keys.standard_ascii("9", 5, body).to_vec()).unwrap(),
                standard_webhooks_signature(secret, "9", 5, body)
            );
        }
    }
}
