"""A resource shared by a fleet of workers: starts from one schedule for all of them."""

from __future__ import annotations

import asyncio
import collections
import math
from typing import TYPE_CHECKING, NamedTuple, Protocol

from backfill.ratelimit.fleetpace import Report
from backfill.ratelimit.grants import MAX_LEAD

if TYPE_CHECKING:
    from backfill.ratelimit.resource import Resource

# How late a start of quotas only (no rate to space by) may still go: later, it is
# dropped, as a rate's start is, past half its interval.
QUOTA_LATE = 0.25
# How far ahead starts are booked: one due later is not booked but asked for again
# nearer its instant, so a run that stops while waiting for a quota leaves none of its
# window spent on starts never sent.
BOOK_AHEAD = 1.0
# The most answers a worker keeps for the fleet's pace between two bookings.
ANSWERS = 10_000


def lateness(interval: float) -> float:
    """How late a start may still go out: half the rate's ``interval``, or QUOTA_LATE."""
    return interval / 2 if interval else QUOTA_LATE


def quota_margin(interval: float, own_interval: float = 0.0) -> float:
    """What a quota's window is widened by when starts are booked: a start goes out up
    to MAX_LEAD early or :func:`lateness` late, so starts booked a window apart could
    reach the source a little less than one window apart, one more than the quota in it.
    ``own_interval``: a rate this process spaces its requests at where they are written,
    after their quota's start (see :class:`QuotaGrant`), which may add about two of its
    intervals."""
    return MAX_LEAD + lateness(interval) + 2 * own_interval


class Taken(NamedTuple):
    """Starts reserved on a shared schedule, instants on this process's ``monotonic``
    scale: ``starts``; ``paused_until``, the instant until which the whole fleet is
    paused; and, when no start was due within BOOK_AHEAD seconds (none reserved), the
    first instant the schedule allows one (``later``): ask again then; the rate the
    fleet books at (``rate``: its pace, see :func:`~backfill.ratelimit.fleetpace.fleet_pace`;
    0 when not told), and the rate this process had learned when it asked (``own``)."""

    starts: list[float]
    paused_until: float
    later: float | None = None
    rate: float = 0.0
    own: float | None = None


class SharedRate(Protocol):
    """Start instants handed out to every worker of a fleet from one schedule."""

    async def take(self, count: int) -> Taken:
        """Reserve up to ``count`` starts due within BOOK_AHEAD seconds (see
        :class:`Taken`)."""

    def pause(self, seconds: float) -> None:
        """Pause the whole fleet for ``seconds`` from now (returns at once)."""


class FleetShare:
    """A resource's starts from a fleet's schedule (:class:`SharedRate`, none while the
    resource is this process's alone): taken a few at a time for every request waiting,
    each used on time or dropped."""

    def __init__(self, resource: Resource) -> None:
        self.resource = resource
        self.shared: SharedRate | None = None
        # The fleet grants the per-second rate too, not only the quotas.
        self.rate = True
        self._slots: collections.deque[float] = collections.deque()
        self._taking: asyncio.Lock | None = None
        self._waiting = 0
        # What the starts taken were answered since the last booking, on this process's
        # clock, for the fleet's pace to learn from (see fleet_pace): (sent, accepted) and
        # the instants of those refused a hair early; the pace the fleet books at.
        self._answers: collections.deque[tuple[float, bool]] = collections.deque(maxlen=ANSWERS)
        self._early: collections.deque[float] = collections.deque(maxlen=ANSWERS)
        # The last limit a source's header said since the last booking, per second.
        self.told: float | None = None
        self.pace: float | None = None

    def share_with(self, shared: SharedRate | None, *, rate: bool = True) -> None:
        """Take starts from ``shared`` (None: no more), forgetting any taken before."""
        self.shared = shared
        self.rate = rate
        self._slots.clear()
        self._answers.clear()
        self._early.clear()
        self.told = self.pace = None

    def answered(self, sent: float, accepted: bool, *, early: bool = False) -> None:
        """A request sent at ``sent`` was accepted, or refused with a 429 (``early``: a
        hair early, the rate about right): the fleet's pace hears of it with the next
        booking (a rate of this process's own learns alone)."""
        if self.shared is not None and self.rate:
            self._answers.append((sent, accepted))
            if early:
                self._early.append(sent)

    def said(self, rate: float) -> None:
        """The source said its limit in a header (``rate`` per second): the fleet's pace
        takes it with the next booking."""
        if self.shared is not None and self.rate:
            self.told = rate

    def report(self, worker: str) -> Report:
        """What this process tells the fleet's pace with a booking, as ``worker``: the
        answers, refusals a hair early and a header's figure since the last report
        (instants on this process's clock; see :meth:`answered`), and the rate it
        learned on its own."""
        learned = self.resource.pace.learned
        report = Report(
            list(self._answers),
            list(self._early),
            self.told,
            worker,
            None if learned is None else learned.rate,
        )
        self._answers.clear()
        self._early.clear()
        self.told = None
        return report

    async def start(self) -> tuple[float, float]:
        """Wait for a start instant from the fleet's schedule; return it and the latest
        instant at which the request may still go out.

        Instants are used only on time: one found more than half an interval late (its
        holder was busy) is dropped, never spent later, where it would bunch up with the
        starts other workers were given after it. A start is handed over ahead of its
        instant by the time requests take to reach the wire, and checked again there
        (see :class:`Grant` and :mod:`backfill.sources.wire`).
        """
        assert self.shared is not None
        resource = self.resource
        clock = resource.clock
        interval = resource.rate_interval if self.rate else 0.0
        # With a rate, a start more than half an interval late would bunch up with later
        # ones; a quota's start sent late would crowd its next window (see quota_margin).
        late = lateness(interval)
        lead = min(1.5 * resource.wire.way, MAX_LEAD) if interval else 0.0
        if self._taking is None:
            self._taking = asyncio.Lock()
        self._waiting += 1
        try:
            while True:
                now = clock.monotonic()
                while self._slots and self._slots[0] < now - late:
                    self._slots.popleft()
                if self._slots:
                    start = self._slots.popleft()
                    if start - lead <= now:
                        return start, start + late
                    if start - now > max(5.0, 2 * interval) and start > resource.paused_until:
                        resource.say_quota_wait(start)
                    await clock.sleep(start - lead - now)
                    # Woken late (the loop or the CPU was busy): the start is as stale
                    # as one found late, and is dropped the same way.
                    if clock.monotonic() <= start + late:
                        return start, start + late
                    continue
                async with self._taking:
                    if self._slots:
                        continue
                    # Everyone waiting now, but no more than a quarter second's worth.
                    most = math.ceil(0.25 / interval) if interval else 16
                    count = max(1, min(self._waiting, most))
                    starts, paused_until, later, pace, own = await self.shared.take(count)
                    if pace:
                        self.pace = pace
                        if own is not None and abs(pace - own) > 0.01 * own:
                            # The fleet books at another pace than this process learned
                            # from its share of the answers: its own rate follows.
                            resource.pace.follow(pace, clock.monotonic())
                    now = clock.monotonic()
                    if paused_until > now + 1e-3:
                        resource.hold_until(
                            min(paused_until, now + resource.max_wait),
                            "retry-after, seen by another worker",
                        )
                    if later is not None:
                        # None booked: a quota's window frees a start then. Wait for it
                        # (saying so, when it is a wait worth a word), and ask again, a
                        # little before.
                        if later - now > max(5.0, 2 * interval) and later > resource.paused_until:
                            resource.say_quota_wait(later)
                        await clock.sleep(max(0.0, later - now - BOOK_AHEAD / 2))
                        continue
                    self._slots.extend(starts)
        finally:
            self._waiting -= 1
