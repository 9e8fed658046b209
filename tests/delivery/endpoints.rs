//! The API around delivery: the test call, health figures, manual retry of
//! a past delivery, and the Prometheus metrics.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::*;
use crate::receiver::{Behaviour, Reply, TestReceiver};
use crate::retries::closed_port_url;

async fn call_test(app: &TestApp, hook: &Hook) -> Value {
    let resp = app
        .user(&hook.key, Method::POST, &format!("{}/test", hook.path()))
        .send()
        .await
        .expect("send test call");
    json_body(resp, StatusCode::OK).await
}

async fn the_test_call_sends_one_signed_test_event_and_reports_success() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(&receiver, |_| {}).await;
    let hook = app.hook_to(&receiver.url("/probe")).await;

    let answer = call_test(&app, &hook).await;

    assert_eq!(answer["status"], "success", "{answer}");
    assert_eq!(answer["status_code"], 200, "{answer}");
    assert_eq!(answer["error"], Value::Null, "{answer}");
    assert!(
        answer["latency_ms"].as_i64().is_some_and(|l| l >= 0),
        "{answer}"
    );
    let delivery_id = answer["delivery_id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no delivery_id: {answer}"));
    let got = receiver.requests("/probe");
    assert_eq!(got.len(), 1, "the test call sends exactly once");
    assert_signed_delivery(&got[0], &hook.secret, "webhook.test");
    assert_eq!(got[0].delivery_id(), delivery_id);
    assert_eq!(got[0].json()["event"], "webhook.test");
    assert!(got[0].json()["exploit"].is_object());

    let list = app.deliveries(&hook).await;
    let logged = list
        .iter()
        .find(|d| d["id"] == delivery_id)
        .unwrap_or_else(|| panic!("the test delivery is not logged: {list:?}"));
    assert_eq!(logged["event"], "webhook.test", "{logged}");
    assert_eq!(logged["status"], "succeeded", "{logged}");
}

async fn the_test_call_reports_a_failing_answer_and_is_not_retried() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(&receiver, |cfg| cfg.retry_schedule = vec![ms(100), ms(100)]).await;
    receiver.set("/probe", Behaviour::always(Reply::status(500)));
    let hook = app.hook_to(&receiver.url("/probe")).await;

    let answer = call_test(&app, &hook).await;

    assert_eq!(answer["status"], "failed", "{answer}");
    assert_eq!(answer["status_code"], 500, "{answer}");
    assert!(answer["error"].is_string(), "{answer}");
    assert!(answer["delivery_id"].is_i64(), "{answer}");
    receiver
        .assert_stays_at("/probe", 1, Duration::from_millis(800))
        .await;
}

async fn the_test_call_to_a_closed_port_reports_no_status_code() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(&receiver, |_| {}).await;
    let hook = app.hook_to(&closed_port_url()).await;

    let answer = call_test(&app, &hook).await;

    assert_eq!(answer["status"], "failed", "{answer}");
    assert_eq!(answer["status_code"], Value::Null, "{answer}");
    assert!(
        answer["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{answer}"
    );
    assert!(answer["latency_ms"].is_i64(), "{answer}");
}

async fn health_follows_a_known_mix_of_outcomes() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(&receiver, |cfg| cfg.retry_schedule = vec![]).await;
    receiver.set("/mixed", Behaviour::statuses(&[200, 200, 200, 500]));
    let hook = app.hook_to(&receiver.url("/mixed")).await;

    let fresh = app.get_hook(&hook).await["health"].clone();
    assert_eq!(fresh["status"], "no_data", "{fresh}");
    assert_eq!(fresh["success_rate_24h"], Value::Null, "{fresh}");
    assert_eq!(fresh["deliveries_24h"], 0, "{fresh}");
    assert_eq!(fresh["consecutive_failures"], 0, "{fresh}");

    // One at a time, so the outcomes land in script order.
    for n in 1..=4 {
        app.ingest_one(exploit()).await;
        app.wait_until_settled(&hook, n, Duration::from_secs(10))
            .await;
    }
    let health = app.get_hook(&hook).await["health"].clone();

    assert_eq!(health["deliveries_24h"], 4, "{health}");
    assert_eq!(health["success_rate_24h"], 0.75, "{health}");
    assert_eq!(health["success_rate_all_time"], 0.75, "{health}");
    assert_eq!(health["consecutive_failures"], 1, "{health}");
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(health["last_success_at"].is_string(), "{health}");
    assert!(health["last_failure_at"].is_string(), "{health}");
    assert!(
        health["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("500")),
        "last_error should name the 500: {health}"
    );
    assert!(
        health["mean_latency_ms_24h"]
            .as_f64()
            .is_some_and(|l| l >= 0.0),
        "{health}"
    );

    for n in 5..=6 {
        app.ingest_one(exploit()).await;
        app.wait_until_settled(&hook, n, Duration::from_secs(10))
            .await;
    }
    let health = app.get_hook(&hook).await["health"].clone();

    assert_eq!(health["deliveries_24h"], 6, "{health}");
    assert_eq!(health["success_rate_24h"], 0.5, "{health}");
    assert_eq!(health["consecutive_failures"], 3, "{health}");
    assert_eq!(health["status"], "failing", "{health}");
}

async fn a_manual_retry_sends_a_failed_delivery_again_with_the_same_delivery_id() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(&receiver, |cfg| cfg.retry_schedule = vec![]).await;
    receiver.set("/again", Behaviour::always(Reply::status(503)));
    let hook = app.hook_to(&receiver.url("/again")).await;
    app.ingest_one(exploit()).await;
    let list = app
        .wait_until_settled(&hook, 1, Duration::from_secs(10))
        .await;
    let delivery = list[0]["id"].as_i64().unwrap();
    assert_eq!(list[0]["status"], "failed", "{list:?}");

    receiver.set("/again", Behaviour::always(Reply::ok()));
    let resp = app
        .user(
            &hook.key,
            Method::POST,
            &format!("{}/deliveries/{delivery}/retry", hook.path()),
        )
        .send()
        .await
        .unwrap();
    let accepted = json_body(resp, StatusCode::ACCEPTED).await;
    assert_eq!(accepted["id"], delivery, "{accepted}");
    assert_eq!(accepted["status"], "pending", "{accepted}");

    let got = receiver
        .wait_for("/again", 2, Duration::from_secs(10))
        .await;
    assert_eq!(got[1].delivery_id(), delivery);
    assert_eq!(got[1].body, got[0].body, "the same body is sent again");
    assert_signed_delivery(&got[1], &hook.secret, "exploit.detected");
    let detail = app
        .wait_for_status(&hook, delivery, "succeeded", Duration::from_secs(10))
        .await;
    assert_eq!(detail["attempts"], 2, "{detail}");
    assert_eq!(attempt_log(&detail).len(), 2, "{detail}");
    assert_eq!(detail["status_code"], 200, "{detail}");
}

async fn the_metrics_endpoint_names_the_delivery_metrics() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app(&receiver, |_| {}).await;
    let hook = app.hook_to(&receiver.url("/counted")).await;
    app.ingest_one(exploit()).await;
    app.wait_until_settled(&hook, 1, Duration::from_secs(10))
        .await;

    let resp = app.request(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await.unwrap();

    for name in [
        "kamiyo_delivery_attempts_total",
        "kamiyo_delivery_latency_seconds",
        "kamiyo_delivery_queue_depth",
        "kamiyo_deliveries_in_flight",
        "kamiyo_deliveries_queued",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
    // The recorder is the process's: other tests' attempts count too, so at least one.
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("/metrics lacks {series}:\n{text}"))
    };
    assert!(value("kamiyo_delivery_attempts_total{outcome=\"success\"}") >= 1.0);
    assert!(value("kamiyo_delivery_latency_seconds_count") >= 1.0);
}

crate::backend_tests!(
    the_test_call_sends_one_signed_test_event_and_reports_success,
    the_test_call_reports_a_failing_answer_and_is_not_retried,
    the_test_call_to_a_closed_port_reports_no_status_code,
    health_follows_a_known_mix_of_outcomes,
    a_manual_retry_sends_a_failed_delivery_again_with_the_same_delivery_id,
    the_metrics_endpoint_names_the_delivery_metrics,
);
