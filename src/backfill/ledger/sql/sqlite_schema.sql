-- backfill ledger, SQLite. Schema version 10 (see backfill_meta.schema_version).
-- A file of an older version is brought up to date by sqlite_migrations/NNNN.sql.

CREATE TABLE IF NOT EXISTS backfill_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- One row per (job, stage): partition rows refer to it by a small integer,
-- which keeps the claim index narrow.
CREATE TABLE IF NOT EXISTS backfill_stages (
    id      INTEGER PRIMARY KEY,
    job     TEXT NOT NULL,
    stage   TEXT NOT NULL,
    planned TEXT,          -- fingerprint of the last plan that went through to the end
    UNIQUE (job, stage)
);

CREATE TABLE IF NOT EXISTS backfill_partitions (
    id               INTEGER PRIMARY KEY,
    stage_id         INTEGER NOT NULL REFERENCES backfill_stages (id),
    key              TEXT NOT NULL,
    window_start     TEXT NOT NULL,   -- ISO date, inclusive
    window_end       TEXT NOT NULL,   -- ISO date, inclusive
    dims             TEXT,            -- JSON object of static dimensions, or NULL
    status           TEXT NOT NULL DEFAULT 'pending',
    attempts         INTEGER NOT NULL DEFAULT 0,  -- executions of the stage function
    claims           INTEGER NOT NULL DEFAULT 0,  -- leases granted
    lost_leases      INTEGER NOT NULL DEFAULT 0,  -- leases lost in a row (worker died)
    begun            INTEGER NOT NULL DEFAULT 0,  -- 1 once its holder started running it
    lease_owner      TEXT,
    lease_expires_at REAL,
    records          INTEGER,
    duration         REAL,
    error_category   TEXT,
    error_message    TEXT,
    run_id           TEXT,
    started_at       REAL,
    finished_at      REAL,
    requests         INTEGER,         -- requests spent, all attempts together
    checkpoint       TEXT,            -- where a stage asked to resume (e.g. a page cursor)
    checks           TEXT,            -- JSON: the partition's check results
    params           TEXT,            -- JSON: what its discoverer found (discovered ones)
    UNIQUE (stage_id, key)
);

-- Claims walk a stage's pending rows in window order; the implicit rowid breaks ties.
-- Partial: a claim removes the row from it and completing touches it not at all
-- (schema 1 indexed every status, so each claim and each complete moved an entry).
DROP INDEX IF EXISTS backfill_partitions_claim;
CREATE INDEX IF NOT EXISTS backfill_partitions_pending
    ON backfill_partitions (stage_id, window_start) WHERE status = 'pending';

-- Dependencies look up a stage's rows by window (any status); a row's window never
-- changes, so claims and completions do not touch this index.
CREATE INDEX IF NOT EXISTS backfill_partitions_window
    ON backfill_partitions (stage_id, window_start);

CREATE INDEX IF NOT EXISTS backfill_partitions_owner
    ON backfill_partitions (lease_owner) WHERE lease_owner IS NOT NULL;

CREATE TABLE IF NOT EXISTS backfill_runs (
    id          TEXT PRIMARY KEY,
    job         TEXT NOT NULL,
    command     TEXT NOT NULL,
    host        TEXT NOT NULL,
    pid         INTEGER NOT NULL,
    options     TEXT NOT NULL,   -- JSON
    started_at  REAL NOT NULL,
    finished_at REAL,
    status      TEXT NOT NULL,
    exit_code   INTEGER,
    counts      TEXT NOT NULL DEFAULT '{}'  -- JSON
);

CREATE INDEX IF NOT EXISTS backfill_runs_job ON backfill_runs (job, started_at);

CREATE TABLE IF NOT EXISTS backfill_workers (
    id           TEXT PRIMARY KEY,
    job          TEXT NOT NULL,
    host         TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    started_at   REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    stopped_at   REAL,
    finished     INTEGER NOT NULL DEFAULT 0,  -- partitions it finished
    resources    TEXT  -- JSON: what its resources were doing at its last heartbeat
);

-- One start schedule per resource, shared by the runs (and the jobs, for a resource
-- declared shared=True, under job '*') that use it: epoch seconds.
CREATE TABLE IF NOT EXISTS backfill_resources (
    job          TEXT NOT NULL,
    name         TEXT NOT NULL,
    tat          REAL NOT NULL DEFAULT 0,  -- GCRA: next theoretical start
    paused_until REAL NOT NULL DEFAULT 0,  -- a Retry-After or a used-up quota
    -- The pace a fleet learned to book at (JSON, see FleetPace; '': none yet).
    pace         TEXT NOT NULL DEFAULT '',
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
