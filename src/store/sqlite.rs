//! SQLite store: one file in WAL mode. Writes go through a single connection so they
//! queue in this process instead of failing with SQLITE_BUSY; reads use a small pool.

use std::str::FromStr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::ConnectOptions;
use sqlx::{Connection, Row, Sqlite, SqliteConnection};

use super::hours::hour_of;
use super::rows::{DELIVERY_COLUMNS, EXPLOIT_JOIN_COLUMNS, WEBHOOK_COLUMNS};
use super::sqlite_writer::{beside, Claim, HotPath};
use super::*;
use crate::domain::exploit::Exploit;
use crate::domain::filter::Filters;
use crate::domain::payload::encode_event;
use crate::domain::secretbox::SecretCodec;
use crate::domain::time::now_ms;

pub struct SqliteStore {
    read: SqlitePool,
    write: SqlitePool,
    /// Seals webhook secrets on write and opens them on read.
    secrets: SecretCodec,
    /// Ingest, claims and attempt outcomes: a connection on a thread of its own.
    hot: HotPath,
    /// The checkpoint task runs while this lives.
    _alive: Arc<()>,
    /// The workers' lock file beside the database file (none in memory).
    workers_lock: Option<std::path::PathBuf>,
    /// Held while this process runs the delivery workers: claims are in its memory only.
    workers: std::sync::Mutex<Option<std::fs::File>>,
}

const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes per database page of a new database (SQLite's default is 4096). Recording an
/// outcome changed a row and four index entries when this was measured: with pages twice
/// as large the b-trees are shallower and split half as often, and the writer's CPU per
/// delivery fell 7% (BENCHMARKS.md item 50). Since migration 0007 (two entries) the page
/// size made no difference (item 52). The writer's cache is set in bytes, so memory is
/// the same.
pub(crate) const PAGE_SIZE: u32 = 8192;
const READ_CONNECTIONS: u32 = 8;

impl SqliteStore {
    pub async fn open(url: &str, secrets: SecretCodec) -> StoreResult<SqliteStore> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: an acknowledged write survives a power cut, not only a crash.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            // Statement journals in memory: multi-row writes would otherwise write them
            // to a temporary file with a syscall per page.
            .pragma("temp_store", "memory")
            // Only a database this creates: an existing file keeps the size it has.
            .page_size(PAGE_SIZE);
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(BUSY_TIMEOUT)
            // This writer does the rare writes (users, keys, webhooks); ingest, claims and
            // outcomes have their own (`HotPath`, 16 MiB of cache). These keep SQLite's
            // default page cache (2 MiB each), so memory stays flat however deep the
            // queue. Checkpoints run beside the writers (below), not inside one of their
            // commits, where copying the WAL would stall writes.
            .connect_with(options.clone().pragma("wal_autocheckpoint", "0"))
            .await?;
        let alive = Arc::new(());
        let checkpointer = options.clone().connect().await?;
        tokio::spawn(run_checkpoints(checkpointer, Arc::downgrade(&alive)));
        let read = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(options.clone().read_only(true))
            .await?;
        // Opened after the pools: by then the file exists and is in WAL mode.
        let path = options.get_filename();
        let hot = HotPath::open(path, secrets.clone(), WAL_BYTES_MAX)?;
        Ok(SqliteStore {
            read,
            write,
            secrets,
            hot,
            _alive: alive,
            workers_lock: (path != std::path::Path::new(":memory:"))
                .then(|| beside(path, "-workers.lock")),
            workers: Default::default(),
        })
    }

    /// A webhook row with its secret opened.
    fn webhook_from_row(&self, row: &SqliteRow) -> StoreResult<Webhook> {
        let mut w = webhook_from_row(row)?;
        w.secret = self.secrets.decode(&w.secret)?;
        Ok(w)
    }
}

/// How often the WAL is copied back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
/// Frames a checkpoint may leave uncopied before the next one starts at once: under a
/// steady stream of commits this keeps the hot path's own checkpoint (`WAL_BYTES_MAX`)
/// down to a short tail.
const CHECKPOINT_BEHIND: i64 = 256;
/// Checkpoints run back to back at most before waiting for the next tick.
const CHECKPOINT_CHASE: usize = 8;

/// Copies the WAL into the database until the store is dropped. PASSIVE never blocks
/// writers or readers; what it cannot copy now it copies next time.
async fn run_checkpoints(mut conn: SqliteConnection, alive: Weak<()>) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if alive.upgrade().is_none() {
            break;
        }
        for _ in 0..CHECKPOINT_CHASE {
            // (busy, frames in the WAL, frames of them now in the database)
            match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(&mut conn)
                .await
            {
                Ok((_, log, copied)) if log - copied > CHECKPOINT_BEHIND => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "WAL checkpoint did not run");
                    break;
                }
            }
        }
    }
    let _ = conn.close().await;
}

/// Bytes of pages in the WAL after which a commit of the hot path also checkpoints
/// (8,192 frames of 4 KiB pages, 4,096 of 8 KiB ones). The background checkpointer copies the WAL while writes go on, but under a
/// steady stream of commits it never copies the last one, and the WAL only starts again
/// from its beginning once all of it is copied: without this bound it grew to 1.7 GB for
/// 300,000 deliveries (a 57 MB database), and appending to a file that large cost the
/// kernel more than SQLite's own work. What is left for the hot path's checkpoint is the
/// tail the background one has not reached, so the commit that runs it is delayed little.
const WAL_BYTES_MAX: u64 = 32 << 20;

type Tx<'a> = sqlx::Transaction<'a, Sqlite>;

/// Stops a webhook's queued deliveries (it was deleted or deactivated).
async fn fail_pending(tx: &mut Tx<'_>, webhook_id: i64, why: &str) -> StoreResult<()> {
    sqlx::query(super::hours::COUNT_STOPPED)
        .bind(webhook_id)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "UPDATE deliveries SET status = 'failed', next_attempt_at = NULL, locked_until = NULL, \
         error = ?2 WHERE webhook_id = ?1 AND status = 'pending'",
    )
    .bind(webhook_id)
    .bind(why)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn json_ids(ids: &[i64]) -> String {
    serde_json::to_string(ids).expect("ids encode")
}

super::rows::row_decoders!(SqliteRow);

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> StoreResult<()> {
        sqlx::migrate!("./migrations/sqlite")
            .run(&self.write)
            .await?;
        Ok(())
    }

    fn single_process(&self) -> bool {
        true
    }

    async fn subscribe_wakeups(&self, wake: Arc<tokio::sync::Notify>) -> StoreResult<()> {
        // The writer wakes the dispatcher as soon as an ingest's first part is committed.
        self.hot.subscribe(wake)
    }

    fn take_workers(&self) -> StoreResult<()> {
        let Some(path) = &self.workers_lock else {
            self.hot.own_workers()?;
            return Ok(());
        };
        let mut held = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        if held.is_some() {
            return Ok(());
        }
        let shown = path.display().to_string();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| StoreError::WorkerLock(shown.clone(), e))?;
        // An advisory lock the kernel drops when the process ends, SIGKILL included.
        match file.try_lock() {
            Ok(()) => {
                *held = Some(file);
                // Exploits a killed holder left part way through their deliveries get
                // the rest before this process ingests anything.
                self.hot.own_workers()?;
                Ok(())
            }
            Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::WorkersElsewhere(shown)),
            Err(std::fs::TryLockError::Error(e)) => Err(StoreError::WorkerLock(shown, e)),
        }
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }

    async fn create_user(&self, name: &str, tier: Tier, key_hash: &str) -> StoreResult<User> {
        let now = now_ms();
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO users (name, tier, created_at) VALUES (?1, ?2, ?3) RETURNING id",
        )
        .bind(name)
        .bind(tier.as_str())
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO api_keys (user_id, key_hash, created_at) VALUES (?1, ?2, ?3)")
            .bind(id)
            .bind(key_hash)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(User {
            id,
            name: name.to_string(),
            tier,
            created_at_ms: now,
        })
    }

    async fn list_users(&self) -> StoreResult<Vec<User>> {
        sqlx::query("SELECT id, name, tier, created_at FROM users ORDER BY id")
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(user_from_row)
            .collect()
    }

    async fn get_user(&self, id: i64) -> StoreResult<User> {
        let row = sqlx::query("SELECT id, name, tier, created_at FROM users WHERE id = ?1")
            .bind(id)
            .fetch_optional(&self.read)
            .await?
            .ok_or(StoreError::NotFound)?;
        user_from_row(&row)
    }

    async fn update_user(
        &self,
        id: i64,
        name: Option<&str>,
        tier: Option<Tier>,
    ) -> StoreResult<User> {
        let row = sqlx::query(
            "UPDATE users SET name = COALESCE(?2, name), tier = COALESCE(?3, tier) WHERE id = ?1 \
             RETURNING id, name, tier, created_at",
        )
        .bind(id)
        .bind(name)
        .bind(tier.map(Tier::as_str))
        .fetch_optional(&self.write)
        .await?
        .ok_or(StoreError::NotFound)?;
        user_from_row(&row)
    }

    async fn add_api_key(&self, user_id: i64, key_hash: &str) -> StoreResult<()> {
        let done = sqlx::query(
            "INSERT INTO api_keys (user_id, key_hash, created_at) \
             SELECT id, ?2, ?3 FROM users WHERE id = ?1",
        )
        .bind(user_id)
        .bind(key_hash)
        .bind(now_ms())
        .execute(&self.write)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn revoke_api_key(&self, key_hash: &str) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = ?2 WHERE key_hash = ?1 AND revoked_at IS NULL",
        )
        .bind(key_hash)
        .bind(now_ms())
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn user_by_api_key(&self, key_hash: &str) -> StoreResult<Option<User>> {
        let row = sqlx::query(
            "SELECT u.id, u.name, u.tier, u.created_at FROM api_keys k JOIN users u ON u.id = k.user_id \
             WHERE k.key_hash = ?1 AND k.revoked_at IS NULL",
        )
        .bind(key_hash)
        .fetch_optional(&self.read)
        .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn create_webhook(
        &self,
        user_id: i64,
        tier: Tier,
        new: &NewWebhook,
    ) -> StoreResult<Webhook> {
        let now = now_ms();
        // One statement: the count and the insert cannot interleave with another create.
        let sql = format!(
            "INSERT INTO webhooks (user_id, name, url, min_amount_usd, chains, protocols, categories, \
             is_active, secret, created_at, updated_at) \
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10 \
             WHERE (SELECT COUNT(*) FROM webhooks WHERE user_id = ?1 AND deleted_at IS NULL) < ?11 \
             RETURNING {WEBHOOK_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(user_id)
            .bind(&new.name)
            .bind(new.url.as_str())
            .bind(new.filters.min_amount_usd)
            .bind(encode_list(&new.filters.chains))
            .bind(encode_list(&new.filters.protocols))
            .bind(encode_list(&new.filters.categories))
            .bind(new.is_active)
            .bind(self.secrets.encode(&new.secret))
            .bind(now)
            .bind(i64::from(tier.max_webhooks()))
            .fetch_optional(&self.write)
            .await?
            .ok_or(StoreError::LimitReached(tier))?;
        self.webhook_from_row(&row)
    }

    async fn list_webhooks(&self, user_id: i64) -> StoreResult<Vec<Webhook>> {
        let sql = format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE user_id = ?1 AND deleted_at IS NULL ORDER BY id"
        );
        sqlx::query(&sql)
            .bind(user_id)
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(|row| self.webhook_from_row(row))
            .collect()
    }

    async fn get_webhook(&self, user_id: i64, id: i64) -> StoreResult<Webhook> {
        let sql = format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = ?1 AND user_id = ?2 AND deleted_at IS NULL"
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .bind(user_id)
            .fetch_optional(&self.read)
            .await?
            .ok_or(StoreError::NotFound)?;
        self.webhook_from_row(&row)
    }

    async fn update_webhook(
        &self,
        user_id: i64,
        id: i64,
        patch: &WebhookPatch,
    ) -> StoreResult<Webhook> {
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        let sql = format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = ?1 AND user_id = ?2 AND deleted_at IS NULL"
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
        let mut w = self.webhook_from_row(&row)?;
        patch.apply_to(&mut w);
        w.updated_at_ms = now_ms();
        sqlx::query(
            "UPDATE webhooks SET name = ?2, url = ?3, min_amount_usd = ?4, chains = ?5, protocols = ?6, \
             categories = ?7, is_active = ?8, disabled_reason = ?9, updated_at = ?10 WHERE id = ?1",
        )
        .bind(id)
        .bind(&w.name)
        .bind(&w.url)
        .bind(w.filters.min_amount_usd)
        .bind(encode_list(&w.filters.chains))
        .bind(encode_list(&w.filters.protocols))
        .bind(encode_list(&w.filters.categories))
        .bind(w.is_active)
        .bind(&w.disabled_reason)
        .bind(w.updated_at_ms)
        .execute(&mut *tx)
        .await?;
        if !w.is_active {
            fail_pending(&mut tx, id, "webhook deactivated").await?;
        }
        tx.commit().await?;
        Ok(w)
    }

    async fn delete_webhook(&self, user_id: i64, id: i64) -> StoreResult<()> {
        let now = now_ms();
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        let done = sqlx::query(
            "UPDATE webhooks SET deleted_at = ?3, is_active = 0, updated_at = ?3 \
             WHERE id = ?1 AND user_id = ?2 AND deleted_at IS NULL",
        )
        .bind(id)
        .bind(user_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        fail_pending(&mut tx, id, "webhook deleted").await?;
        tx.commit().await?;
        Ok(())
    }

    async fn set_webhook_secret(&self, user_id: i64, id: i64, secret: &str) -> StoreResult<()> {
        let done = sqlx::query(
            "UPDATE webhooks SET secret = ?3, updated_at = ?4 \
             WHERE id = ?1 AND user_id = ?2 AND deleted_at IS NULL",
        )
        .bind(id)
        .bind(user_id)
        .bind(self.secrets.encode(secret))
        .bind(now_ms())
        .execute(&self.write)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn stored_secrets(&self, after_id: i64, limit: u32) -> StoreResult<Vec<(i64, String)>> {
        sqlx::query("SELECT id, secret FROM webhooks WHERE id > ?1 ORDER BY id LIMIT ?2")
            .bind(after_id)
            .bind(i64::from(limit))
            .fetch_all(&self.read)
            .await?
            .iter()
            .map(|row| Ok((row.try_get("id")?, row.try_get("secret")?)))
            .collect()
    }

    async fn replace_stored_secrets(&self, changes: &[SecretChange]) -> StoreResult<Vec<i64>> {
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        let mut replaced = Vec::new();
        for c in changes {
            let done = sqlx::query("UPDATE webhooks SET secret = ?2 WHERE id = ?1 AND secret = ?3")
                .bind(c.id)
                .bind(&c.new)
                .bind(&c.old)
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() > 0 {
                replaced.push(c.id);
            }
        }
        tx.commit().await?;
        Ok(replaced)
    }

    async fn ingest_exploits(&self, exploits: &[NewExploit]) -> StoreResult<Vec<IngestOutcome>> {
        self.hot.ingest(exploits).await
    }

    async fn webhook_health(&self, webhook_id: i64, now_ms: i64) -> StoreResult<HealthFigures> {
        self.webhooks_health(&[webhook_id], now_ms)
            .await?
            .pop()
            .ok_or(StoreError::NotFound)
    }

    async fn webhooks_health(
        &self,
        webhook_ids: &[i64],
        now_ms: i64,
    ) -> StoreResult<Vec<HealthFigures>> {
        if webhook_ids.is_empty() {
            return Ok(Vec::new());
        }
        // From the webhooks' hourly figures (migration 0007): the last day is the
        // current hour and the 23 before it, and every succeeded delivery is in the hour
        // of its last attempt. A few rows a day of history each, however many
        // deliveries. Failed ones are counted from their index: a delivery stopped
        // before any attempt is failed without being in the figures.
        let since = hour_of(now_ms) - 23;
        let rows = sqlx::query(
            "SELECT w.id, w.consecutive_failures, w.last_success_at, w.last_failure_at, w.last_error, \
               COALESCE(a.ok_24h, 0) AS ok_24h, COALESCE(a.failed_24h, 0) AS failed_24h, \
               (SELECT COALESCE(SUM(h.succeeded), 0) FROM delivery_hours h \
                  WHERE h.webhook_id = w.id) AS ok_all, \
               (SELECT COUNT(*) FROM deliveries d \
                  WHERE d.webhook_id = w.id AND d.status = 'failed') AS failed_all, \
               a.latency_24h \
             FROM webhooks w LEFT JOIN ( \
               SELECT h.webhook_id, SUM(h.succeeded) AS ok_24h, SUM(h.failed) AS failed_24h, \
                 CAST(SUM(h.finished_latency_ms) AS REAL) \
                   / NULLIF(SUM(h.finished_latencies), 0) AS latency_24h \
               FROM delivery_hours h \
               WHERE h.webhook_id IN (SELECT value FROM json_each(?1)) AND h.hour >= ?2 \
               GROUP BY h.webhook_id) a ON a.webhook_id = w.id \
             WHERE w.id IN (SELECT value FROM json_each(?1))",
        )
        .bind(json_ids(webhook_ids))
        .bind(since)
        .fetch_all(&self.read)
        .await?;
        let mut by_id = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            let figures = HealthFigures {
                succeeded_24h: row.try_get::<i64, _>("ok_24h")? as u64,
                failed_24h: row.try_get::<i64, _>("failed_24h")? as u64,
                succeeded_all: row.try_get::<i64, _>("ok_all")? as u64,
                failed_all: row.try_get::<i64, _>("failed_all")? as u64,
                mean_latency_ms_24h: row.try_get("latency_24h")?,
                consecutive_failures: row.try_get::<i64, _>("consecutive_failures")? as u64,
                last_success_at_ms: row.try_get("last_success_at")?,
                last_failure_at_ms: row.try_get("last_failure_at")?,
                last_error: row.try_get("last_error")?,
            };
            by_id.insert(row.try_get::<i64, _>("id")?, figures);
        }
        webhook_ids
            .iter()
            .map(|id| by_id.remove(id).ok_or(StoreError::NotFound))
            .collect()
    }

    async fn record_attempts(&self, records: &[AttemptRecord]) -> StoreResult<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.hot.turn(records, None).await.map(|_| ())
    }

    async fn record_and_claim(
        &self,
        records: &[AttemptRecord],
        now_ms: i64,
        lease_until_ms: i64,
        limit: usize,
        per_endpoint: usize,
        room: &[(i64, usize)],
    ) -> StoreResult<Vec<ClaimedDelivery>> {
        let claim = Claim {
            now_ms,
            lease_until_ms,
            limit,
            per_endpoint,
            room: room.to_vec(),
        };
        self.hot.turn(records, Some(claim)).await
    }

    async fn turn(
        &self,
        outcomes: &Arc<Outcomes>,
        max: usize,
        claim: Option<TurnClaim>,
    ) -> StoreResult<Turned> {
        self.hot.turn_pulled(outcomes, max, claim).await
    }

    async fn next_claimable_at(&self, now_ms: i64, busy: &[i64]) -> StoreResult<Option<i64>> {
        // Claims are the writer's, in memory: only it knows which due rows are taken.
        self.hot.next_claimable_at(now_ms, busy).await
    }

    async fn release_claims(&self, delivery_ids: &[i64]) -> StoreResult<()> {
        if delivery_ids.is_empty() {
            return Ok(());
        }
        self.hot.release(delivery_ids)
    }

    async fn release_all_claims(&self) -> StoreResult<()> {
        sqlx::query("UPDATE deliveries SET locked_until = NULL WHERE status = 'pending' AND locked_until IS NOT NULL")
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn queue_depth(&self) -> StoreResult<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'")
                .fetch_one(&self.read)
                .await?,
        )
    }

    async fn delivery_detail(
        &self,
        webhook_id: i64,
        delivery_id: i64,
    ) -> StoreResult<DeliveryDetail> {
        let sql = format!(
            "SELECT d.payload, d.event, {EXPLOIT_JOIN_COLUMNS} FROM deliveries d \
             LEFT JOIN exploits e ON e.id = d.exploit_id WHERE d.id = ?1 AND d.webhook_id = ?2"
        );
        let row = sqlx::query(&sql)
            .bind(delivery_id)
            .bind(webhook_id)
            .fetch_optional(&self.read)
            .await?
            .ok_or(StoreError::NotFound)?;
        let event: String = row.try_get("event")?;
        let payload = body_from_row(&row, &event)?;
        let sql = format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = ?1");
        let delivery = delivery_from_row(
            &sqlx::query(&sql)
                .bind(delivery_id)
                .fetch_one(&self.read)
                .await?,
        )?;
        // The earlier attempts, then the latest, which the row itself holds (migration
        // 0004; rows written before it have every attempt in `delivery_attempts`).
        let attempts = sqlx::query(
            "SELECT attempt, started_at, status_code, latency_ms, error_kind, error, response_body \
             FROM (SELECT attempt, started_at, status_code, latency_ms, error_kind, error, \
                     response_body, 0 AS latest, id FROM delivery_attempts WHERE delivery_id = ?1 \
                   UNION ALL \
                   SELECT attempts, attempt_started_at, status_code, latency_ms, \
                     attempt_error_kind, attempt_error, attempt_response_body, 1, id \
                   FROM deliveries WHERE id = ?1 AND attempt_started_at IS NOT NULL) \
             ORDER BY latest, attempt, id",
        )
        .bind(delivery_id)
        .fetch_all(&self.read)
        .await?
        .iter()
        .map(|r| {
            Ok(AttemptLog {
                attempt: r.try_get("attempt")?,
                started_at_ms: r.try_get("started_at")?,
                status_code: r.try_get("status_code")?,
                latency_ms: r.try_get("latency_ms")?,
                error_kind: r.try_get("error_kind")?,
                error: r.try_get("error")?,
                response_body: r.try_get("response_body")?,
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
        Ok(DeliveryDetail {
            delivery,
            payload,
            attempts,
        })
    }

    async fn requeue_delivery(
        &self,
        webhook_id: i64,
        delivery_id: i64,
        now_ms: i64,
    ) -> StoreResult<DeliveryRecord> {
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query(super::hours::UNCOUNT_REQUEUED)
            .bind(delivery_id)
            .bind(webhook_id)
            .execute(&mut *tx)
            .await?;
        let sql = format!(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = ?3, locked_until = NULL, \
             schedule_base = attempts, delivered_at = NULL \
             WHERE id = ?1 AND webhook_id = ?2 RETURNING {DELIVERY_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(delivery_id)
            .bind(webhook_id)
            .bind(now_ms)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
        let delivery = delivery_from_row(&row)?;
        tx.commit().await?;
        Ok(delivery)
    }

    async fn create_test_delivery(
        &self,
        webhook_id: i64,
        payload: &str,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> StoreResult<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO deliveries (webhook_id, exploit_id, event, payload, status, next_attempt_at, \
             locked_until, created_at) VALUES (?1, NULL, ?2, ?3, 'pending', ?4, ?5, ?4) RETURNING id",
        )
        .bind(webhook_id)
        .bind(crate::domain::payload::EVENT_WEBHOOK_TEST)
        .bind(payload)
        .bind(now_ms)
        .bind(lease_until_ms)
        .fetch_one(&self.write)
        .await?)
    }

    async fn list_deliveries(
        &self,
        webhook_id: i64,
        status: Option<DeliveryStatus>,
        page: Page,
    ) -> StoreResult<(Vec<DeliveryRecord>, u64)> {
        let offset = i64::from(page.page.saturating_sub(1)) * i64::from(page.page_size);
        // One spelling per filter, each with its status written out: SQLite uses a
        // partial index (one per status but succeeded) only where the query's own text
        // implies the index's condition. The page's ids come from indexes alone; only
        // those 50 rows are read from the table.
        let (ids, count) = match status {
            None => (
                "SELECT id FROM deliveries WHERE webhook_id = ?1 ORDER BY id DESC LIMIT ?2 OFFSET ?3",
                "SELECT COUNT(*) FROM deliveries WHERE webhook_id = ?1",
            ),
            Some(DeliveryStatus::Pending) => (
                "SELECT id FROM deliveries WHERE webhook_id = ?1 AND status = 'pending' \
                 ORDER BY id DESC LIMIT ?2 OFFSET ?3",
                "SELECT COUNT(*) FROM deliveries WHERE webhook_id = ?1 AND status = 'pending'",
            ),
            // The succeeded ones have no index of their own since migration 0007: every
            // delivery less the pending and failed ones, read from indexes alone. (Reading
            // each row's status instead took 43 ms for page 1,000 of a webhook of 100,000
            // deliveries; this, 17 ms.) Their count is the hourly figures' (health's).
            Some(DeliveryStatus::Succeeded) => (
                "SELECT id FROM deliveries d WHERE webhook_id = ?1 \
                 AND NOT EXISTS (SELECT 1 FROM deliveries p INDEXED BY deliveries_pending_by_webhook \
                   WHERE p.webhook_id = ?1 AND p.status = 'pending' AND p.id = d.id) \
                 AND NOT EXISTS (SELECT 1 FROM deliveries f INDEXED BY deliveries_failed_by_webhook \
                   WHERE f.webhook_id = ?1 AND f.status = 'failed' AND f.id = d.id) \
                 ORDER BY id DESC LIMIT ?2 OFFSET ?3",
                "SELECT COALESCE(SUM(succeeded), 0) FROM delivery_hours WHERE webhook_id = ?1",
            ),
            Some(DeliveryStatus::Failed) => (
                "SELECT id FROM deliveries WHERE webhook_id = ?1 AND status = 'failed' \
                 ORDER BY id DESC LIMIT ?2 OFFSET ?3",
                "SELECT COUNT(*) FROM deliveries WHERE webhook_id = ?1 AND status = 'failed'",
            ),
        };
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id IN ({ids}) ORDER BY id DESC"
        );
        let query = sqlx::query(&sql)
            .bind(webhook_id)
            .bind(i64::from(page.page_size))
            .bind(offset);
        let total = sqlx::query_scalar::<_, i64>(count).bind(webhook_id);
        let rows = query.fetch_all(&self.read).await?;
        let total = total.fetch_one(&self.read).await?;
        let deliveries = rows
            .iter()
            .map(delivery_from_row)
            .collect::<StoreResult<_>>()?;
        Ok((deliveries, total as u64))
    }

    async fn attempt_buckets(
        &self,
        webhook_id: i64,
        since_ms: i64,
        bucket_ms: i64,
    ) -> StoreResult<Vec<AttemptBucket>> {
        // From the webhook's hourly figures (migration 0007), which count each attempt
        // in the hour it started: buckets are whole hours from an hour's start. The
        // bound is on `hour` itself, so the webhook's index starts at the window.
        let rows = sqlx::query(
            "SELECT (hour * 3600000 - ?2) / ?3 AS bucket, \
               SUM(attempts_ok) AS ok, SUM(attempts_failed) AS failed, \
               CAST(SUM(attempts_latency_ms) AS REAL) \
                 / NULLIF(SUM(attempts_ok + attempts_failed), 0) AS latency \
             FROM delivery_hours WHERE webhook_id = ?1 AND hour >= (?2 + 3599999) / 3600000 \
             GROUP BY bucket HAVING SUM(attempts_ok + attempts_failed) > 0 ORDER BY bucket",
        )
        .bind(webhook_id)
        .bind(since_ms)
        .bind(bucket_ms)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AttemptBucket {
                    index: r.try_get("bucket")?,
                    succeeded: r.try_get::<i64, _>("ok")? as u64,
                    failed: r.try_get::<i64, _>("failed")? as u64,
                    mean_latency_ms: r.try_get("latency")?,
                })
            })
            .collect()
    }
}
