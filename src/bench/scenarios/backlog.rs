//! Scenario `backlog`: N deliveries (default 1,000,000; quick 20,000) queued for one
//! endpoint that is down, then the endpoint comes up; peak RSS while queued and the drain
//! rate after.
//!
//! "Down" is an endpoint that accepts connections and never answers (held until it is
//! up): with a 503 every queued delivery would be attempted and rescheduled while down,
//! and the drain would then measure the retry timer instead of the service.

use std::time::{Duration, Instant};

use super::{deadline_for, ingest_in_batches, secs, wait_for_deliveries, Env, Fixture};
use crate::bench::report::ScenarioReport;
use crate::bench::stats::{proc_status_mib, progress, reset_peak_rss};

/// Attempts held by the down endpoint time out after this.
const DOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// Enough retries that nothing runs out of attempts while the endpoint is down.
const DOWN_RETRIES: usize = 100;
const RETRY_DELAY: Duration = Duration::from_secs(1);

pub async fn run(env: &Env) -> anyhow::Result<ScenarioReport> {
    let mut report = ScenarioReport::new("backlog");
    let n: u64 = if env.quick { 20_000 } else { 1_000_000 };
    let mut opts = env.service_options();
    opts.delivery_timeout = DOWN_TIMEOUT;
    opts.retry_schedule = vec![RETRY_DELAY; DOWN_RETRIES];
    let fx = Fixture::start(env, opts).await?;
    fx.create_webhooks(&["/down/0".to_owned()]).await?;
    fx.receiver.set_up(false);

    let windowed = reset_peak_rss();
    let bar = progress(n, "backlog: queueing");
    let started = Instant::now();
    let queued = ingest_in_batches(&fx, n as usize, super::MAX_INGEST_BATCH, &bar).await?;
    let ingest_secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let depth = fx.service.queue_depth().await?;
    let peak_queued = proc_status_mib("VmHWM");
    let rss_queued = proc_status_mib("VmRSS");

    reset_peak_rss();
    let bar = progress(n, "backlog: draining");
    let up = Instant::now();
    fx.receiver.set_up(true);
    let complete = wait_for_deliveries(&fx.receiver, n, deadline_for(n), &bar).await;
    bar.finish_and_clear();
    let delivered = fx.receiver.delivered();
    let last = fx.receiver.last_receipt().unwrap_or(up);
    let drain_secs = secs(up, last);
    let peak_draining = proc_status_mib("VmHWM");

    report.count("deliveries", "deliveries queued", queued);
    report.count("queue_depth", "pending when up", depth.max(0) as u64);
    report.number("ingest_secs", "queueing time", ingest_secs, "s");
    report.number(
        "queued_per_sec",
        "deliveries queued/s",
        queued as f64 / ingest_secs.max(1e-9),
        "/s",
    );
    if let Some(mib) = peak_queued {
        report.number("peak_rss_queued_mib", "peak RSS while queueing", mib, "MiB");
    }
    if let Some(mib) = rss_queued {
        report.number("rss_queued_mib", "RSS with the queue full", mib, "MiB");
    }
    report.number("drain_secs", "up to last receipt", drain_secs, "s");
    report.number(
        "drain_per_sec",
        "drain rate",
        if drain_secs > 0.0 {
            delivered as f64 / drain_secs
        } else {
            0.0
        },
        "/s",
    );
    if let Some(mib) = peak_draining {
        report.number(
            "peak_rss_draining_mib",
            "peak RSS while draining",
            mib,
            "MiB",
        );
    }
    report.note(format!(
        "one endpoint, {} attempts at a time (max_in_flight_per_endpoint); RSS is the whole \
         bench process{}",
        env.max_in_flight_per_endpoint,
        if windowed {
            ""
        } else {
            " (lifetime peak: the kernel would not reset VmHWM)"
        }
    ));
    if queued != n {
        report.error(format!("ingest queued {queued} deliveries, expected {n}"));
    }
    if !complete {
        report.error(format!(
            "only {delivered} of {n} deliveries arrived within {:?} of the endpoint coming up",
            deadline_for(n)
        ));
    }
    report.errors(fx.receiver.errors());
    fx.stop().await?;
    Ok(report)
}
