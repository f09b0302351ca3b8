-- 5 -> 6: the fingerprint of each stage's last complete plan, so re-planning the same
-- partitions (every worker joining a run) costs one read; and leases lost in a row, so
-- a partition that kills every worker taking it ends failed instead of looping.
ALTER TABLE backfill_stages ADD COLUMN planned TEXT;
ALTER TABLE backfill_partitions ADD COLUMN lost_leases INTEGER NOT NULL DEFAULT 0;
