//! The page cache layer under a real SQLite file: b-tree balancing swaps pages through
//! the lock page's number, and every row written, moved, deleted or rolled back reads
//! back as a model of the same operations says, with SQLite's integrity check clean.
//!
//! Its own test binary: the layer must be installed before anything in the process
//! uses SQLite, as `main` does, and the other suites' threads would race it.

use std::collections::BTreeMap;

use kamiyo_webhooks::store::pagecache;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rusqlite::{params, Connection};

/// A row's `due` and `body`.
type Row = (i64, Vec<u8>);

#[test]
fn rows_survive_balancing_through_the_lock_page_with_the_layer_installed() {
    // SAFETY: this binary's one test, and SQLite is not used before this line.
    assert!(
        unsafe { pagecache::install() },
        "the layer goes in before SQLite starts"
    );
    // SAFETY: as above; this thread is the only one that ever uses SQLite here.
    assert!(
        !unsafe { pagecache::install() },
        "a second install is refused: the layer is in already"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache.db");
    let mut conn = Connection::open(&path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    // SAFETY: SQLite has started, so its configuration calls refuse and touch nothing.
    assert!(
        !unsafe { pagecache::install() },
        "an install after SQLite started is refused"
    );
    // The writer connection's cache size: the pages stay cached across commits.
    conn.pragma_update(None, "cache_size", -16384).unwrap();
    conn.execute_batch(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, due INTEGER NOT NULL, body BLOB NOT NULL);
         CREATE INDEX t_due ON t (due, id);",
    )
    .unwrap();

    let mut rng = StdRng::seed_from_u64(7);
    let mut model: BTreeMap<i64, Row> = BTreeMap::new();
    let mut next_id = 1i64;
    for round in 0..300 {
        let tx = conn.transaction().unwrap();
        // What each change replaced, to undo the model when the transaction rolls back.
        let mut undo: Vec<(i64, Option<Row>)> = Vec::new();
        for _ in 0..200 {
            let choice = rng.gen_range(0..10);
            if choice < 5 {
                // Inserts at random index positions split pages out of order.
                let due = rng.gen_range(0..1_000_000i64);
                let body = vec![rng.gen::<u8>(); rng.gen_range(20..400)];
                tx.execute(
                    "INSERT INTO t (id, due, body) VALUES (?1, ?2, ?3)",
                    params![next_id, due, body],
                )
                .unwrap();
                undo.push((next_id, model.insert(next_id, (due, body))));
                next_id += 1;
                continue;
            }
            let id = rng.gen_range(1..next_id);
            let Some(row) = model.get(&id).cloned() else {
                continue;
            };
            if choice < 8 {
                // Moving a row in the index, as recording an attempt does.
                let due = rng.gen_range(0..1_000_000i64);
                tx.execute("UPDATE t SET due = ?2 WHERE id = ?1", params![id, due])
                    .unwrap();
                undo.push((id, model.insert(id, (due, row.1))));
            } else {
                // Deletes merge pages and fill the free list, whose pages come back in
                // any order.
                tx.execute("DELETE FROM t WHERE id = ?1", params![id])
                    .unwrap();
                undo.push((id, model.remove(&id)));
            }
        }
        // Every fifth transaction rolls back: the cache must drop what it wrote.
        if round % 5 == 4 {
            tx.rollback().unwrap();
            for (id, old) in undo.into_iter().rev() {
                match old {
                    Some(row) => model.insert(id, row),
                    None => model.remove(&id),
                };
            }
        } else {
            tx.commit().unwrap();
        }
    }

    assert!(
        pagecache::lock_page_swaps() > 0,
        "the workload must make SQLite swap pages through the lock page"
    );
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let stored = read_all(&conn);
    assert_eq!(stored.len(), model.len());
    assert!(stored == model, "the rows read back differ from the model");

    // A fresh connection reads the file, not this connection's cache.
    drop(conn);
    let reopened = Connection::open(&path).unwrap();
    assert!(read_all(&reopened) == model);
    let by_due: Vec<i64> = reopened
        .prepare("SELECT id FROM t INDEXED BY t_due ORDER BY due, id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut expected: Vec<(i64, i64)> = model.iter().map(|(id, (due, _))| (*due, *id)).collect();
    expected.sort();
    assert_eq!(
        by_due,
        expected.into_iter().map(|(_, id)| id).collect::<Vec<_>>()
    );
}

fn read_all(conn: &Connection) -> BTreeMap<i64, Row> {
    conn.prepare("SELECT id, due, body FROM t ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}
