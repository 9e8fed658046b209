-- Replaces the (webhook_id, status, id) index with two partial ones. Every attempt
-- outcome moved a delivery's entry in it from the webhook's pending run to its succeeded
-- run, and that index held every delivery ever made: the move dirtied pages all over
-- it, about half the pages a commit of outcomes wrote to the WAL. The pending index only
-- holds the queue, so it stays small and cached; failed deliveries are few.
--   * claims and stopping a webhook's queue read the pending one;
--   * listings filtered on pending or failed read their own, and on succeeded (most
--     deliveries) walk (webhook_id, id), which the row's status filters.
CREATE INDEX deliveries_pending_by_webhook ON deliveries (webhook_id, id) WHERE status = 'pending';
CREATE INDEX deliveries_failed_by_webhook ON deliveries (webhook_id, id) WHERE status = 'failed';
DROP INDEX deliveries_by_webhook_status;
