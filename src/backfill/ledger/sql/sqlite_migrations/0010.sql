-- 9 -> 10: a fleet learns the pace its starts need, kept with the schedule.
ALTER TABLE backfill_resources ADD COLUMN pace TEXT NOT NULL DEFAULT '';
