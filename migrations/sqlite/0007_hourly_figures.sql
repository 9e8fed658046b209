-- Health and the hourly stats read per-hour figures of each webhook instead of its
-- deliveries. Two indexes existed for them: the finished deliveries by last attempt
-- (`deliveries_finished`) and the succeeded ones (`deliveries_succeeded_by_webhook`, for
-- the all-time count). Each outcome added an entry at the end of its webhook's run in
-- both, so a commit of outcomes for a few webhooks dirtied a page of each per webhook:
-- half the pages the delivery writer wrote to the WAL. A commit's figures go into the
-- current hour's rows, which sit side by side for every webhook.
--
-- One row per hour (milliseconds since the epoch / 3,600,000) and webhook:
--   * attempts made in that hour (by start), successful or not, and their latency;
--   * finished deliveries whose last attempt ended in that hour, by status, and their
--     latency: what `deliveries_finished` counted. A delivery retried by hand leaves
--     them (its figures are taken back) and comes back when it finishes again.
-- Every writer of `deliveries` keeps them: the delivery writer (outcomes, 410 Gone),
-- stopping a webhook's queue and a manual retry.
CREATE TABLE delivery_hours (
    hour                INTEGER NOT NULL,
    webhook_id          INTEGER NOT NULL REFERENCES webhooks (id),
    attempts_ok         INTEGER NOT NULL DEFAULT 0,
    attempts_failed     INTEGER NOT NULL DEFAULT 0,
    attempts_latency_ms INTEGER NOT NULL DEFAULT 0,
    succeeded           INTEGER NOT NULL DEFAULT 0,
    failed              INTEGER NOT NULL DEFAULT 0,
    finished_latency_ms INTEGER NOT NULL DEFAULT 0,
    -- Finished deliveries with a latency (all of them once attempted).
    finished_latencies  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (hour, webhook_id)
) WITHOUT ROWID;
-- Written when a webhook's row for a new hour is made, not at each commit.
CREATE INDEX delivery_hours_by_webhook ON delivery_hours (webhook_id, hour);

INSERT INTO delivery_hours (hour, webhook_id, attempts_ok, attempts_failed, attempts_latency_ms)
SELECT started_at / 3600000, webhook_id, SUM(error_kind IS NULL), SUM(error_kind IS NOT NULL),
       SUM(latency_ms)
FROM (SELECT a.started_at, d.webhook_id, a.error_kind, a.latency_ms
        FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id
      UNION ALL
      SELECT attempt_started_at, webhook_id, attempt_error_kind, COALESCE(latency_ms, 0)
        FROM deliveries WHERE attempt_started_at IS NOT NULL)
GROUP BY 1, 2;

INSERT INTO delivery_hours (hour, webhook_id, succeeded, failed, finished_latency_ms,
                            finished_latencies)
SELECT last_attempt_at / 3600000, webhook_id, SUM(status = 'succeeded'), SUM(status = 'failed'),
       COALESCE(SUM(latency_ms), 0), COUNT(latency_ms)
FROM deliveries WHERE status <> 'pending' AND last_attempt_at IS NOT NULL
GROUP BY 1, 2
ON CONFLICT (hour, webhook_id) DO UPDATE SET
    succeeded = succeeded + excluded.succeeded,
    failed = failed + excluded.failed,
    finished_latency_ms = finished_latency_ms + excluded.finished_latency_ms,
    finished_latencies = finished_latencies + excluded.finished_latencies;

-- The all-time succeeded count is every delivery less the pending and failed ones, all
-- three from indexes alone; a listing of the succeeded ones reads the webhook's index.
DROP INDEX deliveries_succeeded_by_webhook;
DROP INDEX deliveries_finished;
