-- 3 -> 4: the fingerprint of each stage's last complete plan, so re-planning the same
-- partitions (every worker joining a run) costs one read.
ALTER TABLE backfill_stages ADD COLUMN IF NOT EXISTS planned text;
