//! A webhook receiver for the tests: a real HTTPS server on `127.0.0.1:0`
//! whose certificate is signed by a certificate authority made at test time.
//!
//! The CA certificate is written as PEM to a temporary file for the app's
//! `extra_ca_certs`. The receiver records every request (arrival time, method,
//! path, headers, raw body) and answers each path as told: a status, a script
//! of replies (e.g. 500, 500, then 200), a delay, a redirect, a large body, or
//! never at all (a black hole).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::HeaderMap;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// How the receiver answers one request.
#[derive(Clone, Debug)]
pub struct Reply {
    status: u16,
    delay: Duration,
    body: Bytes,
    headers: Vec<(String, String)>,
    hang: bool,
}

impl Reply {
    /// Answers `status` at once with a short body.
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            delay: Duration::ZERO,
            body: Bytes::from(format!("receiver says {status}")),
            headers: Vec::new(),
            hang: false,
        }
    }

    /// 200 OK.
    pub fn ok() -> Reply {
        Reply::status(200)
    }

    /// Never answers: the connection stays open until the client gives up.
    pub fn never() -> Reply {
        Reply {
            hang: true,
            ..Reply::ok()
        }
    }

    /// 302 Found pointing at `location`.
    pub fn redirect(location: &str) -> Reply {
        Reply::status(302).header("location", location)
    }

    /// Waits `delay` before answering.
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    /// Answers with this body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Reply {
        self.body = body.into();
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

/// The replies of one path: the i-th request gets `script[i]`, every request
/// past the script gets `then`.
#[derive(Clone, Debug)]
pub struct Behaviour {
    script: Vec<Reply>,
    then: Reply,
}

impl Behaviour {
    pub fn always(reply: Reply) -> Behaviour {
        Behaviour {
            script: Vec::new(),
            then: reply,
        }
    }

    pub fn script(script: Vec<Reply>, then: Reply) -> Behaviour {
        Behaviour { script, then }
    }

    /// Statuses in order, the last one repeated.
    pub fn statuses(statuses: &[u16]) -> Behaviour {
        let (last, first) = statuses.split_last().expect("at least one status");
        Behaviour::script(
            first.iter().map(|s| Reply::status(*s)).collect(),
            Reply::status(*last),
        )
    }
}

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    /// When its body had fully arrived.
    pub at: Instant,
    /// The same moment on the wall clock.
    pub wall: SystemTime,
    pub method: String,
    pub path: String,
    /// The request target as sent: path and query.
    pub target: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Received {
    /// A header as text; panics if absent, naming the header.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("the request to {} has no {name} header", self.path))
            .to_str()
            .unwrap_or_else(|e| panic!("{name} is not visible ASCII: {e}"))
    }

    /// The body as UTF-8 text.
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("the body is UTF-8")
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {}", self.text()))
    }

    /// `X-Kamiyo-Delivery` as a number.
    pub fn delivery_id(&self) -> i64 {
        let raw = self.header("x-kamiyo-delivery");
        raw.parse()
            .unwrap_or_else(|_| panic!("X-Kamiyo-Delivery is not a decimal integer: {raw:?}"))
    }
}

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    behaviours: Mutex<HashMap<String, Behaviour>>,
    /// Requests seen so far per path, to pick the reply from a script.
    counts: Mutex<HashMap<String, usize>>,
    /// Replies produced per path (the handler ran to its end).
    answered: Mutex<HashMap<String, usize>>,
    /// Requests whose reply is not sent yet (delayed or black-holed).
    pending: AtomicUsize,
    /// The most requests ever pending at once.
    peak_pending: AtomicUsize,
    /// Connections currently open.
    connections: AtomicUsize,
    /// Connections accepted since the start.
    accepted: AtomicUsize,
}

impl Shared {
    fn reply_for(&self, path: &str) -> Reply {
        let index = {
            let mut counts = self.counts.lock().unwrap();
            let n = counts.entry(path.to_owned()).or_insert(0);
            *n += 1;
            *n - 1
        };
        let behaviours = self.behaviours.lock().unwrap();
        match behaviours.get(path) {
            Some(b) => b.script.get(index).unwrap_or(&b.then).clone(),
            None => Reply::ok(),
        }
    }
}

/// The test certificate authority and the receiver's leaf certificate.
struct Pki {
    ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

fn make_pki() -> Pki {
    let ca_key = KeyPair::generate().expect("generate the CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "kamiyo delivery tests CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).expect("self-sign the CA");

    let leaf_key = KeyPair::generate().expect("generate the leaf key");
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).expect("leaf parameters");
    leaf.subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let leaf_cert = leaf
        .signed_by(&leaf_key, &ca_cert, &ca_key)
        .expect("sign the leaf");

    Pki {
        ca_pem: ca_cert.pem(),
        chain: vec![leaf_cert.der().clone(), ca_cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
    }
}

/// A recording HTTPS (or plain HTTP) server. Dropping it stops the server and
/// closes every connection.
pub struct TestReceiver {
    /// `https://127.0.0.1:PORT` (or `http://` in plain mode), no trailing slash.
    pub base_url: String,
    /// PEM file of the CA that signed the receiver's certificate.
    pub ca_path: PathBuf,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

impl TestReceiver {
    /// An HTTPS receiver.
    pub async fn start() -> TestReceiver {
        Self::start_with(true).await
    }

    /// A plain HTTP receiver (the app must allow `http://` URLs).
    #[allow(dead_code)]
    pub async fn start_plain() -> TestReceiver {
        Self::start_with(false).await
    }

    async fn start_with(tls: bool) -> TestReceiver {
        let dir = tempfile::tempdir().expect("create the receiver's directory");
        let pki = make_pki();
        let ca_path = dir.path().join("test-ca.pem");
        std::fs::write(&ca_path, &pki.ca_pem).expect("write the CA certificate");

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(pki.chain, pki.key)
            .expect("the receiver's certificate");
        server_config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(server_config));

        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared::default());
        let server = tokio::spawn(serve(listener, tls.then_some(acceptor), shared.clone()));
        let scheme = if tls { "https" } else { "http" };
        TestReceiver {
            base_url: format!("{scheme}://127.0.0.1:{port}"),
            ca_path,
            shared,
            server,
            _dir: dir,
        }
    }

    /// The full URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    /// Sets how `path` answers from now on; its script starts over.
    pub fn set(&self, path: &str, behaviour: Behaviour) {
        self.shared
            .behaviours
            .lock()
            .unwrap()
            .insert(path.to_owned(), behaviour);
        self.shared.counts.lock().unwrap().remove(path);
    }

    /// Every request to `path` so far, in arrival order.
    pub fn requests(&self, path: &str) -> Vec<Received> {
        self.shared
            .received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    pub fn count(&self, path: &str) -> usize {
        self.requests(path).len()
    }

    /// Replies to `path` the handler produced (a reply whose request was
    /// dropped, e.g. because the client went away, is not counted).
    pub fn answered(&self, path: &str) -> usize {
        *self.shared.answered.lock().unwrap().get(path).unwrap_or(&0)
    }

    /// Requests whose reply is still being held back.
    pub fn held(&self) -> usize {
        self.shared.pending.load(Ordering::SeqCst)
    }

    /// The most requests whose reply was held back at one time.
    pub fn peak_held(&self) -> usize {
        self.shared.peak_pending.load(Ordering::SeqCst)
    }

    /// Connections currently open.
    pub fn open_connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Connections accepted since the receiver started.
    #[allow(dead_code)]
    pub fn accepted_connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Polls until at least `n` requests reached `path`; returns them all.
    pub async fn wait_for(&self, path: &str, n: usize, deadline: Duration) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let got = self.requests(path);
            if got.len() >= n {
                return got;
            }
            assert!(
                start.elapsed() < deadline,
                "timed out after {deadline:?} waiting for {n} requests to {path}; got {}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Watches `path` for `window` and fails as soon as more than `n`
    /// requests have reached it. Absence can only be shown by waiting.
    pub async fn assert_stays_at(&self, path: &str, n: usize, window: Duration) {
        let start = Instant::now();
        while start.elapsed() < window {
            let got = self.count(path);
            assert!(
                got <= n,
                "{path} got {got} requests, expected no more than {n}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(self.count(path), n, "requests to {path}");
    }
}

impl Drop for TestReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
    // Connection tasks live in this set, so aborting the server ends them too.
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        while connections.try_join_next().is_some() {}
        let shared = shared.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            shared.connections.fetch_add(1, Ordering::SeqCst);
            shared.accepted.fetch_add(1, Ordering::SeqCst);
            let _open = Decrement(&shared.connections);
            let service = {
                let shared = shared.clone();
                hyper::service::service_fn(move |req| handle(req, shared.clone()))
            };
            let http = hyper::server::conn::http1::Builder::new();
            match tls {
                Some(acceptor) => {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                            .await
                    else {
                        return;
                    };
                    let _ = http.serve_connection(TokioIo::new(stream), service).await;
                }
                None => {
                    let _ = http.serve_connection(TokioIo::new(stream), service).await;
                }
            }
        });
    }
}

struct Decrement<'a>(&'a AtomicUsize);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(_) => Vec::new(),
    };
    let path = parts.uri.path().to_owned();
    let reply = shared.reply_for(&path);
    shared.received.lock().unwrap().push(Received {
        at: Instant::now(),
        wall: SystemTime::now(),
        method: parts.method.to_string(),
        path: path.clone(),
        target: parts.uri.to_string(),
        headers: parts.headers,
        body,
    });

    let now_pending = shared.pending.fetch_add(1, Ordering::SeqCst) + 1;
    shared.peak_pending.fetch_max(now_pending, Ordering::SeqCst);
    let held = Decrement(&shared.pending);
    if reply.hang {
        std::future::pending::<()>().await;
    }
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    drop(held);

    let mut response = Response::new(Full::new(reply.body.clone()));
    *response.status_mut() = StatusCode::from_u16(reply.status).expect("a valid status");
    for (name, value) in &reply.headers {
        response.headers_mut().insert(
            hyper::header::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            value.parse().expect("header value"),
        );
    }
    *shared.answered.lock().unwrap().entry(path).or_insert(0) += 1;
    Ok(response)
}
