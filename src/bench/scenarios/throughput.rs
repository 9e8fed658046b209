//! Scenario `throughput`: E exploits each matching all W webhooks, ingested in batches as
//! fast as ingest answers; deliveries/s from the first ingest call to the last receipt.

use std::time::Instant;

use super::{deadline_for, ingest_in_batches, secs, wait_for_deliveries, Env, Fixture};
use crate::bench::report::ScenarioReport;
use crate::bench::stats::{
    cpu_us_per, proc_status_mib, process_cpu_secs, progress, reset_peak_rss,
};

/// Deliveries one ingest request queues at most: large enough to keep the single writer
/// busy, small enough that delivery starts while ingest goes on.
const DELIVERIES_PER_INGEST: usize = 10_000;

pub async fn run(env: &Env) -> anyhow::Result<ScenarioReport> {
    let mut report = ScenarioReport::new("throughput");
    let (webhooks, exploits) = env.throughput_size();
    let fx = Fixture::start(env, env.service_options()).await?;
    let paths: Vec<String> = (0..webhooks).map(|i| format!("/hook/{i}")).collect();
    fx.create_webhooks(&paths).await?;

    // The peak-RSS window starts after setup: it covers ingest and delivery only.
    let windowed = reset_peak_rss();
    let expected = (webhooks * exploits) as u64;
    let batch = (DELIVERIES_PER_INGEST / webhooks).clamp(1, super::MAX_INGEST_BATCH);
    let bar = progress(expected, "throughput: deliveries");
    let started = Instant::now();
    let cpu_before = process_cpu_secs();
    let queued = ingest_in_batches(&fx, exploits, batch, &bar).await?;
    let ingested = Instant::now();
    let during_ingest = fx.receiver.delivered();
    let complete = wait_for_deliveries(&fx.receiver, expected, deadline_for(expected), &bar).await;
    let cpu_after = process_cpu_secs();
    bar.finish_and_clear();
    let peak_rss = proc_status_mib("VmHWM");

    let delivered = fx.receiver.delivered();
    let last = fx.receiver.last_receipt().unwrap_or(started);
    let elapsed = secs(started, last);
    report.count("webhooks", "webhooks", webhooks as u64);
    report.count("exploits", "exploits", exploits as u64);
    report.count("deliveries", "deliveries received", delivered);
    report.number("elapsed_secs", "first ingest to last receipt", elapsed, "s");
    report.number(
        "deliveries_per_sec",
        "deliveries/s",
        if elapsed > 0.0 {
            delivered as f64 / elapsed
        } else {
            0.0
        },
        "/s",
    );
    if let Some(us) = cpu_us_per(cpu_before, cpu_after, delivered) {
        report.number(
            "cpu_us_per_delivery",
            "CPU per delivery, service + receiver",
            us,
            "us",
        );
        if elapsed > 0.0 {
            // Of the machine's cores, how many were busy on average: what is left idle
            // is capacity the service did not manage to use.
            report.number(
                "cores_busy",
                "cores busy, first ingest to last receipt",
                us * delivered as f64 / 1e6 / elapsed,
                "",
            );
        }
    }
    let ingest_secs = secs(started, ingested);
    report.number("ingest_secs", "ingest calls (queueing)", ingest_secs, "s");
    report.number(
        "queued_per_sec",
        "deliveries queued/s by ingest",
        queued as f64 / ingest_secs.max(1e-9),
        "/s",
    );
    report.count(
        "delivered_during_ingest",
        "deliveries received while ingesting",
        during_ingest,
    );
    if let Some(first) = fx.receiver.first_receipt() {
        report.number(
            "first_receipt_ms",
            "first ingest to first receipt",
            secs(started, first) * 1000.0,
            "ms",
        );
    }
    if let Some(mib) = peak_rss {
        report.number("peak_rss_mib", "peak RSS (whole process)", mib, "MiB");
        report.note(if windowed {
            "peak RSS is VmHWM over ingest and delivery of the bench process, which runs the \
             service, the receiver and the driver in-process"
        } else {
            "peak RSS is the bench process's lifetime VmHWM (service, receiver and driver \
             in-process): the kernel would not reset it"
        });
    }
    report.count(
        "signatures_checked",
        "signatures checked (sample)",
        fx.receiver.signatures_checked(),
    );
    report.count(
        "receiver_connections",
        "connections opened to receiver",
        fx.receiver.connections(),
    );
    if queued != expected {
        report.error(format!(
            "ingest queued {queued} deliveries, expected {expected}"
        ));
    }
    if !complete {
        report.error(format!(
            "only {delivered} of {expected} deliveries arrived within {:?}",
            deadline_for(expected)
        ));
    }
    if fx.receiver.signatures_checked() == 0 && delivered > 0 {
        report.error("no delivery signature was checked");
    }
    report.errors(fx.receiver.errors());
    fx.stop().await?;
    Ok(report)
}
