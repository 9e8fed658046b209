-- A delivery's latest attempt lives in its own row; `delivery_attempts` keeps the earlier
-- ones (as SQLite's migration 0004). Most deliveries succeed at their first attempt, and
-- writing that attempt as a row of its own cost a heap insert and an index insert each.
--   * `attempt_started_at` is set when the row holds an attempt, with the attempt's own
--     error kind, error and answer. Its number is `attempts`; its status code and latency
--     are the row's. (`error` is the delivery's error, which stopping a queue rewrites.)
--   * Rows from before this migration have NULL here and all their attempts in
--     `delivery_attempts`, as before.
-- Columns without a default: adding them rewrites nothing, however large the table.
ALTER TABLE deliveries ADD COLUMN attempt_started_at BIGINT;
ALTER TABLE deliveries ADD COLUMN attempt_error_kind TEXT;
ALTER TABLE deliveries ADD COLUMN attempt_error TEXT;
ALTER TABLE deliveries ADD COLUMN attempt_response_body TEXT;

-- Recording an attempt over one the row already holds moves that one to the history
-- first, whoever writes it: the database keeps the invariant, not each writer.
CREATE FUNCTION deliveries_keep_earlier_attempt() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO delivery_attempts (delivery_id, attempt, started_at, status_code, latency_ms,
        error_kind, error, response_body)
    VALUES (OLD.id, OLD.attempts, OLD.attempt_started_at, OLD.status_code, OLD.latency_ms,
        OLD.attempt_error_kind, OLD.attempt_error, OLD.attempt_response_body);
    RETURN NEW;
END
$$;

CREATE TRIGGER deliveries_keep_earlier_attempts
BEFORE UPDATE OF attempt_started_at ON deliveries
FOR EACH ROW WHEN (OLD.attempt_started_at IS NOT NULL)
EXECUTE FUNCTION deliveries_keep_earlier_attempt();
