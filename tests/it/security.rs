//! Hostile input and secrets: secrets encrypted at rest (and re-encrypted by the CLI),
//! per-key rate limits, the network guard at create time and at delivery time (a name
//! resolving to loopback through `KAMIYO_RESOLVE`), and logs free of secrets.

use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use kamiyo_webhooks::config::{Config, RateLimit, ResolveOverride};
use kamiyo_webhooks::startup::Application;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::io::AsyncBufReadExt as _;

use crate::backend::{self, Backend};
use crate::helpers::*;

fn key_b64(byte: u8) -> String {
    STANDARD.encode([byte; 32])
}

fn kamiyo_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn secret_of(v: &Value) -> String {
    v["secret"]
        .as_str()
        .unwrap_or_else(|| panic!("no secret: {v}"))
        .to_owned()
}

/// Sends a test event; returns the answer.
async fn test_call(app: &TestApp, key: &str, id: i64) -> Value {
    let resp = app
        .user(key, Method::POST, &format!("{WEBHOOKS}/{id}/test"))
        .send()
        .await
        .expect("send test call");
    json_body(resp, StatusCode::OK).await
}

/// Checks the receiver's latest request was signed with `secret`.
fn assert_last_request_signed_with(receiver: &TestReceiver, secret: &str) {
    let requests = receiver.requests();
    let last = requests.last().expect("the receiver got a request");
    let signature = last.headers["x-kamiyo-signature"].to_str().unwrap();
    assert_eq!(
        signature,
        kamiyo_signature(secret, &last.body),
        "the delivery must verify with the secret the API returned"
    );
}

/// What the database holds for webhook secrets: the raw files of a SQLite database
/// (main file, WAL and shared memory), or the secret column of PostgreSQL.
async fn stored_bytes(database_url: &str) -> Vec<u8> {
    match backend::current() {
        Backend::Sqlite => {
            let path = database_url
                .strip_prefix("sqlite://")
                .expect("a sqlite URL");
            let mut all = Vec::new();
            for suffix in ["", "-wal", "-shm"] {
                if let Ok(bytes) = std::fs::read(format!("{path}{suffix}")) {
                    all.extend_from_slice(&bytes);
                }
            }
            assert!(!all.is_empty(), "the database files exist");
            all
        }
        Backend::Postgres => {
            use sqlx::Connection as _;
            let mut conn = sqlx::PgConnection::connect(database_url).await.unwrap();
            let rows: Vec<String> = sqlx::query_scalar("SELECT secret FROM webhooks")
                .fetch_all(&mut conn)
                .await
                .unwrap();
            for r in &rows {
                assert!(r.starts_with("enc:v1:"), "stored unencrypted: {r:.12}…");
            }
            rows.join("\n").into_bytes()
        }
    }
}

/// Fails when any of `secrets` (whole, or the base64 after `whsec_`) is in `haystack`.
fn assert_absent(haystack: &[u8], secrets: &[String], what: &str) {
    for s in secrets {
        for needle in [s.as_str(), s.trim_start_matches("whsec_")] {
            assert!(
                !haystack
                    .windows(needle.len())
                    .any(|w| w == needle.as_bytes()),
                "a secret appears in {what}"
            );
        }
    }
}

async fn webhook_secrets_are_encrypted_at_rest_and_deliveries_still_verify() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app_with(|c| {
        c.encryption_key = Some(key_b64(1));
        c.allow_private_networks = vec!["127.0.0.0/8".into()];
    })
    .await;
    let (_, key) = app.create_user("team").await;
    let mut secrets = vec![secret_of(
        &app.create_webhook_ok(&key, &webhook("other")).await,
    )];
    let hook = app
        .create_webhook_ok(&key, &json!({"name": "receiver", "url": receiver.url}))
        .await;
    let id = hook["id"].as_i64().unwrap();
    secrets.push(secret_of(&hook));
    let regenerated =
        secret_of(&json_body(app.regenerate_secret(&key, id).await, StatusCode::OK).await);
    secrets.push(regenerated.clone());

    let answer = test_call(&app, &key, id).await;
    assert_eq!(answer["status"], "success", "{answer}");
    assert_last_request_signed_with(&receiver, &regenerated);
    // The hint still tells secrets apart: it is computed from the decrypted secret.
    let listed = app.list_webhooks(&key).await;
    let hint = listed["webhooks"][1]["secret_hint"].as_str().unwrap();
    assert!(
        regenerated.starts_with(hint.trim_end_matches('…')),
        "{hint}"
    );

    assert_absent(
        &stored_bytes(&app.database_url).await,
        &secrets,
        "the database",
    );
}

async fn run_cli(database_url: &str, envs: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_kamiyo-webhooks"));
    for (name, _) in std::env::vars() {
        if name.starts_with("KAMIYO_") {
            command.env_remove(name);
        }
    }
    command
        .args(args)
        .env("KAMIYO_DATABASE_URL", database_url)
        .env_remove("RUST_LOG")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("the command finishes within 60 s")
        .expect("run the binary")
}

fn stdout_json(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The start-up error of an application with `key` on `database_url`.
async fn build_error(database_url: &str, key: Option<String>) -> String {
    let config = Config {
        database_url: database_url.to_owned(),
        listen: "127.0.0.1:0".into(),
        encryption_key: key,
        ..Config::default()
    };
    match Application::build(config).await {
        Ok(_) => panic!("the application must not start"),
        Err(e) => format!("{e:#}"),
    }
}

async fn reencrypt_encrypts_plaintext_secrets_and_rotates_keys() {
    let receiver = TestReceiver::start().await;
    let plain = spawn_app_reaching_loopback().await;
    let url = plain.database_url.clone();
    let (_, key) = plain.create_user("team").await;
    let hook = plain
        .create_webhook_ok(&key, &json!({"name": "receiver", "url": receiver.url}))
        .await;
    let id = hook["id"].as_i64().unwrap();
    let secret = secret_of(&hook);
    let other = secret_of(&plain.create_webhook_ok(&key, &webhook("second")).await);
    plain.shutdown.cancel();
    let (k1, k2, k3) = (key_b64(1), key_b64(2), key_b64(3));

    let no_key = run_cli(&url, &[], &["secrets", "reencrypt"]).await;
    assert!(!no_key.status.success());
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("KAMIYO_ENCRYPTION_KEY"));

    let first = stdout_json(
        &run_cli(
            &url,
            &[("KAMIYO_ENCRYPTION_KEY", &k1)],
            &["secrets", "reencrypt"],
        )
        .await,
    );
    assert_eq!(first["scanned"], 2, "{first}");
    assert_eq!(first["encrypted_from_plaintext"], 2, "{first}");
    let again = stdout_json(
        &run_cli(
            &url,
            &[("KAMIYO_ENCRYPTION_KEY", &k1)],
            &["secrets", "reencrypt"],
        )
        .await,
    );
    assert_eq!(again["already_current"], 2, "{again}");
    let secrets = [secret.clone(), other];
    // Plain text may linger in free pages of a SQLite file; the column itself is sealed.
    if backend::current() == Backend::Postgres {
        assert_absent(&stored_bytes(&url).await, &secrets, "the database");
    }

    let one = spawn_app_with(|c| {
        c.database_url = url.clone();
        c.encryption_key = Some(k1.clone());
        c.allow_private_networks = vec!["127.0.0.0/8".into()];
    })
    .await;
    assert_eq!(test_call(&one, &key, id).await["status"], "success");
    assert_last_request_signed_with(&receiver, &secret);
    one.shutdown.cancel();

    // Rotation: the old key opens, the new one seals.
    let old = k1.as_str();
    let rotated = stdout_json(
        &run_cli(
            &url,
            &[("KAMIYO_ENCRYPTION_KEY", &k2)],
            &["secrets", "reencrypt", "--old-key", old],
        )
        .await,
    );
    assert_eq!(rotated["rotated"], 2, "{rotated}");

    // A wrong key, or none, stops the start with a clear error.
    let wrong = build_error(&url, Some(k1.clone())).await;
    assert!(
        wrong.contains("does not decrypt with KAMIYO_ENCRYPTION_KEY"),
        "{wrong}"
    );
    assert!(!wrong.contains(&secret));
    let missing = build_error(&url, None).await;
    assert!(
        missing.contains("KAMIYO_ENCRYPTION_KEY is not set"),
        "{missing}"
    );
    // Neither key opens them: nothing changes and the command fails.
    let stuck = run_cli(
        &url,
        &[
            ("KAMIYO_ENCRYPTION_KEY", &k3),
            ("KAMIYO_OLD_ENCRYPTION_KEY", &k1),
        ],
        &["secrets", "reencrypt"],
    )
    .await;
    assert_eq!(stuck.status.code(), Some(1));
    let summary: Value = serde_json::from_slice(&stuck.stdout).unwrap();
    assert_eq!(summary["unreadable"], 2, "{summary}");

    let two = spawn_app_with(|c| {
        c.database_url = url.clone();
        c.encryption_key = Some(k2.clone());
        c.allow_private_networks = vec!["127.0.0.0/8".into()];
    })
    .await;
    assert_eq!(test_call(&two, &key, id).await["status"], "success");
    assert_last_request_signed_with(&receiver, &secret);
}

async fn a_key_over_its_rate_limit_gets_429_with_retry_after_and_others_do_not() {
    let app = spawn_app_with(|c| {
        c.rate_limit = RateLimit {
            per_second: 1,
            burst: 3,
        }
    })
    .await;
    let (_, alice) = app.create_user("team").await;
    let (_, bob) = app.create_user("team").await;
    let list = |key: &str| app.user(key, Method::GET, WEBHOOKS).send();
    for _ in 0..3 {
        assert_eq!(list(&alice).await.unwrap().status(), StatusCode::OK);
    }
    let limited = list(&alice).await.unwrap();
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After is whole seconds");
    assert!(retry_after >= 1);
    let message = assert_error(limited, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    assert!(!message.contains(&alice), "the key is not echoed");
    // Another key has a bucket of its own.
    assert_eq!(list(&bob).await.unwrap().status(), StatusCode::OK);
    // The operator API and the docs are not limited.
    assert_eq!(
        app.request(Method::GET, "/healthz")
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(list(&alice).await.unwrap().status(), StatusCode::OK);
}

fn receiver_port(receiver: &TestReceiver) -> u16 {
    url::Url::parse(&receiver.url).unwrap().port().unwrap()
}

fn resolve_evil_to_loopback(c: &mut Config) {
    c.resolve = vec![ResolveOverride {
        host: "evil.test".into(),
        ip: "127.0.0.1".parse().unwrap(),
    }];
}

async fn delivery_detail(app: &TestApp, key: &str, id: i64, delivery: i64) -> Value {
    let resp = app
        .user(
            key,
            Method::GET,
            &format!("{WEBHOOKS}/{id}/deliveries/{delivery}"),
        )
        .send()
        .await
        .unwrap();
    json_body(resp, StatusCode::OK).await
}

/// Polls the webhook's latest exploit delivery until it is no longer pending.
async fn finished_exploit_delivery(app: &TestApp, key: &str, id: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page = app.deliveries_ok(key, id, "").await;
        let found = page["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["event"] == "exploit.detected" && d["status"] != "pending")
            .cloned();
        if let Some(d) = found {
            return d;
        }
        assert!(Instant::now() < deadline, "no finished delivery: {page}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn a_name_resolving_to_loopback_is_refused_at_every_attempt() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app_with(resolve_evil_to_loopback).await;
    let (_, key) = app.create_user("team").await;
    let url = format!("http://evil.test:{}/hook", receiver_port(&receiver));
    // A name passes at create: only its addresses at delivery time can tell.
    let id = app
        .create_webhook_id(&key, &json!({"name": "evil", "url": url}))
        .await;

    let answer = test_call(&app, &key, id).await;
    assert_eq!(answer["status"], "failed", "{answer}");
    let detail = delivery_detail(&app, &key, id, answer["delivery_id"].as_i64().unwrap()).await;
    assert_eq!(
        detail["attempt_log"][0]["error_kind"], "blocked_address",
        "{detail}"
    );

    app.ingest_new(&exploit(&unique_tx(), "ethereum", "aave", 1.0))
        .await;
    let delivery = finished_exploit_delivery(&app, &key, id).await;
    assert_eq!(delivery["status"], "failed", "{delivery}");
    let detail = delivery_detail(&app, &key, id, delivery["id"].as_i64().unwrap()).await;
    let attempts = detail["attempt_log"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "every scheduled attempt ran: {detail}");
    for a in attempts {
        assert_eq!(a["error_kind"], "blocked_address", "{detail}");
        assert!(a["error"].as_str().unwrap().contains("127.0.0.1"), "{a}");
    }
    assert_eq!(receiver.count(), 0, "nothing reached the local receiver");
}

async fn a_name_resolving_into_an_allowed_network_is_delivered() {
    let receiver = TestReceiver::start().await;
    let app = spawn_app_with(|c| {
        resolve_evil_to_loopback(c);
        c.allow_private_networks = vec!["127.0.0.0/8".into()];
    })
    .await;
    let (_, key) = app.create_user("team").await;
    let url = format!("http://evil.test:{}/hook", receiver_port(&receiver));
    let hook = app
        .create_webhook_ok(&key, &json!({"name": "allowed", "url": url}))
        .await;
    let id = hook["id"].as_i64().unwrap();
    assert_eq!(test_call(&app, &key, id).await["status"], "success");
    app.ingest_new(&exploit(&unique_tx(), "ethereum", "aave", 1.0))
        .await;
    let delivery = finished_exploit_delivery(&app, &key, id).await;
    assert_eq!(delivery["status"], "succeeded", "{delivery}");
    assert_eq!(receiver.count(), 2);
    assert_last_request_signed_with(&receiver, &secret_of(&hook));
}

const BLOCKED_LITERALS: [&str; 16] = [
    "127.0.0.1",
    "10.0.0.1",
    "172.16.0.1",
    "192.168.0.1",
    "169.254.169.254",
    "100.64.0.1",
    "224.0.0.1",
    "255.255.255.255",
    "0.0.0.0",
    "[::1]",
    "[fc00::1]",
    "[fe80::1]",
    "[::ffff:127.0.0.1]",
    "2130706433",
    "0x7f000001",
    "0177.0.0.1",
];

async fn every_blocked_address_class_is_refused_at_create_and_update() {
    let app = spawn_app().await;
    let (_, key) = app.create_user("team").await;
    for host in BLOCKED_LITERALS {
        let resp = app
            .create_webhook(
                &key,
                &json!({"name": "x", "url": format!("https://{host}/hook")}),
            )
            .await;
        let message = assert_validation_error(resp, "url").await;
        assert!(message.contains("public"), "{host}: {message}");
    }
    assert_eq!(app.list_webhooks(&key).await["total"], 0);
    let id = app.create_webhook_id(&key, &webhook("public")).await;
    let resp = app
        .patch_webhook(
            &key,
            id,
            &json!({"url": "https://169.254.169.254/latest/meta-data"}),
        )
        .await;
    assert_validation_error(resp, "url").await;
}

async fn the_allow_list_lets_exactly_its_cidr_through() {
    let app = spawn_app_with(|c| c.allow_private_networks = vec!["10.1.0.0/16".into()]).await;
    let (_, key) = app.create_user("team").await;
    for allowed in ["10.1.0.1", "10.1.255.254", "[::ffff:10.1.2.3]"] {
        let resp = app
            .create_webhook(
                &key,
                &json!({"name": "in", "url": format!("https://{allowed}/")}),
            )
            .await;
        json_body(resp, StatusCode::CREATED).await;
    }
    for refused in ["10.2.0.1", "10.0.255.255", "127.0.0.1", "192.168.0.1"] {
        let resp = app
            .create_webhook(
                &key,
                &json!({"name": "out", "url": format!("https://{refused}/")}),
            )
            .await;
        assert_validation_error(resp, "url").await;
    }
}

/// The real binary's stderr, collected while it runs.
struct Served {
    child: tokio::process::Child,
    log: Arc<Mutex<String>>,
    reader: tokio::task::JoinHandle<()>,
}

impl Served {
    async fn start(envs: &[(&str, &str)]) -> (Served, String) {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_kamiyo-webhooks"));
        for (name, _) in std::env::vars() {
            if name.starts_with("KAMIYO_") {
                command.env_remove(name);
            }
        }
        let dir = std::env::temp_dir();
        let mut child = command
            .arg("serve")
            .current_dir(dir)
            .envs(envs.iter().copied())
            .env("RUST_LOG", "debug")
            .env("KAMIYO_LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the binary");
        let log = Arc::new(Mutex::new(String::new()));
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = log.clone();
        let reader = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let address = loop {
            let found = log.lock().unwrap().lines().find_map(|l| {
                l.contains("API listening")
                    .then(|| l.split("address=").nth(1))
                    .flatten()
                    .map(|a| a.split_whitespace().next().unwrap_or("").to_owned())
            });
            if let Some(a) = found {
                break a;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not start: {}",
                log.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        (Served { child, log, reader }, format!("http://{address}"))
    }

    /// SIGTERM, then everything it logged.
    async fn stop(mut self) -> String {
        let pid = self.child.id().expect("running") as i32;
        // SAFETY: kill(2) on the pid of our own child process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .expect("the server stops on SIGTERM")
            .unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.reader).await;
        let log = self.log.lock().unwrap().clone();
        log
    }
}

async fn logs_and_error_answers_never_contain_keys_tokens_or_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let db = backend::TestDatabase::create(dir.path(), "logs").await;
    let receiver = TestReceiver::start().await;
    let admin_token = random_token();
    let encryption_key = key_b64(42);
    let (served, base) = Served::start(&[
        ("KAMIYO_DATABASE_URL", db.url.as_str()),
        ("KAMIYO_ADMIN_TOKEN", admin_token.as_str()),
        ("KAMIYO_ENCRYPTION_KEY", encryption_key.as_str()),
        ("KAMIYO_ALLOW_HTTP", "true"),
        ("KAMIYO_ALLOW_PRIVATE_NETWORKS", "127.0.0.0/8"),
        ("KAMIYO_RETRY_SCHEDULE", "50ms"),
    ])
    .await;
    let client = reqwest::Client::new();
    let mut answers = String::new();
    let call = async |method: Method, path: &str, token: &str, body: Option<Value>| {
        let mut req = client
            .request(method, format!("{base}{path}"))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("send");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, text)
    };

    let (_, user) = call(
        Method::POST,
        ADMIN_USERS,
        &admin_token,
        Some(json!({"name": "logged", "tier": "team"})),
    )
    .await;
    let user: Value = serde_json::from_str(&user).unwrap();
    let api_key = user["api_key"].as_str().unwrap().to_owned();
    let (_, more) = call(
        Method::POST,
        &format!("{ADMIN_USERS}/{}/api-keys", user["id"]),
        &admin_token,
        None,
    )
    .await;
    let second_key = serde_json::from_str::<Value>(&more).unwrap()["api_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, hook) = call(
        Method::POST,
        WEBHOOKS,
        &api_key,
        Some(json!({"name": "logged", "url": receiver.url})),
    )
    .await;
    let hook: Value = serde_json::from_str(&hook).unwrap();
    let id = hook["id"].as_i64().unwrap();
    let mut secrets = vec![secret_of(&hook)];
    let test_path = format!("{WEBHOOKS}/{id}/test");
    let (_, answer) = call(Method::POST, &test_path, &second_key, None).await;
    assert!(answer.contains("\"success\""), "{answer}");
    let (status, _) = call(
        Method::POST,
        EXPLOITS,
        &admin_token,
        Some(exploit(&unique_tx(), "ethereum", "aave", 5.0)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    wait_until(Duration::from_secs(20), "the delivery", || {
        receiver.count() >= 2
    })
    .await;
    let (_, regenerated) = call(
        Method::POST,
        &format!("{WEBHOOKS}/{id}/regenerate-secret"),
        &api_key,
        None,
    )
    .await;
    secrets.push(secret_of(&serde_json::from_str(&regenerated).unwrap()));
    call(Method::POST, &test_path, &api_key, None).await;
    assert_last_request_signed_with(&receiver, &secrets[1]);

    // Error paths: every answer here is checked for echoed secrets.
    let wrong_key = format!("{api_key}x");
    for (method, path, token, body) in [
        (Method::GET, WEBHOOKS.to_owned(), wrong_key.clone(), None),
        (
            Method::POST,
            ADMIN_USERS.to_owned(),
            format!("{admin_token}x"),
            Some(json!({})),
        ),
        (
            Method::POST,
            ADMIN_USERS.to_owned(),
            api_key.clone(),
            Some(json!({})),
        ),
        (
            Method::GET,
            format!("{WEBHOOKS}/{id}"),
            admin_token.clone(),
            None,
        ),
        (
            Method::PATCH,
            format!("{WEBHOOKS}/{id}"),
            api_key.clone(),
            Some(json!({"url": format!("https://user:{}@example.com/", secrets[1])})),
        ),
        (
            Method::POST,
            WEBHOOKS.to_owned(),
            api_key.clone(),
            Some(json!({"name": "x", "url": "https://10.0.0.1/"})),
        ),
        (
            Method::GET,
            format!("{WEBHOOKS}/999999"),
            api_key.clone(),
            None,
        ),
    ] {
        let (status, text) = call(method, &path, &token, body).await;
        assert!(status.is_client_error(), "{path}: {status} {text}");
        answers.push_str(&text);
        answers.push('\n');
    }
    let (_, listed) = call(Method::GET, WEBHOOKS, &api_key, None).await;
    answers.push_str(&listed);
    let (_, got) = call(Method::GET, &format!("{WEBHOOKS}/{id}"), &api_key, None).await;
    answers.push_str(&got);

    let log = served.stop().await;
    assert!(
        log.contains("webhook secret regenerated") && log.contains("DEBUG"),
        "debug logs were captured: {log}"
    );
    let mut forbidden = secrets.clone();
    forbidden.extend([
        api_key.clone(),
        second_key.clone(),
        wrong_key.clone(),
        admin_token.clone(),
        encryption_key.clone(),
    ]);
    assert_absent(log.as_bytes(), &forbidden, "the log");
    assert_absent(answers.as_bytes(), &forbidden, "an answer");
    drop(db);
}

crate::backend_tests!(
    webhook_secrets_are_encrypted_at_rest_and_deliveries_still_verify,
    reencrypt_encrypts_plaintext_secrets_and_rotates_keys,
    a_key_over_its_rate_limit_gets_429_with_retry_after_and_others_do_not,
    a_name_resolving_to_loopback_is_refused_at_every_attempt,
    a_name_resolving_into_an_allowed_network_is_delivered,
    every_blocked_address_class_is_refused_at_create_and_update,
    the_allow_list_lets_exactly_its_cidr_through,
    logs_and_error_answers_never_contain_keys_tokens_or_secrets,
);
