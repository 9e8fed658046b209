-- An exploit's deliveries may be inserted over several of the writer's transactions, so
-- that dispatcher turns need not wait for an exploit of thousands of deliveries to be
-- queued whole. Until the last of them is in, the exploit's row says how far they have
-- got: the id of the last webhook given its delivery (webhooks are taken in id order),
-- or the smallest integer when none has one yet. A crash part way leaves it set, and the
-- writer inserts the rest when it next starts. NULL once all are in, as for every row
-- from before this migration.
ALTER TABLE exploits ADD COLUMN fanout_after INTEGER;
-- Only the unfinished ones: normally none, so this costs an exploit's insert nothing.
CREATE INDEX exploits_fanout_unfinished ON exploits (id) WHERE fanout_after IS NOT NULL;
