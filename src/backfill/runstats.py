"""Run metrics: per stage and per run, folded from the event stream.

The runner keeps one :class:`RunStats` subscribed to its bus and stores
:meth:`RunStats.as_record` in the run record's ``counts["stats"]``, so every ledger
adapter keeps them without a schema of its own; ``backfill runs``, the dashboard and
``/metrics`` read them back with :func:`stage_stats`.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from backfill.events import Event, PartitionFinished, PartitionRetrying
from backfill.ledger import Status

__all__ = ["DURATION_BUCKETS", "Durations", "RunStats", "StageStats", "stage_stats"]

# Upper bounds (seconds) of the partition-duration histogram; the last bucket is +Inf.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
SLOWEST_KEPT = 10
# Durations' histogram: buckets 1 % wide (a log step of ln 1.01), from a microsecond.
_PER_E = 1 / math.log(1.01)
_FLOOR = 1e-6
# Statuses compared once per partition (a global is cheaper than the enum's class).
_DONE, _EMPTY, _PENDING = Status.DONE, Status.EMPTY, Status.PENDING


class Durations:
    """Partition durations: exact count, sum and max; percentiles exact over the first
    ``exact`` values, then from a histogram of logarithmic buckets (each 1 % wide), so
    a million partitions cost no more than a thousand, and no random draw per value."""

    def __init__(self, exact: int = 1024) -> None:
        self.exact = exact
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self.values: list[float] | None = []
        # Bucket index -> count; at most a few thousand buckets from a microsecond to
        # days. Durations below _FLOOR share the first one.
        self.buckets: dict[int, int] = {}

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        if value > self.max:
            self.max = value
        values = self.values
        if values is not None:
            values.append(value)
            if len(values) > self.exact:
                for kept in values:
                    self._bucket(kept)
                self.values = None
        else:
            # _bucket's body, inline: this runs once per partition.
            index = math.floor(math.log(value if value > _FLOOR else _FLOOR) * _PER_E)
            self.buckets[index] = self.buckets.get(index, 0) + 1

    def _bucket(self, value: float) -> None:
        index = math.floor(math.log(max(value, _FLOOR)) * _PER_E)
        self.buckets[index] = self.buckets.get(index, 0) + 1

    def merge(self, other: Durations) -> None:
        """Add ``other``'s durations to these."""
        if other.values is not None:
            for value in other.values:
                self.add(value)
            return
        if self.values is not None:
            for kept in self.values:
                self._bucket(kept)
            self.values = None
        self.count += other.count
        self.total += other.total
        self.max = max(self.max, other.max)
        for index, n in other.buckets.items():
            self.buckets[index] = self.buckets.get(index, 0) + n

    def summary(self) -> dict[str, float]:
        if not self.count:
            return {}
        return {"count": self.count, "p50": self.pct(0.5), "p95": self.pct(0.95), "max": self.max}

    def pct(self, q: float) -> float:
        """The ``q`` quantile: exact over the first values, within 1 % after."""
        if self.values is not None:
            ordered = sorted(self.values)
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
        rank = min(self.count - 1, int(q * self.count))
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen > rank:
                # The bucket's middle, never past the largest value seen.
                return min(self.max, math.exp((index + 0.5) / _PER_E))
        return self.max


@dataclass(slots=True)
class StageStats:
    """What one stage did in one run."""

    done: int = 0
    empty: int = 0
    failed: int = 0
    records: int = 0
    requests: int = 0
    retries: int = 0
    rate_limited: int = 0
    durations: Durations = field(default_factory=Durations)
    buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    # A min-heap of (duration, key): the slowest partitions seen.
    slowest: list[tuple[float, str]] = field(default_factory=list)

    @property
    def partitions(self) -> int:
        return self.done + self.empty + self.failed

    def finish(self, event: PartitionFinished) -> None:
        self.requests += event.requests
        self.rate_limited += event.rate_limited
        if event.status is _PENDING:
            return
        if event.status is _DONE:
            self.done += 1
            self.records += event.records
        elif event.status is _EMPTY:
            self.empty += 1
        else:
            self.failed += 1
        duration = event.duration
        self.durations.add(duration)
        self.buckets[bisect.bisect_left(DURATION_BUCKETS, duration)] += 1
        slowest = self.slowest
        if len(slowest) < SLOWEST_KEPT:
            heapq.heappush(slowest, (duration, event.key))
        elif duration >= slowest[0][0] and (duration, event.key) > slowest[0]:
            # Most partitions are not among the slowest: no pair made for them.
            heapq.heapreplace(slowest, (duration, event.key))

    def merge(self, other: StageStats) -> None:
        """Add ``other``'s figures to these (a run's figures are its stages' summed)."""
        self.done += other.done
        self.empty += other.empty
        self.failed += other.failed
        self.records += other.records
        self.requests += other.requests
        self.retries += other.retries
        self.rate_limited += other.rate_limited
        self.durations.merge(other.durations)
        self.buckets = [a + b for a, b in zip(self.buckets, other.buckets, strict=True)]
        self.slowest = heapq.nlargest(SLOWEST_KEPT, self.slowest + other.slowest)
        heapq.heapify(self.slowest)

    def as_record(self) -> dict[str, Any]:
        summary = self.durations.summary()
        return {
            "partitions": self.partitions,
            "done": self.done,
            "empty": self.empty,
            "failed": self.failed,
            "records": self.records,
            "requests": self.requests,
            "retries": self.retries,
            "rate_limited": self.rate_limited,
            "p50": round(summary.get("p50", 0.0), 4),
            "p95": round(summary.get("p95", 0.0), 4),
            "max": round(summary.get("max", 0.0), 4),
            "duration_sum": round(self.durations.total, 4),
            "buckets": list(self.buckets),
            "slowest": [[key, round(d, 4)] for d, key in sorted(self.slowest, reverse=True)],
        }


class RunStats:
    """An event subscriber that counts, per stage and for the whole run, partitions,
    records, requests, retries, 429s and partition durations."""

    # The only events it reads (see EventBus).
    events = (PartitionFinished, PartitionRetrying)

    def __init__(self, stages: Iterable[str] = ()) -> None:
        self.stages: dict[str, StageStats] = {name: StageStats() for name in stages}

    @property
    def run(self) -> StageStats:
        """The whole run's figures: its stages' summed (once asked, not per event)."""
        total = StageStats()
        for stats in self.stages.values():
            total.merge(stats)
        return total

    def _stage(self, name: str) -> StageStats:
        stats = self.stages.get(name)
        if stats is None:
            stats = self.stages[name] = StageStats()
        return stats

    def __call__(self, event: Event) -> None:
        if isinstance(event, PartitionFinished):
            self._stage(event.stage).finish(event)
        elif isinstance(event, PartitionRetrying):
            self._stage(event.stage).retries += 1

    def summaries(self) -> dict[str, dict[str, float]]:
        """Duration count, p50, p95 and max per stage (empty for a stage that ran none)."""
        return {name: s.durations.summary() for name, s in self.stages.items()}

    def as_record(self) -> dict[str, Any]:
        return {
            "run": self.run.as_record(),
            "stages": {name: s.as_record() for name, s in self.stages.items()},
        }


def stage_stats(counts: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The per-stage figures stored in a run record's ``counts`` (``{}`` for runs made
    before run metrics existed)."""
    stats = counts.get("stats")
    if not isinstance(stats, Mapping):
        return {}
    stages = stats.get("stages")
    return dict(stages) if isinstance(stages, Mapping) else {}
