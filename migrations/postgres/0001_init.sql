-- kamiyo-webhooks schema (PostgreSQL). Times are milliseconds since the Unix epoch, UTC.

CREATE TABLE users (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        TEXT    NOT NULL,
    tier        TEXT    NOT NULL CHECK (tier IN ('free', 'pro', 'team', 'enterprise')),
    created_at  BIGINT  NOT NULL
);

CREATE TABLE api_keys (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     BIGINT  NOT NULL REFERENCES users (id),
    -- SHA-256 of the key; the key itself is never stored.
    key_hash    TEXT    NOT NULL UNIQUE,
    created_at  BIGINT  NOT NULL,
    revoked_at  BIGINT
);

CREATE TABLE webhooks (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id         BIGINT  NOT NULL REFERENCES users (id),
    name            TEXT    NOT NULL,
    url             TEXT    NOT NULL,
    min_amount_usd  DOUBLE PRECISION,
    -- JSON arrays of names, NULL when the filter is not set.
    chains          TEXT,
    protocols       TEXT,
    categories      TEXT,
    is_active       BOOLEAN NOT NULL,
    secret          TEXT    NOT NULL,
    disabled_reason TEXT,
    -- Maintained by the workers after each finished attempt, for health at a glance.
    consecutive_failures BIGINT NOT NULL DEFAULT 0,
    last_success_at BIGINT,
    last_failure_at BIGINT,
    last_error      TEXT,
    created_at      BIGINT  NOT NULL,
    updated_at      BIGINT  NOT NULL,
    -- Soft delete keeps the delivery history consistent; every query filters it out.
    deleted_at      BIGINT
);
CREATE INDEX webhooks_by_user ON webhooks (user_id) WHERE deleted_at IS NULL;
CREATE INDEX webhooks_active ON webhooks (id) WHERE deleted_at IS NULL AND is_active;

CREATE TABLE exploits (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- lower(chain) || E'\n' || lower(tx_hash), computed with Unicode case folding.
    dedup_key   TEXT    NOT NULL UNIQUE,
    tx_hash     TEXT    NOT NULL,
    chain       TEXT    NOT NULL,
    protocol    TEXT    NOT NULL,
    amount_usd  DOUBLE PRECISION NOT NULL,
    timestamp   BIGINT  NOT NULL,
    source      TEXT,
    source_url  TEXT,
    category    TEXT,
    description TEXT,
    detected_at BIGINT  NOT NULL
);

CREATE TABLE deliveries (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    webhook_id      BIGINT  NOT NULL REFERENCES webhooks (id),
    exploit_id      BIGINT  REFERENCES exploits (id),
    event           TEXT    NOT NULL,
    -- Only for bodies not derived from an exploit row (test events).
    payload         TEXT,
    status          TEXT    NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts        BIGINT  NOT NULL DEFAULT 0,
    -- Attempts made before the latest manual retry: the retry schedule restarts there.
    schedule_base   BIGINT  NOT NULL DEFAULT 0,
    -- When the next attempt is due; NULL once the delivery is finished.
    next_attempt_at BIGINT,
    -- A worker's claim: nobody else attempts the delivery before this time.
    locked_until    BIGINT,
    created_at      BIGINT  NOT NULL,
    sent_at         BIGINT,
    delivered_at    BIGINT,
    last_attempt_at BIGINT,
    status_code     BIGINT,
    latency_ms      BIGINT,
    error           TEXT
);
CREATE INDEX deliveries_by_webhook ON deliveries (webhook_id, id);
CREATE INDEX deliveries_by_webhook_status ON deliveries (webhook_id, status, id);
CREATE INDEX deliveries_finished ON deliveries (webhook_id, last_attempt_at) WHERE status <> 'pending';
CREATE INDEX deliveries_due ON deliveries (next_attempt_at, webhook_id, locked_until) WHERE status = 'pending';

CREATE TABLE delivery_attempts (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id   BIGINT  NOT NULL REFERENCES deliveries (id),
    attempt       BIGINT  NOT NULL,
    started_at    BIGINT  NOT NULL,
    status_code   BIGINT,
    latency_ms    BIGINT  NOT NULL,
    -- timeout, connect, tls, http_status, redirect, gone, blocked_address, request
    error_kind    TEXT,
    error         TEXT,
    -- The first 1 KiB of the endpoint's answer.
    response_body TEXT
);
CREATE INDEX delivery_attempts_by_delivery ON delivery_attempts (delivery_id, attempt);
