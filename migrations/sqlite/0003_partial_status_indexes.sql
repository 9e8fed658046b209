-- Replaces the (webhook_id, status, id) index with one partial index per status. Every
-- attempt outcome moved a delivery's entry in it from the webhook's pending run to its
-- succeeded run inside one index of every delivery ever made, and those moves dirtied
-- pages all over it: they were half the pages a commit of outcomes wrote to the WAL.
-- The pending index holds only the queue, so it stays small and cached, and its entries
-- are removed from there; the succeeded one is appended to at each webhook's end.
--   * claims and stopping a webhook's queue read the pending one;
--   * listings filtered on a status read that status's index alone, however deep the page.
CREATE INDEX deliveries_pending_by_webhook ON deliveries (webhook_id, id) WHERE status = 'pending';
CREATE INDEX deliveries_succeeded_by_webhook ON deliveries (webhook_id, id) WHERE status = 'succeeded';
CREATE INDEX deliveries_failed_by_webhook ON deliveries (webhook_id, id) WHERE status = 'failed';
DROP INDEX deliveries_by_webhook_status;
