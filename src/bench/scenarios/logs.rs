//! Scenario `logs`: a database with 5,000,000 delivery rows (quick: 50,000); p50/p99 of
//! listing page 1 and a far page (1,000; quick: 100) of one webhook's deliveries through
//! the API. The service runs without workers, so the rows stay as queued. On PostgreSQL
//! the table is vacuumed after filling, as autovacuum would soon do.

use std::time::Instant;

use anyhow::{bail, Context};

use super::{ingest_in_batches, Env, Fixture};
use crate::bench::report::ScenarioReport;
use crate::bench::stats::{progress, Percentiles};
use crate::config::Role;

const PAGE_SIZE: u32 = 50;

pub async fn run(env: &Env) -> anyhow::Result<ScenarioReport> {
    let mut report = ScenarioReport::new("logs");
    // Few webhooks in the quick run, so that its far page still exists.
    let (rows, webhooks, far_page, requests): (u64, usize, u32, usize) = if env.quick {
        (50_000, 5, 100, 50)
    } else {
        (5_000_000, 50, 1_000, 200)
    };
    let mut opts = env.service_options();
    opts.role = Role::Api;
    let fx = Fixture::start(env, opts).await?;
    let paths: Vec<String> = (0..webhooks).map(|i| format!("/hook/{i}")).collect();
    let hooks = fx.create_webhooks(&paths).await?;

    let exploits = rows / webhooks as u64;
    let bar = progress(exploits, "logs: filling the table");
    let started = Instant::now();
    let batch = super::MAX_INGEST_BATCH.min(200_000 / webhooks);
    let queued = ingest_in_batches_counting(&fx, exploits as usize, batch, &bar).await?;
    let fill_secs = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let mut vacuum_secs = None;
    let url = fx.service.database_url();
    if crate::store::is_postgres_url(url) {
        // Right after a bulk insert PostgreSQL has no visibility map and no statistics
        // for the new rows, so every index scan also reads the heap: page 1 took 0.5 s,
        // page 1,000 over 1 s. Autovacuum sets both up for a table this size within a
        // minute; the listing is measured as it would then be.
        let t = Instant::now();
        vacuum_deliveries(url).await?;
        vacuum_secs = Some(t.elapsed().as_secs_f64());
    }

    let (webhook_id, key) = hooks[0].clone();
    let per_webhook = exploits;
    report.count("rows", "delivery rows", queued);
    report.count("webhook_rows", "rows of the listed webhook", per_webhook);
    report.number("fill_secs", "filling the table", fill_secs, "s");
    if let Some(secs) = vacuum_secs {
        report.number("vacuum_secs", "VACUUM (ANALYZE) after filling", secs, "s");
    }
    let pages = [
        (
            1u32,
            "page1_p50_ms",
            "page1_p99_ms",
            "page 1 p50",
            "page 1 p99",
        ),
        (
            far_page,
            "far_page_p50_ms",
            "far_page_p99_ms",
            "far page p50",
            "far page p99",
        ),
    ];
    for (page, k50, k99, l50, l99) in pages {
        let mut sample = Vec::with_capacity(requests);
        for i in 0..requests {
            let t = Instant::now();
            let answer = fx
                .service
                .api
                .list_deliveries(&key, webhook_id, page, PAGE_SIZE)
                .await?;
            sample.push(t.elapsed().as_secs_f64() * 1000.0);
            if i == 0 {
                check_page(&answer, per_webhook)
                    .with_context(|| format!("page {page} of webhook {webhook_id}"))?;
            }
        }
        let p = Percentiles::of(&sample).expect("at least one request");
        report.number(k50, l50, p.p50, "ms");
        report.number(k99, l99, p.p99, "ms");
    }
    report.count("far_page", "far page number", u64::from(far_page));
    report.count("requests_per_page", "requests per page", requests as u64);
    if queued != rows {
        report.error(format!(
            "ingest queued {queued} deliveries, expected {rows}"
        ));
    }
    fx.stop().await?;
    Ok(report)
}

/// Ingests with progress counted in exploits (nothing is delivered in this scenario).
async fn ingest_in_batches_counting(
    fx: &Fixture,
    total: usize,
    batch: usize,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<u64> {
    let mut queued = 0;
    let mut done = 0;
    while done < total {
        let n = (total - done).min(batch);
        queued += ingest_in_batches(fx, n, n, &indicatif::ProgressBar::hidden()).await?;
        done += n;
        bar.set_position(done as u64);
    }
    Ok(queued)
}

/// A full page, and the total the scenario put there.
fn check_page(answer: &serde_json::Value, expected_total: u64) -> anyhow::Result<()> {
    let got = answer["deliveries"].as_array().map_or(0, Vec::len);
    if got != PAGE_SIZE as usize {
        bail!("{got} deliveries on the page, expected {PAGE_SIZE}");
    }
    if answer["total"].as_u64() != Some(expected_total) {
        bail!("total is {}, expected {expected_total}", answer["total"]);
    }
    Ok(())
}

/// What autovacuum does to a freshly filled PostgreSQL table, at once.
async fn vacuum_deliveries(url: &str) -> anyhow::Result<()> {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .context("connecting to PostgreSQL to vacuum")?;
    sqlx::query("VACUUM (ANALYZE) deliveries")
        .execute(&mut conn)
        .await
        .context("VACUUM (ANALYZE) deliveries")?;
    conn.close().await.ok();
    Ok(())
}
