-- backfill ledger, PostgreSQL. Schema version 8 (see backfill_meta.schema_version).
-- A database of an older version is brought up to date by postgres_migrations/NNNN.sql.
-- Times are epoch seconds (double precision), as the engine passes them.

CREATE TABLE IF NOT EXISTS backfill_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

-- One row per (job, stage): partition rows refer to it by a small integer,
-- which keeps the claim indexes narrow.
CREATE TABLE IF NOT EXISTS backfill_stages (
    id      serial PRIMARY KEY,
    job     text NOT NULL,
    stage   text NOT NULL,
    planned text,          -- fingerprint of the last plan that went through to the end
    UNIQUE (job, stage)
);

CREATE TABLE IF NOT EXISTS backfill_partitions (
    id               bigserial PRIMARY KEY,
    stage_id         integer NOT NULL REFERENCES backfill_stages (id),
    key              text NOT NULL,
    window_start     date NOT NULL,   -- inclusive
    window_end       date NOT NULL,   -- inclusive
    dims             jsonb,           -- static dimensions, or NULL
    status           text NOT NULL DEFAULT 'pending',
    attempts         integer NOT NULL DEFAULT 0,  -- executions of the stage function
    claims           integer NOT NULL DEFAULT 0,  -- leases granted
    lost_leases      integer NOT NULL DEFAULT 0,  -- leases that expired in a row
    begun            integer NOT NULL DEFAULT 0,  -- 1 once its holder started running it
    lease_owner      text,
    lease_expires_at double precision,
    records          bigint,
    duration         double precision,
    error_category   text,
    error_message    text,
    run_id           text,
    started_at       double precision,
    finished_at      double precision,
    requests         integer,         -- requests spent, all attempts together
    checkpoint       text,            -- where a stage asked to resume (e.g. a page cursor)
    checks           text,            -- JSON: the partition's check results
    params           jsonb,           -- what its discoverer found (discovered ones)
    UNIQUE (stage_id, key)
);

-- Claims take two index-backed branches, never one predicate with an OR (which makes
-- the planner walk every finished row): pending rows in window order, and running rows
-- by lease expiry. Both indexes are partial, so finished rows cost nothing.
CREATE INDEX IF NOT EXISTS backfill_partitions_pending
    ON backfill_partitions (stage_id, window_start, id) WHERE status = 'pending';

CREATE INDEX IF NOT EXISTS backfill_partitions_leased
    ON backfill_partitions (stage_id, lease_expires_at) WHERE status = 'running';

-- Dependencies look up a stage's rows by window (any status); a row's window never
-- changes, so claims and completions do not touch this index.
CREATE INDEX IF NOT EXISTS backfill_partitions_window
    ON backfill_partitions (stage_id, window_start);

CREATE INDEX IF NOT EXISTS backfill_partitions_owner
    ON backfill_partitions (lease_owner) WHERE lease_owner IS NOT NULL;

CREATE TABLE IF NOT EXISTS backfill_runs (
    id          text PRIMARY KEY,
    job         text NOT NULL,
    command     text NOT NULL,
    host        text NOT NULL,
    pid         integer NOT NULL,
    options     jsonb NOT NULL,
    started_at  double precision NOT NULL,
    finished_at double precision,
    status      text NOT NULL,
    exit_code   integer,
    counts      jsonb NOT NULL DEFAULT '{}'
);

CREATE INDEX IF NOT EXISTS backfill_runs_job ON backfill_runs (job, started_at);

CREATE TABLE IF NOT EXISTS backfill_workers (
    id           text PRIMARY KEY,
    job          text NOT NULL,
    host         text NOT NULL,
    pid          integer NOT NULL,
    started_at   double precision NOT NULL,
    heartbeat_at double precision NOT NULL,
    stopped_at   double precision,
    finished     integer NOT NULL DEFAULT 0,  -- partitions it finished
    resources    text  -- JSON: what its resources were doing at its last heartbeat
);

CREATE INDEX IF NOT EXISTS backfill_workers_job ON backfill_workers (job, started_at);

-- One start schedule per resource, shared by every worker of the fleet (epoch seconds
-- on the database's clock, so the machines' clocks need not agree).
CREATE TABLE IF NOT EXISTS backfill_resources (
    job          text NOT NULL,
    name         text NOT NULL,
    tat          double precision NOT NULL DEFAULT 0,  -- GCRA: next theoretical start
    paused_until double precision NOT NULL DEFAULT 0,  -- a Retry-After seen by anyone
    -- The pace a fleet learned to book at (JSON, see FleetPace; '': none yet).
    pace         text NOT NULL DEFAULT '',
    PRIMARY KEY (job, name)
);

-- Quotas of a resource (e.g. 10000/day) for the whole fleet: exact over a sliding
-- window, from a ring of the last `count` starts (slot = start number mod count).
CREATE TABLE IF NOT EXISTS backfill_quotas (
    job   text NOT NULL,
    name  text NOT NULL,
    quota text NOT NULL,            -- "COUNT/PERIOD_SECONDS"
    taken bigint NOT NULL DEFAULT 0, -- starts booked so far
    PRIMARY KEY (job, name, quota)
);

CREATE TABLE IF NOT EXISTS backfill_quota_starts (
    job        text NOT NULL,
    name       text NOT NULL,
    quota      text NOT NULL,
    slot       integer NOT NULL,
    started_at double precision NOT NULL,
    PRIMARY KEY (job, name, quota, slot)
);
