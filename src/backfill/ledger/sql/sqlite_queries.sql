-- Named queries of the SQLite ledger. Each starts with "-- name: NAME".
-- {where} marks where a selection filter is spliced in.

-- name: stage_id
SELECT id FROM backfill_stages WHERE job = :job AND stage = :stage;

-- name: insert_stage
INSERT OR IGNORE INTO backfill_stages (job, stage) VALUES (:job, :stage);

-- name: plan
-- One JSON array of [key, window_start, window_end, dims(, params)] rows per chunk: SQLite
-- unpacks it in C, far cheaper than binding parameters row by row from Python. Only
-- discovered partitions have params (a missing element reads as NULL).
INSERT OR IGNORE INTO backfill_partitions (stage_id, key, window_start, window_end, dims, params)
SELECT ?1, json_extract(value, '$[0]'), json_extract(value, '$[1]'),
       json_extract(value, '$[2]'), json_extract(value, '$[3]'), json_extract(value, '$[4]')
FROM json_each(?2);

-- name: planned
-- The fingerprint of the last plan of this stage that went through to the end.
SELECT planned FROM backfill_stages WHERE id = :stage_id;

-- name: set_planned
UPDATE backfill_stages SET planned = :planned WHERE id = :stage_id;

-- name: forget_plan
UPDATE backfill_stages SET planned = NULL WHERE id = :stage_id;

-- name: claim_pending
UPDATE backfill_partitions
SET status = 'running', lease_owner = :owner, lease_expires_at = :expires,
    claims = claims + 1, run_id = :run_id, started_at = :now, begun = 0
WHERE id IN (
    -- {ready}: the partition's upstream inputs are finished (stages with needs=).
    -- INDEXED BY: the planner may otherwise walk the window index, finished rows too.
    -- {lost}: how many leases in a row the partition lost (its worker died): 0 for the
    -- usual claim, more for suspects (see Ledger.claim).
    SELECT p.id FROM backfill_partitions AS p INDEXED BY backfill_partitions_pending
    WHERE p.stage_id = :stage_id AND p.status = 'pending' AND p.lost_leases {lost}
      {where} {ready}
    ORDER BY p.window_start {direction}, p.id {direction}
    LIMIT :limit
)
RETURNING id, key, window_start, window_end, dims, attempts, claims, checkpoint, params;

-- name: claim_pending_front
-- claim_pending among the first :scan pending partitions only (Ledger.claim's scan): the
-- readiness check probes that many rows at most. No ORDER BY out here: the join keeps
-- the front's order, and LIMIT stops at the first ready ones instead of checking all.
UPDATE backfill_partitions
SET status = 'running', lease_owner = :owner, lease_expires_at = :expires,
    claims = claims + 1, run_id = :run_id, started_at = :now, begun = 0
WHERE id IN (
    SELECT p.id FROM (
        SELECT id FROM backfill_partitions INDEXED BY backfill_partitions_pending
        WHERE stage_id = :stage_id AND status = 'pending' AND lost_leases {lost} {where}
        ORDER BY window_start {direction}, id {direction}
        LIMIT :scan
    ) AS front
    JOIN backfill_partitions AS p ON p.id = front.id
    WHERE TRUE {ready}
    LIMIT :limit
)
RETURNING id, key, window_start, window_end, dims, attempts, claims, checkpoint, params;

-- name: fail_lost
-- A partition whose lease expired max_lost times in a row kills (or hangs) every worker
-- that takes it: fail it with that reason rather than hand it out forever.
UPDATE backfill_partitions
SET status = 'failed', lost_leases = lost_leases + 1, lease_owner = NULL,
    lease_expires_at = NULL, finished_at = :now, error_category = 'worker_lost',
    error_message = 'its lease expired ' || (lost_leases + 1)
        || ' times in a row: every worker that took it died or hung'
WHERE lease_owner IS NOT NULL AND +stage_id = :stage_id AND status = 'running'
  AND lease_expires_at < :now AND begun = 1 AND lost_leases + 1 >= :max_lost {where};

-- name: release_expired
-- Expired leases go back to the pool; those their holder had begun as suspects
-- (lost_leases > 0): each runs alone later, so the one that kills its workers is told
-- from those that shared its batch. Those it never started are not suspected.
UPDATE backfill_partitions
SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL,
    lost_leases = lost_leases + begun, begun = 0
-- Leased rows are found through the small owner index (lease_owner IS NOT NULL exactly
-- while running), not by scanning the stage.
WHERE lease_owner IS NOT NULL AND +stage_id = :stage_id AND status = 'running'
  AND lease_expires_at < :now {where};

-- name: complete
-- Positional: ?1 status, ?2 attempts, ?3 records, ?4 duration, ?5 error_category,
-- ?6 error_message, ?7 now, ?8 id, ?9 owner, ?10 requests, ?11 checks.
UPDATE backfill_partitions
SET status = ?1,
    attempts = attempts + ?2,
    records = CASE WHEN ?1 = 'pending' THEN records ELSE ?3 END,
    duration = CASE WHEN ?1 = 'pending' THEN duration ELSE ?4 END,
    error_category = ?5,
    error_message = ?6,
    finished_at = CASE WHEN ?1 = 'pending' THEN finished_at ELSE ?7 END,
    lease_owner = NULL,
    lease_expires_at = NULL,
    lost_leases = 0,
    begun = 0,
    requests = coalesce(requests, 0) + ?10,
    checkpoint = CASE WHEN ?1 IN ('done', 'empty') THEN NULL ELSE checkpoint END,
    checks = CASE WHEN ?1 = 'pending' THEN checks ELSE ?11 END
WHERE id = ?8 AND lease_owner = ?9 AND status = 'running';

-- name: count_finished
UPDATE backfill_workers SET finished = finished + :n WHERE id = :owner;

-- name: save_checkpoint
-- A saved checkpoint is progress: the deaths before it are not this partition's doing.
UPDATE backfill_partitions SET checkpoint = :checkpoint, lost_leases = 0
WHERE id = :id AND lease_owner = :owner AND status = 'running';

-- name: begin
-- The owner starts these partitions (a JSON array of [id, claims] pairs: each lease's
-- fencing token): a death from now on counts against them. Returns those whose lease
-- it still holds; a lease that passed to another worker, or to a later claim, is not.
-- Driven by the ids (primary key look-ups): the owner index would walk every row the
-- owner holds (its whole claimed batch) for each call.
UPDATE backfill_partitions AS p SET begun = 1
FROM (
    SELECT json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS claims
    FROM json_each(:leases)
) AS l
WHERE p.id = l.id AND p.claims = l.claims AND +p.lease_owner = :owner
  AND +p.status = 'running'
RETURNING id;

-- name: request_stats
SELECT count(requests), avg(requests)
FROM backfill_partitions
WHERE stage_id = :stage_id AND status IN ('done', 'empty') AND requests IS NOT NULL;

-- name: renew
UPDATE backfill_partitions SET lease_expires_at = :expires
WHERE lease_owner = :owner AND status = 'running';

-- name: release_owner
UPDATE backfill_partitions
SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL, begun = 0
WHERE lease_owner = :owner AND status = 'running';

-- name: fail_lost_of_owner
-- The owner died running these: as with an expired lease, the last straw fails them.
UPDATE backfill_partitions
SET status = 'failed', lost_leases = lost_leases + 1, lease_owner = NULL,
    lease_expires_at = NULL, finished_at = (julianday('now') - 2440587.5) * 86400.0,
    error_category = 'worker_lost',
    error_message = 'its worker died ' || (lost_leases + 1)
        || ' times in a row while running it'
WHERE lease_owner = :owner AND status = 'running' AND begun = 1
  AND lost_leases + 1 >= :max_lost;

-- name: release_lost
-- Only what the owner had begun counts its death; the rest of its batch goes back clean.
UPDATE backfill_partitions
SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL,
    lost_leases = lost_leases + begun, begun = 0
WHERE lease_owner = :owner AND status = 'running';

-- name: counts
SELECT status, count(*), coalesce(sum(records), 0)
FROM backfill_partitions WHERE stage_id = :stage_id {where}
GROUP BY status;

-- name: any_pending
-- {ready}: nothing, or only partitions whose inputs are all finished.
SELECT 1 FROM backfill_partitions AS p
WHERE stage_id = :stage_id AND status = 'pending' {where}{ready} LIMIT 1;

-- name: any_running
-- Running rows hold a lease owner: the partial index on leases finds them.
SELECT 1 FROM backfill_partitions
WHERE lease_owner IS NOT NULL AND stage_id = :stage_id AND status = 'running' {where} LIMIT 1;

-- name: recent
SELECT count(*), min(started_at), max(finished_at)
FROM backfill_partitions
WHERE stage_id = :stage_id AND run_id = :run_id AND finished_at IS NOT NULL {where};

-- name: last_run_of_stage
SELECT run_id FROM backfill_partitions
WHERE stage_id = :stage_id AND finished_at IS NOT NULL
ORDER BY finished_at DESC LIMIT 1;

-- name: failure_groups
-- SQLite fills the bare columns key and error_message from the row holding min(id).
SELECT coalesce(error_category, 'error') AS category, count(*), min(id), key,
       coalesce(error_message, '')
FROM backfill_partitions
WHERE stage_id = :stage_id AND status = 'failed' {where}
GROUP BY category
ORDER BY count(*) DESC, category;

-- name: entries
SELECT key, status, attempts, records, duration, error_category, error_message,
       run_id, finished_at
FROM backfill_partitions
WHERE stage_id = :stage_id {where}
ORDER BY window_start, id
LIMIT :limit;

-- name: requeue
UPDATE backfill_partitions
SET status = 'pending', error_category = NULL, error_message = NULL, lost_leases = 0
WHERE stage_id = :stage_id AND status IN (SELECT value FROM json_each(:statuses)) {where};

-- name: redo
-- Inside a reset, before its delete: the partitions it forgets count as being redone,
-- so marking downstream stages stale finds what was computed from them.
UPDATE backfill_partitions SET status = 'pending'
WHERE stage_id = :stage_id AND status != 'running' {where};

-- name: reset
DELETE FROM backfill_partitions
WHERE stage_id = :stage_id AND status != 'running' {where};

-- name: start_run
INSERT INTO backfill_runs (id, job, command, host, pid, options, started_at, status)
VALUES (:id, :job, :command, :host, :pid, :options, :started_at, :status);

-- name: finish_run
UPDATE backfill_runs
SET finished_at = :now, status = :status, exit_code = :exit_code, counts = :counts
WHERE id = :id;

-- name: runs
SELECT id, job, started_at, host, pid, command, options, finished_at, status, exit_code,
       counts
FROM backfill_runs WHERE job = :job
ORDER BY started_at DESC LIMIT :limit;

-- name: register_worker
INSERT OR REPLACE INTO backfill_workers (id, job, host, pid, started_at, heartbeat_at)
VALUES (:id, :job, :host, :pid, :started_at, :heartbeat_at);

-- name: heartbeat
-- A worker that beats is alive: a reaper that took it for dead (it stalled past its
-- lease) marked it stopped, and it is active again.
UPDATE backfill_workers
SET heartbeat_at = :now, stopped_at = NULL, resources = coalesce(:resources, resources)
WHERE id = :id;

-- name: resource_states
-- What the resources of the job's latest workers were doing, latest first.
SELECT heartbeat_at, resources FROM backfill_workers
WHERE job = :job AND resources IS NOT NULL
ORDER BY heartbeat_at DESC LIMIT :limit;

-- name: stop_worker
UPDATE backfill_workers SET stopped_at = :now WHERE id = :id;

-- name: workers
SELECT id, job, host, pid, started_at, heartbeat_at, stopped_at, finished, resources
FROM backfill_workers WHERE job = :job {where}
ORDER BY started_at;

-- name: mark_stale
-- {inputs}: some upstream input is being redone, or was redone after this partition.
UPDATE backfill_partitions AS p
SET status = 'pending', error_category = 'stale', error_message = :message
WHERE p.stage_id = :stage_id AND p.status IN ('done', 'empty') {where} AND {inputs};

-- name: stale_keys
SELECT p.key FROM backfill_partitions AS p
WHERE p.stage_id = :stage_id AND p.status IN ('done', 'empty') {where} AND {inputs};

-- name: blocked_keys
SELECT key, blocker FROM (
    SELECT p.key AS key, {first} AS blocker FROM backfill_partitions AS p
    WHERE p.stage_id = :stage_id AND p.status = 'pending' {where}
) WHERE blocker IS NOT NULL;

-- name: window_counts
-- Calendars: per window and status, how many partitions (dimension values together);
-- pending rows that mark_stale returned are counted apart.
SELECT window_start, window_end, status,
       status = 'pending' AND coalesce(error_category = 'stale', false) AS stale, count(*)
FROM backfill_partitions
WHERE stage_id = :stage_id
GROUP BY window_start, window_end, status, stale
ORDER BY window_start, window_end, status, stale;

-- name: coverage_rows
SELECT key, window_start, window_end, dims, status, records, error_category,
       error_message, finished_at, checks
FROM backfill_partitions AS p
WHERE stage_id = :stage_id {where}
ORDER BY window_start, id;

-- name: insert_resource
INSERT INTO backfill_resources (job, name) VALUES (:job, :name)
ON CONFLICT (job, name) DO NOTHING;

-- name: lock_resource
-- Inside BEGIN IMMEDIATE, so bookings are serialized; now is epoch seconds.
SELECT tat, paused_until, (julianday('now') - 2440587.5) * 86400.0,
       pace
FROM backfill_resources
WHERE job = :job AND name = :name;

-- name: set_tat
UPDATE backfill_resources SET tat = :tat WHERE job = :job AND name = :name;

-- name: set_pace
UPDATE backfill_resources
SET pace = :pace
WHERE job = :job AND name = :name;

-- name: set_paused
UPDATE backfill_resources SET paused_until = :paused WHERE job = :job AND name = :name;

-- name: lock_quota
INSERT INTO backfill_quotas (job, name, quota) VALUES (:job, :name, :quota)
ON CONFLICT (job, name, quota) DO UPDATE SET taken = taken
RETURNING taken;

-- name: quota_starts
-- The starts a block of new ones replaces in the ring: those `count` starts earlier.
SELECT slot, started_at FROM backfill_quota_starts
WHERE job = :job AND name = :name AND quota = :quota
  AND slot IN (SELECT value FROM json_each(:slots));

-- name: record_quota_starts
INSERT INTO backfill_quota_starts (job, name, quota, slot, started_at)
SELECT :job, :name, :quota, s.value, t.value
FROM json_each(:slots) AS s JOIN json_each(:starts) AS t ON t.key = s.key
WHERE true
ON CONFLICT (job, name, quota, slot) DO UPDATE SET started_at = excluded.started_at;

-- name: set_quota_taken
UPDATE backfill_quotas SET taken = :taken
WHERE job = :job AND name = :name AND quota = :quota;

-- name: pause_resource
UPDATE backfill_resources
SET paused_until = max(paused_until, (julianday('now') - 2440587.5) * 86400.0 + :seconds)
WHERE job = :job AND name = :name;

-- name: clock
SELECT (julianday('now') - 2440587.5) * 86400.0;

-- name: quota_ring
SELECT started_at FROM backfill_quota_starts
WHERE job = :job AND name = :name AND quota = :quota;

-- name: quota_names
-- Every quota window kept for a resource (a count and a period each).
SELECT quota FROM backfill_quotas WHERE job = :job AND name = :name ORDER BY quota;
