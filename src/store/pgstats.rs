//! Table statistics where autovacuum does not keep them: a PostgreSQL table never analyzed
//! has none, and the statements prepared on it keep the generic plans made while it was
//! small (a sequential scan for the outcomes' UPDATE, 2.3 ms a turn at 10,000 rows and
//! growing: BENCHMARKS.md item 57). With autovacuum on this seldom fires: it analyzes first.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::StoreResult;

/// How often the statistics are looked at.
const CHECK_EVERY: Duration = Duration::from_secs(5);
/// The tables the delivery path plans on.
const TABLES: [&str; 3] = ["deliveries", "exploits", "delivery_attempts"];
/// Rows changed since the last ANALYZE before a table is analyzed at all...
const MIN_CHANGES: i64 = 1_000;
/// ...and, once it has statistics, the share of its rows (autovacuum's default is 0.1).
const STALE_SHARE: f64 = 0.5;
/// A table analyzed (by anyone) this recently is left alone.
const RECENT_SECS: f64 = 60.0;
/// One process analyzes at a time (an advisory lock of the transaction).
const LOCK_KEY: i64 = 0x6b61_6d69_796f_5354;

/// Whether a table's statistics are missing or stale.
fn stale(changes: i64, reltuples: f32, since_analyze_secs: Option<f64>) -> bool {
    changes >= MIN_CHANGES
        && (reltuples < 0.0 || changes as f64 > STALE_SHARE * f64::from(reltuples))
        && since_analyze_secs.is_none_or(|s| s >= RECENT_SECS)
}

/// Analyzes the tables whose statistics are missing or stale, unless another process is
/// doing so; returns the tables analyzed.
pub(crate) async fn analyze_stale(pool: &PgPool) -> StoreResult<Vec<&'static str>> {
    let rows: Vec<(String, i64, f32, Option<f64>)> = sqlx::query_as(
        "SELECT s.relname::text, s.n_mod_since_analyze, c.reltuples, \
           EXTRACT(EPOCH FROM now() - GREATEST(s.last_analyze, s.last_autoanalyze))::float8 \
         FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid \
         WHERE s.schemaname = current_schema() AND s.relname = ANY ($1)",
    )
    .bind(TABLES.as_slice())
    .fetch_all(pool)
    .await?;
    let due: Vec<&'static str> = TABLES
        .into_iter()
        .filter(|t| {
            rows.iter()
                .any(|(name, changes, tuples, since)| name == t && stale(*changes, *tuples, *since))
        })
        .collect();
    if due.is_empty() {
        return Ok(due);
    }
    let mut tx = pool.begin().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(LOCK_KEY)
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        return Ok(Vec::new());
    }
    for table in &due {
        sqlx::query(&format!("ANALYZE {table}"))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(due)
}

/// Looks at the statistics every `CHECK_EVERY` until `stop` (the store is dropped),
/// when there is a runtime to do it on.
pub(crate) fn keep(pool: PgPool, stop: CancellationToken) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            match analyze_stale(&pool).await {
                Ok(tables) if !tables.is_empty() => {
                    tracing::info!(
                        ?tables,
                        "analyzed tables whose statistics were missing or stale"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "checking table statistics failed"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_analyzed_when_it_has_none_or_has_changed_by_half() {
        // Never analyzed: from MIN_CHANGES changed rows on.
        assert!(!stale(999, -1.0, None));
        assert!(stale(1_000, -1.0, None));
        // Analyzed: more than half its rows changed since, and not just now.
        assert!(!stale(4_000, 10_000.0, Some(600.0)));
        assert!(stale(6_000, 10_000.0, Some(600.0)));
        assert!(!stale(6_000, 10_000.0, Some(10.0)));
        // A small table is not analyzed over a few changes.
        assert!(!stale(500, 100.0, Some(600.0)));
    }
}
