//! `GET /api/v1/user-webhooks/{id}/stats`: delivery attempts per hour for the dashboard's
//! chart, oldest hour first, empty hours included.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;

async fn stats(app: &TestApp, key: &str, id: i64, query: &str) -> reqwest::Response {
    app.user(key, Method::GET, &format!("{WEBHOOKS}/{id}/stats{query}"))
        .send()
        .await
        .expect("send stats")
}

async fn send_test(app: &TestApp, key: &str, id: i64) -> Value {
    let resp = app
        .user(key, Method::POST, &format!("{WEBHOOKS}/{id}/test"))
        .send()
        .await
        .expect("send test");
    json_body(resp, StatusCode::OK).await
}

fn start_of(bucket: &Value) -> chrono::NaiveDateTime {
    let text = bucket["start"].as_str().expect("start is a string");
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S")
        .unwrap_or_else(|e| panic!("start {text:?} is not YYYY-MM-DDTHH:MM:SS: {e}"))
}

async fn stats_count_succeeded_and_failed_attempts_per_hour_with_empty_hours() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app_reaching_loopback().await;
    let (_, key) = app.create_user("team").await;
    let good = app
        .create_webhook_id(&key, &json!({ "name": "up", "url": receiver.url }))
        .await;
    // A port nobody listens on: every attempt fails to connect.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let bad = app
        .create_webhook_id(
            &key,
            &json!({ "name": "down", "url": format!("http://127.0.0.1:{closed}/hook") }),
        )
        .await;
    assert_eq!(send_test(&app, &key, good).await["status"], "success");
    assert_eq!(send_test(&app, &key, good).await["status"], "success");
    assert_eq!(send_test(&app, &key, bad).await["status"], "failed");

    let body = json_body(stats(&app, &key, good, "").await, StatusCode::OK).await;
    assert_eq!(body["hours"], 24, "{body}");
    let buckets = body["buckets"].as_array().expect("buckets is an array");
    assert_eq!(buckets.len(), 24, "one bucket per hour: {body}");
    let starts: Vec<_> = buckets.iter().map(start_of).collect();
    for pair in starts.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            chrono::Duration::hours(1),
            "hourly, oldest first"
        );
    }
    let now = chrono::Utc::now().naive_utc();
    let last = *starts.last().unwrap();
    assert!(
        last <= now && now - last < chrono::Duration::hours(1),
        "ends with this hour"
    );
    assert_eq!(last.format("%M:%S").to_string(), "00:00", "whole hours");
    let current = buckets.last().unwrap();
    // The attempts happened a moment ago: in this hour, unless it just turned.
    let (ok, failed): (u64, u64) = buckets.iter().fold((0, 0), |(a, b), x| {
        (
            a + x["succeeded"].as_u64().unwrap(),
            b + x["failed"].as_u64().unwrap(),
        )
    });
    assert_eq!((ok, failed), (2, 0), "{body}");
    let busy: Vec<_> = buckets.iter().filter(|b| b["succeeded"] != 0).collect();
    assert!(
        busy.len() <= 2 && busy.iter().all(|b| b["mean_latency_ms"].is_number()),
        "{body}"
    );
    if current["succeeded"] == 2 {
        assert!(current["mean_latency_ms"].as_f64().unwrap() >= 0.0);
    }
    let quiet = buckets
        .iter()
        .filter(|b| b["succeeded"] == 0 && b["failed"] == 0);
    assert!(quiet.clone().count() >= 22, "{body}");
    assert!(
        quiet.into_iter().all(|b| b["mean_latency_ms"].is_null()),
        "{body}"
    );

    let body = json_body(stats(&app, &key, bad, "?hours=3").await, StatusCode::OK).await;
    assert_eq!(body["hours"], 3);
    let buckets = body["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 3, "{body}");
    let failed: u64 = buckets.iter().map(|b| b["failed"].as_u64().unwrap()).sum();
    let ok: u64 = buckets
        .iter()
        .map(|b| b["succeeded"].as_u64().unwrap())
        .sum();
    assert_eq!((ok, failed), (0, 1), "{body}");
}

async fn stats_follow_the_ownership_and_validation_rules() {
    let app = spawn_api_app().await;
    let (_, alice) = app.create_user("team").await;
    let (_, bob) = app.create_user("team").await;
    let hook = app.create_webhook_id(&alice, &webhook("mine")).await;

    assert_not_found(stats(&app, &bob, hook, "").await).await;
    assert_not_found(stats(&app, &alice, hook + 1000, "").await).await;
    assert_unauthorized(
        app.request(Method::GET, &format!("{WEBHOOKS}/{hook}/stats"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    for bad in ["0", "169", "x", "-1"] {
        assert_validation_error(
            stats(&app, &alice, hook, &format!("?hours={bad}")).await,
            "hours",
        )
        .await;
    }
    let week = json_body(
        stats(&app, &alice, hook, "?hours=168").await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(week["buckets"].as_array().unwrap().len(), 168);
    let one = json_body(stats(&app, &alice, hook, "?hours=1").await, StatusCode::OK).await;
    assert_eq!(
        one["buckets"],
        json!([{ "start": one["buckets"][0]["start"], "succeeded": 0, "failed": 0, "mean_latency_ms": null }])
    );
}

crate::backend_tests!(
    stats_count_succeeded_and_failed_attempts_per_hour_with_empty_hours,
    stats_follow_the_ownership_and_validation_rules,
);
