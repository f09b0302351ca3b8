-- Named queries of the PostgreSQL ledger. Each starts with "-- name: NAME".
-- {where} marks where a selection filter is spliced in, {direction} ASC or DESC.

-- name: stage_id
SELECT id FROM backfill_stages WHERE job = %(job)s AND stage = %(stage)s;

-- name: insert_stage
INSERT INTO backfill_stages (job, stage) VALUES (%(job)s, %(stage)s)
ON CONFLICT (job, stage) DO NOTHING;

-- name: plan
-- One array per column per chunk: one statement and one round trip for 20,000 rows.
INSERT INTO backfill_partitions (stage_id, key, window_start, window_end, dims, params)
SELECT %(stage_id)s, k, s, e, d::jsonb, x::jsonb
FROM unnest(%(keys)s::text[], %(starts)s::date[], %(ends)s::date[], %(dims)s::text[],
            %(params)s::text[])
     AS t (k, s, e, d, x)
ON CONFLICT (stage_id, key) DO NOTHING;

-- name: planned
-- The fingerprint of the last plan of this stage that went through to the end.
SELECT planned FROM backfill_stages WHERE id = %(stage_id)s;

-- name: set_planned
UPDATE backfill_stages SET planned = %(planned)s WHERE id = %(stage_id)s;

-- name: forget_plan
UPDATE backfill_stages SET planned = NULL WHERE id = %(stage_id)s;

-- name: claim_pending
-- SKIP LOCKED: concurrent claimants each take different rows and never wait on another.
UPDATE backfill_partitions AS p
SET status = 'running', lease_owner = %(owner)s, lease_expires_at = %(expires)s,
    claims = p.claims + 1, run_id = %(run_id)s, started_at = %(now)s, begun = 0
FROM (
    -- {ready}: the partition's upstream inputs are finished (stages with needs=).
    -- {lost}: how many leases in a row the partition lost (its worker died): 0 for the
    -- usual claim, more for suspects (see Ledger.claim).
    SELECT p.id FROM backfill_partitions AS p
    WHERE p.stage_id = %(stage_id)s AND p.status = 'pending' AND p.lost_leases {lost}
      {where} {ready}
    ORDER BY p.window_start {direction}, p.id {direction}
    LIMIT %(limit)s
    FOR UPDATE OF p SKIP LOCKED
) AS picked
WHERE p.id = picked.id
RETURNING p.id, p.key, p.window_start, p.window_end, p.dims::text, p.attempts, p.claims,
          p.checkpoint, p.params::text;

-- name: claim_pending_front
-- claim_pending among the first %(scan)s pending partitions only (Ledger.claim's scan):
-- the readiness check probes that many rows at most. The outer conditions are checked
-- again on the locked row, which a concurrent claim may have taken meanwhile. No ORDER BY
-- out here: the join keeps the front's order, and LIMIT stops at the first ready rows
-- instead of checking the whole front before a sort.
UPDATE backfill_partitions AS p
SET status = 'running', lease_owner = %(owner)s, lease_expires_at = %(expires)s,
    claims = p.claims + 1, run_id = %(run_id)s, started_at = %(now)s, begun = 0
FROM (
    SELECT p.id FROM (
        SELECT id FROM backfill_partitions
        WHERE stage_id = %(stage_id)s AND status = 'pending' AND lost_leases {lost} {where}
        ORDER BY window_start {direction}, id {direction}
        LIMIT %(scan)s
    ) AS front
    JOIN backfill_partitions AS p ON p.id = front.id
    WHERE p.status = 'pending' AND p.lost_leases {lost} {ready}
    LIMIT %(limit)s
    FOR UPDATE OF p SKIP LOCKED
) AS picked
WHERE p.id = picked.id
RETURNING p.id, p.key, p.window_start, p.window_end, p.dims::text, p.attempts, p.claims,
          p.checkpoint, p.params::text;

-- name: fail_lost
-- A partition whose lease expired max_lost times in a row kills (or hangs) every worker
-- that takes it: fail it with that reason rather than hand it out forever.
UPDATE backfill_partitions AS p
SET status = 'failed', lost_leases = p.lost_leases + 1, lease_owner = NULL,
    lease_expires_at = NULL, finished_at = %(now)s, error_category = 'worker_lost',
    error_message = 'its lease expired ' || (p.lost_leases + 1)
        || ' times in a row: every worker that took it died or hung'
FROM (
    SELECT id FROM backfill_partitions
    WHERE stage_id = %(stage_id)s AND status = 'running' AND lease_expires_at < %(now)s
      AND begun = 1 AND lost_leases + 1 >= %(max_lost)s {where}
    FOR UPDATE SKIP LOCKED
) AS lost
WHERE p.id = lost.id;

-- name: release_expired
-- Expired leases go back to the pool; those their holder had begun as suspects
-- (lost_leases > 0): each runs alone later, so the one that kills its workers is told
-- from those that shared its batch. Those it never started are not suspected.
UPDATE backfill_partitions AS p
SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL,
    lost_leases = p.lost_leases + p.begun, begun = 0
FROM (
    SELECT id FROM backfill_partitions
    WHERE stage_id = %(stage_id)s AND status = 'running' AND lease_expires_at < %(now)s
      {where}
    FOR UPDATE SKIP LOCKED
) AS lost
WHERE p.id = lost.id;

-- name: complete
-- Only rows the owner still holds: a worker whose lease passed on changes nothing.
UPDATE backfill_partitions AS p
SET status = o.status,
    attempts = p.attempts + o.attempts,
    records = CASE WHEN o.status = 'pending' THEN p.records ELSE o.records END,
    duration = CASE WHEN o.status = 'pending' THEN p.duration ELSE o.duration END,
    error_category = o.error_category,
    error_message = o.error_message,
    finished_at = CASE WHEN o.status = 'pending' THEN p.finished_at ELSE %(now)s END,
    lease_owner = NULL,
    lease_expires_at = NULL,
    lost_leases = 0,
    begun = 0,
    requests = coalesce(p.requests, 0) + o.requests,
    checkpoint = CASE WHEN o.status IN ('done', 'empty') THEN NULL ELSE p.checkpoint END,
    checks = CASE WHEN o.status = 'pending' THEN p.checks ELSE o.checks END
FROM unnest(%(ids)s::bigint[], %(statuses)s::text[], %(attempts)s::integer[],
            %(records)s::bigint[], %(durations)s::double precision[],
            %(categories)s::text[], %(messages)s::text[], %(requests)s::integer[],
            %(checks)s::text[])
     AS o (id, status, attempts, records, duration, error_category, error_message, requests,
           checks)
WHERE p.id = o.id AND p.lease_owner = %(owner)s AND p.status = 'running'
RETURNING o.id, o.status;

-- name: count_finished
UPDATE backfill_workers SET finished = finished + %(n)s WHERE id = %(owner)s;

-- name: save_checkpoint
-- A saved checkpoint is progress: the deaths before it are not this partition's doing.
UPDATE backfill_partitions SET checkpoint = %(checkpoint)s, lost_leases = 0
WHERE id = %(id)s AND lease_owner = %(owner)s AND status = 'running';

-- name: begin
-- The owner starts these partitions (each lease's fencing token: id and claims): a death
-- from now on counts against them. Returns those whose lease it still holds; a lease
-- that passed to another worker, or to a later claim, is not. Locks the rows, so inside
-- a sink's transaction nobody takes them over before it commits.
UPDATE backfill_partitions AS p SET begun = 1
FROM unnest(%(ids)s::bigint[], %(claims)s::integer[]) AS l (id, claims)
WHERE p.id = l.id AND p.claims = l.claims AND p.lease_owner = %(owner)s
  AND p.status = 'running'
RETURNING p.id;

-- name: request_stats
SELECT count(requests), avg(requests)
FROM backfill_partitions
WHERE stage_id = %(stage_id)s AND status IN ('done', 'empty') AND requests IS NOT NULL;

-- name: renew
UPDATE backfill_partitions SET lease_expires_at = %(expires)s
WHERE lease_owner = %(owner)s AND status = 'running';

-- name: release_owner
UPDATE backfill_partitions
SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL, begun = 0
WHERE lease_owner = %(owner)s AND status = 'running';

-- name: fail_lost_of_owner
-- The owner died running these: as with an expired lease, the last straw fails them.
UPDATE backfill_partitions
SET status = 'failed', lost_leases = lost_leases + 1, lease_owner = NULL,
    lease_expires_at = NULL, finished_at = extract(epoch FROM clock_timestamp()),
    error_category = 'worker_lost',
    error_message = 'its worker died ' || (lost_leases + 1)
        || ' times in a row while running it'
WHERE lease_owner = %(owner)s AND status = 'running' AND begun = 1
  AND lost_leases + 1 >= %(max_lost)s;

-- name: release_lost
-- Only what the owner had begun counts its death; the rest of its batch goes back clean.
UPDATE backfill_partitions
SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL,
    lost_leases = lost_leases + begun, begun = 0
WHERE lease_owner = %(owner)s AND status = 'running';

-- name: counts
SELECT status, count(*), coalesce(sum(records), 0)
FROM backfill_partitions WHERE stage_id = %(stage_id)s {where}
GROUP BY status;

-- name: any_pending
-- {ready}: nothing, or only partitions whose inputs are all finished.
SELECT 1 FROM backfill_partitions AS p
WHERE stage_id = %(stage_id)s AND status = 'pending' {where}{ready} LIMIT 1;

-- name: any_running
-- Running rows hold a lease owner: the partial index on leases finds them.
SELECT 1 FROM backfill_partitions
WHERE stage_id = %(stage_id)s AND status = 'running' {where} LIMIT 1;

-- name: recent
SELECT count(*), min(started_at), max(finished_at)
FROM backfill_partitions
WHERE stage_id = %(stage_id)s AND run_id = %(run_id)s AND finished_at IS NOT NULL {where};

-- name: last_run_of_stage
SELECT run_id FROM backfill_partitions
WHERE stage_id = %(stage_id)s AND finished_at IS NOT NULL
ORDER BY finished_at DESC LIMIT 1;

-- name: failure_groups
-- Per category: its size, and the key and message of its first failed row as an example.
SELECT category, n, key, message FROM (
    SELECT coalesce(error_category, 'error') AS category,
           count(*) OVER (PARTITION BY coalesce(error_category, 'error')) AS n,
           row_number() OVER (PARTITION BY coalesce(error_category, 'error') ORDER BY id)
               AS rank,
           key, coalesce(error_message, '') AS message
    FROM backfill_partitions
    WHERE stage_id = %(stage_id)s AND status = 'failed' {where}
) AS grouped
WHERE rank = 1
ORDER BY n DESC, category;

-- name: entries
SELECT key, status, attempts, records, duration, error_category, error_message,
       run_id, finished_at
FROM backfill_partitions
WHERE stage_id = %(stage_id)s {where}
ORDER BY window_start, id
LIMIT %(limit)s;

-- name: requeue
UPDATE backfill_partitions
SET status = 'pending', error_category = NULL, error_message = NULL, lost_leases = 0
WHERE stage_id = %(stage_id)s AND status = ANY(%(statuses)s) {where};

-- name: redo
-- Inside a reset, before its delete: the partitions it forgets count as being redone,
-- so marking downstream stages stale finds what was computed from them.
UPDATE backfill_partitions SET status = 'pending'
WHERE stage_id = %(stage_id)s AND status != 'running' {where};

-- name: reset
DELETE FROM backfill_partitions
WHERE stage_id = %(stage_id)s AND status != 'running' {where};

-- name: start_run
INSERT INTO backfill_runs (id, job, command, host, pid, options, started_at, status)
VALUES (%(id)s, %(job)s, %(command)s, %(host)s, %(pid)s, %(options)s::jsonb,
        %(started_at)s, %(status)s);

-- name: finish_run
UPDATE backfill_runs
SET finished_at = %(now)s, status = %(status)s, exit_code = %(exit_code)s,
    counts = %(counts)s::jsonb
WHERE id = %(id)s;

-- name: runs
SELECT id, job, started_at, host, pid, command, options::text, finished_at, status,
       exit_code, counts::text
FROM backfill_runs WHERE job = %(job)s
ORDER BY started_at DESC LIMIT %(limit)s;

-- name: register_worker
INSERT INTO backfill_workers (id, job, host, pid, started_at, heartbeat_at)
VALUES (%(id)s, %(job)s, %(host)s, %(pid)s, %(started_at)s, %(heartbeat_at)s)
ON CONFLICT (id) DO UPDATE
SET job = excluded.job, host = excluded.host, pid = excluded.pid,
    started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,
    stopped_at = NULL;

-- name: heartbeat
-- A worker that beats is alive: a reaper that took it for dead (it stalled past its
-- lease) marked it stopped, and it is active again.
UPDATE backfill_workers
SET heartbeat_at = %(now)s, stopped_at = NULL, resources = coalesce(%(resources)s, resources)
WHERE id = %(id)s;

-- name: resource_states
-- What the resources of the job's latest workers were doing, latest first.
SELECT heartbeat_at, resources FROM backfill_workers
WHERE job = %(job)s AND resources IS NOT NULL
ORDER BY heartbeat_at DESC LIMIT %(limit)s;

-- name: stop_worker
UPDATE backfill_workers SET stopped_at = %(now)s WHERE id = %(id)s;

-- name: workers
SELECT id, job, host, pid, started_at, heartbeat_at, stopped_at, finished, resources
FROM backfill_workers WHERE job = %(job)s {where}
ORDER BY started_at;

-- name: insert_resource
INSERT INTO backfill_resources (job, name) VALUES (%(job)s, %(name)s)
ON CONFLICT (job, name) DO NOTHING;

-- name: lock_resource
-- Bookings of one resource are serialized on its row; now is the database's clock.
SELECT tat, paused_until, extract(epoch FROM clock_timestamp())::double precision,
       pace
FROM backfill_resources
WHERE job = %(job)s AND name = %(name)s
FOR UPDATE;

-- name: set_tat
UPDATE backfill_resources SET tat = %(tat)s WHERE job = %(job)s AND name = %(name)s;

-- name: set_pace
UPDATE backfill_resources
SET pace = %(pace)s
WHERE job = %(job)s AND name = %(name)s;

-- name: set_paused
UPDATE backfill_resources SET paused_until = %(paused)s
WHERE job = %(job)s AND name = %(name)s;

-- name: lock_quota
-- Created on first use; the no-op update locks the row either way, in one statement.
INSERT INTO backfill_quotas AS q (job, name, quota) VALUES (%(job)s, %(name)s, %(quota)s)
ON CONFLICT (job, name, quota) DO UPDATE SET taken = q.taken
RETURNING taken;

-- name: quota_starts
-- The starts a block of new ones replaces in the ring: those `count` starts earlier.
SELECT slot, started_at FROM backfill_quota_starts
WHERE job = %(job)s AND name = %(name)s AND quota = %(quota)s AND slot = ANY(%(slots)s);

-- name: record_quota_starts
INSERT INTO backfill_quota_starts (job, name, quota, slot, started_at)
SELECT %(job)s, %(name)s, %(quota)s, s, t
FROM unnest(%(slots)s::integer[], %(starts)s::double precision[]) AS u (s, t)
ON CONFLICT (job, name, quota, slot) DO UPDATE SET started_at = excluded.started_at;

-- name: set_quota_taken
UPDATE backfill_quotas SET taken = %(taken)s
WHERE job = %(job)s AND name = %(name)s AND quota = %(quota)s;

-- name: pause_resource
WITH clock AS (SELECT extract(epoch FROM clock_timestamp())::double precision AS now)
UPDATE backfill_resources AS r
SET paused_until = greatest(r.paused_until, clock.now + %(seconds)s)
FROM clock
WHERE r.job = %(job)s AND r.name = %(name)s;

-- name: mark_stale
-- {inputs}: some upstream input is being redone, or was redone after this partition.
UPDATE backfill_partitions AS p
SET status = 'pending', error_category = 'stale', error_message = %(message)s
WHERE p.stage_id = %(stage_id)s AND p.status IN ('done', 'empty') {where} AND {inputs};

-- name: stale_keys
SELECT p.key FROM backfill_partitions AS p
WHERE p.stage_id = %(stage_id)s AND p.status IN ('done', 'empty') {where} AND {inputs};

-- name: blocked_keys
SELECT key, blocker FROM (
    SELECT p.key AS key, {first} AS blocker FROM backfill_partitions AS p
    WHERE p.stage_id = %(stage_id)s AND p.status = 'pending' {where}
) AS b WHERE blocker IS NOT NULL;

-- name: window_counts
-- Calendars: per window and status, how many partitions (dimension values together);
-- pending rows that mark_stale returned are counted apart.
SELECT window_start, window_end, status,
       status = 'pending' AND coalesce(error_category = 'stale', false) AS stale, count(*)
FROM backfill_partitions
WHERE stage_id = %(stage_id)s
GROUP BY window_start, window_end, status, stale
ORDER BY window_start, window_end, status, stale;

-- name: coverage_rows
SELECT key, window_start, window_end, dims::text, status, records, error_category,
       error_message, finished_at, checks
FROM backfill_partitions AS p
WHERE stage_id = %(stage_id)s {where}
ORDER BY window_start, id;

-- name: clock
SELECT extract(epoch FROM clock_timestamp())::double precision;

-- name: quota_ring
SELECT started_at FROM backfill_quota_starts
WHERE job = %(job)s AND name = %(name)s AND quota = %(quota)s;

-- name: quota_names
-- Every quota window kept for a resource (a count and a period each).
SELECT quota FROM backfill_quotas WHERE job = %(job)s AND name = %(name)s ORDER BY quota;
