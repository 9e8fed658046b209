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

crate::backend_tests!(a_black_holed_endpoint_does_not_delay_deliveries_to_healthy_ones,);
