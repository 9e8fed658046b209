//! One bad endpoint must not hurt the others: a black hole that never
//! answers holds only its own bounded share of connections, and deliveries
//! to healthy endpoints keep arriving promptly beside it.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::*;
use crate::receiver::{Behaviour, Reply, TestReceiver};

const PER_ENDPOINT: usize = 8;
const HEALTHY: [&str; 3] = ["/healthy-1", "/healthy-2", "/healthy-3"];
/// Generous for a loaded two-core machine, yet far below the delivery
/// timeout a blocked queue would wait for.
const PROMPT: Duration = Duration::from_secs(2);

fn exploit_of(protocol: &str) -> serde_json::Value {
    let mut e = exploit();
    e["protocol"] = json!(protocol);
    e
}

async fn a_black_holed_endpoint_does_not_delay_deliveries_to_healthy_ones() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(&receiver, |cfg| {
        cfg.max_in_flight_per_endpoint = PER_ENDPOINT;
        // Below the default 60 s lease, far above the test's length.
        cfg.delivery_timeout = Duration::from_secs(50);
    })
    .await;
    receiver.set("/black-hole", Behaviour::always(Reply::never()));
    let key = app.create_user().await;
    // The black hole takes every exploit, the healthy ones only theirs.
    app.create_hook(&key, &receiver.url("/black-hole")).await;
    for path in HEALTHY {
        app.create_hook_with(
            &key,
            json!({"name": path, "url": receiver.url(path), "protocols": ["Healthy"]}),
        )
        .await;
    }

    let backlog: Vec<_> = (0..3 * PER_ENDPOINT)
        .map(|_| exploit_of("Swallowed"))
        .collect();
    app.ingest(json!(backlog)).await;
    receiver
        .wait_for("/black-hole", PER_ENDPOINT, Duration::from_secs(15))
        .await;

    for round in 1..=5 {
        let ingested = Instant::now();
        app.ingest_one(exploit_of("Healthy")).await;
        for path in HEALTHY {
            let got = receiver
                .wait_for(path, round, Duration::from_secs(30))
                .await;
            let waited = got[round - 1].at.saturating_duration_since(ingested);
            assert!(
                waited < PROMPT,
                "round {round}: {path} got its delivery {waited:?} after ingestion"
            );
        }
    }

    assert!(
        receiver.held() >= PER_ENDPOINT && receiver.open_connections() >= PER_ENDPOINT,
        "the black hole's requests should all still be hanging: {} held on {} connections",
        receiver.held(),
        receiver.open_connections()
    );
    let held = receiver.count("/black-hole");
    assert_eq!(
        held, PER_ENDPOINT,
        "the black hole should hold exactly max_in_flight_per_endpoint requests"
    );
    receiver
        .assert_stays_at("/black-hole", PER_ENDPOINT, Duration::from_millis(500))
        .await;
}

/// Claims read only the head of the due order; when that head is all one
/// endpoint without room, the others' deliveries must still be found.
async fn a_deep_queue_behind_a_black_hole_does_not_hide_other_endpoints() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(&receiver, |cfg| {
        cfg.max_in_flight = 2 * PER_ENDPOINT;
        cfg.max_in_flight_per_endpoint = PER_ENDPOINT;
        cfg.delivery_timeout = Duration::from_secs(50);
    })
    .await;
    receiver.set("/black-hole", Behaviour::always(Reply::never()));
    let key = app.create_user().await;
    app.create_hook_with(
        &key,
        json!({"name": "hole", "url": receiver.url("/black-hole"), "protocols": ["Swallowed"]}),
    )
    .await;
    app.create_hook_with(
        &key,
        json!({"name": "healthy", "url": receiver.url("/healthy"), "protocols": ["Healthy"]}),
    )
    .await;

    // Far more due deliveries than a claim reads of the due order's head.
    let backlog: Vec<_> = (0..600).map(|_| exploit_of("Swallowed")).collect();
    app.ingest(json!(backlog)).await;
    receiver
        .wait_for("/black-hole", PER_ENDPOINT, Duration::from_secs(15))
        .await;

    for round in 1..=3 {
        let ingested = Instant::now();
        app.ingest_one(exploit_of("Healthy")).await;
        let got = receiver
            .wait_for("/healthy", round, Duration::from_secs(30))
            .await;
        let waited = got[round - 1].at.saturating_duration_since(ingested);
        assert!(
            waited < PROMPT,
            "round {round}: the healthy endpoint got its delivery {waited:?} after ingestion"
        );
    }
    assert_eq!(receiver.count("/black-hole"), PER_ENDPOINT);
}

crate::backend_tests!(
    a_black_holed_endpoint_does_not_delay_deliveries_to_healthy_ones,
    a_deep_queue_behind_a_black_hole_does_not_hide_other_endpoints,
);
