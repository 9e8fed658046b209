//! Attempts and their outcomes: when attempts are made, how many, what
//! counts as a failure (non-2xx, redirect, timeout, refused connection,
//! untrusted certificate, 410 Gone), and what stops the queued ones
//! (deletion, deactivation). Secrets are applied at send time.

use std::time::{Duration, Instant};

use kamiyo_webhooks::config::Role;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;
use crate::receiver::{Behaviour, Reply, TestReceiver};

/// How much earlier than its delay a retry may reach the receiver: the first
/// attempt may pay for a TLS handshake that a retry on a pooled connection
/// does not.
const EARLY_SLACK: Duration = Duration::from_millis(30);
/// How much later than its delay a retry may come on a loaded machine.
const LATE_SLACK: Duration = Duration::from_millis(1000);

/// The one delivery of a webhook that received one exploit.
async fn only_delivery(app: &TestApp, hook: &Hook) -> i64 {
    let list = app.deliveries(hook).await;
    assert_eq!(list.len(), 1, "{list:?}");
    list[0]["id"].as_i64().unwrap()
}

async fn the_first_attempt_is_made_on_ingest_without_waiting_for_a_poll() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(&receiver, |cfg| cfg.poll_interval = Duration::from_secs(30)).await;
    let hook = app.hook_to(&receiver.url("/now")).await;
    // Let any start-up poll pass, so only ingestion can trigger the attempt.
    tokio::time::sleep(ms(300)).await;

    let start = Instant::now();
    app.ingest_one(exploit()).await;
    let got = receiver.wait_for("/now", 1, Duration::from_secs(10)).await;

    let waited = got[0].at - start;
    assert!(
        waited < Duration::from_secs(1),
        "the first attempt came {waited:?} after ingestion"
    );
    assert_signed_delivery(&got[0], &hook.secret, "exploit.detected");
}

async fn an_endpoint_that_always_fails_gets_one_attempt_plus_one_per_scheduled_delay_then_the_delivery_fails(
) {
    let schedule = [ms(300), ms(600), ms(900)];
    let receiver = TestReceiver::start().await;
    let app = spawn_app(&receiver, |cfg| cfg.retry_schedule = schedule.to_vec()).await;
    receiver.set("/fail", Behaviour::always(Reply::status(500)));
    let hook = app.hook_to(&receiver.url("/fail")).await;

    app.ingest_one(exploit()).await;
    let delivery = only_delivery(&app, &hook).await;
    let detail = app
        .wait_for_status(&hook, delivery, "failed", Duration::from_secs(15))
        .await;
    receiver
        .assert_stays_at("/fail", 4, Duration::from_millis(1200))
        .await;

    let got = receiver.requests("/fail");
    for req in &got {
        assert_eq!(
            req.delivery_id(),
            delivery,
            "the id is stable across retries"
        );
        assert_signed_delivery(req, &hook.secret, "exploit.detected");
        assert_eq!(req.body, got[0].body, "every attempt sends the same body");
    }
    for (i, delay) in schedule.iter().enumerate() {
        let gap = got[i + 1].at - got[i].at;
        assert!(
            gap + EARLY_SLACK >= *delay,
            "attempt {} came {gap:?} after attempt {}, before its {delay:?} delay",
            i + 2,
            i + 1
        );
        assert!(
            gap <= *delay + LATE_SLACK,
            "attempt {} came {gap:?} after attempt {}, far later than its {delay:?} delay",
            i + 2,
            i + 1
        );
    }
    assert_eq!(detail["attempts"], 4, "{detail}");
    assert_eq!(detail["status_code"], 500, "{detail}");
    assert_eq!(detail["next_attempt_at"], Value::Null, "{detail}");
    assert!(detail["error"].is_string(), "{detail}");
}

async fn an_endpoint_that_fails_twice_then_succeeds_gets_three_attempts_and_the_delivery_succeeds()
{
    let receiver = TestReceiver::start().await;
    let app = spawn_app(&receiver, |cfg| {
        cfg.retry_schedule = vec![ms(200), ms(200), ms(200)]
    })
    .await;
    receiver.set("/flaky", Behaviour::statuses(&[500, 503, 204]));
    let hook = app.hook_to(&receiver.url("/flaky")).await;

    app.ingest_one(exploit()).await;
    let delivery = only_delivery(&app, &hook).await;
    let detail = app
        .wait_for_status(&hook, delivery, "succeeded", Duration::from_secs(15))
        .await;
    receiver
        .assert_stays_at("/flaky", 3, Duration::from_millis(800))
        .await;

    assert_eq!(detail["attempts"], 3, "{detail}");
    assert_eq!(detail["status_code"], 204, "{detail}");
    assert!(detail["delivered_at"].is_string(), "{detail}");
    assert_eq!(detail["next_attempt_at"], Value::Null, "{detail}");
    for req in receiver.requests("/flaky") {
        assert_eq!(req.delivery_id(), delivery);
    }
}

async fn the_delivery_detail_shows_every_attempt_and_the_payload_sent() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(&receiver, |cfg| cfg.retry_schedule = vec![ms(150), ms(150)]).await;
    receiver.set(
        "/log",
        Behaviour::script(
            vec![
                Reply::status(500).body("first failure"),
                Reply::status(502).body("second failure"),
            ],
            Reply::ok().body("thanks"),
        ),
    );
    let hook = app.hook_to(&receiver.url("/log")).await;

    let exploit_id = app.ingest_one(exploit()).await;
    let delivery = only_delivery(&app, &hook).await;
    let detail = app
        .wait_for_status(&hook, delivery, "succeeded", Duration::from_secs(15))
        .await;

    let sent = receiver.requests("/log");
    assert_eq!(detail["id"], delivery);
    assert_eq!(detail["exploit_id"], exploit_id);
    assert_eq!(detail["event"], "exploit.detected");
    assert_eq!(
        detail["payload"].as_str(),
        Some(sent[0].text()),
        "payload is the exact body sent"
    );
    let log = attempt_log(&detail);
    assert_eq!(log.len(), 3, "{detail}");
    let expected = [
        (
            500,
            Value::from("http_status"),
            Value::from("first failure"),
        ),
        (
            502,
            Value::from("http_status"),
            Value::from("second failure"),
        ),
        (200, Value::Null, Value::from("thanks")),
    ];
    for (i, (entry, (status, kind, body))) in log.iter().zip(expected).enumerate() {
        assert_eq!(entry["attempt"], i + 1, "{entry}");
        assert_eq!(entry["status_code"], status, "{entry}");
        assert_eq!(entry["error_kind"], kind, "{entry}");
        assert_eq!(entry["response_body"], body, "{entry}");
        assert!(entry["started_at"].is_string(), "{entry}");
        assert!(
            entry["latency_ms"].as_i64().is_some_and(|l| l >= 0),
            "{entry}"
        );
        if kind.is_null() {
            assert_eq!(entry["error"], Value::Null, "{entry}");
        } else {
            assert!(entry["error"].is_string(), "{entry}");
        }
    }
}

async fn after_a_secret_rotation_queued_retries_are_signed_with_the_new_secret_only() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(&receiver, |cfg| {
        cfg.retry_schedule = vec![ms(1000), ms(300)]
    })
    .await;
    receiver.set("/rotate", Behaviour::statuses(&[500, 500, 200]));
    let hook = app.hook_to(&receiver.url("/rotate")).await;

    app.ingest_one(exploit()).await;
    let first = receiver
        .wait_for("/rotate", 1, Duration::from_secs(10))
        .await;
    let resp = app
        .user(
            &hook.key,
            Method::POST,
            &format!("{}/regenerate-secret", hook.path()),
        )
        .send()
        .await
        .unwrap();
    let rotated_at = Instant::now();
    let new_secret = json_body(resp, StatusCode::OK).await["secret"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(new_secret, hook.secret);
    let got = receiver
        .wait_for("/rotate", 3, Duration::from_secs(10))
        .await;
    assert!(
        rotated_at < got[1].at,
        "inconclusive: the rotation finished after the retry arrived"
    );

    assert_signed_delivery(&first[0], &hook.secret, "exploit.detected");
    for retry in &got[1..] {
        assert_signed_delivery(retry, &new_secret, "exploit.detected");
        assert!(
            !kamiyo_signature_matches(retry, &hook.secret),
            "a retry still verifies with the old secret"
        );
        assert!(
            !standard_signature_matches(retry, &hook.secret),
            "webhook-signature still carries a signature by the old secret"
        );
    }
}

/// A webhook with a failing endpoint whose first attempt has just arrived.
async fn failing_after_first_attempt(path: &str) -> (TestReceiver, TestApp, Hook, Instant) {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(&receiver, |cfg| {
        cfg.retry_schedule = vec![ms(500), ms(500), ms(500)]
    })
    .await;
    receiver.set(path, Behaviour::always(Reply::status(500)));
    let hook = app.hook_to(&receiver.url(path)).await;
    app.ingest_one(exploit()).await;
    let got = receiver.wait_for(path, 1, Duration::from_secs(10)).await;
    (receiver, app, hook, got[0].at)
}

async fn a_deleted_webhook_gets_no_further_attempts() {
    let (receiver, app, hook, first) = failing_after_first_attempt("/deleted").await;

    let resp = app
        .user(&hook.key, Method::DELETE, &hook.path())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(
        first.elapsed() < ms(450),
        "inconclusive: deleting took until the retry was due"
    );

    receiver
        .assert_stays_at("/deleted", 1, Duration::from_millis(2500))
        .await;
}

async fn a_deactivated_webhook_gets_no_further_attempts() {
    let (receiver, app, hook, first) = failing_after_first_attempt("/paused").await;

    let patched = app.patch_hook(&hook, json!({"is_active": false})).await;
    assert_eq!(patched["is_active"], false);
    assert!(
        first.elapsed() < ms(450),
        "inconclusive: deactivating took until the retry was due"
    );

    receiver
        .assert_stays_at("/paused", 1, Duration::from_millis(2500))
        .await;
}

/// Deactivating locks the webhook, then stops its queued deliveries; recording outcomes
/// locks deliveries and the webhook's health figures. Taken in opposite orders the two
/// can deadlock, and PostgreSQL then aborts one: the user's PATCH would fail with a 500.
async fn deactivating_while_outcomes_are_recorded_always_succeeds() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(&receiver, |cfg| cfg.retry_schedule = vec![ms(1); 200]).await;
    receiver.set("/busy", Behaviour::always(Reply::status(500)));
    for round in 0..40 {
        let hook = app.hook_to(&receiver.url("/busy")).await;
        let batch: Vec<Value> = (0..8).map(|_| exploit()).collect();
        app.ingest(Value::Array(batch)).await;
        let seen = receiver.count("/busy");
        eventually(
            Duration::from_secs(10),
            "attempts failing and being recorded",
            || {
                let receiver = &receiver;
                async move { receiver.count("/busy") >= seen + 16 }
            },
        )
        .await;
        let resp = app
            .user(&hook.key, Method::PATCH, &hook.path())
            .json(&json!({"is_active": false}))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, StatusCode::OK, "round {round}: {text}");
    }
}

async fn a_redirect_is_a_failed_attempt_and_is_not_followed() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(&receiver, |cfg| cfg.retry_schedule = vec![]).await;
    receiver.set(
        "/moved",
        Behaviour::always(Reply::redirect(&receiver.url("/target"))),
    );
    let hook = app.hook_to(&receiver.url("/moved")).await;

    app.ingest_one(exploit()).await;
    let delivery = only_delivery(&app, &hook).await;
    let detail = app
        .wait_for_status(&hook, delivery, "failed", Duration::from_secs(10))
        .await;

    assert_eq!(receiver.count("/moved"), 1);
    receiver
        .assert_stays_at("/target", 0, Duration::from_millis(300))
        .await;
    assert_eq!(detail["status_code"], 302, "{detail}");
    let log = attempt_log(&detail);
    assert_eq!(log.len(), 1, "{detail}");
    assert_eq!(log[0]["status_code"], 302, "{detail}");
    assert_eq!(log[0]["error_kind"], "redirect", "{detail}");
}

async fn an_answer_slower_than_the_delivery_timeout_is_a_timeout_without_a_status_code() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(&receiver, |cfg| {
        cfg.retry_schedule = vec![];
        cfg.delivery_timeout = ms(500);
    })
    .await;
    receiver.set("/slow", Behaviour::always(Reply::ok().after(ms(4000))));
    let hook = app.hook_to(&receiver.url("/slow")).await;

    let start = Instant::now();
    app.ingest_one(exploit()).await;
    let delivery = only_delivery(&app, &hook).await;
    let detail = app
        .wait_for_status(&hook, delivery, "failed", Duration::from_secs(10))
        .await;

    assert!(
        start.elapsed() < ms(3500),
        "the attempt was not cut off at the timeout: failed after {:?}",
        start.elapsed()
    );
    assert_eq!(detail["status_code"], Value::Null, "{detail}");
    let log = attempt_log(&detail);
    assert_eq!(log.len(), 1, "{detail}");
    assert_eq!(log[0]["error_kind"], "timeout", "{detail}");
    assert_eq!(log[0]["status_code"], Value::Null, "{detail}");
    assert!(log[0]["error"].is_string(), "{detail}");
}

async fn a_one_megabyte_answer_is_a_success_and_only_its_first_kibibyte_is_kept() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(&receiver, |cfg| cfg.retry_schedule = vec![]).await;
    receiver.set(
        "/big",
        Behaviour::always(Reply::ok().body(vec![b'x'; 1024 * 1024])),
    );
    let hook = app.hook_to(&receiver.url("/big")).await;

    app.ingest_one(exploit()).await;
    let delivery = only_delivery(&app, &hook).await;
    let detail = app
        .wait_for_status(&hook, delivery, "succeeded", Duration::from_secs(10))
        .await;

    let log = attempt_log(&detail);
    assert_eq!(log.len(), 1, "{detail}");
    assert_eq!(log[0]["status_code"], 200);
    let kept = log[0]["response_body"]
        .as_str()
        .unwrap_or_else(|| panic!("no response_body kept: {}", log[0]));
    assert!(
        !kept.is_empty() && kept.len() <= 1024,
        "kept {} bytes of the answer",
        kept.len()
    );
    assert!(
        kept.bytes().all(|b| b == b'x'),
        "kept text is not the answer's start"
    );
}

async fn a_refused_connection_is_a_connect_failure_without_a_status_code() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(&receiver, |cfg| cfg.retry_schedule = vec![]).await;
    let hook = app.hook_to(&closed_port_url()).await;

    app.ingest_one(exploit()).await;
    let delivery = only_delivery(&app, &hook).await;
    let detail = app
        .wait_for_status(&hook, delivery, "failed", Duration::from_secs(10))
        .await;

    assert_eq!(detail["status_code"], Value::Null, "{detail}");
    let log = attempt_log(&detail);
    assert_eq!(log.len(), 1, "{detail}");
    assert_eq!(log[0]["error_kind"], "connect", "{detail}");
    assert_eq!(log[0]["status_code"], Value::Null, "{detail}");
}

async fn an_untrusted_certificate_is_a_tls_failure() {
    let trusted = TestReceiver::start().await;
    let untrusted = TestReceiver::start().await;
    let app = spawn_app(&trusted, |cfg| cfg.retry_schedule = vec![]).await;
    let hook = app.hook_to(&untrusted.url("/mitm")).await;

    app.ingest_one(exploit()).await;
    let delivery = only_delivery(&app, &hook).await;
    let detail = app
        .wait_for_status(&hook, delivery, "failed", Duration::from_secs(10))
        .await;

    assert_eq!(untrusted.count("/mitm"), 0, "a request went through");
    assert_eq!(detail["status_code"], Value::Null, "{detail}");
    let log = attempt_log(&detail);
    assert_eq!(log[0]["error_kind"], "tls", "{detail}");
}

async fn gone_ends_the_delivery_and_deactivates_the_webhook_until_it_is_reactivated() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(&receiver, |cfg| cfg.retry_schedule = vec![ms(200), ms(200)]).await;
    receiver.set("/gone", Behaviour::always(Reply::status(410)));
    let hook = app.hook_to(&receiver.url("/gone")).await;

    app.ingest_one(exploit()).await;
    let delivery = only_delivery(&app, &hook).await;
    let detail = app
        .wait_for_status(&hook, delivery, "failed", Duration::from_secs(10))
        .await;
    receiver
        .assert_stays_at("/gone", 1, Duration::from_millis(800))
        .await;

    assert_eq!(detail["attempts"], 1, "410 is not retried: {detail}");
    assert_eq!(detail["status_code"], 410, "{detail}");
    assert_eq!(attempt_log(&detail)[0]["error_kind"], "gone", "{detail}");
    let webhook = app.get_hook(&hook).await;
    assert_eq!(webhook["is_active"], false, "{webhook}");
    assert!(
        webhook["disabled_reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "no disabled_reason: {webhook}"
    );

    // While deactivated, nothing is sent.
    app.ingest(exploit()).await;
    receiver
        .assert_stays_at("/gone", 1, Duration::from_millis(800))
        .await;

    let patched = app.patch_hook(&hook, json!({"is_active": true})).await;
    assert_eq!(patched["is_active"], true, "{patched}");
    assert_eq!(patched["disabled_reason"], Value::Null, "{patched}");
    let webhook = app.get_hook(&hook).await;
    assert_eq!(webhook["is_active"], true, "{webhook}");
    assert_eq!(webhook["disabled_reason"], Value::Null, "{webhook}");

    receiver.set("/gone", Behaviour::always(Reply::ok()));
    let exploit_id = app.ingest_one(exploit()).await;
    eventually(
        Duration::from_secs(10),
        "the reactivated webhook's delivery",
        || {
            let arrived = receiver
                .requests("/gone")
                .iter()
                .any(|r| r.json()["exploit"]["id"] == exploit_id);
            async move { arrived }
        },
    )
    .await;
}

async fn an_address_outside_the_allowed_networks_is_blocked_at_send_time() {
    let receiver = TestReceiver::start().await;
    // Created while loopback was allowed...
    let allowed = spawn_app(&receiver, |cfg| cfg.role = Role::Api).await;
    let hook = allowed.hook_to(&receiver.url("/guarded")).await;
    // ...and sent by a worker that no longer allows it.
    let db_url = allowed.database_url.clone();
    let app = spawn_app(&receiver, |cfg| {
        cfg.database_url = db_url;
        cfg.allow_private_networks = vec![];
        cfg.retry_schedule = vec![];
    })
    .await;

    app.ingest_one(exploit()).await;
    let delivery = only_delivery(&app, &hook).await;
    let detail = app
        .wait_for_status(&hook, delivery, "failed", Duration::from_secs(10))
        .await;

    assert_eq!(receiver.count("/guarded"), 0, "a request reached loopback");
    assert_eq!(detail["status_code"], Value::Null, "{detail}");
    assert_eq!(
        attempt_log(&detail)[0]["error_kind"],
        "blocked_address",
        "{detail}"
    );
}

/// Deliveries of one webhook that ended each way are listed and counted under their own
/// status filter, and the unfiltered list holds them all.
async fn the_status_filter_lists_and_counts_each_outcome_of_one_webhook() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(&receiver, |cfg| {
        // One attempt each: a 500 fails the delivery at once.
        cfg.retry_schedule = Vec::new();
        // The sixth stays in flight (pending) while the lists are read.
        cfg.delivery_timeout = Duration::from_secs(20);
        cfg.lease = Duration::from_secs(60);
    })
    .await;
    receiver.set(
        "/mixed",
        Behaviour::script(
            [200, 500, 200, 200, 500].map(Reply::status).to_vec(),
            Reply::never(),
        ),
    );
    let hook = app.hook_to(&receiver.url("/mixed")).await;
    for _ in 0..5 {
        app.ingest_one(exploit()).await;
    }
    eventually(
        Duration::from_secs(15),
        "five deliveries finished",
        || async {
            let list = app.deliveries(&hook).await;
            list.iter().filter(|d| d["status"] != "pending").count() == 5
        },
    )
    .await;
    // The sixth is in flight to an endpoint that does not answer: pending.
    app.ingest_one(exploit()).await;
    receiver
        .wait_for("/mixed", 6, Duration::from_secs(10))
        .await;

    for (status, expected) in [("succeeded", 3), ("failed", 2), ("pending", 1)] {
        let page = app
            .deliveries_page(&hook, &format!("?status={status}"))
            .await;
        assert_eq!(page["total"], expected, "{status}: {page}");
        let items = page["deliveries"].as_array().unwrap();
        assert_eq!(items.len(), expected, "{status}: {page}");
        assert!(
            items.iter().all(|d| d["status"] == status),
            "{status}: {page}"
        );
    }
    let second = app
        .deliveries_page(&hook, "?status=succeeded&page=2&page_size=2")
        .await;
    assert_eq!(second["total"], 3, "{second}");
    assert_eq!(
        second["deliveries"].as_array().unwrap().len(),
        1,
        "{second}"
    );
    let all = app.deliveries_page(&hook, "").await;
    assert_eq!(all["total"], 6, "{all}");
}

/// An `https://` URL on which nothing listens.
pub fn closed_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("https://127.0.0.1:{port}/nobody-home")
}

crate::backend_tests!(
    the_first_attempt_is_made_on_ingest_without_waiting_for_a_poll,
    an_endpoint_that_always_fails_gets_one_attempt_plus_one_per_scheduled_delay_then_the_delivery_fails,
    an_endpoint_that_fails_twice_then_succeeds_gets_three_attempts_and_the_delivery_succeeds,
    the_delivery_detail_shows_every_attempt_and_the_payload_sent,
    after_a_secret_rotation_queued_retries_are_signed_with_the_new_secret_only,
    a_deleted_webhook_gets_no_further_attempts,
    a_deactivated_webhook_gets_no_further_attempts,
    deactivating_while_outcomes_are_recorded_always_succeeds,
    a_redirect_is_a_failed_attempt_and_is_not_followed,
    an_answer_slower_than_the_delivery_timeout_is_a_timeout_without_a_status_code,
    a_one_megabyte_answer_is_a_success_and_only_its_first_kibibyte_is_kept,
    a_refused_connection_is_a_connect_failure_without_a_status_code,
    an_untrusted_certificate_is_a_tls_failure,
    gone_ends_the_delivery_and_deactivates_the_webhook_until_it_is_reactivated,
    an_address_outside_the_allowed_networks_is_blocked_at_send_time,
    the_status_filter_lists_and_counts_each_outcome_of_one_webhook,
);
