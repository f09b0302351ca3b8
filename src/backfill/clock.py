"""Time, injectable so tests of leases, backoff and ETA run instantly."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import time
from collections.abc import Iterator
from typing import Protocol

__all__ = [
    "Clock",
    "Deadline",
    "SystemClock",
    "current_deadline",
    "format_duration",
    "format_wall",
]


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the epoch (stored in the ledger)."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, for durations and rates."""

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def format_duration(seconds: float | None) -> str:
    """``21d04h``, ``3h04m``, ``12m05s``, ``42s``; ``-`` when unknown."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "-"
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 48:
        return f"{hours // 24}d{hours % 24:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_wall(epoch: float, now: float) -> str:
    """An instant for people: ``06:00 UTC``, with its date when it is not today's."""
    when = dt.datetime.fromtimestamp(epoch, dt.UTC)
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    text = when.strftime("%H:%M UTC")
    return text if when.date() == today else f"{when.date().isoformat()} {text}"


class Deadline:
    """A stage's timeout that stands still while its partition waits for a turn at a
    resource (the source's pace, a pause, an open circuit, a used-up quota): the timeout
    bounds the partition's own work, not the engine's waiting.

    Holds nest (a partition may wait for several requests at once); the clock runs again
    when the last one ends, with what was left of it.
    """

    def __init__(self, timeout: asyncio.Timeout) -> None:
        self._timeout = timeout
        self._held = 0
        self._left: float | None = None

    def hold(self) -> None:
        if self._held == 0:
            when = self._timeout.when()
            loop = asyncio.get_running_loop()
            self._left = None if when is None else when - loop.time()
            try:
                self._timeout.reschedule(None)
            except RuntimeError:  # already expiring: the partition is timing out
                self._left = None
        self._held += 1

    def release(self) -> None:
        self._held -= 1
        if self._held == 0 and self._left is not None:
            loop = asyncio.get_running_loop()
            with contextlib.suppress(RuntimeError):
                self._timeout.reschedule(loop.time() + max(0.0, self._left))


# The deadline of the partition whose task is running (set by the runner).
current_deadline: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar(
    "backfill_deadline", default=None
)


@contextlib.contextmanager
def deadline_held() -> Iterator[None]:
    """The running partition's deadline stands still within (the engine's waiting, not
    the partition's work); nothing happens outside a partition."""
    deadline = current_deadline.get()
    if deadline is None:
        yield
        return
    deadline.hold()
    try:
        yield
    finally:
        deadline.release()
