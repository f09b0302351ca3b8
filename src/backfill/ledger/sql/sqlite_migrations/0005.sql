-- 4 -> 5: partition check results, and the window index stage dependencies use.
ALTER TABLE backfill_partitions ADD COLUMN checks TEXT;
CREATE INDEX IF NOT EXISTS backfill_partitions_window
    ON backfill_partitions (stage_id, window_start);
