-- 7 -> 8: a fleet learns the pace its starts need, kept with the schedule.
ALTER TABLE backfill_resources ADD COLUMN IF NOT EXISTS pace text NOT NULL DEFAULT '';
