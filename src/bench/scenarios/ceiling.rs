//! Scenario `ceiling`: the throughput scenario's receiver driven by a plain HTTP client
//! (same TLS mode, same concurrency, same body size; no database, no signing): the
//! requests/s this machine allows, which the service's deliveries/s is compared to.
//! The client is the service's own connection layer (hyper's connection API and its
//! pool) without the signing: the leanest client we have, so the ratio measures what
//! the database, signing and scheduling cost, and a cheaper client in the service
//! cannot flatter it. reqwest, the plain client most Rust code would use, runs beside it
//! (the `reqwest_` figures); it cost about 15 us more CPU per request on this machine.
//! One short run moved by 30% between invocations on a shared 2-core machine, so each
//! client runs in rounds and reports the median round.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::task::JoinSet;

use super::{secs, tls_material, Env, ExploitSource};
use crate::bench::pki::Pki;
use crate::bench::receiver::Receiver;
use crate::bench::report::ScenarioReport;
use crate::bench::stats::{cpu_us_per, process_cpu_secs, progress};
use crate::delivery::connect::{tls_config, Connector, ConnectorConfig, Destination};
use crate::domain::netguard::NetworkPolicy;

/// Rounds of the ceiling; the median is the figure.
const ROUNDS: usize = 3;

/// Which client drives a round.
#[derive(Clone, Copy, PartialEq)]
enum Client {
    /// reqwest: the plain client most Rust code would use.
    Reqwest,
    /// The service's own connection layer, as deliveries use it, minus the signing.
    Layer,
}

/// What one round measured.
struct Round {
    received: u64,
    elapsed: f64,
    connections: u64,
    failed: u64,
    errors: Vec<String>,
    cpu_us_per_request: Option<f64>,
}

impl Round {
    fn rate(&self) -> f64 {
        if self.elapsed > 0.0 {
            self.received as f64 / self.elapsed
        } else {
            0.0
        }
    }
}

pub async fn run(env: &Env) -> anyhow::Result<ScenarioReport> {
    let mut report = ScenarioReport::new("ceiling");
    let (webhooks, exploits) = env.throughput_size();
    let requests = (webhooks * exploits) as u64;
    let concurrency = env.max_in_flight;
    let body = hyper::body::Bytes::from(ExploitSource::new().sample_delivery_body());
    let mut raw = Vec::with_capacity(ROUNDS);
    let mut plain = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        raw.push(round(env, requests, concurrency, body.clone(), Client::Layer).await?);
    }
    for _ in 0..ROUNDS {
        plain.push(round(env, requests, concurrency, body.clone(), Client::Reqwest).await?);
    }
    report.count("concurrency", "concurrency", concurrency as u64);
    report.count("body_bytes", "body size", body.len() as u64);
    let (median, rates, mid) = median_round(&raw);
    report.count("requests", "requests received (median round)", mid.received);
    report.number(
        "elapsed_secs",
        "first request to last receipt",
        mid.elapsed,
        "s",
    );
    report.number(
        "requests_per_sec",
        "requests/s (median of 3 rounds)",
        median,
        "/s",
    );
    report.number(
        "requests_per_sec_min",
        "requests/s (slowest round)",
        rates[0],
        "/s",
    );
    report.number(
        "requests_per_sec_max",
        "requests/s (fastest round)",
        rates[rates.len() - 1],
        "/s",
    );
    report.count(
        "receiver_connections",
        "connections opened to receiver",
        mid.connections,
    );
    if let Some(us) = mid.cpu_us_per_request {
        report.number(
            "cpu_us_per_request",
            "CPU per request, client + receiver (median round)",
            us,
            "us",
        );
        report.number(
            "cores_busy",
            "cores busy (median round)",
            us * mid.rate() / 1e6,
            "",
        );
    }
    let (median, rates, mid) = median_round(&plain);
    report.number(
        "reqwest_requests_per_sec",
        "requests/s through reqwest (median of 3)",
        median,
        "/s",
    );
    report.number(
        "reqwest_requests_per_sec_min",
        "requests/s through reqwest (slowest round)",
        rates[0],
        "/s",
    );
    report.number(
        "reqwest_requests_per_sec_max",
        "requests/s through reqwest (fastest round)",
        rates[rates.len() - 1],
        "/s",
    );
    report.count(
        "reqwest_receiver_connections",
        "connections opened to receiver by reqwest",
        mid.connections,
    );
    if let Some(us) = mid.cpu_us_per_request {
        report.number(
            "reqwest_cpu_us_per_request",
            "CPU per request, reqwest + receiver",
            us,
            "us",
        );
    }
    for r in plain.into_iter().chain(raw) {
        if r.failed > 0 {
            report.error(format!(
                "{} of {requests} ceiling requests failed",
                r.failed
            ));
        }
        report.errors(r.errors);
    }
    Ok(report)
}

/// The median rate, every rate in order, and the round that ran at the median.
fn median_round(rounds: &[Round]) -> (f64, Vec<f64>, &Round) {
    let mut rates: Vec<f64> = rounds.iter().map(Round::rate).collect();
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    let mid = rounds
        .iter()
        .find(|r| r.rate() == median)
        .expect("the median is one of the rounds");
    (median, rates, mid)
}

async fn round(
    env: &Env,
    requests: u64,
    concurrency: usize,
    body: hyper::body::Bytes,
    client: Client,
) -> anyhow::Result<Round> {
    let (pki, _ca_dir) = tls_material(env)?;
    let receiver = Receiver::start(pki.as_ref())?;
    let url = receiver.url("/ceiling");
    match client {
        Client::Layer => {
            let connector = Arc::new(connector(pki.as_ref(), concurrency)?);
            let dest = Arc::new(Destination::parse(&url).map_err(anyhow::Error::msg)?);
            let send = move || {
                let (connector, dest, body) = (connector.clone(), dest.clone(), body.clone());
                async move {
                    let mut headers = HeaderMap::with_capacity(2);
                    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    // Read to its end, so the connection goes back to the pool.
                    let request = dest.post(body, headers);
                    match connector.exchange(&dest.origin, request, usize::MAX).await {
                        Ok((status, _)) if status.is_success() => Ok(()),
                        Ok((status, _)) => Err(format!("HTTP {status}")),
                        Err(e) => Err(format!("{}: {}", e.kind, e.message)),
                    }
                }
            };
            drive(&receiver, requests, concurrency, "ceiling: requests", send).await
        }
        Client::Reqwest => {
            let mut builder = reqwest::Client::builder()
                .use_rustls_tls()
                .http1_only()
                .tcp_nodelay(true)
                // As the service's client: no request kept for a retry.
                .retry(reqwest::retry::never().max_retries_per_request(0))
                // Keep every connection: the ceiling is what keep-alive allows.
                .pool_max_idle_per_host(concurrency);
            if let Some(pki) = &pki {
                builder = builder.add_root_certificate(
                    reqwest::Certificate::from_pem(pki.ca_pem.as_bytes())
                        .context("the bench CA")?,
                );
            }
            let client = builder.build().context("building the ceiling client")?;
            let send = move || {
                let sent = client
                    .post(&url)
                    .header(CONTENT_TYPE, "application/json")
                    .body(body.clone())
                    .send();
                async move {
                    let r = sent.await.map_err(|e| e.to_string())?;
                    let status = r.status();
                    // Read to its end, so the connection goes back to the pool.
                    r.bytes().await.map_err(|e| e.to_string())?;
                    if status.is_success() {
                        Ok(())
                    } else {
                        Err(format!("HTTP {status}"))
                    }
                }
            };
            let label = "ceiling: requests through reqwest";
            drive(&receiver, requests, concurrency, label, send).await
        }
    }
}

/// The service's connection layer as the ceiling uses it: loopback allowed, the bench CA
/// trusted, as many idle connections as clients.
fn connector(pki: Option<&Pki>, concurrency: usize) -> anyhow::Result<Connector> {
    let mut roots = Vec::new();
    if let Some(pki) = pki {
        roots.push(CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).context("the bench CA")?);
    }
    Ok(Connector::new(ConnectorConfig {
        policy: NetworkPolicy::new(&["127.0.0.0/8".to_string()]).map_err(anyhow::Error::msg)?,
        overrides: Default::default(),
        tls: tls_config(roots).context("the ceiling's TLS set-up")?,
        connect_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(90),
        max_idle_per_origin: concurrency,
    }))
}

/// Failure reasons kept verbatim per round; later ones are only counted.
const REASONS_KEPT: u64 = 3;

/// `concurrency` clients calling `send` until `requests` have gone, and what the
/// receiver saw of them.
async fn drive<F, Fut>(
    receiver: &Receiver,
    requests: u64,
    concurrency: usize,
    label: &'static str,
    send: F,
) -> anyhow::Result<Round>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let bar = progress(requests, label);
    let next = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let cpu_before = process_cpu_secs();
    let mut workers = JoinSet::new();
    for _ in 0..concurrency {
        let (send, next, failures, reasons, bar) = (
            send.clone(),
            next.clone(),
            failures.clone(),
            reasons.clone(),
            bar.clone(),
        );
        workers.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                if let Err(why) = send().await {
                    if failures.fetch_add(1, Ordering::Relaxed) < REASONS_KEPT {
                        reasons.lock().unwrap_or_else(|e| e.into_inner()).push(why);
                    }
                }
                bar.inc(1);
            }
        });
    }
    while let Some(joined) = workers.join_next().await {
        joined.context("a ceiling worker panicked")?;
    }
    let cpu_after = process_cpu_secs();
    bar.finish_and_clear();

    let last = receiver.last_receipt().unwrap_or(started);
    let received = receiver.ceiling_requests();
    let mut errors = receiver.errors();
    errors.append(&mut reasons.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(Round {
        cpu_us_per_request: cpu_us_per(cpu_before, cpu_after, received),
        received,
        elapsed: secs(started, last),
        connections: receiver.connections(),
        failed: failures.load(Ordering::Relaxed),
        errors,
    })
}
