"""The ledger's value objects: what it records, and what it answers."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import Any

from backfill._quickinit import quick_init
from backfill.errors import LedgerError
from backfill.partitions import Partition

__all__ = [
    "MAX_LOST_LEASES",
    "Claim",
    "CoverageRow",
    "Dependency",
    "FailureGroup",
    "LedgerEntry",
    "NoState",
    "Outcome",
    "ResetCounts",
    "RunRecord",
    "StageCounts",
    "Status",
    "WindowCount",
    "WorkerRecord",
    "dims_from_json",
    "dims_json",
    "params_json",
]


class NoState(LedgerError):
    """Nothing has run on this state yet: no SQLite file, or no backfill tables in the
    database."""


class Status(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    EMPTY = "empty"
    FAILED = "failed"


# Made per partition: quick_init sets its slots (see backfill._quickinit).
@quick_init
@dataclass(frozen=True, slots=True)
class Claim:
    """A partition leased to one owner. ``id`` is the ledger's handle for completing it."""

    id: int
    stage: str
    key: str
    start: date
    end: date
    dims: tuple[tuple[str, str], ...]
    attempts: int
    claims: int
    checkpoint: str | None = None
    # JSON: what a discovered partition's discoverer found about it.
    params: str | None = None

    def partition(self, grain: Any, tz: str | None = None) -> Partition:
        if self.params:
            params = json.loads(self.params)
            return Partition(self.key, self.start, self.end, grain, self.dims, tz, params)
        return Partition(self.key, self.start, self.end, grain, self.dims, tz)


@dataclass(frozen=True, slots=True)
class Dependency:
    """What must be finished (done or empty) upstream before a partition may be claimed.

    ``whole``: every partition of ``stage``. Otherwise the upstream partitions whose
    windows overlap the partition's window widened back by ``lookback`` units of the
    upstream ``grain`` (day, week, month, year), with equal values of ``dims``.
    ``span_days`` is the longest upstream window minus one day (it bounds index scans).
    Upstream partitions that were never planned are not waited for.
    """

    stage: str
    whole: bool = False
    lookback: int = 0
    grain: str = "day"
    span_days: int = 0
    dims: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CoverageRow:
    """One recorded partition, as coverage reports read it."""

    key: str
    start: date
    end: date
    dims: tuple[tuple[str, str], ...]
    status: Status
    records: int | None
    error_category: str | None
    error_message: str | None
    finished_at: float | None
    checks: str | None = None  # JSON, see backfill.checks


@dataclass(frozen=True, slots=True)
class WindowCount:
    """How many partitions of one window (every dimension value together) are in one
    status, as calendars read them. ``stale``: pending again because an input was redone."""

    start: date
    end: date
    status: Status
    count: int
    stale: bool = False


# Made per partition: quick_init sets its slots (see backfill._quickinit).
@quick_init
@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to a claimed partition.

    ``status`` PENDING releases it to the pool (interrupted, or the run stopped on a
    fatal error) without counting the failure against the partition.
    """

    id: int
    status: Status
    attempts: int = 1
    records: int = 0
    duration: float = 0.0
    error_category: str | None = None
    error_message: str | None = None
    requests: int = 0
    # The partition's check results (JSON), see backfill.checks.
    checks: str | None = None


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    stage: str
    key: str
    status: Status
    attempts: int
    records: int | None
    duration: float | None
    error_category: str | None
    error_message: str | None
    run_id: str | None
    finished_at: float | None


@dataclass(frozen=True, slots=True)
class ResetCounts:
    """What :meth:`Ledger.reset` did: partitions forgotten, and finished partitions of
    downstream stages marked stale because they were computed from one of them."""

    removed: int
    stale: int = 0


@dataclass(frozen=True, slots=True)
class StageCounts:
    """Per-status counts for one stage, plus figures for throughput."""

    stage: str
    pending: int = 0
    running: int = 0
    done: int = 0
    empty: int = 0
    failed: int = 0
    records: int = 0
    # Finished partitions of the most recent run and the span they took, for a rate,
    # and when the last of them finished (epoch seconds): whether it still moves.
    recent_finished: int = 0
    recent_span: float = 0.0
    last_finished_at: float | None = None

    @property
    def total(self) -> int:
        return self.pending + self.running + self.done + self.empty + self.failed

    @property
    def finished(self) -> int:
        return self.done + self.empty + self.failed

    @property
    def rate(self) -> float | None:
        """Partitions per second over the most recent run, when it can be known."""
        if self.recent_finished < 2 or self.recent_span <= 0:
            return None
        return self.recent_finished / self.recent_span


@dataclass(frozen=True, slots=True)
class FailureGroup:
    stage: str
    category: str
    count: int
    example_key: str
    example_message: str


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: str
    job: str
    started_at: float
    host: str
    pid: int
    command: str
    options: Mapping[str, Any] = field(default_factory=dict)
    finished_at: float | None = None
    status: str = "running"
    exit_code: int | None = None
    counts: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    id: str
    job: str
    host: str
    pid: int
    started_at: float
    heartbeat_at: float
    stopped_at: float | None
    # Partitions it finished (done, empty or failed), as recorded by ``complete``.
    finished: int = 0
    # What its resources were doing at its last heartbeat (JSON: name -> state, see
    # Resource.state): rate, pauses, circuit, quota waits.
    resources: str | None = None


# A partition whose lease is lost this many times in a row (its worker died or hung while
# holding it) is failed as worker_lost, not handed out again: it may be what kills them.
MAX_LOST_LEASES = 3


def dims_json(dims: tuple[tuple[str, str], ...]) -> str | None:
    return json.dumps(dict(dims), separators=(",", ":")) if dims else None


def dims_from_json(text: str | None) -> tuple[tuple[str, str], ...]:
    if not text:
        return ()
    loaded: dict[str, str] = json.loads(text)
    return tuple(loaded.items())


def params_json(params: Mapping[str, Any]) -> str:
    """A discovered partition's params as the ledger keeps them."""
    return json.dumps(dict(params), separators=(",", ":"), sort_keys=True)
