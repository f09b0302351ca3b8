"""One report of a job's state, built from the ledger and the job, that every interface
renders: ``backfill status``, the dashboard and ``/metrics`` say the same thing.

Per stage: the counts, what is missing (not planned yet), what is blocked (pending, but
waiting for a failed input: no run will do it until that input is retried), the recent
rate and an ETA over what a run can still do (never the blocked partitions, never what
lies outside the selection), and whether the stage is stalled and why. Per resource:
what the workers running it say it is doing (rate, pause, circuit, quota). Per worker:
alive or dead. Runs whose worker died without a word are ``lost``, not ``running``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from backfill.clock import format_duration
from backfill.estimate import limit_floors
from backfill.job import Job, Stage
from backfill.ledger import FailureGroup, Ledger, RunRecord, StageCounts, WorkerRecord
from backfill.partitions import Selection
from backfill.runner import worker_is_dead

__all__ = [
    "Report",
    "ResourceReport",
    "RunReport",
    "RunSummary",
    "StageReport",
    "WorkerReport",
    "build_report",
    "run_reports",
    "stage_counts",
]

# Nothing finished for this long (and for five times the usual gap), with work left and
# a worker alive: the stage is stalled.
STALL_AFTER = 30.0


@dataclass(frozen=True, slots=True)
class ResourceReport:
    """What a resource is doing, as the live workers using it last said."""

    name: str
    declared: str | None
    rate: float | None  # requests/s it runs at (under the declared rate when learned)
    circuit: str  # closed, open or probing
    circuit_since: float | None  # epoch seconds
    paused_until: float | None
    pause_reason: str | None
    quota_until: float | None
    quotas: tuple[str, ...]
    requests: int
    rate_limited: int

    def holding(self, now: float) -> str | None:
        """Why it holds requests back now, in a sentence; None when it does not."""
        if self.circuit != "closed" and self.circuit_since is not None:
            since = datetime.fromtimestamp(self.circuit_since, UTC).strftime("%H:%M:%S")
            return f"{self.name} circuit open since {since} UTC"
        if self.quota_until is not None and self.quota_until > now:
            resumes = datetime.fromtimestamp(self.quota_until, UTC).strftime("%H:%M UTC")
            spent = ", ".join(self.quotas) or "quota"
            left = format_duration(self.quota_until - now)
            return f"{self.name} quota used up ({spent}): resumes {resumes} (in {left})"
        if self.paused_until is not None and self.paused_until > now:
            left = format_duration(self.paused_until - now)
            return f"{self.name} paused ({self.pause_reason or 'asked to wait'}) for {left}"
        return None

    def wait(self, now: float) -> float | None:
        """Seconds until it lets requests go again, when known (a pause, a quota)."""
        ends = [t for t in (self.quota_until, self.paused_until) if t is not None and t > now]
        return max(ends) - now if ends and self.circuit == "closed" else None


@dataclass(frozen=True, slots=True)
class StageReport:
    name: str
    total: int  # partitions of the selection, planned or not
    done: int
    empty: int
    failed: int
    pending: int  # planned, not leased, not blocked
    leased: int  # held by a worker (being run, or claimed to be run next)
    blocked: int  # pending, but waiting for a failed input
    missing: int  # not planned yet
    records: int
    rate: float | None  # partitions/s lately; None when unknown or stalled
    eta: float | None  # seconds; None when unknown
    stalled: str | None  # "stalled 4m12s: api circuit open since 03:12:05 UTC" or None
    example_blocked: str | None = None  # "2013-01-05 waits for failed fetch 2013-01-05"

    @property
    def finished(self) -> int:
        return self.done + self.empty + self.failed

    @property
    def left(self) -> int:
        """What a run can still do: pending, leased and not yet planned."""
        return self.pending + self.leased + self.missing


@dataclass(frozen=True, slots=True)
class WorkerReport:
    id: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    finished: int
    dead: bool


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _count(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What one run did, as stored with its record (``counts["stats"]["run"]`` and
    ``counts["elapsed"]``); a figure the run did not record (an older backfill, a run
    killed before its end) is None."""

    partitions: int | None = None
    records: int | None = None
    requests: int | None = None
    retries: int | None = None
    rate_limited: int | None = None
    p50: float | None = None
    p95: float | None = None
    max: float | None = None
    elapsed: float | None = None

    @classmethod
    def of(cls, counts: Any) -> RunSummary:
        """The summary in a run record's ``counts``, whatever shape an older run stored."""
        if not isinstance(counts, Mapping):
            return cls()
        stats = counts.get("stats")
        run = stats.get("run") if isinstance(stats, Mapping) else None
        run = run if isinstance(run, Mapping) else {}
        return cls(
            partitions=_count(run.get("partitions")),
            records=_count(run.get("records")),
            requests=_count(run.get("requests")),
            retries=_count(run.get("retries")),
            rate_limited=_count(run.get("rate_limited")),
            p50=_number(run.get("p50")),
            p95=_number(run.get("p95")),
            max=_number(run.get("max")),
            elapsed=_number(counts.get("elapsed")),
        )


@dataclass(frozen=True, slots=True)
class RunReport:
    """A run as people should see it: ``lost`` when it says running but its worker is
    gone (killed with SIGKILL, its machine down)."""

    record: RunRecord
    status: str
    heartbeat_at: float | None

    @property
    def summary(self) -> RunSummary:
        """The run's own figures (partitions, records, requests, percentiles...)."""
        return RunSummary.of(self.record.counts)


@dataclass(frozen=True, slots=True)
class Report:
    job: str
    at: float
    stages: tuple[StageReport, ...]
    resources: tuple[ResourceReport, ...]
    workers: tuple[WorkerReport, ...]
    failures: tuple[FailureGroup, ...] = ()
    runs: tuple[RunReport, ...] = field(default=())

    @property
    def dead_workers(self) -> int:
        return sum(1 for w in self.workers if w.dead)


def _resources(workers: Iterable[WorkerRecord], dead: set[str]) -> tuple[ResourceReport, ...]:
    """Each resource's state from the live workers' last words (the most telling one
    when several workers say different things: an open circuit, then the longest wait)."""
    merged: dict[str, dict[str, Any]] = {}
    for worker in workers:
        if worker.id in dead or not worker.resources:
            continue
        try:
            states = json.loads(worker.resources)
        except ValueError:
            continue
        if not isinstance(states, dict):
            continue
        for name, state in states.items():
            if not isinstance(state, dict):
                continue
            old = merged.get(name)
            if old is None:
                merged[name] = dict(state, requests=state.get("requests") or 0)
                merged[name]["rate_limited"] = state.get("rate_limited") or 0
                continue
            old["requests"] += state.get("requests") or 0
            old["rate_limited"] += state.get("rate_limited") or 0
            if state.get("circuit") != "closed" and old.get("circuit") == "closed":
                old["circuit"], old["circuit_since"] = state["circuit"], state.get("circuit_since")
            for key in ("paused_until", "quota_until"):
                if (state.get(key) or 0) > (old.get(key) or 0):
                    old[key] = state[key]
                    if key == "paused_until":
                        old["pause_reason"] = state.get("pause_reason")
    result = []
    for name, s in sorted(merged.items()):
        result.append(
            ResourceReport(
                name=name,
                declared=s.get("declared"),
                rate=s.get("rate"),
                circuit=str(s.get("circuit") or "closed"),
                circuit_since=s.get("circuit_since"),
                paused_until=s.get("paused_until"),
                pause_reason=s.get("pause_reason"),
                quota_until=s.get("quota_until"),
                quotas=tuple(s.get("quotas") or ()),
                requests=int(s.get("requests") or 0),
                rate_limited=int(s.get("rate_limited") or 0),
            )
        )
    return tuple(result)


def _expected(stage: Stage, selection: Selection | None) -> int:
    # Discovered partitions are declared by being found: the ledger holds them all, so
    # none is missing from it (coverage shows the discoverers that have not run).
    if selection is None or stage.reference or stage.discovered_from is not None:
        return len(stage.partitions)
    return sum(1 for _ in stage.partitions.partitions(selection))


def stage_counts(
    job: Job, ledger: Ledger, stages: Sequence[Stage], selection: Selection | None
) -> dict[str, tuple[StageCounts, int]]:
    """Per stage: the ledger's counts and how many partitions of the selection are
    missing from it (not planned yet): the one place "missing" is computed."""
    counts = ledger.counts(job.name, [s.name for s in stages], selection)
    return {
        s.name: (counts[s.name], max(0, _expected(s, selection) - counts[s.name].total))
        for s in stages
    }


def _own_wait(resources: Sequence[ResourceReport], name: str | None, now: float) -> float | None:
    """How long the resource ``name`` holds requests back, when it does for a known
    time (a quota, a pause); None otherwise."""
    for r in resources:
        if r.name == name and r.holding(now) is not None:
            return r.wait(now)
    return None


def build_report(
    job: Job,
    ledger: Ledger,
    stages: Sequence[Stage] | None = None,
    selection: Selection | None = None,
    *,
    now: float | None = None,
    rates: Mapping[str, float | None] | None = None,
    blocked: bool = True,
    failures: bool = True,
    runs: int = 0,
) -> Report:
    """The report of ``stages`` (every stage) in ``selection`` (everything).

    ``rates`` are recent partitions/s per stage measured by the caller (the dashboard,
    from its own samples); without them the rate is the last run's. ``blocked`` counts
    the partitions that wait for a failed input (a scan of the pending ones of stages
    whose inputs failed); ``runs`` adds the last runs, ``lost`` where their worker died.
    """
    now = time.time() if now is None else now
    chosen = list(stages) if stages is not None else list(job.stages.values())
    names = [s.name for s in chosen]
    totals = stage_counts(job, ledger, chosen, selection)
    counts: Mapping[str, StageCounts] = {name: c for name, (c, _) in totals.items()}
    workers = ledger.workers(job.name)
    dead = {w.id for w in workers if worker_is_dead(w, now=now, lease_seconds=job.lease_seconds)}
    alive = len(workers) - len(dead)
    resources = _resources(workers, dead)
    holdups = [h for r in resources if (h := r.holding(now)) is not None]
    waits = [r.wait(now) for r in resources if r.holding(now) is not None]
    known_wait = max((w for w in waits if w is not None), default=None) if waits else None
    if any(w is None for w in waits):
        known_wait = None
    floors = limit_floors(job)
    # Stages upstream of the reported ones, not reported themselves, count for blocking.
    others = sorted({u for s in chosen for u in job.upstream(s.name)} - set(names))
    upstream_counts = ledger.counts(job.name, others, None, recent=False) if others else {}
    failed_stages = {n for n, c in {**counts, **upstream_counts}.items() if c.failed}
    stage_reports = []
    for stage in chosen:
        c, missing = totals[stage.name]
        blocked_keys: dict[str, str] = {}
        upstream = set(job.upstream(stage.name))
        if blocked and stage.needs and c.pending and upstream & failed_stages:
            blocked_keys = ledger.blocked_keys(
                job.name,
                stage.name,
                job.dependencies(stage),
                None if stage.reference else selection,
            )
        n_blocked = len(blocked_keys)
        pending = max(0, c.pending - n_blocked)
        left = pending + c.running + missing
        rate = (rates or {}).get(stage.name) if rates is not None else c.rate
        stalled = None
        last = c.last_finished_at
        if left and alive and last is not None:
            usual = 1.0 / c.rate if c.rate else 0.0
            quiet = now - last
            if quiet > max(STALL_AFTER, 5.0 * usual):
                why = f": {'; '.join(holdups)}" if holdups else ""
                stalled = f"stalled {format_duration(quiet)}{why}"
        floor = floors.get(stage.name)
        pace = c.rate if stalled is not None else rate
        if stalled is None and not left:
            eta = 0.0
        elif pace and (stalled is None or known_wait is not None):
            eta = (0.0 if stalled is None else known_wait or 0.0) + left / pace
        elif (own_wait := _own_wait(resources, stage.resource, now)) is not None and floor:
            # No pace here yet (a run restarted into a quota the one before spent; the
            # dashboard's own samples saw nothing finish): the wait of the stage's own
            # resource, then the rest at the pace the ledger measured, never faster than
            # its limits allow.
            measured = left / c.rate if c.rate else 0.0
            eta = own_wait + max(measured, floor(left))
        else:
            eta = None
        if stalled is not None:
            rate = None
        if eta is not None and floor is not None and left:
            # Never less than the limits need: a quota's window spent in a burst makes
            # a recent rate that would end in minutes what takes hours.
            eta = max(eta, floor(left))
        example = None
        if blocked_keys:
            key, blocker = min(blocked_keys.items())
            example = f"{key} waits for failed {blocker}"
        stage_reports.append(
            StageReport(
                name=stage.name,
                total=c.total + missing,
                done=c.done,
                empty=c.empty,
                failed=c.failed,
                pending=pending,
                leased=c.running,
                blocked=n_blocked,
                missing=missing,
                records=c.records,
                rate=rate,
                eta=eta if eta is None or math.isfinite(eta) else None,
                stalled=stalled,
                example_blocked=example,
            )
        )
    groups = tuple(ledger.failure_groups(job.name, names, selection)) if failures else ()
    worker_reports = tuple(
        WorkerReport(w.id, w.host, w.pid, w.started_at, w.heartbeat_at, w.finished, w.id in dead)
        for w in workers
    )
    return Report(
        job=job.name,
        at=now,
        stages=tuple(stage_reports),
        resources=resources,
        workers=worker_reports,
        failures=groups,
        runs=run_reports(job, ledger, limit=runs, now=now) if runs else (),
    )


def run_reports(
    job: Job, ledger: Ledger, *, limit: int = 20, now: float | None = None
) -> tuple[RunReport, ...]:
    """The last runs, a run that says ``running`` shown ``lost`` when its worker is dead
    (or gone from the record and its process from this host)."""
    now = time.time() if now is None else now
    records = ledger.runs(job.name, limit=limit)
    workers = {w.id: w for w in ledger.workers(job.name, active_only=False)}
    result = []
    for run in records:
        status, beat = run.status, None
        if run.status == "running":
            worker = next((w for w in workers.values() if w.id.endswith(f":{run.id}")), None)
            if worker is not None:
                beat = worker.heartbeat_at
                gone = worker.stopped_at is not None or worker_is_dead(
                    worker, now=now, lease_seconds=job.lease_seconds
                )
            else:
                # A run recorded without its worker (an older backfill): its process.
                probe = WorkerRecord(
                    run.id, run.job, run.host, run.pid, run.started_at, run.started_at, None
                )
                gone = worker_is_dead(probe, now=now, lease_seconds=job.lease_seconds)
            if gone:
                status = "lost"
        result.append(RunReport(run, status, beat))
    return tuple(result)
