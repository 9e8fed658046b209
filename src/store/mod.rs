//! Persistence: the `Store` trait the API and the workers use, and one implementation
//! per backend (SQLite embedded by default; PostgreSQL for many processes).

pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use thiserror::Error;

use crate::domain::exploit::NewExploit;
use crate::domain::health::HealthFigures;
use crate::domain::tier::Tier;
use crate::domain::webhook::{NewWebhook, Webhook, WebhookPatch};

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("webhook limit of the {0} tier reached")]
    LimitReached(Tier),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    #[error("unsupported database URL: {0}")]
    UnsupportedUrl(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub tier: Tier,
    pub created_at_ms: i64,
}

/// What happened to one exploit of an ingest batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestOutcome {
    pub id: i64,
    pub duplicate: bool,
    /// Deliveries queued for it.
    pub matched: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    Pending,
    Succeeded,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<DeliveryStatus> {
        match s {
            "pending" => Some(DeliveryStatus::Pending),
            "succeeded" => Some(DeliveryStatus::Succeeded),
            "failed" => Some(DeliveryStatus::Failed),
            _ => None,
        }
    }
}

/// One delivery as the log shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryRecord {
    pub id: i64,
    pub webhook_id: i64,
    pub exploit_id: Option<i64>,
    pub event: String,
    pub status: DeliveryStatus,
    pub attempts: i64,
    pub next_attempt_at_ms: Option<i64>,
    pub created_at_ms: i64,
    pub sent_at_ms: Option<i64>,
    pub delivered_at_ms: Option<i64>,
    pub status_code: Option<i64>,
    pub latency_ms: Option<i64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct Page {
    /// 1-based.
    pub page: u32,
    pub page_size: u32,
}

/// Everything the service persists. Each method is one transaction.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies pending schema migrations.
    async fn migrate(&self) -> StoreResult<()>;
    /// Succeeds when the database answers.
    async fn ping(&self) -> StoreResult<()>;

    async fn create_user(&self, name: &str, tier: Tier, key_hash: &str) -> StoreResult<User>;
    async fn list_users(&self) -> StoreResult<Vec<User>>;
    async fn get_user(&self, id: i64) -> StoreResult<User>;
    async fn update_user(
        &self,
        id: i64,
        name: Option<&str>,
        tier: Option<Tier>,
    ) -> StoreResult<User>;
    async fn add_api_key(&self, user_id: i64, key_hash: &str) -> StoreResult<()>;
    /// Returns false when no active key has this hash.
    async fn revoke_api_key(&self, key_hash: &str) -> StoreResult<bool>;
    async fn user_by_api_key(&self, key_hash: &str) -> StoreResult<Option<User>>;

    /// Creates the webhook unless the user already owns `tier.max_webhooks()` of them;
    /// the check and the insert are atomic.
    async fn create_webhook(
        &self,
        user_id: i64,
        tier: Tier,
        new: &NewWebhook,
    ) -> StoreResult<Webhook>;
    async fn list_webhooks(&self, user_id: i64) -> StoreResult<Vec<Webhook>>;
    /// `NotFound` for unknown ids and other users' webhooks alike.
    async fn get_webhook(&self, user_id: i64, id: i64) -> StoreResult<Webhook>;
    async fn update_webhook(
        &self,
        user_id: i64,
        id: i64,
        patch: &WebhookPatch,
    ) -> StoreResult<Webhook>;
    /// Deletes the webhook; its pending deliveries stop.
    async fn delete_webhook(&self, user_id: i64, id: i64) -> StoreResult<()>;
    async fn set_webhook_secret(&self, user_id: i64, id: i64, secret: &str) -> StoreResult<()>;

    /// Stores new exploits and queues a delivery for each matching active webhook, all in
    /// one transaction; duplicates (by chain and tx hash) are reported, not stored.
    async fn ingest_exploits(&self, exploits: &[NewExploit]) -> StoreResult<Vec<IngestOutcome>>;

    /// The webhook's delivery figures for its health report.
    async fn webhook_health(&self, webhook_id: i64, now_ms: i64) -> StoreResult<HealthFigures>;

    /// One page of a webhook's deliveries, newest first, and the total count.
    async fn list_deliveries(
        &self,
        webhook_id: i64,
        status: Option<DeliveryStatus>,
        page: Page,
    ) -> StoreResult<(Vec<DeliveryRecord>, u64)>;
}

/// Opens the store named by a database URL.
pub async fn open(database_url: &str) -> StoreResult<Arc<dyn Store>> {
    if database_url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open(database_url).await?))
    } else {
        Err(StoreError::UnsupportedUrl(crate::config::redact_url(
            database_url,
        )))
    }
}

/// The case-insensitive identity of an exploit.
pub fn exploit_dedup_key(chain: &str, tx_hash: &str) -> String {
    format!("{}\n{}", chain.to_lowercase(), tx_hash.to_lowercase())
}

pub(crate) fn encode_list(list: &Option<Vec<String>>) -> Option<String> {
    list.as_ref()
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::to_string(l).expect("strings encode"))
}

pub(crate) fn decode_list(raw: Option<String>) -> StoreResult<Option<Vec<String>>> {
    raw.map(|s| {
        serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(format!("filter list: {e}")))
    })
    .transpose()
}
