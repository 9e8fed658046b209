-- The writer moves a delivery's previous attempt to `delivery_attempts` itself (see
-- `record` in src/store/sqlite_writer.rs) instead of migration 0004's trigger. Only one
-- thread writes attempts to a SQLite file, so the invariant has one keeper either way;
-- but a BEFORE UPDATE trigger on `deliveries`, even one that does not fire, makes every
-- UPDATE of the table read the whole old row into registers and run the trigger's
-- WHEN clause, and measured a fifth of the writer's time per recorded outcome.
-- Dropping a trigger rewrites nothing.
DROP TRIGGER IF EXISTS deliveries_keep_earlier_attempts;
