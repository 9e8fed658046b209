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

/// Replaces a webhook's stored secret with a sealed value no key opens, as a
/// server still on an old key sees secrets re-encrypted under a new one.
async fn seal_secret_shut(database_url: &str, webhook_id: i64) {
    use sqlx::Connection as _;
    let sql = "UPDATE webhooks SET secret = 'enc:v1:AAAA' WHERE id = $1";
    if database_url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(database_url).await.unwrap();
        sqlx::query(sql)
            .bind(webhook_id)
            .execute(&mut conn)
            .await
            .unwrap();
    } else {
        let mut conn = sqlx::SqliteConnection::connect(database_url).await.unwrap();
        sqlx::query(sql)
            .bind(webhook_id)
            .execute(&mut conn)
            .await
            .unwrap();
    }
}

/// A claim that fails (here on a secret that does not open) must not take the
/// outcomes written in the same transaction down with it.
async fn outcomes_are_recorded_while_another_webhooks_secret_cannot_be_opened() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(&receiver, |cfg| {
        cfg.encryption_key = Some("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=".into());
    })
    .await;
    receiver.set("/slow", Behaviour::always(Reply::ok().after(ms(400))));
    let key = app.create_user().await;
    let good = app
        .create_hook_with(
            &key,
            json!({"name": "good", "url": receiver.url("/slow"), "protocols": ["Good"]}),
        )
        .await;
    let shut = app
        .create_hook_with(
            &key,
            json!({"name": "shut", "url": receiver.url("/shut"), "protocols": ["Shut"]}),
        )
        .await;

    app.ingest_one(exploit_of("Good")).await;
    receiver.wait_for("/slow", 1, Duration::from_secs(10)).await;
    // While the good attempt waits for its answer, a delivery whose secret does not
    // open becomes due: every claim from now on fails.
    seal_secret_shut(&app.database_url, shut.id).await;
    app.ingest_one(exploit_of("Shut")).await;

    let id = app.deliveries(&good).await[0]["id"].as_i64().unwrap();
    let d = app
        .wait_for_status(&good, id, "succeeded", Duration::from_secs(15))
        .await;
    assert_eq!(d["attempts"], 1, "{d}");
    assert_eq!(d["attempt_log"].as_array().map(Vec::len), Some(1), "{d}");
    assert_eq!(receiver.count("/shut"), 0, "nothing goes out unsigned");
}

crate::backend_tests!(
    a_black_holed_endpoint_does_not_delay_deliveries_to_healthy_ones,
    a_deep_queue_behind_a_black_hole_does_not_hide_other_endpoints,
    outcomes_are_recorded_while_another_webhooks_secret_cannot_be_opened,
);
