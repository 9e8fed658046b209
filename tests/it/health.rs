//! A webhook's health columns as the delivery workers keep them: a failure, and the first
//! success after one, at once; the time of the next success in an unchanged healthy
//! streak only once it is a second newer.

use kamiyo_webhooks::store::{AttemptRecord, AttemptResult};

const T0: i64 = 1_700_000_000_000;

fn attempt(webhook_id: i64, started_at_ms: i64, ok: bool) -> AttemptRecord {
    AttemptRecord {
        delivery_id: started_at_ms,
        webhook_id,
        attempt: 1,
        started_at_ms,
        latency_ms: 2,
        status_code: Some(if ok { 200 } else { 503 }),
        error_kind: (!ok).then_some("http_status"),
        error: (!ok).then(|| format!("HTTP 503 at {started_at_ms}")),
        response_body: None,
        result: if ok {
            AttemptResult::Succeeded
        } else {
            AttemptResult::RetryAt(started_at_ms + 60_000)
        },
    }
}

async fn a_success_moves_the_time_by_the_second_and_a_failure_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, store, hook) = crate::helpers::store_with_one_webhook(dir.path(), "alerts").await;
    let record = |at: i64, ok: bool| {
        let store = store.clone();
        async move {
            store
                .record_attempts(&[attempt(hook.id, at, ok)])
                .await
                .unwrap()
        }
    };
    let health = || {
        let store = store.clone();
        async move { store.webhook_health(hook.id, T0 + 10_000).await.unwrap() }
    };

    record(T0, true).await;
    let h = health().await;
    assert_eq!(
        h.last_success_at_ms,
        Some(T0 + 2),
        "the first success is written"
    );
    assert_eq!(h.consecutive_failures, 0);

    record(T0 + 500, true).await;
    assert_eq!(
        health().await.last_success_at_ms,
        Some(T0 + 2),
        "a success within the second of the last one leaves the row as it was"
    );

    record(T0 + 1_500, true).await;
    assert_eq!(
        health().await.last_success_at_ms,
        Some(T0 + 1_502),
        "a success a second later moves the time"
    );

    record(T0 + 1_600, false).await;
    let h = health().await;
    assert_eq!(h.consecutive_failures, 1, "a failure counts at once");
    assert_eq!(h.last_failure_at_ms, Some(T0 + 1_602));
    assert_eq!(h.last_error.as_deref(), Some("HTTP 503 at 1700000001600"));

    record(T0 + 1_700, true).await;
    let h = health().await;
    assert_eq!(
        h.consecutive_failures, 0,
        "the first success after a failure ends the streak at once"
    );
    assert_eq!(
        h.last_success_at_ms,
        Some(T0 + 1_702),
        "and its time is written with it, within the second or not"
    );
}

/// The delivery figures of health: finished deliveries by status, over all time and
/// over the 24 hours before `now` by their last attempt (mean latency over the latter),
/// pending ones in neither; several webhooks at once, in the order asked.
async fn health_counts_finished_deliveries_over_24_hours_and_all_time() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, store, a) = crate::helpers::store_with_one_webhook(dir.path(), "figures").await;
    let b = crate::helpers::add_store_webhook(
        &store,
        a.user_id,
        "second",
        "https://second.example/hook",
    )
    .await;
    let (now, claimed) = crate::helpers::ingest_and_claim_all(&store, 8).await;
    assert_eq!(claimed.len(), 16);
    let (old, recent) = (now - 30 * 3_600_000, now - 3_600_000);
    // (started, latency, result) per delivery in id order; the rest stay unattempted.
    let a_plan = [
        (old, 100, AttemptResult::Succeeded),
        (old, 100, AttemptResult::Failed),
        (recent, 10, AttemptResult::Succeeded),
        (recent, 20, AttemptResult::Succeeded),
        (recent, 30, AttemptResult::Failed),
        (recent, 1_000, AttemptResult::RetryAt(now + 3_600_000)),
        (recent, 40, AttemptResult::Succeeded),
    ];
    let b_plan = [
        (recent, 5, AttemptResult::Succeeded),
        (recent, 7, AttemptResult::Succeeded),
    ];
    let mut records = Vec::new();
    for (hook, plan) in [(a.id, &a_plan[..]), (b.id, &b_plan[..])] {
        let mine = claimed.iter().filter(|d| d.webhook_id == hook);
        for (d, (started, latency, result)) in mine.zip(plan) {
            let ok = *result == AttemptResult::Succeeded;
            records.push(AttemptRecord {
                delivery_id: d.id,
                latency_ms: *latency,
                result: *result,
                ..attempt(hook, *started, ok)
            });
        }
    }
    store.record_attempts(&records).await.unwrap();

    let figures = store.webhooks_health(&[b.id, a.id], now).await.unwrap();
    let counts = |i: usize| {
        let h = &figures[i];
        (
            h.succeeded_24h,
            h.failed_24h,
            h.succeeded_all,
            h.failed_all,
            h.mean_latency_ms_24h,
        )
    };
    assert_eq!(counts(0), (2, 0, 2, 0, Some(6.0)), "second webhook");
    assert_eq!(counts(1), (3, 1, 4, 2, Some(25.0)), "first webhook");
    let one = store.webhook_health(a.id, now).await.unwrap();
    assert_eq!(
        (one.succeeded_24h, one.failed_all),
        (3, 2),
        "one webhook's figures are those of the list"
    );
}

crate::backend_tests!(
    a_success_moves_the_time_by_the_second_and_a_failure_at_once,
    health_counts_finished_deliveries_over_24_hours_and_all_time,
);
