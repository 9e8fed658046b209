//! The public API documentation: the OpenAPI document and the HTML docs.

use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::*;

async fn the_openapi_document_is_public_and_describes_the_webhook_api() {
    let app = spawn_app().await;

    let resp = app
        .request(Method::GET, &format!("{WEBHOOKS}/openapi.json"))
        .send()
        .await
        .unwrap();

    let doc: Value = json_body(resp, StatusCode::OK).await;
    assert!(doc["openapi"].is_string(), "no openapi version: {doc}");
    let paths = doc["paths"].as_object().expect("paths is an object");
    assert!(
        paths.contains_key(WEBHOOKS),
        "paths: {:?}",
        paths.keys().collect::<Vec<_>>()
    );
    assert!(
        paths
            .keys()
            .any(|p| p.starts_with(&format!("{WEBHOOKS}/{{"))),
        "the per-webhook routes are documented: {:?}",
        paths.keys().collect::<Vec<_>>()
    );
}

async fn assert_html(app: &TestApp, path: &str) {
    let resp = app.request(Method::GET, path).send().await.unwrap();
    let status = resp.status();
    let content_type = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = resp.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    assert!(
        content_type.starts_with("text/html"),
        "{path}: content-type {content_type:?}"
    );
    assert!(
        body.to_lowercase().contains("<html"),
        "{path}: not HTML: {body}"
    );
}

async fn the_html_docs_are_public() {
    let app = spawn_app().await;

    assert_html(&app, &format!("{WEBHOOKS}/docs/")).await;
    assert_html(&app, &format!("{WEBHOOKS}/docs")).await;
}

crate::backend_tests!(
    the_openapi_document_is_public_and_describes_the_webhook_api,
    the_html_docs_are_public,
);
