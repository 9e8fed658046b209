//! Field validation of the webhook API: every rejection is a 422 whose
//! message names the field, and the limits themselves are accepted.

use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::*;

/// A valid webhook body with `field` set to `value`.
fn with(field: &str, value: Value) -> Value {
    let mut body = webhook("valid");
    body[field] = value;
    body
}

/// A valid webhook body without `field`.
fn without(field: &str) -> Value {
    let mut body = webhook("valid");
    body.as_object_mut().unwrap().remove(field);
    body
}

fn strings(n: usize) -> Value {
    Value::from((0..n).map(|i| format!("chain{i}")).collect::<Vec<_>>())
}

fn url_of_length(len: usize) -> String {
    let prefix = "https://hooks.example.com/";
    format!("{prefix}{}", "a".repeat(len - prefix.len()))
}

/// (what, body, field the message must start with)
fn invalid_create_bodies() -> Vec<(&'static str, Value, &'static str)> {
    vec![
        (
            "http url",
            with("url", json!("http://hooks.example.com/k")),
            "url",
        ),
        (
            "ftp url",
            with("url", json!("ftp://hooks.example.com/k")),
            "url",
        ),
        (
            "relative url",
            with("url", json!("/webhooks/kamiyo")),
            "url",
        ),
        ("not a url", with("url", json!("not a url")), "url"),
        ("empty url", with("url", json!("")), "url"),
        (
            "url with user and password",
            with("url", json!("https://user:pw@hooks.example.com/k")),
            "url",
        ),
        (
            "url with a user name",
            with("url", json!("https://user@hooks.example.com/k")),
            "url",
        ),
        (
            "url of 2049 chars",
            with("url", json!(url_of_length(2049))),
            "url",
        ),
        ("url as a number", with("url", json!(42)), "url"),
        ("url null", with("url", Value::Null), "url"),
        ("empty name", with("name", json!("")), "name"),
        (
            "name of 101 chars",
            with("name", json!("n".repeat(101))),
            "name",
        ),
        (
            "name of 101 multibyte chars",
            with("name", json!("é".repeat(101))),
            "name",
        ),
        ("name as a number", with("name", json!(7)), "name"),
        ("name null", with("name", Value::Null), "name"),
        (
            "negative min_amount_usd",
            with("min_amount_usd", json!(-1)),
            "min_amount_usd",
        ),
        (
            "slightly negative min_amount_usd",
            with("min_amount_usd", json!(-0.01)),
            "min_amount_usd",
        ),
        (
            "min_amount_usd as a string",
            with("min_amount_usd", json!("100")),
            "min_amount_usd",
        ),
        ("101 chains", with("chains", strings(101)), "chains"),
        (
            "an empty chain",
            with("chains", json!(["ethereum", ""])),
            "chains",
        ),
        (
            "a chain that is a number",
            with("chains", json!([1])),
            "chains",
        ),
        (
            "chains as a string",
            with("chains", json!("ethereum")),
            "chains",
        ),
        (
            "101 protocols",
            with("protocols", strings(101)),
            "protocols",
        ),
        (
            "an empty protocol",
            with("protocols", json!([""])),
            "protocols",
        ),
        (
            "protocols as an object",
            with("protocols", json!({"a": 1})),
            "protocols",
        ),
        (
            "101 categories",
            with("categories", strings(101)),
            "categories",
        ),
        (
            "an empty category",
            with("categories", json!([""])),
            "categories",
        ),
        (
            "a null category",
            with("categories", json!([null])),
            "categories",
        ),
        (
            "is_active as a string",
            with("is_active", json!("yes")),
            "is_active",
        ),
    ]
}

async fn creating_a_webhook_with_an_invalid_field_is_rejected_naming_the_field() {
    let app = spawn_app_with(|cfg| cfg.allow_http = false).await;
    let (_, key) = app.create_user("enterprise").await;

    for (what, body, field) in invalid_create_bodies() {
        let resp = app.create_webhook(&key, &body).await;
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{what}: {text}");
        let err: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}: {text}"));
        assert_eq!(err["error"]["code"], "validation_error", "{what}: {text}");
        let message = err["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with(field),
            "{what}: the message should start with {field:?}: {message:?}"
        );
    }
    assert_eq!(
        app.list_webhooks(&key).await["total"],
        0,
        "nothing was created"
    );
}

async fn creating_a_webhook_without_a_required_field_is_rejected_naming_it() {
    let app = spawn_app().await;
    let (_, key) = app.create_user("team").await;

    for field in ["name", "url"] {
        let resp = app.create_webhook(&key, &without(field)).await;
        let message =
            assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
        assert!(message.contains(field), "{field} missing: {message:?}");
    }
}

async fn creating_a_webhook_with_an_unknown_field_is_rejected_naming_it() {
    let app = spawn_app().await;
    let (_, key) = app.create_user("team").await;

    for (field, value) in [
        ("chain", json!(["ethereum"])),
        ("secret", json!("whsec_mine")),
        ("user_id", json!(1)),
    ] {
        let resp = app.create_webhook(&key, &with(field, value)).await;
        let message =
            assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
        assert!(message.contains(field), "unknown {field}: {message:?}");
    }
    assert_eq!(app.list_webhooks(&key).await["total"], 0);
}

async fn creating_a_webhook_at_the_limits_is_accepted() {
    let app = spawn_app_with(|cfg| cfg.allow_http = false).await;
    let (_, key) = app.create_user("enterprise").await;
    let long_url = url_of_length(2048);
    let wide_name = "é".repeat(100);

    let cases = [
        ("url of 2048 chars", with("url", json!(long_url))),
        ("name of 100 two-byte chars", with("name", json!(wide_name))),
        ("name of 1 char", with("name", json!("x"))),
        ("min_amount_usd of 0", with("min_amount_usd", json!(0))),
        (
            "fractional min_amount_usd",
            with("min_amount_usd", json!(0.5)),
        ),
        ("100 chains", with("chains", strings(100))),
        ("100 protocols", with("protocols", strings(100))),
        ("100 categories", with("categories", strings(100))),
        (
            "url with port and query",
            with("url", json!("https://hooks.example.com:8443/k?x=1")),
        ),
    ];
    for (what, body) in cases {
        let resp = app.create_webhook(&key, &body).await;
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{what}: {text}");
        let hook: Value = serde_json::from_str(&text).unwrap();
        for field in ["name", "url", "chains", "protocols", "categories"] {
            if let Some(sent) = body.get(field) {
                assert_eq!(&hook[field], sent, "{what}: {field} changed");
            }
        }
    }
}

async fn http_urls_are_accepted_only_when_allow_http_is_set() {
    let strict = spawn_app_with(|cfg| cfg.allow_http = false).await;
    let (_, key) = strict.create_user("team").await;
    let resp = strict
        .create_webhook(&key, &with("url", json!("http://hooks.example.com/k")))
        .await;
    assert_validation_error(resp, "url").await;

    let lax = spawn_app_with(|cfg| cfg.allow_http = true).await;
    let (_, key) = lax.create_user("team").await;
    let hook = lax
        .create_webhook_ok(&key, &with("url", json!("http://hooks.example.com/k")))
        .await;
    assert_eq!(hook["url"], "http://hooks.example.com/k");
    let resp = lax
        .create_webhook(&key, &with("url", json!("ftp://hooks.example.com/k")))
        .await;
    assert_validation_error(resp, "url").await;
}

async fn patching_a_webhook_is_validated_like_creating_one() {
    let app = spawn_app_with(|cfg| cfg.allow_http = false).await;
    let (_, key) = app.create_user("team").await;
    let created = app
        .create_webhook_ok(
            &key,
            &json!({"name": "original", "url": HOOK_URL, "chains": ["ethereum"], "min_amount_usd": 10}),
        )
        .await;
    let id = created["id"].as_i64().unwrap();

    let cases = [
        (json!({"url": "http://hooks.example.com/k"}), "url"),
        (json!({"url": "https://user:pw@hooks.example.com/k"}), "url"),
        (json!({"url": url_of_length(2049)}), "url"),
        (json!({"name": ""}), "name"),
        (json!({"name": "n".repeat(101)}), "name"),
        (json!({"min_amount_usd": -5}), "min_amount_usd"),
        (json!({"chains": [""]}), "chains"),
        (json!({"protocols": strings(101)}), "protocols"),
        (json!({"categories": "flash_loan"}), "categories"),
        (json!({"is_active": "no"}), "is_active"),
    ];
    for (body, field) in cases {
        let resp = app.patch_webhook(&key, id, &body).await;
        let message =
            assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
        assert!(message.starts_with(field), "{body}: {message:?}");
    }
    let resp = app
        .patch_webhook(&key, id, &json!({"chain": ["base"]}))
        .await;
    let message = assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    assert!(message.contains("chain"), "{message:?}");

    let fetched = app.get_webhook_ok(&key, id).await;
    for field in ["name", "url", "chains", "min_amount_usd", "is_active"] {
        assert_eq!(
            fetched[field], created[field],
            "a rejected PATCH changed {field}"
        );
    }
}

async fn malformed_json_is_a_400_in_the_error_shape() {
    let app = spawn_app().await;
    let (_, key) = app.create_user("team").await;
    let id = app.create_webhook_id(&key, &webhook("target")).await;

    let create = app
        .user(&key, Method::POST, WEBHOOKS)
        .header(CONTENT_TYPE, "application/json")
        .body(r#"{"name": "x", "url": "#)
        .send()
        .await
        .unwrap();
    assert_error(create, StatusCode::BAD_REQUEST, "malformed_json").await;

    let patch = app
        .user(&key, Method::PATCH, &format!("{WEBHOOKS}/{id}"))
        .header(CONTENT_TYPE, "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_error(patch, StatusCode::BAD_REQUEST, "malformed_json").await;
}

async fn a_body_that_is_not_an_object_is_a_422() {
    let app = spawn_app().await;
    let (_, key) = app.create_user("team").await;

    for body in [json!([webhook("in an array")]), json!("text"), json!(5)] {
        let resp = app.create_webhook(&key, &body).await;
        assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    }
}

async fn an_oversized_body_is_a_413() {
    let app = spawn_app().await;
    let (_, key) = app.create_user("team").await;
    // Just over the limit: a much larger body would still be in flight when the server
    // answers and closes, and the client would see a broken pipe instead of the 413.
    let limit = kamiyo_webhooks::config::Config::default().max_body_bytes;
    let body = with("name", json!("n".repeat(limit + 100))).to_string();

    let resp = app
        .user(&key, Method::POST, WEBHOOKS)
        .header(CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .expect("the server answers an oversized body");

    assert_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large").await;
}

async fn private_and_loopback_ip_literals_are_refused_unless_allowed() {
    let app = spawn_app().await;
    let (_, key) = app.create_user("enterprise").await;

    for url in [
        "https://127.0.0.1/hook",
        "https://10.1.2.3/hook",
        "https://192.168.0.10/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://100.64.0.1/hook",
        "https://0.0.0.0/hook",
        "https://[::1]/hook",
    ] {
        let resp = app.create_webhook(&key, &with("url", json!(url))).await;
        let message =
            assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
        assert!(message.starts_with("url"), "{url}: {message:?}");
    }
    let id = app.create_webhook_id(&key, &webhook("public")).await;
    let resp = app
        .patch_webhook(&key, id, &json!({"url": "https://127.0.0.1/hook"}))
        .await;
    assert_validation_error(resp, "url").await;

    let allowed = spawn_app_reaching_loopback().await;
    let (_, key) = allowed.create_user("team").await;
    let hook = allowed
        .create_webhook_ok(&key, &with("url", json!("http://127.0.0.1:9/hook")))
        .await;
    assert_eq!(hook["url"], "http://127.0.0.1:9/hook");
}

crate::backend_tests!(
    creating_a_webhook_with_an_invalid_field_is_rejected_naming_the_field,
    creating_a_webhook_without_a_required_field_is_rejected_naming_it,
    creating_a_webhook_with_an_unknown_field_is_rejected_naming_it,
    creating_a_webhook_at_the_limits_is_accepted,
    http_urls_are_accepted_only_when_allow_http_is_set,
    patching_a_webhook_is_validated_like_creating_one,
    malformed_json_is_a_400_in_the_error_shape,
    a_body_that_is_not_an_object_is_a_422,
    an_oversized_body_is_a_413,
    private_and_loopback_ip_literals_are_refused_unless_allowed,
);
