-- 2 -> 3: partition check results, and the window index stage dependencies use.
ALTER TABLE backfill_partitions ADD COLUMN IF NOT EXISTS checks text;
CREATE INDEX IF NOT EXISTS backfill_partitions_window
    ON backfill_partitions (stage_id, window_start);
