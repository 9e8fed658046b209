//! Which webhooks an exploit is queued for: a table of webhooks with
//! different filters against a table of exploits.

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::*;

struct Exploit {
    label: &'static str,
    chain: &'static str,
    protocol: &'static str,
    category: Option<&'static str>,
    amount_usd: f64,
}

const EXPLOITS_TABLE: &[Exploit] = &[
    Exploit {
        label: "e0",
        chain: "ethereum",
        protocol: "uniswap",
        category: Some("flash_loan"),
        amount_usd: 250_000.0,
    },
    Exploit {
        label: "e1",
        chain: "Arbitrum",
        protocol: "aave",
        category: Some("reentrancy"),
        amount_usd: 100_000.0,
    },
    Exploit {
        label: "e2",
        chain: "Base",
        protocol: "Uniswap",
        category: None,
        amount_usd: 99_999.99,
    },
    Exploit {
        label: "e3",
        chain: "Ethereum",
        protocol: "compound",
        category: Some("flash_loan"),
        amount_usd: 50_000.0,
    },
    Exploit {
        label: "e4",
        chain: "ETHEREUM",
        protocol: "curve",
        category: Some("Flash_Loan"),
        amount_usd: 49_999.99,
    },
    Exploit {
        label: "e5",
        chain: "polygon",
        protocol: "AAVE",
        category: Some("oracle_manipulation"),
        amount_usd: 0.0,
    },
];

/// (webhook name, filters, indices of the exploits it must receive)
fn webhook_table() -> Vec<(&'static str, Value, &'static [usize])> {
    vec![
        ("no filters", json!({}), &[0, 1, 2, 3, 4, 5]),
        (
            "empty lists",
            json!({"chains": [], "protocols": [], "categories": []}),
            &[0, 1, 2, 3, 4, 5],
        ),
        (
            "null filters",
            json!({"min_amount_usd": null, "chains": null}),
            &[0, 1, 2, 3, 4, 5],
        ),
        (
            "min zero",
            json!({"min_amount_usd": 0}),
            &[0, 1, 2, 3, 4, 5],
        ),
        (
            "min 100k inclusive",
            json!({"min_amount_usd": 100000}),
            &[0, 1],
        ),
        (
            "ethereum or arbitrum",
            json!({"chains": ["ethereum", "arbitrum"]}),
            &[0, 1, 3, 4],
        ),
        ("upper-case chain filter", json!({"chains": ["BASE"]}), &[2]),
        ("uniswap", json!({"protocols": ["Uniswap"]}), &[0, 2]),
        (
            "flash loans",
            json!({"categories": ["flash_loan"]}),
            &[0, 3, 4],
        ),
        (
            "ethereum flash loans from 50k",
            json!({"min_amount_usd": 50000, "chains": ["ETHEREUM"], "categories": ["flash_loan"]}),
            &[0, 3],
        ),
        (
            "aave or curve on polygon or arbitrum",
            json!({"protocols": ["aave", "curve"], "chains": ["polygon", "arbitrum"]}),
            &[1, 5],
        ),
        ("nothing matches", json!({"chains": ["solana"]}), &[]),
        ("inactive", json!({"is_active": false}), &[]),
    ]
}

async fn each_exploit_is_queued_for_exactly_the_active_webhooks_whose_filters_match() {
    let app = spawn_api_app().await;
    let (_, key) = app.create_user("enterprise").await;
    let table = webhook_table();
    let mut hook_ids = Vec::new();
    for (name, filters, _) in &table {
        let mut body = filters.clone();
        body["name"] = json!(name);
        body["url"] = json!(HOOK_URL);
        hook_ids.push(app.create_webhook_id(&key, &body).await);
    }
    // Webhooks that were active once: deactivated and deleted before ingest.
    let paused = app.create_webhook_id(&key, &webhook("paused later")).await;
    let resp = app
        .patch_webhook(&key, paused, &json!({"is_active": false}))
        .await;
    json_body(resp, StatusCode::OK).await;
    let deleted = app.create_webhook_id(&key, &webhook("deleted later")).await;
    assert_eq!(
        app.delete_webhook(&key, deleted).await.status(),
        StatusCode::NO_CONTENT
    );

    let batch: Vec<Value> = EXPLOITS_TABLE
        .iter()
        .map(|e| {
            let mut body = exploit(&unique_tx(), e.chain, e.protocol, e.amount_usd);
            if let Some(category) = e.category {
                body["category"] = json!(category);
            }
            body
        })
        .collect();
    let answer = app.ingest(&Value::from(batch)).await;

    let results = answer["results"].as_array().expect("results");
    assert_eq!(results.len(), EXPLOITS_TABLE.len(), "{answer}");
    let exploit_ids: Vec<i64> = results.iter().map(accepted_id).collect();
    for (i, exploit) in EXPLOITS_TABLE.iter().enumerate() {
        let expected = table
            .iter()
            .filter(|(_, _, hits)| hits.contains(&i))
            .count();
        assert_eq!(
            results[i]["matched"], expected,
            "{}: matched count: {answer}",
            exploit.label
        );
    }
    for ((name, _, hits), hook) in table.iter().zip(&hook_ids) {
        let page = app.deliveries_ok(&key, *hook, "").await;
        let received: BTreeSet<i64> = crate::helpers::exploit_ids(&page).into_iter().collect();
        let expected: BTreeSet<i64> = hits.iter().map(|&i| exploit_ids[i]).collect();
        let labels = |ids: &BTreeSet<i64>| -> Vec<&str> {
            ids.iter()
                .map(|id| EXPLOITS_TABLE[exploit_ids.iter().position(|x| x == id).unwrap()].label)
                .collect()
        };
        assert_eq!(
            received,
            expected,
            "webhook {name:?} received {:?}, expected {:?}",
            labels(&received),
            labels(&expected)
        );
        assert_eq!(page["total"], hits.len(), "webhook {name:?}: {page}");
    }
    assert_eq!(app.deliveries_ok(&key, paused, "").await["total"], 0);
}

async fn clearing_a_filter_with_null_lets_later_exploits_through() {
    let app = spawn_api_app().await;
    let (_, key) = app.create_user("team").await;
    let hook = app
        .create_webhook_id(
            &key,
            &json!({"name": "whales", "url": HOOK_URL, "min_amount_usd": 1000000, "chains": ["solana"]}),
        )
        .await;
    let missed = app
        .ingest_one(&exploit(&unique_tx(), "ethereum", "aave", 10.0))
        .await;
    assert_eq!(missed["matched"], 0, "{missed}");

    let resp = app
        .patch_webhook(&key, hook, &json!({"min_amount_usd": null, "chains": null}))
        .await;
    json_body(resp, StatusCode::OK).await;
    let caught = app
        .ingest_one(&exploit(&unique_tx(), "ethereum", "aave", 10.0))
        .await;

    assert_eq!(caught["matched"], 1, "{caught}");
    let page = app.deliveries_ok(&key, hook, "").await;
    assert_eq!(exploit_ids(&page), vec![accepted_id(&caught)]);
}

async fn reactivating_a_webhook_resumes_deliveries_without_the_ones_it_missed() {
    let app = spawn_api_app().await;
    let (_, key) = app.create_user("team").await;
    let hook = app
        .create_webhook_id(
            &key,
            &json!({"name": "paused", "url": HOOK_URL, "is_active": false}),
        )
        .await;
    let missed = app
        .ingest_one(&exploit(&unique_tx(), "ethereum", "aave", 10.0))
        .await;
    assert_eq!(missed["matched"], 0, "{missed}");

    let resp = app
        .patch_webhook(&key, hook, &json!({"is_active": true}))
        .await;
    json_body(resp, StatusCode::OK).await;
    let caught = app
        .ingest_one(&exploit(&unique_tx(), "ethereum", "aave", 10.0))
        .await;

    assert_eq!(caught["matched"], 1, "{caught}");
    let page = app.deliveries_ok(&key, hook, "").await;
    assert_eq!(exploit_ids(&page), vec![accepted_id(&caught)]);
}

async fn webhooks_of_every_user_receive_matching_exploits() {
    let app = spawn_api_app().await;
    let (_, alice) = app.create_user("team").await;
    let (_, bob) = app.create_user("enterprise").await;
    let alices = app.create_webhook_id(&alice, &webhook("alice")).await;
    let bobs = app
        .create_webhook_id(
            &bob,
            &json!({"name": "bob", "url": HOOK_URL, "chains": ["base"]}),
        )
        .await;

    let on_base = app
        .ingest_one(&exploit(&unique_tx(), "base", "aerodrome", 3.0))
        .await;
    let on_ethereum = app
        .ingest_one(&exploit(&unique_tx(), "ethereum", "aave", 3.0))
        .await;

    assert_eq!(on_base["matched"], 2, "{on_base}");
    assert_eq!(on_ethereum["matched"], 1, "{on_ethereum}");
    let alice_page = app.deliveries_ok(&alice, alices, "").await;
    assert_eq!(alice_page["total"], 2, "{alice_page}");
    let bob_page = app.deliveries_ok(&bob, bobs, "").await;
    assert_eq!(exploit_ids(&bob_page), vec![accepted_id(&on_base)]);
}

crate::backend_tests!(
    each_exploit_is_queued_for_exactly_the_active_webhooks_whose_filters_match,
    clearing_a_filter_with_null_lets_later_exploits_through,
    reactivating_a_webhook_resumes_deliveries_without_the_ones_it_missed,
    webhooks_of_every_user_receive_matching_exploits,
);
