-- 8 -> 9: partitions the data discovers carry what their discoverer found about them.
ALTER TABLE backfill_partitions ADD COLUMN params TEXT;
