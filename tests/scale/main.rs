//! Many processes on one PostgreSQL: real `serve` processes (API and workers) sharing
//! one database, a receiver counting every delivery id, and SIGKILL mid-run. Skipped
//! with a notice unless `KAMIYO_TEST_POSTGRES_URL` is set.

#[path = "../common/backend.rs"]
mod backend;

use std::collections::HashMap;
use std::net::TcpListener as StdListener;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use backend::TestDatabase;

const ADMIN_TOKEN: &str = "scale-test-admin-token-0123456789";

/// Counts each delivery id the workers send; answers after `delay`.
#[derive(Clone, Default)]
struct Receiver {
    seen: Arc<Mutex<HashMap<String, (u32, Instant)>>>,
    delay: Duration,
}

impl Receiver {
    async fn start(delay: Duration) -> (Receiver, String) {
        let receiver = Receiver {
            delay,
            ..Receiver::default()
        };
        let app = Router::new()
            .route("/hook/{n}", post(receive))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (receiver, url)
    }

    /// (distinct ids, requests beyond the first per id)
    fn counts(&self) -> (usize, u32) {
        let seen = self.seen.lock().unwrap();
        let duplicates = seen.values().map(|(n, _)| n - 1).sum();
        (seen.len(), duplicates)
    }

    fn last_arrival(&self) -> Option<Instant> {
        self.seen.lock().unwrap().values().map(|(_, t)| *t).max()
    }
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap) -> &'static str {
    let id = headers
        .get("x-kamiyo-delivery")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .to_string();
    r.seen
        .lock()
        .unwrap()
        .entry(id)
        .and_modify(|(n, t)| {
            *n += 1;
            *t = Instant::now();
        })
        .or_insert((1, Instant::now()));
    if !r.delay.is_zero() {
        tokio::time::sleep(r.delay).await;
    }
    "ok"
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `kamiyo-webhooks serve` process.
struct Serve {
    child: Child,
    port: u16,
}

impl Serve {
    async fn start(database_url: &str, role: &str, extra: &[(&str, &str)]) -> Serve {
        let port = free_port();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kamiyo-webhooks"));
        cmd.args(["serve", "--role", role])
            .env("KAMIYO_DATABASE_URL", database_url)
            .env("KAMIYO_LISTEN", format!("127.0.0.1:{port}"))
            .env("KAMIYO_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("KAMIYO_ALLOW_HTTP", "true")
            // The tests create webhooks faster than the per-key rate limit allows.
            .env("KAMIYO_RATE_LIMIT", "0")
            .env("KAMIYO_ALLOW_PRIVATE_NETWORKS", "127.0.0.0/8")
            .env("KAMIYO_RETRY_SCHEDULE", "100ms,200ms,400ms")
            .env("KAMIYO_DELIVERY_TIMEOUT", "2s")
            .env("KAMIYO_LEASE", "3s")
            .env("KAMIYO_POLL_INTERVAL", "500ms")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start serve");
        // Ready once the process says so: the API is listening or the workers run.
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let ready = if role == "worker" {
            "delivery workers started"
        } else {
            "API listening"
        };
        let deadline = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.contains(ready) {
                    return;
                }
            }
            panic!("serve --role {role} exited before it was ready");
        });
        deadline.await.expect("serve became ready in time");
        // Keep draining its log so the pipe never fills.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Serve { child, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

async fn enterprise_user(api: &Serve, http: &reqwest::Client) -> String {
    let v: Value = http
        .post(api.url("/api/v1/admin/users"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": "scale", "tier": "enterprise"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["api_key"].as_str().unwrap().to_string()
}

async fn create_webhooks(api: &Serve, http: &reqwest::Client, key: &str, receiver: &str, n: usize) {
    for i in 0..n {
        let status = http
            .post(api.url("/api/v1/user-webhooks"))
            .bearer_auth(key)
            .json(&json!({"name": format!("w{i}"), "url": format!("{receiver}/hook/{i}")}))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 201);
    }
}

async fn ingest(api: &Serve, http: &reqwest::Client, first: usize, count: usize) {
    let exploits: Vec<Value> = (first..first + count)
        .map(|i| {
            json!({"tx_hash": format!("0x{i:064x}"), "chain": "Ethereum", "protocol": "Uniswap",
                   "amount_usd": 1000.0, "timestamp": "2025-10-10T12:30:00Z"})
        })
        .collect();
    let status = http
        .post(api.url("/api/v1/exploits"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&exploits)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
}

async fn wait_for(receiver: &Receiver, total: usize, limit: Duration) {
    let start = Instant::now();
    while receiver.counts().0 < total {
        assert!(
            start.elapsed() < limit,
            "only {} of {total} deliveries arrived within {limit:?}",
            receiver.counts().0
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const WEBHOOKS: usize = 50;
const EXPLOITS: usize = 100; // 50 x 100 = 5,000 deliveries

async fn three_workers_deliver_every_delivery_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::create(dir.path(), "scale").await;
    let (receiver, receiver_url) = Receiver::start(Duration::ZERO).await;
    let http = reqwest::Client::new();
    let api = Serve::start(&db.url, "api", &[]).await;
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(Serve::start(&db.url, "worker", &[]).await);
    }
    let key = enterprise_user(&api, &http).await;
    create_webhooks(&api, &http, &key, &receiver_url, WEBHOOKS).await;

    let start = Instant::now();
    for batch in 0..EXPLOITS / 10 {
        ingest(&api, &http, batch * 10, 10).await;
    }
    wait_for(&receiver, WEBHOOKS * EXPLOITS, Duration::from_secs(120)).await;
    let elapsed = start.elapsed();
    // Let any straggling duplicate arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (distinct, duplicates) = receiver.counts();
    eprintln!(
        "3 workers on PostgreSQL: {distinct} deliveries in {elapsed:?} ({:.0}/s), {duplicates} duplicates",
        distinct as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(distinct, WEBHOOKS * EXPLOITS);
    assert_eq!(duplicates, 0, "no delivery is sent twice without a crash");
}

async fn killing_one_of_three_workers_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::create(dir.path(), "scale").await;
    // Slow answers keep claims in flight when the worker dies.
    let (receiver, receiver_url) = Receiver::start(Duration::from_millis(50)).await;
    let http = reqwest::Client::new();
    let api = Serve::start(&db.url, "api", &[]).await;
    let key = enterprise_user(&api, &http).await;
    create_webhooks(&api, &http, &key, &receiver_url, WEBHOOKS).await;
    // The victim starts alone, so it surely holds claims when it dies.
    let mut victim = Serve::start(&db.url, "worker", &[]).await;
    for batch in 0..EXPLOITS / 10 {
        ingest(&api, &http, batch * 10, 10).await;
    }
    let total = WEBHOOKS * EXPLOITS;
    while receiver.counts().0 < 500 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _others = [
        Serve::start(&db.url, "worker", &[]).await,
        Serve::start(&db.url, "worker", &[]).await,
    ];
    victim.child.start_kill().unwrap(); // SIGKILL
    victim.child.wait().await.unwrap();
    let killed_at = Instant::now();
    let at_kill = receiver.counts().0;

    wait_for(&receiver, total, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (distinct, duplicates) = receiver.counts();
    let takeover = receiver.last_arrival().unwrap().duration_since(killed_at);
    eprintln!(
        "SIGKILL of 1 of 3 workers at {at_kill}/{total}: all {distinct} arrived, {duplicates} delivered twice, \
         last delivery {takeover:?} after the kill (lease 3s)"
    );
    assert_eq!(distinct, total);
    // Only what the dead worker had in flight may repeat: at most its max_in_flight.
    assert!(duplicates <= 256, "{duplicates} duplicates");
    // Its claims come back when their lease ends, not later.
    assert!(
        takeover < Duration::from_secs(3) + Duration::from_secs(5),
        "takeover took {takeover:?}"
    );
}

async fn tier_limits_hold_across_two_api_processes() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::create(dir.path(), "scale").await;
    let http = reqwest::Client::new();
    let a = Serve::start(&db.url, "api", &[]).await;
    let b = Serve::start(&db.url, "api", &[]).await;
    let v: Value = http
        .post(a.url("/api/v1/admin/users"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"name": "t", "tier": "team"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = v["api_key"].as_str().unwrap().to_string();
    for round in 0..3 {
        let creates = (0..12).map(|i| {
            let target = if i % 2 == 0 { &a } else { &b };
            http.post(target.url("/api/v1/user-webhooks"))
                .bearer_auth(&key)
                .json(
                    &json!({"name": format!("r{round}-{i}"), "url": "https://hooks.example.com/x"}),
                )
                .send()
        });
        let statuses: Vec<u16> = futures_join(creates).await;
        let created = statuses.iter().filter(|s| **s == 201).count();
        let list: Value = http
            .get(b.url("/api/v1/user-webhooks"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(list["total"], 5, "round {round}: {statuses:?}");
        assert!(
            statuses.iter().all(|s| *s == 201 || *s == 403),
            "{statuses:?}"
        );
        // Make room for the next round: delete all, every create is a race again.
        if round == 0 {
            assert_eq!(created, 5);
        }
        for w in list["webhooks"].as_array().unwrap() {
            http.delete(a.url(&format!("/api/v1/user-webhooks/{}", w["id"])))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap();
        }
    }
}

async fn duplicate_exploits_are_detected_across_two_api_processes() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDatabase::create(dir.path(), "scale").await;
    let http = reqwest::Client::new();
    let a = Serve::start(&db.url, "api", &[]).await;
    let b = Serve::start(&db.url, "api", &[]).await;
    let key = enterprise_user(&a, &http).await;
    create_webhooks(&a, &http, &key, "https://hooks.example.com", 3).await;
    for round in 0..5 {
        let sends = (0..10).map(|i| {
            let target = if i % 2 == 0 { &a } else { &b };
            let case = if i % 3 == 0 { "0xABC" } else { "0xabc" };
            http.post(target.url("/api/v1/exploits"))
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"tx_hash": format!("{case}{round}"), "chain": if i % 2 == 0 { "Ethereum" } else { "ethereum" },
                              "protocol": "Uniswap", "amount_usd": 5.0, "timestamp": "2025-10-10T12:30:00Z"}))
                .send()
        });
        let results = futures::future::join_all(sends).await;
        let mut fresh = 0;
        let mut ids = std::collections::BTreeSet::new();
        for r in results {
            let v: Value = r.unwrap().json().await.unwrap();
            let item = &v["results"][0];
            ids.insert(item["id"].as_i64().unwrap());
            if item["duplicate"] == false {
                fresh += 1;
                assert_eq!(item["matched"], 3);
            }
        }
        assert_eq!(
            fresh, 1,
            "round {round}: exactly one request stores the exploit"
        );
        assert_eq!(
            ids.len(),
            1,
            "round {round}: every answer names the same exploit"
        );
    }
    let list: Value = http
        .get(a.url("/api/v1/user-webhooks"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for w in list["webhooks"].as_array().unwrap() {
        let page: Value = http
            .get(b.url(&format!(
                "/api/v1/user-webhooks/{}/deliveries?status=pending",
                w["id"]
            )))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(page["total"], 5, "one delivery per distinct exploit");
    }
}

async fn futures_join<F>(requests: impl Iterator<Item = F>) -> Vec<u16>
where
    F: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
{
    futures::future::join_all(requests)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect()
}

/// Each test needs PostgreSQL: it runs in a fresh database there, or prints a notice.
macro_rules! postgres_tests {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::backend::run(crate::backend::Backend::Postgres, super::$name()).await
                }
            )*
        }
    };
}

postgres_tests!(
    three_workers_deliver_every_delivery_exactly_once,
    killing_one_of_three_workers_loses_nothing,
    tier_limits_hold_across_two_api_processes,
    duplicate_exploits_are_detected_across_two_api_processes,
);
