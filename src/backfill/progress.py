"""Progress displays: subscribers of the run's event stream.

:class:`LiveProgress` draws a rich table per stage on a terminal; :class:`PlainProgress`
prints one line per stage every few seconds for logs (CI, nohup, tee).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Mapping
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
    FleetCounts,
    PartitionFinished,
    PartitionRetrying,
    PartitionsDiscovered,
    PartitionStarted,
    ResourceChanged,
    RunFinished,
    RunStarted,
    RunStopping,
    Tick,
    WorkerJoined,
    WorkerLost,
)
from backfill.ledger import StageCounts, Status
from backfill.textsafe import visible

__all__ = ["LiveProgress", "PlainProgress", "ProgressState", "format_duration"]

_RATE_WINDOW = 30.0
# Nothing finished for this long (and for five times the usual gap): the stage is stalled.
_STALL_AFTER = 10.0


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
    # (when, finished so far) each time the count grew: the last half minute of progress.
    samples: collections.deque[tuple[float, int]] = field(default_factory=collections.deque)

    @property
    def finished(self) -> int:
        return self.done + self.empty + self.failed

    @property
    def remaining(self) -> int:
        return max(0, self.total - self.finished)

    def progressed(self, now: float) -> None:
        """The finished count grew (a partition here, or the fleet's count read again):
        keep the last half minute of samples, and the last one however old (it says when
        progress stopped)."""
        samples = self.samples
        samples.append((now, self.finished))
        while now - samples[0][0] > _RATE_WINDOW:
            samples.popleft()

    def pace(self, now: float) -> float | None:
        """Partitions per second over the last half minute of progress (it may have
        stopped since): what the stage does when it moves."""
        samples = self.samples
        if len(samples) < 2:
            return None
        (first, count0), (last, count1) = samples[0], samples[-1]
        return (count1 - count0) / max(last - first, 1e-6)

    def stalled_for(self, now: float) -> float | None:
        """How long no partition has finished, when that is far longer than the gaps
        between finishes so far (at least 10 s); None while the stage moves."""
        if self.remaining == 0 or not self.samples:
            return None
        pace = self.pace(now)
        gap = now - self.samples[-1][0]
        usual = 1.0 / pace if pace else 0.0
        return gap if gap > max(_STALL_AFTER, 5.0 * usual) else None

    def rate(self, now: float) -> float | None:
        """Partitions per second over the last half minute; None when stalled."""
        if self.stalled_for(now) is not None:
            return None
        recent = [(t, n) for t, n in self.samples if now - t <= _RATE_WINDOW]
        if len(recent) < 2:
            return None
        return (recent[-1][1] - recent[0][1] + 1) / max(now - recent[0][0], 1e-6)

    def eta(self, now: float, wait: float | None = None) -> float | None:
        """Seconds to the end at the recent rate; stalled, the known ``wait`` (a pause or
        quota that ends at a known time) plus the rest at the pace before the stall,
        else unknown."""
        if self.remaining == 0:
            return 0.0
        if self.stalled_for(now) is not None:
            pace = self.pace(now)
            if wait is None or not pace:
                return None
            return wait + self.remaining / pace
        rate = self.rate(now)
        return self.remaining / rate if rate else None


@dataclass(frozen=True, slots=True)
class ResourceNews:
    """The latest word from a resource, and when it came (monotonic and wall clock)."""

    kind: str
    what: str
    seconds: float
    at: float
    at_wall: float

    def holding(self, now: float) -> bool:
        """Whether it holds requests back now."""
        if self.kind == "circuit_open":
            return True
        return self.kind in ("paused", "quota") and now < self.at + self.seconds

    def ends_in(self, now: float) -> float | None:
        """Seconds until it lets requests go again, when known."""
        if self.kind in ("paused", "quota"):
            return max(0.0, self.at + self.seconds - now)
        return None

    def describe(self, now: float) -> str:
        if self.kind == "circuit_open":
            since = time.strftime("%H:%M:%S", time.gmtime(self.at_wall))
            return f"circuit open since {since} UTC ({self.what.partition('; ')[2]})"
        left = self.ends_in(now)
        return f"{self.what} ({format_duration(left)} left)" if left else self.what


class ProgressState:
    """Counts per stage, folded from events; shared by both displays."""

    def __init__(self) -> None:
        self.stages: dict[str, StageProgress] = {}
        self.started = time.monotonic()
        self.stopping: str | None = None
        self.finished: RunFinished | None = None
        # The latest word from each resource (paused, circuit open...), with its time.
        self.resources: dict[str, ResourceNews] = {}
        # A worker of a fleet shows the fleet's counts, read from the ledger.
        self.fleet = False
        # Per stage, the least seconds its remaining partitions need under its
        # resource's limits (a quota's windows above all), when the run knows them.
        self.floors: dict[str, Callable[[int], float]] = {}

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
            if event.kind != "rate":
                self.resources[event.resource] = ResourceNews(
                    event.kind, event.what, event.seconds, time.monotonic(), time.time()
                )
            return
        if isinstance(event, FleetCounts):
            self.fleet = True
            now = time.monotonic()
            for name, c in event.counts.items():
                stage = self.stages.setdefault(name, StageProgress(name))
                before = stage.finished
                stage.total, stage.done, stage.empty, stage.failed = (
                    c.total,
                    c.done,
                    c.empty,
                    c.failed,
                )
                stage.records = c.records
                if stage.finished > before or not stage.samples:
                    stage.progressed(now)
            return
        if isinstance(event, PartitionsDiscovered):
            if not self.fleet:
                found = self.stages.setdefault(event.stage, StageProgress(event.stage))
                found.total += event.added
            return
        if isinstance(event, WorkerJoined | WorkerLost | Tick):
            return
        stage = self.stages.setdefault(event.stage, StageProgress(event.stage))
        if isinstance(event, PartitionStarted):
            stage.running += 1
        elif isinstance(event, PartitionRetrying):
            stage.retries += 1
        elif isinstance(event, PartitionFinished):
            stage.running = max(0, stage.running - 1)
            if self.fleet:
                return  # the fleet's counts come from the ledger (FleetCounts)
            if event.status is Status.DONE:
                stage.done += 1
                stage.records += event.records
            elif event.status is Status.EMPTY:
                stage.empty += 1
            elif event.status is Status.FAILED:
                stage.failed += 1
            if event.status is not Status.PENDING:
                stage.progressed(time.monotonic())

    def holdups(self, now: float) -> list[str]:
        """Why resources hold requests back now, one sentence each."""
        return [
            f"{name} {news.describe(now)}"
            for name, news in self.resources.items()
            if news.holding(now)
        ]

    def wait(self, now: float) -> float | None:
        """The longest known wait of the resources that hold requests back; None when
        one of them holds them for an unknown time (an open circuit) or none does."""
        holding = [news for news in self.resources.values() if news.holding(now)]
        ends = [news.ends_in(now) for news in holding]
        if not holding or any(end is None for end in ends):
            return None
        return max(end for end in ends if end is not None)

    def eta(self, stage: StageProgress, now: float) -> float | None:
        """The stage's ETA (see :meth:`StageProgress.eta`), never less than what its
        resource's limits need for the partitions left: at 5 every 20 seconds, a
        window's five going out in four seconds make no rate to go by."""
        wait = self.wait(now)
        eta = stage.eta(now, wait)
        floor = self.floors.get(stage.name)
        if floor is None or not stage.remaining:
            return eta
        if eta is None:
            # No pace yet (a run restarted into a quota the one before spent): the known
            # wait, then what the limits need for the rest.
            return None if wait is None else wait + floor(stage.remaining)
        return max(eta, floor(stage.remaining))

    def stall_note(self, stage: StageProgress, now: float) -> str | None:
        """``stalled 45s: api circuit open since 03:12:05 UTC (...)`` for a stage where
        nothing finishes, with the resources' reasons; None while it moves."""
        stalled = stage.stalled_for(now)
        if stalled is None:
            return None
        reasons = self.holdups(now)
        why = f": {'; '.join(reasons)}" if reasons else ""
        return f"stalled {format_duration(stalled)}{why}"


class LiveProgress:
    """A live rich table: one row per stage with a bar, counts, rate and ETA."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console()
        self.state = ProgressState()
        self._live: Live | None = None

    def __call__(self, event: Event) -> None:
        self.state.apply(event)
        if isinstance(event, ResourceChanged) and event.kind == "rate":
            # Said once (a declared rate the source refuses, a run that starts where the
            # last one left the rate): a line above the table, as plain output and the
            # log say it; the footer keeps to what holds requests back now.
            self.console.print(Text(visible(f"{event.resource}: {event.what}")))
        elif isinstance(event, RunStarted) and self._live is None:
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
        table.add_column("in progress", justify="right", style="cyan")
        table.add_column("left", justify="right")
        table.add_column("rate", justify="right")
        table.add_column("ETA", justify="right")
        for s in self.state.stages.values():
            rate = s.rate(now)
            stalled = s.stalled_for(now)
            eta = format_duration(self.state.eta(s, now))
            table.add_row(
                Text(visible(s.name)),
                ProgressBar(total=max(1, s.total), completed=s.finished, width=26),
                f"{s.done:,}",
                f"{s.empty:,}",
                f"{s.failed:,}",
                f"{s.running:,}",
                f"{s.remaining:,}",
                f"{rate:,.1f}/s" if rate else "-",
                eta if stalled is None else f"stalled {format_duration(stalled)} · {eta}",
            )
        elapsed = format_duration(now - self.state.started)
        footer = f"elapsed {elapsed}"
        for holdup in self.state.holdups(now):
            footer += f" · {holdup}"
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
        if isinstance(event, Tick):
            if now - self._last >= self.interval:
                self._report(now)
            return
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
        # On the interval's own cadence, not the events': a stall has its lines too.
        self._last = now if now - self._last > 2 * self.interval else self._last + self.interval
        elapsed = format_duration(now - self.state.started)
        for s in self.state.stages.values():
            rate = s.rate(now)
            pct = 100.0 * s.finished / s.total if s.total else 100.0
            note = self.state.stall_note(s, now)
            self._write(
                f"[{elapsed}] {s.name}: {s.finished:,}/{s.total:,} ({pct:.0f}%) "
                f"done {s.done:,} empty {s.empty:,} failed {s.failed:,} "
                f"in progress {s.running:,} "
                f"rate {f'{rate:.1f}/s' if rate else '-'} "
                f"ETA {format_duration(self.state.eta(s, now))}" + (f" · {note}" if note else "")
            )

    def _write(self, line: str) -> None:
        # Lines quote sources (error messages, keys): escape what a terminal would obey.
        self.stream.write(visible(line) + "\n")
        self.stream.flush()
