"""The event bus: each event reaches the subscribers that take its kind, and the engine
makes no event that nobody takes."""

from __future__ import annotations

import logging

import pytest

from backfill import Context, Job, Partition, daily
from backfill.events import (
    Event,
    EventBus,
    PartitionFinished,
    PartitionStarted,
    RunStopping,
    Tick,
)
from backfill.ledger import Status
from backfill.logs import EventLog
from backfill.runstats import RunStats
from backfill.testing import run_job


class Taker:
    """A subscriber that names the kinds it takes."""

    def __init__(self, *kinds: type) -> None:
        self.events = kinds
        self.heard: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.heard.append(event)


def test_a_subscriber_naming_its_kinds_hears_only_those_and_one_naming_none_hears_all() -> None:
    """A subscriber with ``events`` gets events of those kinds only; a plain callable
    gets every event."""
    bus = EventBus()
    finished = Taker(PartitionFinished)
    everything: list[Event] = []
    bus.subscribe(finished)
    bus.subscribe(everything.append)
    started = PartitionStarted("fetch", "2013-01-01")
    done = PartitionFinished("fetch", "2013-01-01", Status.DONE, 1, 0.1, 1)
    for event in (started, done, Tick(1.0)):
        bus.emit(event)
    assert finished.heard == [done]
    assert everything == [started, done, Tick(1.0)]


def test_wants_follows_subscribing_and_unsubscribing() -> None:
    """``wants`` says whether anyone takes a kind, as subscribers come and go."""
    bus = EventBus()
    assert not bus.wants(PartitionStarted)
    bus.subscribe(Taker(PartitionFinished))
    assert not bus.wants(PartitionStarted)
    assert bus.wants(PartitionFinished)
    unsubscribe = bus.subscribe(Taker(PartitionStarted, RunStopping))
    assert bus.wants(PartitionStarted)
    unsubscribe()
    assert not bus.wants(PartitionStarted)
    bus.subscribe(lambda event: None)
    assert bus.wants(PartitionStarted)


def test_a_failing_subscriber_is_dropped_and_the_others_still_hear(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A subscriber that raises is reported once and hears nothing more; the rest go on."""
    bus = EventBus()
    calls: list[Event] = []

    def broken(event: Event) -> None:
        calls.append(event)
        raise RuntimeError("display broke")

    kept = Taker(Tick)
    bus.subscribe(broken)
    bus.subscribe(kept)
    with caplog.at_level(logging.ERROR, logger="backfill"):
        bus.emit(Tick(1.0))
        bus.emit(Tick(2.0))
    assert len(calls) == 1
    assert kept.heard == [Tick(1.0), Tick(2.0)]
    assert len([r for r in caplog.records if "failed; it is removed" in r.message]) == 1


def test_the_run_log_takes_partition_starts_only_when_it_writes_them() -> None:
    """Without -v the run log and the run's figures take no start events, so a run
    without a display makes none; with -v the log takes them."""
    bus = EventBus()
    bus.subscribe(EventLog(each_partition=False))
    bus.subscribe(RunStats())
    assert not bus.wants(PartitionStarted)
    bus.subscribe(EventLog(each_partition=True))
    assert bus.wants(PartitionStarted)


def test_a_run_makes_start_events_for_a_subscriber_that_takes_them() -> None:
    """Each partition's start reaches a subscriber that takes starts, before its end;
    one that takes only ends hears no start."""
    job = Job("events", partitions=daily("2013-01-01", "2013-01-10"))

    @job.stage
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, str]]:
        return [{"day": partition.key}]

    both = Taker(PartitionStarted, PartitionFinished)
    ends = Taker(PartitionFinished)
    bus = EventBus()
    bus.subscribe(both)
    bus.subscribe(ends)
    run_job(job, bus=bus)
    starts = [e.key for e in both.heard if isinstance(e, PartitionStarted)]
    assert sorted(starts) == [f"2013-01-{d:02d}" for d in range(1, 11)]
    for key in starts:
        kinds = [type(e) for e in both.heard if getattr(e, "key", None) == key]
        assert kinds == [PartitionStarted, PartitionFinished]
    assert all(isinstance(e, PartitionFinished) for e in ends.heard)
    assert len(ends.heard) == 10
