"""Progress displays: subscribers of the run's event stream.

:class:`LiveProgress` draws a rich table per stage on a terminal; :class:`PlainProgress`
prints one line per stage every few seconds for logs (CI, nohup, tee).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TextIO

from rich.console import Console, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from backfill.clock import format_duration
from backfill.events import (
    Event,
    PartitionFinished,
    PartitionRetrying,
    PartitionStarted,
    ResourceChanged,
    RunFinished,
    RunStarted,
    RunStopping,
    WorkerJoined,
    WorkerLost,
)
from backfill.ledger import StageCounts, Status
from backfill.textsafe import visible

__all__ = ["LiveProgress", "PlainProgress", "ProgressState", "format_duration"]

_RATE_WINDOW = 30.0


@dataclass(slots=True)
class StageProgress:
    name: str
    total: int = 0
    done: int = 0
    empty: int = 0
    failed: int = 0
    running: int = 0
    retries: int = 0
    records: int = 0
    finishes: collections.deque[float] = field(default_factory=collections.deque)

    @property
    def finished(self) -> int:
        return self.done + self.empty + self.failed

    @property
    def remaining(self) -> int:
        return max(0, self.total - self.finished)

    def rate(self, now: float) -> float | None:
        """Partitions per second over the last half minute."""
        while self.finishes and now - self.finishes[0] > _RATE_WINDOW:
            self.finishes.popleft()
        if len(self.finishes) < 2:
            return None
        span = max(now - self.finishes[0], 1e-6)
        return len(self.finishes) / span

    def eta(self, now: float) -> float | None:
        if self.remaining == 0:
            return 0.0
        rate = self.rate(now)
        return self.remaining / rate if rate else None


class ProgressState:
    """Counts per stage, folded from events; shared by both displays."""

    def __init__(self) -> None:
        self.stages: dict[str, StageProgress] = {}
        self.started = time.monotonic()
        self.stopping: str | None = None
        self.finished: RunFinished | None = None
        # The latest word from each resource (paused, circuit open...), with its time.
        self.resources: dict[str, tuple[str, float, float]] = {}

    def seed(self, counts: Mapping[str, StageCounts]) -> None:
        for name, c in counts.items():
            self.stages[name] = StageProgress(
                name,
                total=c.total,
                done=c.done,
                empty=c.empty,
                failed=c.failed,
                records=c.records,
            )

    def apply(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.started = time.monotonic()
            self.seed(event.counts)
            return
        if isinstance(event, RunStopping):
            self.stopping = event.reason
            return
        if isinstance(event, RunFinished):
            self.finished = event
            return
        if isinstance(event, ResourceChanged):
            self.resources[event.resource] = (event.what, event.seconds, time.monotonic())
            return
        if isinstance(event, WorkerJoined | WorkerLost):
            return
        stage = self.stages.setdefault(event.stage, StageProgress(event.stage))
        if isinstance(event, PartitionStarted):
            stage.running += 1
        elif isinstance(event, PartitionRetrying):
            stage.retries += 1
        elif isinstance(event, PartitionFinished):
            stage.running = max(0, stage.running - 1)
            if event.status is Status.DONE:
                stage.done += 1
                stage.records += event.records
            elif event.status is Status.EMPTY:
                stage.empty += 1
            elif event.status is Status.FAILED:
                stage.failed += 1
            if event.status is not Status.PENDING:
                stage.finishes.append(time.monotonic())


class LiveProgress:
    """A live rich table: one row per stage with a bar, counts, rate and ETA."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.state = ProgressState()
        self._live: Live | None = None

    def __call__(self, event: Event) -> None:
        self.state.apply(event)
        if isinstance(event, RunStarted) and self._live is None:
            self._live = Live(self, console=self.console, refresh_per_second=4, transient=False)
            self._live.start()
        elif isinstance(event, RunFinished) and self._live is not None:
            self._live.update(self, refresh=True)
            self._live.stop()
            self._live = None

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def __rich__(self) -> RenderableType:
        now = time.monotonic()
        table = Table(box=None, pad_edge=False, expand=False)
        table.add_column("stage", style="bold")
        table.add_column("progress", width=28)
        table.add_column("done", justify="right", style="green")
        table.add_column("empty", justify="right", style="dim")
        table.add_column("failed", justify="right", style="red")
        table.add_column("running", justify="right", style="cyan")
        table.add_column("left", justify="right")
        table.add_column("rate", justify="right")
        table.add_column("ETA", justify="right")
        for s in self.state.stages.values():
            rate = s.rate(now)
            table.add_row(
                Text(visible(s.name)),
                ProgressBar(total=max(1, s.total), completed=s.finished, width=26),
                f"{s.done:,}",
                f"{s.empty:,}",
                f"{s.failed:,}",
                f"{s.running:,}",
                f"{s.remaining:,}",
                f"{rate:,.1f}/s" if rate else "-",
                format_duration(s.eta(now)),
            )
        elapsed = format_duration(now - self.state.started)
        footer = f"elapsed {elapsed}"
        for name, (what, seconds, at) in self.state.resources.items():
            if now - at < max(seconds, 5.0):
                footer += f" · {name}: {what}" + (f" {seconds:.1f}s" if seconds else "")
        if self.state.stopping:
            footer += f" · stopping ({self.state.stopping}); Ctrl+C again to stop at once"
        # A resource's word or a stop reason may quote a source: text, never markup.
        table.caption = Text(visible(footer))
        return table


class PlainProgress:
    """One line per stage every ``interval`` seconds, and at the end; for logs."""

    def __init__(self, stream: TextIO, interval: float = 10.0, failures_shown: int = 20) -> None:
        self.stream = stream
        self.interval = interval
        self.state = ProgressState()
        self._last = 0.0
        self._failures_left = failures_shown

    def __call__(self, event: Event) -> None:
        self.state.apply(event)
        now = time.monotonic()
        if isinstance(event, RunStarted):
            self._write(f"run {event.run_id} of job {event.job} started")
            self._report(now)
        elif isinstance(event, PartitionFinished) and event.status is Status.FAILED:
            if self._failures_left > 0:
                self._failures_left -= 1
                self._write(f"failed {event.stage} {event.key}: {event.category}: {event.message}")
        elif isinstance(event, RunStopping):
            self._write(f"stopping: {event.reason}")
        elif isinstance(event, ResourceChanged):
            extra = f" for {event.seconds:.1f}s" if event.seconds else ""
            self._write(f"resource {event.resource}: {event.what}{extra}")
        elif isinstance(event, RunFinished):
            self._report(now)
            return
        if now - self._last >= self.interval:
            self._report(now)

    def _report(self, now: float) -> None:
        self._last = now
        elapsed = format_duration(now - self.state.started)
        for s in self.state.stages.values():
            rate = s.rate(now)
            pct = 100.0 * s.finished / s.total if s.total else 100.0
            self._write(
                f"[{elapsed}] {s.name}: {s.finished:,}/{s.total:,} ({pct:.0f}%) "
                f"done {s.done:,} empty {s.empty:,} failed {s.failed:,} running {s.running:,} "
                f"rate {f'{rate:.1f}/s' if rate else '-'} ETA {format_duration(s.eta(now))}"
            )

    def _write(self, line: str) -> None:
        # Lines quote sources (error messages, keys): escape what a terminal would obey.
        self.stream.write(visible(line) + "\n")
        self.stream.flush()
