"""One partition attempt on its own (backfill.engine.attempt): its state across tries,
and the single classification of what a stage raised."""

from __future__ import annotations

import asyncio
import errno
from datetime import date
from typing import Any, cast

import pytest

from backfill import Job, RetryPolicy, daily
from backfill.clock import SystemClock
from backfill.context import RunCache
from backfill.engine.attempt import Attempt, AttemptEnv, Totals, classify, truncate
from backfill.engine.control import RunControl
from backfill.errors import (
    ConfigError,
    FatalError,
    PermanentError,
    SinkError,
    StageError,
    TransientError,
)
from backfill.events import EventBus, PartitionRetrying
from backfill.invoke import Invoker
from backfill.ledger import Claim, Outcome, Status
from backfill.sources.clients import Clients


class Recorded:
    """Stands in for the outcome buffer: keeps what the attempt records."""

    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []

    async def record(self, outcome: Outcome, *, soon: bool = False) -> None:
        self.outcomes.append(outcome)


def attempt_of(job: Job, name: str = "fetch") -> tuple[Attempt, Recorded, list[object], Totals]:
    """An attempt at 2013-01-01 of ``name``, with what it reports to."""
    clock = SystemClock()
    bus = EventBus()
    events: list[object] = []
    bus.subscribe(events.append)
    masker = job.masker()
    recorded = Recorded()
    totals = Totals()
    stage = job.stages[name]
    env = AttemptEnv(
        job=job,
        ledger=cast(Any, None),
        db=cast(Any, None),
        worker_id="me",
        run_id="run",
        clock=clock,
        bus=bus,
        masker=masker,
        cache=RunCache(),
        clients=Clients(job, clock=clock),
        invoker=Invoker([stage], lambda s: 1),
        writer=cast(Any, None),
        leases=cast(Any, None),
        outcomes=cast(Any, recorded),
        control=RunControl(bus, clock, masker, grace=0.0),
        totals=totals,
        signal_progress=lambda: None,
        urgent=lambda s: False,
    )
    day = date(2013, 1, 1)
    claim = Claim(1, name, "2013-01-01", day, day, (), attempts=0, claims=1)
    return Attempt(env, stage, claim, lambda: None, fenced=True), recorded, events, totals


def test_an_attempt_keeps_its_count_across_retries_and_ends_done() -> None:
    """Two transient failures, then success: three tries, two retries on record, one
    done outcome with the records of the last try."""
    job = Job("attempts", partitions=daily("2013-01-01", "2013-01-01"))
    tries: list[int] = []

    @job.stage(retry=RetryPolicy(attempts=5, base=0.0, jitter=False))
    async def fetch(ctx: Any, partition: Any) -> list[dict[str, int]]:
        tries.append(ctx.attempt)
        if len(tries) < 3:
            raise TransientError("busy", category="http_503")
        return [{"n": 1}, {"n": 2}]

    attempt, recorded, events, totals = attempt_of(job)
    asyncio.run(attempt.run())
    assert tries == [1, 2, 3]
    assert attempt.number == 3
    (outcome,) = recorded.outcomes
    assert (outcome.status, outcome.attempts, outcome.records) == (Status.DONE, 3, 2)
    assert totals == Totals(records=2, retries=2, executed=1)
    retried = [e for e in events if isinstance(e, PartitionRetrying)]
    assert [(e.attempt, e.category) for e in retried] == [(1, "http_503"), (2, "http_503")]


def test_a_bug_in_the_stage_fails_the_partition_at_once() -> None:
    """A permanent error is not retried: one try, failed with its category."""
    job = Job("attempts", partitions=daily("2013-01-01", "2013-01-01"))

    @job.stage(retry=RetryPolicy(attempts=5, base=0.0, jitter=False))
    async def fetch(ctx: Any, partition: Any) -> None:
        raise KeyError("id")

    attempt, recorded, _, totals = attempt_of(job)
    asyncio.run(attempt.run())
    (outcome,) = recorded.outcomes
    assert (outcome.status, outcome.attempts, outcome.error_category) == (
        Status.FAILED,
        1,
        "KeyError",
    )
    assert totals.retries == 0


def test_a_fatal_error_gives_the_partition_back_and_stops_the_run() -> None:
    """A fatal error leaves the partition pending (not failed) and stops the run with it
    as the cause."""
    job = Job("attempts", partitions=daily("2013-01-01", "2013-01-01"))

    @job.stage
    async def fetch(ctx: Any, partition: Any) -> None:
        raise ConfigError("the API key is missing")

    attempt, recorded, _, _ = attempt_of(job)

    async def scenario() -> RunControl:
        await attempt.run()
        return attempt.env.control

    control = asyncio.run(scenario())
    (outcome,) = recorded.outcomes
    assert (outcome.status, outcome.error_category) == (Status.PENDING, "ConfigError")
    assert control.stopped() and control.fatal is not None
    assert control.fatal.message == "the API key is missing"


def test_a_stage_error_is_trusted_as_classified() -> None:
    """What a client already classified (a StageError) is passed through unchanged."""
    job = Job("c", partitions=daily("2013-01-01", "2013-01-01"))

    @job.stage
    async def fetch(ctx: Any, partition: Any) -> None:
        return None

    error = PermanentError("HTTP 404", category="http_404")
    assert classify(error, job.stages["fetch"]) is error


@pytest.mark.parametrize(
    ("exc", "kind", "category"),
    [
        (TimeoutError("read"), TransientError, "timeout"),
        (ConnectionResetError("reset"), TransientError, "network"),
        (OSError(errno.ENOSPC, "No space left on device", "/tmp/x"), FatalError, "disk_full"),
        (SinkError("table is read-only"), FatalError, "sink"),
        (ConfigError("bad"), FatalError, "ConfigError"),
        (ValueError("bad date"), PermanentError, "ValueError"),
    ],
)
def test_exceptions_are_classified_once_by_kind(
    exc: BaseException, kind: type[StageError], category: str
) -> None:
    """Every other exception maps onto transient, permanent or fatal, with a category."""
    job = Job("c", partitions=daily("2013-01-01", "2013-01-01"))

    @job.stage
    async def fetch(ctx: Any, partition: Any) -> None:
        return None

    error = classify(exc, job.stages["fetch"])
    assert type(error) is kind
    assert error.category == category


def test_the_stages_own_timeout_names_the_stage_and_its_limit() -> None:
    """A timeout of a stage with a timeout says which stage and how long it had."""
    job = Job("c", partitions=daily("2013-01-01", "2013-01-01"))

    @job.stage(timeout=2.5)
    async def fetch(ctx: Any, partition: Any) -> None:
        return None

    error = classify(TimeoutError(), job.stages["fetch"])
    assert error.message == "stage fetch took longer than its timeout of 2.5 s"


def test_messages_are_one_bounded_line() -> None:
    """What the ledger keeps is one line, cut with an ellipsis past its limit."""
    assert truncate("a\n  b\tc") == "a b c"
    long = truncate("x" * 5000)
    assert len(long) == 2000 and long.endswith("…")


def test_a_second_fatal_error_is_neither_the_cause_nor_said_again() -> None:
    """Two collaborators failing one after the other (a sink's full disk, then the
    ledger's on the same disk): the first is the run's cause, and the run says it stops
    once, with it."""
    from backfill.errors import FatalError
    from backfill.events import RunStopping

    async def scenario() -> tuple[RunControl, list[object]]:
        bus = EventBus()
        events: list[object] = []
        bus.subscribe(events.append)
        job = Job("j", partitions=daily("2013-01-01", "2013-01-02"))
        control = RunControl(bus, SystemClock(), job.masker(), grace=0.0)
        control.fail(FatalError("disk full writing /data/a.db; free space and run again"))
        control.fail(FatalError("disk full writing /data/state.db; free space and run again"))
        return control, events

    control, events = asyncio.run(scenario())
    assert control.fatal is not None
    assert "a.db" in control.fatal.message
    stops = [e for e in events if isinstance(e, RunStopping)]
    assert [s.reason for s in stops] == [
        "fatal: disk full writing /data/a.db; free space and run again"
    ]
