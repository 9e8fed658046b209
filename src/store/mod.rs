//! Persistence: the `Store` trait the API and the workers use, and one implementation
//! per backend (SQLite embedded by default; PostgreSQL for many processes).

mod hours;
mod outcomes;
pub mod pagecache;
mod pgstats;
pub mod postgres;
mod rows;
pub mod secrets;
pub mod sqlite;
mod sqlite_writer;

use std::sync::Arc;

use async_trait::async_trait;
use thiserror::Error;

use crate::domain::exploit::NewExploit;
use crate::domain::health::HealthFigures;
use crate::domain::secretbox::{SecretCodec, SecretError};
use crate::domain::tier::Tier;
use crate::domain::webhook::{NewWebhook, Webhook, WebhookPatch};

pub use outcomes::{Outcomes, TurnClaim, Turned};

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
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the database writer thread has stopped")]
    WriterStopped,
    #[error(
        "another process already runs delivery workers on this SQLite database (it holds \
         {0}); one process delivers from a SQLite file: stop the other, start this one \
         with --role api, or use PostgreSQL for several workers"
    )]
    WorkersElsewhere(String),
    #[error("could not sync {0} to disk: {1}")]
    Sync(String, std::io::Error),
    #[error("could not lock {0}: {1}")]
    WorkerLock(String, std::io::Error),
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

/// A delivery claimed by a worker, with everything needed to send it.
#[derive(Debug, Clone)]
pub struct ClaimedDelivery {
    pub id: i64,
    pub webhook_id: i64,
    /// Shared by the deliveries of one webhook in a claim, like the secret and the event:
    /// a claim allocates them once, not once per delivery.
    pub url: Arc<str>,
    /// The webhook's secret now: signing happens at send time.
    pub secret: Arc<str>,
    pub event: Arc<str>,
    /// Shared by every delivery of the same event in a claim: cloning it copies nothing.
    pub body: bytes::Bytes,
    /// The number of this attempt, 1-based, over the delivery's whole life.
    pub attempt: i64,
    /// The number of this attempt since the schedule last (re)started, 1-based.
    pub round_attempt: i64,
}

/// The shared copy of an event name among the few a claim has seen, added if new: a
/// claim's deliveries share one allocation per name.
pub(crate) fn intern(names: &mut Vec<Arc<str>>, name: &str) -> Arc<str> {
    if let Some(known) = names.iter().find(|n| &***n == name) {
        return known.clone();
    }
    let new: Arc<str> = name.into();
    names.push(new.clone());
    new
}

/// How an attempt ended, as decided by the retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    Succeeded,
    /// Failed; try again at this time (ms).
    RetryAt(i64),
    /// Failed, and that was the last attempt.
    Failed,
    /// The endpoint answered 410 Gone: the delivery fails and the webhook is deactivated.
    Gone,
}

/// One finished attempt, to be recorded.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub delivery_id: i64,
    pub webhook_id: i64,
    pub attempt: i64,
    pub started_at_ms: i64,
    pub latency_ms: i64,
    pub status_code: Option<i64>,
    pub error_kind: Option<&'static str>,
    pub error: Option<String>,
    pub response_body: Option<String>,
    pub result: AttemptResult,
}

/// One attempt as the delivery log shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptLog {
    pub attempt: i64,
    pub started_at_ms: i64,
    pub status_code: Option<i64>,
    pub latency_ms: i64,
    pub error_kind: Option<String>,
    pub error: Option<String>,
    pub response_body: Option<String>,
}

/// A delivery with its body and every attempt.
#[derive(Debug, Clone)]
pub struct DeliveryDetail {
    pub delivery: DeliveryRecord,
    pub payload: String,
    pub attempts: Vec<AttemptLog>,
}

/// A stored secret text to replace, unless it changed since it was read.
#[derive(Debug, Clone)]
pub struct SecretChange {
    pub id: i64,
    pub old: String,
    pub new: String,
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
    /// True when only one process may use this database, so every claim found at start
    /// belongs to a process that is gone.
    fn single_process(&self) -> bool;
    /// Makes this process the one that runs delivery workers on a `single_process`
    /// database, for as long as the store lives; an error if another process is.
    fn take_workers(&self) -> StoreResult<()> {
        Ok(())
    }
    /// Wakes `wake` whenever another process queues deliveries (no-op where not supported:
    /// workers then rely on their fallback poll).
    async fn subscribe_wakeups(&self, _wake: Arc<tokio::sync::Notify>) -> StoreResult<()> {
        Ok(())
    }

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
    /// The secret column as stored (sealed or plain) of webhooks with an id above
    /// `after_id`, deleted ones included, by id: for re-encryption and start-up checks.
    async fn stored_secrets(&self, after_id: i64, limit: u32) -> StoreResult<Vec<(i64, String)>>;
    /// Replaces stored secret texts in one transaction; a row whose text is no longer
    /// `old` (regenerated meanwhile) is left alone. Returns the ids replaced.
    async fn replace_stored_secrets(&self, changes: &[SecretChange]) -> StoreResult<Vec<i64>>;

    /// Stores new exploits and queues a delivery for each matching active webhook;
    /// duplicates (by chain and tx hash) are reported, not stored. All are durable once
    /// this returns. A backend may commit a large batch in parts, so that deliveries start
    /// while the rest is stored (SQLite takes up to 16 exploits at a time and inserts
    /// their deliveries webhook by webhook, the first webhooks' first); an exploit whose
    /// deliveries span parts and that a crash cuts off is marked, and gets the rest when
    /// the process that owns the workers next starts (`Store::take_workers`), so that an
    /// exploit stored is never left with only some of its deliveries.
    async fn ingest_exploits(&self, exploits: &[NewExploit]) -> StoreResult<Vec<IngestOutcome>>;

    /// The webhook's delivery figures for its health report.
    async fn webhook_health(&self, webhook_id: i64, now_ms: i64) -> StoreResult<HealthFigures>;
    /// The figures of several webhooks, in the order given, in one round trip.
    async fn webhooks_health(
        &self,
        webhook_ids: &[i64],
        now_ms: i64,
    ) -> StoreResult<Vec<HealthFigures>>;

    /// Claims up to `limit` due deliveries until `lease_until`. A webhook listed in
    /// `room` gets at most the number beside it (what its bound leaves beside the claims
    /// this process holds for it), any other at most `per_endpoint`. Deliveries of
    /// webhooks that are no longer active are finished as failed instead.
    async fn claim_due_deliveries(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: usize,
        per_endpoint: usize,
        room: &[(i64, usize)],
    ) -> StoreResult<Vec<ClaimedDelivery>> {
        self.record_and_claim(&[], now_ms, lease_until_ms, limit, per_endpoint, room)
            .await
    }

    /// When the earliest pending delivery outside `busy` becomes claimable, if any.
    async fn next_claimable_at(&self, now_ms: i64, busy: &[i64]) -> StoreResult<Option<i64>>;

    /// Gives claims back without an attempt (e.g. on shutdown before sending).
    async fn release_claims(&self, delivery_ids: &[i64]) -> StoreResult<()>;

    /// Forgets every claim: only for a backend that one process owns alone, at its start.
    async fn release_all_claims(&self) -> StoreResult<()>;

    /// Records finished attempts and their consequences, in one transaction.
    async fn record_attempts(&self, records: &[AttemptRecord]) -> StoreResult<()>;

    /// The dispatcher's turn: `record_attempts`, then a claim as `claim_due_deliveries`
    /// describes, in one transaction. An error means the records were not written; once
    /// they are, a failed claim only logs (the next turn claims again).
    #[allow(clippy::too_many_arguments)]
    async fn record_and_claim(
        &self,
        records: &[AttemptRecord],
        now_ms: i64,
        lease_until_ms: i64,
        limit: usize,
        per_endpoint: usize,
        room: &[(i64, usize)],
    ) -> StoreResult<Vec<ClaimedDelivery>>;

    /// The dispatcher's turn as `record_and_claim` describes, writing at most `max` of
    /// `outcomes` (without `claim`, only those). A backend takes them as late as it can,
    /// when the turn's transaction starts; a turn that fails puts them back.
    async fn turn(
        &self,
        outcomes: &Arc<Outcomes>,
        max: usize,
        claim: Option<TurnClaim>,
    ) -> StoreResult<Turned> {
        let records = outcomes.take(max);
        let done = match &claim {
            Some(c) if c.limit(records.len()) > 0 => {
                let limit = c.limit(records.len());
                self.record_and_claim(
                    &records,
                    c.now_ms,
                    c.lease_until_ms,
                    limit,
                    c.per_endpoint,
                    &c.room,
                )
                .await
                .map(|claimed| (limit, claimed))
            }
            _ => self
                .record_attempts(&records)
                .await
                .map(|()| (0, Vec::new())),
        };
        match done {
            Ok((limit, claimed)) => Ok(Turned {
                recorded: records.len(),
                limit,
                claimed,
            }),
            Err(e) => {
                outcomes.restore(records);
                Err(e)
            }
        }
    }

    /// Pending deliveries, for the queue-depth gauge.
    async fn queue_depth(&self) -> StoreResult<i64>;

    /// A delivery of `webhook_id` with its body and attempts.
    async fn delivery_detail(
        &self,
        webhook_id: i64,
        delivery_id: i64,
    ) -> StoreResult<DeliveryDetail>;

    /// Queues a delivery again now, restarting its retry schedule.
    async fn requeue_delivery(
        &self,
        webhook_id: i64,
        delivery_id: i64,
        now_ms: i64,
    ) -> StoreResult<DeliveryRecord>;

    /// Records a test delivery, already claimed by the caller who sends it.
    async fn create_test_delivery(
        &self,
        webhook_id: i64,
        payload: &str,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> StoreResult<i64>;

    /// One page of a webhook's deliveries, newest first, and the total count.
    async fn list_deliveries(
        &self,
        webhook_id: i64,
        status: Option<DeliveryStatus>,
        page: Page,
    ) -> StoreResult<(Vec<DeliveryRecord>, u64)>;

    /// Finished attempts of a webhook's deliveries started at or after `since_ms`, grouped
    /// in buckets of `bucket_ms` counted from `since_ms` (bucket 0 starts there); only
    /// buckets holding an attempt, by index.
    async fn attempt_buckets(
        &self,
        webhook_id: i64,
        since_ms: i64,
        bucket_ms: i64,
    ) -> StoreResult<Vec<AttemptBucket>>;
}

/// Whether a database URL names a PostgreSQL server (either scheme it accepts).
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Opens the store named by a database URL; `secrets` seals and opens webhook secrets.
pub async fn open(
    database_url: &str,
    pool_size: u32,
    secrets: SecretCodec,
) -> StoreResult<Arc<dyn Store>> {
    if database_url.starts_with("sqlite:") {
        Ok(Arc::new(
            sqlite::SqliteStore::open(database_url, secrets).await?,
        ))
    } else if is_postgres_url(database_url) {
        Ok(Arc::new(
            postgres::PgStore::open(database_url, pool_size, secrets).await?,
        ))
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

/// How far behind a webhook's `last_success_at` may be while its health is otherwise
/// unchanged (no failure streak to end, none to start). A busy endpoint succeeds many
/// times a second: without this, every turn would rewrite its webhook row only to move the
/// time, one row per webhook per turn, as many as the turn's deliveries when a fan-out is
/// going out. Failures, and the first success after them, are written at once.
pub(crate) const SUCCESS_TIME_GRAIN_MS: i64 = 1_000;

/// What a batch of attempts changes in one webhook's health columns.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HealthDelta {
    pub webhook_id: i64,
    /// A success happened: the failure streak restarts from `failures`.
    pub reset: bool,
    /// Failures after the last success in the batch (or all, without one).
    pub failures: i64,
    pub last_success_at: Option<i64>,
    pub last_failure_at: Option<i64>,
    pub last_error: Option<String>,
}

/// Folds a batch of attempts, in order, into one change per webhook.
pub(crate) fn health_deltas(records: &[AttemptRecord]) -> Vec<HealthDelta> {
    let mut out: Vec<HealthDelta> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for r in records {
        let finished = r.started_at_ms + r.latency_ms;
        let i = *index.entry(r.webhook_id).or_insert_with(|| {
            out.push(HealthDelta {
                webhook_id: r.webhook_id,
                reset: false,
                failures: 0,
                last_success_at: None,
                last_failure_at: None,
                last_error: None,
            });
            out.len() - 1
        });
        let d = &mut out[i];
        if r.result == AttemptResult::Succeeded {
            d.reset = true;
            d.failures = 0;
            d.last_success_at = d.last_success_at.max(Some(finished));
        } else {
            d.failures += 1;
            d.last_failure_at = d.last_failure_at.max(Some(finished));
            d.last_error = r.error.clone();
        }
    }
    out
}

/// The delivery columns an attempt sets: (status, next_attempt_at, delivered_at).
pub(crate) fn delivery_outcome(r: &AttemptRecord) -> (&'static str, Option<i64>, Option<i64>) {
    match r.result {
        AttemptResult::Succeeded => ("succeeded", None, Some(r.started_at_ms + r.latency_ms)),
        AttemptResult::RetryAt(t) => ("pending", Some(t), None),
        AttemptResult::Failed | AttemptResult::Gone => ("failed", None, None),
    }
}

/// Why a 410 deactivated a webhook, for its owner to read.
pub(crate) fn gone_reason(at_ms: i64) -> String {
    format!(
        "the endpoint answered 410 Gone at {} UTC; set is_active to true to resume",
        crate::domain::time::format_ms(at_ms)
    )
}

/// Chooses what a claim takes from due deliveries offered in the order they are due: at
/// most `limit`, and per webhook no more than `per_endpoint` counting the attempts
/// already in flight to it.
pub(crate) struct ClaimPicker {
    /// What each webhook may still take; one not listed takes up to `per_endpoint`.
    room: rustc_hash::FxHashMap<i64, usize>,
    /// A delivery may be offered twice (the head of the due order, then its endpoint).
    seen: rustc_hash::FxHashSet<i64>,
    per_endpoint: usize,
    limit: usize,
    picked: Vec<i64>,
}

impl ClaimPicker {
    pub(crate) fn new(room: &[(i64, usize)], per_endpoint: usize, limit: usize) -> Self {
        ClaimPicker {
            room: room.iter().copied().collect(),
            seen: Default::default(),
            per_endpoint,
            limit,
            picked: Vec::with_capacity(limit.min(1024)),
        }
    }

    /// Takes the delivery if its webhook has room; false once the claim is full.
    pub(crate) fn offer(&mut self, id: i64, webhook_id: i64) -> bool {
        if self.is_full() {
            return false;
        }
        let room = self.room.entry(webhook_id).or_insert(self.per_endpoint);
        if *room > 0 && self.seen.insert(id) {
            *room -= 1;
            self.picked.push(id);
        }
        !self.is_full()
    }

    /// Whether this claim took the delivery already.
    pub(crate) fn has_taken(&self, id: i64) -> bool {
        self.seen.contains(&id)
    }

    /// Whether the webhook can take one more.
    pub(crate) fn has_room(&self, webhook_id: i64) -> bool {
        self.room_of(webhook_id) > 0
    }

    /// How many more the webhook can take.
    pub(crate) fn room_of(&self, webhook_id: i64) -> usize {
        self.room
            .get(&webhook_id)
            .copied()
            .unwrap_or(self.per_endpoint)
    }

    pub(crate) fn is_full(&self) -> bool {
        self.picked.len() >= self.limit
    }

    pub(crate) fn picked(self) -> Vec<i64> {
        self.picked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`ClaimPicker`] over a whole list.
    fn pick_claims(
        due: &[(i64, i64)],
        room: &[(i64, usize)],
        per_endpoint: usize,
        limit: usize,
    ) -> Vec<i64> {
        let mut picker = ClaimPicker::new(room, per_endpoint, limit);
        for &(id, webhook_id) in due {
            if !picker.offer(id, webhook_id) {
                break;
            }
        }
        picker.picked()
    }

    #[test]
    fn pick_claims_respects_the_endpoint_bound_and_the_limit() {
        // Webhook 1 has 3 due, webhook 2 has 2 due and room for 1, webhook 3 none;
        // webhook 4 has room for 3, more than the bound of the unlisted.
        let due = [
            (10, 1),
            (11, 2),
            (12, 1),
            (13, 3),
            (14, 2),
            (15, 1),
            (16, 4),
            (17, 4),
            (18, 4),
            (19, 4),
        ];
        let room = [(2, 1), (3, 0), (4, 3)];
        assert_eq!(
            pick_claims(&due, &room, 2, 10),
            vec![10, 11, 12, 16, 17, 18]
        );
        assert_eq!(pick_claims(&due, &room, 2, 2), vec![10, 11]);
        assert_eq!(pick_claims(&due, &[], 1, 10), vec![10, 11, 13, 16]);
        let picker = ClaimPicker::new(&room, 2, 10);
        assert!(picker.has_room(1) && picker.has_room(2) && !picker.has_room(3));
        assert!(pick_claims(&due, &[], 0, 10).is_empty());
        // Offered twice (head of the due order, then by endpoint): taken once.
        let twice = [(10, 1), (11, 1), (10, 1), (12, 1)];
        assert_eq!(pick_claims(&twice, &[], 5, 10), vec![10, 11, 12]);
    }

    fn rec(webhook_id: i64, t: i64, result: AttemptResult) -> AttemptRecord {
        AttemptRecord {
            delivery_id: t,
            webhook_id,
            attempt: 1,
            started_at_ms: t,
            latency_ms: 0,
            status_code: None,
            error_kind: None,
            error: (result != AttemptResult::Succeeded).then(|| format!("e{t}")),
            response_body: None,
            result,
        }
    }

    #[test]
    fn health_deltas_count_failures_after_the_last_success() {
        let d = health_deltas(&[
            rec(1, 1, AttemptResult::Failed),
            rec(1, 2, AttemptResult::Succeeded),
            rec(1, 3, AttemptResult::RetryAt(9)),
            rec(2, 4, AttemptResult::Failed),
            rec(2, 5, AttemptResult::Gone),
        ]);
        assert_eq!(d.len(), 2);
        assert!(d[0].reset);
        assert_eq!(d[0].failures, 1);
        assert_eq!(d[0].last_success_at, Some(2));
        assert_eq!(d[0].last_error.as_deref(), Some("e3"));
        assert!(!d[1].reset);
        assert_eq!(d[1].failures, 2);
        assert_eq!(d[1].last_failure_at, Some(5));
    }
}

/// Attempts of one time bucket, for the delivery chart.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptBucket {
    /// 0-based position of the bucket after the window's start.
    pub index: i64,
    /// Attempts that got a 2xx answer in time.
    pub succeeded: u64,
    pub failed: u64,
    pub mean_latency_ms: Option<f64>,
}
