"""Freshness: per stage, the newest partition done (or empty) and how far its window's
end lies behind now, so a daily job that stopped keeping up shows it (``backfill
status``, the gauge ``backfill_freshness_seconds{job,stage}`` of ``/metrics``).

"Now" is :func:`backfill.partitions.zones.now` (``BACKFILL_NOW`` in tests). A window's
end is midnight of the day after it in the spec's zone, or the end of an hourly
partition's hour.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from backfill.job import Job, Stage
from backfill.ledger import ReportLedger, Status
from backfill.partitions import Grain, Partition, Selection
from backfill.partitions.windows import window_label
from backfill.partitions.zones import now as current_time

__all__ = ["Freshness", "freshness"]

_FINISHED = (Status.DONE, Status.EMPTY)


@dataclass(frozen=True, slots=True)
class Freshness:
    """A stage's newest finished window (``newest``: its label; ``ends``: where it ends)
    and ``lag``, the seconds from that end to now (0 when the window is not over yet);
    all None before anything is done."""

    stage: str
    newest: str | None
    ends: datetime | None
    lag: float | None

    def describe(self) -> str:
        """``fetch: newest done 2024-04-01, 6h 15m behind``."""
        if self.newest is None or self.lag is None:
            return f"{self.stage}: nothing done yet"
        return f"{self.stage}: newest done {self.newest}, {_span(self.lag)} behind"


def _span(seconds: float) -> str:
    minutes = int(seconds // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {mins:02d}m"
    return f"{mins}m"


def _newest(ledger: ReportLedger, job: str, stage: Stage) -> Partition | None:
    spec = stage.partitions
    windows = [w for w in ledger.window_counts(job, stage.name) if w.status in _FINISHED]
    if not windows:
        return None
    start, end = max((w.start, w.end) for w in windows)
    if spec.grain is Grain.HOUR:
        # Hourly partitions share their day's window: the newest finished hour of it,
        # read from its key (the spec of this run may end before it).
        rows = ledger.coverage_rows(job, stage.name, Selection(start=start, end=end))
        hours = [
            Partition(r.key, r.start, r.end, spec.grain, r.dims, spec.tz)
            for r in rows
            if r.status in _FINISHED
        ]
        return max(hours, key=lambda p: p.ends) if hours else None
    label = window_label(start, end, spec.grain)
    return Partition(label, start, end, spec.grain, (), spec.tz)


def freshness(
    job: Job, ledger: ReportLedger, stages: Sequence[Stage] | None = None
) -> list[Freshness]:
    """The freshness of each partitioned stage (all of the job's by default)."""
    at = current_time()
    result = []
    for stage in stages if stages is not None else list(job.stages.values()):
        if stage.reference:
            continue
        newest = _newest(ledger, job.name, stage)
        if newest is None:
            result.append(Freshness(stage.name, None, None, None))
            continue
        ends = newest.ends
        lag = max(0.0, (at - ends).total_seconds())
        label = newest.key.split("/", 1)[0]
        result.append(Freshness(stage.name, label, ends, lag))
    return result
