//! Happy paths of the webhook CRUD API, including PATCH's null semantics.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

fn full_webhook() -> Value {
    json!({
        "name": "Production Alert System",
        "url": HOOK_URL,
        "min_amount_usd": 100000,
        "chains": ["ethereum", "arbitrum"],
        "protocols": ["uniswap", "aave"],
        "categories": ["flash_loan"],
    })
}

async fn creating_a_webhook_returns_201_with_the_webhook_and_its_secret() {
    let app = spawn_app().await;
    let (_, key) = app.create_user("team").await;

    let hook = app.create_webhook_ok(&key, &full_webhook()).await;

    assert!(hook["id"].as_i64().is_some(), "integer id: {hook}");
    assert_eq!(hook["name"], "Production Alert System");
    assert_eq!(hook["url"], HOOK_URL);
    assert_eq!(hook["min_amount_usd"].as_f64(), Some(100000.0), "{hook}");
    assert_eq!(hook["chains"], json!(["ethereum", "arbitrum"]));
    assert_eq!(hook["protocols"], json!(["uniswap", "aave"]));
    assert_eq!(hook["categories"], json!(["flash_loan"]));
    assert_eq!(hook["is_active"], true);
    assert_eq!(hook.get("disabled_reason"), Some(&Value::Null), "{hook}");
    assert_recent_utc_timestamp(&hook, "created_at");
    assert_recent_utc_timestamp(&hook, "updated_at");

    let secret = hook["secret"].as_str().expect("secret is a string");
    assert_secret_format(secret);
    let hint = hook["secret_hint"]
        .as_str()
        .expect("secret_hint is a string");
    assert!(
        !hint.contains(&secret["whsec_".len()..]),
        "the hint {hint:?} reveals the secret"
    );
}

async fn a_webhook_created_without_filters_has_null_filters_and_is_active() {
    let app = spawn_app().await;
    let (_, key) = app.create_user("team").await;

    let hook = app.create_webhook_ok(&key, &webhook("plain")).await;

    for field in ["min_amount_usd", "chains", "protocols", "categories"] {
        assert_eq!(hook.get(field), Some(&Value::Null), "{field}: {hook}");
    }
    assert_eq!(hook["is_active"], true);
}

async fn empty_filter_lists_are_stored_as_null() {
    let app = spawn_app().await;
    let (_, key) = app.create_user("team").await;

    let created = app
        .create_webhook_ok(
            &key,
            &json!({"name": "empty lists", "url": HOOK_URL,
                    "chains": [], "protocols": [], "categories": []}),
        )
        .await;
    let id = created["id"].as_i64().unwrap();
    let fetched = app.get_webhook_ok(&key, id).await;

    for hook in [&created, &fetched] {
        for field in ["chains", "protocols", "categories"] {
            assert_eq!(hook.get(field), Some(&Value::Null), "{field}: {hook}");
        }
    }
}

async fn a_webhook_can_be_created_inactive() {
    let app = spawn_app().await;
    let (_, key) = app.create_user("team").await;

    let hook = app
        .create_webhook_ok(
            &key,
            &json!({"name": "paused", "url": HOOK_URL, "is_active": false}),
        )
        .await;

    assert_eq!(hook["is_active"], false);
    let fetched = app.get_webhook_ok(&key, hook["id"].as_i64().unwrap()).await;
    assert_eq!(fetched["is_active"], false);
}

async fn listing_webhooks_returns_all_of_the_users_webhooks_without_secrets() {
    let app = spawn_app().await;
    let (_, key) = app.create_user("team").await;
    let first = app.create_webhook_ok(&key, &full_webhook()).await;
    let second = app.create_webhook_ok(&key, &webhook("second")).await;

    let list = app.list_webhooks(&key).await;

    assert_eq!(list["total"], 2, "{list}");
    let items = list["webhooks"].as_array().expect("webhooks is an array");
    assert_eq!(items.len(), 2, "{list}");
    let mut ids: Vec<i64> = items.iter().map(|w| w["id"].as_i64().unwrap()).collect();
    ids.sort_unstable();
    let mut expected = vec![
        first["id"].as_i64().unwrap(),
        second["id"].as_i64().unwrap(),
    ];
    expected.sort_unstable();
    assert_eq!(ids, expected);

    let body = list.to_string();
    for (created, item_name) in [(&first, "Production Alert System"), (&second, "second")] {
        let secret = created["secret"].as_str().unwrap();
        assert!(
            !body.contains(&secret["whsec_".len()..]),
            "list leaks a secret: {body}"
        );
        let item = items.iter().find(|w| w["id"] == created["id"]).unwrap();
        assert!(
            item.get("secret").is_none(),
            "list item has a secret key: {item}"
        );
        assert_eq!(item["name"], item_name);
        assert!(item["secret_hint"].is_string(), "{item}");
        assert!(item["is_active"].is_boolean(), "{item}");
    }
}

async fn listing_webhooks_of_a_user_without_any_returns_an_empty_list() {
    let app = spawn_app().await;
    let (_, key) = app.create_user("free").await;

    let list = app.list_webhooks(&key).await;

    assert_eq!(list, json!({"webhooks": [], "total": 0}));
}

async fn getting_a_webhook_returns_it_with_health_and_without_its_secret() {
    let app = spawn_app().await;
    let (_, key) = app.create_user("team").await;
    let created = app.create_webhook_ok(&key, &full_webhook()).await;
    let id = created["id"].as_i64().unwrap();

    let hook = app.get_webhook_ok(&key, id).await;

    assert!(hook.get("secret").is_none(), "GET shows the secret: {hook}");
    let secret = created["secret"].as_str().unwrap();
    assert!(
        !hook.to_string().contains(&secret["whsec_".len()..]),
        "{hook}"
    );
    assert!(hook["health"].is_object(), "health object missing: {hook}");
    assert_eq!(hook["id"], created["id"]);
    for field in [
        "name",
        "url",
        "min_amount_usd",
        "chains",
        "protocols",
        "categories",
        "is_active",
        "secret_hint",
        "created_at",
    ] {
        assert_eq!(hook[field], created[field], "{field} differs: {hook}");
    }
}

async fn patching_with_absent_fields_leaves_them_unchanged() {
    let app = spawn_app().await;
    let (_, key) = app.create_user("team").await;
    let created = app.create_webhook_ok(&key, &full_webhook()).await;
    let id = created["id"].as_i64().unwrap();

    let resp = app
        .patch_webhook(&key, id, &json!({"name": "renamed"}))
        .await;
    let patched = json_body(resp, StatusCode::OK).await;

    assert_eq!(patched["name"], "renamed");
    for field in [
        "url",
        "min_amount_usd",
        "chains",
        "protocols",
        "categories",
        "is_active",
        "created_at",
    ] {
        assert_eq!(patched[field], created[field], "{field} changed: {patched}");
    }
    assert!(
        patched.get("secret").is_none(),
        "PATCH shows the secret: {patched}"
    );
    let updated = patched["updated_at"].as_str().unwrap();
    assert!(
        updated >= created["updated_at"].as_str().unwrap(),
        "{patched}"
    );

    let fetched = app.get_webhook_ok(&key, id).await;
    assert_eq!(fetched["name"], "renamed");
    assert_eq!(fetched["chains"], created["chains"]);
}

async fn patching_an_empty_object_changes_nothing() {
    let app = spawn_app().await;
    let (_, key) = app.create_user("team").await;
    let created = app.create_webhook_ok(&key, &full_webhook()).await;
    let id = created["id"].as_i64().unwrap();

    let patched = json_body(
        app.patch_webhook(&key, id, &json!({})).await,
        StatusCode::OK,
    )
    .await;

    for field in [
        "name",
        "url",
        "min_amount_usd",
        "chains",
        "protocols",
        "categories",
        "is_active",
    ] {
        assert_eq!(patched[field], created[field], "{field} changed: {patched}");
    }
}

async fn patching_filters_with_null_or_empty_lists_clears_them() {
    let app = spawn_app().await;
    let (_, key) = app.create_user("team").await;
    let created = app.create_webhook_ok(&key, &full_webhook()).await;
    let id = created["id"].as_i64().unwrap();

    let resp = app
        .patch_webhook(
            &key,
            id,
            &json!({"min_amount_usd": null, "chains": null, "protocols": [], "categories": null}),
        )
        .await;
    let patched = json_body(resp, StatusCode::OK).await;
    let fetched = app.get_webhook_ok(&key, id).await;

    for hook in [&patched, &fetched] {
        for field in ["min_amount_usd", "chains", "protocols", "categories"] {
            assert_eq!(
                hook.get(field),
                Some(&Value::Null),
                "{field} not cleared: {hook}"
            );
        }
        assert_eq!(hook["name"], created["name"]);
        assert_eq!(hook["url"], created["url"]);
        assert_eq!(hook["is_active"], true);
    }
}

async fn patching_one_filter_with_null_keeps_the_others() {
    let app = spawn_app().await;
    let (_, key) = app.create_user("team").await;
    let created = app.create_webhook_ok(&key, &full_webhook()).await;
    let id = created["id"].as_i64().unwrap();

    let resp = app.patch_webhook(&key, id, &json!({"chains": null})).await;
    let patched = json_body(resp, StatusCode::OK).await;

    assert_eq!(patched.get("chains"), Some(&Value::Null), "{patched}");
    assert_eq!(patched["protocols"], created["protocols"]);
    assert_eq!(patched["categories"], created["categories"]);
    assert_eq!(patched["min_amount_usd"], created["min_amount_usd"]);
}

async fn patching_sets_new_values_and_they_persist() {
    let app = spawn_app().await;
    let (_, key) = app.create_user("team").await;
    let id = app.create_webhook_id(&key, &webhook("before")).await;

    let resp = app
        .patch_webhook(
            &key,
            id,
            &json!({
                "name": "after",
                "url": "https://other.example.com/hook",
                "min_amount_usd": 500000,
                "chains": ["base"],
                "protocols": ["curve"],
                "categories": ["reentrancy"],
                "is_active": false,
            }),
        )
        .await;
    let patched = json_body(resp, StatusCode::OK).await;
    let fetched = app.get_webhook_ok(&key, id).await;

    for hook in [&patched, &fetched] {
        assert_eq!(hook["name"], "after");
        assert_eq!(hook["url"], "https://other.example.com/hook");
        assert_eq!(hook["min_amount_usd"].as_f64(), Some(500000.0), "{hook}");
        assert_eq!(hook["chains"], json!(["base"]));
        assert_eq!(hook["protocols"], json!(["curve"]));
        assert_eq!(hook["categories"], json!(["reentrancy"]));
        assert_eq!(hook["is_active"], false);
    }
}

async fn patching_name_url_or_is_active_with_null_is_rejected() {
    let app = spawn_app().await;
    let (_, key) = app.create_user("team").await;
    let created = app.create_webhook_ok(&key, &full_webhook()).await;
    let id = created["id"].as_i64().unwrap();

    for field in ["name", "url", "is_active"] {
        let resp = app.patch_webhook(&key, id, &json!({ field: null })).await;
        assert_validation_error(resp, field).await;
    }

    let fetched = app.get_webhook_ok(&key, id).await;
    assert_eq!(fetched["name"], created["name"]);
    assert_eq!(fetched["url"], created["url"]);
    assert_eq!(fetched["is_active"], true);
}

async fn deleting_a_webhook_returns_204_and_it_is_gone() {
    let app = spawn_app().await;
    let (_, key) = app.create_user("team").await;
    let kept = app.create_webhook_id(&key, &webhook("kept")).await;
    let doomed = app.create_webhook_id(&key, &webhook("doomed")).await;

    let resp = app.delete_webhook(&key, doomed).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);

    assert_not_found(app.get_webhook(&key, doomed).await).await;
    assert_not_found(app.delete_webhook(&key, doomed).await).await;
    let list = app.list_webhooks(&key).await;
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["webhooks"][0]["id"], kept);
}

async fn regenerating_the_secret_returns_a_new_secret() {
    let app = spawn_app().await;
    let (_, key) = app.create_user("team").await;
    let created = app.create_webhook_ok(&key, &webhook("rotate me")).await;
    let id = created["id"].as_i64().unwrap();
    let original = created["secret"].as_str().unwrap().to_owned();

    let first = json_body(app.regenerate_secret(&key, id).await, StatusCode::OK).await;
    let second = json_body(app.regenerate_secret(&key, id).await, StatusCode::OK).await;

    let first = first["secret"]
        .as_str()
        .expect("secret is a string")
        .to_owned();
    let second = second["secret"]
        .as_str()
        .expect("secret is a string")
        .to_owned();
    assert_secret_format(&first);
    assert_secret_format(&second);
    assert_ne!(first, original);
    assert_ne!(second, first);
    let fetched = app.get_webhook_ok(&key, id).await;
    assert!(fetched.get("secret").is_none(), "{fetched}");
    assert!(
        !fetched.to_string().contains(&second["whsec_".len()..]),
        "{fetched}"
    );
}

async fn every_created_webhook_gets_its_own_secret() {
    let app = spawn_app().await;
    let (_, key) = app.create_user("team").await;

    let a = app.create_webhook_ok(&key, &webhook("a")).await;
    let b = app.create_webhook_ok(&key, &webhook("b")).await;

    assert_ne!(a["secret"], b["secret"]);
    assert_ne!(a["id"], b["id"]);
}

crate::backend_tests!(
    creating_a_webhook_returns_201_with_the_webhook_and_its_secret,
    a_webhook_created_without_filters_has_null_filters_and_is_active,
    empty_filter_lists_are_stored_as_null,
    a_webhook_can_be_created_inactive,
    listing_webhooks_returns_all_of_the_users_webhooks_without_secrets,
    listing_webhooks_of_a_user_without_any_returns_an_empty_list,
    getting_a_webhook_returns_it_with_health_and_without_its_secret,
    patching_with_absent_fields_leaves_them_unchanged,
    patching_an_empty_object_changes_nothing,
    patching_filters_with_null_or_empty_lists_clears_them,
    patching_one_filter_with_null_keeps_the_others,
    patching_sets_new_values_and_they_persist,
    patching_name_url_or_is_active_with_null_is_rejected,
    deleting_a_webhook_returns_204_and_it_is_gone,
    regenerating_the_secret_returns_a_new_secret,
    every_created_webhook_gets_its_own_secret,
);
