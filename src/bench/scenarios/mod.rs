//! The scenarios and what they share: a fixture (receiver + in-process service), bulk
//! creation of users and webhooks through the API, unique exploits, and waiting for
//! receipts with a deadline.

mod backlog;
mod ceiling;
mod fanout;
mod latency;
mod logs;
mod throughput;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::ProgressBar;
use tempfile::TempDir;
use tokio::task::JoinSet;

use super::pki::Pki;
use super::receiver::Receiver;
use super::report::{Report, ScenarioReport};
use super::service::{Service, ServiceOptions};
use super::Scenario;
use crate::config::{Config, Role};
use crate::domain::tier::Tier;

/// Webhooks one enterprise user may own.
const WEBHOOKS_PER_USER: usize = 50;
/// Setup calls (users, webhooks) in flight at once: enough to hide round trips, few
/// enough not to queue behind SQLite's single writer for long.
const SETUP_CONCURRENCY: usize = 8;
/// Short retries, so that a failed attempt in a scenario is retried within it.
const RETRY_SCHEDULE_MS: [u64; 3] = [100, 500, 1000];
/// Most exploits in one ingest request: about 150 bytes each keeps a request under the
/// service's default 1 MiB body limit.
const MAX_INGEST_BATCH: usize = 4000;

/// The run's settings, from the command line.
#[derive(Debug, Clone)]
pub struct Env {
    pub quick: bool,
    pub tls: bool,
    pub database_url: Option<String>,
    pub max_in_flight: usize,
    pub max_in_flight_per_endpoint: usize,
    pub worker_processes: usize,
    pub webhooks: Option<usize>,
    pub exploits: Option<usize>,
    pub rate: u32,
    pub duration: Duration,
}

impl Env {
    /// The service's configuration for a scenario, before the scenario's own changes.
    fn service_options(&self) -> ServiceOptions {
        ServiceOptions {
            database_url: self.database_url.clone(),
            ca_pem: None,
            max_in_flight: self.max_in_flight,
            max_in_flight_per_endpoint: self.max_in_flight_per_endpoint,
            retry_schedule: RETRY_SCHEDULE_MS
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect(),
            delivery_timeout: Config::default().delivery_timeout,
            role: Role::All,
            worker_processes: self.worker_processes,
        }
    }

    /// The throughput scenario's size, which the ceiling scenario matches.
    fn throughput_size(&self) -> (usize, usize) {
        let webhooks = self.webhooks.unwrap_or(if self.quick { 100 } else { 1000 });
        let exploits = self.exploits.unwrap_or(50);
        (webhooks.max(1), exploits.max(1))
    }
}

/// Runs one scenario; `done` holds the reports of those that ran before it.
pub async fn run(scenario: Scenario, env: &Env, done: &Report) -> anyhow::Result<ScenarioReport> {
    match scenario {
        Scenario::Throughput => throughput::run(env).await,
        Scenario::Ceiling => ceiling::run(env).await,
        Scenario::Latency => latency::run(env, false, done).await,
        Scenario::Isolation => latency::run(env, true, done).await,
        Scenario::Fanout => fanout::run(env).await,
        Scenario::Backlog => backlog::run(env).await,
        Scenario::Logs => logs::run(env).await,
    }
}

/// TLS material when `--tls`: the CA file lives in the returned directory.
fn tls_material(env: &Env) -> anyhow::Result<(Option<Pki>, Option<TempDir>)> {
    if !env.tls {
        return Ok((None, None));
    }
    let dir = tempfile::Builder::new()
        .prefix("kamiyo-bench-ca-")
        .tempdir()
        .context("creating a temporary directory for the CA")?;
    Ok((Some(Pki::generate(dir.path())?), Some(dir)))
}

/// A receiver and a service delivering to it, for one scenario.
pub struct Fixture {
    pub receiver: Arc<Receiver>,
    pub service: Service,
    pub exploits: Arc<ExploitSource>,
    _ca_dir: Option<TempDir>,
}

impl Fixture {
    async fn start(env: &Env, mut opts: ServiceOptions) -> anyhow::Result<Fixture> {
        let (pki, ca_dir) = tls_material(env)?;
        let receiver = Arc::new(Receiver::start(pki.as_ref())?);
        opts.ca_pem = pki.map(|p| p.ca_pem_path);
        let service = Service::start(&opts).await?;
        Ok(Fixture {
            receiver,
            service,
            exploits: Arc::new(ExploitSource::new()),
            _ca_dir: ca_dir,
        })
    }

    /// Stops the service (it drains what is in flight), then the receiver.
    async fn stop(self) -> anyhow::Result<()> {
        self.service.stop().await
    }

    /// Creates enough enterprise users and one webhook per path, delivering to the
    /// receiver; tells the receiver each secret. Returns (webhook id, owner's API key).
    async fn create_webhooks(&self, paths: &[String]) -> anyhow::Result<Vec<(i64, Arc<str>)>> {
        debug_assert_eq!(Tier::Enterprise.max_webhooks() as usize, WEBHOOKS_PER_USER);
        let api = self.service.api.clone();
        let users = paths.len().div_ceil(WEBHOOKS_PER_USER);
        let nonce = self.exploits.nonce;
        let keys: Vec<Arc<str>> = concurrently(users, SETUP_CONCURRENCY, |i| {
            let api = api.clone();
            async move {
                let key = api.create_user(&format!("bench-{nonce:x}-{i}")).await?;
                Ok(Arc::from(key))
            }
        })
        .await
        .context("creating users")?;
        let bar = super::stats::progress(paths.len() as u64, "creating webhooks");
        let hooks = concurrently(paths.len(), SETUP_CONCURRENCY, |i| {
            let (api, receiver, bar) = (api.clone(), self.receiver.clone(), bar.clone());
            let key = keys[i / WEBHOOKS_PER_USER].clone();
            let path = paths[i].clone();
            let chain = self.exploits.chain.clone();
            async move {
                let url = receiver.url(&path);
                let created = api
                    .create_webhook(&key, &format!("bench {path}"), &url, &chain)
                    .await?;
                receiver.set_secret(&path, &created.secret);
                bar.inc(1);
                Ok((created.id, key))
            }
        })
        .await
        .context("creating webhooks")?;
        bar.finish_and_clear();
        Ok(hooks)
    }
}

/// Runs `make(0..n)` with at most `limit` in flight; results in index order, or the first
/// error.
async fn concurrently<T, Fut>(
    n: usize,
    limit: usize,
    mut make: impl FnMut(usize) -> Fut,
) -> anyhow::Result<Vec<T>>
where
    T: Send + 'static,
    Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let mut set = JoinSet::new();
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let mut next = 0;
    while next < n || !set.is_empty() {
        while next < n && set.len() < limit {
            let fut = make(next);
            let i = next;
            set.spawn(async move { (i, fut.await) });
            next += 1;
        }
        if let Some(joined) = set.join_next().await {
            let (i, result) = joined.context("a setup task panicked")?;
            out[i] = Some(result?);
        }
    }
    Ok(out
        .into_iter()
        .map(|o| o.expect("every index ran"))
        .collect())
}

/// Unique exploits on this run's own chain (the service ignores duplicates by chain and
/// tx_hash, and webhooks filter on the chain).
pub struct ExploitSource {
    pub chain: String,
    nonce: u64,
    next: AtomicU64,
}

impl ExploitSource {
    fn new() -> ExploitSource {
        let nonce = rand::random::<u64>();
        ExploitSource {
            chain: format!("bench-{:08x}", nonce as u32),
            nonce,
            next: AtomicU64::new(0),
        }
    }

    fn tx_hash(&self, seq: u64) -> String {
        format!("0x{:016x}{seq:016x}", self.nonce)
    }

    fn json(&self, tx_hash: &str) -> String {
        // Hex and the chain name need no JSON escaping.
        format!(
            r#"{{"tx_hash":"{tx_hash}","chain":"{}","protocol":"BenchSwap","amount_usd":250000,"timestamp":"2025-10-10T12:30:00Z"}}"#,
            self.chain
        )
    }

    /// One new exploit: its tx_hash and its ingest body.
    pub fn one(&self) -> (String, Vec<u8>) {
        let tx = self.tx_hash(self.next.fetch_add(1, Ordering::Relaxed));
        let body = format!("[{}]", self.json(&tx)).into_bytes();
        (tx, body)
    }

    /// An ingest body of `n` new exploits.
    pub fn batch(&self, n: usize) -> Vec<u8> {
        let first = self.next.fetch_add(n as u64, Ordering::Relaxed);
        let mut out = String::with_capacity(n * 160 + 2);
        out.push('[');
        for seq in first..first + n as u64 {
            if seq != first {
                out.push(',');
            }
            out.push_str(&self.json(&self.tx_hash(seq)));
        }
        out.push(']');
        out.into_bytes()
    }

    /// A delivery body as the service would send for one of these exploits (same fields,
    /// same size), for the ceiling client.
    pub fn sample_delivery_body(&self) -> String {
        use crate::domain::exploit::Exploit;
        use crate::domain::payload::{encode_event, EVENT_EXPLOIT_DETECTED};
        let now = crate::domain::time::now_ms();
        let exploit = Exploit {
            id: 123_456,
            tx_hash: self.tx_hash(123_456),
            chain: self.chain.clone(),
            protocol: "BenchSwap".into(),
            amount_usd: 250_000.0,
            timestamp_ms: now,
            source: None,
            source_url: None,
            category: None,
            description: None,
            detected_at_ms: now,
        };
        encode_event(EVENT_EXPLOIT_DETECTED, &exploit)
    }
}

/// Ingests `total` exploits in batches of `batch`, one request after another; returns the
/// deliveries the service queued.
async fn ingest_in_batches(
    fx: &Fixture,
    total: usize,
    batch: usize,
    bar: &ProgressBar,
) -> anyhow::Result<u64> {
    let mut queued = 0;
    let mut left = total;
    while left > 0 {
        let n = left.min(batch.max(1));
        queued += fx.service.api.ingest(fx.exploits.batch(n)).await?;
        left -= n;
        bar.set_position(fx.receiver.delivered());
    }
    Ok(queued)
}

/// Waits until the receiver has `target` deliveries; false if `deadline` passed first.
/// Polling does not blur the figures: the receiver stamps each receipt itself.
async fn wait_for_deliveries(
    receiver: &Receiver,
    target: u64,
    deadline: Duration,
    bar: &ProgressBar,
) -> bool {
    let until = Instant::now() + deadline;
    loop {
        let n = receiver.delivered();
        bar.set_position(n);
        if n >= target {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The deliveries/s a scenario could fall to before it is called stuck.
const SLOWEST_PLAUSIBLE_RATE: u64 = 100;

/// A generous wait for `n` deliveries.
fn deadline_for(n: u64) -> Duration {
    Duration::from_secs(60 + n / SLOWEST_PLAUSIBLE_RATE).min(Duration::from_secs(1800))
}

/// Seconds between two instants, as a float.
fn secs(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64()
}
