//! Authentication of the user API: no key, an unknown key, another scheme or
//! the admin token are all 401 `unauthorized`, before anything else is looked at.

use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};

use crate::helpers::*;

/// Every user route: (method, path, body).
fn user_routes(id: i64) -> Vec<(Method, String, Option<Value>)> {
    vec![
        (Method::GET, WEBHOOKS.to_owned(), None),
        (Method::POST, WEBHOOKS.to_owned(), Some(webhook("x"))),
        (Method::GET, format!("{WEBHOOKS}/{id}"), None),
        (
            Method::PATCH,
            format!("{WEBHOOKS}/{id}"),
            Some(json!({"name": "y"})),
        ),
        (Method::DELETE, format!("{WEBHOOKS}/{id}"), None),
        (
            Method::POST,
            format!("{WEBHOOKS}/{id}/regenerate-secret"),
            None,
        ),
        (Method::GET, format!("{WEBHOOKS}/{id}/deliveries"), None),
        (Method::POST, format!("{WEBHOOKS}/{id}/test"), None),
    ]
}

async fn assert_every_user_route_is_unauthorized(
    app: &TestApp,
    id: i64,
    authorize: impl Fn(RequestBuilder) -> RequestBuilder,
    what: &str,
) {
    for (method, path, body) in user_routes(id) {
        let mut request = authorize(app.request(method.clone(), &path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let resp = request.send().await.expect("send");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status.as_u16(), 401, "{what}: {method} {path}: {text}");
        let err: Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: {text}"));
        assert_eq!(
            err["error"]["code"], "unauthorized",
            "{what}: {method} {path}: {text}"
        );
    }
}

/// An app with one team user owning one webhook; returns (app, key, webhook id).
async fn app_with_a_webhook() -> (TestApp, String, i64) {
    let app = spawn_app().await;
    let (_, key) = app.create_user("team").await;
    let id = app.create_webhook_id(&key, &webhook("target")).await;
    (app, key, id)
}

async fn requests_without_an_api_key_are_unauthorized() {
    let (app, _, id) = app_with_a_webhook().await;

    assert_every_user_route_is_unauthorized(&app, id, |r| r, "no header").await;
}

async fn requests_with_an_unknown_api_key_are_unauthorized() {
    let (app, key, id) = app_with_a_webhook().await;
    let unknown = format!("{key}x");

    assert_every_user_route_is_unauthorized(&app, id, |r| r.bearer_auth(&unknown), "unknown key")
        .await;
    assert_every_user_route_is_unauthorized(&app, id, |r| r.bearer_auth(""), "empty key").await;
}

async fn a_key_sent_with_another_scheme_is_unauthorized() {
    let (app, key, id) = app_with_a_webhook().await;

    let header = format!("Basic {key}");
    assert_every_user_route_is_unauthorized(
        &app,
        id,
        |r| r.header("Authorization", &header),
        "basic scheme",
    )
    .await;
    assert_every_user_route_is_unauthorized(
        &app,
        id,
        |r| r.header("Authorization", &key),
        "no scheme",
    )
    .await;
}

async fn the_admin_token_is_not_a_user_api_key() {
    let (app, _, id) = app_with_a_webhook().await;
    let admin = app.admin_token.clone();

    assert_every_user_route_is_unauthorized(&app, id, |r| r.bearer_auth(&admin), "admin token")
        .await;
}

async fn unauthorized_requests_change_nothing() {
    let (app, key, id) = app_with_a_webhook().await;
    let mut before = app.get_webhook_ok(&key, id).await;
    before.as_object_mut().unwrap().remove("health");

    assert_every_user_route_is_unauthorized(&app, id, |r| r.bearer_auth("wrong"), "wrong").await;

    let mut after = app.get_webhook_ok(&key, id).await;
    after.as_object_mut().unwrap().remove("health");
    assert_eq!(before, after);
    assert_eq!(app.list_webhooks(&key).await["total"], 1);
}

crate::backend_tests!(
    requests_without_an_api_key_are_unauthorized,
    requests_with_an_unknown_api_key_are_unauthorized,
    a_key_sent_with_another_scheme_is_unauthorized,
    the_admin_token_is_not_a_user_api_key,
    unauthorized_requests_change_nothing,
);
