-- Rebuilds the two tables every delivery writes to, for two costs SQLite paid per row:
--   * `CHECK (status IN (...))` built and dropped a temporary table on every insert and
--     on every status change; comparisons joined by OR check the same without one.
--   * AUTOINCREMENT rewrote `sqlite_sequence` on every insert. Rows of these tables are
--     never deleted, so a plain INTEGER PRIMARY KEY (the largest id plus one) hands out
--     the same increasing ids; a future purge must keep the newest row of each table.
-- Columns, ids, foreign keys and indexes are otherwise as before.

CREATE TABLE deliveries_new (
    id              INTEGER PRIMARY KEY,
    webhook_id      INTEGER NOT NULL REFERENCES webhooks (id),
    exploit_id      INTEGER REFERENCES exploits (id),
    event           TEXT    NOT NULL,
    -- Only for bodies not derived from an exploit row (test events).
    payload         TEXT,
    status          TEXT    NOT NULL
                    CHECK (status = 'pending' OR status = 'succeeded' OR status = 'failed'),
    attempts        INTEGER NOT NULL DEFAULT 0,
    -- Attempts made before the latest manual retry: the retry schedule restarts there.
    schedule_base   INTEGER NOT NULL DEFAULT 0,
    -- When the next attempt is due; NULL once the delivery is finished.
    next_attempt_at INTEGER,
    -- A worker's claim: nobody else attempts the delivery before this time.
    locked_until    INTEGER,
    created_at      INTEGER NOT NULL,
    sent_at         INTEGER,
    delivered_at    INTEGER,
    last_attempt_at INTEGER,
    status_code     INTEGER,
    latency_ms      INTEGER,
    error           TEXT
);
INSERT INTO deliveries_new (id, webhook_id, exploit_id, event, payload, status, attempts,
    schedule_base, next_attempt_at, locked_until, created_at, sent_at, delivered_at,
    last_attempt_at, status_code, latency_ms, error)
SELECT id, webhook_id, exploit_id, event, payload, status, attempts,
    schedule_base, next_attempt_at, locked_until, created_at, sent_at, delivered_at,
    last_attempt_at, status_code, latency_ms, error
FROM deliveries;

CREATE TABLE delivery_attempts_new (
    id            INTEGER PRIMARY KEY,
    delivery_id   INTEGER NOT NULL REFERENCES deliveries_new (id),
    attempt       INTEGER NOT NULL,
    started_at    INTEGER NOT NULL,
    status_code   INTEGER,
    latency_ms    INTEGER NOT NULL,
    -- timeout, connect, tls, http_status, redirect, gone, blocked_address, request
    error_kind    TEXT,
    error         TEXT,
    -- The first 1 KiB of the endpoint's answer.
    response_body TEXT
);
INSERT INTO delivery_attempts_new (id, delivery_id, attempt, started_at, status_code,
    latency_ms, error_kind, error, response_body)
SELECT id, delivery_id, attempt, started_at, status_code,
    latency_ms, error_kind, error, response_body
FROM delivery_attempts;

-- The child first, so dropping the parent finds nothing referring to it.
DROP TABLE delivery_attempts;
DROP TABLE deliveries;
-- Renaming also rewrites delivery_attempts_new's reference to the new name.
ALTER TABLE deliveries_new RENAME TO deliveries;
ALTER TABLE delivery_attempts_new RENAME TO delivery_attempts;

CREATE INDEX deliveries_by_webhook ON deliveries (webhook_id, id);
CREATE INDEX deliveries_by_webhook_status ON deliveries (webhook_id, status, id);
CREATE INDEX deliveries_finished ON deliveries (webhook_id, last_attempt_at) WHERE status <> 'pending';
CREATE INDEX deliveries_due ON deliveries (next_attempt_at, webhook_id, locked_until) WHERE status = 'pending';
CREATE INDEX delivery_attempts_by_delivery ON delivery_attempts (delivery_id, attempt);
