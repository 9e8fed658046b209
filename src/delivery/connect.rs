//! The delivery client's connections: guarded name resolution, TCP and TLS set-up, and a
//! pool of idle HTTP/1.1 connections per origin.
//!
//! Built on hyper's connection API rather than a general-purpose client: the pool reqwest
//! (and hyper-util's) keep spawned a task for every request to put its connection back,
//! and with the layers above it cost as much CPU per request as the receiver's whole
//! work (bench `ceiling`: 40 us per request through reqwest, 21 us through this).

use std::collections::HashMap;
use std::error::Error as StdError;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Body as _;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderMap, HeaderValue, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use thiserror::Error;
use tokio::net::TcpStream;

use crate::domain::netguard::NetworkPolicy;

/// The request body type every delivery uses: the exploit's payload, shared.
pub type Body = Full<Bytes>;

/// Where a connection goes: the pool's key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Origin {
    pub tls: bool,
    pub host: OriginHost,
    pub port: u16,
}

/// An origin's host as the URL gave it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OriginHost {
    /// A name, lowercase (the URL parser folds it), resolved at connect.
    Domain(String),
    /// A literal address: no resolution, and the guard has judged it already.
    Ip(IpAddr),
}

/// The parts of a URL a request is made of.
pub struct Destination {
    pub origin: Origin,
    /// Path and query: the request target of an HTTP/1.1 request to the origin.
    pub path: Uri,
    pub host: HeaderValue,
}

impl Destination {
    pub fn parse(raw: &str) -> Result<Destination, String> {
        let url = url::Url::parse(raw).map_err(|e| format!("invalid URL: {e}"))?;
        let tls = match url.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(format!("unsupported URL scheme {other}")),
        };
        let host = match url.host() {
            Some(url::Host::Domain(d)) => OriginHost::Domain(d.to_ascii_lowercase()),
            Some(url::Host::Ipv4(v4)) => OriginHost::Ip(IpAddr::V4(v4)),
            Some(url::Host::Ipv6(v6)) => OriginHost::Ip(IpAddr::V6(v6)),
            None => return Err("the URL has no host".to_string()),
        };
        let port = url
            .port_or_known_default()
            .ok_or_else(|| "the URL has no port".to_string())?;
        let host_str = url.host_str().expect("a host was found above");
        // The Host header carries the port only where it is not the scheme's own.
        let authority = match url.port() {
            Some(p) => format!("{host_str}:{p}"),
            None => host_str.to_string(),
        };
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        };
        Ok(Destination {
            origin: Origin { tls, host, port },
            path: Uri::try_from(path).map_err(|e| format!("invalid URL path: {e}"))?,
            host: HeaderValue::try_from(authority).map_err(|e| format!("invalid URL host: {e}"))?,
        })
    }

    /// A POST of `body` with `headers` to this destination, its Host header added.
    pub fn post(&self, body: Bytes, mut headers: HeaderMap) -> Request<Body> {
        headers.insert(HOST, self.host.clone());
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.path.clone();
        *request.headers_mut() = headers;
        request
    }
}

/// Why no connection could be made. `kind` names it in the delivery log.
#[derive(Debug, Error)]
pub enum ConnectError {
    #[error("{0}")]
    Blocked(String),
    #[error("dns error: {host}: {source}")]
    Dns {
        host: String,
        source: std::io::Error,
    },
    #[error("tcp connect error: {addr}: {source}")]
    Tcp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("tls handshake with {host}: {source}")]
    Tls {
        host: String,
        source: std::io::Error,
    },
    #[error("invalid TLS server name {0}")]
    ServerName(String),
    #[error("http/1.1 handshake: {0}")]
    Handshake(hyper::Error),
}

impl ConnectError {
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectError::Blocked(_) => "blocked_address",
            ConnectError::Tls { .. } | ConnectError::ServerName(_) => "tls",
            ConnectError::Dns { .. } | ConnectError::Tcp { .. } | ConnectError::Handshake(_) => {
                "connect"
            }
        }
    }

    /// The message with every cause behind it, as the delivery log shows it.
    pub fn describe(&self) -> String {
        describe_chain(self)
    }
}

/// An error and its causes, joined; a cause already quoted by its parent is not repeated.
pub fn describe_chain(e: &(dyn StdError + 'static)) -> String {
    let mut chain = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !chain.contains(&text) {
            chain.push_str(": ");
            chain.push_str(&text);
        }
        source = s.source();
    }
    chain
}

/// How an exchange failed short of an answer. `kind` names it in the delivery log.
#[derive(Debug)]
pub struct ExchangeError {
    pub kind: &'static str,
    pub message: String,
}

impl From<ConnectError> for ExchangeError {
    fn from(e: ConnectError) -> ExchangeError {
        ExchangeError {
            kind: e.kind(),
            message: e.describe(),
        }
    }
}

impl ExchangeError {
    fn request(e: hyper::Error) -> ExchangeError {
        ExchangeError {
            kind: "request",
            message: format!("error sending request: {}", describe_chain(&e)),
        }
    }
}

/// Times a request refused unsent by a pooled connection (closed by the peer meanwhile)
/// goes again on another.
const STALE_RETRIES: usize = 3;

/// A connection out of the pool, or a new one.
pub struct Conn {
    pub sender: SendRequest<Body>,
    /// Taken from the pool: the peer may have closed it since, so a request it refuses
    /// before sending a byte may go again on a new connection.
    pub reused: bool,
}

/// An idle connection and when it went idle.
struct Idle {
    sender: SendRequest<Body>,
    since: Instant,
}

struct IdleSet {
    by_origin: foldhash::HashMap<Origin, Vec<Idle>>,
    swept: Instant,
}

/// How often idle connections of every origin are checked for age and closing.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Resolves, connects and keeps idle connections. One per process, shared.
pub struct Connector {
    policy: NetworkPolicy,
    /// Names resolved to fixed addresses before DNS (`KAMIYO_RESOLVE`); the guard still
    /// judges them.
    overrides: HashMap<String, Vec<IpAddr>>,
    tls: tokio_rustls::TlsConnector,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle_per_origin: usize,
    idle: Arc<Mutex<IdleSet>>,
}

/// What a [`Connector`] is built from.
pub struct ConnectorConfig {
    pub policy: NetworkPolicy,
    pub overrides: HashMap<String, Vec<IpAddr>>,
    pub tls: Arc<rustls::ClientConfig>,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_origin: usize,
}

impl Connector {
    /// Inside a tokio runtime, a task also closes connections idle past their time when
    /// no request comes to sweep them; it ends with the connector.
    pub fn new(config: ConnectorConfig) -> Connector {
        let idle = Arc::new(Mutex::new(IdleSet {
            by_origin: foldhash::HashMap::default(),
            swept: Instant::now(),
        }));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&idle);
            let timeout = config.idle_timeout;
            runtime.spawn(async move {
                let mut tick = tokio::time::interval(SWEEP_EVERY.min(timeout));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(idle) = weak.upgrade() else { return };
                    sweep(&mut idle.lock().unwrap_or_else(|e| e.into_inner()), timeout);
                }
            });
        }
        Connector {
            policy: config.policy,
            overrides: config.overrides,
            tls: tokio_rustls::TlsConnector::from(config.tls),
            connect_timeout: config.connect_timeout,
            idle_timeout: config.idle_timeout,
            max_idle_per_origin: config.max_idle_per_origin,
            idle,
        }
    }

    /// The most recently idle open connection to `origin`, or a new one.
    pub async fn checkout(&self, origin: &Origin) -> Result<Conn, ConnectError> {
        while let Some(mut sender) = self.take_idle(origin) {
            // Ready once its last exchange is over; an error means the peer closed it.
            if sender.ready().await.is_ok() {
                return Ok(Conn {
                    sender,
                    reused: true,
                });
            }
        }
        // Boxed: connecting (resolution, TCP, TLS, handshake) is most of this future's
        // size, and every attempt's task was that large, copied whole as it was spawned
        // and as it ended, though nearly all attempts take a pooled connection.
        Box::pin(self.connect(origin)).await.map(|sender| Conn {
            sender,
            reused: false,
        })
    }

    fn take_idle(&self, origin: &Origin) -> Option<SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let list = idle.by_origin.get_mut(origin)?;
        while let Some(entry) = list.pop() {
            if !entry.sender.is_closed() && entry.since.elapsed() < self.idle_timeout {
                return Some(entry.sender);
            }
        }
        None
    }

    /// One request and at most `keep` bytes of its answer, on a pooled connection where
    /// one is idle. The caller bounds it in time.
    pub async fn exchange(
        &self,
        origin: &Origin,
        mut request: Request<Body>,
        keep: usize,
    ) -> Result<(StatusCode, Vec<u8>), ExchangeError> {
        let mut stale = 0;
        let (response, sender) = loop {
            let conn = self.checkout(origin).await?;
            let mut sender = conn.sender;
            match sender.try_send_request(request).await {
                Ok(response) => break (response, sender),
                Err(mut e) => match e.take_message() {
                    // Never written: the peer closed an idle connection as we took it.
                    Some(unsent) if conn.reused && stale < STALE_RETRIES => {
                        stale += 1;
                        request = unsent;
                    }
                    _ => return Err(ExchangeError::request(e.into_error())),
                },
            }
        };
        let status = response.status();
        let mut body = response.into_body();
        let mut kept = Vec::new();
        let mut complete = false;
        while kept.len() < keep {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        kept.extend_from_slice(data);
                    }
                }
                Some(Err(e)) => return Err(ExchangeError::request(e)),
                None => {
                    complete = true;
                    break;
                }
            }
        }
        kept.truncate(keep);
        // An answer read to its end leaves the connection ready for another request; one
        // cut short goes with its connection.
        if complete || body.is_end_stream() {
            drop(body);
            self.give_back(origin, sender);
        }
        Ok((status, kept))
    }

    /// Keeps a connection whose exchange ended cleanly for the next request.
    pub fn give_back(&self, origin: &Origin, sender: SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if now.duration_since(idle.swept) >= SWEEP_EVERY.min(self.idle_timeout) {
            sweep(&mut idle, self.idle_timeout);
        }
        let max = self.max_idle_per_origin;
        let list = match idle.by_origin.get_mut(origin) {
            Some(list) => list,
            None => idle.by_origin.entry(origin.clone()).or_default(),
        };
        if list.len() < max {
            list.push(Idle { sender, since: now });
        }
    }

    /// Idle connections held now, over every origin.
    pub fn idle_connections(&self) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.by_origin.values().map(Vec::len).sum()
    }

    /// The addresses the guard allows for an origin, in the resolver's order.
    async fn addresses(&self, origin: &Origin) -> Result<Vec<SocketAddr>, ConnectError> {
        let host = match &origin.host {
            OriginHost::Ip(ip) => return Ok(vec![SocketAddr::new(*ip, origin.port)]),
            OriginHost::Domain(host) => host,
        };
        let key = host.trim_end_matches('.');
        let resolved: Vec<SocketAddr> = match self.overrides.get(key) {
            Some(ips) => ips
                .iter()
                .map(|ip| SocketAddr::new(*ip, origin.port))
                .collect(),
            None => tokio::net::lookup_host((host.as_str(), origin.port))
                .await
                .map_err(|source| ConnectError::Dns {
                    host: host.clone(),
                    source,
                })?
                .collect(),
        };
        let mut refused = None;
        let allowed: Vec<SocketAddr> = resolved
            .into_iter()
            .filter(|a| match self.policy.check(a.ip()) {
                Ok(()) => true,
                Err(why) => {
                    refused.get_or_insert(why);
                    false
                }
            })
            .collect();
        if allowed.is_empty() {
            let why = refused.unwrap_or_else(|| "no address".to_string());
            return Err(ConnectError::Blocked(format!("{host} resolves to {why}")));
        }
        Ok(allowed)
    }

    /// A new connection: the connection goes to one of exactly the addresses the guard
    /// allowed, so DNS rebinding between check and connect cannot work.
    async fn connect(&self, origin: &Origin) -> Result<SendRequest<Body>, ConnectError> {
        let addrs = self.addresses(origin).await?;
        let mut last = None;
        let mut stream = None;
        for addr in addrs {
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    stream = Some(s);
                    break;
                }
                Ok(Err(source)) => last = Some(ConnectError::Tcp { addr, source }),
                Err(_) => {
                    last = Some(ConnectError::Tcp {
                        addr,
                        source: std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "connect timed out",
                        ),
                    })
                }
            }
        }
        let Some(stream) = stream else {
            return Err(last.expect("at least one address was tried"));
        };
        // Small requests answered at once: Nagle would hold each for the peer's ACK.
        let _ = stream.set_nodelay(true);
        if !origin.tls {
            return handshake(stream).await;
        }
        let (name, shown) = match &origin.host {
            OriginHost::Ip(ip) => (ServerName::IpAddress((*ip).into()), ip.to_string()),
            OriginHost::Domain(host) => {
                let bare = host.trim_end_matches('.').to_string();
                match ServerName::try_from(bare.clone()) {
                    Ok(name) => (name, bare),
                    Err(_) => return Err(ConnectError::ServerName(bare)),
                }
            }
        };
        let tls = self
            .tls
            .connect(name, stream)
            .await
            .map_err(|source| ConnectError::Tls {
                host: shown,
                source,
            })?;
        handshake(tls).await
    }
}

/// Drops idle connections that are closed or past `timeout`, and origins left with none.
/// Dropping a connection's sender ends its task, which closes the socket.
fn sweep(idle: &mut IdleSet, timeout: Duration) {
    let now = Instant::now();
    idle.by_origin.retain(|_, list| {
        list.retain(|e| !e.sender.is_closed() && now.duration_since(e.since) < timeout);
        !list.is_empty()
    });
    idle.swept = now;
}

async fn handshake<T>(io: T) -> Result<SendRequest<Body>, ConnectError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(ConnectError::Handshake)?;
    // The connection runs as its own task for as long as either side holds it.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// The TLS set-up every HTTPS delivery uses: the Mozilla roots plus any extra ones,
/// HTTP/1.1 by ALPN.
pub fn tls_config(
    extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in extra_roots {
        roots.add(cert)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
