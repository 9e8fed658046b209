//! The operator API: users, their tiers and keys; its token; and the
//! operational endpoints.

use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;

/// Every admin route: (method, path, body).
fn admin_routes(user_id: i64) -> Vec<(Method, String, Value)> {
    vec![
        (
            Method::POST,
            ADMIN_USERS.to_owned(),
            json!({"name": "eve", "tier": "team"}),
        ),
        (
            Method::PATCH,
            format!("{ADMIN_USERS}/{user_id}"),
            json!({"tier": "enterprise"}),
        ),
        (
            Method::POST,
            format!("{ADMIN_USERS}/{user_id}/api-keys"),
            json!({}),
        ),
        (
            Method::POST,
            EXPLOITS.to_owned(),
            exploit(&unique_tx(), "ethereum", "aave", 1.0),
        ),
    ]
}

async fn assert_every_admin_route_fails(
    app: &TestApp,
    user_id: i64,
    authorize: impl Fn(RequestBuilder) -> RequestBuilder,
    status: StatusCode,
    code: &str,
    what: &str,
) {
    for (method, path, body) in admin_routes(user_id) {
        let resp = authorize(app.request(method.clone(), &path))
            .json(&body)
            .send()
            .await
            .expect("send");
        let actual = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(actual, status, "{what}: {method} {path}: {text}");
        let err: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: {text}"));
        assert_eq!(
            err["error"]["code"], code,
            "{what}: {method} {path}: {text}"
        );
    }
}

async fn creating_a_user_returns_201_with_an_api_key() {
    let app = spawn_app().await;

    let user = app.create_user_named("alice", "team").await;

    assert!(user["id"].as_i64().is_some(), "{user}");
    assert_eq!(user["name"], "alice");
    assert_eq!(user["tier"], "team");
    let key = user["api_key"].as_str().expect("api_key is a string");
    assert!(key.len() >= 16, "api key too short to be secret: {key:?}");
    assert_eq!(app.list_webhooks(key).await["total"], 0, "the key works");
}

async fn every_tier_can_be_given_and_each_user_gets_its_own_id_and_key() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    let mut keys = Vec::new();

    for tier in ["free", "pro", "team", "enterprise"] {
        let user = app.create_user_named(&format!("{tier}-user"), tier).await;
        assert_eq!(user["tier"], tier);
        ids.push(user["id"].as_i64().unwrap());
        keys.push(user["api_key"].as_str().unwrap().to_owned());
    }

    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 4, "ids are distinct");
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 4, "keys are distinct");
}

async fn creating_a_user_with_an_unknown_tier_is_a_422_naming_tier() {
    let app = spawn_app().await;

    for tier in [json!("gold"), json!(""), json!(3), Value::Null] {
        let resp = app
            .admin(Method::POST, ADMIN_USERS)
            .json(&json!({"name": "bob", "tier": tier}))
            .send()
            .await
            .unwrap();
        assert_validation_error(resp, "tier").await;
    }
}

async fn creating_a_user_without_a_name_is_a_422() {
    let app = spawn_app().await;

    let resp = app
        .admin(Method::POST, ADMIN_USERS)
        .json(&json!({"tier": "team"}))
        .send()
        .await
        .unwrap();

    let message = assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    assert!(message.contains("name"), "{message:?}");
}

async fn malformed_json_to_the_admin_api_is_a_400() {
    let app = spawn_app().await;

    let resp = app
        .admin(Method::POST, ADMIN_USERS)
        .header(CONTENT_TYPE, "application/json")
        .body(r#"{"name": "alice", "tier": "team""#)
        .send()
        .await
        .unwrap();

    assert_error(resp, StatusCode::BAD_REQUEST, "malformed_json").await;
}

async fn changing_a_users_tier_returns_the_user() {
    let app = spawn_app().await;
    let created = app.create_user_named("carol", "team").await;
    let id = created["id"].as_i64().unwrap();

    let user = json_body(app.set_tier(id, "enterprise").await, StatusCode::OK).await;

    assert_eq!(user["id"], id);
    assert_eq!(user["name"], "carol");
    assert_eq!(user["tier"], "enterprise");
    assert!(user["created_at"].is_string(), "{user}");
}

async fn changing_the_tier_of_an_unknown_user_is_a_404() {
    let app = spawn_app().await;
    let (id, _) = app.create_user("team").await;

    assert_not_found(app.set_tier(id + 1000, "enterprise").await).await;
}

async fn changing_a_tier_to_an_unknown_tier_is_a_422_and_changes_nothing() {
    let app = spawn_app().await;
    let (id, key) = app.create_user("free").await;

    assert_validation_error(app.set_tier(id, "platinum").await, "tier").await;

    let resp = app.create_webhook(&key, &webhook("still free")).await;
    assert_error(resp, StatusCode::FORBIDDEN, "tier_limit").await;
}

async fn a_second_api_key_works_alongside_the_first() {
    let app = spawn_app().await;
    let (id, first) = app.create_user("team").await;

    let second = app.create_api_key(id).await;

    assert_ne!(first, second);
    app.create_webhook_ok(&second, &webhook("via second key"))
        .await;
    assert_eq!(app.list_webhooks(&first).await["total"], 1);
    assert_eq!(app.list_webhooks(&second).await["total"], 1);
}

async fn creating_a_key_for_an_unknown_user_is_a_404() {
    let app = spawn_app().await;
    let (id, _) = app.create_user("team").await;

    let resp = app
        .admin(
            Method::POST,
            &format!("{ADMIN_USERS}/{}/api-keys", id + 1000),
        )
        .send()
        .await
        .unwrap();

    assert_not_found(resp).await;
}

async fn admin_calls_without_the_admin_token_are_unauthorized() {
    let app = spawn_app().await;
    let (id, user_key) = app.create_user("team").await;
    let wrong = format!("{}x", app.admin_token);
    let unauthorized = StatusCode::UNAUTHORIZED;

    assert_every_admin_route_fails(&app, id, |r| r, unauthorized, "unauthorized", "no token").await;
    assert_every_admin_route_fails(
        &app,
        id,
        |r| r.bearer_auth(&wrong),
        unauthorized,
        "unauthorized",
        "wrong token",
    )
    .await;
    assert_every_admin_route_fails(
        &app,
        id,
        |r| r.bearer_auth(&user_key),
        unauthorized,
        "unauthorized",
        "a user's api key",
    )
    .await;

    // None of the refused calls had an effect: the user is still team.
    for i in 0..5 {
        app.create_webhook_ok(&user_key, &webhook(&format!("h{i}")))
            .await;
    }
    let resp = app.create_webhook(&user_key, &webhook("sixth")).await;
    assert_error(resp, StatusCode::FORBIDDEN, "tier_limit").await;
}

async fn every_admin_call_is_refused_while_the_admin_token_is_unset() {
    let app = spawn_app_with(|cfg| cfg.admin_token = None).await;
    let forbidden = StatusCode::FORBIDDEN;
    let token = app.admin_token.clone();

    assert_every_admin_route_fails(&app, 1, |r| r, forbidden, "admin_disabled", "no token").await;
    assert_every_admin_route_fails(
        &app,
        1,
        |r| r.bearer_auth(&token),
        forbidden,
        "admin_disabled",
        "some token",
    )
    .await;
    assert_every_admin_route_fails(
        &app,
        1,
        |r| r.bearer_auth(""),
        forbidden,
        "admin_disabled",
        "empty token",
    )
    .await;
}

async fn health_and_readiness_answer_200() {
    let app = spawn_app().await;

    for path in ["/healthz", "/readyz"] {
        let resp = app.request(Method::GET, path).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
    }
}

crate::backend_tests!(
    creating_a_user_returns_201_with_an_api_key,
    every_tier_can_be_given_and_each_user_gets_its_own_id_and_key,
    creating_a_user_with_an_unknown_tier_is_a_422_naming_tier,
    creating_a_user_without_a_name_is_a_422,
    malformed_json_to_the_admin_api_is_a_400,
    changing_a_users_tier_returns_the_user,
    changing_the_tier_of_an_unknown_user_is_a_404,
    changing_a_tier_to_an_unknown_tier_is_a_422_and_changes_nothing,
    a_second_api_key_works_alongside_the_first,
    creating_a_key_for_an_unknown_user_is_a_404,
    admin_calls_without_the_admin_token_are_unauthorized,
    every_admin_call_is_refused_while_the_admin_token_is_unset,
    health_and_readiness_answer_200,
);
