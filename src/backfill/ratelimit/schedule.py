"""When a process's next request may start under each declared limit: virtual scheduling
(GCRA) for a rate, an exact sliding window for a quota, and the same arithmetic for
starts booked on a schedule a fleet shares (:func:`book_block`)."""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence

from backfill.ratelimit.limits import QUOTA_PERIOD, Limit

# A quota of more starts than this is counted as a rate: a log that long costs more
# than exactness is worth (a resource refuses such a quota in limits=).
MAX_QUOTA = 1_000_000
# One process spaces its requests at the wire too at rates of 20/s or less (see WireGap);
# faster, run one at a time, a turn woken late takes time back from the next (see
# Schedule.take_back).
WIRE_GAP_MIN_INTERVAL = 0.05


class Scheduler:
    """Virtual scheduling for one limit: when may the next request start?"""

    __slots__ = ("catch_up", "interval", "take_back", "tat", "tolerance")

    def __init__(self, rate: float, burst: int) -> None:
        self.interval = 1.0 / rate
        # A full bucket at start: ``burst`` requests may go at once, not more.
        self.tolerance = (burst - 1) * self.interval
        self.tat = -math.inf
        # The share of an interval a start taken late may take back from the next one
        # (see AdaptiveRate.catch_up); none for a declared limit.
        self.catch_up = 0.0
        # ... and the share a turn woken late takes back, run one at a time faster than the
        # wire spaces (see Schedule.take_back).
        self.take_back = 0.0

    def set_rate(
        self, rate: float, burst: int, now: float | None = None, *, catch_up: float = 0.0
    ) -> None:
        self.catch_up = catch_up
        interval = 1.0 / rate
        # Slower, the next start is an interval of the new rate after the last one, even
        # when the old rate had fallen behind (its next start due at once).
        spaced = self.tat - self.interval + interval
        if now is not None and self.tat > now:
            # What is owed was counted at the old rate: respace it at the new one, so a
            # rate that grows takes effect at once instead of after the waits booked.
            self.tat = now + (self.tat - now) * interval / self.interval
        if interval > self.interval:
            self.tat = max(self.tat, spaced)
        self.interval = interval
        self.tolerance = (burst - 1) * interval

    def earliest(self, now: float) -> float:
        return max(now, self.tat - self.tolerance)

    def book(self, start: float, due: float | None = None) -> None:
        """A start at ``start``; ``due``: the instant its turn slept until, when it did
        (see :meth:`Schedule.take_back`)."""
        catch_up = self.catch_up
        if (
            due is not None
            and start > due
            and self.take_back > 0.0
            and self.tolerance == 0.0
            and self.interval < WIRE_GAP_MIN_INTERVAL
        ):
            # (Taken back: nothing more on top, or two starts would come closer still.)
            start, catch_up = max(due, start - self.take_back * self.interval), 0.0
        self.tat = next_instant(self.tat, start, self.interval, catch_up)


def next_instant(tat: float, start: float, interval: float, catch_up: float) -> float:
    """The rate's next instant after a start at ``start`` whose own was ``tat``: an
    interval after it, or after ``start`` when that came later. A start late by less
    than an interval (the loop or the CPU woke its turn late, or, alike to it, nobody
    was waiting on the instant) takes up to ``catch_up`` of an interval back from the
    next one; one later still is a new start after a lull, spaced a whole interval.

    >>> next_instant(10.0, 10.0, 1.0, 0.05)
    11.0
    >>> next_instant(10.0, 10.02, 1.0, 0.05)
    11.0
    >>> next_instant(10.0, 10.5, 1.0, 0.05)
    11.45
    >>> next_instant(10.0, 10.5, 1.0, 0.0)
    11.5
    >>> next_instant(10.0, 12.0, 1.0, 0.05)
    13.0
    """
    if start <= tat:
        return tat + interval
    if start - tat >= interval:
        return start + interval
    return max(tat + interval, start + interval * (1.0 - catch_up))


class Window:
    """At most ``count`` starts in any window of ``period`` seconds (a quota such as
    10000/day): exact, from a log of the last ``count`` starts."""

    __slots__ = ("count", "log", "period")

    def __init__(self, count: int, period: float) -> None:
        self.count = count
        self.period = period
        self.log: collections.deque[float] = collections.deque(maxlen=count)

    def earliest(self, now: float) -> float:
        if len(self.log) < self.count:
            return now
        return max(now, self.log[0] + self.period)

    def book(self, start: float, due: float | None = None) -> None:
        """A start at ``start`` (``due`` is the rates' business: see Scheduler.book)."""
        self.log.append(start)


def book_block(
    *,
    now: float,
    tat: float,
    paused_until: float,
    count: int,
    interval: float,
    tolerance: float,
    earlier: Sequence[tuple[float, Sequence[float | None]]] = (),
) -> tuple[float, list[float]]:
    """Book ``count`` starts on one shared schedule; return the schedule's next ``tat``
    and the instants of the starts (all on the schedule's clock, ``now`` included).

    The rate is GCRA: the first start is due at ``max(tat, now - tolerance,
    paused_until)``, each next one ``interval`` after the one before, and starts due
    before ``now`` go at ``now`` (the burst). ``earlier`` holds, per quota, its period
    and, for each new start, the start made ``quota count`` starts before it (None while
    fewer were made): a start waits until that one has left the quota's window.
    ``count`` must not exceed a quota's count.

    >>> book_block(now=10.0, tat=9.0, paused_until=0.0, count=3, interval=0.5, tolerance=0.0)
    (11.5, [10.0, 10.5, 11.0])
    >>> book_block(now=10.0, tat=0.0, paused_until=0.0, count=2, interval=1.0, tolerance=0.0,
    ...            earlier=[(60.0, [None, 5.0])])
    (66.0, [10.0, 65.0])
    """
    due = max(tat, now - tolerance, paused_until)
    starts = []
    for i in range(count):
        for period, previous in earlier:
            before = previous[i]
            if before is not None:
                due = max(due, before + period)
        starts.append(max(now, due))
        due += interval
    return due, starts


class Schedule:
    """This process's bookings for one resource: a scheduler per declared limit (a window
    for a quota) and one at the rate learned from the source (``pace``, none for a
    resource of quotas only), whose burst may be smaller (``pace_burst``: see
    :attr:`Pace.run_burst`).

    With a fleet, the shared schedule grants the per-second rate and the quotas (see
    :meth:`share`); of this process's own schedulers only the others still apply:
    booking a granted start on a copy of the fleet's rate too would hold it past its
    instant, and a start held past its instant is not sent. So would the rate this
    process learned, from its share of the answers: the fleet learns its pace from all
    of them (see :func:`~backfill.ratelimit.fleetpace.fleet_pace`).
    """

    __slots__ = ("_unshared", "_unshared_quotas", "local", "pace", "schedulers", "shared")

    def __init__(
        self,
        limits: list[Limit],
        burst: int,
        pace_rate: float | None,
        pace_burst: int | None = None,
    ) -> None:
        self.schedulers: list[Scheduler | Window] = [
            Window(int(lim.count), lim.period)
            if lim.period > QUOTA_PERIOD and lim.count <= MAX_QUOTA and lim.count == int(lim.count)
            else Scheduler(lim.rate, burst)
            for lim in limits
        ]
        self.pace: Scheduler | None = None
        if pace_rate is not None:
            self.pace = Scheduler(pace_rate, pace_burst or burst)
            self.schedulers.append(self.pace)
        self._unshared: list[Scheduler | Window] = [
            s
            for s, lim in zip(self.schedulers, limits, strict=False)
            if isinstance(s, Scheduler) and lim.period > QUOTA_PERIOD
        ]
        # ... or, when only the quotas are shared, every one but the quotas.
        self._unshared_quotas: list[Scheduler | Window] = [
            s for s in self.schedulers if not isinstance(s, Window)
        ]
        # What still applies once shared; kept through a reset (see quota_binds).
        self.local: list[Scheduler | Window] = self.schedulers
        self.shared = False

    def share(self, *, rate: bool) -> None:
        """A fleet's schedule grants the quotas, and the per-second rate too with ``rate``."""
        self.shared = True
        self.local = self._unshared if rate else self._unshared_quotas

    def reset(self) -> None:
        """Forget every booking, and the fleet (a new run starts)."""
        for scheduler in self.schedulers:
            if isinstance(scheduler, Window):
                scheduler.log.clear()
            else:
                scheduler.tat = -math.inf
        self.shared = False

    def take_back(self, share: float) -> None:
        """The share of an interval a turn woken late takes back from the next one under
        every rate spaced one at a time faster than 20/s: booked as if it had started on
        the instant it slept until, or that share of an interval after the instant it did
        start when it woke later still (``share`` 0: none; a source refused one: see
        :meth:`Pace.refused_taken_back`).

        Turns are milliseconds apart there, and nothing spaces requests again where they
        are written (see :class:`WireGap`): a loop busy with an answer's body for a few
        milliseconds wakes the next turn that much late, and spaced from it, that time is
        lost for good. At 100/s on a busy 2-core machine (turns woken 0.2 ms late at the
        median, 4 ms at the 90th percentile, 12 ms at the 99th) a fifth of the rate went
        so. Half an interval taken back keeps starts on the rate's grid (no second holds
        more than the rate and one) and no two closer than half an interval: a source of
        any bucket over one never notices, nor one behind a way that jitters as much. A
        turn asked for after its instant (nobody was waiting: it did not sleep) takes
        back only what the learned rate allows (``catch_up``). A resource's pace sets it
        once its source took two hundred answers in a row (see :meth:`Pace.on_success`)."""
        for scheduler in self.schedulers:
            if isinstance(scheduler, Scheduler):
                scheduler.take_back = share

    def earliest(self, start: float) -> float:
        """The first instant from ``start`` at which every limit that applies allows one."""
        for scheduler in self.local if self.shared else self.schedulers:
            start = max(start, scheduler.earliest(start))
        return start

    def book(self, now: float, due: float | None = None) -> None:
        """A request starts at ``now``; ``due``: the instant its turn slept until, when it
        did (see :meth:`take_back`)."""
        for scheduler in self.local if self.shared else self.schedulers:
            scheduler.book(now, due)

    def quota_binds(self, now: float, due: float) -> bool:
        """A quota of this process's own is what holds the next start until ``due``."""
        return any(isinstance(w, Window) and w.earliest(now) >= due for w in self.local)

    @property
    def quotas(self) -> list[Limit]:
        """The limits counted over a sliding window, e.g. 10000/day."""
        return [Limit(s.count, s.period) for s in self.schedulers if isinstance(s, Window)]
