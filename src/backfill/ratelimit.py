"""Rate limits shared by everything that uses a source: resources.

A :class:`Resource` is a named limit: one or more rates (``"5/s"``, ``"10000/day"``), a
burst, a concurrency pool, optionally adaptive. Every request takes a *reservation*: the
earliest instant at which every rate allows one more request. Reservations are handed
out in order (GCRA, the "virtual scheduling" form of a token bucket), so in any window of
``t`` seconds at most ``burst + rate * t`` requests start, from the very first second on.

A ``Retry-After`` pauses the whole resource, once: later 429s from requests already in
flight only extend the pause to the latest instant any of them asked for. No pause lasts
longer than the resource's ``max_wait``: a source asking for more is cut to it.

Core knows no HTTP: the HTTP client reports outcomes through :meth:`Resource.observe`.
Nor does it know a database: workers on many machines share a resource through a
:class:`SharedRate` (the engine plugs in one backed by the ledger) and a concurrency
share the engine rebalances as workers join and leave (:meth:`Resource.set_share`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import math
import re
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from backfill.clock import Clock, SystemClock, current_deadline, format_duration, format_wall
from backfill.errors import ConfigError

log = logging.getLogger("backfill.ratelimit")

__all__ = [
    "DEFAULT_MAX_WAIT",
    "AdaptiveRate",
    "CircuitBreaker",
    "Grant",
    "LateStart",
    "Limit",
    "Outcome",
    "Resource",
    "SharedRate",
    "WireGap",
    "book_block",
    "describe_seconds",
    "parse_limit",
    "take_grant",
]

_UNITS = {
    "s": 1.0, "sec": 1.0, "second": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0,
    "h": 3600.0, "hour": 3600.0,
    "d": 86400.0, "day": 86400.0,
}  # fmt: skip
_LIMIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/|per)\s*(\d+(?:\.\d+)?)?\s*([a-z]+?)s?\s*$")


@dataclass(frozen=True, slots=True)
class Limit:
    """``count`` requests per ``period`` seconds."""

    count: float
    period: float

    @property
    def rate(self) -> float:
        return self.count / self.period

    def __str__(self) -> str:
        for unit, seconds in (("day", 86400.0), ("h", 3600.0), ("min", 60.0), ("s", 1.0)):
            if self.period == seconds:
                return f"{self.count:g}/{unit}"
        return f"{self.count:g}/{self.period:g}s"


# The longest wait a source may impose (Retry-After, RateLimit-Reset) unless a resource
# says otherwise: longer is a broken or hostile server, not a plan.
DEFAULT_MAX_WAIT = 3600.0
# A rate slower than one request a week means nothing a backfill can use (and one that
# rounds to zero would never let a request through).
_SLOWEST_INTERVAL = 7 * 86400.0


def describe_seconds(seconds: float) -> str:
    """``86400``, ``0.5``, ``1e+30``: a number of seconds as a message shows it."""
    if seconds.is_integer() and seconds < 1e12:
        return f"{seconds:.0f}"
    return f"{seconds:.3g}"


def parse_limit(value: str | float | Limit) -> Limit:
    """``"5/s"``, ``"100/min"``, ``"10000/day"``, ``"30 per 5 min"`` or a number per second."""
    if isinstance(value, Limit):
        limit, shown = value, str(value)
    elif isinstance(value, int | float):
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"rate {value!r} must be a positive number of requests per second")
        limit, shown = Limit(float(value), 1.0), f"{value!r}/s"
    else:
        match = _LIMIT.match(value.lower())
        unit = match and (_UNITS.get(match[3]) or _UNITS.get(match[3].rstrip("s")))
        if not match or not unit:
            raise ConfigError(
                f"rate {value!r} is not understood; write it like '5/s', '100/min' or '10000/day'"
            )
        count, multiple = float(match[1]), float(match[2] or 1)
        if count <= 0 or multiple <= 0:
            raise ConfigError(f"rate {value!r} must be positive")
        limit, shown = Limit(count, multiple * unit), repr(value)
    finite = math.isfinite(limit.count) and math.isfinite(limit.period)
    if not finite or limit.count <= 0 or limit.period <= 0:
        raise ConfigError(f"rate {shown} must be a positive, finite number of requests")
    if limit.period / limit.count > _SLOWEST_INTERVAL:
        raise ConfigError(
            f"rate {shown} allows one request every {limit.period / limit.count / 86400:,.0f} "
            "days; a rate must allow at least one request a week"
        )
    return limit


class LateStart(Exception):
    """A start from a fleet's shared schedule came due while this process was busy: the
    request was not sent, and takes a new start."""


class Grant:
    """A start from a fleet's schedule, on its way to the wire with its request.

    The resource hands it over ahead of its instant by the time requests usually take to
    reach the wire (measured), and the request waits there until the instant: on time
    however slow the way is. A grant found past its deadline there is not used
    (:class:`LateStart`), unless its request has already missed ``_MAX_WIRE_MISSES``
    in a row: a process too busy ever to be on time still makes progress.
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
        now = resource.clock.monotonic()
        resource.measure_way(now - self.granted)
        if now > self.deadline:
            if resource.wire_misses < _MAX_WIRE_MISSES:
                resource.wire_misses += 1
                raise LateStart
            resource.went_late()
            return 0.0
        resource.wire_misses = 0
        return max(0.0, self.start - now)


class WireGap:
    """One process's requests at a slow rate (20/s or less, burst 1), spaced once more
    where they are written.

    Turns are paced when they are taken; the way from a turn to the wire varies (a first
    request opens its connection, a busy loop delays another), and a request slowed on
    its way would reach the source just before the next one, which a strict bucket (one
    request per interval) refuses. So the resource's rate and burst are applied again to
    the instants requests actually reach the wire: a request too close behind the one
    before waits there for the rest of its interval. Nothing is ever refused here.
    """

    __slots__ = ("resource",)

    def __init__(self, resource: Resource) -> None:
        self.resource = resource

    def at_wire(self) -> float:
        """Seconds the request must still wait before it goes (0: now, and booked)."""
        return self.resource.wire_turn()


# What the current task's request was granted (a fleet start, or a place in this
# process's spacing at the wire); taken where the request is written.
_grant: contextvars.ContextVar[Grant | WireGap | None] = contextvars.ContextVar(
    "backfill_grant", default=None
)


def take_grant() -> Grant | WireGap | None:
    """The fleet start granted to this task's request, if any; taken once (a request's
    later writes are not checked again)."""
    held = _grant.get()
    if held is not None:
        _grant.set(None)
    return held


class Outcome(StrEnum):
    """How a request ended, as far as the resource's health is concerned."""

    OK = "ok"
    RATE_LIMITED = "rate_limited"
    ERROR = "error"  # 5xx, timeout, connection failure: counts against the breaker
    CLIENT_ERROR = "client_error"  # 4xx other than 429: the source is healthy


class _Scheduler:
    """Virtual scheduling for one limit: when may the next request start?"""

    __slots__ = ("interval", "tat", "tolerance")

    def __init__(self, rate: float, burst: int) -> None:
        self.interval = 1.0 / rate
        # A full bucket at start: ``burst`` requests may go at once, not more.
        self.tolerance = (burst - 1) * self.interval
        self.tat = -math.inf

    def set_rate(self, rate: float, burst: int, now: float | None = None) -> None:
        interval = 1.0 / rate
        if now is not None and self.tat > now:
            # What is owed was counted at the old rate: respace it at the new one, so a
            # rate that grows takes effect at once instead of after the waits booked.
            self.tat = now + (self.tat - now) * interval / self.interval
        self.interval = interval
        self.tolerance = (burst - 1) * interval

    def earliest(self, now: float) -> float:
        return max(now, self.tat - self.tolerance)

    def book(self, start: float) -> None:
        self.tat = max(self.tat, start) + self.interval


class _Window:
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

    def book(self, start: float) -> None:
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


# A request that found its fleet start stale on the way to the wire this many times in a
# row goes with the next one anyway.
_MAX_WIRE_MISSES = 5
# The head start a fleet start is handed over with, at most (see Grant).
_MAX_LEAD = 0.25
# Where a declared rate of burst 1 starts, as a share of it (see Resource._new_pace).
_STRICT_START = 0.97
# One process spaces its requests at the wire too at rates of 20/s or less (see WireGap).
_WIRE_GAP_MIN_INTERVAL = 0.05

# Limits over longer periods than this are quotas, counted exactly over a sliding window;
# shorter ones are rates, smoothed by virtual scheduling with the resource's burst.
_QUOTA_PERIOD = 1.0
_MAX_LOG = 1_000_000


class AdaptiveRate:
    """The rate a resource runs at, learned from the source under a ceiling.

    Every resource with a per-second rate has one. Declared (``ramp=False``), it starts at
    the declared rate, which stays its ceiling: a source that refuses requests at that
    rate (a stricter bucket than declared, or latency jitter that bunches requests on the
    way to a strict one) lowers it, and it creeps back up while the source is healthy.
    Adaptive (``ramp=True``), it starts low and ramps up fast (the rate quadruples every
    second, never past twice what actually got through) until the first 429.

    What a 429 does depends on what the last answers say:

    * refused now and then (a fifth of the answers or fewer): the rate is about right
      and requests bunched on the way; it goes 3 % down, and the creep upwards, one
      step of 1 % at a time, slows down (each step waits twice as long, up to a minute);
    * mostly refused: it drops to just under what the source measurably accepted (or,
      too soon after a pause to time it, to the share of requests it accepted), then
      *searches* upwards in steps of 10 %, each held for a second or 4 requests; the step
      that draws a 429 is taken back, and the search ends there.

    With nothing to go by yet, a 429 takes a declared rate 10 % down, a ramping one by
    half (and searches from there).
    """

    _JITTER_STEP = 0.97
    _SEARCH_STEP = 1.10
    _CREEP_STEP = 0.01
    _MAX_CREEP_EVERY = 60.0

    def __init__(
        self,
        start: float,
        *,
        floor: float = 0.05,
        ceiling: float = 10_000.0,
        margin: float = 0.9,
        ramp: bool = True,
    ) -> None:
        self.rate = min(max(start, floor), ceiling)
        self.floor = floor
        self.ceiling = ceiling
        self.margin = margin
        self.ramp = ramp
        # Known to be about the source's limit (None while ramping up to find it).
        self.threshold: float | None = None if ramp else self.rate
        self.decreases = 0
        self._accepted: collections.deque[float] = collections.deque()
        # The last answers since the last decrease: accepted (True) or refused (False).
        self._outcomes: collections.deque[bool] = collections.deque(maxlen=20)
        self._measure_from = -math.inf
        self._last_update: float | None = None
        self._last_decrease = -math.inf
        # Searching upwards from a coarse estimate: the last rate that drew no 429.
        self._good: float | None = None
        self._creep_every: float | None = None
        self._since_decrease = 0  # requests accepted since the last decrease
        self._paused = 0.0  # how long the last decrease's 429 paused the resource
        self._rate_before = self.rate  # the rate the last decrease came down from
        self._answered: collections.deque[float] = collections.deque()  # every answer

    def _accepted_rate(self, now: float) -> tuple[float, float] | None:
        """What the source accepted, and what it was offered (every answer), per second
        over the last half second (or ~8 requests' worth at low rates); None when too
        little was answered to tell. When we send faster than the source accepts, the
        first is its limit; longer windows would average in the ramp that led up to it."""
        window = max(0.5, 8.0 / max(self.rate, 1e-9))
        start = max(self._measure_from, now - window)
        for log in (self._accepted, self._answered):
            while log and log[0] < now - max(window, 1.0):
                log.popleft()
        span = now - start
        count = sum(1 for t in self._accepted if t >= start)
        offered = sum(1 for t in self._answered if t >= start)
        if span < 0.5 * window or count < 5:
            return None
        return count / span, offered / span

    def on_rate_limited(self, now: float, resume_at: float) -> bool:
        """A 429 (or a clearly congested source): slow down; True when the rate changed.

        ``resume_at`` is when traffic restarts after the pause this 429 caused.
        """
        self._outcomes.append(False)
        self._answered.append(now)
        if now - self._last_decrease < 1.0:
            # The same burst of 429s: the requests that were on their way answer now, and
            # how many of them are refused says how far over the limit they were sent.
            burst = self._outcomes
            # Shrunk towards none refused: a handful of answers is a noisy sample.
            share = burst.count(False) / (len(burst) + 1)
            if len(burst) >= 4 and share > 0.3:
                target = max(self.floor, self._rate_before * (1.0 - share))
                if target < self.rate:
                    self.threshold = self.rate = target
                    self._good = target
                    return True
            return False
        outcomes = self._outcomes
        refused = outcomes.count(False) / len(outcomes) if len(outcomes) >= 5 else None
        measured = self._accepted_rate(now)
        accepted = measured[0] if measured is not None else None
        offered = measured[1] if measured is not None else None
        # Refused again soon after a pause (the active part of the cycle shorter than
        # the pause itself): what it accepted over the whole cycle, pause included.
        span = now - self._last_decrease
        cycle = (
            self._since_decrease / span
            if self._since_decrease >= 4 and span - self._paused < 1.5 * self._paused
            else None
        )
        search = True
        if self._good is not None and self._good < self.rate:
            # The search's last step drew it: the rate before that step is the limit.
            target, search = self._good, False
        elif accepted is not None and offered is not None and accepted < 0.85 * offered:
            # Clearly sending faster than the source accepts.
            target = self.margin * accepted
        elif cycle is not None and cycle < 0.85 * self.rate and accepted is None:
            # Refused again soon after the last 429's pause, each time once the burst its
            # bucket saved up meanwhile was spent (too few answers since to time them):
            # about its limit got through over the whole cycle. At most halve, then
            # search.
            target = self.margin * max(cycle, 0.5 * self.rate)
        elif refused is not None and refused <= 0.2:
            # Refused now and then at about the pace it accepts: a little too fast for a
            # strict bucket, or requests bunched on the way. A step down of 3 %, up to 10 %
            # when the last 429 was only moments of sending ago; the creep back up slows.
            active = span - self._paused
            down = min(0.1, max(1.0 - self._JITTER_STEP, 0.3 / active)) if active > 0 else 0.1
            target, search = self.rate * (1.0 - down), False
            self._creep_every = min(self._MAX_CREEP_EVERY, 2.0 * self._creep_base())
        elif refused is not None:
            target = self.margin * self.rate * (1.0 - refused)
        elif (
            not self.ramp
            and self._since_decrease >= 10
            and (self.decreases == 0 or span - self._paused > 1.0)
        ):
            # Too early to measure, but plenty got through at this declared rate:
            # trust it, a little less.
            target = self.rate * 0.9
        else:
            # Refused almost at once (after a pause, or from the start): far too fast.
            target = self.rate * 0.5
        self._rate_before = self.rate
        self.threshold = self.rate = max(self.floor, min(self.ceiling, target))
        self._good = self.rate if search else None
        self.decreases += 1
        self._last_decrease = now
        self._paused = max(0.0, resume_at - now)
        self._measure_from = resume_at
        self._accepted.clear()
        self._answered.clear()
        self._outcomes.clear()
        self._since_decrease = 0
        self._last_update = resume_at
        return True

    def _creep_base(self) -> float:
        # Crossing the limit costs a 429 and a Retry-After pause, so cycles must be long
        # for the pause (and the 429s) to stay a small fraction of the time.
        every = self._creep_every or max(6.0, 12.5 / max(self.threshold or self.rate, 1e-9))
        return every

    def on_header_limit(self, rate: float, now: float) -> None:
        """The server told us its limit: use it (a hair below, for clock skew)."""
        self.threshold = self.rate = max(self.floor, min(self.ceiling, rate * 0.98))
        self._good = None
        self._last_update = now

    def on_success(self, now: float) -> bool:
        """An accepted request; return True when the rate changed."""
        self._accepted.append(now)
        self._answered.append(now)
        self._outcomes.append(True)
        self._since_decrease += 1
        if self._last_update is None:
            self._last_update = self._measure_from = now
            return False
        elapsed = now - self._last_update
        if self.threshold is None:
            if elapsed < 0.25:
                return False
            # Grow no further than four times what actually got through in the last half
            # second: when concurrency or the client itself is the bottleneck, a rate of
            # thousands would only make the first 429 measure the wrong thing.
            recent = 2.0 * sum(1 for t in self._accepted if t >= now - 0.5)
            cap = max(4.0 * recent, 2.0 * self.floor, 4.0)
            self.rate = min(self.ceiling, max(self.rate, min(self.rate * 4.0**elapsed, cap)))
        elif self.rate >= self.ceiling:
            self._last_update = now
            return False
        elif self._good is not None:
            if elapsed < max(1.0, 4.0 / self.rate):
                return False
            self._good = self.rate
            self.rate = min(self.ceiling, self.rate * self._SEARCH_STEP)
            self.threshold = self.rate
            if self.rate >= self.ceiling:
                self._good = None
        else:
            every = self._creep_base()
            if elapsed < every:
                return False
            if self._creep_every is not None:
                # The last step drew no 429: step a little sooner next time.
                self._creep_every = max(0.0, 0.9 * self._creep_every) or None
                if self._creep_every is not None and self._creep_every < 6.0:
                    self._creep_every = None
            self.rate = min(self.ceiling, self.rate + self._CREEP_STEP * self.threshold)
            if self.ramp and self.rate > 1.1 * self.threshold / self.margin:
                # 10 % past the old limit without a 429: the limit rose or was
                # underestimated; ramp up quickly again.
                self.threshold = None
        self._last_update = now
        return True


class CircuitBreaker:
    """Opens when the error rate over the last ``window`` requests crosses ``threshold``.

    While open the resource hands out no reservations; after ``cooldown`` seconds one
    probe request is let through (half-open): success closes the circuit, failure opens it
    again for twice as long, up to ``max_cooldown``: a few seconds, so a source that comes
    back is used again within seconds, at the cost of one request every few seconds
    while it is down.
    """

    def __init__(
        self,
        *,
        threshold: float = 0.5,
        window: int = 20,
        min_requests: int = 10,
        cooldown: float = 2.0,
        max_cooldown: float = 5.0,
    ) -> None:
        self.threshold = threshold
        self.window = window
        self.min_requests = min_requests
        self.base_cooldown = cooldown
        self.cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.results: collections.deque[bool] = collections.deque(maxlen=window)
        self.open_until: float | None = None
        self.probing = False
        self.probes = 0  # probes sent: which one is out
        self.opened = 0

    @property
    def is_open(self) -> bool:
        return self.open_until is not None

    def record(self, ok: bool, now: float) -> str | None:
        """Record a result; return "opened" or "closed" when the state changes."""
        if self.probing:
            self.probing = False
            if ok:
                self.open_until = None
                self.cooldown = self.base_cooldown
                self.results.clear()
                return "closed"
            self.cooldown = min(self.max_cooldown, self.cooldown * 2)
            self.open_until = now + self.cooldown
            return None
        if self.open_until is not None:
            return None
        self.results.append(ok)
        if len(self.results) < self.min_requests:
            return None
        errors = self.results.count(False)
        if errors / len(self.results) >= self.threshold:
            self.open_until = now + self.cooldown
            self.opened += 1
            return "opened"
        return None


# listener(resource name, what happened (a sentence), seconds it lasts, kind): kind is
# "paused", "quota", "circuit_open", "circuit_closed" or "rate".
Listener = Callable[[str, str, float, str], None]


class SharedRate(Protocol):
    """Start instants handed out to every worker of a fleet from one schedule."""

    async def take(self, count: int) -> tuple[list[float], float]:
        """Reserve ``count`` starts: their instants on this clock's ``monotonic`` scale,
        and the instant until which the whole fleet is paused."""

    def pause(self, seconds: float) -> None:
        """Pause the whole fleet for ``seconds`` from now (returns at once)."""


class _Share:
    """A concurrency pool whose size can change while requests hold it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._freed = asyncio.Condition()

    async def __aenter__(self) -> None:
        async with self._freed:
            await self._freed.wait_for(lambda: self.used < self.limit)
            self.used += 1

    async def __aexit__(self, *exc: object) -> None:
        async with self._freed:
            self.used -= 1
            self._freed.notify()

    async def resize(self, limit: int) -> None:
        async with self._freed:
            self.limit = limit
            self._freed.notify_all()


def _whole(value: object) -> bool:
    """A count of at least 1: an int, not a bool, a float or NaN."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


class Resource:
    """A named limit shared by every stage and call that uses it: rates, quotas, a
    concurrency pool, or only one of them (a warehouse's 15 queries at once). Any client
    takes its turns (:meth:`turn`); ``ctx.http`` does for each request.

    Example::

        api = job.resource("racing_api", rate="2/s", burst=1, concurrency=4,
                           limits=["10000/day"])
        warehouse = job.resource("warehouse", concurrency=15)
    """

    def __init__(
        self,
        name: str,
        *,
        rate: str | float | Limit | None = None,
        burst: int = 1,
        concurrency: int | None = None,
        limits: list[str | float | Limit] | None = None,
        adaptive: bool = False,
        start_rate: float | None = None,
        shared: bool = False,
        breaker: CircuitBreaker | None = None,
        clock: Clock | None = None,
        max_wait: float = DEFAULT_MAX_WAIT,
    ) -> None:
        if not isinstance(max_wait, int | float) or not 0 < max_wait < math.inf:
            raise ConfigError(
                f"resource {name!r}: max_wait must be a positive number of seconds, "
                f"not {max_wait!r}"
            )
        if not _whole(burst):
            raise ConfigError(f"resource {name!r}: burst must be at least 1, not {burst!r}")
        if concurrency is not None and not _whole(concurrency):
            raise ConfigError(
                f"resource {name!r}: concurrency must be at least 1 (calls at once), "
                f"not {concurrency!r}"
            )
        declared = [parse_limit(rate)] if rate is not None else []
        declared += [parse_limit(x) for x in limits or []]
        if not declared and not adaptive and concurrency is None:
            raise ConfigError(
                f"resource {name!r} needs a rate (e.g. rate='5/s'), a concurrency (e.g. "
                "concurrency=15 for a warehouse's queries at once) or adaptive=True"
            )
        self.name = name
        self.max_wait = float(max_wait)
        self.burst = burst
        self.concurrency = concurrency
        self.limits = declared
        # Whose limit it is: the job's own (its runs and workers share it), or, shared,
        # every job's on the same state that declares a resource of this name.
        self.shared = shared
        self.clock: Clock = clock or SystemClock()
        self._schedulers: list[_Scheduler | _Window] = [
            _Window(int(lim.count), lim.period)
            if lim.period > _QUOTA_PERIOD and lim.count <= _MAX_LOG and lim.count == int(lim.count)
            else _Scheduler(lim.rate, burst)
            for lim in declared
        ]
        # The rate actually run at, learned from the source under the declared one (see
        # AdaptiveRate); none for a resource of quotas only.
        self.adaptive = adaptive
        self._start_rate = start_rate
        self.pace = self._new_pace()
        self._pace_scheduler: _Scheduler | None = None
        if self.pace is not None:
            self._pace_scheduler = _Scheduler(self.pace.rate, burst)
            self._schedulers.append(self._pace_scheduler)
        self._said_slower = False
        # With a fleet, the shared schedule grants the per-second rate and the quotas
        # (see share_with); of this process's own schedulers only the others still apply:
        # booking a granted start on a copy of the fleet's rate too would hold it past
        # its instant, and a start held past its instant is not sent.
        self._unshared = [
            s
            for s, lim in zip(self._schedulers, [*declared, None], strict=False)
            if lim is None or (isinstance(s, _Scheduler) and lim.period > _QUOTA_PERIOD)
        ]
        # ... or, when only the quotas are shared, every one but the quotas.
        self._unshared_quotas: list[_Scheduler | _Window] = [
            s for s in self._schedulers if not isinstance(s, _Window)
        ]
        self._local: list[_Scheduler | _Window] = self._schedulers
        self._shares_rate = True
        self._quota_wait_until = -math.inf
        self.breaker = breaker or CircuitBreaker()
        self.paused_until = -math.inf
        self._semaphore: asyncio.Semaphore | _Share | None = None
        self._semaphore_loop: asyncio.AbstractEventLoop | None = None
        self._pacing: asyncio.Lock | None = None
        self._pacing_loop: asyncio.AbstractEventLoop | None = None
        self._shared: SharedRate | None = None
        self._share: int | None = None
        self._slots: collections.deque[float] = collections.deque()
        self._taking: asyncio.Lock | None = None
        self._waiting = 0
        self._listeners: list[Listener] = []
        self._latency_ewma: float | None = None
        self._latency_floor: float | None = None
        self._latency_samples = 0
        self.requests = 0
        self.rate_limited = 0
        self.pauses = 0
        self.late_starts = 0  # fleet starts found stale and dropped, taken again
        self.sent_late = 0  # requests sent past their fleet start, after too many misses
        self.wire_misses = 0  # fleet starts missed at the wire in a row
        self._way = 0.0  # how long a granted request takes to reach the wire (EWMA)
        self._wire_gap = WireGap(self)
        self._wire_tat = -math.inf  # the rate's theoretical next instant at the wire
        self.pause_reason: str | None = None
        self.circuit_since: float | None = None  # wall clock
        self.down_since: float | None = None  # the circuit opened (clock.monotonic)
        self.last_error: str | None = None  # the last failure a client said of it

    def __repr__(self) -> str:
        return f"Resource({self.name!r}, rate={self.rate_description()})"

    @property
    def declared_rate(self) -> float | None:
        """The strictest per-second rate declared (None: adaptive without one, or quotas
        only)."""
        return min((lim.rate for lim in self.limits if lim.period <= _QUOTA_PERIOD), default=None)

    def _new_pace(self) -> AdaptiveRate | None:
        primary = self.declared_rate
        if self.adaptive:
            return AdaptiveRate(self._start_rate or primary or 5.0, ceiling=primary or 10_000.0)
        if primary is None:
            return None
        # Burst 1 declares a source that takes one request per interval, no more: its own
        # bucket may be just as strict, and the way there jitters. Start a hair under the
        # declared rate (short jobs finish before a 429 could teach the margin); creeping
        # up while healthy, it reaches the declared rate within seconds.
        start = primary * _STRICT_START if self.burst == 1 else primary
        return AdaptiveRate(start, ceiling=primary, ramp=False)

    def rate_description(self) -> str:
        """The declared limits, and the rate run at when it differs, e.g. ``5/s (running
        at 4.75/s)``, ``adaptive, now 42.00/s`` or ``15 at once`` (a concurrency only)."""
        if not self.limits and self.pace is None:
            return f"{self.concurrency} at once"
        parts = [str(lim) for lim in self.limits]
        pace = self.pace
        if pace is not None and self.adaptive:
            parts.append(f"adaptive, now {pace.rate:.2f}/s")
        elif pace is not None and pace.rate < 0.995 * pace.ceiling:
            parts[0] += f" (running at {pace.rate:.3g}/s)"
        return ", ".join(parts)

    @property
    def rate(self) -> float:
        """The sustained rate the resource runs at now (requests per second); quotas over
        longer periods are left out (see :meth:`seconds_for`); infinite for a resource
        of a concurrency only."""
        rates = [lim.rate for lim in self.limits if lim.period <= _QUOTA_PERIOD]
        if self.pace is not None:
            rates.append(self.pace.rate)
        return min(rates or [lim.rate for lim in self.limits] or [math.inf])

    def seconds_for(self, requests: float) -> float:
        """The least time ``requests`` need under every limit (quotas included): at the
        declared rates, or the rate an adaptive resource has found (a declared one starts
        a hair under its rate, and is there within seconds)."""
        rates = [lim.rate for lim in self.limits if lim.period <= _QUOTA_PERIOD]
        if self.pace is not None and self.adaptive:
            rates.append(self.pace.rate)
        seconds = requests / min(rates) if rates else 0.0
        for lim in self.limits:
            if lim.period > _QUOTA_PERIOD and requests > lim.count:
                seconds = max(seconds, (math.ceil(requests / lim.count) - 1) * lim.period)
        return seconds

    def reset(self, *, clock: Clock | None = None) -> None:
        """Forget bookings, pauses, breaker state and listeners (a new run starts), and
        keep time on the run's ``clock`` when one is given."""
        if clock is not None:
            self.clock = clock
        for scheduler in self._schedulers:
            if isinstance(scheduler, _Window):
                scheduler.log.clear()
            else:
                scheduler.tat = -math.inf
        self.pace = self._new_pace()
        if self.pace is not None and self._pace_scheduler is not None:
            self._pace_scheduler.set_rate(self.pace.rate, self.burst)
        self._said_slower = False
        self._pacing = None
        self._wire_tat = -math.inf
        self._quota_wait_until = -math.inf
        self.pause_reason = None
        self.circuit_since = None
        self.down_since = None
        self.last_error = None
        self.paused_until = -math.inf
        old = self.breaker
        self.breaker = CircuitBreaker(
            threshold=old.threshold,
            window=old.window,
            min_requests=old.min_requests,
            cooldown=old.base_cooldown,
            max_cooldown=old.max_cooldown,
        )
        self._listeners.clear()
        self.requests = self.rate_limited = self.pauses = self.late_starts = 0
        self._shared = None
        self._share = None
        self._slots.clear()
        self._semaphore = None

    def subscribe(self, listener: Listener) -> None:
        """``listener(resource_name, what, seconds, kind)`` hears of pauses, quota waits,
        breaker changes and a declared rate the source does not accept."""
        self._listeners.append(listener)

    def _tell(self, what: str, seconds: float, kind: str) -> None:
        for listener in self._listeners:
            listener(self.name, what, seconds, kind)

    # -- a fleet of workers ----------------------------------------------------------------

    def share_with(self, shared: SharedRate, *, rate: bool = True) -> None:
        """Take this resource's per-second rate and its quotas from ``shared``, one
        schedule for the whole fleet (this process's own schedule still applies to what
        the fleet does not share: an adaptive rate, found per worker). With ``rate``
        False only the quotas are taken from it (they hold across restarts) and the rate
        stays this process's own."""
        self._shared = shared
        self._shares_rate = rate
        self._local = self._unshared if rate else self._unshared_quotas
        self._slots.clear()

    @property
    def quotas(self) -> list[Limit]:
        """The limits over longer periods (e.g. 10000/day), counted exactly over a sliding
        window; a fleet keeps them in the shared ledger."""
        return [Limit(s.count, s.period) for s in self._schedulers if isinstance(s, _Window)]

    @property
    def rate_interval(self) -> float:
        """Seconds between starts at the resource's per-second rate (0: none declared)."""
        rates = [lim.rate for lim in self.limits if lim.period <= _QUOTA_PERIOD]
        return 1.0 / min(rates) if rates else 0.0

    async def set_share(self, concurrency: int) -> None:
        """This worker's part of the fleet's concurrency (rebalanced as workers come and go)."""
        self._share = max(1, concurrency)
        pool = self._semaphore
        if isinstance(pool, _Share) and self._semaphore_loop is asyncio.get_running_loop():
            await pool.resize(self._share)
        else:
            # The next request builds a resizable pool of the new size.
            self._semaphore = None

    async def _shared_start(self) -> tuple[float, float]:
        """Wait for a start instant from the fleet's schedule; return it and the latest
        instant at which the request may still go out.

        Instants are used only on time: one found more than half an interval late (its
        holder was busy) is dropped, never spent later, where it would bunch up with the
        starts other workers were given after it. A start is handed over ahead of its
        instant by the time requests take to reach the wire, and checked again there
        (see :class:`Grant` and :mod:`backfill.sources.wire`).
        """
        assert self._shared is not None
        interval = self.rate_interval if self._shares_rate else 0.0
        # With a rate, a start more than half an interval late would bunch up with later
        # ones; with quotas only (no spacing), lateness costs nothing worth a start.
        late = interval / 2 if interval else math.inf
        lead = min(1.5 * self._way, _MAX_LEAD) if interval else 0.0
        if self._taking is None:
            self._taking = asyncio.Lock()
        self._waiting += 1
        try:
            while True:
                now = self.clock.monotonic()
                while self._slots and self._slots[0] < now - late:
                    self._slots.popleft()
                if self._slots:
                    start = self._slots.popleft()
                    if start - lead <= now:
                        return start, start + late
                    if start - now > max(5.0, 2 * interval) and start > self.paused_until:
                        self._say_quota_wait(start)
                    await self.clock.sleep(start - lead - now)
                    # Woken late (the loop or the CPU was busy): the start is as stale
                    # as one found late, and is dropped the same way.
                    if self.clock.monotonic() <= start + late:
                        return start, start + late
                    continue
                async with self._taking:
                    if self._slots:
                        continue
                    # Everyone waiting now, but no more than a quarter second's worth.
                    most = math.ceil(0.25 / interval) if interval else 16
                    count = max(1, min(self._waiting, most))
                    starts, paused_until = await self._shared.take(count)
                    self._slots.extend(starts)
                    now = self.clock.monotonic()
                    if paused_until > now + 1e-3:
                        self._pause_until(
                            min(paused_until, now + self.max_wait),
                            "retry-after, seen by another worker",
                        )
        finally:
            self._waiting -= 1

    # -- taking a request slot -----------------------------------------------------------

    def _due(self, now: float) -> float:
        """When the next request may start: every limit, a pause and the breaker."""
        start = max(now, self.paused_until)
        if self.breaker.open_until is not None:
            start = max(start, self.breaker.open_until)
        for scheduler in self._schedulers if self._shared is None else self._local:
            start = max(start, scheduler.earliest(start))
        return start

    async def acquire(self) -> int:
        """Wait for this request's turn (rates, pauses and the breaker all respected);
        the wait does not count against the partition's stage timeout. Not 0: the
        request is the open circuit's probe, that number."""
        deadline = current_deadline.get()
        if deadline is None:
            return await self._acquire()
        deadline.hold()
        try:
            return await self._acquire()
        finally:
            deadline.release()

    async def _acquire(self) -> int:
        """Wait for this request's turn (rates, pauses and the breaker all respected);
        not 0 when it is the open circuit's probe (its number).

        Requests take their turns in order, one at a time: the first waits until every
        limit allows a start, and is booked at the instant it actually starts. Nothing
        is booked ahead for the others, so a rate that changes (a 429, an adaptive step)
        applies to them at once, and a turn taken late (the loop or the CPU was busy) is
        neither lost nor sent on top of the next one: the next is spaced from it.

        With a fleet, the start is then taken from the fleet's schedule, whose instants
        are fixed: one found late there is dropped (see ``_shared_start``).
        """
        loop = asyncio.get_running_loop()
        if self._pacing is None or self._pacing_loop is not loop:
            # A job module (and its resources) may outlive one event loop, e.g. in tests.
            self._pacing = asyncio.Lock()
            self._pacing_loop = loop
        if self._shared is not None and not self._shares_rate:
            # Quotas first: a request that waits hours for its day's quota takes its turn
            # at the rate after that, not before.
            await self._shared_start()
        probe = 0
        async with self._pacing:
            while True:
                now = self.clock.monotonic()
                due = self._due(now)
                if due > now + 1e-6:
                    if due - now > 5.0 and any(
                        isinstance(w, _Window) and w.earliest(now) >= due for w in self._local
                    ):
                        self._say_quota_wait(due)
                    # Then look again: a pause, the breaker or a new rate may have moved it.
                    await self.clock.sleep(due - now)
                    continue
                if self.breaker.open_until is not None:
                    if self.breaker.probing:
                        # The probe is out: wait for its answer.
                        await self.clock.sleep(0.05)
                        continue
                    self.breaker.probing = True
                    self.breaker.probes += 1
                    probe = self.breaker.probes
                for scheduler in self._schedulers if self._shared is None else self._local:
                    scheduler.book(now)
                break
        # Spacing again at the wire is worth its cost where a strict source (one
        # request per interval) is likely and an interval dwarfs the way's jitter: slow
        # rates. At 100/s every late write would be time lost for good.
        gap = self.burst == 1 and 1.0 / self.rate >= _WIRE_GAP_MIN_INTERVAL
        grant: Grant | WireGap | None = self._wire_gap if gap else None
        if self._shared is not None and self._shares_rate:
            # Last: a start granted by the fleet must go out on its instant.
            try:
                start, deadline = await self._shared_start()
            except BaseException:
                if probe:
                    self.breaker.probing = False
                raise
            grant = Grant(self, start, deadline)
        self.requests += 1
        _grant.set(grant)
        return probe

    def wire_turn(self) -> float:
        """Where a request is written (see WireGap): seconds it must still wait to keep
        the rate between the instants requests reach the wire; 0 when it may go now, and
        then it is booked."""
        now = self.clock.monotonic()
        interval = 1.0 / self.rate
        due = max(now, self._wire_tat - (self.burst - 1) * interval)
        if due > now + 1e-4:
            return due - now
        self._wire_tat = max(self._wire_tat, now) + interval
        return 0.0

    def measure_way(self, seconds: float) -> None:
        """How long a granted request took to reach the wire (see Grant)."""
        self._way += 0.1 * (min(seconds, _MAX_LEAD) - self._way)

    def went_late(self) -> None:
        """A request went out past its fleet start, after missing it too often; say so
        once a run."""
        self.wire_misses = 0
        self.sent_late += 1
        if self.sent_late == 1:
            log.warning(
                "resource %s: requests reach the wire later than the fleet's schedule "
                "allows (this process is too busy); some are sent late",
                self.name,
            )

    def state(self) -> dict[str, Any]:
        """What the resource is doing now, for status and the dashboard (instants on the
        wall clock): its declared limits and the rate it runs at, a pause and why, its
        circuit, a quota wait, and how many requests it made and saw refused."""
        now, wall = self.clock.monotonic(), self.clock.time()

        def at(instant: float) -> float | None:
            return round(wall + instant - now, 3) if instant > now else None

        breaker = self.breaker
        circuit = "closed"
        if breaker.open_until is not None:
            circuit = "probing" if breaker.probing else "open"
        return {
            "declared": ", ".join(str(lim) for lim in self.limits) or None,
            "adaptive": self.adaptive,
            "rate": round(self.rate, 4) if self.limits or self.pace is not None else None,
            "paused_until": at(self.paused_until),
            "pause_reason": self.pause_reason if self.paused_until > now else None,
            "circuit": circuit,
            "circuit_since": self.circuit_since if circuit != "closed" else None,
            "circuit_retry_at": at(breaker.open_until) if breaker.open_until is not None else None,
            "quota_until": at(self._quota_wait_until),
            "quotas": [str(q) for q in self.quotas],
            "requests": self.requests,
            "rate_limited": self.rate_limited,
        }

    def _say_quota_wait(self, until: float) -> None:
        """Say once per wait that a quota is used up, and when requests resume."""
        if abs(until - self._quota_wait_until) < 1.0:
            return
        self._quota_wait_until = until
        now = self.clock.monotonic()
        wall = self.clock.time()
        spent = ", ".join(str(q) for q in self.quotas) or "quota"
        self._tell(
            f"quota used up ({spent}): resumes {format_wall(wall + until - now, wall)} "
            f"(in {format_duration(until - now)})",
            until - now,
            "quota",
        )

    def unsent(self) -> None:
        """The start last granted was not used: its request was found late on its way
        to the wire (:class:`LateStart`)."""
        self.requests -= 1
        self.late_starts += 1

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a concurrency slot and a rate reservation for one request."""
        if self.concurrency is None:
            probe = await self.acquire()
            with self._probe(probe):
                yield
            return
        loop = asyncio.get_running_loop()
        if self._semaphore is None or self._semaphore_loop is not loop:
            # A job module (and its resources) may outlive one event loop, e.g. in tests.
            if self._share is None:
                self._semaphore = asyncio.Semaphore(self.concurrency)
            else:
                self._semaphore = _Share(self._share)
            self._semaphore_loop = loop
        async with self._semaphore:
            probe = await self.acquire()
            with self._probe(probe):
                yield

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Hold a slot and a start for one call of any client (a warehouse query, a
        browser page): the pool, the rates, quotas, a pause and the circuit all hold, as
        for a request. A start from a fleet's schedule (or this process's spacing at a
        slow rate) is waited for here, where the call begins, as a request waits for it
        where it is written (see :mod:`backfill.sources.wire`)."""
        while True:
            async with self.slot():
                try:
                    await self._until_start(take_grant())
                except LateStart:
                    self.unsent()
                    continue
                yield
                return

    async def _until_start(self, grant: Grant | WireGap | None) -> None:
        """Wait for the instant of ``grant`` (a late wake is checked again); too late to
        go at all, :class:`LateStart`."""
        if grant is None:
            return
        wait = grant.at_wire()
        while wait > 0:
            await self.clock.sleep(wait)
            wait = grant.at_wire()

    @contextlib.contextmanager
    def _probe(self, probe: int) -> Iterator[None]:
        """The circuit's probe that ends without an answer the breaker counts (cancelled,
        its stage timed out, a 429): the next request probes instead, not none ever."""
        try:
            yield
        finally:
            if probe and self.breaker.probing and self.breaker.probes == probe:
                self.breaker.probing = False

    def _paced(self, now: float) -> None:
        """The learned rate changed: requests not yet started go at the new one. A
        declared rate the source does not accept is said once a run."""
        pace = self.pace
        assert pace is not None and self._pace_scheduler is not None
        self._pace_scheduler.set_rate(pace.rate, self.burst, now)
        if not self.adaptive and not self._said_slower and pace.rate < 0.9 * pace.ceiling:
            self._said_slower = True
            self._tell(
                f"declared {pace.ceiling:g}/s is more than the source accepts: running at "
                f"{pace.rate:.3g}/s",
                0.0,
                "rate",
            )

    def _latency_rising(self, latency: float) -> bool:
        """True when latency has quadrupled over its healthy level, by 200 ms or more: the
        source is queueing (a busy client machine alone must not look like that)."""
        self._latency_ewma = (
            latency if self._latency_ewma is None else 0.9 * self._latency_ewma + 0.1 * latency
        )
        if self._latency_floor is None or self._latency_ewma < self._latency_floor:
            self._latency_floor = self._latency_ewma
        self._latency_samples += 1
        return (
            self._latency_samples > 20
            and self._latency_floor > 0
            and self._latency_ewma > 4 * self._latency_floor + 0.2
        )

    # -- feedback ------------------------------------------------------------------------

    def pause(self, seconds: float, reason: str = "retry-after") -> None:
        """Hold every request of this resource for ``seconds`` (extends, never stacks);
        with a fleet, every worker's requests. No pause lasts longer than ``max_wait``,
        and one cut to it says so."""
        if math.isnan(seconds):  # a garbage hint is no pause
            return
        if seconds > self.max_wait:
            reason = (
                f"{reason}; asked for {describe_seconds(seconds)} s, waiting the cap of "
                f"{describe_seconds(self.max_wait)} s"
            )
            seconds = self.max_wait
        if self._shared is not None:
            self._shared.pause(seconds)
        self._pause_until(self.clock.monotonic() + seconds, reason)

    def _pause_until(self, until: float, reason: str) -> None:
        seconds = until - self.clock.monotonic()
        if until > self.paused_until + 1e-3:
            was_paused = self.paused_until > self.clock.monotonic()
            self.paused_until = until
            self.pause_reason = reason
            if not was_paused:
                self.pauses += 1
                self._tell(f"paused ({reason})", seconds, "paused")

    def observe(
        self,
        outcome: Outcome,
        *,
        retry_after: float | None = None,
        remaining: int | None = None,
        reset_after: float | None = None,
        limit: int | None = None,
        window: float | None = None,
        latency: float | None = None,
    ) -> None:
        """Feed back what a request saw: its outcome, latency and rate-limit headers."""
        now = self.clock.monotonic()
        pace = self.pace
        if (
            latency is not None
            and pace is not None
            and self.adaptive
            and self._latency_rising(latency)
            and pace.on_rate_limited(now, now)
        ):
            self._paced(now)
        if outcome is Outcome.RATE_LIMITED:
            self.rate_limited += 1
            asked = retry_after if retry_after is not None else 1.0
            wait = min(asked, self.max_wait)
            if pace is not None and pace.on_rate_limited(now, max(now + wait, self.paused_until)):
                self._paced(now)
            self.pause(asked, "429")
        elif outcome is Outcome.OK and pace is not None and pace.on_success(now):
            self._paced(now)
        if pace is not None and limit and window:
            pace.on_header_limit(limit / window, now)
            self._paced(now)
        if remaining is not None and remaining <= 0 and reset_after:
            self.pause(reset_after, "quota used up")
        if outcome is not Outcome.RATE_LIMITED:
            change = self.breaker.record(outcome is not Outcome.ERROR, now)
            if change == "opened":
                self.circuit_since = self.clock.time()
                self.down_since = now
                first, most = self.breaker.cooldown, self.breaker.max_cooldown
                then = f", then at most {most:g} s apart" if most > first else ""
                self._tell(
                    f"circuit open: too many errors; probing every {first:g} s{then}",
                    first,
                    "circuit_open",
                )
            elif change == "closed":
                self.circuit_since = None
                self.down_since = None
                self._tell("circuit closed", 0.0, "circuit_closed")
