-- 1 -> 2: claims use a partial index over pending rows only.
DROP INDEX IF EXISTS backfill_partitions_claim;
CREATE INDEX IF NOT EXISTS backfill_partitions_pending
    ON backfill_partitions (stage_id, window_start) WHERE status = 'pending';
