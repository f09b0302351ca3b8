-- 3 -> 4: partitions each worker finished, for `backfill status`.
ALTER TABLE backfill_workers ADD COLUMN finished INTEGER NOT NULL DEFAULT 0;
