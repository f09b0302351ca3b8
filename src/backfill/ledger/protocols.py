"""What the engine, the reports and a sink's transaction ask of a ledger.

The engine runs partitions through :class:`WorkLedger`; every report (status, coverage,
the dashboard, /metrics) reads through :class:`ReportLedger`; :class:`Ledger` is both,
plus the operator's maintenance (requeue, reset). :class:`SharedCompletion` is the
exactly-once path: a ledger that records done-marks inside a sink's own transaction
when both live in one database.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from backfill.ledger.identity import DatabaseIdentity
from backfill.ledger.models import (
    Claim,
    CoverageRow,
    Dependency,
    FailureGroup,
    LedgerEntry,
    Outcome,
    ResetCounts,
    RunRecord,
    StageCounts,
    Status,
    WindowCount,
    WorkerRecord,
)

if TYPE_CHECKING:
    from backfill.ratelimit.fleetpace import Report
from backfill.partitions import Order, Partition, Selection

__all__ = [
    "Completer",
    "Fence",
    "Ledger",
    "ReportLedger",
    "SharedCompletion",
    "SharedLimits",
    "WorkLedger",
]

# Records an owner's outcomes on a connection to the ledger's own database, inside a
# transaction someone else (a sink) has open; returns the ids it applied, i.e. those
# whose lease the owner still held. A ledger offers one through
# :meth:`SharedCompletion.completer` for a sink's database: then the partitions' rows
# and done-marks commit together.
Completer = Callable[[Any, str, Sequence["Outcome"], float], set[int]]

# Proves, inside a transaction someone else (a sink) has open on the ledger's own
# database, that an owner still holds these leases ((id, claims) pairs, see
# :meth:`Ledger.begin`); returns the ids it holds, and keeps them locked until that
# transaction ends. A sink writes a partition's rows only under its fence.
Fence = Callable[[Any, str, Sequence[tuple[int, int]]], set[int]]


class WorkLedger(Protocol):
    """What the engine needs from a state store to run partitions. Every method is a
    short transaction."""

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

    def complete(self, owner: str, outcomes: Sequence[Outcome], *, now: float) -> int:
        """Record outcomes of partitions ``owner`` still holds; return how many applied."""

    def save_checkpoint(self, owner: str, claim_id: int, checkpoint: str | None) -> bool:
        """Store where a partition ``owner`` holds should resume; False if not held."""

    def renew(self, owner: str, *, lease_seconds: float, now: float) -> int:
        """Push back the lease expiry of everything ``owner`` holds."""

    def release_owner(self, owner: str, *, lost: bool = False) -> int:
        """Return every partition held by ``owner`` to the pool.

        ``lost``: the owner died holding them. Each it had begun (see :meth:`begin`)
        then counts a lost lease, as an expired one does, and one lost
        ``MAX_LOST_LEASES`` times in a row is failed (category ``worker_lost``) instead.
        """

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

    def register_worker(self, worker: WorkerRecord) -> None: ...

    def heartbeat(self, worker_id: str, *, now: float, resources: str | None = None) -> None:
        """The worker is alive (active again, if a reaper took it for dead while it
        stalled); ``resources`` (JSON), when given, replaces the state of its resources
        on record."""

    def stop_worker(self, worker_id: str, *, now: float) -> None: ...

    def close(self) -> None: ...


class ReportLedger(Protocol):
    """What reports read from a state store; nothing here writes."""

    url: str

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

    def coverage_rows(
        self, job: str, stage: str, selection: Selection | None = None
    ) -> Iterator[CoverageRow]:
        """Every recorded partition of ``stage`` in the selection, in window order."""

    def window_counts(self, job: str, stage: str) -> list[WindowCount]:
        """Per window and status, how many partitions of ``stage`` are recorded, in window
        order: one grouped scan, whose answer grows with the windows, not the partitions."""

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

    def request_stats(self, job: str, stage: str) -> tuple[int, float | None]:
        """How many finished partitions recorded requests, and their average."""

    def runs(self, job: str, limit: int = 20) -> list[RunRecord]: ...

    def workers(self, job: str, *, active_only: bool = True) -> list[WorkerRecord]: ...

    def resource_states(self, job: str, *, limit: int = 20) -> list[tuple[float, str]]:
        """What the resources of the job's ``limit`` latest workers were doing: when
        each last beat, and the JSON it left, the latest first."""

    def close(self) -> None: ...


class Ledger(WorkLedger, ReportLedger, Protocol):
    """A whole state store: the engine's operations, the reports' reads, and the
    operator's maintenance."""

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
        keep: Collection[str] = (),
    ) -> ResetCounts:
        """Forget partitions (any status but running). In the same transaction, the
        finished partitions of the ``downstream`` stages (name: its dependencies) whose
        inputs include a forgotten partition are marked stale, as :meth:`mark_stale`
        marks them; once forgotten, nothing would tie them to it any more. The
        partitions of the stages in ``keep`` (discovered ones: only their discoverer
        could plan them again) are returned to pending, with their params, instead."""


@runtime_checkable
class SharedCompletion(Protocol):
    """A ledger that can record outcomes and prove leases inside a sink's transaction,
    when the sink's database (its identity) is the ledger's own: then a partition's rows
    and its done-mark commit together, exactly once."""

    #: The database the ledger lives in; None where no other connection reaches it.
    identity: DatabaseIdentity | None

    def completer(self, database: DatabaseIdentity) -> Completer | None:
        """Records done-marks on a connection to ``database``; None if it is not ours."""

    def fence(self, database: DatabaseIdentity) -> Fence | None:
        """Proves leases on a connection to ``database``; None if it is not ours."""


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
        margin: float = 0.0,
        horizon: float = math.inf,
        learn: Report | None = None,
    ) -> tuple[list[float], float, float, float]:
        """Book ``count`` starts (see :func:`backfill.ratelimit.book_block`), within every
        quota of (count, period seconds) widened by ``margin``, after a stored pause cut
        to ``max_pause`` seconds, none due more than ``horizon`` seconds ahead, with
        ``learn`` at the pace the schedule learned from what the booking worker reports;
        (when each is due, paused until) in seconds from the database's now, that now
        (epoch seconds on the database's clock) and the rate booked at. See
        :func:`backfill.ledger.limits.take_starts`."""

    def pause_resource(self, job: str, resource: str, seconds: float) -> None: ...

    def resume_resource(self, job: str, resource: str) -> float | None:
        """End a stored pause now; the seconds it still had, None if there was none."""

    def quota_use(
        self, job: str, resource: str, quotas: Sequence[tuple[int, float]]
    ) -> Mapping[str, Any]:
        """Per quota, what its current window has spent (a
        :class:`backfill.ledger.limits.QuotaUse`); reads only."""
