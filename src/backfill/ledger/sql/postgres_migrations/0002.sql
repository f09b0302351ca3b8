-- 1 -> 2: one start schedule per resource, shared by every worker of the fleet.
CREATE TABLE IF NOT EXISTS backfill_resources (
    job          text NOT NULL,
    name         text NOT NULL,
    tat          double precision NOT NULL DEFAULT 0,  -- GCRA: next theoretical start
    paused_until double precision NOT NULL DEFAULT 0,  -- a Retry-After seen by anyone
    PRIMARY KEY (job, name)
);
