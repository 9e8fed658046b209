//! One endpoint catching up on a backlog: deliveries queued in the process for an
//! endpoint that answers quickly go out as its attempts end, never more at a time than
//! its bound, each once per attempt; a failure, or a stop, gives the queue back.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use crate::helpers::*;
use crate::receiver::{Behaviour, Reply, TestReceiver};

const PER_ENDPOINT: usize = 2;

fn backlog(n: usize) -> serde_json::Value {
    json!((0..n).map(|_| exploit()).collect::<Vec<_>>())
}

async fn a_backlog_goes_out_once_per_attempt_within_the_endpoint_bound_through_failures() {
    const N: usize = 90;
    const FAILURES: usize = 3;
    let receiver = TestReceiver::start().await;
    let app = spawn_app(&receiver, |cfg| {
        cfg.max_in_flight_per_endpoint = PER_ENDPOINT;
    })
    .await;
    // Quick answers, so that the endpoint gets a queue; a few failures in the middle,
    // each of which gives the queue back.
    let quick = Reply::ok().after(ms(3));
    let mut script = vec![quick.clone(); 30];
    script.extend(std::iter::repeat_n(Reply::status(500), FAILURES));
    script.extend(vec![quick.clone(); 20]);
    receiver.set("/hook", Behaviour::script(script, quick));
    let hook = app.hook_to(&receiver.url("/hook")).await;

    app.ingest(backlog(N)).await;
    let settled = app
        .wait_until_settled(&hook, N, Duration::from_secs(60))
        .await;

    assert!(
        receiver.peak_held() <= PER_ENDPOINT,
        "{} requests were in flight to the endpoint at once; its bound is {PER_ENDPOINT}",
        receiver.peak_held()
    );
    let mut received: BTreeMap<i64, usize> = BTreeMap::new();
    for r in receiver.requests("/hook") {
        *received.entry(r.delivery_id()).or_default() += 1;
    }
    assert_eq!(received.len(), N, "every delivery arrives");
    let mut attempts = 0;
    for d in &settled {
        let id = d["id"].as_i64().unwrap();
        assert_eq!(d["status"], "succeeded", "{d}");
        let n = d["attempts"].as_u64().unwrap() as usize;
        assert_eq!(
            received.get(&id),
            Some(&n),
            "requests of delivery {id}: {d}"
        );
        attempts += n;
    }
    assert_eq!(
        attempts,
        N + FAILURES,
        "one retry per failed attempt, no more"
    );
}

/// A stop while deliveries wait in the process's queue gives their claims back: the
/// process started next sends them at once, not after their lease (60 s) runs out.
async fn a_stop_gives_queued_deliveries_back_for_the_next_process() {
    const N: usize = 300;
    let receiver = TestReceiver::start().await;
    let mut app = spawn_app(&receiver, |cfg| {
        cfg.max_in_flight_per_endpoint = PER_ENDPOINT;
    })
    .await;
    // Two at a time, 20 ms each: the backlog takes three seconds or more to go out.
    receiver.set("/hook", Behaviour::always(Reply::ok().after(ms(20))));
    let hook = app.hook_to(&receiver.url("/hook")).await;
    app.ingest(backlog(N)).await;
    receiver
        .wait_for("/hook", 20, Duration::from_secs(30))
        .await;

    app.restart().await;
    let before = receiver.count("/hook");
    assert!(
        before < N,
        "the stop came too late to leave a queue: {before} sent"
    );
    let all = receiver.wait_for("/hook", N, Duration::from_secs(40)).await;
    let mut ids: Vec<i64> = all.iter().map(|r| r.delivery_id()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), N, "every delivery arrives");
    app.wait_until_settled(&hook, 100, Duration::from_secs(30))
        .await;
    assert_eq!(receiver.count("/hook"), N, "a stop sends nothing twice");
}

/// Several endpoints with more room between them than the process has: never more
/// attempts in flight than `max_in_flight`, however the outcomes and the claims they free
/// interleave, and every delivery goes out once.
async fn the_process_never_has_more_attempts_in_flight_than_its_bound() {
    const GLOBAL: usize = 5;
    const ENDPOINTS: usize = 6;
    const N: usize = 12;
    let receiver = TestReceiver::start().await;
    let app = spawn_app(&receiver, |cfg| {
        cfg.max_in_flight = GLOBAL;
        cfg.max_in_flight_per_endpoint = PER_ENDPOINT;
    })
    .await;
    let key = app.create_user().await;
    let mut hooks = Vec::new();
    for e in 0..ENDPOINTS {
        let path = format!("/e{e}");
        receiver.set(&path, Behaviour::always(Reply::ok().after(ms(20))));
        hooks.push(app.create_hook(&key, &receiver.url(&path)).await);
    }

    app.ingest(backlog(N)).await;
    for hook in &hooks {
        app.wait_until_settled(hook, N, Duration::from_secs(60))
            .await;
    }

    assert!(
        receiver.peak_held() <= GLOBAL,
        "{} requests were in flight at once; the process's bound is {GLOBAL}",
        receiver.peak_held()
    );
    assert_eq!(
        receiver.peak_held(),
        GLOBAL,
        "the bound, not the endpoints, limited the sending"
    );
    for e in 0..ENDPOINTS {
        let mut ids: Vec<i64> = receiver
            .requests(&format!("/e{e}"))
            .iter()
            .map(|r| r.delivery_id())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), N, "every delivery to /e{e} arrives");
        assert_eq!(receiver.count(&format!("/e{e}")), N, "each once");
    }
}

crate::backend_tests!(
    the_process_never_has_more_attempts_in_flight_than_its_bound,
    a_backlog_goes_out_once_per_attempt_within_the_endpoint_bound_through_failures,
    a_stop_gives_queued_deliveries_back_for_the_next_process,
);
