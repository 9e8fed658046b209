//! Webhook limits per tier: free 0, pro 0, team 5, enterprise 50.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

async fn fill(app: &TestApp, key: &str, count: usize) -> Vec<i64> {
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        ids.push(
            app.create_webhook_id(key, &webhook(&format!("hook {i}")))
                .await,
        );
    }
    ids
}

async fn free_and_pro_users_cannot_create_webhooks_and_are_told_to_upgrade_to_team() {
    let app = spawn_app().await;

    for tier in ["free", "pro"] {
        let (_, key) = app.create_user(tier).await;
        let resp = app.create_webhook(&key, &webhook("nope")).await;
        let message = assert_error(resp, StatusCode::FORBIDDEN, "tier_limit").await;
        assert!(
            message.to_lowercase().contains("team"),
            "{tier}: the message should name the team tier: {message:?}"
        );
        assert_eq!(app.list_webhooks(&key).await["total"], 0);
    }
}

async fn a_team_user_can_create_five_webhooks_and_not_a_sixth() {
    let app = spawn_app().await;
    let (_, key) = app.create_user("team").await;

    fill(&app, &key, 5).await;
    let resp = app.create_webhook(&key, &webhook("sixth")).await;

    let message = assert_error(resp, StatusCode::FORBIDDEN, "tier_limit").await;
    assert!(
        message.to_lowercase().contains("enterprise"),
        "the message should name the enterprise tier: {message:?}"
    );
    assert_eq!(app.list_webhooks(&key).await["total"], 5);
}

async fn an_enterprise_user_can_create_fifty_webhooks_and_not_a_fifty_first() {
    let app = spawn_app().await;
    let (_, key) = app.create_user("enterprise").await;

    fill(&app, &key, 50).await;
    let resp = app.create_webhook(&key, &webhook("fifty-first")).await;

    assert_error(resp, StatusCode::FORBIDDEN, "tier_limit").await;
    assert_eq!(app.list_webhooks(&key).await["total"], 50);
}

async fn deleting_a_webhook_frees_its_slot() {
    let app = spawn_app().await;
    let (_, key) = app.create_user("team").await;
    let ids = fill(&app, &key, 5).await;

    let resp = app.delete_webhook(&key, ids[2]).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);

    app.create_webhook_ok(&key, &webhook("replacement")).await;
    let resp = app.create_webhook(&key, &webhook("one too many")).await;
    assert_error(resp, StatusCode::FORBIDDEN, "tier_limit").await;
}

async fn inactive_webhooks_count_towards_the_limit() {
    let app = spawn_app().await;
    let (_, key) = app.create_user("team").await;
    for i in 0..5 {
        let mut body = webhook(&format!("paused {i}"));
        body["is_active"] = Value::Bool(false);
        app.create_webhook_ok(&key, &body).await;
    }

    let resp = app.create_webhook(&key, &webhook("sixth")).await;

    assert_error(resp, StatusCode::FORBIDDEN, "tier_limit").await;
}

async fn upgrading_a_team_user_to_enterprise_raises_the_limit() {
    let app = spawn_app().await;
    let (user_id, key) = app.create_user("team").await;
    fill(&app, &key, 5).await;

    let user = json_body(app.set_tier(user_id, "enterprise").await, StatusCode::OK).await;
    assert_eq!(user["tier"], "enterprise");

    app.create_webhook_ok(&key, &webhook("sixth")).await;
    assert_eq!(app.list_webhooks(&key).await["total"], 6);
}

async fn upgrading_a_free_user_to_team_lets_them_create_webhooks() {
    let app = spawn_app().await;
    let (user_id, key) = app.create_user("free").await;
    let resp = app.create_webhook(&key, &webhook("too early")).await;
    assert_error(resp, StatusCode::FORBIDDEN, "tier_limit").await;

    json_body(app.set_tier(user_id, "team").await, StatusCode::OK).await;

    app.create_webhook_ok(&key, &webhook("now allowed")).await;
}

async fn the_limit_is_per_user() {
    let app = spawn_app().await;
    let (_, alice) = app.create_user("team").await;
    let (_, bob) = app.create_user("team").await;
    fill(&app, &alice, 5).await;

    app.create_webhook_ok(&bob, &webhook("bob's first")).await;
}

async fn concurrent_creates_never_exceed_the_tier_limit() {
    let app = spawn_app().await;
    // Several rounds, each with a fresh user one below the limit.
    for round in 0..3 {
        let (_, key) = app.create_user("team").await;
        fill(&app, &key, 4).await;

        let attempts: Vec<_> = (0..10)
            .map(|i| {
                let request = app
                    .user(&key, reqwest::Method::POST, WEBHOOKS)
                    .json(&webhook(&format!("racer {i}")));
                tokio::spawn(async move {
                    let resp = request.send().await.expect("send create");
                    let status = resp.status();
                    let body: Value = resp.json().await.unwrap_or(Value::Null);
                    (status, body)
                })
            })
            .collect();
        let mut created = 0;
        let mut refused = 0;
        let mut other = Vec::new();
        for attempt in attempts {
            let (status, body) = attempt.await.expect("the request task");
            match status {
                StatusCode::CREATED => created += 1,
                StatusCode::FORBIDDEN if body["error"]["code"] == "tier_limit" => refused += 1,
                _ => other.push((status, body)),
            }
        }

        assert!(
            other.is_empty(),
            "round {round}: unexpected answers {other:?}"
        );
        assert_eq!(created, 1, "round {round}: exactly one create may win");
        assert_eq!(refused, 9, "round {round}");
        assert_eq!(app.list_webhooks(&key).await["total"], 5, "round {round}");
    }
}

crate::backend_tests!(
    free_and_pro_users_cannot_create_webhooks_and_are_told_to_upgrade_to_team,
    a_team_user_can_create_five_webhooks_and_not_a_sixth,
    an_enterprise_user_can_create_fifty_webhooks_and_not_a_fifty_first,
    deleting_a_webhook_frees_its_slot,
    inactive_webhooks_count_towards_the_limit,
    upgrading_a_team_user_to_enterprise_raises_the_limit,
    upgrading_a_free_user_to_team_lets_them_create_webhooks,
    the_limit_is_per_user,
    concurrent_creates_never_exceed_the_tier_limit,
);
