//! PostgreSQL store: any number of processes share one database. Workers claim with
//! `FOR UPDATE SKIP LOCKED` and a lease; new deliveries are announced with NOTIFY.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row};
use tokio::sync::Notify;

use super::rows::{DELIVERY_COLUMNS, EXPLOIT_JOIN_COLUMNS, WEBHOOK_COLUMNS};
use super::*;
use crate::domain::exploit::Exploit;
use crate::domain::filter::Filters;
use crate::domain::payload::encode_event;
use crate::domain::secretbox::SecretCodec;
use crate::domain::time::now_ms;

pub struct PgStore {
    pool: PgPool,
    /// Seals webhook secrets on write and opens them on read.
    secrets: SecretCodec,
    /// Ends the statistics task (`pgstats::keep`) with the store.
    _stats: tokio_util::sync::DropGuard,
}

const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
/// The channel on which committed ingests announce new deliveries.
pub const WAKE_CHANNEL: &str = "kamiyo_deliveries";

impl PgStore {
    pub async fn open(
        url: &str,
        max_connections: u32,
        secrets: SecretCodec,
    ) -> StoreResult<PgStore> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        let stats = tokio_util::sync::CancellationToken::new();
        super::pgstats::keep(pool.clone(), stats.clone());
        Ok(PgStore {
            pool,
            secrets,
            _stats: stats.drop_guard(),
        })
    }

    /// A webhook row with its secret opened.
    fn webhook_from_row(&self, row: &PgRow) -> StoreResult<Webhook> {
        let mut w = webhook_from_row(row)?;
        w.secret = self.secrets.decode(&w.secret)?;
        Ok(w)
    }
}

type Tx<'a> = sqlx::Transaction<'a, Postgres>;

/// Stops a webhook's queued deliveries (it was deleted or deactivated).
async fn fail_pending(tx: &mut Tx<'_>, webhook_id: i64, why: &str) -> StoreResult<()> {
    sqlx::query(
        "UPDATE deliveries SET status = 'failed', next_attempt_at = NULL, locked_until = NULL, \
         error = $2 WHERE webhook_id = $1 AND status = 'pending'",
    )
    .bind(webhook_id)
    .bind(why)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

super::rows::row_decoders!(PgRow);

/// Rows of the due order a claim reads before looking endpoint by endpoint.
const HEAD_SCAN_MIN: usize = 256;
/// Pending rows of one endpoint read to find its due ones (the rest wait for a retry).
const ENDPOINT_SCAN: i64 = 256;
/// Endpoints visited per round of statements when the head of the due order is all
/// endpoints without room.
const ENDPOINT_BATCH: i64 = 64;

/// The delivery hot path (claims and attempt outcomes).
impl PgStore {
    /// Visits the endpoints with pending deliveries in id order, `ENDPOINT_BATCH` at a
    /// time, and offers each endpoint with room its earliest due deliveries, locked with
    /// `SKIP LOCKED` so that no other worker takes them too, until the claim is full.
    ///
    /// Three statements a batch, each of a shape no plan can make read more than the
    /// endpoints' own rows (a table without statistics planned the earlier form, one
    /// statement per endpoint, as a loop over every due row: BENCHMARKS.md item 56).
    /// Visiting endpoints one round trip at a time cost the healthy deliveries of the
    /// isolation bench 10-14 ms at the median (item 58).
    async fn claim_past_head(
        tx: &mut Tx<'_>,
        picker: &mut ClaimPicker,
        now_ms: i64,
    ) -> StoreResult<()> {
        let mut after = i64::MIN;
        while !picker.is_full() {
            // The next endpoints with pending deliveries: a skip scan of the index.
            let hooks: Vec<i64> = sqlx::query_scalar(
                "WITH RECURSIVE w (id) AS ( \
                   (SELECT webhook_id FROM deliveries WHERE webhook_id > $1 AND status = 'pending' \
                    ORDER BY webhook_id LIMIT 1) \
                   UNION ALL \
                   SELECT (SELECT d.webhook_id FROM deliveries d \
                           WHERE d.webhook_id > w.id AND d.status = 'pending' \
                           ORDER BY d.webhook_id LIMIT 1) \
                   FROM w WHERE w.id IS NOT NULL) \
                 SELECT id FROM w WHERE id IS NOT NULL LIMIT $2",
            )
            .bind(after)
            .bind(ENDPOINT_BATCH)
            .fetch_all(&mut **tx)
            .await?;
            let Some(&last) = hooks.last() else { break };
            after = last;
            let (with_room, room): (Vec<i64>, Vec<i64>) = hooks
                .into_iter()
                .map(|w| (w, picker.room_of(w) as i64))
                .filter(|(_, room)| *room > 0)
                .unzip();
            if with_room.is_empty() {
                continue;
            }
            // Each endpoint's due deliveries among its first pending ones, as many as it
            // has room for: the lateral subquery is an index scan per endpoint.
            let candidates: Vec<i64> = sqlx::query_scalar(
                "SELECT f.id FROM UNNEST($1::bigint[], $2::bigint[]) AS w (id, room) \
                 CROSS JOIN LATERAL ( \
                   SELECT p.id, p.next_attempt_at FROM ( \
                     SELECT id, next_attempt_at, locked_until FROM deliveries \
                     WHERE webhook_id = w.id AND status = 'pending' ORDER BY id LIMIT $3) p \
                   WHERE p.next_attempt_at <= $4 \
                     AND (p.locked_until IS NULL OR p.locked_until <= $4) \
                   ORDER BY p.next_attempt_at, p.id LIMIT w.room) f",
            )
            .bind(&with_room)
            .bind(&room)
            .bind(ENDPOINT_SCAN)
            .bind(now_ms)
            .fetch_all(&mut **tx)
            .await?;
            if candidates.is_empty() {
                continue;
            }
            // Locked by id; those another worker holds are skipped, not waited for.
            let due: Vec<(i64, i64)> = sqlx::query_as(
                "SELECT id, webhook_id FROM deliveries WHERE id = ANY ($1::bigint[]) \
                 AND status = 'pending' AND next_attempt_at <= $2 \
                 AND (locked_until IS NULL OR locked_until <= $2) \
                 ORDER BY next_attempt_at, id FOR UPDATE SKIP LOCKED",
            )
            .bind(&candidates)
            .bind(now_ms)
            .fetch_all(&mut **tx)
            .await?;
            for (id, webhook_id) in due {
                if !picker.offer(id, webhook_id) {
                    break;
                }
            }
        }
        Ok(())
    }

    /// A transaction whose commit does not wait for the WAL flush: after a database
    /// crash the worst case is a delivery sent once more (at-least-once), as with
    /// SQLite's relaxed writer. Ingest and everything else keep synchronous commits.
    async fn hot_transaction(&self) -> StoreResult<Tx<'static>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET LOCAL synchronous_commit = off")
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    async fn claim_in(
        &self,
        tx: &mut Tx<'_>,
        now_ms: i64,
        lease_until_ms: i64,
        limit: usize,
        per_endpoint: usize,
        room: &[(i64, usize)],
    ) -> StoreResult<Vec<ClaimedDelivery>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // The head of the due order, locked and bounded: behind a deep queue of an
        // endpoint without room, excluding it in SQL would read its whole queue on every
        // turn. Each endpoint gets at most the room the dispatcher gives it.
        let bound = (limit * 8).max(HEAD_SCAN_MIN);
        let head: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT id, webhook_id FROM deliveries \
             WHERE status = 'pending' AND next_attempt_at <= $1 \
               AND (locked_until IS NULL OR locked_until <= $1) \
             ORDER BY next_attempt_at LIMIT $2 \
             FOR UPDATE SKIP LOCKED",
        )
        .bind(now_ms)
        .bind(bound as i64)
        .fetch_all(&mut **tx)
        .await?;
        let mut picker = ClaimPicker::new(room, per_endpoint, limit);
        for &(id, webhook_id) in &head {
            if !picker.offer(id, webhook_id) {
                break;
            }
        }
        if !picker.is_full() && head.len() == bound {
            // The head is all endpoints without room: the others' due deliveries are
            // found endpoint by endpoint, so one deep queue cannot hide them.
            Self::claim_past_head(tx, &mut picker, now_ms).await?;
        }
        let claimed = picker.picked();
        if !claimed.is_empty() {
            sqlx::query("UPDATE deliveries SET locked_until = $1 WHERE id = ANY ($2::bigint[])")
                .bind(lease_until_ms)
                .bind(&claimed)
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
             WHERE d.id = ANY ($1::bigint[]) ORDER BY d.next_attempt_at, d.id"
        );
        let rows = sqlx::query(&sql)
            .bind(&claimed)
            .fetch_all(&mut **tx)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        let mut stopped = Vec::new();
        // One exploit is often claimed for many webhooks: its body is encoded once.
        let mut bodies: HashMap<(i64, String), bytes::Bytes> = HashMap::new();
        // Each webhook's URL and secret, and each event name, allocated once per claim.
        let mut targets: HashMap<i64, (Arc<str>, Arc<str>)> = HashMap::new();
        let mut events: Vec<Arc<str>> = Vec::new();
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
            // Bodies built from an exploit are shared; a stored payload is the row's own.
            let shared = match row.try_get::<Option<String>, _>("payload")? {
                Some(_) => None,
                None => row
                    .try_get::<Option<i64>, _>("e_id")?
                    .map(|eid| (eid, event.clone())),
            };
            let body = match shared {
                Some(key) => match bodies.entry(key) {
                    Entry::Occupied(b) => b.get().clone(),
                    Entry::Vacant(slot) => slot
                        .insert(bytes::Bytes::from(body_from_row(row, &event)?))
                        .clone(),
                },
                None => bytes::Bytes::from(body_from_row(row, &event)?),
            };
            let webhook_id: i64 = row.try_get("webhook_id")?;
            let (url, secret) = match targets.entry(webhook_id) {
                Entry::Occupied(t) => t.get().clone(),
                Entry::Vacant(slot) => {
                    let url: String = row.try_get("url")?;
                    let secret = self.secrets.decode(&row.try_get::<String, _>("secret")?)?;
                    slot.insert((url.into(), secret.into())).clone()
                }
            };
            let event = super::intern(&mut events, &event);
            out.push(ClaimedDelivery {
                id,
                webhook_id,
                url,
                secret,
                body,
                event,
                attempt: attempts + 1,
                round_attempt: attempts - base + 1,
            });
        }
        if !stopped.is_empty() {
            sqlx::query(
                "UPDATE deliveries SET status = 'failed', next_attempt_at = NULL, locked_until = NULL, \
                 error = 'webhook inactive' WHERE id = ANY ($1::bigint[])",
            )
            .bind(&stopped)
            .execute(&mut **tx)
            .await?;
        }
        Ok(out)
    }

    async fn record_in(&self, tx: &mut Tx<'_>, records: &[AttemptRecord]) -> StoreResult<()> {
        let ids: Vec<i64> = records.iter().map(|r| r.delivery_id).collect();
        let started: Vec<i64> = records.iter().map(|r| r.started_at_ms).collect();
        let finished: Vec<i64> = records
            .iter()
            .map(|r| r.started_at_ms + r.latency_ms)
            .collect();
        let codes: Vec<Option<i64>> = records.iter().map(|r| r.status_code).collect();
        let latencies: Vec<i64> = records.iter().map(|r| r.latency_ms).collect();
        let kinds: Vec<Option<&str>> = records.iter().map(|r| r.error_kind).collect();
        let errors: Vec<Option<&str>> = records.iter().map(|r| r.error.as_deref()).collect();
        let bodies: Vec<Option<&str>> =
            records.iter().map(|r| r.response_body.as_deref()).collect();
        let outcomes: Vec<_> = records.iter().map(delivery_outcome).collect();
        let statuses: Vec<&str> = outcomes.iter().map(|o| o.0).collect();
        let next_at: Vec<Option<i64>> = outcomes.iter().map(|o| o.1).collect();
        let delivered: Vec<Option<i64>> = outcomes.iter().map(|o| o.2).collect();
        // Ordered by id, so concurrent recorders lock webhook rows in the same order.
        let mut deltas = health_deltas(records);
        deltas.sort_by_key(|d| d.webhook_id);
        let w_ids: Vec<i64> = deltas.iter().map(|d| d.webhook_id).collect();
        let resets: Vec<bool> = deltas.iter().map(|d| d.reset).collect();
        let failures: Vec<i64> = deltas.iter().map(|d| d.failures).collect();
        let ok_at: Vec<Option<i64>> = deltas.iter().map(|d| d.last_success_at).collect();
        let fail_at: Vec<Option<i64>> = deltas.iter().map(|d| d.last_failure_at).collect();
        let last_errors: Vec<Option<&str>> =
            deltas.iter().map(|d| d.last_error.as_deref()).collect();
        // The webhooks first (health figures), then their deliveries: the order in which
        // changing a webhook (deactivate, delete) takes them. In the other order the two
        // could deadlock, and PostgreSQL would abort one of them, perhaps the user's
        // request. The CTE locks the rows in id order before the update touches them,
        // in the mode the update takes: FOR UPDATE would also conflict with the key-share
        // locks that ingest's foreign-key checks take on the same webhooks, and ingest
        // takes those in its own order (seen as a deadlock and a 500 to an ingest call
        // in 3 of 8 `throughput` bench runs).
        sqlx::query(
            "WITH locked AS MATERIALIZED (SELECT id FROM webhooks WHERE id = ANY ($1::bigint[]) \
               ORDER BY id FOR NO KEY UPDATE) \
             UPDATE webhooks w SET \
             consecutive_failures = CASE WHEN v.reset THEN v.failures ELSE w.consecutive_failures + v.failures END, \
             last_success_at = COALESCE(v.ok_at, w.last_success_at), \
             last_failure_at = COALESCE(v.fail_at, w.last_failure_at), \
             last_error = COALESCE(v.err, w.last_error) \
             FROM UNNEST($1::bigint[], $2::bool[], $3::bigint[], $4::bigint[], $5::bigint[], $6::text[]) \
               AS v (id, reset, failures, ok_at, fail_at, err), locked \
             WHERE w.id = v.id AND locked.id = v.id \
             AND NOT (v.reset AND v.failures = 0 AND w.consecutive_failures = 0 \
                      AND COALESCE(w.last_success_at >= v.ok_at - $7, FALSE))",
        )
        .bind(&w_ids)
        .bind(&resets)
        .bind(&failures)
        .bind(&ok_at)
        .bind(&fail_at)
        .bind(&last_errors)
        .bind(SUCCESS_TIME_GRAIN_MS)
        .execute(&mut **tx)
        .await?;

        // The attempt goes into the row (migration 0002); the row's trigger moves the
        // attempt it held before, if any, to `delivery_attempts`. A delivery stopped
        // meanwhile (webhook deleted or deactivated) stays failed.
        sqlx::query(
            "UPDATE deliveries d SET attempts = d.attempts + 1, last_attempt_at = v.finished, \
             sent_at = COALESCE(d.sent_at, v.started), status_code = v.code, latency_ms = v.latency, \
             error = v.error, locked_until = NULL, \
             status = CASE WHEN d.status = 'pending' THEN v.status ELSE d.status END, \
             next_attempt_at = CASE WHEN d.status = 'pending' THEN v.next_at ELSE NULL END, \
             delivered_at = COALESCE(v.delivered, d.delivered_at), \
             attempt_started_at = v.started, attempt_error_kind = v.kind, attempt_error = v.error, \
             attempt_response_body = v.body \
             FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::text[], \
               $7::text[], $8::bigint[], $9::bigint[], $10::text[], $11::text[]) \
               AS v (id, finished, started, code, latency, error, status, next_at, delivered, kind, body) \
             WHERE d.id = v.id",
        )
        .bind(&ids)
        .bind(&finished)
        .bind(&started)
        .bind(&codes)
        .bind(&latencies)
        .bind(&errors)
        .bind(&statuses)
        .bind(&next_at)
        .bind(&delivered)
        .bind(&kinds)
        .bind(&bodies)
        .execute(&mut **tx)
        .await?;
        for r in records.iter().filter(|r| r.result == AttemptResult::Gone) {
            let at = r.started_at_ms + r.latency_ms;
            sqlx::query(
                "UPDATE webhooks SET is_active = FALSE, disabled_reason = $2, updated_at = $3 \
                 WHERE id = $1 AND deleted_at IS NULL",
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
}

#[async_trait]
impl Store for PgStore {
    async fn migrate(&self) -> StoreResult<()> {
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    fn single_process(&self) -> bool {
        false
    }

    async fn subscribe_wakeups(&self, wake: Arc<Notify>) -> StoreResult<()> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(WAKE_CHANNEL).await?;
        // Held weakly: once the service that asked is gone, so is the listener (the
        // bench drops each scenario's database after its service stops).
        let wake = Arc::downgrade(&wake);
        tokio::spawn(async move {
            loop {
                let received = listener.recv().await;
                let Some(wake) = wake.upgrade() else { return };
                match received {
                    Ok(_) => {
                        wake.notify_waiters();
                        wake.notify_one();
                    }
                    Err(e) => {
                        // PgListener reconnects by itself on the next recv.
                        tracing::warn!(error = %e, "listening for new deliveries failed");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(())
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn create_user(&self, name: &str, tier: Tier, key_hash: &str) -> StoreResult<User> {
        let now = now_ms();
        let mut tx = self.pool.begin().await?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO users (name, tier, created_at) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(name)
        .bind(tier.as_str())
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO api_keys (user_id, key_hash, created_at) VALUES ($1, $2, $3)")
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
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(user_from_row)
            .collect()
    }

    async fn get_user(&self, id: i64) -> StoreResult<User> {
        let row = sqlx::query("SELECT id, name, tier, created_at FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
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
            "UPDATE users SET name = COALESCE($2, name), tier = COALESCE($3, tier) WHERE id = $1 \
             RETURNING id, name, tier, created_at",
        )
        .bind(id)
        .bind(name)
        .bind(tier.map(Tier::as_str))
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        user_from_row(&row)
    }

    async fn add_api_key(&self, user_id: i64, key_hash: &str) -> StoreResult<()> {
        let done = sqlx::query(
            "INSERT INTO api_keys (user_id, key_hash, created_at) \
             SELECT id, $2, $3 FROM users WHERE id = $1",
        )
        .bind(user_id)
        .bind(key_hash)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn revoke_api_key(&self, key_hash: &str) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = $2 WHERE key_hash = $1 AND revoked_at IS NULL",
        )
        .bind(key_hash)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn user_by_api_key(&self, key_hash: &str) -> StoreResult<Option<User>> {
        let row = sqlx::query(
            "SELECT u.id, u.name, u.tier, u.created_at FROM api_keys k JOIN users u ON u.id = k.user_id \
             WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
        )
        .bind(key_hash)
        .fetch_optional(&self.pool)
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
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10 \
             WHERE (SELECT COUNT(*) FROM webhooks WHERE user_id = $1 AND deleted_at IS NULL) < $11 \
             RETURNING {WEBHOOK_COLUMNS}"
        );
        let mut tx = self.pool.begin().await?;
        // The user's row lock serialises creates across every process.
        sqlx::query("SELECT id FROM users WHERE id = $1 FOR UPDATE")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
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
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::LimitReached(tier))?;
        tx.commit().await?;
        self.webhook_from_row(&row)
    }

    async fn list_webhooks(&self, user_id: i64) -> StoreResult<Vec<Webhook>> {
        let sql = format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE user_id = $1 AND deleted_at IS NULL ORDER BY id"
        );
        sqlx::query(&sql)
            .bind(user_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| self.webhook_from_row(row))
            .collect()
    }

    async fn get_webhook(&self, user_id: i64, id: i64) -> StoreResult<Webhook> {
        let sql = format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL"
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .bind(user_id)
            .fetch_optional(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        let sql = format!(
            "SELECT {WEBHOOK_COLUMNS} FROM webhooks WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL"
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
            "UPDATE webhooks SET name = $2, url = $3, min_amount_usd = $4, chains = $5, protocols = $6, \
             categories = $7, is_active = $8, disabled_reason = $9, updated_at = $10 WHERE id = $1",
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
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE webhooks SET deleted_at = $3, is_active = FALSE, updated_at = $3 \
             WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL",
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
            "UPDATE webhooks SET secret = $3, updated_at = $4 \
             WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL",
        )
        .bind(id)
        .bind(user_id)
        .bind(self.secrets.encode(secret))
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    async fn stored_secrets(&self, after_id: i64, limit: u32) -> StoreResult<Vec<(i64, String)>> {
        sqlx::query("SELECT id, secret FROM webhooks WHERE id > $1 ORDER BY id LIMIT $2")
            .bind(after_id)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| Ok((row.try_get("id")?, row.try_get("secret")?)))
            .collect()
    }

    async fn replace_stored_secrets(&self, changes: &[SecretChange]) -> StoreResult<Vec<i64>> {
        let mut tx = self.pool.begin().await?;
        let mut replaced = Vec::new();
        for c in changes {
            let done = sqlx::query("UPDATE webhooks SET secret = $2 WHERE id = $1 AND secret = $3")
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
        let mut tx = self.pool.begin().await?;
        let mut targets = Vec::new();
        for row in sqlx::query(
            "SELECT id, min_amount_usd, chains, protocols, categories FROM webhooks \
             WHERE deleted_at IS NULL AND is_active",
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
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
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
                let id: i64 = sqlx::query_scalar("SELECT id FROM exploits WHERE dedup_key = $1")
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
        if !pending.is_empty() {
            let (webhooks, exploits): (Vec<i64>, Vec<i64>) = pending.into_iter().unzip();
            sqlx::query(
                "INSERT INTO deliveries (webhook_id, exploit_id, event, status, next_attempt_at, created_at) \
                 SELECT w, e, $3, 'pending', $4, $4 FROM UNNEST($1::bigint[], $2::bigint[]) AS t (w, e)",
            )
            .bind(&webhooks)
            .bind(&exploits)
            .bind(crate::domain::payload::EVENT_EXPLOIT_DETECTED)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            // Delivered on commit to every listening worker, in every process.
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(WAKE_CHANNEL)
                .execute(&mut *tx)
                .await?;
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
        // The last day is the current hour and the 23 before it, as in SQLite, whose
        // figures are kept by the hour.
        let since = (super::hours::hour_of(now_ms) - 23) * super::hours::HOUR_MS;
        // One round trip for a whole list: the figures of every webhook at once. The
        // all-time counts come from `deliveries_by_webhook_status` (index-only once
        // vacuumed); only the last day's deliveries are read, through
        // `deliveries_finished`, rather than every finished row of the webhook.
        let rows = sqlx::query(
            "SELECT w.id, w.consecutive_failures, w.last_success_at, w.last_failure_at, w.last_error, \
               COALESCE(a.ok_24h, 0) AS ok_24h, COALESCE(a.failed_24h, 0) AS failed_24h, \
               (SELECT COUNT(*) FROM deliveries d \
                  WHERE d.webhook_id = w.id AND d.status = 'succeeded') AS ok_all, \
               (SELECT COUNT(*) FROM deliveries d \
                  WHERE d.webhook_id = w.id AND d.status = 'failed') AS failed_all, \
               a.latency_24h \
             FROM webhooks w LEFT JOIN ( \
               SELECT d.webhook_id, \
                 COUNT(*) FILTER (WHERE d.status = 'succeeded') AS ok_24h, \
                 COUNT(*) FILTER (WHERE d.status = 'failed') AS failed_24h, \
                 AVG(d.latency_ms)::float8 AS latency_24h \
               FROM deliveries d WHERE d.webhook_id = ANY ($1::bigint[]) \
                 AND d.status <> 'pending' AND d.last_attempt_at >= $2 \
               GROUP BY d.webhook_id) a ON a.webhook_id = w.id \
             WHERE w.id = ANY ($1::bigint[])",
        )
        .bind(webhook_ids)
        .bind(since)
        .fetch_all(&self.pool)
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

    async fn next_claimable_at(&self, now_ms: i64, busy: &[i64]) -> StoreResult<Option<i64>> {
        // In index order, and only the head of it: behind a deep queue of a busy
        // endpoint the scan would otherwise read that whole queue on every idle turn (a
        // later row is found by the fallback poll, or at once by the claim a new delivery
        // wakes). Claims of a crashed process are not looked for here either: the poll
        // finds them once their lease ends.
        Ok(sqlx::query_scalar(
            "SELECT next_attempt_at FROM ( \
               SELECT next_attempt_at, webhook_id FROM deliveries \
               WHERE status = 'pending' AND (locked_until IS NULL OR locked_until <= $1) \
               ORDER BY next_attempt_at LIMIT 1024) head \
             WHERE webhook_id <> ALL ($2::bigint[]) \
             ORDER BY next_attempt_at LIMIT 1",
        )
        .bind(now_ms)
        .bind(busy)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn release_claims(&self, delivery_ids: &[i64]) -> StoreResult<()> {
        if delivery_ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE deliveries SET locked_until = NULL \
             WHERE status = 'pending' AND id = ANY ($1::bigint[])",
        )
        .bind(delivery_ids)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn release_all_claims(&self) -> StoreResult<()> {
        sqlx::query("UPDATE deliveries SET locked_until = NULL WHERE status = 'pending' AND locked_until IS NOT NULL")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn record_attempts(&self, records: &[AttemptRecord]) -> StoreResult<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut tx = self.hot_transaction().await?;
        self.record_in(&mut tx, records).await?;
        tx.commit().await?;
        Ok(())
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
        let mut tx = self.hot_transaction().await?;
        if records.is_empty() {
            let claimed = self
                .claim_in(&mut tx, now_ms, lease_until_ms, limit, per_endpoint, room)
                .await?;
            tx.commit().await?;
            return Ok(claimed);
        }
        self.record_in(&mut tx, records).await?;
        // The outcomes must be written whatever happens to the claim (a secret that no
        // longer opens after a key rotation, say): the claim gets a savepoint.
        let mut savepoint = sqlx::Connection::begin(&mut *tx).await?;
        let claimed = match self
            .claim_in(
                &mut savepoint,
                now_ms,
                lease_until_ms,
                limit,
                per_endpoint,
                room,
            )
            .await
        {
            Ok(claimed) => {
                savepoint.commit().await?;
                claimed
            }
            Err(e) => {
                savepoint.rollback().await?;
                tracing::error!(error = %e, "claiming deliveries failed; outcomes recorded");
                Vec::new()
            }
        };
        tx.commit().await?;
        Ok(claimed)
    }

    async fn queue_depth(&self) -> StoreResult<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'")
                .fetch_one(&self.pool)
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
             LEFT JOIN exploits e ON e.id = d.exploit_id WHERE d.id = $1 AND d.webhook_id = $2"
        );
        let row = sqlx::query(&sql)
            .bind(delivery_id)
            .bind(webhook_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        let event: String = row.try_get("event")?;
        let payload = body_from_row(&row, &event)?;
        let sql = format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE id = $1");
        let delivery = delivery_from_row(
            &sqlx::query(&sql)
                .bind(delivery_id)
                .fetch_one(&self.pool)
                .await?,
        )?;
        // The earlier attempts, then the latest, which the row itself holds (migration
        // 0002; rows written before it have every attempt in `delivery_attempts`).
        let attempts = sqlx::query(
            "SELECT attempt, started_at, status_code, latency_ms, error_kind, error, response_body \
             FROM (SELECT attempt, started_at, status_code, latency_ms, error_kind, error, \
                     response_body, 0 AS latest, id FROM delivery_attempts WHERE delivery_id = $1 \
                   UNION ALL \
                   SELECT attempts, attempt_started_at, status_code, latency_ms, \
                     attempt_error_kind, attempt_error, attempt_response_body, 1, id \
                   FROM deliveries WHERE id = $1 AND attempt_started_at IS NOT NULL) a \
             ORDER BY latest, attempt, id",
        )
        .bind(delivery_id)
        .fetch_all(&self.pool)
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
            "UPDATE deliveries SET status = 'pending', next_attempt_at = $3, locked_until = NULL, \
             schedule_base = attempts, delivered_at = NULL \
             WHERE id = $1 AND webhook_id = $2 RETURNING {DELIVERY_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(delivery_id)
            .bind(webhook_id)
            .bind(now_ms)
            .fetch_optional(&self.pool)
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
             locked_until, created_at) VALUES ($1, NULL, $2, $3, 'pending', $4, $5, $4) RETURNING id",
        )
        .bind(webhook_id)
        .bind(crate::domain::payload::EVENT_WEBHOOK_TEST)
        .bind(payload)
        .bind(now_ms)
        .bind(lease_until_ms)
        .fetch_one(&self.pool)
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
                "SELECT id FROM deliveries WHERE webhook_id = $1 ORDER BY id DESC LIMIT $2 OFFSET $3",
                "SELECT COUNT(*) FROM deliveries WHERE webhook_id = $1",
            ),
            Some(_) => (
                "SELECT id FROM deliveries WHERE webhook_id = $1 AND status = $4 \
                 ORDER BY id DESC LIMIT $2 OFFSET $3",
                "SELECT COUNT(*) FROM deliveries WHERE webhook_id = $1 AND status = $2",
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
        let rows = query.fetch_all(&self.pool).await?;
        let total = total.fetch_one(&self.pool).await?;
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
        // Attempts are in two places (migration 0002): the latest in the delivery's row,
        // the earlier ones in `delivery_attempts`.
        let rows = sqlx::query(
            "WITH d AS MATERIALIZED ( \
               SELECT id, attempt_started_at, attempt_error_kind, latency_ms FROM deliveries \
                 WHERE webhook_id = $1 AND status <> 'pending' AND last_attempt_at >= $2 \
               UNION ALL \
               SELECT id, attempt_started_at, attempt_error_kind, latency_ms FROM deliveries \
                 WHERE webhook_id = $1 AND status = 'pending' AND last_attempt_at >= $2) \
             SELECT (a.started_at - $2) / $3 AS bucket, \
               COUNT(*) FILTER (WHERE a.error_kind IS NULL) AS ok, \
               COUNT(*) FILTER (WHERE a.error_kind IS NOT NULL) AS failed, \
               (AVG(a.latency_ms))::float8 AS latency \
             FROM (SELECT a.started_at, a.error_kind, a.latency_ms \
                     FROM d JOIN delivery_attempts a ON a.delivery_id = d.id \
                   UNION ALL \
                   SELECT attempt_started_at, attempt_error_kind, latency_ms FROM d \
                     WHERE attempt_started_at IS NOT NULL) a \
             WHERE a.started_at >= $2 \
             GROUP BY bucket ORDER BY bucket",
        )
        .bind(webhook_id)
        .bind(since_ms)
        .bind(bucket_ms)
        .fetch_all(&self.pool)
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
