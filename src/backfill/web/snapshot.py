"""What the dashboard shows, read from the ledger alone.

A run may be in another process or on other machines, so nothing here listens to a
run's events: :class:`Dashboard` polls the :class:`~backfill.ledger.Ledger` (any
adapter) and keeps, in memory, samples of finished counts for rates and the throughput
chart.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

from backfill.job import Job
from backfill.ledger import Ledger, Status

__all__ = ["CALENDAR_LIMIT", "Dashboard"]

# Beyond this many partitions per stage the calendar is left out (it would be a blur).
CALENDAR_LIMIT = 20_000
_RATE_WINDOW = 30.0
_SMOOTHING = 5.0
_SAMPLES = 600
_FAILURES_SHOWN = 50
_RUNS_SHOWN = 20
# A day's colour is its worst partition's status, in this order.
_WORST = ("failed", "running", "pending", "missing", "empty", "done")


class Dashboard:
    """Builds snapshots of one job's state; thread-safe enough for one poller."""

    def __init__(self, job: Job, ledger: Ledger, *, clock: Callable[[], float] = time.time) -> None:
        self.job = job
        self.ledger = ledger
        self.clock = clock
        self.masker = job.masker(ledger.url)
        self.stage_names = list(job.stages)
        # (time, finished partitions per stage) at each snapshot.
        self.samples: collections.deque[tuple[float, dict[str, int]]] = collections.deque(
            maxlen=_SAMPLES
        )
        self._days: dict[str, dict[str, tuple[date, date]]] | None = None

    def _partition_days(self) -> dict[str, dict[str, tuple[date, date]]]:
        """Per stage, each partition key's first and last day (small stages only)."""
        if self._days is None:
            self._days = {}
            for name, stage in self.job.stages.items():
                if len(stage.partitions) <= CALENDAR_LIMIT:
                    self._days[name] = {p.key: (p.start, p.end) for p in stage.partitions}
        return self._days

    def snapshot(self) -> dict[str, Any]:
        now = self.clock()
        counts = self.ledger.counts(self.job.name, self.stage_names)
        finished = {name: c.finished for name, c in counts.items()}
        self.samples.append((now, finished))
        stages = []
        for name, stage in self.job.stages.items():
            c = counts[name]
            expected = max(len(stage.partitions), c.total)
            left = expected - c.finished
            rate = self._rate(name, now)
            if rate is None and left:
                rate = c.rate
            stages.append(
                {
                    "name": name,
                    "total": expected,
                    "finished": c.finished,
                    "done": c.done,
                    "empty": c.empty,
                    "failed": c.failed,
                    "pending": c.pending,
                    "running": c.running,
                    "missing": expected - c.total,
                    "records": c.records,
                    "rate": rate,
                    "eta": (left / rate if rate else None) if left else 0.0,
                }
            )
        failures = []
        for name in self.stage_names:
            for e in self.ledger.entries(
                self.job.name, name, status=Status.FAILED, limit=_FAILURES_SHOWN
            ):
                failures.append(
                    {
                        "stage": name,
                        "key": e.key,
                        "category": e.error_category,
                        "attempts": e.attempts,
                        "message": e.error_message,
                    }
                )
        workers = [
            {"id": w.id, "host": w.host, "pid": w.pid, "heartbeat_age": now - w.heartbeat_at}
            for w in self.ledger.workers(self.job.name)
        ]
        # Every text the page shows is masked; the calendar (statuses) and the
        # throughput (numbers) hold none, and are the bulk of a snapshot.
        shown: dict[str, Any] = self.masker.mask_tree(
            {
                "job": self.job.name,
                "at": now,
                "stages": stages,
                "failures": failures[:_FAILURES_SHOWN],
                "workers": workers,
                "runs": self.runs(),
            }
        )
        return {**shown, "throughput": self.throughput(), "calendar": self.calendar()}

    def _rate(self, stage: str, now: float) -> float | None:
        """Partitions per second over the last half minute of samples."""
        recent = [(t, f[stage]) for t, f in self.samples if now - t <= _RATE_WINDOW]
        if len(recent) < 2 or recent[-1][0] <= recent[0][0]:
            return None
        rate = (recent[-1][1] - recent[0][1]) / (recent[-1][0] - recent[0][0])
        return rate if rate > 0 else None

    def throughput(self) -> list[list[float]]:
        """[time, partitions/s over all stages], each averaged over the samples of the
        preceding few seconds (a rate from one short step is mostly noise)."""
        points: list[list[float]] = []
        samples = list(self.samples)
        base = 0
        for t, finished in samples[1:]:
            while base < len(samples) - 1 and t - samples[base + 1][0] >= _SMOOTHING:
                base += 1
            t0, earlier = samples[base]
            if t > t0:
                delta = sum(finished.values()) - sum(earlier.values())
                points.append([round(t, 3), max(0.0, delta / (t - t0))])
        return points

    def calendar(self) -> dict[str, Any] | None:
        """Every day of the job's range with its worst status, or None when too large."""
        days = self._partition_days()
        if not days:
            return None
        worst: dict[date, str] = {}
        for name, keys in days.items():
            statuses = {
                e.key: e.status.value
                for e in self.ledger.entries(self.job.name, name, limit=CALENDAR_LIMIT)
            }
            for key, (start, end) in keys.items():
                status = statuses.get(key, "missing")
                day = start
                while day <= end:
                    old = worst.get(day)
                    if old is None or _WORST.index(status) < _WORST.index(old):
                        worst[day] = status
                    day += timedelta(days=1)
        if not worst:
            return None
        first, last = min(worst), max(worst)
        span = (last - first).days + 1
        return {
            "start": first.isoformat(),
            "days": [worst.get(first + timedelta(days=i), "") for i in range(span)],
        }

    def runs(self) -> list[dict[str, Any]]:
        rows = []
        for r in self.ledger.runs(self.job.name, limit=_RUNS_SHOWN):
            figures = r.counts.get("stats", {}).get("run", {}) if r.counts else {}
            rows.append(
                {
                    "id": r.id,
                    "command": r.command,
                    "host": r.host,
                    "started_at": r.started_at,
                    "finished_at": r.finished_at,
                    "status": r.status,
                    "partitions": figures.get("partitions"),
                    "records": figures.get("records"),
                    "requests": figures.get("requests"),
                    "retries": figures.get("retries"),
                    "rate_limited": figures.get("rate_limited"),
                    "p50": figures.get("p50"),
                    "p95": figures.get("p95"),
                    "max": figures.get("max"),
                }
            )
        return rows
