"""The collaborators a resource holds, each on its own: schedule, pace, pauses, wire,
pool, breaker and fleet share."""

from __future__ import annotations

import asyncio
import itertools
import math

import pytest
from test_pacing import serve

from backfill.ratelimit.adaptive import AdaptiveRate
from backfill.ratelimit.circuit import CircuitBreaker
from backfill.ratelimit.grants import Wire
from backfill.ratelimit.limits import Limit
from backfill.ratelimit.pace import Pace
from backfill.ratelimit.pauses import Pauses
from backfill.ratelimit.pool import Pool
from backfill.ratelimit.resource import Resource
from backfill.ratelimit.schedule import Schedule
from virtual_time import FakeClock


def _told() -> tuple[list[tuple[str, float, str]], Pace]:
    said: list[tuple[str, float, str]] = []
    pace = Pace(
        [Limit(10, 1)],
        burst=1,
        adaptive=False,
        start_rate=None,
        tell=lambda what, seconds, kind: said.append((what, seconds, kind)),
    )
    return said, pace


def test_a_schedule_spaces_starts_at_its_rate_and_holds_a_quota_to_its_window() -> None:
    """Two a second, at most three a minute: the fourth start waits for the first to
    leave the minute."""
    schedule = Schedule([Limit(2, 1), Limit(3, 60)], burst=1, pace_rate=None)
    starts = []
    now = 0.0
    for _ in range(4):
        now = schedule.earliest(now)
        schedule.book(now)
        starts.append(now)
    assert starts == [0.0, 0.5, 1.0, 60.0]
    assert schedule.quotas == [Limit(3, 60)]


def test_a_schedule_shared_with_a_fleet_keeps_only_what_the_fleet_does_not_grant() -> None:
    """Shared with its rate, a schedule no longer books the declared rate nor the quota,
    nor the pace this process learned (the fleet learns its pace from every worker's
    answers); a reset forgets the fleet and every booking."""
    schedule = Schedule([Limit(1, 1), Limit(5, 60)], burst=1, pace_rate=100.0)
    schedule.share(rate=True)
    schedule.book(0.0)
    assert schedule.earliest(0.0) == 0.0
    quotas_only = Schedule([Limit(1, 1), Limit(5, 60)], burst=1, pace_rate=100.0)
    quotas_only.share(rate=False)
    quotas_only.book(0.0)
    assert quotas_only.earliest(0.0) == 1.0
    schedule.reset()
    assert schedule.earliest(0.0) == 0.0
    schedule.book(0.0)
    assert schedule.earliest(0.0) == 1.0


def test_a_quota_binds_only_when_it_is_what_holds_the_start() -> None:
    """A used-up quota is named as the wait; a rate's spacing is not."""
    used_up = Schedule([Limit(1, 1), Limit(1, 60)], burst=1, pace_rate=None)
    used_up.book(0.0)
    assert used_up.quota_binds(0.0, 60.0)
    spaced = Schedule([Limit(1, 1), Limit(5, 60)], burst=1, pace_rate=None)
    spaced.book(0.0)
    assert not spaced.quota_binds(0.0, spaced.earliest(0.0))


def test_a_pace_runs_a_burst_1_rate_a_hair_under_what_is_declared_and_says_a_refusal() -> None:
    """Burst 1 starts at 97 % of the declared rate; a source refusing far more than that
    brings it down and is said once, as a "rate" change."""
    said, pace = _told()
    assert pace.rate == pytest.approx(9.7)
    assert pace.description() == "10/s (running at 9.7/s)"
    for step in range(20):
        pace.on_success(step * 0.1)
    for step in range(3):
        pace.on_refused(2.0 + step * 2.0, 3.0 + step * 2.0)
    assert pace.rate < 9.0
    assert [kind for _, _, kind in said] == ["rate"]


def test_a_pace_takes_a_limit_the_source_states() -> None:
    """A RateLimit header of 60 per minute sets the learned rate just under 1/s."""
    _, pace = _told()
    pace.on_header_limit(60, 60.0, 1.0)
    assert pace.rate == pytest.approx(0.98)
    assert pace.rate_interval == pytest.approx(0.1)
    assert pace.seconds_for(10) == pytest.approx(1.0)


@pytest.mark.parametrize("window", [3600.0, 86400.0, 1e300])
def test_a_limit_the_source_states_over_a_long_window_is_no_pace(window: float) -> None:
    """1000 a day (or an hour, or a window of absurd length) is a quota the source
    counts, not a pace to spread over the day (one request every 86 s, the whole run
    slowed to the floor for good): the rate stays what was declared; the source's
    RateLimit-Remaining and Reset pause the resource when it is used up."""
    _, pace = _told()
    declared = pace.rate  # 10/s, burst 1: a hair under
    pace.on_header_limit(1000, window, 1.0)
    assert pace.rate == declared > 9.0


def test_a_refusal_s_pause_is_said_with_its_status_and_one_already_over_is_none() -> None:
    """A 503 with Retry-After pauses as a 429 does, and is said as a 503; a Retry-After
    already over (a date in the past: 0 s) begins no pause and says none."""
    from backfill.ratelimit.limits import Outcome

    clock = FakeClock()
    resource = Resource("api", rate="10/s", clock=clock)
    told: list[tuple[str, float]] = []
    resource.subscribe(
        lambda name, what, seconds, kind: told.append((what, seconds)) if kind == "paused" else None
    )
    resource.observe(Outcome.RATE_LIMITED, retry_after=0.0, status=503)
    assert told == [] and resource.pauses == 0
    resource.observe(Outcome.RATE_LIMITED, retry_after=2.0, status=503)
    assert told == [("paused (503)", 2.0)]
    assert resource.pauses == 1


def test_a_lone_429_slows_the_resource_down_and_a_source_that_insists_pauses_it() -> None:
    """A 429 asking a second, of a request whose sending is known: the rate comes down,
    nothing pauses; the requests on their way with it are its echoes; a request sent
    after it and refused within the second it asked for pauses the resource, once."""
    from backfill.ratelimit.limits import Outcome

    clock = FakeClock()
    resource = Resource("api", rate="10/s", clock=clock)
    for _ in range(30):
        clock.t += 0.1
        resource.observe(Outcome.OK, latency=0.05, sent=clock.t - 0.05)
    before = resource.rate
    resource.observe(Outcome.RATE_LIMITED, retry_after=1.0, sent=clock.t - 0.05)
    assert resource.pauses == 0 and resource.paused_until < clock.t
    assert resource.rate < before
    clock.t += 0.05
    resource.observe(Outcome.RATE_LIMITED, retry_after=1.0, sent=clock.t - 0.08)  # an echo
    assert resource.pauses == 0
    clock.t += 0.3
    resource.observe(Outcome.RATE_LIMITED, retry_after=1.0, sent=clock.t - 0.05)
    assert resource.pauses == 1 and resource.paused_until == pytest.approx(clock.t + 1.0)
    # After the pause, within five seconds of the first, the source still insists.
    clock.t += 1.5
    resource.observe(Outcome.RATE_LIMITED, retry_after=1.0, sent=clock.t - 0.05)
    assert resource.pauses == 2
    # Sent within them, a 429 answered late (the source's latency over the second it
    # asks) insists too.
    clock.t += 2.0
    resource.observe(Outcome.RATE_LIMITED, retry_after=1.0, sent=clock.t - 1.8)
    assert resource.pauses == 3
    # Five seconds on, a lone 429 eases again.
    clock.t += 6.0
    resource.observe(Outcome.RATE_LIMITED, retry_after=1.0, sent=clock.t - 0.05)
    assert resource.pauses == 3 and resource.paused_until < clock.t


def _healthy_at_100_a_second(latency: float) -> tuple[Resource, FakeClock]:
    """A resource declared 100/s after 300 turns taken and answered on virtual time."""
    from backfill.ratelimit.limits import Outcome

    clock = FakeClock()
    resource = Resource("api", rate="100/s", clock=clock)

    async def turns() -> None:
        for _ in range(300):
            await resource.acquire()
            resource.observe(Outcome.OK, latency=latency, sent=clock.t)

    asyncio.run(turns())
    return resource, clock


def test_a_429_of_a_request_sent_before_the_slower_rate_spaced_one_is_an_echo() -> None:
    """At 100/s, a lone 429 slows the rate down 5 ms after the last turn was taken. A
    request sent 4 ms after it took its turn at the old rate (its 429 is the lone one's
    echo: it paused the whole resource a second, and halved its rate); the slower rate
    spaces its first start an interval of its own after the last one; a request sent
    after that was spaced by it: its 429 slows the rate again (the lone one left the
    source's bucket empty), and the next one's says the source insists."""
    from backfill.ratelimit.limits import Outcome

    resource, clock = _healthy_at_100_a_second(latency=0.05)
    last = clock.t
    clock.t += 0.005
    resource.observe(Outcome.RATE_LIMITED, retry_after=1.0, sent=clock.t - 0.05)
    eased, slower = clock.t, resource.rate
    assert resource.pauses == 0 and slower < 100.0
    spaced = last + 1.0 / slower  # the first start the slower rate spaces
    clock.t += 0.02
    resource.observe(Outcome.RATE_LIMITED, retry_after=1.0, sent=eased + 0.004)
    assert resource.pauses == 0
    assert resource.rate == slower
    assert resource.pace.next_start(eased) == pytest.approx(spaced)
    resource.observe(Outcome.RATE_LIMITED, retry_after=1.0, sent=spaced)
    assert resource.pauses == 0 and resource.rate < slower
    resource.observe(Outcome.RATE_LIMITED, retry_after=1.0, sent=spaced + 0.02)
    assert resource.pauses == 1


def test_a_slower_rate_spaces_the_next_start_from_the_last_at_its_own_interval() -> None:
    """A rate behind its schedule (its next start due at once) comes down: the next
    start still waits an interval of the new rate after the last one."""
    from backfill.ratelimit.schedule import Scheduler

    pace = Scheduler(100.0, 1)
    pace.book(10.0)
    assert pace.earliest(10.02) == 10.02  # behind: due at once
    pace.set_rate(50.0, 1, 10.02)
    assert pace.earliest(10.02) == pytest.approx(10.02)
    pace.book(10.02)
    pace.set_rate(25.0, 1, 10.025)
    assert pace.earliest(10.025) == pytest.approx(10.02 + 0.04)
    pace.set_rate(100.0, 1, 10.025)  # faster: what is owed is respaced, no further
    assert pace.earliest(10.025) <= 10.02 + 0.04


def test_a_wait_asked_longer_than_the_declared_rate_s_intervals_pauses_once_the_rate_fell() -> None:
    """Two intervals of the declared rate (10/s), not of the rate the source has
    taught it (down to a fraction of a request a second): Retry-After: 10 pauses."""
    from backfill.ratelimit.limits import Outcome

    clock = FakeClock()
    resource = Resource("api", rate="10/s", clock=clock)
    learned = resource.pace.learned
    assert learned is not None
    learned.rate = 0.15
    clock.t = 10.0
    resource.observe(Outcome.RATE_LIMITED, retry_after=10.0, sent=clock.t - 0.05)
    assert resource.pauses == 1


@pytest.mark.parametrize(
    ("retry_after", "status", "sent"),
    [(2.0, 429, -0.05), (1.0, 503, -0.05), (1.0, 429, None)],
    ids=["a longer wait", "a 503", "sending not known"],
)
def test_a_429_that_is_not_a_lone_short_one_pauses_the_resource(
    retry_after: float, status: int, sent: float | None
) -> None:
    """A wait longer than a second (and two intervals), a 503's, or a refusal whose
    request's sending is not known (a browser page's) pause every request."""
    from backfill.ratelimit.limits import Outcome

    clock = FakeClock()
    clock.t = 10.0
    resource = Resource("api", rate="10/s", clock=clock)
    resource.observe(
        Outcome.RATE_LIMITED,
        retry_after=retry_after,
        status=status,
        sent=None if sent is None else clock.t + sent,
    )
    assert resource.pauses == 1


def test_a_lone_429_at_a_rate_a_fleet_shares_slows_the_worker_without_pausing_the_fleet() -> None:
    """The fleet's schedule books at each worker's rate: a lone 429 slows the worker
    that saw it down, as in one process, and pauses nobody (each pause of Retry-After: 1
    cost every worker a second: four workers at a correct 20/s in front of a strict
    bucket crawled at a tenth of it); a longer wait pauses the whole fleet."""
    from backfill.ratelimit.limits import Outcome
    from backfill.ratelimit.sharing import Taken

    class Shared:
        def __init__(self) -> None:
            self.paused: list[float] = []

        async def take(self, count: int) -> Taken:  # pragma: no cover
            raise AssertionError

        def pause(self, seconds: float) -> None:
            self.paused.append(seconds)

    clock = FakeClock()
    clock.t = 10.0
    resource = Resource("api", rate="10/s", clock=clock)
    shared = Shared()
    resource.share_with(shared)
    before = resource.rate
    resource.observe(Outcome.RATE_LIMITED, retry_after=1.0, sent=clock.t - 0.05)
    assert resource.pauses == 0 and shared.paused == []
    assert resource.rate < before
    clock.t += 5.0
    resource.observe(Outcome.RATE_LIMITED, retry_after=2.0, sent=clock.t - 0.05)
    assert resource.pauses == 1 and shared.paused == [2.0]


def test_pauses_extend_never_stack_and_are_said_once() -> None:
    """A second, longer pause while paused moves its end without a second message."""
    clock = FakeClock()
    said: list[str] = []
    pauses = Pauses(lambda what, seconds, kind: said.append(kind))
    pauses.hold_until(5.0, "429", clock)
    pauses.hold_until(3.0, "shorter", clock)
    pauses.hold_until(8.0, "longer", clock)
    assert (pauses.until, pauses.reason, pauses.count, said) == (8.0, "longer", 1, ["paused"])
    pauses.say_quota_wait(100.0, [Limit(5, 60)], clock)
    pauses.say_quota_wait(100.5, [Limit(5, 60)], clock)
    assert said == ["paused", "quota"]


def test_the_wire_spaces_requests_at_the_rate_where_they_are_written() -> None:
    """At 2/s, a request written 0.1 s after the one before waits 0.4 s more."""
    wire = Wire()
    assert wire.turn(10.0, 2.0, 1) == 0.0
    assert wire.turn(10.1, 2.0, 1) == pytest.approx(0.4)
    assert wire.turn(10.5, 2.0, 1) == 0.0
    wire.measure_way(1.0)
    assert wire.way == pytest.approx(0.025)


def test_a_pool_share_resizes_while_calls_hold_it() -> None:
    """A worker's share grows from 1 to 2 while a call holds the pool: a second call
    gets in without waiting for the first."""

    async def main() -> int:
        pool = Pool(4)
        await pool.set_share(1)
        held = pool.current()
        assert held is not None
        async with held:
            waiting = asyncio.ensure_future(_enter(pool))
            await asyncio.sleep(0)
            assert not waiting.done()
            await pool.set_share(2)
            return await asyncio.wait_for(waiting, 1.0)

    assert asyncio.run(main()) == 1
    assert Pool(None).concurrency is None


async def _enter(pool: Pool) -> int:
    held = pool.current()
    assert held is not None
    async with held:
        return 1


def test_a_renewed_breaker_is_closed_with_the_same_settings() -> None:
    """Opened by errors, a breaker's renewal is closed with its threshold and cooldowns."""
    breaker = CircuitBreaker(min_requests=2, cooldown=1.0, max_cooldown=4.0)
    breaker.record(False, 0.0)
    assert breaker.record(False, 0.0) == "opened"
    assert breaker.status == "open"
    probe = breaker.take_probe()
    assert breaker.status == "probing"
    breaker.drop_probe(probe + 1)
    assert breaker.probing
    breaker.drop_probe(probe)
    assert not breaker.probing
    assert breaker.opened_message().endswith("probing every 1 s, then at most 4 s apart")
    fresh = breaker.renewed()
    assert (fresh.status, fresh.min_requests, fresh.max_cooldown) == ("closed", 2, 4.0)


def test_a_fleet_share_drops_starts_found_stale() -> None:
    """Starts already more than half an interval past are dropped; the first on time is
    used, with its deadline half an interval after it."""

    from backfill.ratelimit.sharing import Taken

    class Schedule3:
        async def take(self, count: int) -> Taken:
            return Taken([0.0, 0.4, 10.0], 0.0)

        def pause(self, seconds: float) -> None:
            """No fleet to pause."""

    clock = FakeClock()
    resource = Resource("api", rate=1, clock=clock)
    resource.share_with(Schedule3())
    clock.t = 1.0

    async def main() -> tuple[float, float]:
        return await resource.fleet.start()

    assert asyncio.run(main()) == (10.0, 10.5)


def test_a_quota_s_start_found_late_is_dropped_not_sent_on_top_of_the_next_window() -> None:
    """Quotas only, kept in the state: starts held by a process stopped for seconds (a
    laptop asleep, SIGSTOP) are dropped when it wakes, not all sent at once (they would
    crowd the quota's next window); a start due later than the booking horizon is waited
    for, said once, and asked for again."""
    from backfill.ratelimit.sharing import Taken

    class Ring:
        def __init__(self) -> None:
            self.answers = [Taken([0.0, 0.1], 0.0), Taken([], 0.0, later=65.0)]

        async def take(self, count: int) -> Taken:
            if self.answers:
                return self.answers.pop(0)
            return Taken([65.0], 0.0)

        def pause(self, seconds: float) -> None:
            """No fleet to pause."""

    clock = FakeClock()
    resource = Resource("api", limits=["3/min"], concurrency=1, clock=clock)
    resource.share_with(Ring(), rate=False)
    told: list[str] = []
    resource.subscribe(lambda name, what, seconds, kind: told.append(kind))
    clock.t = 5.0

    async def main() -> tuple[float, float]:
        return await resource.fleet.start()

    start, deadline = asyncio.run(main())
    assert (start, deadline) == (65.0, 65.25)
    assert 64.0 <= clock.t <= 65.0
    assert told == ["quota"]


def _ramped_from_5(seconds: float, *, every: float) -> AdaptiveRate:
    """An adaptive rate started at 5/s, answered every ``every`` s for ``seconds``."""
    rate = AdaptiveRate(5.0)
    t = 0.0
    while t < seconds:
        rate.on_success(t)
        t += every
    return rate


def test_a_ramp_s_429s_drop_under_what_got_through_then_search_past_it_slowly() -> None:
    """A source's bucket lets a ramp past its limit unrefused until the bucket runs dry:
    every answer before the first 429 was accepted (100 a second here, while the ramp
    reached four times that). The first 429 takes the rate to just under what got
    through, not a jitter step under the ramp. More 429s from the requests then on their
    way say the ramp was far past the limit: the search goes straight back to a hair
    under what got through (it did get through), then past it only 5 % a second, as what
    got through is measured over a ramp and falls short of the limit (84/s of 100 over
    real HTTP: a search that stopped there ran 16 % under the limit for minutes). A lone
    429 (a bucket of one refuses at once) leaves the search its 10 % steps."""

    def ramped() -> AdaptiveRate:
        rate = _ramped_from_5(3.0, every=0.01)
        assert rate.rate > 150.0
        rate.on_rate_limited(3.0, 4.0)
        assert 85.0 <= rate.rate <= 100.0
        return rate

    def searched(rate: AdaptiveRate, until: float) -> float:
        t = 4.0
        while t < until:
            rate.on_success(t)
            t += 1.0 / rate.rate
        return rate.rate

    storm = ramped()
    storm.on_rate_limited(3.01, 4.0)
    storm.on_rate_limited(3.02, 4.0)
    assert searched(storm, 5.5) == pytest.approx(97.0)
    assert 100.0 < searched(storm, 9.0) <= 97.0 * 1.05**3 * 1.001
    assert searched(ramped(), 9.0) > 97.0 * 1.05**3 * 1.001


@pytest.mark.parametrize(("sent", "used"), [(0.66, False), (0.91, True)])
def test_a_search_step_climbs_once_the_client_used_it(sent: float, used: bool) -> None:
    """A search climbs a step once the step was used. At 60/s with the client sending 40
    (its concurrency full), the step says nothing of the source, and climbing on would
    take the rate where no request has been, to burst there once the client can; sent
    at 91 % (turns missed while the loop was busy, as at 100/s over real HTTP), it was
    used. Once the client sends the whole step, it climbs."""
    from backfill.ratelimit.adaptive import AdaptiveRate

    rate = AdaptiveRate(100.0, ramp=False)
    rate.on_rate_limited(0.0, 1.0)
    searching = rate.rate
    t = 1.0
    while t < 6.0:
        rate.on_success(t)
        t += 1.0 / (sent * searching)
    assert (rate.rate > searching) is used
    held = rate.rate
    while t < 8.0:
        rate.on_success(t)
        t += 1.0 / rate.rate
    assert rate.rate > held


def test_a_ramp_grows_only_while_the_client_sends_its_rate() -> None:
    """A ramp whose client sends far less than its rate (its CPU busy with other work)
    says nothing of the source past what went: traced at 100/s on a loaded machine, the
    ramp reached 376/s while 80 a second went (four times what got through was its only
    cap); when the CPU came back, a burst of 429s, a drop to what got through under load
    (54/s) and seconds of search back up (13.0 s against 9.9). The ramp holds while
    fewer than 70 % of a step's turns start; once the client sends them, it grows."""
    rate = AdaptiveRate(5.0)
    t = 0.0
    while t < 5.0:  # the client sends 40 a second, whatever the rate
        rate.on_start(t)
        rate.on_success(t)
        t += 1.0 / 40.0
    assert rate.threshold is None  # still ramping, no limit found
    assert rate.rate < 40.0 / 0.7 * 6.0**0.25 + 1e-9, rate.rate
    held = rate.rate
    while t < 6.0:  # then it sends every turn
        rate.on_start(t)
        rate.on_success(t)
        t += 1.0 / rate.rate
    assert rate.rate > 2.0 * held


def test_a_ramp_s_first_429_unmeasured_goes_back_before_its_last_growth() -> None:
    """A ramp held at its cap (four times what got through) grows no more: the rate
    before its last growth is still the one before that growth. Its first 429, too few
    answers in the last half second to measure what got through, takes it back there
    (a hair under): it was read as a strict source's jitter at about the right rate (3 %
    down, as the ramp's answers all came back accepted) and the step held at its cap
    counted as a growth from itself. Against a source a second away (0.3-1.5 s an
    answer, 5/s), a ramp at 17/s came down 3 % at its first 429, then 10 % at each next,
    four pauses and twenty-odd refused in the first half minute."""
    rate = AdaptiveRate(5.0)
    for t in (0.0, 0.1, 0.2, 0.3, 0.45, 0.6):
        rate.on_success(t)
    before = rate.rate  # (14.7/s: sixfold a second)
    rate.on_success(0.95)
    assert rate.rate > before  # grown to its cap (four times what got through)
    rate.on_success(1.3)  # at its cap: no growth
    ramped = rate.rate
    rate.on_rate_limited(1.35, 1.35)
    assert ramped / 3.0 <= rate.rate <= 0.97 * before + 1e-9, (rate.rate, before)


def test_a_ramp_s_first_429_before_it_grew_is_a_step_down_as_any_rate_s() -> None:
    """Refused before it grew at all, a ramp's start rate is over the limit by a little
    or a lot, as any rate refused now and then is: a step down of a few percent, not back
    to 10 % under its start (started at three times a 200/s limit with a bucket of 20,
    one run in four then stayed at 120-150/s for three minutes)."""
    rate = AdaptiveRate(600.0)
    for i in range(8):
        rate.on_success(0.01 * i)
    assert rate.rate == 600.0  # (too soon to grow)
    rate.on_rate_limited(0.09, 0.09)
    assert rate.rate >= 0.95 * 600.0


def test_a_ramp_begun_again_after_an_early_outage_has_not_grown_until_it_grows_again() -> None:
    """Down within its first requests, the source back: the ramp begins again at its
    start rate. A 429 before it grows again is not one of a ramp that grew (see the test
    above): the start rate steps down as at the start, not as from the ramp's old
    growth."""
    rate = AdaptiveRate(5.0)
    t = 0.0
    for _ in range(6):  # the ramp grows
        rate.on_success(t, sent=t - 0.05)
        t += 0.2
    assert rate.rate > 15.0
    for _ in range(5):  # refused for three seconds and more: an outage
        rate.on_rate_limited(t, t + 1.0, sent=t - 0.05)
        t += 0.7
    for _ in range(5):  # back: the ramp begins again
        rate.on_success(t, sent=t - 0.05)
        t += 0.05
    assert rate.threshold is None and rate.rate == 5.0
    rate.on_rate_limited(t, t, sent=t - 0.05)
    assert rate.rate >= 0.9 * 5.0 - 1e-9


@pytest.mark.parametrize("seed", [1, 2, 4, 5])
def test_a_ramp_against_a_source_a_second_away_comes_down_at_its_first_429(seed: int) -> None:
    """A source 0.3-1.5 s away taking 5/s (a bucket of three): a ramp grows on answers
    of the rates before, far past the limit. Its first 429 takes it back before its last
    growth, not 3 % down (it stayed over twice the limit for seconds)."""
    clock = FakeClock()
    resource = Resource("api", adaptive=True, concurrency=8, clock=clock)
    serve(
        resource,
        clock,
        limit=5,
        bucket=3,
        seconds=10.0,
        workers=8,
        jitter=0.005,
        latency=(0.3, 1.5),
        seed=seed,
    )
    learned = resource.pace.learned
    assert learned is not None
    rates = [r for _, r, _ in learned._history]
    peak = rates.index(max(rates))
    first_down = rates[peak + 1]
    assert first_down <= 0.97 * rates[peak - 1] + 1e-9, rates[: peak + 2]


def test_a_long_healthy_run_keeps_only_the_last_seconds_of_answers() -> None:
    """Nothing refused for a long time: the answers a measure could still look at are
    kept, not every answer of the run (at 100/s, 360,000 an hour)."""
    import tracemalloc

    from backfill.ratelimit.adaptive import AdaptiveRate

    rate = AdaptiveRate(100.0, ramp=False)
    t = 0.0
    for _ in range(2_000):
        rate.on_success(t)
        t += 0.01
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(50_000):
            rate.on_success(t)
            t += 0.01
        grown = sum(
            stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(before, "filename")
        )
    finally:
        tracemalloc.stop()
    assert grown < 100_000


def test_turns_taken_on_time_but_written_late_reach_the_source_no_faster_than_its_bucket() -> None:
    """A declared burst, at any rate: the turns of 0.15 s are taken on time (five at
    once, five kept in hand), but the loop (or the CPU) was busy and every request
    reaches the wire at 0.16 s at once. A
    source's bucket of the declared size, full after the wait, took the burst and refused
    the rest (each 429 a whole second's pause); at the wire they go the burst at once,
    then at the rate, and the source refuses none."""
    from backfill.demo.server import TokenBucket
    from backfill.ratelimit.grants import take_grant, until_start

    clock = FakeClock()
    resource = Resource("api", rate="100/s", burst=10, clock=clock)
    bucket = TokenBucket(100.0, 10, clock=clock.monotonic)

    async def main() -> tuple[int, list[float]]:
        grants = []
        for _ in range(20):
            await resource.acquire()
            grants.append(take_grant())
        assert clock.monotonic() == pytest.approx(0.15)
        await clock.sleep(0.01)
        refused = 0
        written: list[float] = []

        async def write(grant: object) -> None:
            nonlocal refused
            await until_start(clock, grant)  # type: ignore[arg-type]
            written.append(clock.monotonic())
            refused += bucket.take() > 0

        await asyncio.gather(*(write(g) for g in grants))
        return refused, written

    refused, written = asyncio.run(main())
    assert refused == 0
    # The burst, less 50 ms of requests kept in hand, then the rate.
    assert sum(1 for t in written if t == pytest.approx(0.16)) == 5
    assert max(written) == pytest.approx(0.16 + 15 * 0.01)


def test_a_ramp_s_first_429_too_soon_to_time_drops_under_the_step_before_its_growth() -> None:
    """A slow source (5/s, a bucket of one): the ramp's three answers at 5/s let it grow
    to 10/s in one step, and its first 429 comes before enough answers to time what got
    through. The rate drops under the step before that growth (accepted), not to half of
    10/s (still over the limit: a second 429, a second pause, then a halving)."""
    from backfill.ratelimit.adaptive import AdaptiveRate

    rate = AdaptiveRate(5.0)
    for t in (0.0, 0.2, 0.4):
        rate.on_success(t)
    assert rate.rate > 9.0  # grown in one step
    rate.on_rate_limited(0.64, 1.64)
    assert rate.rate < 5.0
    assert rate.rate >= 0.95 * 5.0 * 0.97


def test_a_ramp_grown_many_fold_in_one_step_drops_at_most_to_a_third_at_its_first_429() -> None:
    """Sparse answers (two, two seconds apart) let a ramp from 0.5/s grow to 8/s in one
    step; its first 429 drops it to a third (2.7/s), not back to 0.5/s, from where a
    search of 10 % steps would take over a minute to find a limit of 3/s."""
    from backfill.ratelimit.adaptive import AdaptiveRate

    rate = AdaptiveRate(0.5)
    rate.on_success(0.0)
    rate.on_success(2.0)
    assert rate.rate == pytest.approx(8.0)
    rate.on_rate_limited(2.3, 3.3)
    assert rate.rate == pytest.approx(8.0 / 3.0)


def test_the_wire_spaces_a_burst_run_above_one_at_any_rate_and_one_at_a_time_when_slow() -> None:
    """Burst 10 at 100/s (run at 9): spaced where written. Burst 2 runs one at a time
    (one kept in hand): at 100/s, like burst 1, not spaced there (every late write would
    be time lost); at 5/s it is."""
    from backfill.ratelimit.grants import PauseGate, WireGap, take_grant

    async def grant_of(resource: Resource) -> object:
        await resource.acquire()
        return take_grant()

    assert isinstance(asyncio.run(grant_of(Resource("api", rate="100/s", burst=10))), WireGap)
    unspaced = asyncio.run(grant_of(Resource("api", rate="100/s", burst=2)))
    assert type(unspaced) is PauseGate  # only checked for a pause, see below
    assert isinstance(asyncio.run(grant_of(Resource("api", rate="5/s", burst=2))), WireGap)


async def _not_sent_then_taken_again(resource: Resource, granted: object) -> float:
    """A request granted its turn (``granted``) finds a pause where it is written: it is
    not sent (LateStart), takes a new turn, and goes then; the instant it goes."""
    from backfill.ratelimit.grants import LateStart, take_grant, until_start

    with pytest.raises(LateStart):
        await until_start(resource.clock, granted)  # type: ignore[arg-type]
    resource.unsent()
    await resource.acquire()
    await until_start(resource.clock, take_grant())
    return resource.clock.monotonic()


def test_a_request_waiting_where_it_is_written_does_not_go_into_a_pause_begun_meanwhile() -> None:
    """5/s, a bucket of one: the first request reached the wire late (0.15 s), so the
    next one, whose turn came at 0.2 s, waits there until about 0.36 s. At 0.25 s the
    first is answered 429 with Retry-After: 1: the second must not reach the source
    inside the pause the source just asked for. It is not sent, and its new turn comes
    when the pause ends (waited for where turns are taken, not against its deadline)."""
    from backfill.ratelimit.grants import take_grant, until_start
    from backfill.ratelimit.limits import Outcome

    clock = FakeClock()
    resource = Resource("api", rate="5/s", burst=1, clock=clock)

    async def main() -> float:
        await resource.acquire()
        first = take_grant()
        await clock.sleep(0.15)
        await until_start(clock, first)
        await resource.acquire()
        second = take_grant()
        assert clock.monotonic() == pytest.approx(0.2, abs=0.01)  # a hair under 5/s

        async def refused() -> None:
            await clock.sleep(0.05)
            resource.observe(Outcome.RATE_LIMITED, retry_after=1.0)

        task = asyncio.ensure_future(refused())
        goes = await _not_sent_then_taken_again(resource, second)
        await task
        return goes

    assert asyncio.run(main()) >= 1.25 - 1e-9


def test_a_fleet_start_found_inside_a_pause_where_it_is_written_is_not_used() -> None:
    """A fleet's start granted before a 429 was answered is not sent into the pause it
    asked for (nor counted as a miss): its request takes a new start."""
    from backfill.ratelimit.grants import Grant, LateStart
    from backfill.ratelimit.limits import Outcome

    clock = FakeClock()
    resource = Resource("api", rate=5, clock=clock)
    grant = Grant(resource, start=0.3, deadline=0.4)
    clock.t = 0.1
    resource.observe(Outcome.RATE_LIMITED, retry_after=1.0)
    clock.t = 0.3
    with pytest.raises(LateStart):
        grant.at_wire()
    assert resource.wire.misses == 0
    clock.t = 1.1
    assert Grant(resource, start=1.2, deadline=1.3).at_wire() == pytest.approx(0.1)


@pytest.mark.parametrize("rate", ["50/s", "100/s"])
def test_a_fast_request_granted_its_turn_before_a_429_is_not_written_into_the_pause(
    rate: str,
) -> None:
    """At fast rates one at a time nothing spaces requests where they are written, but a
    request whose turn came before a 429 (it waited for a connection meanwhile) is still
    checked there: it is not sent into the pause, and takes a new turn after it."""
    from backfill.ratelimit.grants import take_grant
    from backfill.ratelimit.limits import Outcome

    clock = FakeClock()
    resource = Resource("api", rate=rate, burst=1, clock=clock)

    async def main() -> float:
        await resource.acquire()
        granted = take_grant()
        resource.observe(Outcome.RATE_LIMITED, retry_after=3.0)
        return await _not_sent_then_taken_again(resource, granted)

    assert asyncio.run(main()) >= 3.0 - 1e-9


def test_a_quota_kept_in_the_state_leaves_the_rate_s_spacing_where_requests_are_written() -> None:
    """5/s with a quota kept in the state (the rate this process's own): each request
    goes on its quota's start, and is still spaced at the rate where it is written. The
    first, written late (at the second's turn), does not reach the source together with
    the second."""
    from backfill.ratelimit.grants import QuotaGrant, take_grant, until_start
    from backfill.ratelimit.sharing import Taken

    clock = FakeClock()
    resource = Resource("api", rate="5/s", limits=["100/day"], clock=clock)

    class Ring:
        async def take(self, count: int) -> Taken:
            return Taken([clock.t] * count, 0.0)

        def pause(self, seconds: float) -> None:
            """No fleet to pause."""

    resource.share_with(Ring(), rate=False)

    async def main() -> tuple[float, float]:
        await resource.acquire()
        first = take_grant()
        await resource.acquire()
        second = take_grant()
        assert isinstance(first, QuotaGrant) and isinstance(second, QuotaGrant)
        await until_start(clock, first)
        written = clock.t
        await until_start(clock, second)
        return written, clock.t

    first, second = asyncio.run(main())
    assert second - first >= 0.19


def _declared_100_eased_once(
    at: float, every: float, paced_from: float
) -> tuple[AdaptiveRate, float]:
    """A declared 100/s rate answered every ``every`` s until ``at``, then refused once
    (the slower rate spacing its first start at ``paced_from``); and the rate it fell to."""
    from backfill.ratelimit.adaptive import AdaptiveRate

    rate = AdaptiveRate(100.0, ramp=False)
    for n in range(round(at / every)):
        rate.on_success(n * every)
    rate.on_rate_limited(at, at, sent=at - 0.05)
    rate.paced_from = paced_from
    return rate, rate.rate


def test_the_echoes_of_a_429_do_not_count_as_refusals_at_the_rate_it_brought() -> None:
    """Three requests sent before a 429 slowed the rate are refused with it (its echoes),
    then five go through at the slower rate, then one is refused: one in six refused at
    that rate, a step down, not four in nine (a drop to under half the rate)."""
    rate, slower = _declared_100_eased_once(at=3.0, every=0.01, paced_from=3.012)
    for t in (3.005, 3.008, 3.011):
        assert not rate.on_rate_limited(t + 0.04, t + 0.04, sent=t)
    for n in range(5):
        rate.on_success(3.06 + n * 0.012)
    assert rate.on_rate_limited(3.2, 3.2, sent=3.15)
    assert rate.rate >= 0.85 * slower


def test_an_echo_answered_more_than_a_second_late_is_still_an_echo() -> None:
    """A source answering in 1.2 s: the requests sent just before a lone 429 are refused
    with it and answered over a second after it. They are its echoes however late they
    come: no pause, and the rate stays where that 429 took it (it was halved)."""
    from backfill.ratelimit.limits import Outcome

    resource, clock = _healthy_at_100_a_second(latency=1.2)
    lone = clock.t
    resource.observe(Outcome.RATE_LIMITED, retry_after=1.0, sent=lone - 1.2)
    slower = resource.rate
    for k in range(3):
        clock.t = lone + 1.2 + 0.01 * k
        resource.observe(Outcome.RATE_LIMITED, retry_after=1.0, sent=lone - 0.01 + 0.003 * k)
    assert resource.pauses == 0
    assert resource.rate == slower


@pytest.mark.parametrize("batch", [1, 5, 10])
def test_a_search_step_answered_in_batches_is_used_and_climbs(batch: int) -> None:
    """Answers that come together (a server flushing them at once, a coarse clock) carry
    one instant: a step answered in full, in batches, was used and the search climbs
    (answers of one batch counted on neither side of the step's end held it forever)."""
    from backfill.ratelimit.adaptive import AdaptiveRate

    rate = AdaptiveRate(20.0, ceiling=1000.0, ramp=False)
    rate.on_rate_limited(0.0, 1.0)
    start = rate.rate
    t = 1.0
    while t < 12.0:
        now = rate.rate
        for _ in range(batch):
            rate.on_success(t)
        t += batch / now
    assert rate.rate > 1.5 * start


@pytest.mark.parametrize("accepted", [4, 5, 6, 7])
def test_one_refusal_among_a_handful_of_answers_is_a_step_down_not_a_drop(accepted: int) -> None:
    """A client sending 20/s under a declared 100/s: after a lone 429, a few answers go
    through, then one is refused. However many went through (four to seven), that is a
    jitter step down; five, read as one in six refused, dropped the rate to a sixth."""
    rate, slower = _declared_100_eased_once(at=10.0, every=0.05, paced_from=10.0103)
    for n in range(1, accepted + 1):
        rate.on_success(10.0 + n * 0.05)
    now = 10.0 + accepted * 0.05 + 0.02
    rate.on_rate_limited(now, now, sent=now - 0.05)
    assert rate.rate >= 0.85 * slower


def test_a_burst_s_drop_during_a_pause_holds_its_search_until_traffic_restarts() -> None:
    """A 429 pauses the resource three seconds, and its burst's echoes drop the rate
    further: the answers of requests sent before the pause keep coming during it, and
    no search step is taken on them (nothing went at the new rate yet)."""
    rate = AdaptiveRate(100.0, ramp=False)
    for t in (0.0, 0.01, 0.02, 0.03):
        rate.on_success(t)
    rate.on_rate_limited(0.1, 3.1, sent=0.09)
    rate.paced_from = 0.1
    for k in range(4):
        rate.on_rate_limited(0.15 + 0.01 * k, 3.1, sent=0.05 + 0.01 * k)
    dropped = rate.rate
    t = 0.2
    while t < 3.1:
        rate.on_success(t)
        t += 0.04
    assert rate.rate == dropped


def test_a_late_429_of_a_request_sent_before_an_earlier_drop_changes_nothing() -> None:
    """Two drops three seconds apart, then four 429s answered 3.2 s late, of requests
    sent before the first: they are that drop's echoes and say nothing of the second (as
    its burst, they cut the rate to a fifth)."""
    rate, _ = _declared_100_eased_once(at=2.0, every=0.01, paced_from=2.01)
    t = 2.01
    while t < 5.0:
        rate.on_success(t)
        t += 1.0 / rate.rate
    rate.on_rate_limited(5.0, 5.0, sent=4.99)
    rate.paced_from = 5.01
    second = rate.rate
    for k in range(4):
        assert not rate.on_rate_limited(5.2 + 0.01 * k, 5.2, sent=1.96 + 0.01 * k)
    assert rate.rate == second


def test_a_429_at_the_instant_of_the_drop_before_it_is_no_division_by_zero() -> None:
    """A coarse clock: the drop, four answers and another 429 all carry one instant."""
    rate = AdaptiveRate(10.0, ramp=False)
    for k in range(12):
        rate.on_success(0.1 * k)
    rate.on_rate_limited(2.0, 3.0, sent=1.95)
    rate.paced_from = 2.0
    for _ in range(4):
        rate.on_success(2.0)
    assert rate.on_rate_limited(2.0, 3.0, sent=2.0)
    assert 0 < rate.rate < 10.0


def test_a_429_of_a_request_sent_at_a_slower_rate_brings_the_rate_under_that_one() -> None:
    """A ramp from 5/s grows on answers for four seconds while a 429 is on its way from
    a source seconds away: its request went at 5/s, so the rate comes down under 5/s, not
    3 % under the rate the ramp reached (the 429s of every request sent since followed)."""
    rate = _ramped_from_5(4.0, every=0.05)
    assert rate.rate > 20.0
    rate.on_rate_limited(4.0, 4.0, sent=0.2)
    assert rate.rate <= 0.97 * 5.0 + 1e-9


def _stepped_down_from_20_a_second_far_away() -> tuple[AdaptiveRate, float]:
    """Declared 20/s and accepted for ten seconds from a source 2.5 s away, then refused
    once at ten seconds (a jitter step down, its first start spaced at 10.05 s); and the
    rate it stepped down to."""
    rate = AdaptiveRate(20.0, ramp=False)
    t = 2.5
    while t < 10.0:
        rate.on_success(t, sent=t - 2.5)
        t += 0.05
    rate.on_rate_limited(10.0, 10.0, sent=7.5)
    rate.paced_from = 10.05
    return rate, rate.rate


def test_the_echoes_of_a_step_down_to_a_rate_long_accepted_leave_it() -> None:
    """Declared 20/s and accepted for ten seconds from a source 2.5 s away, then refused
    once: a jitter step down. The requests sent before it answer over the next seconds,
    every other one refused (a bucket of one refuses every other request sent a hair too
    fast): they are its echoes, and the rate long accepted is not cut to half."""
    rate, stepped = _stepped_down_from_20_a_second_far_away()
    assert stepped >= 0.9 * 20.0
    for k in range(40):
        t, sent = 10.05 + 0.05 * k, 7.55 + 0.05 * k
        if k % 2:
            rate.on_rate_limited(t, t, sent=sent)
        else:
            rate.on_success(t, sent=sent)
    assert rate.rate == stepped


def test_a_burst_s_estimate_takes_every_echo_and_may_rise_back() -> None:
    """Declared 60/s where two of three requests are refused: the first 429 halves the
    rate, and its echoes say how far over 60/s was. The first four are all refused (read
    alone: a drop to a fifth); with every echo since, two in three refused: about 20/s,
    where the rate ends (the unluckiest first few no longer set it)."""
    rate = AdaptiveRate(60.0, ramp=False)
    rate.on_rate_limited(2.0, 2.0, sent=0.02)
    rate.paced_from = 2.02
    t = 2.0
    for k in range(4):
        t += 0.01
        rate.on_rate_limited(t, t, sent=0.03 + 0.01 * k)
    early = rate.rate
    for k in range(30):
        t += 0.01
        if k % 3 == 2:
            rate.on_success(t, sent=0.1 + 0.01 * k)
        else:
            rate.on_rate_limited(t, t, sent=0.1 + 0.01 * k)
    assert early < 14.0
    assert 17.0 <= rate.rate <= 23.0


def test_a_search_step_waits_for_its_own_answers_from_a_source_seconds_away() -> None:
    """A search after a 429, every request answered 2.5 s after it went: a step is taken
    only once most of the last one's own answers are in (the first answers of a step are
    the step before's), and the search still climbs."""
    rate = AdaptiveRate(20.0, ceiling=1000.0, ramp=False)
    rate.on_rate_limited(0.0, 0.0)
    start = rate.rate
    sent: list[float] = []
    changes: list[float] = []
    t, answered = 0.0, 0
    while t < 20.0:
        rate.on_start(t)
        sent.append(t)
        while sent[answered] + 2.5 <= t:
            if rate.on_success(sent[answered] + 2.5, sent=sent[answered]):
                changes.append(sent[answered] + 2.5)
            answered += 1
        t += 1.0 / rate.rate
    assert changes and changes[0] >= 2.5 + 0.7
    assert all(b - a >= 2.5 for a, b in itertools.pairwise(changes))
    assert rate.rate > 1.3 * start


def test_the_first_start_a_drop_spaced_holds_while_its_burst_adjusts_it() -> None:
    """A declared rate refused, then its echoes lower it further: a request sent after the
    drop, at the rate it brought, is no echo of it however the burst moved the rate since
    (each move took the first start along: requests at the drop's own rate looked like
    echoes, and their 429s lowered it more)."""
    _, pace = _told()
    pace.on_refused(0.5, 0.5, sent=0.45)
    learned = pace.learned
    assert learned is not None
    first, dropped = learned.paced_from, learned.rate
    for k in range(6):
        pace.on_refused(0.6 + 0.01 * k, 0.6 + 0.01 * k, sent=0.46 + 0.005 * k)
    assert learned.rate < dropped
    assert learned.paced_from == first
    decreases = learned.decreases
    pace.on_refused(0.8, 0.8, sent=first + 0.01)
    assert learned.decreases == decreases + 1


def _adaptive_after_a_lone_429() -> tuple[Resource, FakeClock, float]:
    """An adaptive resource ramped up for a second on virtual time (each request answered
    at once), then refused once: a lone 429; and the rate it fell to."""
    from backfill.ratelimit.limits import Outcome

    clock = FakeClock()
    resource = Resource("api", adaptive=True, start_rate=50, clock=clock)
    asyncio.run(_turns(resource, clock, 1.0))
    resource.observe(Outcome.RATE_LIMITED, retry_after=1.0, sent=clock.t - 0.001)
    assert resource.pauses == 0
    return resource, clock, resource.rate


async def _turns(resource: Resource, clock: FakeClock, seconds: float) -> None:
    from backfill.ratelimit.limits import Outcome

    end = clock.t + seconds
    while clock.t < end:
        await resource.acquire()
        resource.observe(Outcome.OK, latency=0.01, sent=clock.t)


def test_a_429_of_a_request_sent_faster_than_a_lone_one_left_the_rate_is_a_new_lone_one() -> None:
    """After a lone 429 the search takes the rate up a step within seconds: a 429 of a
    request sent at that higher rate is a new lone 429 of it (it pauses nothing), not the
    source insisting at the rate the lone one left."""
    from backfill.ratelimit.limits import Outcome

    resource, clock, eased = _adaptive_after_a_lone_429()
    asyncio.run(_turns(resource, clock, 1.5))
    assert resource.rate > eased
    resource.observe(Outcome.RATE_LIMITED, retry_after=1.0, sent=clock.t - 0.001)
    assert resource.pauses == 0


def test_a_rate_a_source_s_header_raised_after_a_lone_429_insists_when_refused() -> None:
    """After a lone 429 the source's headers say its limit is far higher: a 429 of a
    request sent at the rate they set, seconds later, is the source insisting (a header
    may overstate the limit, and set the rate back up after every 429): it pauses."""
    from backfill.ratelimit.limits import Outcome

    resource, clock, eased = _adaptive_after_a_lone_429()
    clock.t += 0.5
    resource.observe(Outcome.OK, latency=0.01, sent=clock.t, limit=500, window=1.0)
    assert resource.rate > eased
    clock.t += 0.5
    resource.observe(Outcome.RATE_LIMITED, retry_after=1.0, sent=clock.t - 0.001)
    assert resource.pauses == 1


def test_a_search_past_a_ramp_s_estimate_steps_back_below_the_step_before() -> None:
    """A ramp's burst of 429s leaves a search going past what got through in 5 % steps
    held a second each. The step that draws a 429 was over the source's limit, and a
    bucket of ten hides a few percent over it for longer than a second: the rate goes
    back 8 % under the step before, not to it."""
    rate = AdaptiveRate(5.0, ceiling=1000.0)
    t = 0.0
    while rate.rate < 150.0:
        rate.on_start(t)
        rate.on_success(t, sent=t - 0.05)
        t += 1.0 / rate.rate
    rate.on_rate_limited(t, t, sent=t - 0.02)
    rate.paced_from = t + 0.01
    for k in range(3):
        rate.on_rate_limited(t + 0.01 * k, t + 0.01 * k, sent=t - 0.015 + 0.005 * k)
    steps: list[float] = [rate.rate]
    end = t + 8.0
    while t < end and len(steps) < 4:
        t += 1.0 / rate.rate
        rate.on_start(t)
        rate.on_success(t, sent=t - 0.05)
        if rate.rate != steps[-1]:
            steps.append(rate.rate)
    assert len(steps) == 4 and steps[-1] > steps[-2] > steps[-3]
    rate.on_rate_limited(t + 0.05, t + 0.05, sent=t)
    assert rate.rate <= 0.92 * steps[-2] + 1e-9


def _refused_until_under_one(rate: AdaptiveRate, t: float) -> float:
    """Refuse a request a second (each asking a second) until the rate is under one
    request a second; the instant a second after the last 429."""
    for _ in range(100):
        if rate.rate <= 1.0:
            return t
        rate.on_rate_limited(t, t + 1.0, sent=t - 0.05)
        t += 1.0
    raise AssertionError(f"still at {rate.rate:.2f}/s after 100 refusals")


def _taken_at_20_a_second(ceiling: float = 10_000.0) -> tuple[AdaptiveRate, float]:
    """A declared 20/s rate answered for twelve seconds, each answer 50 ms after its
    request went; and the instant it ends."""
    rate = AdaptiveRate(20.0, ceiling=ceiling, ramp=False)
    t = 0.0
    while t < 12.0:
        rate.on_success(t, sent=t - 0.05)
        t += 0.05
    return rate, t


def test_an_outage_s_echoes_never_take_the_rate_to_its_floor() -> None:
    """Declared 20/s, the source refuses everything for a while: the first 429 halves the
    rate, and the 43 requests on their way are all refused. Read as all refused, they took
    the rate to 0.43/s, from where a search back to a live source's limit took hours; it
    stays at a twenty-first of the rate before at the least."""
    rate = AdaptiveRate(20.0, ramp=False)
    rate.on_rate_limited(1.0, 2.0, sent=0.9)
    rate.paced_from = 2.0
    for k in range(43):
        rate.on_rate_limited(1.01 + 0.01 * k, 2.0, sent=0.5 + 0.01 * k)
    assert rate.rate >= 20.0 / 21.0 - 1e-9


def test_an_earlier_decrease_s_accepted_echoes_do_not_count_in_the_last_one_s() -> None:
    """Two decreases; then the earlier one's echoes answer, a third of them accepted, and
    the last one's, all refused. The accepted answers of requests sent before the earlier
    decrease are its echoes, as its 429s are: they do not dilute the share the last one's
    burst reads (they held the rate at 15/s where its own echoes say about 4/s)."""

    def rate_after(earlier_accepted: bool) -> float:
        rate = AdaptiveRate(60.0, ramp=False)
        rate.on_rate_limited(2.0, 2.0, sent=0.02)
        rate.paced_from = 2.02
        rate.on_rate_limited(2.1, 2.1, sent=2.05)
        rate.paced_from = 2.15
        t = 2.1
        for k in range(30):
            t += 0.01
            if k % 3 != 2:
                rate.on_rate_limited(t, t, sent=0.1 + 0.06 * k)
            elif earlier_accepted:
                rate.on_success(t, sent=0.1 + 0.06 * k)
        for k in range(6):
            t += 0.01
            rate.on_rate_limited(t, t, sent=2.06 + 0.015 * k)
        return rate.rate

    assert rate_after(True) == pytest.approx(rate_after(False))


def test_a_way_back_up_that_draws_a_429_searches_on_under_it_and_only_once() -> None:
    """Taken at 20/s for twelve seconds, then refused until the rate is under one request
    a second, then answered again: the rate goes back to half of what the source took
    before, and searches on up. A step up is refused (the source's limit fell, or it is
    not quite back): the search goes on from the step before in ordinary steps, under the
    rate refused, and no second way up follows (each drew a burst of 429s)."""
    rate, t = _taken_at_20_a_second()
    t = _refused_until_under_one(rate, t)
    t += 1.0 / rate.rate
    rate.on_success(t, sent=t - 0.05)
    assert rate.rate == pytest.approx(10.0)
    for _ in range(3):
        t += 1.0 / rate.rate
        rate.on_start(t)
        rate.on_success(t, sent=t - 0.05)
    up = rate.rate
    assert up > 10.0
    rate.on_rate_limited(t + 0.1, t + 0.1, sent=t)
    assert rate.rate < up
    highest, end = 0.0, t + 20.0
    while t < end:
        t += 1.0 / rate.rate
        rate.on_start(t)
        rate.on_success(t, sent=t - 0.05)
        highest = max(highest, rate.rate)
    assert 0.9 * up < highest < up


def test_a_rate_a_header_set_after_a_search_s_rise_is_still_the_header_s() -> None:
    """After a lone 429 the search takes the rate up a step, then the source's header
    sets it higher still: a 429 of a request sent at the header's rate is the source
    insisting (it pauses), the search's rise before it notwithstanding."""
    from backfill.ratelimit.limits import Outcome

    resource, clock, eased = _adaptive_after_a_lone_429()
    asyncio.run(_turns(resource, clock, 1.5))
    assert resource.rate > eased
    clock.t += 0.1
    resource.observe(Outcome.OK, latency=0.01, sent=clock.t, limit=500, window=1.0)
    clock.t += 0.5
    resource.observe(Outcome.RATE_LIMITED, retry_after=1.0, sent=clock.t - 0.001)
    assert resource.pauses == 1


def test_a_backlog_answered_at_once_proves_no_faster_rate_than_it_went_at() -> None:
    """Run at 20/s: a stall holds 400 answers, which then come within two seconds. What
    got through in those ten seconds is at most the 20/s the requests went at (the rate
    run, a hair over by the creep's 1 % steps since), not 40/s: the way back up after a
    later outage aims at that (past it, it would cross the limit; the creep afterwards
    adds its 1 % steps, as always)."""
    rate, t = _taken_at_20_a_second(ceiling=1000.0)
    for k in range(400):
        rate.on_success(32.0 + 0.005 * k, sent=12.0 + 0.05 * k)
    t = 34.0
    while t < 46.0:
        rate.on_success(t, sent=t - 0.05)
        t += 0.05
    run = rate.rate
    assert run < 1.05 * 20.0
    t = _refused_until_under_one(rate, t)
    highest, end = 0.0, t + 40.0
    while t < end:
        t += 1.0 / rate.rate
        rate.on_success(t, sent=t - 0.05)
        highest = max(highest, rate.rate)
    assert 15.0 < highest <= 1.03 * run


def test_a_header_on_the_way_back_up_ends_it() -> None:
    """On the way back up after an outage, the source's header says its limit: the rate
    is the header's, and the way back up is over (it was left going, and blocked the next
    one)."""
    rate, t = _taken_at_20_a_second()
    t = _refused_until_under_one(rate, t)
    for _ in range(3):
        t += 1.0 / rate.rate
        rate.on_success(t, sent=t - 0.05)
    assert rate._recovering
    rate.on_header_limit(8.0, t)
    assert not rate._recovering and rate.rate == pytest.approx(8.0 * 0.98)


def _collapsed_after_an_outage() -> tuple[AdaptiveRate, float]:
    """Taken at 20/s for twelve seconds (answers 50 ms after their requests), then
    refused until the rate is under one request a second (the last 429 a second before
    the instant returned)."""
    rate, t = _taken_at_20_a_second()
    t = _refused_until_under_one(rate, t)
    return rate, t


def test_the_way_back_up_waits_for_two_answers_one_of_a_request_sent_since() -> None:
    """After an outage, two accepted answers of requests sent before the last 429 (on
    their way through it) and then one of a request sent since: the way back up starts
    with that one, not before (one answer, or answers only of requests sent into the
    outage, say too little)."""
    rate, t = _collapsed_after_an_outage()
    low = rate.rate
    rate.on_success(t + 0.1, sent=t - 1.5)
    assert rate.rate == low
    rate.on_success(t + 0.2, sent=t - 1.4)
    assert rate.rate == low
    rate.on_success(t + 2.0, sent=t + 1.5)
    assert rate.rate > low


def test_four_refused_echoes_of_a_step_down_to_a_rate_long_accepted_leave_it() -> None:
    """A jitter step down after ten seconds accepted at 20/s, then four of the requests on
    their way refused in a row: too few to say the limit fell (a bucket of one refuses
    runs of requests sent a hair too fast); eight, most refused, would."""
    rate, stepped = _stepped_down_from_20_a_second_far_away()
    for k in range(4):
        rate.on_rate_limited(10.05 + 0.05 * k, 10.05 + 0.05 * k, sent=7.55 + 0.05 * k)
    assert rate.rate == stepped
    for k in range(4, 9):
        rate.on_rate_limited(10.05 + 0.05 * k, 10.05 + 0.05 * k, sent=7.55 + 0.05 * k)
    assert rate.rate < stepped


def test_one_answer_after_an_outage_is_the_way_back_up_when_the_source_took_plenty() -> None:
    """After an outage of a source that took twenty requests or more since the last one,
    its requests seconds apart (see the outage's floor), one request sent since the last
    429 and accepted starts the way back up."""
    rate, t = _collapsed_after_an_outage()
    low = rate.rate
    rate.on_success(t + 0.5, sent=t + 0.1)
    assert rate.rate == pytest.approx(10.0) and rate.rate > low


def _refused_a_second_apart(rate: AdaptiveRate, t: float, seconds: int) -> tuple[float, float]:
    """Refuse a request a second (each asking a second) for ``seconds``, checking that no
    refusal raised the rate; the instant a second after the last 429, and the lowest rate
    against the floor: rate * quarter of the outage so far (at least 1 when floored)."""
    lowest = math.inf
    start = t
    for _ in range(seconds):
        before = rate.rate
        rate.on_rate_limited(t, t + 1.0, sent=t - 0.05)
        assert rate.rate <= before + 1e-9
        if t - start >= 4.0:
            lowest = min(lowest, rate.rate * 0.25 * (t - start + 0.05))
        t += 1.0
    return t, lowest


def test_through_an_outage_the_rate_falls_no_further_than_a_request_a_quarter_of_it() -> None:
    """Taken at 20/s, then refused for a minute: halved at every refusal, the rate fell to
    its floor within seconds (a request every twenty seconds), and after the source came
    back its first request waited that long. It keeps a request every quarter of the
    outage's length so far (from the last accepted answer), never raised by a 429, and at
    most fifteen seconds apart: polite, and back within a quarter of the outage (fifteen
    seconds at most)."""
    rate, t = _taken_at_20_a_second()
    t, lowest = _refused_a_second_apart(rate, t, 60)
    assert lowest >= 1.0 - 1e-6, lowest
    assert rate.rate <= 1.0 / (0.25 * 59.0) + 1e-9
    t, _ = _refused_a_second_apart(rate, t, 200)
    assert rate.rate == pytest.approx(1.0 / 15.0)


def test_an_outage_after_too_little_was_accepted_is_not_floored() -> None:
    """Refused all along from the start (a revoked key), or after fewer than twenty
    accepted requests since the last outage (a limit that fell near zero, taking a
    request now and then): the rate keeps falling to its floor, as before."""
    fresh = AdaptiveRate(20.0, ramp=False)
    _refused_a_second_apart(fresh, 0.0, 30)
    assert fresh.rate == fresh.floor
    rate, t = _taken_at_20_a_second()
    t, _ = _refused_a_second_apart(rate, t, 20)
    rate.on_success(t, sent=t - 0.05)
    assert rate._recovering
    t, _ = _refused_a_second_apart(rate, t + 0.5, 30)
    assert rate.rate == rate.floor


def test_a_limit_that_falls_is_no_outage_to_come_back_from() -> None:
    """Taken at 20/s for twelve seconds, then the source takes one request in three
    (its limit fell): the rate comes down under half of 20/s, the source taking some all
    along. No way back up follows (it would double the rate into the lower limit); only
    refusals in a row over seconds, none accepted, are an outage."""
    rate, t = _taken_at_20_a_second()
    k = 0
    while rate.rate > 6.0:
        t += 1.0 / rate.rate
        if k % 3 == 2:
            rate.on_success(t, sent=t - 0.05)
        else:
            rate.on_rate_limited(t, t, sent=t - 0.05)
        k += 1
        assert k < 1000
    fell, end = rate.rate, t + 3.0
    while t < end:
        t += 1.0 / rate.rate
        rate.on_start(t)
        rate.on_success(t, sent=t - 0.05)
    assert rate.rate < 1.5 * fell


@pytest.mark.parametrize("latency", [0.05, 0.6, 2.5])
def test_a_429_thirty_requests_after_a_lone_one_insists_however_late_its_answer(
    latency: float,
) -> None:
    """Declared 100/s: a lone 429, then a 429 of a request sent thirty requests later. The
    source insists (it pauses), whether its answer comes at once or seconds later while
    hundreds more start: what counts is how many went between the two, not how many
    started by the time the answer came."""
    from backfill.ratelimit.limits import Outcome

    clock = FakeClock()
    resource = Resource("api", rate=100, burst=10, clock=clock)

    async def main() -> None:
        await _turns(resource, clock, 3.0)
        resource.observe(Outcome.RATE_LIMITED, retry_after=1.0, sent=clock.t - 0.001)
        assert resource.pauses == 0  # a lone one
        for _ in range(30):
            await resource.acquire()
        sent = clock.t
        end = sent + latency
        while clock.t < end:
            await resource.acquire()
        resource.observe(Outcome.RATE_LIMITED, retry_after=1.0, sent=sent)

    asyncio.run(main())
    assert resource.pauses == 1


def test_a_header_s_figure_refused_soon_after_it_is_taken_only_caps_the_rate_a_while() -> None:
    """The source's header states 150/s, and twice in a row a request sent at the rate
    it set is refused within a second, little getting through: the same figure then
    leaves the learned rate under it for five seconds (it was taken back after every
    429); a figure more than 10 % lower is taken at once, and after the five seconds
    the figure is taken again."""
    rate = AdaptiveRate(5.0, ceiling=1000.0)
    assert rate.on_header_limit(150.0, 0.0)
    assert rate.rate == pytest.approx(147.0)
    rate.on_rate_limited(0.5, 0.5, sent=0.45)
    assert rate.rate < 147.0
    assert rate.on_header_limit(150.0, 0.6)
    rate.on_rate_limited(0.9, 0.9, sent=0.85)
    low = rate.rate
    assert low < 147.0
    assert not rate.on_header_limit(150.0, 1.0)
    assert not rate.on_header_limit(140.0, 1.5)
    assert rate.rate == low
    assert rate.on_header_limit(120.0, 2.0)
    assert rate.rate == pytest.approx(117.6)
    assert rate.on_header_limit(150.0, 6.0)
    assert rate.rate == pytest.approx(147.0)


def test_the_rate_a_window_s_cycle_takes_it_back_to_is_the_one_its_requests_went_at() -> None:
    """At a return after a window's refusals, ``back_to`` raises the rate to what the cycle
    took: requests sent after it went at that rate, and the rate's record says so (a 429
    of one of them is judged against the rate it went at, and the next run of refusals
    begins at it)."""
    rate = AdaptiveRate(10.0, ceiling=10.0, ramp=False)
    rate.on_success(0.0, sent=0.0)
    for k in range(2):
        rate.on_rate_limited(1.0 + 0.5 * k, 1.0 + 0.5 * k, sent=0.9 + 0.5 * k)
    assert rate.rate < 5.0
    assert rate.back_to(8.0, 4.0)
    assert rate.rate == pytest.approx(0.97 * 8.0)
    assert rate.rate_at(4.01) == pytest.approx(0.97 * 8.0)
