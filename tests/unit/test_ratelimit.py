"""Resources on a simulated clock: windows, several limits, pauses, adaptation, breaker."""

from __future__ import annotations

import asyncio
import contextlib
import itertools

import pytest

from backfill.errors import ConfigError
from backfill.ratelimit import CircuitBreaker, Limit, Outcome, Resource, parse_limit
from virtual_time import FakeClock, StallingClock


def starts(resource: Resource, clock: FakeClock, until: float, workers: int = 3) -> list[float]:
    """Start instants of requests from several workers sharing the resource."""
    times: list[float] = []

    async def worker() -> None:
        while clock.t < until:
            await resource.acquire()
            times.append(clock.t)

    async def main() -> None:
        await asyncio.gather(*(worker() for _ in range(workers)))

    asyncio.run(main())
    return times


def worst_window(times: list[float], width: float) -> int:
    return max(sum(1 for t in times if s <= t < s + width) for s in times)


@pytest.mark.parametrize(
    ("text", "limit"),
    [
        ("5/s", Limit(5, 1)),
        ("100/min", Limit(100, 60)),
        ("10000/day", Limit(10000, 86400)),
        ("30 per 5 min", Limit(30, 300)),
        ("2/hour", Limit(2, 3600)),
        ("3/mins", Limit(3, 60)),
        ("2/days", Limit(2, 86400)),
        (2.5, Limit(2.5, 1)),
    ],
)
def test_limits_parse(text: str | float, limit: Limit) -> None:
    """Rates read as N/s, N/min, N/hour, N/day, 'N per M unit', or a number per second."""
    assert parse_limit(text) == limit


@pytest.mark.parametrize("text", ["fast", "5/fortnight", "0/s", "-1", "/s", "500/ms", "1/ss"])
def test_bad_limits_are_one_sentence_errors(text: str | float) -> None:
    """A rate that cannot be read says how to write one (500/ms is no 500/min)."""
    with pytest.raises(ConfigError, match=r"not understood|positive"):
        parse_limit(float(text) if text == "-1" else text)


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"limits": "500/day"}, "limits must be a list, e.g. limits=['10000/day'], not '500/day'"),
        ({"limits": ["1.5/day"]}, "quota '1.5/day' must count whole requests"),
        ({"limits": ["2.5/min"]}, "quota '2.5/min' must count whole requests"),
        ({"limits": ["5000000/day"]}, "quota '5000000/day' counts more requests than a window"),
        ({"limits": [None]}, "rate None is not understood"),
        ({"rate": True}, "rate True is not understood"),
    ],
)
def test_limits_of_the_wrong_type_are_one_sentence_errors(
    options: dict[str, object], says: str
) -> None:
    """A quota given as a string (not a list of them), or a limit that is no rate at all,
    says what to write, not a character's rate or an AttributeError; so does a quota of
    a fractional count or of more requests than a window is kept for (each was run as a
    rate in memory: not kept across restarts, not shared, with the rate's burst)."""
    with pytest.raises(ConfigError) as excinfo:
        Resource("api", **options)  # type: ignore[arg-type]
    assert says in str(excinfo.value)


def test_no_window_exceeds_rate_plus_burst_even_at_start() -> None:
    """Three workers at full speed: any 1 s window holds at most rate + burst starts, and
    the very first second no more (unlike a leaky bucket that starts full at 2x)."""
    clock = FakeClock()
    resource = Resource("api", rate="10/s", burst=3, clock=clock)
    times = starts(resource, clock, until=20.0)
    assert worst_window(times, 1.0) <= 13
    assert sum(1 for t in times if t < 1.0) <= 13
    assert len(times) == pytest.approx(10 * 20 + 3, abs=2)


def test_a_turn_taken_late_by_a_busy_loop_goes_then_and_the_next_is_spaced_from_it() -> None:
    """A busy loop wakes the waiting request late: it starts then (its turn is not lost,
    nor booked again), and the next one is spaced a full interval after it, never sent
    on top of it: no two starts closer than an interval at burst 1, no 1 s window over
    rate + burst, and the stall costs its own length only."""
    clock = StallingClock(at=5.0, seconds=0.3)
    resource = Resource("api", rate="10/s", burst=1, clock=clock)
    times = starts(resource, clock, until=12.0)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.1 - 1e-9
    assert worst_window(times, 1.0) <= 11
    assert any(5.3 <= t < 5.31 for t in times)  # the late one, at the end of the stall
    assert resource.late_starts == 0
    assert len(times) >= 10 * (12 - 0.3)


def test_several_limits_hold_at_once() -> None:
    """5/s and 20/min together: the minute limit caps the total."""
    clock = FakeClock()
    resource = Resource("api", rate="5/s", limits=["20/min"], clock=clock)
    times = starts(resource, clock, until=120.0, workers=2)
    assert worst_window(times, 1.0) <= 6
    assert worst_window(times, 60.0) <= 21
    assert len(times) <= 42


def test_retry_after_pauses_the_resource_once_for_a_storm() -> None:
    """Eight 429s from in-flight requests pause the resource once, not eight times."""
    clock = FakeClock()
    resource = Resource("api", rate="100/s", burst=10, clock=clock)
    for _ in range(8):
        resource.observe(Outcome.RATE_LIMITED, retry_after=2.0)
    assert resource.pauses == 1
    assert resource.rate_limited == 8
    assert resource.paused_until == pytest.approx(2.0)
    times = starts(resource, clock, until=2.5, workers=1)
    assert min(times) >= 2.0


def test_a_longer_retry_after_extends_the_pause() -> None:
    """A later, longer Retry-After extends the pause to the latest instant asked for."""
    clock = FakeClock()
    resource = Resource("api", rate="10/s", clock=clock)
    resource.observe(Outcome.RATE_LIMITED, retry_after=1.0)
    resource.observe(Outcome.RATE_LIMITED, retry_after=5.0)
    assert resource.paused_until == pytest.approx(5.0)
    assert resource.pauses == 1


def test_quota_headers_pause_until_reset() -> None:
    """RateLimit-Remaining 0 with a reset time pauses the resource until then."""
    clock = FakeClock()
    resource = Resource("api", rate="10/s", clock=clock)
    resource.observe(Outcome.OK, remaining=0, reset_after=30.0)
    assert resource.paused_until == pytest.approx(30.0)


def simulate_hidden_limit(
    limit: float, start: float, seconds: float = 120.0
) -> tuple[float, float]:
    """Adaptive client against a server token bucket (burst 5) at ``limit``/s.

    Returns (accepted per second over the second half, share of requests answered 429).
    """
    clock = FakeClock()
    resource = Resource("api", adaptive=True, start_rate=start, clock=clock)
    tokens, last = 5.0, 0.0
    log: list[tuple[float, bool]] = []

    async def main() -> None:
        nonlocal tokens, last
        while clock.t < seconds:
            await resource.acquire()
            now = clock.t
            tokens = min(5.0, tokens + (now - last) * limit)
            last = now
            if tokens >= 1:
                tokens -= 1
                log.append((now, True))
                resource.observe(Outcome.OK, latency=0.05)
            else:
                log.append((now, False))
                resource.observe(Outcome.RATE_LIMITED, retry_after=1.0)

    asyncio.run(main())
    accepted = sum(1 for t, ok in log if ok and t >= seconds / 2) / (seconds / 2)
    return accepted, sum(1 for _, ok in log if not ok) / len(log)


@pytest.mark.parametrize(("limit", "start"), [(20, 1), (20, 500), (50, 5), (100, 1)])
def test_adaptive_mode_finds_a_hidden_limit(limit: float, start: float) -> None:
    """From far below or far above, adaptive mode settles within 10 % of the real limit
    with fewer than 2 % of requests answered 429."""
    accepted, refused = simulate_hidden_limit(limit, start)
    assert 0.9 * limit <= accepted <= 1.05 * limit
    assert refused < 0.02


def test_server_announced_limit_is_adopted() -> None:
    """A RateLimit-Policy of 120 per 60 s sets an adaptive resource just under 2/s."""
    clock = FakeClock()
    resource = Resource("api", adaptive=True, start_rate=10, clock=clock)
    resource.observe(Outcome.OK, limit=120, window=60.0)
    assert resource.rate == pytest.approx(1.96)


def test_breaker_opens_on_errors_and_closes_after_a_good_probe() -> None:
    """Half the recent requests failing opens the circuit; a successful probe closes it."""
    clock = FakeClock()
    events: list[str] = []
    resource = Resource(
        "api", rate="100/s", clock=clock, breaker=CircuitBreaker(cooldown=5.0, min_requests=10)
    )
    resource.subscribe(lambda name, what, seconds, kind: events.append(what))
    for i in range(10):
        resource.observe(Outcome.ERROR if i % 2 else Outcome.OK)
    assert resource.breaker.is_open
    assert events == ["circuit open: too many errors; probing every 5 s"]

    async def probe() -> float:
        await resource.acquire()
        return clock.t

    assert asyncio.run(probe()) >= 5.0  # no request while open
    assert resource.breaker.probing
    resource.observe(Outcome.OK)
    assert not resource.breaker.is_open
    assert events[-1] == "circuit closed"


def test_a_probe_that_never_answers_lets_the_next_request_probe() -> None:
    """The probe's request cancelled before it answered (its stage timed out): the
    next request probes instead of every request waiting for an answer that never comes."""
    clock = FakeClock()
    resource = Resource(
        "api", rate="100/s", clock=clock, breaker=CircuitBreaker(cooldown=5.0, min_requests=10)
    )
    for _ in range(10):
        resource.observe(Outcome.ERROR)
    assert resource.breaker.is_open

    async def main() -> tuple[float, bool]:
        async def hang() -> None:
            async with resource.slot():
                await asyncio.Event().wait()  # the probe, never answered

        task = asyncio.create_task(hang())
        for _ in range(1000):  # virtual time: until the probe is out
            if resource.breaker.probing:
                break
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        async with asyncio.timeout(1.0):  # virtual time: waits forever if stuck
            async with resource.slot():
                return clock.t, resource.breaker.probing

    at, probing = asyncio.run(main())
    assert at >= 5.0
    assert probing  # the second request is the probe now
    assert not resource.breaker.probing  # and it too ended without an answer


def test_a_failed_probe_keeps_the_circuit_open_longer() -> None:
    """A probe that fails reopens the circuit with a doubled cooldown."""
    breaker = CircuitBreaker(cooldown=2.0, min_requests=2, window=2)
    breaker.record(False, 0.0)
    assert breaker.record(False, 0.0) == "opened"
    breaker.probing = True
    breaker.record(False, 3.0)
    assert breaker.cooldown == 4.0
    assert breaker.open_until == 7.0


def test_client_errors_do_not_trip_the_breaker() -> None:
    """404s mean the source is healthy: they never open the circuit."""
    resource = Resource("api", rate="10/s", clock=FakeClock())
    for _ in range(50):
        resource.observe(Outcome.CLIENT_ERROR)
    assert not resource.breaker.is_open


def test_a_resource_needs_a_rate_or_adaptive_mode() -> None:
    """A resource without any limit is a configuration error."""
    with pytest.raises(ConfigError, match="needs a rate"):
        Resource("api")


def test_a_quota_lets_work_run_at_full_rate_until_it_is_spent() -> None:
    """50/min on top of 100/s: fifty requests go at full speed, the next one a minute later."""
    clock = FakeClock()
    resource = Resource("api", rate="100/s", burst=1, limits=["50/min"], clock=clock)
    times = starts(resource, clock, until=61.0, workers=1)
    assert times[49] < 0.52  # 3 % under the declared rate at first (burst 1)
    assert times[50] >= 60.0
    assert resource.seconds_for(120) == pytest.approx(120.0)
    assert resource.seconds_for(40) == pytest.approx(0.4)


def test_concurrency_shares_add_up_to_the_fleet_total() -> None:
    """Shares split the total evenly, the remainder to the first workers, at least one each."""
    from backfill.fleet import concurrency_share

    workers = ["w1", "w2", "w3"]
    assert [concurrency_share(10, workers, w) for w in workers] == [4, 3, 3]
    assert concurrency_share(8, workers[:1], "w4") == 4
    assert [concurrency_share(2, workers, w) for w in workers] == [1, 1, 1]
