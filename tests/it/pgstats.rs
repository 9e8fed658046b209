//! PostgreSQL tables the delivery path plans on get statistics from the service itself
//! when autovacuum does not give them.

use sqlx::Connection as _;
use std::time::{Duration, Instant};

use crate::helpers::spawn_api_app;

/// `deliveries`' row estimate: -1 until the table is first analyzed.
async fn estimated_rows(url: &str) -> f32 {
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let n = sqlx::query_scalar("SELECT reltuples FROM pg_class WHERE relname = 'deliveries'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.close().await.ok();
    n
}

/// A table filled while autovacuum leaves it alone is analyzed by the running service
/// within seconds: without statistics, the statements prepared on it keep plans made
/// for an empty table (BENCHMARKS.md item 57).
async fn a_table_autovacuum_leaves_alone_is_analyzed_by_the_service() {
    let app = spawn_api_app().await;
    let url = app.database_url.clone();
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(
        "ALTER TABLE deliveries SET (autovacuum_enabled = false);
         INSERT INTO users (name, tier, created_at) VALUES ('fund', 'enterprise', 1);
         INSERT INTO webhooks (user_id, name, url, is_active, secret, created_at, updated_at)
           SELECT id, 'a', 'https://a.example/hook', TRUE, 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 1, 1
           FROM users;
         INSERT INTO exploits (dedup_key, tx_hash, chain, protocol, amount_usd, timestamp, detected_at)
           VALUES (E'ethereum\\n0xabc', '0xabc', 'Ethereum', 'Curve', 1000000.5, 2, 3);
         INSERT INTO deliveries (webhook_id, exploit_id, event, status, created_at)
           SELECT w.id, e.id, 'exploit.detected', 'succeeded', 4
           FROM webhooks w, exploits e, generate_series(1, 3000);",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    // A session's table counts reach the statistics when it ends, if not before.
    conn.close().await.unwrap();
    assert!(
        estimated_rows(&url).await < 0.0,
        "the table starts without statistics"
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut rows = estimated_rows(&url).await;
    while rows < 0.0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        rows = estimated_rows(&url).await;
    }
    assert!(
        (2_500.0..=3_500.0).contains(&rows),
        "deliveries was not analyzed within 30 s (estimate {rows})"
    );
}

#[tokio::test]
async fn a_table_autovacuum_leaves_alone_is_analyzed_by_the_service_on_postgres() {
    crate::backend::run(
        crate::backend::Backend::Postgres,
        a_table_autovacuum_leaves_alone_is_analyzed_by_the_service(),
    )
    .await
}
