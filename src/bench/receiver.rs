//! The bench's webhook receiver: a hyper HTTP/1.1 keep-alive server (HTTPS with `--tls`)
//! on 127.0.0.1:0 that counts every delivery, checks the signature of a sample, and times
//! receipts against the ingest times the driver recorded.
//!
//! It runs on its own small tokio runtime so that the service's queue of tasks cannot
//! delay when a receipt is stamped. Paths say how to answer:
//! `/hook/{n}` 200 at once; `/down/{n}` held while the receiver is "down", 200 once it is
//! up; `/hang/{n}` never answers (holds the connection until the receiver stops);
//! `/ceiling` 200 with no checks, for the plain-client ceiling.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::pki::Pki;

/// One delivery in this many has its signature checked: HMAC of every body would make the
/// receiver, not the service, the thing measured.
const SIGNATURE_SAMPLE: u64 = 100;
/// Error messages kept verbatim; later ones are only counted.
const ERRORS_KEPT: usize = 10;
/// Connections waiting to be accepted, at most (the kernel caps it at somaxconn).
const LISTEN_BACKLOG: u32 = 4096;
/// Worker threads of the receiver's runtime.
const RECEIVER_THREADS: usize = 2;

pub struct Receiver {
    base_url: String,
    shared: Arc<Shared>,
    stop: CancellationToken,
    runtime: Option<tokio::runtime::Runtime>,
}

struct Shared {
    /// Receipt times are nanoseconds since this instant, so they fit in atomics.
    epoch: Instant,
    /// Deliveries answered 200 on `/hook` and `/down`.
    delivered: AtomicU64,
    first_receipt_ns: AtomicU64,
    last_receipt_ns: AtomicU64,
    ceiling: AtomicU64,
    hung: AtomicU64,
    connections: AtomicU64,
    /// Deliveries seen, to pick the signature sample.
    seen: AtomicU64,
    signatures_checked: AtomicU64,
    /// Webhook secret by URL path, learnt from the create answers.
    secrets: RwLock<HashMap<String, String>>,
    error_count: AtomicU64,
    errors: Mutex<Vec<String>>,
    /// Ingest time by exploit tx_hash, when the scenario measures latency.
    sent: Mutex<HashMap<String, Instant>>,
    latencies_ms: Mutex<Vec<f64>>,
    up: watch::Sender<bool>,
}

impl Shared {
    fn error(&self, message: String) {
        let n = self.error_count.fetch_add(1, Ordering::Relaxed);
        if (n as usize) < ERRORS_KEPT {
            self.errors.lock().expect("lock").push(message);
        }
    }

    fn stamp(&self, at: Instant) {
        let ns = at.duration_since(self.epoch).as_nanos() as u64;
        self.first_receipt_ns.fetch_min(ns, Ordering::Relaxed);
        self.last_receipt_ns.fetch_max(ns, Ordering::Relaxed);
    }

    fn instant(&self, ns: u64) -> Instant {
        self.epoch + Duration::from_nanos(ns)
    }

    /// Counts a delivery; checks the signature of a sample and times it when asked to.
    fn receive(&self, path: &str, signature: Option<&[u8]>, body: &[u8], at: Instant) {
        if self
            .seen
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(SIGNATURE_SAMPLE)
        {
            self.check_signature(path, signature, body);
        }
        let tracking = {
            let sent = self.sent.lock().expect("lock");
            (!sent.is_empty()).then(|| tx_hash(body).and_then(|tx| sent.get(tx).copied()))
        };
        match tracking {
            None => {}
            Some(Some(ingested)) => {
                let ms = at.duration_since(ingested).as_secs_f64() * 1000.0;
                self.latencies_ms.lock().expect("lock").push(ms);
            }
            Some(None) => self.error(format!(
                "a delivery to {path} names an exploit the driver did not send"
            )),
        }
        self.stamp(at);
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }

    fn check_signature(&self, path: &str, signature: Option<&[u8]>, body: &[u8]) {
        let Some(signature) = signature else {
            return self.error(format!("a delivery to {path} has no X-Kamiyo-Signature"));
        };
        let secrets = self.secrets.read().expect("lock");
        let Some(secret) = secrets.get(path) else {
            return self.error(format!("no webhook secret is known for {path}"));
        };
        // Checked here independently of the service's own signing code.
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
        mac.update(body);
        let expected = hex::encode(mac.finalize().into_bytes());
        if expected.as_bytes() == signature {
            self.signatures_checked.fetch_add(1, Ordering::Relaxed);
        } else {
            self.error(format!(
                "signature mismatch on {path}: got {}, expected {expected}",
                String::from_utf8_lossy(signature)
            ));
        }
    }
}

/// The exploit's `tx_hash` in a delivery body, found without parsing the whole JSON (the
/// driver's hashes are plain hex, so no escapes can hide the closing quote).
fn tx_hash(body: &[u8]) -> Option<&str> {
    const KEY: &[u8] = b"\"tx_hash\":\"";
    let start = body.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let len = body[start..].iter().position(|b| *b == b'"')?;
    std::str::from_utf8(&body[start..start + len]).ok()
}

impl Receiver {
    /// Binds 127.0.0.1:0 and starts serving, over TLS when `pki` is given.
    pub fn start(pki: Option<&Pki>) -> anyhow::Result<Receiver> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(RECEIVER_THREADS)
            .thread_name("bench-receiver")
            .enable_all()
            .build()
            .context("starting the receiver's runtime")?;
        let socket = tokio::net::TcpSocket::new_v4().context("a socket for the receiver")?;
        socket
            .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
            .context("binding the receiver")?;
        let port = socket.local_addr()?.port();
        let (up, _) = watch::channel(true);
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            delivered: AtomicU64::new(0),
            first_receipt_ns: AtomicU64::new(u64::MAX),
            last_receipt_ns: AtomicU64::new(0),
            ceiling: AtomicU64::new(0),
            hung: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            seen: AtomicU64::new(0),
            signatures_checked: AtomicU64::new(0),
            secrets: RwLock::new(HashMap::new()),
            error_count: AtomicU64::new(0),
            errors: Mutex::new(Vec::new()),
            sent: Mutex::new(HashMap::new()),
            latencies_ms: Mutex::new(Vec::new()),
            up,
        });
        let stop = CancellationToken::new();
        let acceptor = pki.map(|p| TlsAcceptor::from(p.server_config.clone()));
        // Listening before `start` returns: a client that connects at once must not be
        // refused. Clients open hundreds of connections at once; std's backlog of 128
        // dropped SYNs that came back only after a 1 s retransmit, which capped the
        // ceiling's 50,000 requests at about 49,000/s.
        let listener = {
            let _in_runtime = runtime.enter();
            socket
                .listen(LISTEN_BACKLOG)
                .context("the receiver cannot listen")?
        };
        runtime.spawn(accept_loop(
            listener,
            acceptor,
            shared.clone(),
            stop.clone(),
        ));
        let scheme = if pki.is_some() { "https" } else { "http" };
        Ok(Receiver {
            base_url: format!("{scheme}://127.0.0.1:{port}"),
            shared,
            stop,
            runtime: Some(runtime),
        })
    }

    /// The full URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Tells the receiver the secret of the webhook delivering to `path`.
    pub fn set_secret(&self, path: &str, secret: &str) {
        self.shared
            .secrets
            .write()
            .expect("lock")
            .insert(path.to_owned(), secret.to_owned());
    }

    /// Records when the exploit `tx_hash` was handed to the ingest API; deliveries of it
    /// are then timed from this instant.
    pub fn record_sent(&self, tx_hash: String, at: Instant) {
        self.shared.sent.lock().expect("lock").insert(tx_hash, at);
    }

    /// While down, `/down/{n}` requests are held; going up answers them and all later ones.
    pub fn set_up(&self, up: bool) {
        self.shared.up.send_replace(up);
    }

    pub fn delivered(&self) -> u64 {
        self.shared.delivered.load(Ordering::Relaxed)
    }

    pub fn ceiling_requests(&self) -> u64 {
        self.shared.ceiling.load(Ordering::Relaxed)
    }

    pub fn hung_requests(&self) -> u64 {
        self.shared.hung.load(Ordering::Relaxed)
    }

    /// TCP connections accepted so far (a keep-alive client opens few).
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }

    pub fn signatures_checked(&self) -> u64 {
        self.shared.signatures_checked.load(Ordering::Relaxed)
    }

    pub fn first_receipt(&self) -> Option<Instant> {
        let ns = self.shared.first_receipt_ns.load(Ordering::Relaxed);
        (ns != u64::MAX).then(|| self.shared.instant(ns))
    }

    pub fn last_receipt(&self) -> Option<Instant> {
        self.first_receipt()?;
        Some(
            self.shared
                .instant(self.shared.last_receipt_ns.load(Ordering::Relaxed)),
        )
    }

    /// Ingest-to-receipt times so far, in milliseconds, in arrival order.
    pub fn latencies_ms(&self) -> Vec<f64> {
        self.shared.latencies_ms.lock().expect("lock").clone()
    }

    /// What went wrong at the receiver (signature mismatches, unknown paths...).
    pub fn errors(&self) -> Vec<String> {
        let mut out = self.shared.errors.lock().expect("lock").clone();
        let total = self.shared.error_count.load(Ordering::Relaxed) as usize;
        if total > out.len() {
            out.push(format!(
                "... and {} more receiver errors",
                total - out.len()
            ));
        }
        out
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.cancel();
        // Dropping a runtime inside another one's task would panic; this does not block.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Usually out of file descriptors: say so once in a while, keep going.
                    tracing::warn!(error = %e, "bench receiver: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        shared.connections.fetch_add(1, Ordering::Relaxed);
        let (shared, stop, acceptor) = (shared.clone(), stop.clone(), acceptor.clone());
        tokio::spawn(async move {
            let svc = {
                let stop = stop.clone();
                service_fn(move |req| handle(req, shared.clone(), stop.clone()))
            };
            let builder = http1::Builder::new();
            match acceptor {
                Some(acceptor) => {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let conn = builder.serve_connection(TokioIo::new(tls), svc);
                    tokio::select! { _ = conn => {}, _ = stop.cancelled() => {} }
                }
                None => {
                    let conn = builder.serve_connection(TokioIo::new(stream), svc);
                    tokio::select! { _ = conn => {}, _ = stop.cancelled() => {} }
                }
            }
        });
    }
}

fn answer(status: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(b"ok")));
    *r.status_mut() = status;
    r
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let signature = req
        .headers()
        .get("x-kamiyo-signature")
        .map(|v| v.as_bytes().to_vec());
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(answer(StatusCode::BAD_REQUEST)),
    };
    let at = Instant::now();
    let kind = path.split('/').nth(1).unwrap_or("");
    Ok(match kind {
        "ceiling" => {
            shared.stamp(at);
            shared.ceiling.fetch_add(1, Ordering::Relaxed);
            answer(StatusCode::OK)
        }
        "hook" => {
            shared.receive(&path, signature.as_deref(), &body, at);
            answer(StatusCode::OK)
        }
        "down" => {
            let mut up = shared.up.subscribe();
            tokio::select! {
                _ = up.wait_for(|up| *up) => {}
                _ = stop.cancelled() => return Ok(answer(StatusCode::SERVICE_UNAVAILABLE)),
            }
            // Timed when answered: a held request is delivered only now.
            shared.receive(&path, signature.as_deref(), &body, Instant::now());
            answer(StatusCode::OK)
        }
        "hang" => {
            shared.hung.fetch_add(1, Ordering::Relaxed);
            stop.cancelled().await;
            answer(StatusCode::SERVICE_UNAVAILABLE)
        }
        _ => {
            shared.error(format!("a request to an unknown path: {path}"));
            answer(StatusCode::NOT_FOUND)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_hash_is_found_in_a_delivery_body() {
        let body = br#"{"event":"exploit.detected","timestamp":1,"exploit":{"id":7,"tx_hash":"0xab12","chain":"c"}}"#;
        assert_eq!(tx_hash(body), Some("0xab12"));
        assert_eq!(tx_hash(b"{}"), None);
    }
}
