"""Stopping a run: a graceful stop, an immediate one, and the first fatal error.

Every collaborator that may end the run (a signal, a fatal stage error, a failed write
to the ledger) goes through one :class:`RunControl`, so the run's end has one cause on
record and in-flight work is cancelled in one place.
"""

from __future__ import annotations

import asyncio

from backfill.clock import Clock
from backfill.errors import BackfillError, FatalError, StageError
from backfill.events import EventBus, RunStopping
from backfill.secrets import Masker

__all__ = ["RunControl"]


class RunControl:
    """Whether the run stops, how, and why; the partitions' tasks it cancels."""

    def __init__(self, bus: EventBus, clock: Clock, masker: Masker, grace: float) -> None:
        self._bus = bus
        self._clock = clock
        self._masker = masker
        self._grace = grace
        self.stopping = asyncio.Event()
        self.immediate = False
        self.interrupted = False
        self.fatal: StageError | None = None
        # The partitions' tasks in flight: what an immediate stop cancels.
        self.tasks: set[asyncio.Task[None]] = set()
        self._grace_task: asyncio.Task[None] | None = None

    def stopped(self) -> bool:
        """Whether the run stops (or stopped)."""
        return self.stopping.is_set()

    def stop(self, reason: str = "interrupted", *, immediate: bool = False) -> None:
        """Stop claiming; finish in-flight work (or cancel it when ``immediate``)."""
        first = not self.stopping.is_set()
        self.interrupted = self.interrupted or reason == "interrupted"
        self.stopping.set()
        if immediate and not self.immediate:
            self.immediate = True
            self._cancel_in_flight()
        elif first:
            self._grace_task = asyncio.get_running_loop().create_task(self._grace_then_cancel())
        if first or immediate:
            self._bus.emit(RunStopping(self._masker.mask(reason), immediate=immediate))

    def interrupt(self) -> None:
        """First call: graceful stop. Second call: cancel in-flight work at once."""
        self.stop("interrupted", immediate=self.stopping.is_set())

    def fail(self, error: StageError) -> None:
        """A fatal error: the first one is the run's cause, and the run stops at once
        saying so; a later one (the same full disk, met by another collaborator) is
        neither, once the run stops at once."""
        first = self.fatal is None
        if first:
            self.fatal = error
        if first or not self.immediate:
            self.stop(f"fatal: {error.message}", immediate=True)

    def fail_first(self, error: StageError) -> None:
        """A fatal error met by one partition: only the first one stops the run."""
        if self.fatal is None:
            self.fail(error)

    def note(self, exc: BackfillError) -> None:
        """A failure while the run ends: its cause, unless it has one already."""
        if self.fatal is None:
            self.fatal = FatalError(str(exc), category=type(exc).__name__)

    async def sleep(self, seconds: float) -> None:
        """Sleep on the run's clock, or less when the run stops."""
        stopped = asyncio.ensure_future(self.stopping.wait())
        sleeping = asyncio.ensure_future(self._clock.sleep(seconds))
        await asyncio.wait({stopped, sleeping}, return_when=asyncio.FIRST_COMPLETED)
        for task in (stopped, sleeping):
            task.cancel()

    def close(self) -> None:
        if self._grace_task is not None:
            self._grace_task.cancel()

    def _cancel_in_flight(self) -> None:
        for task in list(self.tasks):
            task.cancel()

    async def _grace_then_cancel(self) -> None:
        await self._clock.sleep(self._grace)
        self._cancel_in_flight()
