//! The delivery log of a webhook: shape of queued deliveries, order,
//! pagination and the status filter. The app runs without its delivery
//! worker, so queued deliveries stay pending.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::helpers::*;

/// An API-only app with a team user owning one unfiltered webhook.
async fn app_with_a_webhook() -> (TestApp, String, i64) {
    let app = spawn_api_app().await;
    let (_, key) = app.create_user("team").await;
    let hook = app.create_webhook_id(&key, &webhook("log me")).await;
    (app, key, hook)
}

/// Ingests `n` exploits one call at a time; returns their ids in order.
async fn ingest_several(app: &TestApp, n: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    for i in 0..n {
        let amount = 1000.0 * (i + 1) as f64;
        ids.push(
            app.ingest_new(&exploit(&unique_tx(), "ethereum", "aave", amount))
                .await,
        );
    }
    ids
}

async fn a_queued_delivery_is_listed_as_pending_with_nothing_sent_yet() {
    let (app, key, hook) = app_with_a_webhook().await;
    let exploit_id = app.ingest_new(&full_exploit()).await;

    let page = app.deliveries_ok(&key, hook, "").await;

    assert_eq!(page["total"], 1, "{page}");
    assert_eq!(page["page"], 1, "{page}");
    assert_eq!(page["page_size"], 50, "{page}");
    let delivery = &page["deliveries"][0];
    assert!(delivery["id"].as_i64().is_some(), "{delivery}");
    assert_eq!(delivery["exploit_id"], exploit_id);
    assert_eq!(delivery["event"], "exploit.detected");
    assert_eq!(delivery["status"], "pending");
    assert_eq!(delivery["attempts"], 0);
    for field in [
        "status_code",
        "sent_at",
        "delivered_at",
        "error",
        "latency_ms",
    ] {
        assert_eq!(
            delivery.get(field),
            Some(&Value::Null),
            "{field}: {delivery}"
        );
    }
    assert!(delivery.get("next_attempt_at").is_some(), "{delivery}");
}

async fn a_webhook_without_deliveries_has_an_empty_log() {
    let (app, key, hook) = app_with_a_webhook().await;

    let page = app.deliveries_ok(&key, hook, "").await;

    assert_eq!(
        page,
        json!({"deliveries": [], "total": 0, "page": 1, "page_size": 50})
    );
}

async fn deliveries_are_listed_newest_first() {
    let (app, key, hook) = app_with_a_webhook().await;
    let ids = ingest_several(&app, 3).await;

    let page = app.deliveries_ok(&key, hook, "").await;

    let newest_first: Vec<i64> = ids.iter().rev().copied().collect();
    assert_eq!(exploit_ids(&page), newest_first, "{page}");
    let delivery_ids: Vec<i64> = page["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    let mut sorted = delivery_ids.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(delivery_ids, sorted, "delivery ids descend: {page}");
}

async fn deliveries_are_paginated_without_gaps_or_overlaps() {
    let (app, key, hook) = app_with_a_webhook().await;
    let ids = ingest_several(&app, 5).await;

    let mut seen = Vec::new();
    for (page_number, expected_len) in [(1, 2), (2, 2), (3, 1), (4, 0)] {
        let page = app
            .deliveries_ok(&key, hook, &format!("?page={page_number}&page_size=2"))
            .await;
        assert_eq!(page["total"], 5, "page {page_number}: {page}");
        assert_eq!(page["page"], page_number, "{page}");
        assert_eq!(page["page_size"], 2, "{page}");
        let on_page = exploit_ids(&page);
        assert_eq!(on_page.len(), expected_len, "page {page_number}: {page}");
        seen.extend(on_page);
    }

    let newest_first: Vec<i64> = ids.iter().rev().copied().collect();
    assert_eq!(seen, newest_first);
}

async fn page_size_may_range_from_1_to_100() {
    let (app, key, hook) = app_with_a_webhook().await;
    ingest_several(&app, 2).await;

    let smallest = app.deliveries_ok(&key, hook, "?page_size=1").await;
    assert_eq!(exploit_ids(&smallest).len(), 1, "{smallest}");
    assert_eq!(smallest["page_size"], 1);
    assert_eq!(smallest["total"], 2);

    let largest = app.deliveries_ok(&key, hook, "?page_size=100").await;
    assert_eq!(exploit_ids(&largest).len(), 2, "{largest}");
    assert_eq!(largest["page_size"], 100);
}

async fn out_of_range_paging_is_a_422_naming_the_parameter() {
    let (app, key, hook) = app_with_a_webhook().await;

    for (query, field) in [
        ("?page_size=0", "page_size"),
        ("?page_size=101", "page_size"),
        ("?page_size=-1", "page_size"),
        ("?page=0", "page"),
        ("?page=-1", "page"),
        ("?page=0&page_size=10", "page"),
    ] {
        let resp = app.deliveries(&key, hook, query).await;
        let message = assert_validation_error(resp, field).await;
        if field == "page" {
            assert!(!message.starts_with("page_size"), "{query}: {message:?}");
        }
    }
}

async fn deliveries_can_be_filtered_by_status() {
    let (app, key, hook) = app_with_a_webhook().await;
    let ids: BTreeSet<i64> = ingest_several(&app, 3).await.into_iter().collect();

    let pending = app.deliveries_ok(&key, hook, "?status=pending").await;
    assert_eq!(pending["total"], 3, "{pending}");
    assert_eq!(
        exploit_ids(&pending).into_iter().collect::<BTreeSet<_>>(),
        ids
    );
    for status in ["succeeded", "failed"] {
        let page = app
            .deliveries_ok(&key, hook, &format!("?status={status}"))
            .await;
        assert_eq!(page["total"], 0, "{status}: {page}");
        assert_eq!(page["deliveries"], json!([]), "{status}: {page}");
    }
    let combined = app
        .deliveries_ok(&key, hook, "?status=pending&page=2&page_size=2")
        .await;
    assert_eq!(combined["total"], 3, "{combined}");
    assert_eq!(exploit_ids(&combined).len(), 1, "{combined}");
}

async fn an_unknown_status_filter_is_a_422_naming_status() {
    let (app, key, hook) = app_with_a_webhook().await;

    for query in ["?status=bogus", "?status=PENDING_", "?status=sent"] {
        let resp = app.deliveries(&key, hook, query).await;
        assert_validation_error(resp, "status").await;
    }
}

async fn each_webhook_sees_only_its_own_deliveries() {
    let app = spawn_api_app().await;
    let (_, key) = app.create_user("team").await;
    let on_ethereum = app
        .create_webhook_id(
            &key,
            &json!({"name": "eth", "url": HOOK_URL, "chains": ["ethereum"]}),
        )
        .await;
    let on_base = app
        .create_webhook_id(
            &key,
            &json!({"name": "base", "url": HOOK_URL, "chains": ["base"]}),
        )
        .await;

    let eth_exploit = app
        .ingest_new(&exploit(&unique_tx(), "ethereum", "aave", 1.0))
        .await;
    let base_exploit = app
        .ingest_new(&exploit(&unique_tx(), "base", "aave", 1.0))
        .await;

    let eth_page = app.deliveries_ok(&key, on_ethereum, "").await;
    let base_page = app.deliveries_ok(&key, on_base, "").await;
    assert_eq!(exploit_ids(&eth_page), vec![eth_exploit]);
    assert_eq!(exploit_ids(&base_page), vec![base_exploit]);
}

/// Without a status filter the log holds every delivery whatever its status, newest
/// first across statuses, and its total is all of them (on SQLite the page is merged
/// from one index per status).
async fn an_unfiltered_log_interleaves_all_statuses_newest_first() {
    use kamiyo_webhooks::store::{AttemptRecord, AttemptResult, DeliveryStatus, Page};

    let dir = tempfile::tempdir().unwrap();
    let (_db, store, hook) = store_with_one_webhook(dir.path(), "log").await;
    let (now, claimed) = crate::helpers::ingest_and_claim_all(&store, 9).await;
    assert_eq!(claimed.len(), 9);
    // Ids in order: succeeded, failed, pending, succeeded, failed, pending, ...
    let status_of = |i: usize| {
        [
            DeliveryStatus::Succeeded,
            DeliveryStatus::Failed,
            DeliveryStatus::Pending,
        ][i % 3]
    };
    let records: Vec<AttemptRecord> = claimed
        .iter()
        .enumerate()
        .map(|(i, d)| AttemptRecord {
            delivery_id: d.id,
            webhook_id: hook.id,
            attempt: 1,
            started_at_ms: now,
            latency_ms: 2,
            status_code: Some(if i % 3 == 0 { 200 } else { 503 }),
            error_kind: (i % 3 != 0).then_some("http_status"),
            error: (i % 3 != 0).then(|| "HTTP 503".to_string()),
            response_body: None,
            result: match status_of(i) {
                DeliveryStatus::Succeeded => AttemptResult::Succeeded,
                DeliveryStatus::Failed => AttemptResult::Failed,
                DeliveryStatus::Pending => AttemptResult::RetryAt(now + 3_600_000),
            },
        })
        .collect();
    store.record_attempts(&records).await.unwrap();

    let mut listed = Vec::new();
    for page in 1..=5 {
        let (deliveries, total) = store
            .list_deliveries(hook.id, None, Page { page, page_size: 2 })
            .await
            .unwrap();
        assert_eq!(total, 9, "page {page}");
        listed.extend(deliveries.iter().map(|d| (d.id, d.status)));
    }
    let expected: Vec<(i64, DeliveryStatus)> = claimed
        .iter()
        .enumerate()
        .map(|(i, d)| (d.id, status_of(i)))
        .rev()
        .collect();
    assert_eq!(listed, expected);
    for status in [
        DeliveryStatus::Pending,
        DeliveryStatus::Succeeded,
        DeliveryStatus::Failed,
    ] {
        let (deliveries, total) = store
            .list_deliveries(
                hook.id,
                Some(status),
                Page {
                    page: 1,
                    page_size: 50,
                },
            )
            .await
            .unwrap();
        assert_eq!((deliveries.len(), total), (3, 3), "{status:?}");
    }
}

crate::backend_tests!(
    an_unfiltered_log_interleaves_all_statuses_newest_first,
    a_queued_delivery_is_listed_as_pending_with_nothing_sent_yet,
    a_webhook_without_deliveries_has_an_empty_log,
    deliveries_are_listed_newest_first,
    deliveries_are_paginated_without_gaps_or_overlaps,
    page_size_may_range_from_1_to_100,
    out_of_range_paging_is_a_422_naming_the_parameter,
    deliveries_can_be_filtered_by_status,
    an_unknown_status_filter_is_a_422_naming_status,
    each_webhook_sees_only_its_own_deliveries,
);
