"""The ledger: the durable record of every (job, stage, partition) and every run.

The engine speaks to it only through :class:`Ledger`; SQLite is the embedded adapter,
PostgreSQL the shared one for a fleet of workers, and every adapter passes the same
contract suite (``tests/ledger_contract.py``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from backfill.errors import ConfigError, LedgerError
from backfill.partitions import Order, Partition, Selection

__all__ = [
    "DEFAULT_STATE_URL",
    "Claim",
    "Completer",
    "CoverageRow",
    "Dependency",
    "FailureGroup",
    "Fence",
    "Ledger",
    "LedgerEntry",
    "NoState",
    "Outcome",
    "ResetCounts",
    "RunRecord",
    "SharedLimits",
    "StageCounts",
    "Status",
    "WindowCount",
    "WorkerRecord",
    "open_ledger",
    "open_reader",
]

DEFAULT_STATE_URL = "sqlite:///.backfill/state.db"


class NoState(LedgerError):
    """Nothing has run on this state yet: no SQLite file, or no backfill tables in the
    database."""


class Status(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    EMPTY = "empty"
    FAILED = "failed"


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

    def partition(self, grain: Any) -> Partition:
        return Partition(self.key, self.start, self.end, grain, self.dims)


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


# Records an owner's outcomes on a connection to the ledger's own database, inside a
# transaction someone else (a sink) has open; returns the ids it applied, i.e. those
# whose lease the owner still held. A ledger may offer one through an optional method
# ``completer(database) -> Completer | None`` for a sink's ``database``: then the
# partitions' rows and done-marks commit together.
Completer = Callable[[Any, str, Sequence["Outcome"], float], set[int]]

# Proves, inside a transaction someone else (a sink) has open on the ledger's own
# database, that an owner still holds these leases ((id, claims) pairs, see
# :meth:`Ledger.begin`); returns the ids it holds, and keeps them locked until that
# transaction ends. A sink writes a partition's rows only under its fence.
Fence = Callable[[Any, str, Sequence[tuple[int, int]]], set[int]]


class Ledger(Protocol):
    """What the engine needs from a state store. Every method is a short transaction."""

    url: str

    def plan(
        self,
        job: str,
        stage: str,
        partitions: Iterable[Partition],
        *,
        fingerprint: str | None = None,
    ) -> int:
        """Insert the partitions that are not yet recorded; return how many were new.

        ``fingerprint`` names the whole set (e.g. the spec's repr): once a plan with it
        has gone through to the end, planning the same fingerprint again inserts nothing
        and reads nothing but the stage's row, so a worker joining a run of a million
        partitions starts at once. ``reset`` forgets it.
        """

    def claim(
        self,
        job: str,
        stage: str,
        owner: str,
        *,
        limit: int,
        lease_seconds: float,
        now: float,
        run_id: str,
        selection: Selection | None = None,
        order: Order = Order.OLDEST,
        needs: Sequence[Dependency] = (),
        suspects: bool = False,
        scan: int | None = None,
    ) -> list[Claim]:
        """Lease up to ``limit`` pending partitions to ``owner``; with ``needs``, only
        those whose upstream partitions are finished.

        ``scan`` (with ``needs``): look for ready partitions among the first ``scan``
        pending ones in claim order only. A stage that has caught up with its inputs
        then costs ``scan`` index probes per claim instead of one per pending partition;
        an empty answer no longer proves that none is ready, so callers claim without it
        before they conclude that.

        Partitions whose lease expired go back to the pool first, as *suspects* (their
        worker died or hung holding them, maybe because of them), and one that has lost
        ``MAX_LOST_LEASES`` leases in a row is failed as ``worker_lost``. Suspects are
        left out unless ``suspects`` is true, which claims only them: those lost once,
        up to ``limit`` together, else a single one lost more often. The engine runs
        such a claim with nothing else of the stage and records it before claiming
        again, so the partition that kills its workers is soon alone when it does, and
        those that merely shared its batch finish.
        """

    def mark_stale(
        self,
        job: str,
        stage: str,
        needs: Sequence[Dependency],
        selection: Selection | None = None,
    ) -> int:
        """Return finished partitions whose inputs are being redone (pending or running
        upstream) or were redone after them to pending, marked stale; return how many."""

    def stale_keys(
        self,
        job: str,
        stage: str,
        needs: Sequence[Dependency],
        selection: Selection | None = None,
    ) -> set[str]:
        """Keys of finished partitions that :meth:`mark_stale` would mark."""

    def blocked_keys(
        self,
        job: str,
        stage: str,
        needs: Sequence[Dependency],
        selection: Selection | None = None,
    ) -> dict[str, str]:
        """Pending partitions that wait for a failed upstream partition: key -> its key
        as ``STAGE KEY``."""

    def coverage_rows(
        self, job: str, stage: str, selection: Selection | None = None
    ) -> Iterator[CoverageRow]:
        """Every recorded partition of ``stage`` in the selection, in window order."""

    def window_counts(self, job: str, stage: str) -> list[WindowCount]:
        """Per window and status, how many partitions of ``stage`` are recorded, in window
        order: one grouped scan, whose answer grows with the windows, not the partitions."""

    def complete(self, owner: str, outcomes: Sequence[Outcome], *, now: float) -> int:
        """Record outcomes of partitions ``owner`` still holds; return how many applied."""

    def begin(self, owner: str, leases: Sequence[tuple[int, int]]) -> set[int]:
        """Mark partitions ``owner`` is about to run as begun; return the ids it still
        holds.

        ``leases`` are (claim id, ``Claim.claims``) pairs: the count of leases granted
        is the lease's fencing token, so a worker that was paused past its lease (and
        whose partition went to another worker, or back to itself in a later claim)
        gets nothing back and must not run or write the partition. Only begun
        partitions count a lost lease when their holder dies (see ``release_owner``):
        the unstarted rest of a claimed batch goes back to the pool unsuspected.
        """

    def save_checkpoint(self, owner: str, claim_id: int, checkpoint: str | None) -> bool:
        """Store where a partition ``owner`` holds should resume; False if not held."""

    def request_stats(self, job: str, stage: str) -> tuple[int, float | None]:
        """How many finished partitions recorded requests, and their average."""

    def renew(self, owner: str, *, lease_seconds: float, now: float) -> int:
        """Push back the lease expiry of everything ``owner`` holds."""

    def release_owner(self, owner: str, *, lost: bool = False) -> int:
        """Return every partition held by ``owner`` to the pool.

        ``lost``: the owner died holding them. Each it had begun (see :meth:`begin`)
        then counts a lost lease, as an expired one does, and one lost
        ``MAX_LOST_LEASES`` times in a row is failed (category ``worker_lost``) instead.
        """

    def counts(
        self,
        job: str,
        stages: Sequence[str],
        selection: Selection | None = None,
        *,
        recent: bool = True,
    ) -> dict[str, StageCounts]:
        """Partitions per status and records, per stage. ``recent``: also the finished
        partitions and span of the stage's most recent run (for a rate); two more scans
        of the stage, which a runner does without."""

    def unfinished(
        self,
        job: str,
        stage: str,
        selection: Selection | None = None,
        *,
        running_only: bool = False,
        needs: Sequence[Dependency] = (),
    ) -> bool:
        """Whether some partition of ``stage`` (in ``selection``) is pending or running
        (only running, with ``running_only``). Two index probes, however large the
        stage: workers ask it while they wait for each other.

        With the stage's ``needs``, a pending partition counts only when its inputs are
        all finished, i.e. when a worker of the stage could claim it now: one waiting
        for a failed input, or for inputs nobody runs, is no work to wait for."""

    def failure_groups(
        self, job: str, stages: Sequence[str], selection: Selection | None = None
    ) -> list[FailureGroup]: ...

    def entries(
        self,
        job: str,
        stage: str,
        *,
        status: Status | None = None,
        selection: Selection | None = None,
        limit: int = 100,
    ) -> list[LedgerEntry]: ...

    def requeue(
        self,
        job: str,
        stages: Sequence[str],
        statuses: Sequence[Status] = (Status.FAILED,),
        selection: Selection | None = None,
    ) -> int:
        """Return finished partitions of these statuses to pending; return how many."""

    def reset(
        self,
        job: str,
        stages: Sequence[str],
        selection: Selection | None = None,
        *,
        downstream: Mapping[str, Sequence[Dependency]] | None = None,
    ) -> ResetCounts:
        """Forget partitions (any status but running). In the same transaction, the
        finished partitions of the ``downstream`` stages (name: its dependencies) whose
        inputs include a forgotten partition are marked stale, as :meth:`mark_stale`
        marks them; once forgotten, nothing would tie them to it any more."""

    def start_run(self, run: RunRecord) -> None: ...

    def finish_run(
        self,
        run_id: str,
        *,
        now: float,
        status: str,
        exit_code: int,
        counts: Mapping[str, Any],
    ) -> None: ...

    def runs(self, job: str, limit: int = 20) -> list[RunRecord]: ...

    def register_worker(self, worker: WorkerRecord) -> None: ...

    def heartbeat(self, worker_id: str, *, now: float, resources: str | None = None) -> None:
        """The worker is alive; ``resources`` (JSON), when given, replaces the state of
        its resources on record."""

    def stop_worker(self, worker_id: str, *, now: float) -> None: ...

    def workers(self, job: str, *, active_only: bool = True) -> list[WorkerRecord]: ...

    def close(self) -> None: ...


@runtime_checkable
class SharedLimits(Protocol):
    """A ledger that also holds resource schedules: quotas across restarts, rates across
    the processes that share them.

    ``fleet``: workers on other machines may share the ledger, so every resource's rate
    is kept in it (else only those of resources declared ``shared=True``).
    """

    fleet: bool

    def take_starts(
        self,
        job: str,
        resource: str,
        *,
        count: int,
        interval: float,
        tolerance: float,
        quotas: Sequence[tuple[int, float]] = (),
        max_pause: float = math.inf,
    ) -> tuple[list[float], float, float]:
        """Book ``count`` starts (see :func:`backfill.ratelimit.book_block`), within every
        quota of (count, period seconds), after a stored pause cut to ``max_pause``
        seconds; (when each is due, paused until) in seconds from the database's now, and
        that now (epoch seconds on the database's clock)."""

    def pause_resource(self, job: str, resource: str, seconds: float) -> None: ...

    def resume_resource(self, job: str, resource: str) -> float | None:
        """End a stored pause now; the seconds it still had, None if there was none."""

    def quota_use(
        self, job: str, resource: str, quotas: Sequence[tuple[int, float]]
    ) -> Mapping[str, Any]:
        """Per quota, what its current window has spent (a
        :class:`backfill.ledger.limits.QuotaUse`); reads only."""


def dims_json(dims: tuple[tuple[str, str], ...]) -> str | None:
    return json.dumps(dict(dims), separators=(",", ":")) if dims else None


def dims_from_json(text: str | None) -> tuple[tuple[str, str], ...]:
    if not text:
        return ()
    loaded: dict[str, str] = json.loads(text)
    return tuple(loaded.items())


def open_ledger(url: str | None = None, *, create: bool = True) -> Ledger:
    """Open the state store named by ``url`` (default: ``.backfill/state.db`` here).

    ``postgresql://USER:PASSWORD@HOST:PORT/DATABASE`` opens the shared PostgreSQL ledger
    (``postgres://`` works too). A new state is created and an older one migrated.
    With ``create=False`` the state is opened read-only (see :func:`open_reader`), and
    where there is none yet an empty in-memory ledger stands in, so read-only commands
    leave no trace.
    """
    from backfill.ledger.sqlite import SQLiteLedger

    if not create:
        try:
            return open_reader(url)
        except NoState:
            return SQLiteLedger(":memory:", url=url or DEFAULT_STATE_URL)
    url = url or DEFAULT_STATE_URL
    scheme, target = _target(url)
    if scheme == "postgres":
        from backfill.ledger.postgres import PostgresLedger

        return PostgresLedger(url)
    if target == ":memory:":
        return SQLiteLedger(":memory:", url=url)
    file = Path(target)
    if url == DEFAULT_STATE_URL:
        file.parent.mkdir(parents=True, exist_ok=True)
    return SQLiteLedger(file, url=url)


def open_reader(url: str | None = None) -> Ledger:
    """Open the state store named by ``url`` for reading only: nothing is created,
    migrated or written, in SQLite (the file is opened read-only) as in PostgreSQL
    (every transaction is read-only).

    Raises :class:`NoState` when nothing has run on it yet (no SQLite file, or a
    database without the backfill tables), and a :class:`LedgerError` when it is not a
    backfill ledger, or one of another schema version (an older one is upgraded by the
    next ``backfill run``, never by a reader).
    """
    from backfill.ledger.sqlite import SQLiteLedger

    url = url or DEFAULT_STATE_URL
    scheme, target = _target(url)
    if scheme == "postgres":
        from backfill.ledger.postgres import PostgresLedger

        return PostgresLedger(url, read_only=True)
    if target == ":memory:":
        return SQLiteLedger(":memory:", url=url)
    return SQLiteLedger(Path(target), url=url, read_only=True)


def _target(url: str) -> tuple[str, str]:
    """("postgres", url) or ("sqlite", file path or ``:memory:``) for a state URL."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "sqlite", "/" + url
    if scheme in ("postgresql", "postgres"):
        return "postgres", url
    if scheme == "sqlite":
        path = rest[1:] if rest.startswith("/") else rest
        return "sqlite", path if path not in ("", ":memory:") else ":memory:"
    raise ConfigError(
        f"unsupported state URL {url.split('://')[0]!r}://...; use sqlite:///PATH "
        "(a file), a plain file path, or postgresql://USER@HOST:PORT/DATABASE"
    )
