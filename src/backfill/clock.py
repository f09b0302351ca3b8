"""Time, injectable so tests of leases, backoff and ETA run instantly."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Protocol

__all__ = ["Clock", "SystemClock", "format_duration", "format_wall"]


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
