-- 2 -> 3: requests spent per partition (for quota planning) and a resume checkpoint.
ALTER TABLE backfill_partitions ADD COLUMN requests INTEGER;
ALTER TABLE backfill_partitions ADD COLUMN checkpoint TEXT;
