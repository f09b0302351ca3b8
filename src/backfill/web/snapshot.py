"""What the dashboard shows, read from the ledger alone.

A run may be in another process or on other machines, so nothing here listens to a
run's events: :class:`Dashboard` polls the :class:`~backfill.ledger.Ledger` (any
adapter) and keeps, in memory, samples of finished counts for rates and the throughput
chart. The state may not exist yet when the dashboard starts: a :class:`StateReader`
looks for it until a run creates it.
"""

from __future__ import annotations

import collections
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from backfill.errors import LedgerError
from backfill.job import Job, Stage
from backfill.ledger import Ledger, NoState, Status, open_ledger, open_reader
from backfill.ledger.sqlite import SQLiteLedger
from backfill.report import Report, RunReport, build_report

__all__ = ["CELL_STATES", "Dashboard", "StateReader"]

_RATE_WINDOW = 30.0
_SMOOTHING = 5.0
_SAMPLES = 600
_FAILURES_SHOWN = 50
_RUNS_SHOWN = 20
# A calendar cell's colour is the first of these states it holds: the worst actionable
# one, then done, and empty only when all of it was empty (a fact, not a problem).
CELL_STATES = ("failed", "blocked", "stale", "leased", "pending", "missing", "done", "empty")
_INDEX = {name: i for i, name in enumerate(CELL_STATES)}
# Up to about three years a cell is a day, beyond it a month; a stage spanning more than
# a century (a reference stage spans every date) is left off: the calendar stays small
# to build, send and draw, whatever the job.
_DAY_CELLS = 3 * 366
_MAX_SPAN_DAYS = 36_525

_STATE_OF = {
    Status.DONE: "done",
    Status.EMPTY: "empty",
    Status.FAILED: "failed",
    Status.RUNNING: "leased",
    Status.PENDING: "pending",
}


def _month(day: date) -> int:
    return day.year * 12 + day.month - 1


@dataclass(frozen=True, slots=True)
class _Grid:
    """The calendar's cells: ``size`` days, or months, from ``first``."""

    unit: str  # "day" or "month"
    first: date  # the first cell's day (the first of its month, for months)
    size: int

    @staticmethod
    def over(first: date, last: date) -> _Grid:
        days = (last - first).days + 1
        if days <= _DAY_CELLS:
            return _Grid("day", first, days)
        start = first.replace(day=1)
        return _Grid("month", start, _month(last) - _month(start) + 1)

    def cells(self, start: date, end: date) -> range:
        """The cells a window touches, clipped to the calendar."""
        if self.unit == "day":
            low, high = (start - self.first).days, (end - self.first).days
        else:
            low, high = _month(start) - _month(self.first), _month(end) - _month(self.first)
        return range(max(low, 0), min(high, self.size - 1) + 1)


@dataclass(frozen=True, slots=True)
class _Layout:
    grid: _Grid | None
    stages: tuple[Stage, ...]
    expected: Mapping[str, list[int]]
    left_out: tuple[dict[str, str], ...]


def _file_identity(ledger: Ledger) -> tuple[int, int] | None:
    """Which file a SQLite ledger reads (device and inode); None for other ledgers or
    when the file is gone."""
    if not isinstance(ledger, SQLiteLedger) or ledger.path == ":memory:":
        return None
    try:
        found = os.stat(Path(ledger.path))
    except OSError:
        return None
    return found.st_dev, found.st_ino


class StateReader:
    """A job's state, read-only, as soon as it exists.

    ``backfill serve`` may start before the first run has created the state (no SQLite
    file, no backfill tables in PostgreSQL yet). Until then :meth:`ledger` returns None
    and :attr:`waiting` says why; it looks again at most every ``every`` seconds, and
    opens the state read-only once it is there. A SQLite file deleted or replaced since
    (``backfill demo --fresh``) is looked for, and opened, again.
    """

    def __init__(
        self,
        url: str,
        *,
        every: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        opener: Callable[[str], Ledger] = open_reader,
    ) -> None:
        self.url = url
        self.every = every
        self.clock = clock
        self.opener = opener
        self.waiting: str | None = None
        self._ledger: Ledger | None = None
        self._file: tuple[int, int] | None = None
        # A replaced ledger may still be read by a snapshot in another thread: it is
        # closed at the next replacement, or with the reader.
        self._retired: Ledger | None = None
        self._looked = -math.inf
        self._lock = threading.Lock()

    @classmethod
    def open(cls, url: str, **kwargs: Any) -> StateReader:
        """The reader of ``url``, its ledger opened at once when the state exists.

        Raises what :func:`~backfill.ledger.open_reader` raises but :class:`NoState`:
        a file that is not a ledger, another schema version or an unreachable database
        is nothing to wait for.
        """
        reader = cls(url, **kwargs)
        try:
            reader._adopt(reader.opener(url))
        except NoState as exc:
            reader.waiting = str(exc)
        reader._looked = reader.clock()
        return reader

    @classmethod
    def of(cls, ledger: Ledger) -> StateReader:
        """A reader of a ledger already open."""
        reader = cls(ledger.url)
        reader._adopt(ledger)
        reader._looked = reader.clock()
        return reader

    def _adopt(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._file = _file_identity(ledger)
        self.waiting = None

    def ledger(self) -> Ledger | None:
        """The ledger, or None while there is no state to read."""
        with self._lock:
            if self.clock() - self._looked < self.every:
                return self._ledger
            self._looked = self.clock()
            current = self._ledger
            if current is not None and self._file and _file_identity(current) != self._file:
                self._retire()
            if self._ledger is None:
                try:
                    self._adopt(self.opener(self.url))
                except NoState as exc:
                    self.waiting = str(exc)
                except LedgerError as exc:
                    # A state being created can look like no ledger for a moment;
                    # anything else stays on the page until it is fixed.
                    self.waiting = f"cannot read the state yet: {exc}"
            return self._ledger

    def _retire(self) -> None:
        if self._retired is not None:
            self._retired.close()
        self._retired, self._ledger, self._file = self._ledger, None, None

    def close(self) -> None:
        with self._lock:
            for ledger in (self._ledger, self._retired):
                if ledger is not None:
                    ledger.close()
            self._ledger = self._retired = None


class Dashboard:
    """Builds snapshots of one job's state; thread-safe enough for one poller."""

    def __init__(
        self, job: Job, state: Ledger | StateReader, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.job = job
        self.state = state if isinstance(state, StateReader) else StateReader.of(state)
        self.clock = clock
        self.masker = job.masker(self.state.url)
        self._empty: Ledger | None = None
        self._read: Ledger | None = None
        self.stage_names = list(job.stages)
        # (time, finished partitions per stage) at each snapshot.
        self.samples: collections.deque[tuple[float, dict[str, int]]] = collections.deque(
            maxlen=_SAMPLES
        )
        self._layout: _Layout | None = None

    @property
    def ledger(self) -> Ledger:
        """The job's ledger; an empty one stands in while the state does not exist."""
        found = self.state.ledger()
        if found is not None:
            return found
        if self._empty is None:
            self._empty = open_ledger(":memory:")
        return self._empty

    def snapshot(self) -> dict[str, Any]:
        now = self.clock()
        ledger = self.ledger
        if ledger is not self._read:
            # Samples of another ledger (the empty stand-in) would make a rate of it.
            self.samples.clear()
            self._read = ledger
        # One report for every interface (see backfill.report), with the rates this
        # dashboard measures from its own samples (up to the one before: the report's
        # counts make this one, and counting twice would double the cost).
        report = build_report(
            self.job,
            ledger,
            now=now,
            rates={name: self._rate(name, now) for name in self.stage_names},
            failures=False,
            runs=_RUNS_SHOWN,
        )
        self.samples.append((now, {r.name: r.finished for r in report.stages}))
        stages = [
            {
                "name": r.name,
                "total": r.total,
                "finished": r.finished,
                "done": r.done,
                "empty": r.empty,
                "failed": r.failed,
                "pending": r.pending,
                "leased": r.leased,
                "blocked": r.blocked,
                "example_blocked": r.example_blocked,
                "missing": r.missing,
                "records": r.records,
                "rate": r.rate,
                "eta": r.eta,
                "stalled": r.stalled,
            }
            for r in report.stages
        ]
        failures = []
        for name in self.stage_names:
            for e in ledger.entries(
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
            {
                "id": w.id,
                "host": w.host,
                "pid": w.pid,
                "heartbeat_age": now - w.heartbeat_at,
                "dead": w.dead,
            }
            for w in report.workers
        ]
        resources = [
            {
                "name": r.name,
                "declared": r.declared,
                "rate": r.rate,
                "circuit": r.circuit,
                "holding": r.holding(now),
                "requests": r.requests,
                "rate_limited": r.rate_limited,
            }
            for r in report.resources
        ]
        waiting = self.state.waiting
        if waiting is None and not report.runs and all(r.total == r.missing for r in report.stages):
            waiting = f"nothing of job {self.job.name} is recorded in this state yet"
        # Every text the page shows is masked; the calendar (statuses) and the
        # throughput (numbers) hold none, and are the bulk of a snapshot.
        shown: dict[str, Any] = self.masker.mask_tree(
            {
                "job": self.job.name,
                "at": now,
                "waiting": waiting,
                "stages": stages,
                "failures": failures[:_FAILURES_SHOWN],
                "workers": workers,
                "resources": resources,
                "runs": self.runs(report.runs),
            }
        )
        return {**shown, "throughput": self.throughput(), "calendar": self.calendar(ledger, report)}

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

    def calendar(self, ledger: Ledger, report: Report) -> dict[str, Any]:
        """The job's days (months, for a long range), each with its mix of states and
        the first of :data:`CELL_STATES` it holds.

        The ledger answers per window (:meth:`~backfill.ledger.Ledger.window_counts`),
        so the cost follows the number of windows, never the dimension values; a
        reference stage, or any spanning more than a century, is left out, with why."""
        layout = self._calendar_layout()
        grid = layout.grid
        if grid is None:
            return {
                "unit": None,
                "start": None,
                "states": list(CELL_STATES),
                "cells": [],
                "mix": [],
                "left_out": list(layout.left_out),
            }
        mix = [[0] * len(CELL_STATES) for _ in range(grid.size)]
        blocked = {r.name: r.blocked for r in report.stages}
        for stage in layout.stages:
            recorded = [0] * grid.size
            for row in ledger.window_counts(self.job.name, stage.name):
                state = "stale" if row.stale else _STATE_OF[row.status]
                for i in grid.cells(row.start, row.end):
                    mix[i][_INDEX[state]] += row.count
                    recorded[i] += row.count
            for i, expected in enumerate(layout.expected[stage.name]):
                if expected > recorded[i]:
                    mix[i][_INDEX["missing"]] += expected - recorded[i]
            needs = self.job.dependencies(stage)
            if not needs:
                continue
            # The ledger names stale partitions but not whether they were done or
            # empty: they are taken from done first.
            for key in ledger.stale_keys(self.job.name, stage.name, needs):
                self._move(grid, mix, stage, key, ("done", "empty"), "stale")
            if blocked.get(stage.name):
                for key in ledger.blocked_keys(self.job.name, stage.name, needs):
                    self._move(grid, mix, stage, key, ("pending",), "blocked")
        return {
            "unit": grid.unit,
            "start": grid.first.isoformat(),
            "states": list(CELL_STATES),
            "cells": [next((CELL_STATES[i] for i, n in enumerate(m) if n), "") for m in mix],
            "mix": mix,
            "left_out": list(layout.left_out),
        }

    @staticmethod
    def _move(
        grid: _Grid,
        mix: list[list[int]],
        stage: Stage,
        key: str,
        sources: tuple[str, ...],
        target: str,
    ) -> None:
        """Count one partition of ``stage`` in ``target`` instead of its recorded state."""
        partition = stage.partitions.get(key)
        if partition is None:
            return
        for i in grid.cells(partition.start, partition.end):
            source = next((s for s in sources if mix[i][_INDEX[s]]), None)
            if source is not None:
                mix[i][_INDEX[source]] -= 1
                mix[i][_INDEX[target]] += 1

    def _calendar_layout(self) -> _Layout:
        """Which stages the calendar draws, its cells, and how many partitions of each
        stage each cell expects: read from the job once (it does not change)."""
        if self._layout is None:
            drawn: list[Stage] = []
            left_out: list[dict[str, str]] = []
            for name, stage in self.job.stages.items():
                spec = stage.partitions
                span = (spec.end - spec.start).days + 1
                if stage.reference:
                    left_out.append({"stage": name, "why": "reference: no dates"})
                elif span > _MAX_SPAN_DAYS:
                    why = f"spans {span // 365:,} years, more than a calendar shows"
                    left_out.append({"stage": name, "why": why})
                else:
                    drawn.append(stage)
            grid = None
            expected: dict[str, list[int]] = {}
            if drawn:
                grid = _Grid.over(
                    min(s.partitions.start for s in drawn), max(s.partitions.end for s in drawn)
                )
                for stage in drawn:
                    spec = stage.partitions
                    combos = math.prod(len(values) for values in spec.dims.values())
                    counts = [0] * grid.size
                    for start, end in spec.windows():
                        for i in grid.cells(start, end):
                            counts[i] += combos
                    expected[stage.name] = counts
            self._layout = _Layout(grid, tuple(drawn), expected, tuple(left_out))
        return self._layout

    def runs(self, reports: Sequence[RunReport]) -> list[dict[str, Any]]:
        rows = []
        for report in reports:
            r, summary = report.record, report.summary
            rows.append(
                {
                    "id": r.id,
                    "command": r.command,
                    "host": r.host,
                    "started_at": r.started_at,
                    "finished_at": r.finished_at,
                    "status": report.status,
                    "heartbeat_at": report.heartbeat_at,
                    "partitions": summary.partitions,
                    "records": summary.records,
                    "requests": summary.requests,
                    "retries": summary.retries,
                    "rate_limited": summary.rate_limited,
                    "p50": summary.p50,
                    "p95": summary.p95,
                    "max": summary.max,
                }
            )
        return rows
