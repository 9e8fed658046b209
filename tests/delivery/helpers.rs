//! The harness: one real application per test over a fresh SQLite file,
//! typed calls for what the delivery tests do often, an independent
//! implementation of both signature schemes, and deadline-bound waits.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use kamiyo_webhooks::config::Config;
use kamiyo_webhooks::startup::{Application, CancellationToken};
use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};
use sha2::Sha256;
use tempfile::TempDir;

use crate::backend::TestDatabase;

use crate::receiver::{Received, TestReceiver};

pub const WEBHOOKS: &str = "/api/v1/user-webhooks";
pub const EXPLOITS: &str = "/api/v1/exploits";
pub const ADMIN_USERS: &str = "/api/v1/admin/users";

/// Networks the app may deliver to in tests: the receivers live on loopback.
pub fn loopback_networks() -> Vec<String> {
    vec!["127.0.0.0/8".to_owned(), "::1/128".to_owned()]
}

/// Milliseconds, for schedules written compactly.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

static COUNTER: AtomicU64 = AtomicU64::new(1);

/// A transaction hash unique within this test process.
pub fn unique_tx() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    format!("0x{pid:08x}{n:056x}")
}

pub fn random_token() -> String {
    use rand::Rng as _;
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// Logs go to the test output only when `TEST_LOG` is set.
fn init_test_logging() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
    });
}

/// A running application and a client pointed at it.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`
    pub address: String,
    pub admin_token: String,
    pub client: Client,
    /// The database the app runs on, whichever the backend.
    pub database_url: String,
    pub shutdown: CancellationToken,
    /// The application's run, to wait for its end; and what it was built from.
    running: Option<tokio::task::JoinHandle<()>>,
    config: Config,
    // Declared before the directory: fields drop in order, the database first.
    _db: TestDatabase,
    _dir: TempDir,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The configuration every delivery test starts from: a fresh database in
/// `dir`, port 0, a millisecond retry schedule, the receiver's CA trusted
/// and loopback allowed.
#[allow(clippy::field_reassign_with_default)]
pub fn test_config(dir: &TempDir, receiver: &TestReceiver, admin_token: &str) -> Config {
    let mut config = Config::default();
    config.database_url = format!("sqlite://{}", dir.path().join("test.db").display());
    config.listen = "127.0.0.1:0".to_owned();
    config.admin_token = Some(admin_token.to_owned());
    config.retry_schedule = vec![ms(200), ms(400), ms(600)];
    config.delivery_timeout = Duration::from_secs(5);
    config.extra_ca_certs = Some(receiver.ca_path.clone());
    config.allow_private_networks = loopback_networks();
    config.poll_interval = ms(200);
    // Tests call the API in quick bursts; the limiter has its own tests.
    config.rate_limit = kamiyo_webhooks::config::RateLimit::DISABLED;
    config
}

/// Starts the application with the test defaults, changed by `configure`.
pub async fn spawn_app(receiver: &TestReceiver, configure: impl FnOnce(&mut Config)) -> TestApp {
    init_test_logging();
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let admin_token = random_token();
    let db = TestDatabase::create(dir.path(), "test").await;
    let mut config = test_config(&dir, receiver, &admin_token);
    config.database_url = db.url.clone();
    configure(&mut config);
    let database_url = config.database_url.clone();
    let (address, shutdown, running) = start(config.clone()).await;
    TestApp {
        address,
        admin_token,
        client: api_client(),
        database_url,
        shutdown,
        running: Some(running),
        config,
        _db: db,
        _dir: dir,
    }
}

async fn start(config: Config) -> (String, CancellationToken, tokio::task::JoinHandle<()>) {
    let app = Application::build(config)
        .await
        .expect("the application builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let running = tokio::spawn(async move {
        if let Err(error) = app.run_until_stopped(stop).await {
            eprintln!("application stopped with an error: {error:#}");
        }
    });
    (address, shutdown, running)
}

impl TestApp {
    /// Stops the application as a shutdown signal would, waits until it has, and
    /// starts it again on the same database (on another port).
    pub async fn restart(&mut self) {
        self.shutdown.cancel();
        if let Some(running) = self.running.take() {
            running.await.expect("the application's task");
        }
        let (address, shutdown, running) = start(self.config.clone()).await;
        self.address = address;
        self.shutdown = shutdown;
        self.running = Some(running);
    }
}

pub fn api_client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("build the HTTP client")
}

/// A webhook as a test knows it: its id, the secret shown at creation and
/// the owner's API key.
#[derive(Clone, Debug)]
pub struct Hook {
    pub id: i64,
    pub secret: String,
    pub key: String,
}

impl Hook {
    pub fn path(&self) -> String {
        format!("{WEBHOOKS}/{}", self.id)
    }
}

/// Calls of the HTTP API, shared by in-process apps and the real binary.
#[allow(async_fn_in_trait)]
pub trait Api {
    fn base(&self) -> &str;
    fn client(&self) -> &Client;
    fn admin_token(&self) -> &str;

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client()
            .request(method, format!("{}{}", self.base(), path))
    }

    fn admin(&self, method: Method, path: &str) -> RequestBuilder {
        self.request(method, path).bearer_auth(self.admin_token())
    }

    fn user(&self, key: &str, method: Method, path: &str) -> RequestBuilder {
        self.request(method, path).bearer_auth(key)
    }

    /// Creates an enterprise user; returns the API key.
    async fn create_user(&self) -> String {
        let resp = self
            .admin(Method::POST, ADMIN_USERS)
            .json(&json!({"name": format!("user {}", unique_tx()), "tier": "enterprise"}))
            .send()
            .await
            .expect("send create user");
        let user = json_body(resp, StatusCode::CREATED).await;
        user["api_key"]
            .as_str()
            .unwrap_or_else(|| panic!("no api_key: {user}"))
            .to_owned()
    }

    /// Creates a webhook for `key` from a full request body.
    async fn create_hook_with(&self, key: &str, body: Value) -> Hook {
        let resp = self
            .user(key, Method::POST, WEBHOOKS)
            .json(&body)
            .send()
            .await
            .expect("send create webhook");
        let hook = json_body(resp, StatusCode::CREATED).await;
        Hook {
            id: hook["id"]
                .as_i64()
                .unwrap_or_else(|| panic!("no id: {hook}")),
            secret: hook["secret"]
                .as_str()
                .unwrap_or_else(|| panic!("no secret: {hook}"))
                .to_owned(),
            key: key.to_owned(),
        }
    }

    /// Creates an unfiltered webhook for `key` pointing at `url`.
    async fn create_hook(&self, key: &str, url: &str) -> Hook {
        self.create_hook_with(key, json!({"name": "delivery test", "url": url}))
            .await
    }

    /// A new enterprise user with one unfiltered webhook pointing at `url`.
    async fn hook_to(&self, url: &str) -> Hook {
        let key = self.create_user().await;
        self.create_hook(&key, url).await
    }

    /// Ingests exploits (a JSON object or array), all of which must be
    /// accepted as new; returns the results.
    async fn ingest(&self, exploits: Value) -> Vec<Value> {
        let resp = self
            .admin(Method::POST, EXPLOITS)
            .json(&exploits)
            .send()
            .await
            .expect("send ingest");
        let answer = json_body(resp, StatusCode::OK).await;
        let results = answer["results"]
            .as_array()
            .unwrap_or_else(|| panic!("no results array: {answer}"))
            .clone();
        for r in &results {
            assert!(r.get("error").is_none(), "an exploit was refused: {r}");
            assert_eq!(r["duplicate"], false, "an exploit was a duplicate: {r}");
        }
        results
    }

    /// Ingests one exploit that must be new and match at least one webhook;
    /// returns its id.
    async fn ingest_one(&self, exploit: Value) -> i64 {
        let results = self.ingest(exploit).await;
        assert_eq!(results.len(), 1);
        let r = &results[0];
        assert!(
            r["matched"].as_u64().unwrap_or(0) >= 1,
            "the exploit matched no webhook: {r}"
        );
        r["id"].as_i64().unwrap_or_else(|| panic!("no id: {r}"))
    }

    async fn get_hook(&self, hook: &Hook) -> Value {
        let resp = self
            .user(&hook.key, Method::GET, &hook.path())
            .send()
            .await
            .expect("send get webhook");
        json_body(resp, StatusCode::OK).await
    }

    async fn patch_hook(&self, hook: &Hook, body: Value) -> Value {
        let resp = self
            .user(&hook.key, Method::PATCH, &hook.path())
            .json(&body)
            .send()
            .await
            .expect("send patch webhook");
        json_body(resp, StatusCode::OK).await
    }

    /// One page of the webhook's delivery list, as the API answers it; `query` is the
    /// query string with its `?`, or empty.
    async fn deliveries_page(&self, hook: &Hook, query: &str) -> Value {
        let resp = self
            .user(
                &hook.key,
                Method::GET,
                &format!("{}/deliveries{query}", hook.path()),
            )
            .send()
            .await
            .expect("send list deliveries");
        json_body(resp, StatusCode::OK).await
    }

    /// The webhook's deliveries (first page, up to 100), newest first.
    async fn deliveries(&self, hook: &Hook) -> Vec<Value> {
        let page = self.deliveries_page(hook, "?page_size=100").await;
        page["deliveries"]
            .as_array()
            .unwrap_or_else(|| panic!("no deliveries array: {page}"))
            .clone()
    }

    /// One delivery with its payload and attempt log.
    async fn delivery(&self, hook: &Hook, delivery_id: i64) -> Value {
        let resp = self
            .user(
                &hook.key,
                Method::GET,
                &format!("{}/deliveries/{delivery_id}", hook.path()),
            )
            .send()
            .await
            .expect("send get delivery");
        json_body(resp, StatusCode::OK).await
    }

    /// Polls a delivery until its status is `status`; returns the detail.
    async fn wait_for_status(
        &self,
        hook: &Hook,
        delivery_id: i64,
        status: &str,
        deadline: Duration,
    ) -> Value {
        let start = Instant::now();
        loop {
            let d = self.delivery(hook, delivery_id).await;
            if d["status"] == status {
                return d;
            }
            assert!(
                start.elapsed() < deadline,
                "delivery {delivery_id} is not {status} after {deadline:?}: {d}"
            );
            tokio::time::sleep(ms(25)).await;
        }
    }

    /// Polls a delivery until at least `n` attempts are on record; returns the detail.
    async fn wait_for_attempts(
        &self,
        hook: &Hook,
        delivery_id: i64,
        n: i64,
        deadline: Duration,
    ) -> Value {
        let start = Instant::now();
        loop {
            let d = self.delivery(hook, delivery_id).await;
            if d["attempts"].as_i64().is_some_and(|a| a >= n) {
                return d;
            }
            assert!(
                start.elapsed() < deadline,
                "delivery {delivery_id} has not {n} attempts after {deadline:?}: {d}"
            );
            tokio::time::sleep(ms(25)).await;
        }
    }

    /// Polls until the webhook has at least `n` deliveries, none pending.
    async fn wait_until_settled(&self, hook: &Hook, n: usize, deadline: Duration) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let list = self.deliveries(hook).await;
            if list.len() >= n && list.iter().all(|d| d["status"] != "pending") {
                return list;
            }
            assert!(
                start.elapsed() < deadline,
                "webhook {}: {n} settled deliveries expected after {deadline:?}: {list:?}",
                hook.id
            );
            tokio::time::sleep(ms(25)).await;
        }
    }
}

impl Api for TestApp {
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

/// A valid exploit with every field set and a fresh transaction hash.
pub fn exploit() -> Value {
    json!({
        "tx_hash": unique_tx(),
        "chain": "Ethereum",
        "protocol": "Uniswap",
        "amount_usd": 250000.0,
        "timestamp": "2025-10-10T12:30:00Z",
        "source": "PeckShield",
        "source_url": "https://peckshield.example/alerts/1",
        "category": "flash_loan",
        "description": "Flash loan attack on a pool",
    })
}

/// Reads a JSON body after checking the status.
pub async fn json_body(resp: Response, expected: StatusCode) -> Value {
    let status = resp.status();
    let url = resp.url().clone();
    let text = resp.text().await.expect("read the response body");
    assert_eq!(status, expected, "{url} answered: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url} answered non-JSON ({e}): {text}"))
}

type HmacSha256 = Hmac<Sha256>;

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// The spec's `X-Kamiyo-Signature`: hex HMAC-SHA256 of the raw body, keyed
/// with the secret string's bytes.
pub fn kamiyo_signature(secret: &str, body: &[u8]) -> String {
    hex::encode(hmac_sha256(secret.as_bytes(), &[body]))
}

/// The Standard Webhooks signature (without the `v1,` prefix).
pub fn standard_signature(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
    let encoded = secret
        .strip_prefix("whsec_")
        .unwrap_or_else(|| panic!("secret without whsec_: {secret}"));
    let key = STANDARD.decode(encoded).expect("the secret is base64");
    STANDARD.encode(hmac_sha256(
        &key,
        &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
    ))
}

/// Checks the `X-Kamiyo-Signature` of a request against `secret`.
pub fn kamiyo_signature_matches(req: &Received, secret: &str) -> bool {
    req.header("x-kamiyo-signature") == kamiyo_signature(secret, &req.body)
}

/// Whether any `v1` signature of the `webhook-signature` header matches `secret`.
pub fn standard_signature_matches(req: &Received, secret: &str) -> bool {
    let expected = standard_signature(
        secret,
        req.header("webhook-id"),
        req.header("webhook-timestamp"),
        &req.body,
    );
    req.header("webhook-signature")
        .split(' ')
        .filter_map(|s| s.split_once(','))
        .any(|(version, sig)| version == "v1" && sig == expected)
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// Checks every header of a delivery request and both signatures.
pub fn assert_signed_delivery(req: &Received, secret: &str, event: &str) {
    assert_eq!(req.method, "POST");
    assert_eq!(req.header("content-type"), "application/json");
    assert_eq!(req.header("x-kamiyo-event"), event);
    let id = req.header("x-kamiyo-delivery");
    assert!(
        !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()),
        "X-Kamiyo-Delivery is not a decimal id: {id:?}"
    );
    assert_eq!(
        req.header("webhook-id"),
        id,
        "webhook-id = X-Kamiyo-Delivery"
    );
    let sig = req.header("x-kamiyo-signature");
    assert!(
        sig.len() == 64
            && sig
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "X-Kamiyo-Signature is not lowercase hex SHA-256: {sig:?}"
    );
    assert!(
        kamiyo_signature_matches(req, secret),
        "X-Kamiyo-Signature {sig} does not verify for body {}",
        req.text()
    );
    let ts: i64 = req
        .header("webhook-timestamp")
        .parse()
        .expect("webhook-timestamp is an integer");
    let sent = req
        .wall
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    assert!(
        (ts - sent).abs() <= 5,
        "webhook-timestamp {ts} is not the send time ({sent})"
    );
    assert!(
        standard_signature_matches(req, secret),
        "webhook-signature {} does not verify",
        req.header("webhook-signature")
    );
}

/// Polls an async condition until it holds; panics with `what` after `deadline`.
pub async fn eventually<F, Fut>(deadline: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !condition().await {
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(ms(20)).await;
    }
}

/// The attempt log of a delivery detail.
pub fn attempt_log(detail: &Value) -> Vec<Value> {
    detail["attempt_log"]
        .as_array()
        .unwrap_or_else(|| panic!("no attempt_log array: {detail}"))
        .clone()
}

/// The ids of a deliveries list.
pub fn ids(list: &[Value]) -> Vec<i64> {
    list.iter()
        .map(|d| d["id"].as_i64().unwrap_or_else(|| panic!("no id: {d}")))
        .collect()
}
