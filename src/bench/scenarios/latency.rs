//! Scenarios `latency` and `isolation`: a steady rate of exploits, each matching 10
//! webhooks, for a fixed time; ingest-to-receipt percentiles. In `isolation` half the
//! webhooks point at a path that never answers, and the healthy half's figures are shown
//! beside those of `latency`.
//!
//! The load is open-loop: exploit i is due at start + i/rate whether or not earlier
//! ingests have answered, and its latency is counted from that due time, so a stalled
//! service cannot hide its stall by slowing the driver (coordinated omission).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use super::{secs, wait_for_deliveries, Env, Fixture};
use crate::bench::report::{Report, ScenarioReport};
use crate::bench::stats::{progress, Percentiles};

/// Webhooks each exploit matches.
const WEBHOOKS_PER_EXPLOIT: usize = 10;
/// Delivery timeout in `isolation`: attempts to the silent half end, and so does the run.
const ISOLATION_TIMEOUT: Duration = Duration::from_secs(2);
/// Ingest calls in flight at most; past this the driver would only queue sockets.
const MAX_OUTSTANDING_INGESTS: usize = 128;
/// How long deliveries may keep arriving after the last exploit is due.
const DRAIN_DEADLINE: Duration = Duration::from_secs(60);

pub async fn run(env: &Env, isolation: bool, done: &Report) -> anyhow::Result<ScenarioReport> {
    let name = if isolation { "isolation" } else { "latency" };
    let mut report = ScenarioReport::new(name);
    let mut opts = env.service_options();
    if isolation {
        opts.delivery_timeout = ISOLATION_TIMEOUT;
    }
    let fx = Fixture::start(env, opts).await?;
    let healthy = if isolation {
        WEBHOOKS_PER_EXPLOIT / 2
    } else {
        WEBHOOKS_PER_EXPLOIT
    };
    let paths: Vec<String> = (0..WEBHOOKS_PER_EXPLOIT)
        .map(|i| {
            if i < healthy {
                format!("/hook/{i}")
            } else {
                format!("/hang/{i}")
            }
        })
        .collect();
    fx.create_webhooks(&paths).await?;

    let total = (f64::from(env.rate) * env.duration.as_secs_f64())
        .round()
        .max(1.0) as u64;
    let bar = progress(total * healthy as u64, &format!("{name}: deliveries"));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(env.rate)));
    // Catch up after a hiccup of the driver: the rate is what is promised.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let outstanding = Arc::new(Semaphore::new(MAX_OUTSTANDING_INGESTS));
    let mut ingests = JoinSet::new();
    let started = Instant::now();
    for _ in 0..total {
        let due = ticker.tick().await.into_std();
        let permit = outstanding.clone().acquire_owned().await?;
        let (tx, body) = fx.exploits.one();
        fx.receiver.record_sent(tx, due);
        let api = fx.service.api.clone();
        ingests.spawn(async move {
            let result = api.ingest(body).await;
            drop(permit);
            result
        });
        bar.set_position(fx.receiver.delivered());
    }
    let mut sent = 0u64;
    let mut ingest_errors = Vec::new();
    while let Some(joined) = ingests.join_next().await {
        match joined? {
            Ok(_) => sent += 1,
            Err(e) => ingest_errors.push(format!("{e:#}")),
        }
    }
    let load_ended = Instant::now();
    let expected = sent * healthy as u64;
    let complete = wait_for_deliveries(&fx.receiver, expected, DRAIN_DEADLINE, &bar).await;
    bar.finish_and_clear();

    let latencies = fx.receiver.latencies_ms();
    report.number("rate", "exploits/s offered", f64::from(env.rate), "/s");
    report.number(
        "achieved_rate",
        "exploits/s ingested",
        sent as f64 / secs(started, load_ended).max(1e-9),
        "/s",
    );
    report.count(
        "webhooks_per_exploit",
        "webhooks per exploit",
        WEBHOOKS_PER_EXPLOIT as u64,
    );
    if isolation {
        report.count("healthy_webhooks", "healthy webhooks", healthy as u64);
    }
    report.count("deliveries", "deliveries timed", latencies.len() as u64);
    if let Some(p) = Percentiles::of(&latencies) {
        let label =
            |plain: &'static str, healthy: &'static str| if isolation { healthy } else { plain };
        report.number("p50_ms", label("p50", "healthy p50"), p.p50, "ms");
        report.number("p95_ms", label("p95", "healthy p95"), p.p95, "ms");
        report.number("p99_ms", label("p99", "healthy p99"), p.p99, "ms");
        report.number("max_ms", label("max", "healthy max"), p.max, "ms");
        report.number("mean_ms", label("mean", "healthy mean"), p.mean, "ms");
    }
    if isolation {
        match done.scenario("latency").and_then(|l| l.get("p99_ms")) {
            Some(baseline) => {
                report.number("baseline_p99_ms", "latency scenario p99", baseline, "ms")
            }
            None => {
                report.note("run the latency scenario too to see its p99 beside the healthy half's")
            }
        }
        report.count(
            "hung_requests",
            "requests held by the silent half",
            fx.receiver.hung_requests(),
        );
    }
    report.errors(ingest_errors.into_iter().take(5));
    if !complete {
        report.error(format!(
            "only {} of {expected} healthy deliveries arrived within {DRAIN_DEADLINE:?} of the end of the load",
            fx.receiver.delivered()
        ));
    }
    report.errors(fx.receiver.errors());
    fx.stop().await?;
    Ok(report)
}
