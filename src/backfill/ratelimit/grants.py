"""Starts on their way to the wire: what a request was granted when it took its turn, and
checked again where it is written (see :mod:`backfill.sources.wire`)."""

from __future__ import annotations

import contextvars
import logging
import math
from typing import TYPE_CHECKING

from backfill.clock import Clock
from backfill.ratelimit.schedule import next_instant

if TYPE_CHECKING:
    from backfill.ratelimit.resource import Resource

log = logging.getLogger("backfill.ratelimit")

# A request that found its fleet start stale on the way to the wire this many times in a
# row goes with the next one anyway.
_MAX_WIRE_MISSES = 5
# The head start a fleet start is handed over with, at most (see Grant).
MAX_LEAD = 0.25


class LateStart(Exception):
    """A start from a fleet's shared schedule came due while this process was busy, or
    a pause began (a 429 answered) while the request was on its way to the wire: the
    request was not sent, and takes a new start."""


class Wire:
    """How one resource's requests reach the wire: how long the way takes (an EWMA), the
    rate's next instant there (see :class:`WireGap`), and fleet starts missed there."""

    __slots__ = ("misses", "sent_late", "tat", "way")

    def __init__(self) -> None:
        self.way = 0.0  # how long a granted request takes to reach the wire (EWMA)
        self.tat = -math.inf  # the rate's theoretical next instant at the wire
        self.misses = 0  # fleet starts missed at the wire in a row
        self.sent_late = 0  # requests sent past their fleet start, after too many misses

    def turn(self, now: float, rate: float, burst: int, catch_up: float = 0.0) -> float:
        """Seconds a request written at ``now`` must still wait to keep ``rate`` (and
        ``burst``) between the instants requests reach the wire; 0 when it may go now,
        and then it is booked (``catch_up``: see :func:`next_instant`)."""
        interval = 1.0 / rate
        due = max(now, self.tat - (burst - 1) * interval)
        if due > now + 1e-4:
            return due - now
        self.tat = next_instant(self.tat, now, interval, catch_up)
        return 0.0

    def measure_way(self, seconds: float) -> None:
        """How long a granted request took to reach the wire (see Grant)."""
        self.way += 0.1 * (min(seconds, MAX_LEAD) - self.way)

    def went_late(self, name: str) -> None:
        """A request of resource ``name`` went out past its fleet start, after missing it
        too often; say so once a run."""
        self.misses = 0
        self.sent_late += 1
        if self.sent_late == 1:
            log.warning(
                "resource %s: requests reach the wire later than the fleet's schedule "
                "allows (this process is too busy); some are sent late",
                name,
            )


class Grant:
    """A start from a fleet's schedule, on its way to the wire with its request.

    The resource hands it over ahead of its instant by the time requests usually take to
    reach the wire (measured), and the request waits there until the instant: on time
    however slow the way is. A grant found past its deadline there is not used
    (:class:`LateStart`), unless its request has already missed ``_MAX_WIRE_MISSES``
    in a row: a process too busy ever to be on time still makes progress. Nor is one
    found inside a pause begun since it was granted: the request takes a new start.
    """

    __slots__ = ("deadline", "granted", "resource", "start")

    def __init__(self, resource: Resource, start: float, deadline: float) -> None:
        self.resource = resource
        self.start = start
        self.deadline = deadline
        self.granted = resource.clock.monotonic()

    def at_wire(self) -> float:
        """Seconds the request must still wait before it goes (0: now); raises
        :class:`LateStart` when it is too late to go at all."""
        resource = self.resource
        wire = resource.wire
        now = resource.clock.monotonic()
        wire.measure_way(now - self.granted)
        if resource.paused_until > now:
            # Paused since the start was granted (a 429 answered meanwhile): the request
            # is not sent into the pause; it takes a new start, after it.
            raise LateStart
        if now > self.deadline:
            if wire.misses < _MAX_WIRE_MISSES:
                wire.misses += 1
                raise LateStart
            wire.went_late(resource.name)
            return 0.0
        wire.misses = 0
        return max(0.0, self.start - now)


class PauseGate:
    """The least a request is checked for where it is written: a pause begun since its
    turn was taken (a 429 answered while it waited for a connection or its interval)
    holds it back. It is not sent (:class:`LateStart`) and takes a new turn, after the
    pause, waited for there and not against the request's own deadline. Every turn of
    one process that has no :class:`Grant` from a fleet carries one (or a
    :class:`WireGap`, which checks this too)."""

    __slots__ = ("resource",)

    def __init__(self, resource: Resource) -> None:
        self.resource = resource

    def at_wire(self) -> float:
        """0: the request goes now; :class:`LateStart` inside a pause."""
        resource = self.resource
        if resource.paused_until > resource.clock.monotonic():
            raise LateStart
        return 0.0


class WireGap(PauseGate):
    """One process's requests spaced once more where they are written: one at a time
    at a slow rate (20/s or less), and with a burst run above one at any rate.

    Turns are paced when they are taken; the way from a turn to the wire varies (a first
    request opens its connection, a busy loop delays another), and a request slowed on
    its way would reach the source just before the next one, which a strict bucket (one
    request per interval) refuses. With a burst, turns taken on time while the loop or
    the CPU was busy reach the wire together, on top of the catch-up of turns taken late:
    more at once than the source's bucket holds, however much it saved meanwhile. So
    the resource's rate and the burst it runs at (:attr:`Pace.run_burst`) are applied
    again to the instants requests actually reach the wire: a request too close behind
    the ones before waits there for the rest of its interval (one that finds a pause
    begun meanwhile takes a new turn). A bunch within the burst goes at once.
    """

    __slots__ = ()

    def at_wire(self) -> float:
        """Seconds the request must still wait before it goes (0: now, and booked). In a
        pause begun since its turn was taken (a 429 answered meanwhile) it does not go:
        :class:`LateStart`, and it takes a new turn, after the pause (waited for there,
        not against the request's own deadline)."""
        super().at_wire()
        resource = self.resource
        pace = resource.pace
        return resource.wire.turn(
            resource.clock.monotonic(), resource.rate, pace.run_burst, pace.catch_up
        )


class QuotaGrant(Grant):
    """A quota's start from the state's shared window, for a request whose rate is this
    process's own (quotas kept in the state, the rate not shared): the start goes out on
    its instant or not at all, as a fleet's (see :class:`Grant`); once on time, it goes
    through ``then``, what any other request of this process is checked by where it is
    written (a :class:`WireGap` at a rate spaced there, else a :class:`PauseGate`). The
    quota's window is widened by what that spacing may add (see
    :func:`backfill.ratelimit.sharing.quota_margin`)."""

    __slots__ = ("passed", "then")

    def __init__(
        self, resource: Resource, start: float, deadline: float, *, then: PauseGate
    ) -> None:
        super().__init__(resource, start, deadline)
        self.then = then
        self.passed = False

    def at_wire(self) -> float:
        """Seconds the request must still wait before it goes (0: now); LateStart when
        its start is late, or in a pause begun meanwhile."""
        if not self.passed:
            wait = super().at_wire()
            if wait > 0:
                return wait
            self.passed = True
        return self.then.at_wire()


# What the current task's request was granted (a fleet start, a place in this process's
# spacing at the wire, or a check for a pause begun meanwhile); taken where the request
# is written.
_grant: contextvars.ContextVar[Grant | PauseGate | None] = contextvars.ContextVar(
    "backfill_grant", default=None
)


def give_grant(grant: Grant | PauseGate | None) -> None:
    """What the current task's request was granted, for :func:`take_grant`."""
    _grant.set(grant)


def take_grant() -> Grant | PauseGate | None:
    """The fleet start granted to this task's request, if any; taken once (a request's
    later writes are not checked again)."""
    held = _grant.get()
    if held is not None:
        _grant.set(None)
    return held


async def until_start(clock: Clock, grant: Grant | PauseGate | None) -> None:
    """Wait for the instant of ``grant`` (a late wake is checked again); too late to go
    at all, :class:`LateStart`."""
    if grant is None:
        return
    wait = grant.at_wire()
    while wait > 0:
        await clock.sleep(wait)
        wait = grant.at_wire()
