//! The real binary under crash and shutdown: SIGKILL while deliveries are
//! queued, in flight and waiting for a retry loses nothing and sends nothing
//! early after a restart; SIGTERM lets the attempt in flight finish, starts
//! nothing new and exits 0.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use kamiyo_webhooks::config::Role;
use reqwest::{Client, Method};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::backend::TestDatabase;
use crate::helpers::*;
use crate::receiver::{Behaviour, Received, Reply, TestReceiver};

/// `kamiyo-webhooks serve` as a child process on its own SQLite file.
struct Server {
    child: Option<Child>,
    address: String,
    admin_token: String,
    client: Client,
    env: Vec<(String, String)>,
    db: TestDatabase,
    dir: TempDir,
    starts: usize,
}

impl Api for Server {
    fn base(&self) -> &str {
        &self.address
    }
    fn client(&self) -> &Client {
        &self.client
    }
    fn admin_token(&self) -> &str {
        &self.admin_token
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

impl Server {
    /// Starts the binary with the receiver's CA trusted, loopback allowed and
    /// `extra` variables on top.
    async fn start(receiver: &TestReceiver, extra: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDatabase::create(dir.path(), "kamiyo").await;
        let admin_token = random_token();
        let port = free_port();
        let mut env: Vec<(String, String)> = vec![
            ("KAMIYO_DATABASE_URL".into(), db.url.clone()),
            ("KAMIYO_LISTEN".into(), format!("127.0.0.1:{port}")),
            ("KAMIYO_ADMIN_TOKEN".into(), admin_token.clone()),
            (
                "KAMIYO_EXTRA_CA_CERTS".into(),
                receiver.ca_path.display().to_string(),
            ),
            (
                "KAMIYO_ALLOW_PRIVATE_NETWORKS".into(),
                loopback_networks().join(","),
            ),
            ("KAMIYO_POLL_INTERVAL".into(), "200ms".into()),
            ("KAMIYO_RATE_LIMIT".into(), "0".into()),
        ];
        for (k, v) in extra {
            env.push(((*k).to_owned(), (*v).to_owned()));
        }
        let mut server = Server {
            child: None,
            address: format!("http://127.0.0.1:{port}"),
            admin_token,
            client: api_client(),
            env,
            db,
            dir,
            starts: 0,
        };
        server.spawn().await;
        server
    }

    fn db_url(&self) -> String {
        self.db.url.clone()
    }

    fn log_path(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("serve-{n}.log"))
    }

    /// Runs `serve` and waits until it answers `/healthz`.
    async fn spawn(&mut self) {
        self.starts += 1;
        let log = File::create(self.log_path(self.starts)).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kamiyo-webhooks"));
        cmd.arg("serve")
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, _) in std::env::vars() {
            if k.starts_with("KAMIYO_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        self.child = Some(cmd.spawn().expect("start kamiyo-webhooks serve"));

        let start = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("serve exited at start with {status}:\n{}", self.logs());
            }
            let ready = self
                .client
                .get(format!("{}/healthz", self.address))
                .timeout(ms(500))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "serve did not become ready:\n{}",
                self.logs()
            );
            tokio::time::sleep(ms(50)).await;
        }
    }

    /// Everything the binary has logged, start by start.
    fn logs(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                let text = std::fs::read_to_string(self.log_path(n)).unwrap_or_default();
                format!("--- serve run {n} ---\n{text}")
            })
            .collect()
    }

    /// SIGKILL: no chance to clean up.
    fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("SIGKILL serve");
        child.wait().unwrap();
    }

    fn terminate(&self) {
        let pid = self.child.as_ref().expect("running").id();
        let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed");
    }

    /// Waits for the process to exit by itself.
    async fn wait_for_exit(&mut self, deadline: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                start.elapsed() < deadline,
                "serve did not exit within {deadline:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(ms(20)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

fn exploit_of(protocol: &str) -> Value {
    let mut e = exploit();
    e["protocol"] = json!(protocol);
    e
}

/// Requests to `path` grouped by delivery id, in arrival order.
fn by_delivery(requests: Vec<Received>) -> BTreeMap<i64, Vec<Received>> {
    let mut map: BTreeMap<i64, Vec<Received>> = BTreeMap::new();
    for r in requests {
        map.entry(r.delivery_id()).or_default().push(r);
    }
    map
}

async fn after_a_sigkill_and_a_restart_every_delivery_arrives_with_its_id_and_no_retry_comes_early()
{
    const RETRY: Duration = Duration::from_millis(1500);
    let receiver = TestReceiver::start().await;
    // The first request to /slow is still unanswered when the server dies;
    // /flaky fails the first attempt of each of its three deliveries.
    receiver.set(
        "/slow",
        Behaviour::script(
            vec![Reply::ok().after(Duration::from_secs(30))],
            Reply::ok(),
        ),
    );
    receiver.set("/flaky", Behaviour::statuses(&[500, 500, 500, 200]));
    let mut server = Server::start(
        &receiver,
        &[
            ("KAMIYO_RETRY_SCHEDULE", "1500ms,1500ms"),
            ("KAMIYO_DELIVERY_TIMEOUT", "3s"),
            ("KAMIYO_LEASE", "4s"),
            ("KAMIYO_MAX_IN_FLIGHT_PER_ENDPOINT", "1"),
        ],
    )
    .await;
    let key = server.create_user().await;
    let slow = server
        .create_hook_with(
            &key,
            json!({"name": "slow", "url": receiver.url("/slow"), "protocols": ["Slow"]}),
        )
        .await;
    let flaky = server
        .create_hook_with(
            &key,
            json!({"name": "flaky", "url": receiver.url("/flaky"), "protocols": ["Flaky"]}),
        )
        .await;

    // One /slow delivery in flight and two queued behind it (one at a time
    // per endpoint); three /flaky deliveries waiting for their retry.
    let batch: Vec<Value> = (0..3)
        .flat_map(|_| [exploit_of("Slow"), exploit_of("Flaky")])
        .collect();
    server.ingest(json!(batch)).await;
    let slow_ids = ids(&server.deliveries(&slow).await);
    let flaky_ids = ids(&server.deliveries(&flaky).await);
    assert_eq!((slow_ids.len(), flaky_ids.len()), (3, 3));
    receiver.wait_for("/slow", 1, Duration::from_secs(10)).await;
    receiver
        .wait_for("/flaky", 3, Duration::from_secs(10))
        .await;
    // The failures must be on record, or their retries are not yet scheduled
    // and an immediate resend after the crash would be right.
    for id in &flaky_ids {
        let detail = server
            .wait_for_attempts(&flaky, *id, 1, Duration::from_secs(10))
            .await;
        assert_eq!(
            detail["status"], "pending",
            "waiting for its retry: {detail}"
        );
    }
    assert_eq!(
        receiver.count("/flaky"),
        3,
        "inconclusive: a retry came before the crash"
    );
    assert_eq!(
        receiver.count("/slow"),
        1,
        "one /slow delivery in flight, the others queued behind it"
    );

    server.kill();
    let in_flight = receiver.requests("/slow")[0].delivery_id();
    let first_attempts = by_delivery(receiver.requests("/flaky"));
    server.spawn().await;

    for id in &slow_ids {
        server
            .wait_for_status(&slow, *id, "succeeded", Duration::from_secs(30))
            .await;
    }
    for id in &flaky_ids {
        server
            .wait_for_status(&flaky, *id, "succeeded", Duration::from_secs(30))
            .await;
    }

    let slow_got = by_delivery(receiver.requests("/slow"));
    assert_eq!(
        slow_got.keys().copied().collect::<Vec<_>>(),
        {
            let mut s = slow_ids.clone();
            s.sort();
            s
        },
        "every /slow delivery arrived under its own id"
    );
    assert!(
        slow_got[&in_flight].len() >= 2,
        "the delivery in flight at the crash was sent again"
    );
    let flaky_got = by_delivery(receiver.requests("/flaky"));
    assert_eq!(
        flaky_got.keys().collect::<Vec<_>>(),
        first_attempts.keys().collect::<Vec<_>>()
    );
    for (id, attempts) in &flaky_got {
        assert!(attempts.len() >= 2, "delivery {id} was not retried");
        let gap = attempts[1].at - attempts[0].at;
        assert!(
            gap + ms(30) >= RETRY,
            "delivery {id} was retried {gap:?} after its first attempt, before its {RETRY:?} delay"
        );
        for req in attempts {
            assert_signed_delivery(req, &flaky.secret, "exploit.detected");
        }
    }
    for attempts in slow_got.values() {
        for req in attempts {
            assert_signed_delivery(req, &slow.secret, "exploit.detected");
        }
    }
}

async fn sigterm_lets_the_attempt_in_flight_finish_starts_nothing_new_and_exits_zero() {
    let receiver = TestReceiver::start().await;
    receiver.set(
        "/slow",
        Behaviour::always(Reply::ok().after(Duration::from_millis(1500))),
    );
    let mut server = Server::start(
        &receiver,
        &[
            ("KAMIYO_DELIVERY_TIMEOUT", "20s"),
            ("KAMIYO_MAX_IN_FLIGHT_PER_ENDPOINT", "1"),
        ],
    )
    .await;
    let hook = server.hook_to(&receiver.url("/slow")).await;
    let batch: Vec<Value> = (0..3).map(|_| exploit()).collect();
    server.ingest(json!(batch)).await;
    let got = receiver.wait_for("/slow", 1, Duration::from_secs(10)).await;
    let in_flight = got[0].delivery_id();

    server.terminate();
    let status = server.wait_for_exit(Duration::from_secs(15)).await;

    assert!(
        status.success(),
        "serve exited with {status} after SIGTERM:\n{}",
        server.logs()
    );
    assert_eq!(
        receiver.answered("/slow"),
        1,
        "the attempt in flight got its answer"
    );
    assert_eq!(receiver.count("/slow"), 1, "no new attempt after SIGTERM");

    // Read what the stopped server recorded through an API-only app on the
    // same database file.
    let db_url = server.db_url();
    let app = spawn_app(&receiver, |cfg| {
        cfg.database_url = db_url;
        cfg.role = Role::Api;
    })
    .await;
    let detail = app.delivery(&hook, in_flight).await;
    assert_eq!(detail["status"], "succeeded", "{detail}");
    assert_eq!(detail["attempts"], 1, "{detail}");
    let list = app.deliveries(&hook).await;
    for d in list.iter().filter(|d| d["id"] != in_flight) {
        assert_eq!(d["status"], "pending", "{d}");
        assert_eq!(d["attempts"], 0, "never attempted: {d}");
    }
}

/// Claims on SQLite live in the serving process's memory: a second process delivering
/// from the same file would send what the first has in flight, so it is refused, with
/// the reason. An API-only process beside it is fine, and after a SIGKILL the lock is gone.
#[tokio::test]
async fn a_second_worker_process_on_one_sqlite_file_is_refused_with_the_reason() {
    let receiver = TestReceiver::start().await;
    let mut server = Server::start(&receiver, &[]).await;
    let second = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kamiyo-webhooks"));
        cmd.arg("serve")
            .args(args)
            .current_dir(server.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("KAMIYO_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(server.env.iter().map(|(k, v)| (k, v)))
            .env("KAMIYO_LISTEN", format!("127.0.0.1:{}", free_port()))
            .spawn()
            .expect("start a second serve")
    };

    let mut refused = second(&[]);
    let start = Instant::now();
    let status = loop {
        if let Some(status) = refused.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > Duration::from_secs(30) {
            refused.kill().unwrap();
            panic!("a second worker process on the same SQLite file kept running");
        }
        tokio::time::sleep(ms(20)).await;
    };
    let output = refused.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("another process already runs delivery workers")
            && stderr.contains("-workers.lock"),
        "the reason is named: {stderr}"
    );

    // API only: no claims, no lock; it serves beside the worker.
    let mut api = second(&["--role", "api"]);
    tokio::time::sleep(ms(1500)).await;
    assert!(
        api.try_wait().unwrap().is_none(),
        "an API-only process runs beside"
    );
    api.kill().unwrap();
    api.wait().unwrap();

    // The first still delivers; after its SIGKILL a new one takes over.
    let key = server.create_user().await;
    let hook = server
        .create_hook_with(&key, json!({"name": "a", "url": receiver.url("/a")}))
        .await;
    server.ingest_one(exploit()).await;
    receiver.wait_for("/a", 1, Duration::from_secs(10)).await;
    server.kill();
    server.spawn().await;
    server.ingest_one(exploit_of("Other")).await;
    receiver.wait_for("/a", 2, Duration::from_secs(10)).await;
    assert_eq!(server.deliveries(&hook).await.len(), 2);
}

/// On SQLite an exploit's deliveries are committed in parts, so that outcomes and claims
/// need not wait for thousands of rows. A SIGKILL between two parts leaves the exploit
/// marked with how far its deliveries got, and the next start queues the rest: every
/// exploit stored ends up with exactly one delivery per webhook, cut off or not.
#[tokio::test]
async fn a_sigkill_part_way_through_an_exploits_deliveries_loses_none_of_them() {
    const WEBHOOKS: i64 = 3000;
    let receiver = TestReceiver::start().await;
    let mut server = Server::start(&receiver, &[]).await;
    let key = server.create_user().await;
    server
        .create_hook_with(&key, json!({"name": "w", "url": receiver.url("/w")}))
        .await;
    server.terminate();
    server.wait_for_exit(Duration::from_secs(10)).await;
    // More webhooks than a part holds rows: copies of that one, written into the file
    // (through the API this would take most of a minute in a debug build).
    let path = server.dir.path().join("kamiyo.db");
    let db = || rusqlite::Connection::open(&path).unwrap();
    db().execute(
        "WITH RECURSIVE n(i) AS (SELECT 2 UNION ALL SELECT i + 1 FROM n WHERE i < ?1) \
         INSERT INTO webhooks (user_id, name, url, is_active, secret, created_at, updated_at) \
         SELECT user_id, name || i, url, 1, secret, created_at, updated_at \
         FROM n, webhooks WHERE webhooks.id = 1",
        [WEBHOOKS],
    )
    .unwrap();
    let marked = || -> i64 {
        db().query_row(
            "SELECT count(*) FROM exploits WHERE fanout_after IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };

    // Kills at growing delays into an ingest of four exploits, until one lands between
    // two parts of an exploit. The steps are short and many: with 12 steps of 15 ms every
    // kill missed in 2 of 11 runs once the writer's commits got cheaper (migration 0007).
    let mut cut_off = 0;
    for round in 0..40u64 {
        server.spawn().await;
        let batch: Vec<Value> = (0..4).map(|_| exploit()).collect();
        let request = server.admin(Method::POST, EXPLOITS).json(&json!(batch));
        let sent = tokio::spawn(request.send());
        tokio::time::sleep(ms(5 + 5 * round)).await;
        server.kill();
        let _ = sent.await;
        cut_off += marked();
        if cut_off > 0 {
            break;
        }
    }
    assert!(cut_off > 0, "no kill landed inside an exploit's deliveries");

    server.spawn().await;
    let start = Instant::now();
    while marked() > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the cut-off exploit was not finished:\n{}",
            server.logs()
        );
        tokio::time::sleep(ms(50)).await;
    }
    let per_exploit: Vec<(i64, i64, i64)> = db()
        .prepare(
            "SELECT e.id, count(d.id), count(DISTINCT d.webhook_id) FROM exploits e \
             LEFT JOIN deliveries d ON d.exploit_id = e.id GROUP BY e.id",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(!per_exploit.is_empty());
    for (id, rows, webhooks) in per_exploit {
        assert_eq!(
            (rows, webhooks),
            (WEBHOOKS, WEBHOOKS),
            "exploit {id}: {rows} deliveries to {webhooks} webhooks"
        );
    }
    assert!(
        server.logs().contains("a stop had cut off"),
        "the start said what it finished:\n{}",
        server.logs()
    );
}

crate::backend_tests!(
    after_a_sigkill_and_a_restart_every_delivery_arrives_with_its_id_and_no_retry_comes_early,
    sigterm_lets_the_attempt_in_flight_finish_starts_nothing_new_and_exits_zero,
);
