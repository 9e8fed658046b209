//! Schema migrations of a database that already holds data (a SQLite file; a PostgreSQL
//! database when one is named): the real binary's `migrate` upgrades it without losing or
//! changing a row.

use std::path::Path;
use std::process::Stdio;

use rusqlite::Connection;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::ConnectOptions as _;

/// The columns of `table`, in order.
fn columns(conn: &Connection, table: &str) -> Vec<String> {
    conn.prepare(&format!(
        "SELECT name FROM pragma_table_info('{table}') ORDER BY cid"
    ))
    .unwrap()
    .query_map([], |row| row.get(0))
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// Every row of `table`, each as one line of SQL literals, in id order.
fn dump(conn: &Connection, table: &str) -> Vec<String> {
    dump_columns(conn, table, &columns(conn, table))
}

/// Every row of `table` as `dump` gives it, with only `columns`.
fn dump_columns(conn: &Connection, table: &str, columns: &[String]) -> Vec<String> {
    let quoted: Vec<String> = columns.iter().map(|c| format!("quote({c})")).collect();
    let sql = format!(
        "SELECT {} FROM {table} ORDER BY id",
        quoted.join(" || ',' || ")
    );
    conn.prepare(&sql)
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn page_size(conn: &Connection) -> i64 {
    conn.pragma_query_value(None, "page_size", |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn a_new_sqlite_file_has_8_kib_pages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    migrate_with_the_binary(&format!("sqlite://{}", path.display())).await;
    let conn = Connection::open(&path).unwrap();
    assert_eq!(page_size(&conn), 8192);
    let journal: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(journal, "wal");
}

/// A database with only the first migration applied, as the first release left it.
async fn first_release_database(path: &Path) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/migrations/sqlite/0001_init.sql"
        ),
        dir.path().join("0001_init.sql"),
    )
    .unwrap();
    let migrator = sqlx::migrate::Migrator::new(dir.path()).await.unwrap();
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .connect()
        .await
        .unwrap();
    migrator.run(&mut conn).await.unwrap();
}

#[tokio::test]
async fn upgrading_a_sqlite_file_keeps_every_delivery_and_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    first_release_database(&path).await;
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(
            "PRAGMA foreign_keys = ON;
             INSERT INTO users (name, tier, created_at) VALUES ('fund', 'enterprise', 1);
             INSERT INTO webhooks (user_id, name, url, is_active, secret, created_at, updated_at)
               VALUES (1, 'a', 'https://a.example/hook', 1, 'sealed', 1, 1),
                      (1, 'b', 'https://b.example/hook', 1, 'sealed', 1, 1);
             INSERT INTO exploits (dedup_key, tx_hash, chain, protocol, amount_usd, timestamp, detected_at)
               VALUES ('ethereum' || char(10) || '0xabc', '0xabc', 'Ethereum', 'Curve', 1000000.5, 2, 3);
             INSERT INTO deliveries (webhook_id, exploit_id, event, status, attempts, next_attempt_at,
                 created_at, sent_at, delivered_at, last_attempt_at, status_code, latency_ms)
               VALUES (1, 1, 'exploit.detected', 'succeeded', 1, NULL, 3, 4, 5, 5, 200, 1);
             INSERT INTO deliveries (webhook_id, exploit_id, event, status, attempts, next_attempt_at,
                 locked_until, created_at, last_attempt_at, status_code, latency_ms, error)
               VALUES (2, 1, 'exploit.detected', 'pending', 2, 90, 80, 3, 7, 500, 2, 'HTTP 500');
             INSERT INTO deliveries (webhook_id, event, payload, status, created_at, error)
               VALUES (2, 'test', '{\"test\":true}', 'failed', 9, 'webhook inactive');
             INSERT INTO delivery_attempts (delivery_id, attempt, started_at, status_code, latency_ms,
                 response_body) VALUES (1, 1, 4, 200, 1, 'ok');
             INSERT INTO delivery_attempts (delivery_id, attempt, started_at, status_code, latency_ms,
                 error_kind, error) VALUES (2, 1, 4, 500, 1, 'http_status', 'HTTP 500'),
                                           (2, 2, 6, 500, 1, 'http_status', 'HTTP 500');",
        )
        .unwrap();
    }
    let (before, old_columns) = {
        let conn = Connection::open(&path).unwrap();
        (
            (dump(&conn, "deliveries"), dump(&conn, "delivery_attempts")),
            columns(&conn, "deliveries"),
        )
    };
    assert_eq!((before.0.len(), before.1.len()), (3, 3));

    migrate_with_the_binary(&format!("sqlite://{}", path.display())).await;

    let conn = Connection::open(&path).unwrap();
    conn.execute_batch("PRAGMA foreign_keys = ON").unwrap();
    // The file keeps the 4 KiB pages it was made with; only new files get 8 KiB ones.
    assert_eq!(page_size(&conn), 4096);
    assert_eq!(dump_columns(&conn, "deliveries", &old_columns), before.0);
    assert_eq!(dump(&conn, "delivery_attempts"), before.1);
    // Migration 0004's columns hold a delivery's latest attempt; old rows have theirs
    // in `delivery_attempts`, so they are empty.
    let added: Vec<String> = columns(&conn, "deliveries")
        .into_iter()
        .filter(|c| !old_columns.contains(c))
        .collect();
    assert_eq!(
        added,
        [
            "attempt_started_at",
            "attempt_error_kind",
            "attempt_error",
            "attempt_response_body"
        ]
    );
    let filled: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM deliveries WHERE attempt_started_at IS NOT NULL \
             OR attempt_error_kind IS NOT NULL OR attempt_error IS NOT NULL \
             OR attempt_response_body IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(filled, 0);
    // Migration 0004's trigger is gone again (0005): the writer keeps the history.
    let triggers: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'trigger'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(triggers, Vec::<String>::new());
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    let dangling: i64 = conn
        .query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(dangling, 0);
    let parent: String = conn
        .query_row(
            "SELECT \"table\" FROM pragma_foreign_key_list('delivery_attempts')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(parent, "deliveries");
    let indexes: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'index' \
             AND tbl_name IN ('deliveries', 'delivery_attempts') AND sql IS NOT NULL ORDER BY name",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        indexes,
        [
            "deliveries_by_webhook",
            "deliveries_due",
            "deliveries_failed_by_webhook",
            "deliveries_pending_by_webhook",
            "delivery_attempts_by_delivery"
        ]
    );
    // Migration 0007's hourly figures, counted from the old rows (all in the epoch's first
    // hour): webhook 1's attempt and succeeded delivery; webhook 2's two failed attempts,
    // and nothing for its pending delivery nor its failed one that was never attempted.
    let figures: Vec<[i64; 9]> = conn
        .prepare(
            "SELECT hour, webhook_id, attempts_ok, attempts_failed, attempts_latency_ms, \
             succeeded, failed, finished_latency_ms, finished_latencies \
             FROM delivery_hours ORDER BY hour, webhook_id",
        )
        .unwrap()
        .query_map([], |r| {
            let mut row = [0; 9];
            for (i, v) in row.iter_mut().enumerate() {
                *v = r.get(i)?;
            }
            Ok(row)
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        figures,
        [[0, 1, 1, 0, 1, 1, 0, 1, 1], [0, 2, 0, 2, 2, 0, 0, 0, 0]]
    );

    // What the rebuild is for: writing a delivery or an attempt builds no temporary
    // table and leaves `sqlite_sequence` alone.
    for sql in [
        "INSERT INTO deliveries (webhook_id, exploit_id, event, status, next_attempt_at, created_at) \
         VALUES (?1, ?2, ?3, 'pending', ?4, ?4)",
        "UPDATE deliveries SET status = CASE WHEN status = 'pending' THEN ?2 ELSE status END WHERE id = ?1",
        "INSERT INTO delivery_attempts (delivery_id, attempt, started_at, latency_ms) VALUES (?1, ?2, ?3, ?4)",
    ] {
        // (opcode, p2): OpenWrite's p2 is the root page of what it opens.
        let mut explain = conn.prepare(&format!("EXPLAIN {sql}")).unwrap();
        let params = vec![1i64; explain.parameter_count()];
        let program: Vec<(String, i64)> = explain
            .query_map(rusqlite::params_from_iter(params), |r| Ok((r.get(1)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            !program.iter().any(|(op, _)| op == "OpenEphemeral"),
            "{sql} builds a temporary table"
        );
        let sequence_root: i64 = conn
            .query_row(
                "SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_sequence'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            !program
                .iter()
                .any(|(op, p2)| op == "OpenWrite" && *p2 == sequence_root),
            "{sql} writes sqlite_sequence"
        );
    }

    // The constraints still hold, and new ids go on after the old ones.
    let bad = conn.execute(
        "INSERT INTO deliveries (webhook_id, event, status, created_at) VALUES (1, 'e', 'sent', 1)",
        [],
    );
    assert!(
        bad.unwrap_err().to_string().contains("CHECK"),
        "an unknown status is refused"
    );
    let orphan = conn.execute(
        "INSERT INTO delivery_attempts (delivery_id, attempt, started_at, latency_ms) VALUES (99, 1, 1, 1)",
        [],
    );
    assert!(orphan.unwrap_err().to_string().contains("FOREIGN KEY"));
    conn.execute(
        "INSERT INTO deliveries (webhook_id, event, status, created_at) VALUES (1, 'e', 'pending', 1)",
        [],
    )
    .unwrap();
    assert_eq!(conn.last_insert_rowid(), 4);
}

/// Attempts of delivery 1 in `delivery_attempts`.
async fn history(conn: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM delivery_attempts WHERE delivery_id = 1")
        .fetch_one(conn)
        .await
        .unwrap()
}

/// Runs the real binary's `migrate` against `database_url`.
async fn migrate_with_the_binary(database_url: &str) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_kamiyo-webhooks"))
        .arg("migrate")
        .env("KAMIYO_DATABASE_URL", database_url)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "migrate failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A failed attempt of delivery 1 (webhook 1) numbered `attempt`, as a worker records it.
fn failed_attempt(attempt: i64, started_at_ms: i64) -> kamiyo_webhooks::store::AttemptRecord {
    kamiyo_webhooks::store::AttemptRecord {
        delivery_id: 1,
        webhook_id: 1,
        attempt,
        started_at_ms,
        latency_ms: 3,
        status_code: Some(503),
        error_kind: Some("http_status"),
        error: Some("HTTP 503".into()),
        response_body: Some(format!("busy {attempt}")),
        result: kamiyo_webhooks::store::AttemptResult::RetryAt(started_at_ms + 1_000),
    }
}

/// PostgreSQL's migration 0002 moves a delivery's latest attempt into its row: rows of
/// the first release keep every attempt in `delivery_attempts`, and the attempt log reads
/// both places, in order, across the upgrade.
async fn upgrading_a_postgres_database_keeps_every_attempt_in_the_log() {
    use kamiyo_webhooks::domain::secretbox::SecretCodec;
    use kamiyo_webhooks::store;
    use sqlx::Connection as _;

    let dir = tempfile::tempdir().unwrap();
    let db = crate::backend::TestDatabase::create(dir.path(), "old").await;
    let first = tempfile::tempdir().unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/migrations/postgres/0001_init.sql"
        ),
        first.path().join("0001_init.sql"),
    )
    .unwrap();
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::migrate::Migrator::new(first.path())
        .await
        .unwrap()
        .run(&mut conn)
        .await
        .unwrap();
    sqlx::raw_sql(
        "INSERT INTO users (name, tier, created_at) VALUES ('fund', 'enterprise', 1);
         INSERT INTO webhooks (user_id, name, url, is_active, secret, created_at, updated_at)
           VALUES (1, 'a', 'https://a.example/hook', TRUE, 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', 1, 1);
         INSERT INTO exploits (dedup_key, tx_hash, chain, protocol, amount_usd, timestamp, detected_at)
           VALUES (E'ethereum\\n0xabc', '0xabc', 'Ethereum', 'Curve', 1000000.5, 2, 3);
         INSERT INTO deliveries (webhook_id, exploit_id, event, status, attempts, next_attempt_at,
             created_at, last_attempt_at, status_code, latency_ms, error)
           VALUES (1, 1, 'exploit.detected', 'pending', 2, 90, 3, 7, 500, 2, 'HTTP 500');
         INSERT INTO delivery_attempts (delivery_id, attempt, started_at, status_code, latency_ms,
             error_kind, error) VALUES (1, 1, 4, 500, 1, 'http_status', 'HTTP 500'),
                                       (1, 2, 6, 500, 1, 'http_status', 'HTTP 500');",
    )
    .execute(&mut conn)
    .await
    .unwrap();

    migrate_with_the_binary(&db.url).await;

    let store = store::open(&db.url, 2, SecretCodec::plaintext())
        .await
        .unwrap();
    let started = |log: &[store::AttemptLog]| -> Vec<(i64, i64)> {
        log.iter().map(|a| (a.attempt, a.started_at_ms)).collect()
    };
    let before = store.delivery_detail(1, 1).await.unwrap().attempts;
    assert_eq!(started(&before), [(1, 4), (2, 6)]);

    store
        .record_attempts(&[failed_attempt(3, 20)])
        .await
        .unwrap();
    assert_eq!(
        history(&mut conn).await,
        2,
        "a new attempt is written in the row"
    );
    let log = store.delivery_detail(1, 1).await.unwrap().attempts;
    assert_eq!(started(&log), [(1, 4), (2, 6), (3, 20)]);
    assert_eq!(log[2].response_body.as_deref(), Some("busy 3"));
    assert_eq!(log[2].error_kind.as_deref(), Some("http_status"));

    store
        .record_attempts(&[failed_attempt(4, 30)])
        .await
        .unwrap();
    assert_eq!(
        history(&mut conn).await,
        3,
        "the attempt the row held moves to the history"
    );
    let log = store.delivery_detail(1, 1).await.unwrap().attempts;
    assert_eq!(started(&log), [(1, 4), (2, 6), (3, 20), (4, 30)]);
    assert_eq!(log[2].response_body.as_deref(), Some("busy 3"));
    assert_eq!(log[3].response_body.as_deref(), Some("busy 4"));
    assert_eq!(log[2].status_code, Some(503));
}

#[tokio::test]
async fn upgrading_a_postgres_database_keeps_every_attempt_in_the_log_on_postgres() {
    crate::backend::run(
        crate::backend::Backend::Postgres,
        upgrading_a_postgres_database_keeps_every_attempt_in_the_log(),
    )
    .await
}
