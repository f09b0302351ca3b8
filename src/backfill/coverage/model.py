"""The coverage report's model: the state of each partition, the report itself, and its
gaps (runs of consecutive partitions in one state, with one reason)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from typing import Any

from backfill.job import Stage


class State(StrEnum):
    DONE = "done"
    EMPTY = "empty"
    THIN = "thin"
    FAILED = "failed"
    STALE = "stale"
    RUNNING = "running"
    BLOCKED = "blocked"
    MISSING = "missing"


# Worst first: a bucket shows the worst state of its partitions.
SEVERITY = (
    State.FAILED,
    State.BLOCKED,
    State.MISSING,
    State.STALE,
    State.RUNNING,
    State.THIN,
    State.DONE,
    State.EMPTY,
)
# What `run --missing-only` fills.
GAP_STATES = frozenset({State.MISSING, State.BLOCKED, State.FAILED, State.STALE})


@dataclass(frozen=True, slots=True)
class PartitionState:
    stage: str
    key: str
    start: date
    end: date
    dims: tuple[tuple[str, str], ...]
    state: State
    reason: str = ""
    group: str = ""  # what consecutive partitions must share to form one gap range
    records: int | None = None
    whole: bool = True  # False for a window cut by the range's start or end
    expected: float | None = None  # for a thin one: what its neighbours' rate gives


@dataclass(frozen=True, slots=True)
class Gap:
    """A run of consecutive partitions of one stage (and dimension values) in one state:
    the labels of its first and last partitions, and its first and last days."""

    stage: str
    dims: tuple[tuple[str, str], ...]
    first: str
    last: str
    state: State
    reason: str
    count: int
    start: date
    end: date

    @property
    def span(self) -> str:
        """``2013-W12..2015-W52`` from label to label; where an end is a window cut by
        the range (its label is already a range of days), the days: ``2013-03-18..2015-12-31``."""
        if self.first == self.last:
            return self.first
        if ".." in self.first or ".." in self.last:
            return f"{self.start.isoformat()}..{self.end.isoformat()}"
        return f"{self.first}..{self.last}"

    def describe(self) -> str:
        where = " ".join(v for _, v in self.dims)
        label = " ".join(p for p in (self.stage, where, self.span) if p)
        reason = f": {self.reason}" if self.reason else ""
        return f"{label} {self.state.value}{reason} ({self.count:,})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "dims": dict(self.dims),
            "first": self.first,
            "last": self.last,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "state": self.state.value,
            "reason": self.reason,
            "count": self.count,
        }


@dataclass(slots=True)
class Coverage:
    job: str
    stages: list[Stage]
    partitions: dict[str, list[PartitionState]] = field(default_factory=dict)

    def counts(self, stage: str) -> dict[State, int]:
        found = Counter(p.state for p in self.partitions[stage])
        return {s: found.get(s, 0) for s in State}

    def gaps(self, states: Iterable[State] | None = None) -> list[Gap]:
        """Compressed runs of not-done partitions (and thin ones), per stage and dims."""
        wanted = set(states) if states is not None else set(State) - {State.DONE, State.EMPTY}
        gaps: list[Gap] = []
        for stage in self.stages:
            by_dims: dict[tuple[tuple[str, str], ...], list[PartitionState]] = defaultdict(list)
            for item in self.partitions[stage.name]:
                by_dims[item.dims].append(item)
            for dims, items in by_dims.items():
                current: list[PartitionState] = []
                p: PartitionState | None
                for p in [*items, None]:
                    if current and (
                        p is None or p.state is not current[0].state or p.group != current[0].group
                    ):
                        head = current[0]
                        if head.state in wanted:
                            gaps.append(
                                Gap(
                                    stage.name,
                                    dims,
                                    window_label(head),
                                    window_label(current[-1]),
                                    head.state,
                                    _reason(current),
                                    len(current),
                                    head.start,
                                    current[-1].end,
                                )
                            )
                        current = []
                    if p is not None:
                        current.append(p)
        return gaps

    def gap_keys(self) -> dict[str, set[str]]:
        """Per stage, the keys `run --missing-only` fills: missing, failed and stale."""
        return {
            stage: {p.key for p in items if p.state in GAP_STATES}
            for stage, items in self.partitions.items()
        }

    def span(self) -> tuple[date, date] | None:
        days = [
            (p.start, p.end)
            for s in self.stages
            if not s.reference
            for p in self.partitions[s.name]
        ]
        if not days:
            return None
        return min(d[0] for d in days), max(d[1] for d in days)


def window_label(p: PartitionState) -> str:
    """The key of its window, without its dimension values: ``2013-01`` of ``2013-01/tour=atp``."""
    return p.key.split("/", 1)[0]


def _reason(run: Sequence[PartitionState]) -> str:
    """One reason for a run of partitions: theirs when they share it; for thin ones the
    span of their records and of what their neighbours have; else what they share."""
    head = run[0]
    if len({p.reason for p in run}) == 1:
        return head.reason
    if head.state is State.THIN:
        records = [p.records or 0 for p in run]
        expected = [round(p.expected or 0) for p in run]
        return (
            f"{_span(min(records), max(records))} records, "
            f"neighbours have ~{_span(min(expected), max(expected))}"
        )
    return head.group


def _span(low: int, high: int) -> str:
    return f"{low:,}" if low == high else f"{low:,}–{high:,}"
