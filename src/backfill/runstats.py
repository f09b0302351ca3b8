"""Run metrics: per stage and per run, folded from the event stream.

The runner keeps one :class:`RunStats` subscribed to its bus and stores
:meth:`RunStats.as_record` in the run record's ``counts["stats"]``, so every ledger
adapter keeps them without a schema of its own; ``backfill runs``, the dashboard and
``/metrics`` read them back with :func:`stage_stats`.
"""

from __future__ import annotations

import bisect
import heapq
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from backfill.events import Event, PartitionFinished, PartitionRetrying
from backfill.ledger import Status

__all__ = ["DURATION_BUCKETS", "Durations", "RunStats", "StageStats", "stage_stats"]

# Upper bounds (seconds) of the partition-duration histogram; the last bucket is +Inf.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
SLOWEST_KEPT = 10


class Durations:
    """Partition durations: exact count, sum and max, percentiles from a fixed-size
    reservoir sample, so a million partitions cost no more than a thousand."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self.sample: list[float] = []
        self._rng = random.Random(0)

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.max = max(self.max, value)
        if len(self.sample) < self.size:
            self.sample.append(value)
        else:
            slot = self._rng.randrange(self.count)
            if slot < self.size:
                self.sample[slot] = value

    def summary(self) -> dict[str, float]:
        if not self.count:
            return {}
        ordered = sorted(self.sample)

        def pct(q: float) -> float:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

        return {"count": self.count, "p50": pct(0.5), "p95": pct(0.95), "max": self.max}


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
        if event.status is Status.PENDING:
            return
        if event.status is Status.DONE:
            self.done += 1
            self.records += event.records
        elif event.status is Status.EMPTY:
            self.empty += 1
        else:
            self.failed += 1
        self.durations.add(event.duration)
        self.buckets[bisect.bisect_left(DURATION_BUCKETS, event.duration)] += 1
        item = (event.duration, event.key)
        if len(self.slowest) < SLOWEST_KEPT:
            heapq.heappush(self.slowest, item)
        elif item > self.slowest[0]:
            heapq.heapreplace(self.slowest, item)

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

    def __init__(self, stages: Iterable[str] = ()) -> None:
        self.stages: dict[str, StageStats] = {name: StageStats() for name in stages}
        self.run = StageStats()

    def _stage(self, name: str) -> StageStats:
        stats = self.stages.get(name)
        if stats is None:
            stats = self.stages[name] = StageStats()
        return stats

    def __call__(self, event: Event) -> None:
        if isinstance(event, PartitionFinished):
            self._stage(event.stage).finish(event)
            self.run.finish(event)
        elif isinstance(event, PartitionRetrying):
            self._stage(event.stage).retries += 1
            self.run.retries += 1

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
