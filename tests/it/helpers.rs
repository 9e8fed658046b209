//! The test harness: one real application per test, each with its own
//! database file, plus small typed helpers for the calls tests make often.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use kamiyo_webhooks::config::{Config, RateLimit, Role};
use kamiyo_webhooks::startup::{Application, CancellationToken};
use rand::distributions::Alphanumeric;
use rand::Rng as _;
use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::backend::TestDatabase;

/// Base path of the user webhook API.
pub const WEBHOOKS: &str = "/api/v1/user-webhooks";
/// The operator's exploit ingestion endpoint.
pub const EXPLOITS: &str = "/api/v1/exploits";
/// The operator's user endpoint.
pub const ADMIN_USERS: &str = "/api/v1/admin/users";
/// A receiver URL that passes validation; no test lets a worker send to it.
pub const HOOK_URL: &str = "https://hooks.example.com/kamiyo";

static COUNTER: AtomicU64 = AtomicU64::new(1);

/// A number unique within this test process.
pub fn unique() -> u64 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A transaction hash unique within this test process.
pub fn unique_tx() -> String {
    format!("0x{:064x}", unique())
}

pub fn random_token() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// A running application and a client pointed at it.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`
    pub address: String,
    pub admin_token: String,
    pub client: Client,
    /// The database file this app's temporary directory holds (the app may
    /// have been pointed at another database by `spawn_app_with`).
    #[allow(dead_code)]
    pub db_path: PathBuf,
    /// The database URL the app was really started with.
    #[allow(dead_code)]
    pub database_url: String,
    pub shutdown: CancellationToken,
    // Declared before the directory: fields drop in order, the database first.
    _db: TestDatabase,
    _dir: TempDir,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Logs go to the test output only when `TEST_LOG` is set (filtered by
/// `RUST_LOG`, default `info`).
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

/// Starts the application with the test defaults.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts the application with the API only: no delivery worker, so queued
/// deliveries stay exactly as ingestion left them.
pub async fn spawn_api_app() -> TestApp {
    spawn_app_with(|cfg| cfg.role = Role::Api).await
}

/// Starts the application with the test defaults, changed by `configure`.
#[allow(clippy::field_reassign_with_default)]
pub async fn spawn_app_with(configure: impl FnOnce(&mut Config)) -> TestApp {
    init_test_logging();
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let db_path = dir.path().join("test.db");
    let db = TestDatabase::create(dir.path(), "test").await;
    let admin_token = random_token();

    let mut config = Config::default();
    config.database_url = db.url.clone();
    config.listen = "127.0.0.1:0".to_owned();
    config.admin_token = Some(admin_token.clone());
    config.allow_http = true;
    config.retry_schedule = vec![Duration::from_millis(20), Duration::from_millis(40)];
    config.delivery_timeout = Duration::from_secs(2);
    // Tests fire requests faster than any client should; `security.rs` turns it on.
    config.rate_limit = RateLimit::DISABLED;
    configure(&mut config);
    let database_url = config.database_url.clone();

    let app = Application::build(config)
        .await
        .expect("the application builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        if let Err(error) = app.run_until_stopped(stop).await {
            eprintln!("application stopped with an error: {error:#}");
        }
    });

    let client = Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("build the HTTP client");

    TestApp {
        address,
        admin_token,
        client,
        db_path,
        database_url,
        shutdown,
        _db: db,
        _dir: dir,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// A request without credentials.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// A request carrying the admin token.
    pub fn admin(&self, method: Method, path: &str) -> RequestBuilder {
        self.request(method, path).bearer_auth(&self.admin_token)
    }

    /// A request carrying a user's API key.
    pub fn user(&self, key: &str, method: Method, path: &str) -> RequestBuilder {
        self.request(method, path).bearer_auth(key)
    }

    /// Creates a user through the admin API; returns the whole answer.
    pub async fn create_user_named(&self, name: &str, tier: &str) -> Value {
        let resp = self
            .admin(Method::POST, ADMIN_USERS)
            .json(&json!({ "name": name, "tier": tier }))
            .send()
            .await
            .expect("send create user");
        json_body(resp, StatusCode::CREATED).await
    }

    /// Creates a user of `tier` through the admin API; returns (id, api_key).
    pub async fn create_user(&self, tier: &str) -> (i64, String) {
        let user = self
            .create_user_named(&format!("user-{tier}-{}", unique()), tier)
            .await;
        let id = user["id"].as_i64().expect("user id is an integer");
        let key = user["api_key"].as_str().expect("api_key is a string");
        (id, key.to_owned())
    }

    pub async fn set_tier(&self, user_id: i64, tier: &str) -> Response {
        self.admin(Method::PATCH, &format!("{ADMIN_USERS}/{user_id}"))
            .json(&json!({ "tier": tier }))
            .send()
            .await
            .expect("send set tier")
    }

    /// Issues another API key for a user through the admin API.
    pub async fn create_api_key(&self, user_id: i64) -> String {
        let resp = self
            .admin(Method::POST, &format!("{ADMIN_USERS}/{user_id}/api-keys"))
            .send()
            .await
            .expect("send create api key");
        let body = json_body(resp, StatusCode::CREATED).await;
        body["api_key"]
            .as_str()
            .expect("api_key is a string")
            .to_owned()
    }

    pub async fn create_webhook(&self, key: &str, body: &Value) -> Response {
        self.user(key, Method::POST, WEBHOOKS)
            .json(body)
            .send()
            .await
            .expect("send create webhook")
    }

    /// Creates a webhook and insists on 201; returns the webhook.
    pub async fn create_webhook_ok(&self, key: &str, body: &Value) -> Value {
        let resp = self.create_webhook(key, body).await;
        json_body(resp, StatusCode::CREATED).await
    }

    /// Creates a webhook and returns its id.
    pub async fn create_webhook_id(&self, key: &str, body: &Value) -> i64 {
        self.create_webhook_ok(key, body).await["id"]
            .as_i64()
            .expect("webhook id is an integer")
    }

    pub async fn list_webhooks(&self, key: &str) -> Value {
        let resp = self
            .user(key, Method::GET, WEBHOOKS)
            .send()
            .await
            .expect("send list webhooks");
        json_body(resp, StatusCode::OK).await
    }

    pub async fn get_webhook(&self, key: &str, id: i64) -> Response {
        self.user(key, Method::GET, &format!("{WEBHOOKS}/{id}"))
            .send()
            .await
            .expect("send get webhook")
    }

    pub async fn get_webhook_ok(&self, key: &str, id: i64) -> Value {
        json_body(self.get_webhook(key, id).await, StatusCode::OK).await
    }

    pub async fn patch_webhook(&self, key: &str, id: i64, body: &Value) -> Response {
        self.user(key, Method::PATCH, &format!("{WEBHOOKS}/{id}"))
            .json(body)
            .send()
            .await
            .expect("send patch webhook")
    }

    pub async fn delete_webhook(&self, key: &str, id: i64) -> Response {
        self.user(key, Method::DELETE, &format!("{WEBHOOKS}/{id}"))
            .send()
            .await
            .expect("send delete webhook")
    }

    pub async fn regenerate_secret(&self, key: &str, id: i64) -> Response {
        self.user(
            key,
            Method::POST,
            &format!("{WEBHOOKS}/{id}/regenerate-secret"),
        )
        .send()
        .await
        .expect("send regenerate secret")
    }

    /// `query` is appended as is, e.g. `"?page=2&page_size=10"` or `""`.
    pub async fn deliveries(&self, key: &str, id: i64, query: &str) -> Response {
        self.user(
            key,
            Method::GET,
            &format!("{WEBHOOKS}/{id}/deliveries{query}"),
        )
        .send()
        .await
        .expect("send list deliveries")
    }

    pub async fn deliveries_ok(&self, key: &str, id: i64, query: &str) -> Value {
        json_body(self.deliveries(key, id, query).await, StatusCode::OK).await
    }

    pub async fn ingest_raw(&self, body: &Value) -> Response {
        self.admin(Method::POST, EXPLOITS)
            .json(body)
            .send()
            .await
            .expect("send ingest")
    }

    /// Ingests one exploit or a batch; insists on 200 and returns the answer.
    pub async fn ingest(&self, body: &Value) -> Value {
        json_body(self.ingest_raw(body).await, StatusCode::OK).await
    }

    /// Ingests one exploit and returns its single result.
    pub async fn ingest_one(&self, exploit: &Value) -> Value {
        let answer = self.ingest(exploit).await;
        let results = answer["results"].as_array().expect("results is an array");
        assert_eq!(results.len(), 1, "one result per exploit: {answer}");
        results[0].clone()
    }

    /// Ingests one exploit that must be accepted as new; returns its id.
    pub async fn ingest_new(&self, exploit: &Value) -> i64 {
        accepted_id(&self.ingest_one(exploit).await)
    }
}

/// A valid webhook body without filters.
pub fn webhook(name: &str) -> Value {
    json!({ "name": name, "url": HOOK_URL })
}

/// A valid exploit with the required fields only.
pub fn exploit(tx_hash: &str, chain: &str, protocol: &str, amount_usd: f64) -> Value {
    json!({
        "tx_hash": tx_hash,
        "chain": chain,
        "protocol": protocol,
        "amount_usd": amount_usd,
        "timestamp": "2025-10-10T12:30:00Z",
    })
}

/// A valid exploit with every field set.
pub fn full_exploit() -> Value {
    json!({
        "tx_hash": unique_tx(),
        "chain": "Ethereum",
        "protocol": "Uniswap",
        "amount_usd": 250000.0,
        "timestamp": "2025-10-10T12:30:00",
        "source": "PeckShield",
        "source_url": "https://peckshield.example/alerts/1",
        "category": "flash_loan",
        "description": "Flash loan attack on a pool",
    })
}

/// Checks an ingest result says "stored as new" and returns the exploit id.
pub fn accepted_id(result: &Value) -> i64 {
    assert!(
        result.get("error").is_none(),
        "expected the exploit to be accepted: {result}"
    );
    assert_eq!(
        result["duplicate"], false,
        "expected a new exploit: {result}"
    );
    result["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no integer id: {result}"))
}

/// Reads a JSON body after checking the status.
pub async fn json_body(resp: Response, expected: StatusCode) -> Value {
    let status = resp.status();
    let url = resp.url().clone();
    let text = resp.text().await.expect("read the response body");
    assert_eq!(status, expected, "{url} answered: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{url} answered non-JSON ({e}): {text}"))
}

/// Checks the status and the error code of the `{"error":{..}}` shape and
/// returns the message.
pub async fn assert_error(resp: Response, expected: StatusCode, code: &str) -> String {
    let status = resp.status();
    let url = resp.url().clone();
    let text = resp.text().await.expect("read the response body");
    assert_eq!(status, expected, "{url} answered: {text}");
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{url}: error body is not JSON ({e}): {text}"));
    assert_eq!(body["error"]["code"], code, "{url} answered: {text}");
    body["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("{url}: error without a string message: {text}"))
        .to_owned()
}

/// Checks for a 422 `validation_error` whose message starts with `field`.
pub async fn assert_validation_error(resp: Response, field: &str) -> String {
    let message = assert_error(resp, StatusCode::UNPROCESSABLE_ENTITY, "validation_error").await;
    assert!(
        message.starts_with(field),
        "the message should start with {field:?}: {message:?}"
    );
    message
}

/// Checks for 404 `not_found`.
pub async fn assert_not_found(resp: Response) {
    assert_error(resp, StatusCode::NOT_FOUND, "not_found").await;
}

/// Checks for 401 `unauthorized`.
pub async fn assert_unauthorized(resp: Response) {
    assert_error(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

/// `whsec_` + standard base64 of 32 bytes.
pub fn assert_secret_format(secret: &str) {
    let encoded = secret
        .strip_prefix("whsec_")
        .unwrap_or_else(|| panic!("secret without whsec_ prefix: {secret:?}"));
    assert_eq!(
        encoded.len(),
        44,
        "base64 of 32 bytes is 44 chars: {secret:?}"
    );
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap_or_else(|e| panic!("secret is not standard base64 ({e}): {secret:?}"));
    assert_eq!(bytes.len(), 32, "secret should hold 32 bytes: {secret:?}");
}

/// Checks a `YYYY-MM-DDTHH:MM:SS` UTC timestamp close to now.
pub fn assert_recent_utc_timestamp(value: &Value, field: &str) {
    let text = value[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is not a string: {value}"));
    let parsed = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S")
        .unwrap_or_else(|e| panic!("{field} = {text:?} is not YYYY-MM-DDTHH:MM:SS: {e}"));
    let now = chrono::Utc::now().naive_utc();
    let skew = (now - parsed).num_seconds().abs();
    assert!(skew < 300, "{field} = {text} is not now in UTC ({now})");
}

/// The exploit ids of a deliveries page, in page order.
pub fn exploit_ids(page: &Value) -> Vec<i64> {
    page["deliveries"]
        .as_array()
        .unwrap_or_else(|| panic!("deliveries is not an array: {page}"))
        .iter()
        .map(|d| {
            d["exploit_id"]
                .as_i64()
                .unwrap_or_else(|| panic!("exploit_id is not an integer: {d}"))
        })
        .collect()
}

/// Polls `condition` until it holds; panics with `what` after `deadline`.
pub async fn wait_until(deadline: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One request a [`TestReceiver`] got.
#[derive(Clone, Debug)]
pub struct ReceivedRequest {
    #[allow(dead_code)]
    pub headers: axum::http::HeaderMap,
    #[allow(dead_code)]
    pub body: Vec<u8>,
}

type Received = Arc<Mutex<Vec<ReceivedRequest>>>;

/// A real HTTP server on 127.0.0.1 that answers 200 to `POST /hook` and
/// records every request. The app must allow `127.0.0.0/8` to reach it.
pub struct TestReceiver {
    /// `http://127.0.0.1:PORT/hook`
    pub url: String,
    requests: Received,
    server: tokio::task::JoinHandle<()>,
}

impl TestReceiver {
    pub async fn start() -> TestReceiver {
        async fn record(
            axum::extract::State(requests): axum::extract::State<Received>,
            headers: axum::http::HeaderMap,
            body: axum::body::Bytes,
        ) -> axum::http::StatusCode {
            let request = ReceivedRequest {
                headers,
                body: body.to_vec(),
            };
            requests.lock().unwrap().push(request);
            axum::http::StatusCode::OK
        }

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let port = listener.local_addr().unwrap().port();
        let requests = Received::default();
        let router = axum::Router::new()
            .route("/hook", axum::routing::post(record))
            .with_state(requests.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .await
                .expect("the receiver runs");
        });
        TestReceiver {
            url: format!("http://127.0.0.1:{port}/hook"),
            requests,
            server,
        }
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// Every request received so far, in order.
    #[allow(dead_code)]
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for TestReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// An app allowed to deliver to a [`TestReceiver`] on loopback.
pub async fn spawn_app_reaching_loopback() -> TestApp {
    spawn_app_with(|cfg| cfg.allow_private_networks = vec!["127.0.0.0/8".to_owned()]).await
}

/// A store opened straight (no HTTP app) on a fresh database of the test's backend, with
/// one enterprise user owning one unfiltered webhook named `name`. The database lives as
/// long as the returned `TestDatabase`.
pub async fn store_with_one_webhook(
    dir: &std::path::Path,
    name: &str,
) -> (
    TestDatabase,
    Arc<dyn kamiyo_webhooks::store::Store>,
    kamiyo_webhooks::domain::webhook::Webhook,
) {
    use kamiyo_webhooks::domain::secretbox::SecretCodec;
    use kamiyo_webhooks::domain::tier::Tier;

    let db = TestDatabase::create(dir, name).await;
    let store = kamiyo_webhooks::store::open(&db.url, 2, SecretCodec::plaintext())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let user = store
        .create_user("fund", Tier::Enterprise, "hash")
        .await
        .unwrap();
    let hook = add_store_webhook(&store, user.id, name, "https://alerts.example/hook").await;
    (db, store, hook)
}

/// One more unfiltered, active webhook of an enterprise user, created in the store directly.
pub async fn add_store_webhook(
    store: &Arc<dyn kamiyo_webhooks::store::Store>,
    user_id: i64,
    name: &str,
    url: &str,
) -> kamiyo_webhooks::domain::webhook::Webhook {
    use kamiyo_webhooks::domain::filter::Filters;
    use kamiyo_webhooks::domain::tier::Tier;
    use kamiyo_webhooks::domain::webhook::{NewWebhook, WebhookUrl};

    store
        .create_webhook(
            user_id,
            Tier::Enterprise,
            &NewWebhook {
                name: name.into(),
                url: WebhookUrl::parse(url, false).unwrap(),
                filters: Filters::default(),
                is_active: true,
                secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
            },
        )
        .await
        .unwrap()
}

/// `n` exploits with fresh transaction hashes, each matching an unfiltered webhook, for
/// tests that ingest through the store directly.
pub fn new_exploits(n: usize) -> Vec<kamiyo_webhooks::domain::exploit::NewExploit> {
    (0..n)
        .map(|_| kamiyo_webhooks::domain::exploit::NewExploit {
            tx_hash: unique_tx(),
            chain: "ethereum".into(),
            protocol: "aave".into(),
            amount_usd: 1_000_000.0,
            timestamp_ms: 1_700_000_000_000,
            source: None,
            source_url: None,
            category: None,
            description: None,
        })
        .collect()
}

/// Ingests `n` fresh exploits through the store and claims every delivery due; the
/// claim's time and the claimed deliveries in id order.
pub async fn ingest_and_claim_all(
    store: &Arc<dyn kamiyo_webhooks::store::Store>,
    n: usize,
) -> (i64, Vec<kamiyo_webhooks::store::ClaimedDelivery>) {
    store.ingest_exploits(&new_exploits(n)).await.unwrap();
    let now = kamiyo_webhooks::domain::time::now_ms();
    let mut claimed = store
        .claim_due_deliveries(now, now + 60_000, 100, 100, &[])
        .await
        .unwrap();
    claimed.sort_by_key(|d| d.id);
    (now, claimed)
}
