-- 7 -> 8: resource schedules and quota rings in the state file, so quotas hold across
-- restarts and a resource declared shared=True holds across jobs and processes; and what
-- each worker's resources are doing, for status and the dashboard.
ALTER TABLE backfill_workers ADD COLUMN resources TEXT;
-- One start schedule per resource, shared by the runs (and the jobs, for a resource
-- declared shared=True, under job '*') that use it: epoch seconds.
CREATE TABLE IF NOT EXISTS backfill_resources (
    job          TEXT NOT NULL,
    name         TEXT NOT NULL,
    tat          REAL NOT NULL DEFAULT 0,  -- GCRA: next theoretical start
    paused_until REAL NOT NULL DEFAULT 0,  -- a Retry-After or a used-up quota
    PRIMARY KEY (job, name)
);

-- Quotas of a resource (e.g. 10000/day), exact over a sliding window across restarts,
-- from a ring of the last `count` starts (slot = start number mod count).
CREATE TABLE IF NOT EXISTS backfill_quotas (
    job   TEXT NOT NULL,
    name  TEXT NOT NULL,
    quota TEXT NOT NULL,             -- "COUNT/PERIOD_SECONDS"
    taken INTEGER NOT NULL DEFAULT 0, -- starts booked so far
    PRIMARY KEY (job, name, quota)
);

CREATE TABLE IF NOT EXISTS backfill_quota_starts (
    job        TEXT NOT NULL,
    name       TEXT NOT NULL,
    quota      TEXT NOT NULL,
    slot       INTEGER NOT NULL,
    started_at REAL NOT NULL,
    PRIMARY KEY (job, name, quota, slot)
);
