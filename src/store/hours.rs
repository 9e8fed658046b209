//! The per-hour figures of each webhook in SQLite (`delivery_hours`, migration 0007):
//! what a commit changes in them, summed by hour and webhook before it is written, and
//! the statements that keep them right where rows change in bulk.

use rusqlite::params;
use rustc_hash::FxHashMap;

use super::{AttemptRecord, StoreResult};

pub(crate) const HOUR_MS: i64 = 3_600_000;

/// The hour a time falls in, as the table keys it.
pub(crate) fn hour_of(ms: i64) -> i64 {
    ms.div_euclid(HOUR_MS)
}

/// How a delivery row stands in the figures: a finished delivery with a last attempt
/// counts in that attempt's hour, by status.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Standing<'a> {
    pub status: &'a str,
    pub last_attempt_at: Option<i64>,
    pub latency_ms: Option<i64>,
}

/// Changes to one row of the table.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Delta {
    attempts_ok: i64,
    attempts_failed: i64,
    attempts_latency_ms: i64,
    succeeded: i64,
    failed: i64,
    finished_latency_ms: i64,
    finished_latencies: i64,
}

/// A transaction's changes, keyed by (hour, webhook).
#[derive(Debug, Default)]
pub(crate) struct HourDeltas {
    rows: FxHashMap<(i64, i64), Delta>,
}

impl HourDeltas {
    /// An attempt, in the hour it started.
    pub fn attempt(&mut self, r: &AttemptRecord) {
        let d = self.at(r.started_at_ms, r.webhook_id);
        if r.error_kind.is_none() {
            d.attempts_ok += 1;
        } else {
            d.attempts_failed += 1;
        }
        d.attempts_latency_ms += r.latency_ms;
    }

    /// A delivery row of `webhook_id` changed from `before` to `after`.
    pub fn moved(&mut self, webhook_id: i64, before: Option<Standing<'_>>, after: Standing<'_>) {
        if let Some(b) = before {
            self.count(webhook_id, b, -1);
        }
        self.count(webhook_id, after, 1);
    }

    fn count(&mut self, webhook_id: i64, s: Standing<'_>, sign: i64) {
        let Some(at) = s.last_attempt_at else {
            return;
        };
        let (succeeded, failed) = match s.status {
            "succeeded" => (1, 0),
            "failed" => (0, 1),
            _ => return,
        };
        let d = self.at(at, webhook_id);
        d.succeeded += sign * succeeded;
        d.failed += sign * failed;
        if let Some(l) = s.latency_ms {
            d.finished_latency_ms += sign * l;
            d.finished_latencies += sign;
        }
    }

    fn at(&mut self, ms: i64, webhook_id: i64) -> &mut Delta {
        self.rows.entry((hour_of(ms), webhook_id)).or_default()
    }

    /// Adds the changes to the table, one statement per (hour, webhook).
    pub fn write(&self, tx: &rusqlite::Connection) -> StoreResult<()> {
        let mut upsert = tx.prepare_cached(UPSERT)?;
        for (&(hour, webhook_id), d) in &self.rows {
            if *d == Delta::default() {
                continue;
            }
            upsert.execute(params![
                hour,
                webhook_id,
                d.attempts_ok,
                d.attempts_failed,
                d.attempts_latency_ms,
                d.succeeded,
                d.failed,
                d.finished_latency_ms,
                d.finished_latencies
            ])?;
        }
        Ok(())
    }
}

const UPSERT: &str = "INSERT INTO delivery_hours (hour, webhook_id, attempts_ok, attempts_failed, \
     attempts_latency_ms, succeeded, failed, finished_latency_ms, finished_latencies) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
     ON CONFLICT (hour, webhook_id) DO UPDATE SET \
     attempts_ok = attempts_ok + excluded.attempts_ok, \
     attempts_failed = attempts_failed + excluded.attempts_failed, \
     attempts_latency_ms = attempts_latency_ms + excluded.attempts_latency_ms, \
     succeeded = succeeded + excluded.succeeded, failed = failed + excluded.failed, \
     finished_latency_ms = finished_latency_ms + excluded.finished_latency_ms, \
     finished_latencies = finished_latencies + excluded.finished_latencies";

/// Run before a webhook's queue is stopped (`?1` the webhook): its pending deliveries
/// that were attempted become failed ones, counted at their last attempt.
pub(crate) const COUNT_STOPPED: &str = "INSERT INTO delivery_hours (hour, webhook_id, failed, \
     finished_latency_ms, finished_latencies) \
     SELECT last_attempt_at / 3600000, webhook_id, COUNT(*), COALESCE(SUM(latency_ms), 0), \
     COUNT(latency_ms) FROM deliveries \
     WHERE webhook_id = ?1 AND status = 'pending' AND last_attempt_at IS NOT NULL \
     GROUP BY 1, 2 \
     ON CONFLICT (hour, webhook_id) DO UPDATE SET failed = failed + excluded.failed, \
     finished_latency_ms = finished_latency_ms + excluded.finished_latency_ms, \
     finished_latencies = finished_latencies + excluded.finished_latencies";

/// Run before a delivery (`?1`, of webhook `?2`) is queued again by hand: a finished
/// one leaves the figures of the hour it was counted in.
pub(crate) const UNCOUNT_REQUEUED: &str = "UPDATE delivery_hours SET \
     succeeded = succeeded - (d.status = 'succeeded'), failed = failed - (d.status = 'failed'), \
     finished_latency_ms = finished_latency_ms - COALESCE(d.latency_ms, 0), \
     finished_latencies = finished_latencies - (d.latency_ms IS NOT NULL) \
     FROM (SELECT webhook_id, status, last_attempt_at, latency_ms FROM deliveries \
           WHERE id = ?1 AND webhook_id = ?2 AND status <> 'pending' \
           AND last_attempt_at IS NOT NULL) AS d \
     WHERE delivery_hours.hour = d.last_attempt_at / 3600000 \
     AND delivery_hours.webhook_id = d.webhook_id";

/// Recounts the figures from the deliveries and attempts themselves, as
/// `(hour, webhook, attempts ok, attempts failed, attempts' latency, succeeded, failed,
/// finished latency, finished latencies)`, the rows of nothing but zeros left out: what
/// the table must hold.
#[cfg(test)]
pub(crate) const RECOUNT: &str = "SELECT hour, webhook_id, SUM(aok), SUM(afail), SUM(alat), \
     SUM(ok), SUM(fail), SUM(flat), SUM(fcount) FROM ( \
       SELECT a.started_at / 3600000 AS hour, d.webhook_id, a.error_kind IS NULL AS aok, \
         a.error_kind IS NOT NULL AS afail, a.latency_ms AS alat, 0 AS ok, 0 AS fail, \
         0 AS flat, 0 AS fcount \
       FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id \
       UNION ALL \
       SELECT attempt_started_at / 3600000, webhook_id, attempt_error_kind IS NULL, \
         attempt_error_kind IS NOT NULL, latency_ms, 0, 0, 0, 0 \
       FROM deliveries WHERE attempt_started_at IS NOT NULL \
       UNION ALL \
       SELECT last_attempt_at / 3600000, webhook_id, 0, 0, 0, status = 'succeeded', \
         status = 'failed', COALESCE(latency_ms, 0), latency_ms IS NOT NULL \
       FROM deliveries WHERE status <> 'pending' AND last_attempt_at IS NOT NULL) \
     GROUP BY 1, 2 ORDER BY 1, 2";

/// The table's rows in `RECOUNT`'s shape.
#[cfg(test)]
pub(crate) const STORED: &str = "SELECT hour, webhook_id, attempts_ok, attempts_failed, \
     attempts_latency_ms, succeeded, failed, finished_latency_ms, finished_latencies \
     FROM delivery_hours WHERE attempts_ok <> 0 OR attempts_failed <> 0 \
     OR attempts_latency_ms <> 0 OR succeeded <> 0 OR failed <> 0 \
     OR finished_latency_ms <> 0 OR finished_latencies <> 0 ORDER BY 1, 2";
