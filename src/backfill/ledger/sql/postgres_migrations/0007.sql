-- 6 -> 7: partitions the data discovers carry what their discoverer found about them.
ALTER TABLE backfill_partitions ADD COLUMN IF NOT EXISTS params jsonb;
