"""What to do again: the gaps `run --missing-only` fills and the partitions `retry`
re-runs, worked out from the ledger (read only), then handed back to it as pending with
:meth:`Redo.apply`. The CLI only says what these found and runs the selection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from backfill import coverage
from backfill.job import Job, Stage
from backfill.job.graph import found_by_keys
from backfill.ledger import Ledger, Status
from backfill.partitions import Selection

__all__ = ["Redo", "Requeue", "gaps_to_fill", "to_retry"]


@dataclass(frozen=True, slots=True)
class Requeue:
    """Partitions recorded with one of ``statuses`` that go back to pending."""

    stages: tuple[str, ...]
    statuses: tuple[Status, ...]
    selection: Selection | None


@dataclass(frozen=True, slots=True)
class Redo:
    """A selection of exactly the partitions to run again, what they were, and which
    recorded ones must first go back to pending."""

    job: str
    selection: Selection
    tally: dict[str, int] = field(default_factory=dict)  # state -> partitions
    requeues: tuple[Requeue, ...] = ()

    def apply(self, ledger: Ledger) -> None:
        """Return the failed (or empty) partitions to pending, so a run takes them."""
        for r in self.requeues:
            ledger.requeue(self.job, r.stages, r.statuses, r.selection)

    @property
    def count(self) -> int:
        return sum(self.tally.values())

    def describe(self) -> str:
        """``"3 failed, 12 missing"``."""
        return ", ".join(f"{n:,} {state}" for state, n in sorted(self.tally.items()))


def _narrowed(
    selection: Selection | None, keys: set[str], found: frozenset[str] = frozenset()
) -> Selection:
    base = selection or Selection()
    return Selection(base.start, base.end, frozenset(keys), base.dims, found)


def gaps_to_fill(
    job: Job, ledger: Ledger, stages: Sequence[Stage], selection: Selection | None
) -> Redo | None:
    """The missing, failed and stale partitions of the selection (the failed ones are
    returned to pending by :meth:`Redo.apply`); None when there is no gap."""
    found = coverage.collect(job, ledger, stages, selection, thin=0)
    keys = found.gap_keys()
    wanted: set[str] = set().union(*keys.values()) if keys else set()
    if not wanted:
        return None
    tally: dict[str, int] = {}
    requeues = []
    for stage in stages:
        items = found.partitions[stage.name]
        for p in items:
            if p.key in keys[stage.name]:
                tally[p.state.value] = tally.get(p.state.value, 0) + 1
        failed = {p.key for p in items if p.state is coverage.State.FAILED}
        if failed:
            again = Selection(keys=frozenset(failed))
            requeues.append(Requeue((stage.name,), (Status.FAILED,), again))
    found_by = found_by_keys(job.stages, stages, keys)
    return Redo(job.name, _narrowed(selection, wanted, found_by), tally, tuple(requeues))


def to_retry(
    job: Job,
    ledger: Ledger,
    stages: Sequence[Stage],
    selection: Selection | None,
    statuses: Sequence[Status],
) -> Redo | None:
    """The partitions recorded with one of ``statuses`` (returned to pending by
    :meth:`Redo.apply`), plus the later stages' partitions that wait for them (they run
    with them); None when there are none."""
    keys: set[str] = set()
    retried: set[str] = set()
    tally: dict[str, int] = {}
    for stage in stages:
        for status in statuses:
            found = {
                e.key
                for e in ledger.entries(
                    job.name, stage.name, status=status, selection=selection, limit=10_000_000
                )
            }
            keys |= found
            retried |= {f"{stage.name} {key}" for key in found}
            if found:
                tally[status.value] = tally.get(status.value, 0) + len(found)
    if not keys:
        return None
    for stage in stages:
        if stage.needs:
            blocked = ledger.blocked_keys(job.name, stage.name, job.dependencies(stage), selection)
            keys |= {key for key, blocker in blocked.items() if blocker in retried}
    again = Requeue(tuple(s.name for s in stages), tuple(statuses), selection)
    return Redo(job.name, _narrowed(selection, keys), tally, (again,))
