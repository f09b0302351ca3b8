"""A resource: the limit everything that uses one source shares (see the package)."""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import contextvars
import math
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, Literal

from backfill.clock import Clock, SystemClock, deadline_held
from backfill.errors import ConfigError
from backfill.ratelimit.circuit import CircuitBreaker
from backfill.ratelimit.grants import (
    Grant,
    LateStart,
    PauseGate,
    QuotaGrant,
    Wire,
    WireGap,
    give_grant,
    take_grant,
    until_start,
)
from backfill.ratelimit.limits import (
    DEFAULT_MAX_WAIT,
    EASE_LONGEST,
    EASE_MEMORY,
    EASE_MEMORY_REQUESTS,
    EASE_SETTLE,
    QUOTA_PERIOD,
    REFUSED_WAIT,
    Limit,
    Listener,
    Outcome,
    describe_seconds,
    parse_limit,
)
from backfill.ratelimit.pace import HEADER_PACE_WINDOW, Pace
from backfill.ratelimit.pauses import Pauses
from backfill.ratelimit.pool import Pool
from backfill.ratelimit.schedule import MAX_QUOTA, WIRE_GAP_MIN_INTERVAL
from backfill.ratelimit.sharing import FleetShare, SharedRate

# A turn's timer wakes up to a millisecond late (the event loop's poll counts whole
# milliseconds), and the next turn is spaced from the late one: at 100/s that is a tenth
# of the rate lost. At rates whose interval is under _PRECISE_BELOW seconds, a turn sleeps
# to _PRECISE_LEAD before its instant and yields to the loop from there (other tasks run
# meanwhile), so it starts within microseconds of it.
_PRECISE_LEAD = 0.0011
_PRECISE_BELOW = 0.05
# A turn that waits longer than this wakes early when the rate grows meanwhile (see
# Resource._sleep_until); shorter waits are not worth the bookkeeping.
_WAKEABLE = 0.25
# The instant the current task's request took its turn at (see Resource._strict_about);
# a request sent in a task of its own (a hedged one) carries it there.
_BOOKED: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "backfill_turn_booked", default=None
)


def _whole(value: object) -> bool:
    """A count of at least 1: an int, not a bool, a float or NaN."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _declared(
    name: str,
    rate: str | float | Limit | None,
    burst: int,
    concurrency: int | None,
    limits: list[str | float | Limit] | None,
    adaptive: bool,
    max_wait: float,
) -> list[Limit]:
    """A resource's declared limits, once its settings are checked."""
    if not isinstance(max_wait, int | float) or not 0 < max_wait < math.inf:
        raise ConfigError(
            f"resource {name!r}: max_wait must be a positive number of seconds, not {max_wait!r}"
        )
    if not _whole(burst):
        raise ConfigError(f"resource {name!r}: burst must be at least 1, not {burst!r}")
    if concurrency is not None and not _whole(concurrency):
        raise ConfigError(
            f"resource {name!r}: concurrency must be at least 1 (calls at once), "
            f"not {concurrency!r}"
        )
    if limits is not None and not isinstance(limits, list | tuple):
        raise ConfigError(
            f"resource {name!r}: limits must be a list, e.g. limits=['10000/day'], not {limits!r}"
        )
    declared = [parse_limit(rate)] if rate is not None else []
    quotas = [parse_limit(x) for x in limits or []]
    for quota in quotas:
        if quota.period <= QUOTA_PERIOD:
            continue
        if quota.count != int(quota.count):
            raise ConfigError(
                f"resource {name!r}: quota '{quota}' must count whole requests; write it "
                f"with a longer period instead (e.g. '3/2day' for 1.5 a day)"
            )
        if quota.count > MAX_QUOTA:
            raise ConfigError(
                f"resource {name!r}: quota '{quota}' counts more requests than a window is "
                f"kept for exactly ({MAX_QUOTA:,}); declare it as a rate instead (e.g. "
                f"rate='{quota.rate:.3g}/s')"
            )
    declared += quotas
    if not declared and not adaptive and concurrency is None:
        raise ConfigError(
            f"resource {name!r} needs a rate (e.g. rate='5/s'), a concurrency (e.g. "
            "concurrency=15 for a warehouse's queries at once) or adaptive=True"
        )
    return declared


class Resource:
    """A named limit shared by every stage and call that uses it: rates, quotas, a
    concurrency pool, or only one of them (a warehouse's 15 queries at once). Any client
    takes its turns (:meth:`turn`); ``ctx.http`` does for each request.

    It holds its collaborators: its :class:`Pace` (rates, quotas, the rate learned), its
    :class:`CircuitBreaker`, its concurrency :class:`Pool`, its :class:`FleetShare` and
    its :class:`Wire`; itself, it hands out turns, pauses, and hears what requests saw.

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
        declared = _declared(name, rate, burst, concurrency, limits, adaptive, max_wait)
        self.name = name
        self.max_wait = float(max_wait)
        self.burst = burst
        self.limits = declared
        # Whose limit it is: the job's own (its runs and workers share it), or, shared,
        # every job's on the same state that declares a resource of this name.
        self.shared = shared
        self.adaptive = adaptive
        self.clock: Clock = clock or SystemClock()
        self._listeners: list[Listener] = []
        self.pace = Pace(
            declared, burst=burst, adaptive=adaptive, start_rate=start_rate, tell=self._tell
        )
        self.breaker = breaker or CircuitBreaker()
        self.pool = Pool(concurrency)
        self.fleet = FleetShare(self)
        self.wire = Wire()
        self._wire_gap = WireGap(self)
        self._pause_gate = PauseGate(self)
        self._pacing: asyncio.Lock | None = None
        self._pacing_loop: asyncio.AbstractEventLoop | None = None
        # Resolved when the rate grows: a turn waiting long looks again (_sleep_until).
        self._faster: asyncio.Future[None] | None = None
        self.pausing = Pauses(self._tell)
        # When the last lone 429 slowed the resource down without pausing it (see
        # _eases).
        self._eased_at = -math.inf
        # When the last requests started (how many went between a lone 429 and a later
        # one's request: see _eases).
        self._started: collections.deque[float] = collections.deque(maxlen=1024)
        self._echo_until = -math.inf
        self._eased_to = math.inf  # the rate the last lone 429 brought
        self._settled = True  # the last lone 429's one settling refusal came
        self.requests = 0
        self.rate_limited = 0
        # Answers accepted since the last 429 (see observe: a fleet's pace learns only
        # from a 429 that came after some).
        self._accepted_since = 0
        # When the source last refused a start taken back from a late turn (see
        # _strict_about).
        self._spacing_refused = -math.inf
        self.late_starts = 0  # fleet starts found stale and dropped, taken again
        self.circuit_since: float | None = None  # wall clock
        self.down_since: float | None = None  # the circuit opened (clock.monotonic)
        self.last_error: str | None = None  # the last failure a client said of it

    def __repr__(self) -> str:
        return f"Resource({self.name!r}, rate={self.rate_description()})"

    @property
    def concurrency(self) -> int | None:
        """Calls at once (None: no pool)."""
        return self.pool.concurrency

    @property
    def paused_until(self) -> float:
        """Until when every request is held (on the clock's ``monotonic`` scale)."""
        return self.pausing.until

    @property
    def pause_reason(self) -> str | None:
        """Why requests are held (or were, last)."""
        return self.pausing.reason

    @property
    def pauses(self) -> int:
        """How many pauses began this run."""
        return self.pausing.count

    @property
    def sent_late(self) -> int:
        """Requests sent past their fleet start, after too many misses."""
        return self.wire.sent_late

    def rate_description(self) -> str:
        """The declared limits, and the rate run at when it differs, e.g. ``5/s (running
        at 4.75/s)``, ``adaptive, now 42.00/s`` or ``15 at once`` (a concurrency only)."""
        if not self.limits and self.pace.learned is None:
            return f"{self.concurrency} at once"
        fleet = self._fleet_pace()
        if fleet is not None:
            # Shared: the fleet's pace, learned from every worker's answers.
            described = self._declared() or ""
            if fleet < 0.995 / self.pace.rate_interval:
                described += f" (running at {fleet:.3g}/s, shared)"
            return described
        return self.pace.description()

    def _fleet_pace(self) -> float | None:
        """The pace the fleet books this resource's rate at, when it is shared and told."""
        fleet = self.fleet
        return fleet.pace if fleet.shared is not None and fleet.rate and fleet.pace else None

    @property
    def rate(self) -> float:
        """The sustained rate the resource runs at now (requests per second); quotas over
        longer periods are left out (see :meth:`seconds_for`); infinite for a resource
        of a concurrency only. With a rate shared (a fleet), the pace the fleet books."""
        fleet = self._fleet_pace()
        return self.pace.rate if fleet is None else min(fleet, 1.0 / self.pace.rate_interval)

    def seconds_for(self, requests: float) -> float:
        """The least time ``requests`` need under every limit (quotas included): at the
        declared rates, the rate an adaptive resource has found, or the one a run before
        learned (see :meth:`resume`; a declared rate otherwise starts a hair under
        itself, and is there within seconds)."""
        return self.pace.seconds_for(requests)

    @property
    def quotas(self) -> list[Limit]:
        """The limits over longer periods (e.g. 10000/day), counted exactly over a sliding
        window; a fleet keeps them in the shared ledger."""
        return self.pace.schedule.quotas

    @property
    def rate_interval(self) -> float:
        """Seconds between starts at the resource's per-second rate (0: none declared)."""
        return self.pace.rate_interval

    @property
    def paces(self) -> bool:
        """Whether the resource spaces its requests at a per-second rate, declared or
        learned (one of quotas or a concurrency only does not)."""
        return self.pace.rate_interval > 0 or self.pace.learned is not None

    def reset(self, *, clock: Clock | None = None) -> None:
        """Forget bookings, pauses, breaker state and listeners (a new run starts), and
        keep time on the run's ``clock`` when one is given."""
        if clock is not None:
            self.clock = clock
        self.pace.reset()
        self._pacing = None
        self.wire.tat = -math.inf
        self.pausing.reset()
        self._eased_at = -math.inf
        self._started.clear()
        self._echo_until = -math.inf
        self._eased_to = math.inf  # the rate the last lone 429 brought
        self._settled = True  # the last lone 429's one settling refusal came
        self._spacing_refused = -math.inf
        self.circuit_since = None
        self.down_since = None
        self.last_error = None
        self.breaker = self.breaker.renewed()
        self._listeners.clear()
        self.requests = self.rate_limited = self.pausing.count = self.late_starts = 0
        self.fleet.share_with(None)
        self.pool.reset()

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
        self.fleet.share_with(shared, rate=rate)
        self.pace.schedule.share(rate=rate)

    async def set_share(self, concurrency: int) -> None:
        """This worker's part of the fleet's concurrency (rebalanced as workers come and go)."""
        await self.pool.set_share(concurrency)

    # -- taking a request slot -----------------------------------------------------------

    def _due(self, now: float, circuit: bool = True) -> float:
        """When the next request may start: every limit, a pause and (``circuit``) the
        breaker."""
        start = max(now, self.paused_until)
        if circuit and self.breaker.open_until is not None:
            start = max(start, self.breaker.open_until)
        return self.pace.schedule.earliest(start)

    async def acquire(self, *, circuit: bool = True) -> int:
        """Wait for this request's turn (rates, pauses and the breaker all respected);
        the wait does not count against the partition's stage timeout. Not 0: the
        request is the open circuit's probe, that number. ``circuit`` False: a turn for
        the next hop of a request already past the circuit (a redirect's: the request
        is the probe, or went before the circuit opened), which the breaker does not
        hold and which is never a probe."""
        with deadline_held():
            return await self._acquire(circuit)

    async def _acquire(self, circuit: bool = True) -> int:
        """Wait for this request's turn (rates, pauses and the breaker all respected);
        not 0 when it is the open circuit's probe (its number).

        Requests take their turns in order, one at a time: the first waits until every
        limit allows a start, and is booked at the instant it actually starts. Nothing
        is booked ahead for the others, so a rate that changes (a 429, an adaptive step)
        applies to them at once, and a turn taken late (the loop or the CPU was busy) is
        neither lost nor sent on top of the next one: the next is spaced from it.

        With a fleet (or quotas kept in the state), the start is then taken from the
        shared schedule, whose instants are fixed: one found late there is dropped (see
        :meth:`FleetShare.start`).
        """
        loop = asyncio.get_running_loop()
        if self._pacing is None or self._pacing_loop is not loop:
            # A job module (and its resources) may outlive one event loop, e.g. in tests.
            self._pacing = asyncio.Lock()
            self._pacing_loop = loop
        fleet, schedule = self.fleet, self.pace.schedule
        probe = 0
        # A redirect's next hop does not queue behind the turns waiting for the open
        # circuit's probe to answer (it may be that probe's own): it books between them.
        slept_to: float | None = None  # the instant the turn last slept until
        async with self._pacing if circuit else contextlib.nullcontext():
            while True:
                now = self.clock.monotonic()
                due = self._due(now, circuit)
                if due > now + 1e-6:
                    if due - now > 5.0 and schedule.quota_binds(now, due):
                        self.say_quota_wait(due)
                    # Then look again: a pause, the breaker or a new rate may have moved it.
                    await self._sleep_until(due, now)
                    slept_to = due
                    continue
                if circuit and self.breaker.open_until is not None:
                    if self.breaker.probing:
                        # The probe is out: wait for its answer.
                        await self.clock.sleep(0.05)
                        slept_to = None
                        continue
                    probe = self.breaker.take_probe()
                schedule.book(now, slept_to)
                _BOOKED.set(now)
                self.pace.on_start(now)
                break
        # The rate and burst are applied again where requests are written (WireGap):
        # with a burst run above one at any rate (a bunch written late at once must not
        # exceed the source's bucket), and one at a time (burst 1 or 2) where a strict
        # source (one request per interval) is likely and an interval dwarfs the way's
        # jitter: slow rates. At 100/s one at a time, every late write would be time
        # lost for good. A quota (2000/day) is no rate to space by: a resource of quotas
        # and a concurrency only starts its calls as soon as the quota's window allows.
        # Every turn is checked there for a pause begun meanwhile (PauseGate).
        gap = self.paces and (self.pace.run_burst > 1 or 1.0 / self.rate >= WIRE_GAP_MIN_INTERVAL)
        checked = self._wire_gap if gap else self._pause_gate
        grant: Grant | PauseGate = checked
        if fleet.shared is not None:
            # Last: a start granted by the fleet (its rate and quotas, or its quotas
            # only) must go out on its instant: a quota's window counts the instants
            # booked, so a start sent later than booked would crowd the next window.
            try:
                start, deadline = await fleet.start()
            except BaseException:
                if probe:
                    self.breaker.probing = False
                raise
            if fleet.rate:
                grant = Grant(self, start, deadline)
            else:
                # Only the quotas are shared: the rate's spacing where requests are
                # written is still this process's own.
                grant = QuotaGrant(self, start, deadline, then=checked)
        self.requests += 1
        self._started.append(now)  # the turn it was booked at
        give_grant(grant)
        return probe

    def _wake_waiting(self) -> None:
        """The rate grew: a turn waiting long looks again (see _sleep_until). Only on its
        own loop, running: a loop closed meanwhile (the resource outlives it) has no one
        waiting."""
        faster, self._faster = self._faster, None
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return
        if faster is not None and not faster.done() and faster.get_loop() is running:
            faster.set_result(None)

    async def _sleep_until(self, due: float, now: float) -> None:
        """Sleep towards the turn at ``due``: at fast rates the last moments by yielding
        to the loop rather than on a timer (see _PRECISE_LEAD)."""
        wait = due - now
        rate = self.rate
        precise = isinstance(self.clock, SystemClock) and 1.0 / _PRECISE_BELOW < rate < math.inf
        if wait > _WAKEABLE:
            # A long wait (a slow rate, or one come down far) ends early when the rate
            # grows meanwhile: the turn was counted at the old one (an outage's recovery
            # from one request every few seconds would otherwise wait them out).
            loop = asyncio.get_running_loop()
            faster = self._faster
            if faster is None or faster.done() or faster.get_loop() is not loop:
                faster = self._faster = loop.create_future()
            sleeper = asyncio.ensure_future(self.clock.sleep(wait))
            try:
                await asyncio.wait((sleeper, faster), return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
        elif not precise:
            await self.clock.sleep(wait)
        elif wait > _PRECISE_LEAD:
            await self.clock.sleep(wait - _PRECISE_LEAD)
        else:
            await asyncio.sleep(0)

    def state(self) -> dict[str, Any]:
        """What the resource is doing now, for status and the dashboard (instants on the
        wall clock): its declared limits and the rate it runs at, a pause and why, its
        circuit, a quota wait, and how many requests it made and saw refused."""
        now, wall = self.clock.monotonic(), self.clock.time()

        def at(instant: float) -> float | None:
            return round(wall + instant - now, 3) if instant > now else None

        breaker = self.breaker
        circuit = breaker.status
        return {
            "declared": self._declared(),
            "adaptive": self.adaptive,
            "rate": round(self.rate, 4) if self.limits or self.pace.learned is not None else None,
            "paused_until": at(self.paused_until),
            "pause_reason": self.pause_reason if self.paused_until > now else None,
            "circuit": circuit,
            "circuit_since": self.circuit_since if circuit != "closed" else None,
            "circuit_retry_at": at(breaker.open_until) if breaker.open_until is not None else None,
            "quota_until": at(self.pausing.quota_wait_until),
            "quotas": [str(q) for q in self.quotas],
            "requests": self.requests,
            "rate_limited": self.rate_limited,
            "settled": self._settled_rate(),
        }

    def _declared(self) -> str | None:
        """The declared limits as the state on record says them."""
        return ", ".join(str(lim) for lim in self.limits) or None

    def _settled_rate(self) -> float | None:
        learned = self.pace.learned
        if learned is None or (self.fleet.shared is not None and self.fleet.rate):
            # (A rate shared with other workers is learned per worker: its share, not
            # what a run of any size may start at. So is any rate in a fleet: see
            # LeaseKeeper.resources_json.)
            return None
        settled = learned.settled()
        return round(settled, 4) if settled is not None else None

    def resume(self, state: Mapping[str, Any]) -> bool:
        """Start at the rate a run before learned of the source, from the ``state`` it
        left on record (see :meth:`state` and :meth:`Pace.resume`): a declared rate at
        the rate it was refused down to (and it says so), searching upwards from there;
        an adaptive one ramping again from half the limit found, not from its start
        rate. Only when the resource was declared the same way then (the same limits,
        adaptive or not); True when it resumed."""
        rate = self.resumable(state)
        return rate is not None and self.pace.resume(rate)

    def resumable(self, state: Mapping[str, Any]) -> float | None:
        """The rate to start at from ``state`` (see :meth:`resume`), or None when it
        says nothing this resource may start from."""
        settled = state.get("settled")
        if (
            self.pace.learned is None
            or type(settled) not in (int, float)
            or state.get("adaptive") is not self.adaptive
            or state.get("declared") != self._declared()
        ):
            return None
        try:
            rate = float(settled)  # type: ignore[arg-type]
        except OverflowError:  # an integer of hundreds of digits (a ledger edited by hand)
            return None
        return rate if math.isfinite(rate) and rate > 0 else None

    @property
    def resumed(self) -> bool:
        """Started at what a run before learned (see :meth:`resume`)."""
        return self.pace.resumed

    def say_quota_wait(self, until: float) -> None:
        """Say once per wait that a quota is used up, and when requests resume."""
        self.pausing.say_quota_wait(until, self.quotas, self.clock)

    def idle(self) -> bool:
        """Nothing waits for this resource: no request for its turn, none for a slot (a
        request sent now takes a turn nobody else would)."""
        pacing = self._pacing
        turn_awaited = (
            pacing is not None
            and self._pacing_loop is asyncio.get_running_loop()
            and pacing.locked()
        )
        return not turn_awaited and not self.pool.full()

    def unsent(self) -> None:
        """The start last granted was not used: its request was found late on its way
        to the wire (:class:`LateStart`)."""
        self.requests -= 1
        self.late_starts += 1

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a concurrency slot and a rate reservation for one request."""
        pool = self.pool.current()
        if pool is None:
            probe = await self.acquire()
            with self._probe(probe):
                yield
            return
        async with pool:
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
                    await until_start(self.clock, take_grant())
                except LateStart:
                    self.unsent()
                    continue
                yield
                return

    @contextlib.contextmanager
    def _probe(self, probe: int) -> Iterator[None]:
        """The circuit's probe that ends without an answer the breaker counts: the next
        request probes instead (see :meth:`CircuitBreaker.drop_probe`)."""
        try:
            yield
        finally:
            self.breaker.drop_probe(probe)

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
        if self.fleet.shared is not None:
            self.fleet.shared.pause(seconds)
        self.hold_until(self.clock.monotonic() + seconds, reason)

    def _eases(
        self, now: float, sent: float | None, asked: float, status: int
    ) -> Literal["lone", "echo", "settle"] | None:
        """Whether a 429 slows the resource down without pausing it (None: it pauses
        it): a new ``"lone"`` 429, an ``"echo"`` of the last one, or the one refusal that
        may follow it while the source's bucket refills (``"settle"``, within
        EASE_SETTLE of its echoes). A lone 429 asks
        for a second or less (or two intervals of the declared rate), of a request the
        resource knows the sending of. In a fleet too: the worker that saw it slows its
        own pace, and the fleet goes on (each 429 pausing every worker a second, four
        workers at a correct 20/s in front of a strict bucket paused 81-109 times in 30 s).

        A second is the least a ``Retry-After`` can say in whole seconds; a bucket that
        refused one request of a burst, or one that came a hair early, is ready again
        within an interval. Pausing every request for it is a whole second lost (a tenth
        of a short job at 100/s); the rate coming down is what stops the next refusal.
        The refused request itself waits what it was asked. The requests sent before it
        came (or before the first start the slower rate spaced) are its echoes. A 429 of a
        request sent after them, within EASE_MEMORY seconds (or ten intervals) and fewer
        than EASE_MEMORY_REQUESTS requests started since (one refused after fifty or more
        went through is a busy source's jitter, not its insistence), says the source
        insists: the resource pauses, as for any longer wait, a 503's, or a 429 while
        paused; and so it does for every 429 sent in that time, however late its answer
        comes. So does a 429 of a request sent at a rate a source's header set since the
        lone one."""
        if sent is None or status != 429 or self.pace.learned is None:
            return None
        if self.breaker.open_until is not None:
            return None  # the circuit's probe, refused: every request waits with it
        interval = self.pace.rate_interval
        if asked > max(EASE_LONGEST, 2.0 * interval) or self.paused_until > now:
            return None
        if sent <= self._eased_at or sent < self._echo_until:
            return "echo"
        if not self._settled and sent < self._echo_until + EASE_SETTLE:
            # Sent just after at the slower rate: the bucket that refused the lone one was
            # left empty, and a rate a few percent under its limit refills it slowly; one
            # request the way's jitter brings early is refused. One such slows the rate
            # again (the source said nothing new yet); the next pauses.
            self._settled = True
            return "settle"
        if sent < self._eased_at + max(EASE_MEMORY, 10.0 * interval):
            learned = self.pace.learned
            went_at = learned.rate_at(sent)
            if went_at is None or went_at <= self._eased_to:
                if self._started_between(self._eased_at, sent) < EASE_MEMORY_REQUESTS:
                    return None
                # Fifty or more went since at the rate it left: a busy source's
                # jitter, a new lone one.
            elif not learned.rose_between(self._eased_at, sent):
                # Sent at a rate a source's header set since (it may overstate its limit).
                return None
            # (Or sent faster than the last lone 429 brought the rate, a search having
            # taken it up since: a new lone one, of the new rate.)
        return "lone"

    def _strict_about(self, sent: float) -> bool:
        """Whether a 429 of the request sent at ``sent`` says the source is strict about
        its spacing: its turn started closer than the rate's interval after the one
        before (taken back from a late one, see :meth:`Schedule.take_back`), under a
        declared rate of burst one, of this process's own, while turns were taken back,
        and it went before the first such 429 was answered (those on their way then were
        taken back too). (An adaptive rate's 429s come from its ramp and searches going
        over the limit, and hit such starts as often as others: it learns the rate that
        holds with them.)"""
        pace = self.pace
        if pace.adaptive or not pace.took_back:
            # (A declared burst starts requests closer than the interval on purpose.)
            return False
        if self.fleet.shared is not None and self.fleet.rate:
            return False
        if pace.strict_spacing and sent > self._spacing_refused:
            return False
        # The turn this request took (a request is stamped sent when it is built, which a
        # busy loop may delay past the next turn); else the last turn before it went.
        booked = _BOOKED.get()
        if booked is not None and booked <= sent:
            sent = booked
        started = self._started
        i = bisect.bisect_right(started, sent) - 1
        if i < 1:
            return False
        learned = pace.learned
        # (At the rate its turn was spaced at: one come down since spaces wider.)
        rate = (learned.rate_at(started[i]) if learned is not None else None) or pace.rate
        return started[i] - started[i - 1] < 0.999 / rate

    def _started_between(self, start: float, end: float) -> int:
        """How many of the last requests started after ``start`` and before ``end``."""
        started = self._started
        return bisect.bisect_left(started, end) - bisect.bisect_right(started, start)

    def hold_until(self, until: float, reason: str) -> None:
        """Hold this process's requests until ``until`` (extends, never stacks); a pause
        that begins is said."""
        self.pausing.hold_until(until, reason, self.clock)

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
        status: int | None = None,
        sent: float | None = None,
        ease: bool = True,
    ) -> None:
        """Feed back what a request saw: its outcome, latency and rate-limit headers
        (``status``: the answer's, which a pause it begins is said with; a 429 when not
        given; ``sent``: when the request went, on the resource's clock, when known).

        A 429 slows the resource down (see :class:`AdaptiveRate`) and pauses it for the
        wait the source asks, unless it is a lone one (see :meth:`_eases`) and ``ease``
        allows: then the refused request waits alone and the others go on at the lower
        rate."""
        now = self.clock.monotonic()
        pace = self.pace
        # (Only a turn waiting long cares whether the rate grows: see _sleep_until.)
        before = pace.rate if self._faster is not None else math.inf
        pace.on_latency(latency, now)
        if outcome is Outcome.RATE_LIMITED:
            self.rate_limited += 1
            asked = retry_after if retry_after is not None else REFUSED_WAIT
            spacing = sent is not None and self._strict_about(sent)
            eased = self._eases(now, sent, asked, status or 429) if ease and not spacing else None
            if spacing:
                # The source refused a start taken back from a late turn: it is strict
                # about its spacing, not about the rate. None is taken back from now on;
                # the rate stays (cut at a run's first 429, a strict 25/s ran at 12/s for
                # seconds), and the refused request waits what it was asked, alone.
                if not pace.strict_spacing:
                    pace.refused_taken_back()
                    self._spacing_refused = now
                nudged = False
            elif eased is not None:
                # (A lone one, or the one after it while the bucket refills: the rate
                # is about right, the request came a hair early.)
                nudged = pace.on_refused(now, now, sent=sent) or eased != "echo"
                if eased == "lone":
                    # Its echoes are the requests sent before it came or before the first
                    # start the slower rate spaced (their turns taken at the old one).
                    self._eased_at = now
                    self._echo_until = pace.next_start(now)
                    self._eased_to = pace.rate
                    self._settled = False
            else:
                wait = min(asked, self.max_wait)
                nudged = pace.on_refused(now, max(now + wait, self.paused_until), sent=sent)
                self.pause(asked, str(status or 429))
            if sent is not None:
                # The rate about right, this one came a hair early: the fleet's pace
                # learns its margin from it (see fleet_pace). Not after another 429, none
                # accepted between: a source down refuses all, and says nothing of the
                # margin its limit needs.
                self.fleet.answered(sent, False, early=nudged and self._accepted_since > 0)
            self._accepted_since = 0
        elif outcome is Outcome.OK:
            self._accepted_since += 1
            if sent is not None:
                self.fleet.answered(sent, True)
            pace.on_success(now, sent=sent)
        pace.on_header_limit(limit, window, now)
        if limit and window and 0 < window <= HEADER_PACE_WINDOW:
            self.fleet.said(limit / window)
        if pace.rate > before:
            self._wake_waiting()
        if remaining is not None and remaining <= 0 and reset_after:
            self.pause(reset_after, "quota used up")
        if outcome is not Outcome.RATE_LIMITED:
            change = self.breaker.record(outcome is not Outcome.ERROR, now)
            if change == "opened":
                self.circuit_since = self.clock.time()
                self.down_since = now
                self._tell(self.breaker.opened_message(), self.breaker.cooldown, "circuit_open")
            elif change == "closed":
                self.circuit_since = None
                self.down_since = None
                self._tell("circuit closed", 0.0, "circuit_closed")
