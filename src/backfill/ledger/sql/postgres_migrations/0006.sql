-- 5 -> 6: what each worker's resources are doing (rate, pauses, circuit, quota waits),
-- written with its heartbeat, for status and the dashboard.
ALTER TABLE backfill_workers ADD COLUMN IF NOT EXISTS resources text;
