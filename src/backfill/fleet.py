"""Limits that hold for a whole fleet of workers, through a shared ledger.

Each resource's per-second rate is one schedule in the database: a worker books start
instants in small blocks (a quarter second's worth at most, as many as it has requests
waiting), so the starts of all workers together are spaced as one process would space
them. A Retry-After seen by any worker pauses the schedule for all. Concurrency is split
into per-worker shares, rebalanced as workers join, leave or die.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from concurrent.futures import ThreadPoolExecutor

from backfill.clock import Clock
from backfill.errors import BackfillError
from backfill.ledger import SharedLimits
from backfill.ratelimit import Resource

__all__ = ["LedgerRate", "concurrency_share"]

log = logging.getLogger("backfill.fleet")


class LedgerRate:
    """A :class:`~backfill.ratelimit.SharedRate` kept in the ledger's database."""

    def __init__(
        self,
        ledger: SharedLimits,
        job: str,
        resource: Resource,
        pool: ThreadPoolExecutor,
        clock: Clock,
    ) -> None:
        self.ledger = ledger
        self.job = job
        self.resource = resource
        self.pool = pool
        self.clock = clock

    async def take(self, count: int) -> tuple[list[float], float]:
        interval = self.resource.rate_interval
        book = functools.partial(
            self.ledger.take_starts,
            self.job,
            self.resource.name,
            count=count,
            interval=interval,
            tolerance=(self.resource.burst - 1) * interval,
        )
        base, paused = await asyncio.get_running_loop().run_in_executor(self.pool, book)
        # The database's "now" lies somewhere in the round trip; its end is the safe
        # origin (starts can only come later than booked, never earlier).
        origin = self.clock.monotonic()
        starts = [max(origin, origin + base + i * interval) for i in range(count)]
        return starts, origin + paused

    def pause(self, seconds: float) -> None:
        self.pool.submit(self._pause, seconds)

    def _pause(self, seconds: float) -> None:
        try:
            self.ledger.pause_resource(self.job, self.resource.name, seconds)
        except BackfillError as exc:
            log.warning("could not share a pause of %s: %s", self.resource.name, exc)


def concurrency_share(total: int, workers: list[str], me: str) -> int:
    """This worker's part of ``total`` slots among ``workers`` (sorted ids): an even split,
    the remainder to the first ones, and never less than one, so every worker progresses.

    >>> [concurrency_share(10, ["a", "b", "c"], w) for w in "abc"]
    [4, 3, 3]
    """
    ids = sorted(set(workers) | {me})
    base, extra = divmod(total, len(ids))
    return max(1, base + (1 if ids.index(me) < extra else 0))
