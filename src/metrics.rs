//! Prometheus metrics: the names we export and the one process-wide recorder.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const ATTEMPTS_TOTAL: &str = "kamiyo_delivery_attempts_total";
pub const LATENCY_SECONDS: &str = "kamiyo_delivery_latency_seconds";
pub const QUEUE_DEPTH: &str = "kamiyo_delivery_queue_depth";
pub const IN_FLIGHT: &str = "kamiyo_deliveries_in_flight";
pub const QUEUED: &str = "kamiyo_deliveries_queued";
pub const INGESTED_TOTAL: &str = "kamiyo_exploits_ingested_total";

const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often histogram samples are folded into their buckets.
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the recorder on first use (once per process, however many apps a test starts).
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(LATENCY_SECONDS.into()), &LATENCY_BUCKETS)
            .expect("buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
        }
        // Histogram samples wait in the recorder until drained: without a scrape of
        // /metrics they would pile up, one per delivery attempt, for the process's life.
        let upkeep = handle.clone();
        if let Err(e) = std::thread::Builder::new()
            .name("kamiyo-metrics".into())
            .spawn(move || loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            })
        {
            tracing::warn!(error = %e, "could not start the metrics upkeep thread");
        }
        describe();
        handle
    })
}

fn describe() {
    metrics::describe_counter!(ATTEMPTS_TOTAL, "Delivery attempts by outcome");
    metrics::describe_histogram!(
        LATENCY_SECONDS,
        metrics::Unit::Seconds,
        "Delivery attempt latency, request to last byte read"
    );
    metrics::describe_gauge!(QUEUE_DEPTH, "Pending deliveries");
    metrics::describe_gauge!(IN_FLIGHT, "Delivery attempts in flight in this process");
    metrics::describe_gauge!(
        QUEUED,
        "Deliveries claimed by this process and queued behind an endpoint's attempts"
    );
    metrics::describe_counter!(INGESTED_TOTAL, "Exploits ingested (not duplicates)");
}
