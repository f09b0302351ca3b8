-- 3 -> 4: the fingerprint of each stage's last complete plan, so re-planning the same
-- partitions (every worker joining a run) costs one read; and resource quotas (e.g.
-- 10000/day) kept for the whole fleet.
ALTER TABLE backfill_stages ADD COLUMN IF NOT EXISTS planned text;

CREATE TABLE IF NOT EXISTS backfill_quotas (
    job   text NOT NULL,
    name  text NOT NULL,
    quota text NOT NULL,
    taken bigint NOT NULL DEFAULT 0,
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
