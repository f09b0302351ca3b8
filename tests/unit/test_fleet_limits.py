"""Fleet-wide limits: mapping the shared schedule onto a worker's own clock."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from backfill.fleet import LedgerRate, concurrency_share
from backfill.ratelimit import Resource, book_block
from backfill.ratelimit.fleetpace import Report

OFFSET = 1000.0  # the database's clock runs this far ahead of the worker's


class StepClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 0.0
        self.oversleep = 0.0  # added to the next sleep only (the loop woke up late)

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds + self.oversleep
        self.oversleep = 0.0


class Schedule:
    """A shared schedule whose reply reaches the worker ``delay`` s after the database
    read its clock (the worker was short of CPU)."""

    def __init__(self, clock: StepClock) -> None:
        self.clock = clock
        self.delay = 0.0
        self.due = 0.0  # how far after the database's now the booked start is
        self.booked: list[float] = []  # when the database read its clock, on ours
        self.intervals: list[float] = []  # the spacing each booking asked for
        # What each booking told the fleet's pace.
        self.reports: list[Report | None] = []
        self.pace: float | None = None  # the rate the fleet books at (None: the declared)

    def take_starts(
        self,
        job: str,
        resource: str,
        *,
        count: int,
        interval: float,
        tolerance: float,
        quotas: Sequence[tuple[int, float]] = (),
        max_pause: float = math.inf,
        margin: float = 0.0,
        horizon: float = math.inf,
        learn: Report | None = None,
    ) -> tuple[list[float], float, float, float]:
        db_now = self.clock.now + OFFSET
        self.clock.now += self.delay
        self.delay = 0.0
        self.booked.append(db_now - OFFSET)
        self.intervals.append(interval)
        self.reports.append(learn)
        return (
            [self.due + i * interval for i in range(count)],
            0.0,
            db_now,
            self.pace or 1 / interval,
        )

    def pause_resource(self, job: str, resource: str, seconds: float) -> None:
        raise AssertionError("not paused in these tests")


def taker(delays: list[float]) -> tuple[list[list[float]], Schedule]:
    clock = StepClock()
    schedule = Schedule(clock)
    resource = Resource("api", rate=20, burst=2)  # (burst 1 starts a hair under 20/s)
    rate = LedgerRate(schedule, "j", resource, ThreadPoolExecutor(1), clock)
    taken: list[list[float]] = []

    async def main() -> None:
        for delay in delays:
            clock.now += 1.0
            schedule.delay = delay
            taken.append((await rate.take(3)).starts)

    asyncio.run(main())
    return taken, schedule


def test_the_fleet_books_starts_at_the_declared_rate_whatever_a_worker_learned() -> None:
    """A worker refused down (20/s declared, 9.7/s learned) books the fleet's schedule at
    the declared rate at most, the pace the fleet learned from every worker's answers
    (kept with the schedule) spacing them further: booked at each worker's learned rate,
    one worker still low after an outage held the whole fleet at the harmonic mean of
    their rates (see backfill.fleet.booking)."""
    clock = StepClock()
    schedule = Schedule(clock)
    resource = Resource("api", rate=20, burst=2)
    rate = LedgerRate(schedule, "j", resource, ThreadPoolExecutor(1), clock)
    learned = resource.pace.learned
    assert learned is not None
    asyncio.run(rate.take(2))
    learned.rate = 9.7
    asyncio.run(rate.take(2))
    assert schedule.intervals == pytest.approx([1 / 20, 1 / 20])


def test_a_worker_tells_the_fleet_what_its_starts_were_answered_on_the_database_clock() -> None:
    """The answers since the last booking (sent, accepted) and the refusals that came a
    hair early go with the next booking, their instants on the database's clock, once
    each; the rate the fleet booked at comes back."""
    clock = StepClock()
    schedule = Schedule(clock)
    resource = Resource("api", rate=20, burst=2, clock=clock)
    rate = LedgerRate(schedule, "j", resource, ThreadPoolExecutor(1), clock)
    resource.share_with(rate)
    asyncio.run(rate.take(2))
    resource.fleet.answered(0.5, True)
    resource.fleet.answered(0.6, False, early=True)
    clock.now = 1.0
    taken = asyncio.run(rate.take(2))
    asyncio.run(rate.take(2))
    told = [(r.answers, r.early) for r in schedule.reports if r is not None]
    assert told == [
        ([], []),
        ([(OFFSET + 0.5, True), (OFFSET + 0.6, False)], [OFFSET + 0.6]),
        ([], []),
    ]
    assert {r.worker for r in schedule.reports if r is not None} != {None}
    assert taken.rate == pytest.approx(20.0)
    assert resource.rate_description() == "20/s"


def test_a_worker_runs_at_and_says_the_pace_the_fleet_books() -> None:
    clock = StepClock()
    schedule = Schedule(clock)
    resource = Resource("api", rate=20, burst=2, clock=clock)
    rate = LedgerRate(schedule, "j", resource, ThreadPoolExecutor(1), clock)
    resource.share_with(rate)
    schedule.pace = 17.46

    asyncio.run(resource.acquire())
    assert resource.rate == pytest.approx(17.46)
    assert resource.rate_description() == "20/s (running at 17.5/s, shared)"


def test_starts_of_a_reply_held_up_on_its_way_show_as_late_as_they_are() -> None:
    """After one quick round trip, a reply that arrives 0.3 s after the database booked
    its starts maps them to when they were due, not to when the reply came."""
    taken, schedule = taker([0.0, 0.3])
    assert taken[0] == pytest.approx([1.0, 1.05, 1.10])
    assert taken[1] == pytest.approx([2.0, 2.05, 2.10])
    assert schedule.clock.now == pytest.approx(2.3)


def test_without_a_quicker_round_trip_the_reply_is_the_origin() -> None:
    """With nothing better to go by, starts are never mapped earlier than the reply."""
    taken, _ = taker([0.2])
    assert taken[0] == pytest.approx([1.2, 1.25, 1.3])


def test_a_quick_round_trip_counts_for_a_bounded_time() -> None:
    """The offset learnt from a quick round trip is forgotten after the horizon, so a
    clock that stepped is followed again."""
    taken, schedule = taker([0.0] + [0.2] * 12)
    received = [booked + 0.2 for booked in schedule.booked]
    learnt_at = schedule.booked[0]
    for starts, booked, came in zip(taken[1:], schedule.booked[1:], received[1:], strict=True):
        within = came - LedgerRate.horizon <= learnt_at
        assert starts[0] == pytest.approx(booked if within else came)
    assert taken[-1][0] == pytest.approx(received[-1])


def test_late_starts_are_dropped_by_the_resource_not_sent() -> None:
    """The resource takes a fresh block instead of spending starts over half an interval
    late, so its first request goes at the first on-time start."""
    clock = StepClock()
    schedule = Schedule(clock)
    resource = Resource("api", rate=20, clock=clock)
    resource.share_with(LedgerRate(schedule, "j", resource, ThreadPoolExecutor(1), clock))

    async def main() -> float:
        await resource.acquire()  # learns the offset from a quick round trip
        clock.now += 5.0
        schedule.delay = 0.3
        await resource.acquire()
        return clock.now

    sent = asyncio.run(main())
    # The held-up start (due at 5.0, in hand at 5.3) is dropped; the next goes on time.
    assert sent == pytest.approx(5.3)
    assert schedule.booked == pytest.approx([0.0, 5.0, 5.3])


def test_a_start_slept_past_is_dropped_not_sent_late() -> None:
    """A worker that wakes up well after its start (its CPU was busy) takes a fresh one
    instead of sending on the stale start."""
    clock = StepClock()
    schedule = Schedule(clock)
    resource = Resource("api", rate=20, clock=clock)
    resource.share_with(LedgerRate(schedule, "j", resource, ThreadPoolExecutor(1), clock))

    async def main() -> float:
        schedule.due = 0.1
        clock.oversleep = 0.3
        await resource.acquire()
        return clock.now

    sent = asyncio.run(main())
    # Due at 0.1, awake at 0.4: dropped; the next is booked at 0.4 and due at 0.5.
    assert schedule.booked == pytest.approx([0.0, 0.4])
    assert sent == pytest.approx(0.5)


def test_concurrency_share_splits_evenly_and_never_below_one() -> None:
    """Shares add up to the total, the remainder to the first ids, one at least."""
    assert [concurrency_share(10, ["a", "b", "c"], w) for w in "abc"] == [4, 3, 3]
    assert concurrency_share(2, ["a", "b", "c"], "c") == 1


def test_a_block_is_spaced_by_the_rate_and_its_burst_goes_at_once() -> None:
    """Starts follow the interval from the schedule's tat; those already due go now."""
    tat, starts = book_block(
        now=10.0, tat=9.0, paused_until=0.0, count=4, interval=0.5, tolerance=1.0
    )
    assert tat == pytest.approx(11.0)
    assert starts == pytest.approx([10.0, 10.0, 10.0, 10.5])


def test_a_pause_pushes_the_whole_block_back() -> None:
    """No start of the block comes before the fleet's pause ends."""
    tat, starts = book_block(
        now=10.0, tat=9.0, paused_until=12.0, count=2, interval=0.5, tolerance=0.0
    )
    assert (tat, starts) == (13.0, [12.0, 12.5])


def test_a_quota_holds_each_start_a_period_after_the_one_quota_count_before() -> None:
    """With 3 per minute used at 0, 1 and 2 s, the next starts wait until 60, 61, 62;
    a start whose quota slot is free goes on the rate alone, before those that wait."""
    earlier = [(60.0, [0.0, 1.0, 2.0])]
    _, starts = book_block(
        now=5.0, tat=0.0, paused_until=0.0, count=3, interval=1.0, tolerance=0.0,
        earlier=earlier,
    )  # fmt: skip
    assert starts == pytest.approx([60.0, 61.0, 62.0])
    # Starts a period old no longer count; a quota not yet full holds nothing.
    assert book_block(
        now=70.0, tat=0.0, paused_until=0.0, count=2, interval=1.0, tolerance=0.0,
        earlier=[(60.0, [0.0, None])],
    )[1] == pytest.approx([70.0, 71.0])  # fmt: skip
    assert book_block(
        now=5.0, tat=0.0, paused_until=0.0, count=3, interval=1.0, tolerance=0.0,
        earlier=[(60.0, [None, 1.0, 2.0])],
    )[1] == pytest.approx([5.0, 61.0, 62.0])  # fmt: skip


def test_the_busiest_quota_and_the_rate_together_set_the_block() -> None:
    """Of two quotas the one that waits longer wins, and the rate's spacing is kept."""
    _, starts = book_block(
        now=0.0, tat=0.0, paused_until=0.0, count=2, interval=0.5, tolerance=0.0,
        earlier=[(10.0, [-8.0, -7.9]), (100.0, [-90.0, None])],
    )  # fmt: skip
    assert starts == pytest.approx([10.0, 10.5])


def test_blocks_never_exceed_the_smallest_quota() -> None:
    """A worker with many requests waiting books no more starts at once than the
    tightest quota allows in its window."""
    clock = StepClock()
    schedule = Schedule(clock)
    resource = Resource("api", rate=100, limits=["3/min"], clock=clock)
    asked: list[int] = []
    taking = schedule.take_starts

    def spy(*args: object, count: int, **kw: object) -> tuple[float, float, float, float]:
        asked.append(count)
        return taking(*args, count=count, **kw)  # type: ignore[arg-type]

    schedule.take_starts = spy  # type: ignore[method-assign]
    rate = LedgerRate(schedule, "j", resource, ThreadPoolExecutor(1), clock)
    starts = asyncio.run(rate.take(25)).starts
    assert asked == [3]
    assert len(starts) == 3


def test_a_rate_shared_with_other_workers_leaves_nothing_to_resume(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In a fleet each worker learns its own share of the source (a quarter of it among
    four): a run of any size starting at one worker's share would crawl. A rate shared
    with others leaves nothing on record; one shared for quotas only does."""
    clock = StepClock()
    schedule = Schedule(clock)
    for rate, settled in ((True, None), (False, 4.8)):
        resource = Resource("api", rate=15, burst=1, clock=clock)
        assert resource.pace.learned is not None
        monkeypatch.setattr(resource.pace.learned, "settled", lambda: 4.8)  # it learned
        resource.share_with(
            LedgerRate(schedule, "j", resource, ThreadPoolExecutor(1), clock, rate=rate), rate=rate
        )
        assert resource.state()["settled"] == settled


def test_a_fleets_workers_leave_nothing_to_resume_and_resume_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every resource of a fleet's worker is learned per worker, even one whose rate the
    fleet does not share (an adaptive one: four workers on one 100/s source recorded 20,
    10, 24 and 43, and a run alone resumed at 20): its record says nothing, and a worker
    of a fleet starts afresh."""
    import types

    from backfill import Job, daily
    from backfill.engine.lease import LeaseKeeper

    job = Job("j", partitions=daily("2013-01-01", "2013-01-02"))
    api = job.resource("api", adaptive=True)
    assert api.pace.learned is not None
    monkeypatch.setattr(api.pace.learned, "settled", lambda: 24.0)
    read: list[str] = []
    ledger = types.SimpleNamespace(fleet=True, resource_states=lambda name: read.append(name))
    keeper = LeaseKeeper(job, ledger, None, "w", StepClock(), None, ["api"])  # type: ignore[arg-type]
    assert '"settled":null' in (keeper.resources_json() or "")
    asyncio.run(keeper.resume_resources())
    assert read == [] and not api.resumed
