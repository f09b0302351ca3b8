"""Limits that hold for a whole fleet of workers, through a shared ledger.

Each resource's per-second rate is one schedule in the database: a worker books start
instants in small blocks (a quarter second's worth at most, as many as it has requests
waiting), so the starts of all workers together are spaced as one process would space
them, at the pace the fleet learned its source needs (a hair under a strict declared
rate: see :func:`~backfill.ratelimit.fleetpace.fleet_pace`). Quotas (e.g. 10000/day)
are counted in the same booking, over the fleet's starts.
A Retry-After seen by any worker pauses the schedule for all. Concurrency is split
into per-worker shares, rebalanced as workers join, leave or die.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from backfill.clock import Clock
from backfill.errors import BackfillError
from backfill.ledger import SharedLimits
from backfill.ratelimit import Resource
from backfill.ratelimit.sharing import BOOK_AHEAD, Taken, quota_margin

__all__ = ["LedgerRate", "booking", "concurrency_share"]

log = logging.getLogger("backfill.fleet")


class LedgerRate:
    """A :class:`~backfill.ratelimit.SharedRate` kept in the ledger's database.

    Booked starts are instants on the database's clock. They are mapped onto this
    process's clock through the offset between the two, bounded NTP-style: the database
    read its clock somewhere inside the round trip, so (its now) - (our clock when the
    reply came) is a lower bound of the offset, and the largest such bound of the last
    few seconds is the tightest. A reply held up on its way (this process short of CPU)
    then shows its starts as late as they are, so the resource drops them instead of
    sending them on top of the starts other workers were given after them; with only
    the latest round trip to go by, they would look on time.
    """

    # Long enough to hold a quick round trip, short enough that the two clocks cannot
    # drift apart meanwhile by more than a fraction of a millisecond.
    horizon = 10.0

    def __init__(
        self,
        ledger: SharedLimits,
        job: str,
        resource: Resource,
        pool: ThreadPoolExecutor,
        clock: Clock,
        *,
        rate: bool = True,
    ) -> None:
        self.ledger = ledger
        self.job = job
        self.resource = resource
        # Whether the resource's per-second rate is kept here too, or only its quotas.
        self.rate = rate
        self.pool = pool
        self.clock = clock
        self._bounds: deque[tuple[float, float]] = deque()
        # The last booking's (database now, our instant for it): maps our instants back.
        self._mapped: tuple[float, float] | None = None
        # Who books, for the fleet's pace (a worker alone books at the rate it learned).
        self._worker = uuid.uuid4().hex[:12]

    def _origin(self, db_now: float, received: float) -> float:
        """The latest instant on our clock at which the database can have read ``db_now``."""
        bounds = self._bounds
        while bounds and bounds[0][0] < received - self.horizon:
            bounds.popleft()
        bound = db_now - received
        # Keep only bounds that may still be the tightest: larger, or newer than all.
        while bounds and bounds[-1][1] <= bound:
            bounds.pop()
        bounds.append((received, bound))
        return db_now - bounds[0][1]

    @property
    def scope(self) -> str:
        """Whose schedule it is: the job's, or every job's (``*``) for a shared resource."""
        return "*" if self.resource.shared else self.job

    async def take(self, count: int) -> Taken:
        interval, tolerance = booking(self.resource) if self.rate else (0.0, 0.0)
        # What the starts booked were answered since the last booking, its instants on
        # the database's clock (none before the first booking maps them).
        report = self.resource.fleet.report(self._worker)
        if self._mapped is not None:
            db_now, origin = self._mapped
            report = dataclasses.replace(
                report,
                answers=[(db_now + sent - origin, ok) for sent, ok in report.answers],
                early=[db_now + sent - origin for sent in report.early],
            )
        else:
            report = dataclasses.replace(report, answers=[], early=[])
        own = report.own
        quotas = [(int(q.count), q.period) for q in self.resource.quotas]
        # A block never holds more starts than the smallest quota allows in its window.
        count = min([count, *(n for n, _ in quotas)])
        book = functools.partial(
            self.ledger.take_starts,
            self.scope,
            self.resource.name,
            count=count,
            interval=interval,
            tolerance=tolerance,
            quotas=quotas,
            max_pause=self.resource.max_wait,
            margin=quota_margin(interval, 0.0 if self.rate else self.resource.rate_interval),
            horizon=BOOK_AHEAD,
            learn=report if self.rate else None,
        )
        loop = asyncio.get_running_loop()
        due, paused, db_now, rate = await loop.run_in_executor(self.pool, book)
        origin = self._origin(db_now, self.clock.monotonic())
        self._mapped = (db_now, origin)
        if len(due) == 1 and due[0] > BOOK_AHEAD:
            return Taken([], origin + paused, later=origin + due[0], rate=rate, own=own)
        return Taken([origin + offset for offset in due], origin + paused, rate=rate, own=own)

    def pause(self, seconds: float) -> None:
        self.pool.submit(self._pause, seconds)

    def _pause(self, seconds: float) -> None:
        try:
            self.ledger.pause_resource(self.scope, self.resource.name, seconds)
        except BackfillError as exc:
            log.warning("could not share a pause of %s: %s", self.resource.name, exc)


def booking(resource: Resource) -> tuple[float, float]:
    """How a worker books the fleet's starts of ``resource``: the declared rate's interval,
    the least the schedule spaces them by, and the tolerance of the burst one process
    runs at (part of a declared burst kept in hand for the way's jitter: see
    Pace.run_burst); the schedule books them at the pace it learned for the whole fleet
    (see :func:`~backfill.ratelimit.fleetpace.fleet_pace`).

    Booked instead at each worker's learned rate, a fleet in front of a strict bucket ran
    two to three times faster, but at the harmonic mean of its workers' rates: one
    worker still low after an outage (4.7/s beside three at 19.5) held four on a 20/s
    source at 11/s for a minute, where they came back within two seconds.
    """
    interval = resource.rate_interval
    return interval, (resource.pace.run_burst - 1) * interval


def concurrency_share(total: int, workers: list[str], me: str) -> int:
    """This worker's part of ``total`` slots among ``workers`` (sorted ids): an even split,
    the remainder to the first ones, and never less than one, so every worker progresses.

    >>> [concurrency_share(10, ["a", "b", "c"], w) for w in "abc"]
    [4, 3, 3]
    """
    ids = sorted(set(workers) | {me})
    base, extra = divmod(total, len(ids))
    return max(1, base + (1 if ids.index(me) < extra else 0))
