"""Keeping a job current: its partitions moved on to a new end (``--through yesterday``),
and the newest finished partitions of the stages with ``refresh_last=`` handed back to
pending every run, so late corrections at the source replace their rows (the sinks write
idempotently) and the downstream partitions built on them go stale and run again.

Worked out read-only (:func:`to_refresh`), applied with :meth:`Refresh.apply`; the CLI
only says what was found and runs the job.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta

from backfill.job import Job, Stage
from backfill.ledger import ReportLedger, Status
from backfill.ledger.protocols import Ledger
from backfill.partitions import Partition, Selection
from backfill.partitions.refresh import RefreshWindow

__all__ = ["Refresh", "through", "to_refresh"]

# How far before a spec's end the newest finished partition is looked for: a stage whose
# newest finished partition is older has a gap the run fills anyway, nothing to refresh.
_SEARCH_DAYS = 62


def through(job: Job, end: str | date) -> Job:
    """A copy of ``job`` whose partitions (the job's and each stage's) end at ``end``
    (``yesterday``, ``today`` or a date, in each spec's zone)."""
    moved = copy.copy(job)
    if job.partitions is not None:
        moved.partitions = job.partitions.through(end)
    moved.stages = {
        name: dataclasses.replace(stage, partitions=stage.partitions.through(end))
        for name, stage in job.stages.items()
    }
    return moved


@dataclass(frozen=True, slots=True)
class StageRefresh:
    """The finished partitions of one stage a keep-current run redoes."""

    stage: str
    window: RefreshWindow
    keys: tuple[str, ...]
    first: date | None
    last: date | None

    def describe(self) -> str:
        """``results: 2 finished partition(s) in the last 2 days (2024-03-31..2024-04-01)``"""
        span = f" ({self.first}..{self.last})" if self.keys else ""
        return (
            f"{self.stage}: {len(self.keys):,} finished partition(s) in the last "
            f"{self.window}{span} redone"
        )


@dataclass(frozen=True, slots=True)
class Refresh:
    """What a keep-current run redoes, stage by stage."""

    job: str
    stages: tuple[StageRefresh, ...]

    @property
    def count(self) -> int:
        return sum(len(s.keys) for s in self.stages)

    def apply(self, ledger: Ledger) -> int:
        """Hand the partitions back to pending (their finished downstream partitions go
        stale when the run plans); return how many."""
        n = 0
        for s in self.stages:
            if s.keys:
                selection = Selection(keys=frozenset(s.keys))
                n += ledger.requeue(self.job, (s.stage,), (Status.DONE, Status.EMPTY), selection)
        return n


def _search_days(window: RefreshWindow) -> int:
    if window.days is not None:
        return window.days + _SEARCH_DAYS
    assert window.duration is not None
    return math.ceil(window.duration / timedelta(days=1)) + _SEARCH_DAYS


def _stage_refresh(job: Job, ledger: ReportLedger, stage: Stage) -> StageRefresh | None:
    window = stage.refresh_last
    if window is None or stage.reference:
        return None
    spec = stage.partitions
    since = max(spec.start, spec.end - timedelta(days=_search_days(window)))
    finished: list[Partition] = []
    for row in ledger.coverage_rows(job.name, stage.name, Selection(start=since)):
        if row.status in (Status.DONE, Status.EMPTY):
            part = spec.get(row.key)
            if part is not None:
                finished.append(part)
    if not finished:
        return StageRefresh(stage.name, window, (), None, None)
    newest = max(finished, key=lambda p: p.ends)
    chosen = [p for p in finished if window.holds(p, newest)]
    chosen.sort(key=lambda p: (p.begins, p.key))
    return StageRefresh(
        stage.name,
        window,
        tuple(p.key for p in chosen),
        chosen[0].start,
        chosen[-1].end,
    )


def to_refresh(job: Job, ledger: ReportLedger, stages: Sequence[Stage]) -> Refresh:
    """The newest finished partitions of each stage with ``refresh_last=`` among
    ``stages``: those within its window back from the end of its newest finished one."""
    found = [r for s in stages if (r := _stage_refresh(job, ledger, s)) is not None]
    return Refresh(job.name, tuple(found))
