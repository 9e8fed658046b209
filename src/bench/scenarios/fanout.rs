//! Scenario `fanout`: one exploit matching 10,000 webhooks (quick: 1,000) of 200
//! enterprise users; the time from the ingest call to the last receipt.

use std::time::Instant;

use super::{deadline_for, secs, wait_for_deliveries, Env, Fixture};
use crate::bench::report::ScenarioReport;
use crate::bench::stats::progress;

pub async fn run(env: &Env) -> anyhow::Result<ScenarioReport> {
    let mut report = ScenarioReport::new("fanout");
    let webhooks: usize = if env.quick { 1_000 } else { 10_000 };
    let fx = Fixture::start(env, env.service_options()).await?;
    let paths: Vec<String> = (0..webhooks).map(|i| format!("/hook/{i}")).collect();
    let setup = Instant::now();
    fx.create_webhooks(&paths).await?;
    let setup_secs = setup.elapsed().as_secs_f64();

    let expected = webhooks as u64;
    let bar = progress(expected, "fanout: deliveries");
    let started = Instant::now();
    let (_, body) = fx.exploits.one();
    let queued = fx.service.api.ingest(body).await?;
    let answered = Instant::now();
    let complete = wait_for_deliveries(&fx.receiver, expected, deadline_for(expected), &bar).await;
    bar.finish_and_clear();

    let delivered = fx.receiver.delivered();
    let last = fx.receiver.last_receipt().unwrap_or(started);
    let elapsed = secs(started, last);
    report.count("webhooks", "matching webhooks", expected);
    report.count("users", "enterprise users", webhooks.div_ceil(50) as u64);
    report.number("elapsed_secs", "ingest to last receipt", elapsed, "s");
    report.number(
        "ingest_ms",
        "ingest call (queues all)",
        secs(started, answered) * 1000.0,
        "ms",
    );
    if let Some(first) = fx.receiver.first_receipt() {
        report.number(
            "first_receipt_ms",
            "ingest to first receipt",
            secs(started, first) * 1000.0,
            "ms",
        );
    }
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
    report.number(
        "setup_secs",
        "setup (users + webhooks via API)",
        setup_secs,
        "s",
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
    report.errors(fx.receiver.errors());
    fx.stop().await?;
    Ok(report)
}
