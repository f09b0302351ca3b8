"""The one report every interface renders: counts, blocked, stalled and why, resources,
lost runs; on a SQLite ledger in memory, with the ledger's rows made by hand."""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from backfill import Job, daily, needs
from backfill.ledger import Outcome, RunRecord, Status, WorkerRecord, open_ledger
from backfill.report import build_report, run_reports

NOW = 1_800_000_000.0


def pipeline() -> Job:
    job = Job("rep", partitions=daily("2013-01-01", "2013-01-10"))

    @job.stage(resource=None)
    def fetch(ctx: object, p: object) -> None:
        return None

    @job.stage(needs=[needs("fetch")])
    def summary(ctx: object, p: object) -> None:
        return None

    return job


def settle(ledger, job: Job, stage: str, statuses: dict[str, Status], at: float) -> None:
    ledger.plan(job.name, stage, job.stages[stage].partitions)
    claims = ledger.claim(
        job.name, stage, "w", limit=100, lease_seconds=60, now=at - 10, run_id="r1"
    )
    outcomes = [Outcome(c.id, statuses[c.key]) for c in claims if c.key in statuses]
    rest = [Outcome(c.id, Status.PENDING, attempts=0) for c in claims if c.key not in statuses]
    ledger.complete("w", outcomes + rest, now=at)


def test_partitions_waiting_for_a_failed_input_are_blocked_and_out_of_the_eta() -> None:
    """A failed fetch day leaves its summary day blocked: counted apart from pending, named
    with its blocker, and never part of what the ETA waits for."""
    job = pipeline()
    ledger = open_ledger(":memory:")
    days = [p.key for p in job.stages["fetch"].partitions]
    settle(
        ledger, job, "fetch", {d: Status.FAILED if d == days[4] else Status.DONE for d in days}, NOW
    )
    settle(ledger, job, "summary", {d: Status.DONE for d in days[:3]}, NOW)
    report = build_report(job, ledger, now=NOW + 1)
    summary = next(s for s in report.stages if s.name == "summary")
    assert (summary.done, summary.blocked, summary.pending) == (3, 1, 6)
    assert summary.example_blocked == f"{days[4]} waits for failed fetch {days[4]}"
    fetch = next(s for s in report.stages if s.name == "fetch")
    assert (fetch.failed, fetch.left, fetch.eta) == (1, 0, 0.0)


def test_a_stage_where_nothing_finishes_for_long_is_stalled_with_the_resources_reason() -> None:
    """A live worker whose resource's circuit has been open for two minutes, nothing
    finished since: the stage is stalled (no rate, no ETA from before the outage), and
    says why; the resource's state is in the report."""
    job = pipeline()
    ledger = open_ledger(":memory:")
    days = [p.key for p in job.stages["fetch"].partitions]
    settle(ledger, job, "fetch", {d: Status.DONE for d in days[:5]}, NOW - 120)
    worker = f"{socket.gethostname()}:{os.getpid()}:r1"
    ledger.register_worker(
        WorkerRecord(worker, job.name, socket.gethostname(), os.getpid(), NOW - 200, NOW, None)
    )
    state = {
        "api": {
            "declared": "5/s",
            "rate": 5.0,
            "circuit": "open",
            "circuit_since": NOW - 118,
            "paused_until": None,
            "quota_until": None,
            "quotas": [],
            "requests": 40,
            "rate_limited": 0,
        }
    }
    ledger.heartbeat(worker, now=NOW, resources=json.dumps(state))
    report = build_report(job, ledger, job.select_stages(["fetch"]), now=NOW)
    (fetch,) = report.stages
    assert fetch.rate is None and fetch.eta is None
    assert fetch.stalled is not None
    assert fetch.stalled.startswith("stalled 2m00s: api circuit open since ")
    (api,) = report.resources
    assert (api.name, api.circuit, api.requests) == ("api", "open", 40)


def _five_of_fetch_done_then_held(
    ledger: Any, job: Job, *, began: float, every: float, state: dict[str, Any]
) -> None:
    """Ten partitions of ``fetch`` claimed at ``began``, five done ``every`` seconds apart
    after it, the rest handed back ten seconds after the last; a live worker of this host
    says ``state`` of its resources now."""
    ledger.plan(job.name, "fetch", job.stages["fetch"].partitions)
    claims = ledger.claim(
        job.name, "fetch", "w", limit=10, lease_seconds=10_000, now=began, run_id="r1"
    )
    for i, c in enumerate(claims[:5]):
        ledger.complete("w", [Outcome(c.id, Status.DONE)], now=began + every * (i + 1))
    back = [Outcome(c.id, Status.PENDING, attempts=0) for c in claims[5:]]
    ledger.complete("w", back, now=began + every * 5 + 10)
    worker = f"{socket.gethostname()}:{os.getpid()}:r2"
    ledger.register_worker(
        WorkerRecord(worker, job.name, socket.gethostname(), os.getpid(), began - 100, NOW, None)
    )
    ledger.heartbeat(worker, now=NOW, resources=json.dumps(state))


def test_a_quota_of_known_end_gives_the_eta_its_wait() -> None:
    """Stalled on a quota that frees up in an hour: the ETA is that hour plus the rest
    at the pace before."""
    job = pipeline()
    ledger = open_ledger(":memory:")
    state = {"api": {"circuit": "closed", "quota_until": NOW + 3600, "quotas": ["5/day"]}}
    _five_of_fetch_done_then_held(ledger, job, began=NOW - 310, every=10.0, state=state)
    (fetch,) = build_report(job, ledger, job.select_stages(["fetch"]), now=NOW).stages
    assert fetch.stalled is not None and "api quota used up (5/day): resumes" in fetch.stalled
    assert fetch.eta is not None and 3600 < fetch.eta < 3600 + 200


def test_a_run_whose_worker_died_is_lost_not_running() -> None:
    """A run that says running, whose worker's process is gone from this host: lost."""
    job = pipeline()
    ledger = open_ledger(":memory:")
    host = socket.gethostname()
    dead_pid = 2**22 + 12345  # beyond any pid this host hands out
    ledger.start_run(RunRecord("r9", job.name, NOW - 60, host, dead_pid, "run"))
    ledger.register_worker(
        WorkerRecord(f"{host}:{dead_pid}:r9", job.name, host, dead_pid, NOW - 60, NOW - 50, None)
    )
    ledger.start_run(RunRecord("r10", job.name, NOW - 10, host, os.getpid(), "run"))
    ledger.register_worker(
        WorkerRecord(f"{host}:{os.getpid()}:r10", job.name, host, os.getpid(), NOW - 10, NOW, None)
    )
    runs = {r.record.id: r for r in run_reports(job, ledger, now=NOW)}
    assert runs["r9"].status == "lost"
    assert runs["r9"].heartbeat_at == NOW - 50
    assert runs["r10"].status == "running"


def _through_limits(name: str, limit: str) -> Job:
    """Ten days fetched one request at a time through a resource limited to ``limit``."""
    job = Job(name, partitions=daily("2013-01-01", "2013-01-10"))
    job.resource("api", limits=[limit], concurrency=1)

    @job.stage(resource="api")
    def fetch(ctx: object, p: object) -> None:
        return None

    return job


def test_the_eta_is_never_less_than_the_stage_s_limits_need_for_what_is_left() -> None:
    """5 requests every 20 s, 9 partitions left, of which the last run did one every
    second: the ETA says the windows still needed (five now, four a window later: 20 s
    at least), not the 9 s its recent rate would."""
    job = _through_limits("quota", "5/20s")
    ledger = open_ledger(":memory:")
    settle(ledger, job, "fetch", {"2013-01-01": Status.DONE}, NOW - 1)
    rates = {"fetch": 1.0}
    (report,) = build_report(job, ledger, [job.stages["fetch"]], now=NOW, rates=rates).stages
    assert report.left == 9
    assert report.eta == 20.0


def _quota_spent_by_the_run_before(finished: bool) -> list:
    """A stage through a quota of 5 a day; the run before finished five partitions hours
    ago (``finished``) or none, and a worker of this run says the quota frees up in an
    hour."""
    job = _through_limits("spent", "5/day")
    ledger = open_ledger(":memory:")
    done = {f"2013-01-0{d}": Status.DONE for d in range(1, 6)} if finished else {}
    settle(ledger, job, "fetch", done, NOW - 6 * 3600)
    worker = f"{socket.gethostname()}:{os.getpid()}:r2"
    ledger.register_worker(
        WorkerRecord(worker, job.name, socket.gethostname(), os.getpid(), NOW - 60, NOW, None)
    )
    state = {"api": {"circuit": "closed", "quota_until": NOW + 3600, "quotas": ["5/day"]}}
    ledger.heartbeat(worker, now=NOW, resources=json.dumps(state))
    return build_report(job, ledger, [job.stages["fetch"]], now=NOW).stages


def test_a_run_restarted_into_a_spent_quota_has_an_eta_with_the_wait() -> None:
    """Restarted while the quota the run before spent still holds: no pace is measured
    yet, but the ETA is the wait plus what the quota needs for the rest (it was none)."""
    for finished, left in ((True, 5), (False, 10)):
        (fetch,) = _quota_spent_by_the_run_before(finished)
        assert fetch.left == left
        # The rest needs whole days of the quota after the wait.
        assert fetch.eta is not None, finished
        assert fetch.eta >= 3600, (finished, fetch.eta)


def test_a_wait_counts_only_for_the_stage_behind_it_and_with_the_pace_the_ledger_knows() -> None:
    """A quota on the api holds for an hour. The dashboard's own samples saw nothing
    finish, but the ledger measured a partition every 100 s: the ETA is the wait plus
    the five left at that pace (it was the wait plus what the limits need, 3,600 s, and
    4,100 once the stage counted as stalled). A stage behind another resource, which
    nothing holds, gets none of the wait."""
    job = Job("two", partitions=daily("2013-01-01", "2013-01-10"))
    job.resource("api", limits=["1000/day"], concurrency=1)
    job.resource("db", limits=["10/s"], concurrency=1)

    @job.stage(resource="api")
    def fetch(ctx: object, p: object) -> None:
        return None

    @job.stage(resource="db")
    def load(ctx: object, p: object) -> None:
        return None

    ledger = open_ledger(":memory:")
    ledger.plan(job.name, "load", job.stages["load"].partitions)
    state = {
        "api": {"circuit": "closed", "quota_until": NOW + 3600, "quotas": ["1000/day"]},
        "db": {"circuit": "closed"},
    }
    _five_of_fetch_done_then_held(ledger, job, began=NOW - 700, every=100.0, state=state)
    stages = [job.stages["fetch"], job.stages["load"]]
    fetch_report, load_report = build_report(
        job, ledger, stages, now=NOW, rates={"fetch": None, "load": None}
    ).stages
    assert fetch_report.stalled is None
    assert fetch_report.eta == 3600 + 5 * 100
    assert load_report.eta is None
