-- 6 -> 7: whether a partition's holder had started running it, so a worker's death
-- counts against the partitions it was running, not the rest of its claimed batch.
ALTER TABLE backfill_partitions ADD COLUMN begun INTEGER NOT NULL DEFAULT 0;
