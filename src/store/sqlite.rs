//! SQLite store: one file in WAL mode. Writes go through a single connection so they
//! queue in this process instead of failing with SQLITE_BUSY; reads use a small pool.

use std::str::FromStr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::ConnectOptions;
use sqlx::{Connection, QueryBuilder, Row, Sqlite, SqliteConnection};

use super::rows::{DELIVERY_COLUMNS, EXPLOIT_JOIN_COLUMNS, WEBHOOK_COLUMNS};
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
    /// The checkpoint task runs while this lives.
    _alive: Arc<()>,
}

const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
const READ_CONNECTIONS: u32 = 8;
/// SQLite allows 32766 bound parameters per statement; deliveries bind 5 each.
const DELIVERY_ROWS_PER_INSERT: usize = 500;
/// Attempt rows per statement (9 parameters each).
const RECORDS_PER_STATEMENT: usize = 500;

impl SqliteStore {
    pub async fn open(url: &str, secrets: SecretCodec) -> StoreResult<SqliteStore> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: an acknowledged ingest survives a power cut, not only a crash.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            // Statement journals in memory: multi-row writes would otherwise write them
            // to a temporary file with a syscall per page.
            .pragma("temp_store", "memory");
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(BUSY_TIMEOUT)
            // The writer's page cache holds the hot index pages of the queue; readers keep
            // SQLite's default (2 MiB each), so memory stays flat however deep the queue.
            // Checkpoints run beside the writer (below), not inside one of its commits,
            // where they would stall ingest and claims for tens of milliseconds.
            .connect_with(
                options
                    .clone()
                    .pragma("cache_size", "-16384")
                    .pragma("wal_autocheckpoint", "0"),
            )
            .await?;
        let alive = Arc::new(());
        let checkpointer = options.clone().connect().await?;
        tokio::spawn(run_checkpoints(checkpointer, Arc::downgrade(&alive)));
        let read = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .acquire_timeout(BUSY_TIMEOUT)
            .connect_with(options.read_only(true))
            .await?;
        Ok(SqliteStore {
            read,
            write,
            secrets,
            _alive: alive,
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
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

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
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&mut conn)
            .await
        {
            tracing::debug!(error = %e, "WAL checkpoint did not run");
        }
    }
    let _ = conn.close().await;
}

type Tx<'a> = sqlx::Transaction<'a, Sqlite>;

/// Stops a webhook's queued deliveries (it was deleted or deactivated).
async fn fail_pending(tx: &mut Tx<'_>, webhook_id: i64, why: &str) -> StoreResult<()> {
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

/// The delivery hot path (claims and attempt outcomes) commits without waiting for the
/// disk: after a power cut the worst case is a delivery sent once more (at-least-once).
/// Everything else, ingest above all, keeps `synchronous = FULL`, and its next commit
/// makes every earlier one durable too.
impl SqliteStore {
    async fn relaxed_writer(&self) -> StoreResult<PoolConnection<Sqlite>> {
        let mut conn = self.write.acquire().await?;
        sqlx::query("PRAGMA synchronous = NORMAL")
            .execute(&mut *conn)
            .await?;
        Ok(conn)
    }

    async fn restore_writer(mut conn: PoolConnection<Sqlite>) {
        if let Err(e) = sqlx::query("PRAGMA synchronous = FULL")
            .execute(&mut *conn)
            .await
        {
            // Never hand a relaxed connection back: a fresh one starts at FULL.
            tracing::warn!(error = %e, "restoring synchronous = FULL failed; reconnecting");
            conn.close_on_drop();
        }
    }

    async fn claim_in(
        &self,
        tx: &mut Tx<'_>,
        now_ms: i64,
        lease_until_ms: i64,
        limit: usize,
        per_endpoint: usize,
        in_flight: &[(i64, usize)],
    ) -> StoreResult<Vec<ClaimedDelivery>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Look a little past `limit` so that one endpoint with a deep queue cannot hide
        // the others from this claim; the choice per endpoint is made here, on the ids
        // read from the due index alone (a window function in SQL cost twice as much).
        let due: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT id, webhook_id FROM deliveries \
             WHERE status = 'pending' AND next_attempt_at <= ?1 \
               AND (locked_until IS NULL OR locked_until <= ?1) \
               AND webhook_id NOT IN (SELECT value FROM json_each(?2)) \
             ORDER BY next_attempt_at LIMIT ?3",
        )
        .bind(now_ms)
        .bind(json_ids(&saturated(in_flight, per_endpoint)))
        .bind((limit * 8) as i64)
        .fetch_all(&mut **tx)
        .await?;
        let claimed = pick_claims(&due, in_flight, per_endpoint, limit);
        if !claimed.is_empty() {
            sqlx::query(
                "UPDATE deliveries SET locked_until = ?1 \
                 WHERE id IN (SELECT value FROM json_each(?2))",
            )
            .bind(lease_until_ms)
            .bind(json_ids(&claimed))
            .execute(&mut **tx)
            .await?;
        }
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT d.id, d.webhook_id, d.event, d.payload, d.attempts, d.schedule_base, \
               w.url, w.secret, w.is_active, w.deleted_at, {EXPLOIT_JOIN_COLUMNS} \
             FROM deliveries d JOIN webhooks w ON w.id = d.webhook_id \
             LEFT JOIN exploits e ON e.id = d.exploit_id \
             WHERE d.id IN (SELECT value FROM json_each(?1)) ORDER BY d.next_attempt_at, d.id"
        );
        let rows = sqlx::query(&sql)
            .bind(json_ids(&claimed))
            .fetch_all(&mut **tx)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        let mut stopped = Vec::new();
        for row in &rows {
            let id: i64 = row.try_get("id")?;
            let active: bool = row.try_get("is_active")?;
            let deleted: Option<i64> = row.try_get("deleted_at")?;
            if !active || deleted.is_some() {
                stopped.push(id);
                continue;
            }
            let event: String = row.try_get("event")?;
            let attempts: i64 = row.try_get("attempts")?;
            let base: i64 = row.try_get("schedule_base")?;
            out.push(ClaimedDelivery {
                id,
                webhook_id: row.try_get("webhook_id")?,
                url: row.try_get("url")?,
                secret: self.secrets.decode(&row.try_get::<String, _>("secret")?)?,
                body: body_from_row(row, &event)?,
                event,
                attempt: attempts + 1,
                round_attempt: attempts - base + 1,
            });
        }
        if !stopped.is_empty() {
            sqlx::query(
                "UPDATE deliveries SET status = 'failed', next_attempt_at = NULL, locked_until = NULL, \
                 error = 'webhook inactive' WHERE id IN (SELECT value FROM json_each(?1))",
            )
            .bind(json_ids(&stopped))
            .execute(&mut **tx)
            .await?;
        }
        Ok(out)
    }

    async fn record_in(&self, tx: &mut Tx<'_>, records: &[AttemptRecord]) -> StoreResult<()> {
        for chunk in records.chunks(RECORDS_PER_STATEMENT) {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO delivery_attempts (delivery_id, attempt, started_at, status_code, latency_ms, \
                 error_kind, error, response_body) ",
            );
            qb.push_values(chunk, |mut b, r| {
                b.push_bind(r.delivery_id)
                    .push_bind(r.attempt)
                    .push_bind(r.started_at_ms)
                    .push_bind(r.status_code)
                    .push_bind(r.latency_ms)
                    .push_bind(r.error_kind)
                    .push_bind(&r.error)
                    .push_bind(&r.response_body);
            });
            qb.build().execute(&mut **tx).await?;

            // A delivery stopped meanwhile (webhook deleted or deactivated) stays failed.
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
                "WITH v (id, finished, started, code, latency, error, status, next_at, delivered) AS (",
            );
            qb.push_values(chunk, |mut b, r| {
                let (status, next_at, delivered_at) = delivery_outcome(r);
                b.push_bind(r.delivery_id)
                    .push_bind(r.started_at_ms + r.latency_ms)
                    .push_bind(r.started_at_ms)
                    .push_bind(r.status_code)
                    .push_bind(r.latency_ms)
                    .push_bind(&r.error)
                    .push_bind(status)
                    .push_bind(next_at)
                    .push_bind(delivered_at);
            });
            qb.push(
                ") UPDATE deliveries SET attempts = attempts + 1, last_attempt_at = v.finished, \
                 sent_at = COALESCE(sent_at, v.started), status_code = v.code, latency_ms = v.latency, \
                 error = v.error, locked_until = NULL, \
                 status = CASE WHEN deliveries.status = 'pending' THEN v.status ELSE deliveries.status END, \
                 next_attempt_at = CASE WHEN deliveries.status = 'pending' THEN v.next_at ELSE NULL END, \
                 delivered_at = COALESCE(v.delivered, deliveries.delivered_at) \
                 FROM v WHERE deliveries.id = v.id",
            );
            qb.build().execute(&mut **tx).await?;
        }
        let deltas = health_deltas(records);
        for chunk in deltas.chunks(RECORDS_PER_STATEMENT) {
            let mut qb: QueryBuilder<Sqlite> =
                QueryBuilder::new("WITH v (id, reset, failures, ok_at, fail_at, err) AS (");
            qb.push_values(chunk, |mut b, d| {
                b.push_bind(d.webhook_id)
                    .push_bind(d.reset)
                    .push_bind(d.failures)
                    .push_bind(d.last_success_at)
                    .push_bind(d.last_failure_at)
                    .push_bind(&d.last_error);
            });
            qb.push(
                ") UPDATE webhooks SET \
                 consecutive_failures = CASE WHEN v.reset THEN v.failures \
                   ELSE webhooks.consecutive_failures + v.failures END, \
                 last_success_at = COALESCE(v.ok_at, webhooks.last_success_at), \
                 last_failure_at = COALESCE(v.fail_at, webhooks.last_failure_at), \
                 last_error = COALESCE(v.err, webhooks.last_error) \
                 FROM v WHERE webhooks.id = v.id",
            );
            qb.build().execute(&mut **tx).await?;
        }
        for r in records.iter().filter(|r| r.result == AttemptResult::Gone) {
            let at = r.started_at_ms + r.latency_ms;
            sqlx::query(
                "UPDATE webhooks SET is_active = 0, disabled_reason = ?2, updated_at = ?3 \
                 WHERE id = ?1 AND deleted_at IS NULL",
            )
            .bind(r.webhook_id)
            .bind(gone_reason(at))
            .bind(at)
            .execute(&mut **tx)
            .await?;
            fail_pending(
                tx,
                r.webhook_id,
                "webhook deactivated: endpoint answered 410 Gone",
            )
            .await?;
        }
        Ok(())
    }

    /// One transaction on the relaxed writer: outcomes first, then a claim if `claim`.
    async fn hot_path(
        &self,
        records: &[AttemptRecord],
        claim: Option<ClaimArgs<'_>>,
    ) -> StoreResult<Vec<ClaimedDelivery>> {
        let mut conn = self.relaxed_writer().await?;
        let result = async {
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            if !records.is_empty() {
                self.record_in(&mut tx, records).await?;
            }
            let claimed = match claim {
                Some(c) => {
                    self.claim_in(
                        &mut tx,
                        c.now_ms,
                        c.lease_until_ms,
                        c.limit,
                        c.per_endpoint,
                        c.in_flight,
                    )
                    .await?
                }
                None => Vec::new(),
            };
            tx.commit().await?;
            Ok(claimed)
        }
        .await;
        Self::restore_writer(conn).await;
        result
    }
}

/// A claim's parameters, as `Store::claim_due_deliveries` takes them.
#[derive(Clone, Copy)]
struct ClaimArgs<'a> {
    now_ms: i64,
    lease_until_ms: i64,
    limit: usize,
    per_endpoint: usize,
    in_flight: &'a [(i64, usize)],
}

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
        let now = now_ms();
        let mut tx = self.write.begin_with("BEGIN IMMEDIATE").await?;
        let mut targets = Vec::new();
        for row in sqlx::query(
            "SELECT id, min_amount_usd, chains, protocols, categories FROM webhooks \
             WHERE deleted_at IS NULL AND is_active = 1",
        )
        .fetch_all(&mut *tx)
        .await?
        {
            targets.push((row.try_get::<i64, _>("id")?, filters_from_row(&row)?));
        }

        let mut outcomes = Vec::with_capacity(exploits.len());
        let mut pending: Vec<(i64, i64)> = Vec::new();
        for e in exploits {
            let key = exploit_dedup_key(&e.chain, &e.tx_hash);
            let inserted: Option<i64> = sqlx::query_scalar(
                "INSERT INTO exploits (dedup_key, tx_hash, chain, protocol, amount_usd, timestamp, \
                 source, source_url, category, description, detected_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
                 ON CONFLICT (dedup_key) DO NOTHING RETURNING id",
            )
            .bind(&key)
            .bind(&e.tx_hash)
            .bind(&e.chain)
            .bind(&e.protocol)
            .bind(e.amount_usd)
            .bind(e.timestamp_ms)
            .bind(&e.source)
            .bind(&e.source_url)
            .bind(&e.category)
            .bind(&e.description)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(id) = inserted else {
                let id: i64 = sqlx::query_scalar("SELECT id FROM exploits WHERE dedup_key = ?1")
                    .bind(&key)
                    .fetch_one(&mut *tx)
                    .await?;
                outcomes.push(IngestOutcome {
                    id,
                    duplicate: true,
                    matched: 0,
                });
                continue;
            };
            let facts = e.facts();
            let mut matched = 0;
            for (webhook_id, filters) in &targets {
                if filters.matches(&facts) {
                    pending.push((*webhook_id, id));
                    matched += 1;
                }
            }
            outcomes.push(IngestOutcome {
                id,
                duplicate: false,
                matched,
            });
        }
        for chunk in pending.chunks(DELIVERY_ROWS_PER_INSERT) {
            let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO deliveries (webhook_id, exploit_id, event, status, next_attempt_at, created_at) ",
            );
            qb.push_values(chunk, |mut b, (webhook_id, exploit_id)| {
                b.push_bind(*webhook_id)
                    .push_bind(*exploit_id)
                    .push_bind(crate::domain::payload::EVENT_EXPLOIT_DETECTED)
                    .push("'pending'")
                    .push_bind(now)
                    .push_bind(now);
            });
            qb.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(outcomes)
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
        let since = now_ms - 24 * 3_600_000;
        // One round trip for a whole list: the figures of every webhook at once.
        let rows = sqlx::query(
            "SELECT w.id, w.consecutive_failures, w.last_success_at, w.last_failure_at, w.last_error, \
               COALESCE(a.ok_24h, 0) AS ok_24h, COALESCE(a.failed_24h, 0) AS failed_24h, \
               COALESCE(a.ok_all, 0) AS ok_all, COALESCE(a.failed_all, 0) AS failed_all, a.latency_24h \
             FROM webhooks w LEFT JOIN ( \
               SELECT d.webhook_id, \
                 COUNT(*) FILTER (WHERE d.status = 'succeeded' AND d.last_attempt_at >= ?2) AS ok_24h, \
                 COUNT(*) FILTER (WHERE d.status = 'failed' AND d.last_attempt_at >= ?2) AS failed_24h, \
                 COUNT(*) FILTER (WHERE d.status = 'succeeded') AS ok_all, \
                 COUNT(*) FILTER (WHERE d.status = 'failed') AS failed_all, \
                 AVG(d.latency_ms) FILTER (WHERE d.last_attempt_at >= ?2) AS latency_24h \
               FROM deliveries d WHERE d.webhook_id IN (SELECT value FROM json_each(?1)) AND d.status <> 'pending' \
               GROUP BY d.webhook_id) a ON a.webhook_id = w.id \
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

    async fn claim_due_deliveries(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: usize,
        per_endpoint: usize,
        in_flight: &[(i64, usize)],
    ) -> StoreResult<Vec<ClaimedDelivery>> {
        let claim = ClaimArgs {
            now_ms,
            lease_until_ms,
            limit,
            per_endpoint,
            in_flight,
        };
        self.hot_path(&[], Some(claim)).await
    }

    async fn record_attempts(&self, records: &[AttemptRecord]) -> StoreResult<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.hot_path(records, None).await.map(|_| ())
    }

    async fn record_and_claim(
        &self,
        records: &[AttemptRecord],
        now_ms: i64,
        lease_until_ms: i64,
        limit: usize,
        per_endpoint: usize,
        in_flight: &[(i64, usize)],
    ) -> StoreResult<Vec<ClaimedDelivery>> {
        let claim = ClaimArgs {
            now_ms,
            lease_until_ms,
            limit,
            per_endpoint,
            in_flight,
        };
        self.hot_path(records, Some(claim)).await
    }

    async fn next_claimable_at(&self, now_ms: i64, busy: &[i64]) -> StoreResult<Option<i64>> {
        // In index order, stopping at the first row that qualifies. Claims of a crashed
        // process are not looked for here: the fallback poll finds them once their lease
        // ends, and scanning every held row on each idle turn would cost more.
        Ok(sqlx::query_scalar(
            "SELECT next_attempt_at FROM deliveries \
             WHERE status = 'pending' AND (locked_until IS NULL OR locked_until <= ?1) \
               AND webhook_id NOT IN (SELECT value FROM json_each(?2)) \
             ORDER BY next_attempt_at LIMIT 1",
        )
        .bind(now_ms)
        .bind(json_ids(busy))
        .fetch_optional(&self.read)
        .await?)
    }

    async fn release_claims(&self, delivery_ids: &[i64]) -> StoreResult<()> {
        if delivery_ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE deliveries SET locked_until = NULL \
             WHERE status = 'pending' AND id IN (SELECT value FROM json_each(?1))",
        )
        .bind(json_ids(delivery_ids))
        .execute(&self.write)
        .await?;
        Ok(())
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
        let attempts = sqlx::query(
            "SELECT attempt, started_at, status_code, latency_ms, error_kind, error, response_body \
             FROM delivery_attempts WHERE delivery_id = ?1 ORDER BY attempt, id",
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
        let sql = format!(
            "UPDATE deliveries SET status = 'pending', next_attempt_at = ?3, locked_until = NULL, \
             schedule_base = attempts, delivered_at = NULL \
             WHERE id = ?1 AND webhook_id = ?2 RETURNING {DELIVERY_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(delivery_id)
            .bind(webhook_id)
            .bind(now_ms)
            .fetch_optional(&self.write)
            .await?
            .ok_or(StoreError::NotFound)?;
        delivery_from_row(&row)
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
        // Two spellings, so each uses its own index: (webhook_id, id) or (webhook_id,
        // status, id). The page's ids come from the index alone; only those 50 rows are
        // read from the table, however deep the page.
        let (ids, count) = match status {
            None => (
                "SELECT id FROM deliveries WHERE webhook_id = ?1 ORDER BY id DESC LIMIT ?2 OFFSET ?3",
                "SELECT COUNT(*) FROM deliveries WHERE webhook_id = ?1",
            ),
            Some(_) => (
                "SELECT id FROM deliveries WHERE webhook_id = ?1 AND status = ?4 \
                 ORDER BY id DESC LIMIT ?2 OFFSET ?3",
                "SELECT COUNT(*) FROM deliveries WHERE webhook_id = ?1 AND status = ?2",
            ),
        };
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id IN ({ids}) ORDER BY id DESC"
        );
        let mut query = sqlx::query(&sql)
            .bind(webhook_id)
            .bind(i64::from(page.page_size))
            .bind(offset);
        let mut total = sqlx::query_scalar::<_, i64>(count).bind(webhook_id);
        if let Some(s) = status {
            query = query.bind(s.as_str());
            total = total.bind(s.as_str());
        }
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
        // An attempt in the window finished after `since_ms`, so its delivery's
        // `last_attempt_at` did too: that bound keeps old deliveries out of the join. The
        // two halves match the two indexes (finished by time; pending by status).
        let rows = sqlx::query(
            "SELECT (a.started_at - ?2) / ?3 AS bucket, \
               COUNT(*) FILTER (WHERE a.error_kind IS NULL) AS ok, \
               COUNT(*) FILTER (WHERE a.error_kind IS NOT NULL) AS failed, \
               (AVG(a.latency_ms)) AS latency \
             FROM (SELECT id FROM deliveries WHERE webhook_id = ?1 AND status <> 'pending' \
                     AND last_attempt_at >= ?2 \
                   UNION ALL \
                   SELECT id FROM deliveries WHERE webhook_id = ?1 AND status = 'pending' \
                     AND last_attempt_at >= ?2) d \
             JOIN delivery_attempts a ON a.delivery_id = d.id \
             WHERE a.started_at >= ?2 \
             GROUP BY bucket ORDER BY bucket",
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
