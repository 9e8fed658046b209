//! Tenant isolation: another user's webhook is indistinguishable from a
//! webhook that does not exist (404 `not_found`, never 403), on every route.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;

/// Every route that addresses one webhook: (method, path, body).
fn routes_for(id: i64) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (Method::GET, format!("{WEBHOOKS}/{id}"), None),
        (
            Method::PATCH,
            format!("{WEBHOOKS}/{id}"),
            Some(json!({"name": "hijacked", "is_active": false})),
        ),
        (Method::DELETE, format!("{WEBHOOKS}/{id}"), None),
        (
            Method::POST,
            format!("{WEBHOOKS}/{id}/regenerate-secret"),
            None,
        ),
        (Method::GET, format!("{WEBHOOKS}/{id}/deliveries"), None),
        (
            Method::GET,
            format!("{WEBHOOKS}/{id}/deliveries?page=1&page_size=10&status=pending"),
            None,
        ),
        (Method::POST, format!("{WEBHOOKS}/{id}/test"), None),
    ]
}

async fn assert_every_route_is_not_found(app: &TestApp, key: &str, id: i64) {
    for (method, path, body) in routes_for(id) {
        let mut request = app.user(key, method.clone(), &path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let resp = request.send().await.expect("send");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {path}: {text}");
        let err: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: {text}"));
        assert_eq!(err["error"]["code"], "not_found", "{method} {path}: {text}");
    }
}

async fn another_users_webhook_is_not_found_on_every_route() {
    let app = spawn_api_app().await;
    let (_, alice) = app.create_user("team").await;
    let (_, mallory) = app.create_user("enterprise").await;
    let created = app
        .create_webhook_ok(
            &alice,
            &json!({"name": "alice's", "url": HOOK_URL, "chains": ["ethereum"]}),
        )
        .await;
    let id = created["id"].as_i64().unwrap();
    app.ingest_new(&exploit(&unique_tx(), "ethereum", "uniswap", 10.0))
        .await;

    assert_every_route_is_not_found(&app, &mallory, id).await;

    // Nothing Mallory tried had any effect.
    let hook = app.get_webhook_ok(&alice, id).await;
    for field in [
        "name",
        "url",
        "chains",
        "is_active",
        "secret_hint",
        "updated_at",
    ] {
        assert_eq!(hook[field], created[field], "{field} changed: {hook}");
    }
    let deliveries = app.deliveries_ok(&alice, id, "").await;
    assert_eq!(deliveries["total"], 1, "{deliveries}");
    assert_eq!(app.list_webhooks(&mallory).await["total"], 0);
}

async fn another_users_webhook_is_not_listed() {
    let app = spawn_app().await;
    let (_, alice) = app.create_user("team").await;
    let (_, bob) = app.create_user("team").await;
    let alices = app.create_webhook_id(&alice, &webhook("alice's")).await;
    let bobs = app.create_webhook_id(&bob, &webhook("bob's")).await;

    let alice_list = app.list_webhooks(&alice).await;
    let bob_list = app.list_webhooks(&bob).await;

    assert_eq!(alice_list["total"], 1);
    assert_eq!(alice_list["webhooks"][0]["id"], alices);
    assert_eq!(bob_list["total"], 1);
    assert_eq!(bob_list["webhooks"][0]["id"], bobs);
}

async fn a_webhook_id_that_does_not_exist_is_not_found_on_every_route() {
    let app = spawn_app().await;
    let (_, key) = app.create_user("team").await;
    let existing = app.create_webhook_id(&key, &webhook("exists")).await;

    assert_every_route_is_not_found(&app, &key, existing + 1000).await;
}

async fn a_deleted_webhook_is_not_found_on_every_route() {
    let app = spawn_app().await;
    let (_, key) = app.create_user("team").await;
    let id = app.create_webhook_id(&key, &webhook("deleted")).await;
    assert_eq!(
        app.delete_webhook(&key, id).await.status(),
        StatusCode::NO_CONTENT
    );

    assert_every_route_is_not_found(&app, &key, id).await;
}

async fn every_key_of_a_user_sees_the_same_webhooks() {
    let app = spawn_app().await;
    let (user_id, first_key) = app.create_user("team").await;
    let second_key = app.create_api_key(user_id).await;
    assert_ne!(first_key, second_key);

    let id = app
        .create_webhook_id(&second_key, &webhook("made with key 2"))
        .await;

    let list = app.list_webhooks(&first_key).await;
    assert_eq!(list["total"], 1);
    assert_eq!(list["webhooks"][0]["id"], id);
    app.get_webhook_ok(&first_key, id).await;
}

async fn testing_another_users_webhook_is_not_found_and_sends_nothing() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app_reaching_loopback().await;
    let (_, alice) = app.create_user("team").await;
    let (_, mallory) = app.create_user("team").await;
    let id = app
        .create_webhook_id(&alice, &json!({"name": "alice's", "url": receiver.url}))
        .await;
    let path = format!("{WEBHOOKS}/{id}/test");

    // The route exists: the owner's test call reaches the receiver.
    let own = app.user(&alice, Method::POST, &path).send().await.unwrap();
    json_body(own, StatusCode::OK).await;
    wait_until(Duration::from_secs(5), "the owner's test request", || {
        receiver.count() == 1
    })
    .await;

    let stranger = app
        .user(&mallory, Method::POST, &path)
        .send()
        .await
        .unwrap();
    assert_not_found(stranger).await;
    let nonexistent = app
        .user(
            &alice,
            Method::POST,
            &format!("{WEBHOOKS}/{}/test", id + 1000),
        )
        .send()
        .await
        .unwrap();
    assert_not_found(nonexistent).await;
    // A second call by the owner is a barrier: the refused calls came first.
    let again = app.user(&alice, Method::POST, &path).send().await.unwrap();
    json_body(again, StatusCode::OK).await;
    wait_until(Duration::from_secs(5), "the second test request", || {
        receiver.count() >= 2
    })
    .await;
    assert_eq!(receiver.count(), 2, "a refused test call sent a request");
}

crate::backend_tests!(
    another_users_webhook_is_not_found_on_every_route,
    another_users_webhook_is_not_listed,
    a_webhook_id_that_does_not_exist_is_not_found_on_every_route,
    a_deleted_webhook_is_not_found_on_every_route,
    every_key_of_a_user_sees_the_same_webhooks,
    testing_another_users_webhook_is_not_found_and_sends_nothing,
);
