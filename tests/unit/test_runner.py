"""The runner against an in-memory ledger and sink: outcomes, retries, limits, stops."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import subprocess
import sys
import threading
import time
import types
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backfill import (
    Context,
    EmptyPartition,
    FatalError,
    Job,
    Partition,
    PermanentError,
    RetryPolicy,
    Runner,
    RunOptions,
    SinkError,
    Status,
    TransientError,
    daily,
)
from backfill.clock import SystemClock
from backfill.engine.lease import pid_alive
from backfill.events import Event, EventBus, PartitionFinished, RunFinished, RunStarted
from backfill.job import needs
from backfill.ledger import Ledger, Outcome, WorkerRecord, open_ledger
from backfill.runner import ExitCode
from backfill.testing import MemorySink, run_job

FAST = RetryPolicy(attempts=3, base=0.0, cap=0.0)


@pytest.fixture
def ledger() -> Ledger:
    return open_ledger(":memory:")


def make_job(days: int = 10, **kw: Any) -> Job:
    end = f"2013-01-{days:02d}"
    return Job("test", partitions=daily("2013-01-01", end), **kw)


class RecordingClock(SystemClock):
    """Real time, but remembers every sleep longer than the runner's own ticks."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    async def sleep(self, seconds: float) -> None:
        if seconds not in (0.25,):
            self.sleeps.append(seconds)
        await asyncio.sleep(min(seconds, 0.01))


def test_every_partition_runs_once_and_lands_in_the_sink(ledger: Ledger) -> None:
    """Each partition runs exactly once; its records reach the sink; exit code 0."""
    sink = MemorySink(key=["day"])
    job = make_job(10, sink=sink)
    seen: Counter[str] = Counter()

    @job.stage(concurrency=3)
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        seen[partition.key] += 1
        return [{"day": partition.key, "n": 1}, {"day": partition.key, "n": 2}]

    result = run_job(job, ledger)
    assert result.exit_code == ExitCode.OK
    assert set(seen.values()) == {1} and len(seen) == 10
    assert len(sink.rows) == 10  # upserted on the key: the second record wins
    assert result.records == 20
    counts = ledger.counts("test", ["fetch"])["fetch"]
    assert (counts.done, counts.records) == (10, 20)


def test_a_second_run_has_nothing_to_do(ledger: Ledger) -> None:
    """Finished partitions are never run again."""
    job = make_job(5)
    calls: list[str] = []

    @job.stage
    async def fetch(ctx: Context, partition: Partition) -> None:
        calls.append(partition.key)

    run_job(job, ledger)
    again = run_job(job, ledger)
    assert len(calls) == 5
    assert again.executed == 0
    assert again.exit_code == ExitCode.OK


def test_a_job_whose_range_grows_runs_only_the_new_partitions(ledger: Ledger) -> None:
    """The second run of a wider spec plans and runs just the new days; after a reset
    of some days, the next run of the same spec plans them again (the plan fingerprint
    never hides forgotten partitions)."""
    calls: list[str] = []

    def job_of(days: int) -> Job:
        job = make_job(days)

        @job.stage
        async def fetch(ctx: Context, partition: Partition) -> None:
            calls.append(partition.key)

        return job

    run_job(job_of(5), ledger)
    run_job(job_of(8), ledger)
    assert calls[5:] == ["2013-01-06", "2013-01-07", "2013-01-08"]
    selection = job_of(8).partitions.selection(start="2013-01-02", end="2013-01-03")  # type: ignore[union-attr]
    assert ledger.reset("test", ["fetch"], selection).removed == 2
    again = run_job(job_of(8), ledger)
    assert calls[8:] == ["2013-01-02", "2013-01-03"]
    assert again.exit_code == ExitCode.OK
    assert ledger.counts("test", ["fetch"])["fetch"].done == 8


def test_permanent_error_fails_only_that_partition(ledger: Ledger) -> None:
    """A permanent error fails its partition with category and message; others finish."""
    job = make_job(10)

    @job.stage(retry=FAST)
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        if partition.start.day % 4 == 0:
            raise PermanentError(f"only 3 of 8 matches on {partition.key}", category="INCOMPLETE")
        return [{"x": 1}]

    result = run_job(job, ledger)
    assert result.exit_code == ExitCode.FAILED
    failed = ledger.entries("test", "fetch", status=Status.FAILED)
    assert [e.key for e in failed] == ["2013-01-04", "2013-01-08"]
    assert failed[0].error_category == "INCOMPLETE"
    assert failed[0].error_message == "only 3 of 8 matches on 2013-01-04"
    assert failed[0].attempts == 1  # permanent: no retry
    assert ledger.counts("test", ["fetch"])["fetch"].done == 8


def test_unclassified_exception_is_permanent_and_named(ledger: Ledger) -> None:
    """A bug in the stage (KeyError) fails the partition under the exception's name."""
    job = make_job(1)

    @job.stage(retry=FAST)
    async def fetch(ctx: Context, partition: Partition) -> None:
        raise KeyError("home_team")

    run_job(job, ledger)
    entry = ledger.entries("test", "fetch", status=Status.FAILED)[0]
    assert (entry.error_category, entry.attempts) == ("KeyError", 1)
    assert "home_team" in (entry.error_message or "")


def test_transient_errors_are_retried_until_success(ledger: Ledger) -> None:
    """Transient failures are retried; the partition ends done with its attempts counted."""
    job = make_job(1)
    tries = Counter[str]()

    @job.stage(retry=RetryPolicy(attempts=5, base=0.0))
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        tries[partition.key] += 1
        if tries[partition.key] < 3:
            raise TransientError("503", category="http_503")
        return [{"attempt": ctx.attempt}]

    result = run_job(job, ledger)
    assert result.exit_code == ExitCode.OK
    assert result.retries == 2
    entry = ledger.entries("test", "fetch")[0]
    assert (entry.status, entry.attempts) == (Status.DONE, 3)


def test_exhausted_retries_fail_with_the_last_category(ledger: Ledger) -> None:
    """When every attempt fails transiently, the partition fails with that category."""
    job = make_job(1)

    @job.stage(retry=FAST)
    async def fetch(ctx: Context, partition: Partition) -> None:
        raise TransientError("connection reset", category="network")

    result = run_job(job, ledger)
    entry = ledger.entries("test", "fetch")[0]
    assert (entry.status, entry.attempts, entry.error_category) == (Status.FAILED, 3, "network")
    assert result.exit_code == ExitCode.FAILED


def test_retry_after_hint_is_honoured(ledger: Ledger) -> None:
    """The wait before a retry is at least the source's Retry-After hint."""
    job = make_job(1)
    clock = RecordingClock()
    tries = Counter[str]()

    @job.stage(retry=RetryPolicy(attempts=3, base=0.0, cap=0.0))
    async def fetch(ctx: Context, partition: Partition) -> None:
        tries["n"] += 1
        if tries["n"] == 1:
            raise TransientError("slow down", category="http_429", retry_after=7.5)

    run_job(job, ledger, clock=clock)
    assert 7.5 in clock.sleeps


def test_stage_timeout_is_transient_and_named(ledger: Ledger) -> None:
    """A stage exceeding its timeout is retried, then fails as ``timeout``."""
    job = make_job(1)

    @job.stage(timeout=0.05, retry=RetryPolicy(attempts=2, base=0.0))
    async def fetch(ctx: Context, partition: Partition) -> None:
        await asyncio.sleep(5)

    run_job(job, ledger)
    entry = ledger.entries("test", "fetch")[0]
    assert (entry.status, entry.error_category, entry.attempts) == (Status.FAILED, "timeout", 2)
    assert "timeout of 0.05 s" in (entry.error_message or "")


def test_empty_partition_is_skipped_with_its_reason(ledger: Ledger) -> None:
    """EmptyPartition records the partition as empty (not failed) with the reason."""
    job = make_job(7)

    @job.stage
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        if partition.start.weekday() == 6:
            raise EmptyPartition("no games on Sundays")
        return [{"x": 1}]

    result = run_job(job, ledger)
    assert result.exit_code == ExitCode.OK
    empty = ledger.entries("test", "fetch", status=Status.EMPTY)
    assert [(e.key, e.error_message) for e in empty] == [("2013-01-06", "no games on Sundays")]


def test_fatal_error_stops_the_run_and_keeps_the_ledger_consistent(ledger: Ledger) -> None:
    """A fatal error stops claiming, releases in-flight work, and exits 2 with the cause."""
    job = make_job(31)
    started = 0

    @job.stage(concurrency=4)
    async def fetch(ctx: Context, partition: Partition) -> None:
        nonlocal started
        started += 1
        if partition.key == "2013-01-03":
            raise FatalError("GET /results answered 401: check the API key")
        await asyncio.sleep(0.2)

    result = run_job(job, ledger)
    assert result.exit_code == ExitCode.USAGE
    assert result.message is not None and "401" in result.message
    counts = ledger.counts("test", ["fetch"])["fetch"]
    assert counts.running == 0
    assert counts.failed == 0
    assert counts.pending >= 31 - started
    assert started < 31


def test_sink_error_is_fatal(ledger: Ledger) -> None:
    """A destination that cannot be written stops the run instead of failing every partition."""

    class BrokenSink(MemorySink):
        def write(self, conn: Any, batch: Any) -> int:
            raise SinkError("cannot write table t: disk I/O error")

    job = make_job(5, sink=BrokenSink(key=["x"]))

    @job.stage
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        return [{"x": 1}]

    result = run_job(job, ledger)
    assert result.exit_code == ExitCode.USAGE
    assert "disk I/O error" in (result.message or "")
    assert ledger.counts("test", ["fetch"])["fetch"].failed == 0


def test_missing_key_in_a_record_fails_that_partition(ledger: Ledger) -> None:
    """A record without its key field fails its partition, naming the field."""
    sink = MemorySink(key=["id"])
    job = make_job(2, sink=sink)

    @job.stage
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        if partition.key == "2013-01-02":
            return [{"name": "no id here"}]
        return [{"id": 1}]

    run_job(job, ledger)
    entry = ledger.entries("test", "fetch", status=Status.FAILED)[0]
    assert (entry.key, entry.error_category) == ("2013-01-02", "missing_key")
    assert "'id'" in (entry.error_message or "")


def test_sync_functions_and_generators_are_supported(ledger: Ledger) -> None:
    """Plain functions (in threads), generators and async generators all yield records."""
    sink = MemorySink(key=["stage", "day"])
    job = make_job(3, sink=sink)
    threads: set[str] = set()

    @job.stage
    def plain(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        threads.add(threading.current_thread().name)
        return [{"stage": "plain", "day": partition.key}]

    @job.stage
    def gen(ctx: Context, partition: Partition) -> Any:
        yield {"stage": "gen", "day": partition.key}

    @job.stage
    async def agen(ctx: Context, partition: Partition) -> Any:
        yield {"stage": "agen", "day": partition.key}

    result = run_job(job, ledger)
    assert result.exit_code == ExitCode.OK
    assert len(sink.rows) == 9
    assert all(name.startswith("backfill-stage") for name in threads)


def test_dataclass_records_are_accepted_and_junk_is_refused(ledger: Ledger) -> None:
    """Dataclass records are written as mappings; a non-record fails the partition."""

    @dataclasses.dataclass
    class Row:
        day: str

    sink = MemorySink(key=["day"])
    job = make_job(2, sink=sink)

    @job.stage
    async def fetch(ctx: Context, partition: Partition) -> list[Any]:
        return [Row(partition.key)] if partition.key == "2013-01-01" else [42]

    run_job(job, ledger)
    assert list(sink.rows) == [("2013-01-01",)]
    entry = ledger.entries("test", "fetch", status=Status.FAILED)[0]
    assert entry.error_category == "bad_record"


def test_dicts_other_mappings_and_dataclasses_mix_in_one_partition(ledger: Ledger) -> None:
    """Plain dicts, other mappings and dataclasses in one list are all written as rows."""

    @dataclasses.dataclass
    class Row:
        day: str
        n: int

    sink = MemorySink(key=["day", "n"])
    job = make_job(1, sink=sink)

    @job.stage
    async def fetch(ctx: Context, partition: Partition) -> list[Any]:
        day = partition.key
        return [{"day": day, "n": 1}, types.MappingProxyType({"day": day, "n": 2}), Row(day, 3)]

    assert run_job(job, ledger).exit_code == ExitCode.OK
    assert sorted(sink.rows) == [("2013-01-01", 1), ("2013-01-01", 2), ("2013-01-01", 3)]


class CountingSink(MemorySink):
    """A MemorySink that counts how often its database is asked for."""

    lookups = 0

    @property
    def database(self) -> str:
        self.lookups += 1
        return f"memory:{id(self)}"


@pytest.mark.parametrize("days", [2, 10])
def test_a_sinks_database_is_looked_up_when_the_run_opens_not_per_write(
    ledger: Ledger, days: int
) -> None:
    """Writes reuse the database each sink named at open, however many partitions run."""
    sink = CountingSink(key=["day"])
    job = make_job(days, sink=sink)

    @job.stage
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        return [{"day": partition.key}]

    assert run_job(job, ledger).exit_code == ExitCode.OK
    assert len(sink.rows) == days
    assert sink.lookups == 1


def test_concurrency_limit_holds(ledger: Ledger) -> None:
    """No more than the stage's concurrency run at once."""
    job = make_job(30)
    active = peak = 0

    @job.stage(concurrency=4)
    async def fetch(ctx: Context, partition: Partition) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.005)
        active -= 1

    run_job(job, ledger)
    assert peak == 4


def test_cache_computes_once_for_concurrent_partitions(ledger: Ledger) -> None:
    """``ctx.cache.get_or_set`` runs its factory once per key, even under concurrency."""
    job = make_job(31)
    fetched: Counter[str] = Counter()

    async def archive(month: str) -> str:
        fetched[month] += 1
        await asyncio.sleep(0.01)
        return f"archive-{month}"

    @job.stage(concurrency=8)
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        month = partition.key[:7]
        page = await ctx.cache.get_or_set(("archive", month), lambda: archive(month))
        return [{"page": page}]

    result = run_job(job, ledger)
    assert result.exit_code == ExitCode.OK
    assert fetched == {"2013-01": 1}


def test_cache_pop_forgets_a_value_and_returns_it(ledger: Ledger) -> None:
    """``ctx.cache.pop`` drops a key (the next look is a miss) and gives back its value."""
    job = make_job(1)
    seen: list[Any] = []

    @job.stage
    async def fetch(ctx: Context, partition: Partition) -> None:
        ctx.cache.set("window", [1, 2])
        seen.append(ctx.cache.pop("window"))
        seen.append(ctx.cache.pop("window", "gone"))
        seen.append("window" in ctx.cache)

    assert run_job(job, ledger).exit_code == ExitCode.OK
    assert seen == [[1, 2], "gone", False]


def test_selection_runs_only_selected_partitions(ledger: Ledger) -> None:
    """With a selection, only matching partitions run."""
    job = Job("test", partitions=daily("2013-01-01", "2013-01-10", tour=["atp", "wta"]))
    ran: list[str] = []

    @job.stage
    async def fetch(ctx: Context, partition: Partition) -> None:
        ran.append(partition.key)

    sel = job.stages["fetch"].partitions.selection(start="2013-01-09", where=["tour=wta"])
    run_job(job, ledger, RunOptions(selection=sel))
    assert sorted(ran) == ["2013-01-09/tour=wta", "2013-01-10/tour=wta"]
    assert ledger.counts("test", ["fetch"])["fetch"].pending == 18


def test_events_bracket_the_run(ledger: Ledger) -> None:
    """Subscribers see RunStarted first, one PartitionFinished per partition, RunFinished last."""
    job = make_job(6)

    @job.stage
    async def fetch(ctx: Context, partition: Partition) -> None:
        return None

    events: list[Event] = []
    bus = EventBus()
    bus.subscribe(events.append)
    run_job(job, ledger, bus=bus)
    assert isinstance(events[0], RunStarted)
    assert isinstance(events[-1], RunFinished)
    finished = [e for e in events if isinstance(e, PartitionFinished)]
    assert sorted(e.key for e in finished) == [f"2013-01-0{i}" for i in range(1, 7)]


def test_run_is_recorded_in_the_ledger(ledger: Ledger) -> None:
    """Each invocation leaves a run record with status, exit code and counts."""
    job = make_job(3)

    @job.stage
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        return [{"a": 1}]

    result = run_job(job, ledger)
    run = ledger.runs("test")[0]
    assert (run.id, run.status, run.exit_code) == (result.run_id, "done", 0)
    assert run.counts["records"] == 3
    assert run.finished_at is not None


async def _run_until(runner: Runner, done: asyncio.Event, *, immediate: bool) -> int:
    task = asyncio.create_task(runner.run())
    await done.wait()
    runner.interrupt()
    if immediate:
        runner.interrupt()
    result = await task
    return result.exit_code


def test_interrupt_releases_work_and_the_next_run_does_not_redo_it(ledger: Ledger) -> None:
    """Ctrl+C twice: exit 130, no partition left running, finished work never redone."""
    job = make_job(31)
    calls: Counter[str] = Counter()
    reached: asyncio.Event | None = None

    @job.stage(concurrency=4)
    async def fetch(ctx: Context, partition: Partition) -> None:
        calls[partition.key] += 1
        await asyncio.sleep(0.02)
        if sum(calls.values()) >= 10 and reached is not None:
            reached.set()
        await asyncio.sleep(0.02)

    async def interrupted_run() -> int:
        nonlocal reached
        reached = asyncio.Event()
        return await _run_until(Runner(job, ledger), reached, immediate=True)

    assert asyncio.run(interrupted_run()) == ExitCode.INTERRUPTED
    counts = ledger.counts("test", ["fetch"])["fetch"]
    assert counts.running == 0
    done_keys = {e.key for e in ledger.entries("test", "fetch", status=Status.DONE)}
    assert 0 < len(done_keys) < 31
    before = Counter(calls)

    result = run_job(job, ledger)
    assert result.exit_code == ExitCode.OK
    assert ledger.counts("test", ["fetch"])["fetch"].done == 31
    for key in done_keys:
        assert calls[key] == before[key] == 1


def test_graceful_interrupt_lets_in_flight_work_finish(ledger: Ledger) -> None:
    """One Ctrl+C: no new claims, but work already running finishes and is recorded."""
    job = make_job(31)
    started: list[str] = []

    @job.stage(concurrency=3)
    async def fetch(ctx: Context, partition: Partition) -> None:
        started.append(partition.key)
        if len(started) == 3 and go is not None:
            go.set()
        await asyncio.sleep(0.1)

    go: asyncio.Event | None = None

    async def interrupted_run() -> int:
        nonlocal go
        go = asyncio.Event()
        return await _run_until(Runner(job, ledger, RunOptions(grace=5.0)), go, immediate=False)

    assert asyncio.run(interrupted_run()) == ExitCode.INTERRUPTED
    counts = ledger.counts("test", ["fetch"])["fetch"]
    assert counts.done == len(started)
    assert counts.running == 0
    assert counts.pending == 31 - len(started)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_partitions_of_a_dead_local_worker_are_reclaimed_at_once(ledger: Ledger) -> None:
    """A run finds work leased by a killed process on this host and finishes it."""
    job = make_job(5)

    @job.stage
    async def fetch(ctx: Context, partition: Partition) -> None:
        return None

    ledger.plan("test", "fetch", job.stages["fetch"].partitions)
    now = time.time()
    pid = _dead_pid()
    dead = f"{socket.gethostname()}:{pid}:old"
    ledger.register_worker(WorkerRecord(dead, "test", socket.gethostname(), pid, now, now, None))
    ledger.claim("test", "fetch", dead, limit=3, lease_seconds=3600, now=now, run_id="old")
    result = run_job(job, ledger)
    assert result.exit_code == ExitCode.OK
    assert ledger.counts("test", ["fetch"])["fetch"].done == 5


def test_work_of_a_live_foreign_worker_is_left_alone(ledger: Ledger) -> None:
    """Partitions leased by a live worker elsewhere are not taken while its lease holds
    (and the run, with work left, does not exit 0)."""
    job = make_job(3)

    @job.stage
    async def fetch(ctx: Context, partition: Partition) -> None:
        return None

    ledger.plan("test", "fetch", job.stages["fetch"].partitions)
    now = time.time()
    ledger.register_worker(WorkerRecord("other:1:x", "test", "other-host", 1, now, now, None))
    claims = ledger.claim(
        "test", "fetch", "other:1:x", limit=1, lease_seconds=3600, now=now, run_id="x"
    )
    result = run_job(job, ledger)
    counts = ledger.counts("test", ["fetch"])["fetch"]
    assert (counts.done, counts.running) == (2, 1)
    assert result.exit_code == ExitCode.FAILED
    assert ledger.complete("other:1:x", [Outcome(claims[0].id, Status.DONE)], now=now) == 1


def test_a_cancelled_caller_does_not_drop_a_queued_ledger_call(ledger: Ledger) -> None:
    """A ledger call queued behind a busy ledger thread still runs when its caller is
    cancelled (else a batch of outcomes could vanish at shutdown)."""
    job = make_job(1)

    @job.stage
    async def fetch(ctx: Context, partition: Partition) -> None:
        return None

    runner = Runner(job, ledger)
    ran: list[str] = []

    async def scenario() -> None:
        busy = asyncio.create_task(runner.db.call(time.sleep, 0.2))
        queued = asyncio.create_task(runner.db.call(ran.append, "complete"))
        await asyncio.sleep(0.01)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        await busy
        await asyncio.sleep(0.05)

    asyncio.run(scenario())
    assert ran == ["complete"]


def test_a_failing_ledger_stops_the_run_with_a_clear_error(ledger: Ledger) -> None:
    """When the ledger breaks mid-run the run ends with exit 2 and the cause, no traceback."""
    from backfill.errors import LedgerError

    job = make_job(5)

    @job.stage
    async def fetch(ctx: Context, partition: Partition) -> None:
        return None

    class Flaky:
        def __init__(self, inner: Ledger) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            if name == "claim":

                def broken(*args: Any, **kwargs: Any) -> Any:
                    raise LedgerError("state sqlite:///x.db: database is locked")

                return broken
            return getattr(self.inner, name)

    result = run_job(job, Flaky(ledger))  # type: ignore[arg-type]
    assert result.exit_code == ExitCode.USAGE
    assert "database is locked" in (result.message or "")


def test_run_job_can_swap_the_sink_without_touching_the_job(ledger: Ledger) -> None:
    """``run_job(job, sink=...)`` sends every stage's rows to that sink for one run only."""
    production = MemorySink(key=["day"])
    job = make_job(3, sink=production)

    @job.stage
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        return [{"day": partition.key}]

    in_memory = MemorySink(key=["day"])
    assert run_job(job, ledger, sink=in_memory).exit_code == ExitCode.OK
    assert len(in_memory.rows) == 3
    assert production.rows == {}
    assert job.stages["fetch"].sink is production


@pytest.mark.parametrize("wait", [False, True])
def test_a_worker_waits_for_leases_held_elsewhere_only_when_asked(
    ledger: Ledger, wait: bool
) -> None:
    """With wait_for_leases, partitions leased by a vanished worker are done after their
    lease expires; without it the run leaves them to their holder."""
    job = make_job(days=3, lease_seconds=0.4)

    @job.stage(concurrency=2)
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        return [{"day": partition.key}]

    ledger.plan("test", "fetch", job.partitions or [])
    ledger.claim(
        "test", "fetch", "vanished", limit=1, lease_seconds=0.4, now=time.time(), run_id="x"
    )
    started = time.monotonic()
    result = run_job(job, ledger, RunOptions(wait_for_leases=wait))
    counts = result.counts["fetch"]
    if wait:
        assert (counts.done, counts.running) == (3, 0)
        assert time.monotonic() - started >= 0.3
    else:
        assert (counts.done, counts.running) == (2, 1)


def test_a_worker_alone_never_waits_for_its_own_leases(ledger: Ledger) -> None:
    """With wait_for_leases and no other worker, the last outcomes are recorded before
    the worker looks for leases held elsewhere: it finishes without a lease poll's wait
    (unrecorded, its own running rows looked like another worker's)."""
    job = make_job(days=30)
    clock = RecordingClock()

    @job.stage(concurrency=4)
    async def fetch(ctx: Context, partition: Partition) -> None:
        return None

    result = run_job(job, ledger, RunOptions(wait_for_leases=True), clock=clock)
    assert result.counts["fetch"].done == 30
    # Lease polls are 50 ms to 2 s here; the heartbeat sleeps a third of the lease (20 s).
    assert [s for s in clock.sleeps if 0.05 <= s <= 2.0] == []


def test_waiting_for_another_workers_lease_polls_soon_then_backs_off(ledger: Ledger) -> None:
    """Leases held elsewhere are polled for after 50 ms, then twice as long each time,
    up to the lease poll: workers ending moments apart do not wait a whole poll."""
    job = make_job(days=2, lease_seconds=1.6)
    clock = RecordingClock()

    @job.stage(concurrency=2)
    async def fetch(ctx: Context, partition: Partition) -> None:
        return None

    ledger.plan("test", "fetch", job.partitions or [])
    ledger.claim("test", "fetch", "other", limit=1, lease_seconds=1.6, now=time.time(), run_id="x")
    result = run_job(job, ledger, RunOptions(wait_for_leases=True), clock=clock)
    assert result.counts["fetch"].done == 2
    # Heartbeats sleep until their own deadlines, a third of the lease apart (> 0.5 s).
    polls = [s for s in clock.sleeps if s <= 0.4]
    assert polls[:5] == [0.05, 0.1, 0.2, 0.4, 0.4]  # 0.4: the lease poll, lease / 4


@pytest.fixture
def zombie_pid() -> Iterator[int]:
    """The pid of a child that has exited and is not reaped yet (a zombie), reaped after."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    # Wait for the exit without reaping: the process stays a zombie until proc.wait().
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    try:
        yield proc.pid
    finally:
        proc.wait()


def test_a_zombie_process_is_not_alive(zombie_pid: int) -> None:
    """A process that has exited but is not reaped yet (state Z) counts as dead."""
    with open(f"/proc/{zombie_pid}/stat") as stat:
        assert stat.read().rpartition(")")[2].split()[0] == "Z"
    assert not pid_alive(zombie_pid)


def test_a_live_process_whose_name_holds_parentheses_is_alive(tmp_path: Path) -> None:
    """The state is read after the last ')' of /proc/PID/stat: a live process named
    'x) Z (y' is alive."""
    name = tmp_path / "x) Z (y"
    name.symlink_to(sys.executable)
    proc = subprocess.Popen(
        [str(name), "-c", "import sys; print('up', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "up\n"
        with open(f"/proc/{proc.pid}/stat") as stat:
            assert "(x) Z (y)" in stat.read()
        assert pid_alive(proc.pid)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait()
    assert not pid_alive(proc.pid)


def test_partitions_of_a_killed_local_worker_not_yet_reaped_are_reclaimed(
    ledger: Ledger, zombie_pid: int
) -> None:
    """Work leased by a killed process that is still a zombie is released and finished
    by the next run, which exits 0."""
    job = make_job(5)

    @job.stage
    async def fetch(ctx: Context, partition: Partition) -> None:
        return None

    ledger.plan("test", "fetch", job.stages["fetch"].partitions)
    now = time.time()
    dead = f"{socket.gethostname()}:{zombie_pid}:old"
    host = socket.gethostname()
    ledger.register_worker(WorkerRecord(dead, "test", host, zombie_pid, now, now, None))
    ledger.claim("test", "fetch", dead, limit=3, lease_seconds=3600, now=now, run_id="old")
    result = run_job(job, ledger)
    assert result.exit_code == ExitCode.OK, result.message
    assert ledger.counts("test", ["fetch"])["fetch"].done == 5


def _held_by_a_live_local_worker(ledger: Ledger, stage: str, limit: int) -> None:
    """Lease ``limit`` partitions of ``stage`` to a worker of this host whose process
    (this one) is alive."""
    now = time.time()
    host = socket.gethostname()
    holder = f"{host}:{os.getpid()}:holder"
    ledger.register_worker(WorkerRecord(holder, "test", host, os.getpid(), now, now, None))
    ledger.claim("test", stage, holder, limit=limit, lease_seconds=3600, now=now, run_id="h")


def test_a_run_never_exits_0_while_a_live_worker_holds_its_partitions(ledger: Ledger) -> None:
    """Partitions left running under a worker that looks alive: exit 1, and the message
    says how many are left and to run again."""
    job = make_job(5)

    @job.stage
    async def fetch(ctx: Context, partition: Partition) -> None:
        return None

    ledger.plan("test", "fetch", job.stages["fetch"].partitions)
    _held_by_a_live_local_worker(ledger, "fetch", 2)
    result = run_job(job, ledger)
    assert result.counts["fetch"].done == 3
    assert result.exit_code == ExitCode.FAILED
    assert result.message is not None
    assert "2 partition(s) left unfinished" in result.message
    assert "run the same command again" in result.message


def test_downstream_work_waiting_on_a_held_input_is_reported_as_left(ledger: Ledger) -> None:
    """A dependent partition waiting on an input another worker holds: exit 1 with what
    is left, not a wait for stages "(none)"."""
    job = make_job(3)

    @job.stage
    async def a(ctx: Context, partition: Partition) -> None:
        return None

    @job.stage(needs=[needs("a")])
    async def b(ctx: Context, partition: Partition) -> None:
        return None

    ledger.plan("test", "a", job.stages["a"].partitions)
    _held_by_a_live_local_worker(ledger, "a", 1)
    result = run_job(job, ledger)
    assert result.exit_code == ExitCode.FAILED
    assert result.message is not None
    assert "(none)" not in result.message
    assert "2 partition(s) left unfinished" in result.message


def test_a_stage_filling_the_disk_stops_the_run_at_once(ledger: Ledger) -> None:
    """OSError ENOSPC from a stage is fatal, not a retried network error: one attempt,
    exit 2, and the message names the file."""
    import errno

    job = make_job(3)
    calls: list[str] = []

    @job.stage(retry=FAST)
    async def fetch(ctx: Context, partition: Partition) -> None:
        calls.append(partition.key)
        raise OSError(errno.ENOSPC, "No space left on device", "/data/tmp.bin")

    result = run_job(job, ledger, RunOptions(concurrency=1))
    assert result.exit_code == ExitCode.USAGE
    assert result.message == "disk full writing /data/tmp.bin; free space and run again"
    assert len(calls) == 1
    assert result.counts["fetch"].failed == 0


@pytest.mark.parametrize("call", ["plan", "complete", "finish_run"])
def test_a_ledger_that_fails_at_start_or_end_still_gives_a_fatal_result(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    """The ledger refusing writes (e.g. a full disk) while the run plans, records its
    last outcomes or records its end: a result all the same (for the summary), fatal,
    exit 2, with the ledger's one sentence."""
    from backfill.errors import LedgerError

    job = make_job(3)

    @job.stage
    async def fetch(ctx: Context, partition: Partition) -> None:
        return None

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise LedgerError("disk full writing /data/state.db; free space and run again")

    monkeypatch.setattr(ledger, call, refuse)
    result = run_job(job, ledger)
    assert result.exit_code == ExitCode.USAGE
    assert result.message == "disk full writing /data/state.db; free space and run again"


@pytest.mark.parametrize("fills_at", ["begin", "claim"])
def test_a_disk_that_fills_while_a_batch_is_claimed_ahead_leaves_no_stray_error(
    ledger: Ledger, caplog: pytest.LogCaptureFixture, fills_at: str
) -> None:
    """The ledger refusing writes once the first batch is claimed (the next one claimed
    ahead while the first begins): exit 2 with the ledger's sentence, and nothing left
    behind for asyncio to report (a task's error never retrieved prints a traceback)."""
    import gc
    import logging

    from backfill.errors import LedgerError

    job = make_job(31)

    @job.stage(concurrency=1)
    async def fetch(ctx: Context, partition: Partition) -> None:
        await asyncio.sleep(0)

    full = "disk full writing /data/state.db; free space and run again"

    class Filling:
        def __init__(self, inner: Ledger) -> None:
            self.inner = inner
            self.claims = 0

        def claim(self, *args: Any, **kwargs: Any) -> Any:
            self.claims += 1
            if self.claims > 1:
                raise LedgerError(full)
            return self.inner.claim(*args, **kwargs)

        def begin(self, *args: Any, **kwargs: Any) -> Any:
            if fills_at == "begin":
                time.sleep(0.05)  # the claim ahead has failed by now
                raise LedgerError(full)
            return self.inner.begin(*args, **kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    filling = Filling(ledger)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        result = run_job(job, filling)  # type: ignore[arg-type]
        gc.collect()
    assert filling.claims >= 2
    assert result.exit_code == ExitCode.USAGE
    assert result.message == full
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


def test_a_run_that_cannot_give_back_its_partitions_is_not_recorded_as_stopped(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk full when a stopping run gives back the partitions it still held (the
    write of a few bytes after it may still fit): the worker is not recorded as stopped,
    so the next run on this host, the process gone, takes them back at once. Recorded
    as stopped, it held them for a whole lease: the next run found every one "leased by
    another worker" and exited 1."""
    import backfill.engine.lease
    from backfill.errors import FatalError, LedgerError

    job = make_job(8)
    full = "disk full writing /data/state.db; free space and run again"

    class Filling:
        """Refuses every call once the disk is full, but the one that marks a worker
        stopped (a few bytes that still fit)."""

        def __init__(self, inner: Ledger) -> None:
            self.inner = inner
            self.full = False

        def __getattr__(self, name: str) -> Any:
            if self.full and name != "stop_worker":

                def refuse(*args: Any, **kwargs: Any) -> Any:
                    raise LedgerError(full)

                return refuse
            return getattr(self.inner, name)

    filling = Filling(ledger)

    slow = [True]

    @job.stage(concurrency=4)
    async def fetch(ctx: Context, partition: Partition) -> None:
        if slow[0] and partition.key == "2013-01-01":
            await asyncio.sleep(0.05)  # the others are begun by then
            filling.full = True
            raise FatalError(full)
        await asyncio.sleep(5.0 if slow[0] else 0.0)

    first = run_job(job, filling)  # type: ignore[arg-type]
    assert first.exit_code == ExitCode.USAGE
    assert ledger.counts("test", ["fetch"])["fetch"].running > 0
    (worker,) = ledger.workers("test", active_only=False)
    assert worker.stopped_at is None

    # The first run's process is gone (here: the same one, said to be).
    monkeypatch.setattr(backfill.engine.lease, "pid_alive", lambda pid: pid != worker.pid)
    slow[0] = False
    again = run_job(job, ledger)
    assert again.exit_code == ExitCode.OK, again.message
    assert ledger.counts("test", ["fetch"])["fetch"].done == 8


def test_a_group_runner_whose_begin_fails_after_a_stall_stops_the_run_cleanly(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    """A stage without sinks runs its fast partitions in groups, one runner per slot. A
    stall (a VM pause) past a lease's certain span makes the runner begin the rest of its
    group again; the ledger refusing that call (a full disk) ends the run with exit 2 and
    the ledger's sentence, and nothing is left for asyncio to report."""
    import gc
    import logging

    from backfill.errors import LedgerError

    full = "disk full writing /data/state.db; free space and run again"

    class JumpClock(SystemClock):
        offset = 0.0

        def monotonic(self) -> float:
            return super().monotonic() + self.offset

    class Filling:
        def __init__(self, inner: Ledger) -> None:
            self.inner = inner
            self.full = False

        def begin(self, *args: Any, **kwargs: Any) -> Any:
            if self.full:
                raise LedgerError(full)
            return self.inner.begin(*args, **kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    job = Job("test", partitions=daily("2013-01-01", "2013-06-30"))
    clock = JumpClock()
    filling = Filling(ledger)
    seen: list[str] = []

    @job.stage(concurrency=1)
    async def fetch(ctx: Context, partition: Partition) -> None:
        seen.append(partition.key)
        if len(seen) == 40:
            clock.offset += 10_000.0  # the stall
            filling.full = True
        await asyncio.sleep(0)

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        result = run_job(job, filling, clock=clock)  # type: ignore[arg-type]
        gc.collect()
    assert result.exit_code == ExitCode.USAGE
    assert result.message == full
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            OSError(28, "No space left on device", "/data/rows.bin"),
            "disk full writing /data/rows.bin; free space and run again",
        ),
        (ValueError("bad settings"), "cannot open memory sink memory: bad settings"),
    ],
    ids=["disk-full", "any-error"],
)
def test_a_sink_that_cannot_connect_ends_the_run_with_one_sentence(
    ledger: Ledger, error: Exception, message: str
) -> None:
    """A sink whose connect raises (its file on a full disk, or anything a custom sink
    may raise): exit 2 with one sentence that names the file or the sink, nothing run,
    and the run on record as ended (it stayed 'running', the error escaping the run)."""

    class Unreachable(MemorySink):
        def connect(self) -> Any:
            raise error

    job = make_job(3, sink=Unreachable(key=["day"]))
    ran: list[str] = []

    @job.stage
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        ran.append(partition.key)
        return [{"day": partition.key}]

    result = run_job(job, ledger)
    assert result.exit_code == ExitCode.USAGE
    assert result.message == message
    assert ran == []
    assert all(run.status != "running" for run in ledger.runs("test"))


def test_the_first_fatal_error_is_the_one_said_when_the_ledger_fails_after_it(
    ledger: Ledger,
) -> None:
    """A sink's file and the state on one disk that fills: the sink's write fails first
    (the run's cause, said as it stops), then the ledger's next call. The run ends
    naming the sink's file, not the ledger's."""
    from backfill.errors import LedgerError

    class FullSink(MemorySink):
        def write(self, conn: Any, batch: Any) -> int:
            filling.full = True
            raise SinkError("disk full writing /data/rows.db; free space and run again")

    class Filling:
        def __init__(self, inner: Ledger) -> None:
            self.inner = inner
            self.full = False

        def claim(self, *args: Any, **kwargs: Any) -> Any:
            time.sleep(0.02)  # the disk fills while the ledger claims
            if self.full:
                raise LedgerError("disk full writing /data/state.db; free space and run again")
            return self.inner.claim(*args, **kwargs)

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

    filling = Filling(ledger)
    job = make_job(31, sink=FullSink(key=["day"]))

    @job.stage(concurrency=2)
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        await asyncio.sleep(0.01)
        return [{"day": partition.key}]

    result = run_job(job, filling)  # type: ignore[arg-type]
    assert result.exit_code == ExitCode.USAGE
    assert result.message == "disk full writing /data/rows.db; free space and run again"


def test_a_worker_taken_for_dead_while_it_stalled_is_listed_again_once_it_beats(
    ledger: Ledger,
) -> None:
    """A worker silent past its lease (a stall) is marked stopped by another's reaper.
    Once awake it goes on working, and its next heartbeat puts it back among the active
    workers: status shows it, and a fleet's concurrency shares count it (without it,
    the others split the whole limit among themselves while it sends too)."""
    job = make_job(days=2, lease_seconds=0.3)
    listed: list[list[str]] = []

    @job.stage(concurrency=1)
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        if not listed:
            (me,) = [w.id for w in ledger.workers("test")]
            ledger.stop_worker(me, now=time.time())  # another worker's reaper
            listed.append([w.id for w in ledger.workers("test")])
            await asyncio.sleep(0.3)  # a heartbeat comes every 0.1 s
            listed.append([w.id for w in ledger.workers("test")])
        return [{"day": partition.key}]

    result = run_job(job, ledger)
    assert result.exit_code == 0, result.message
    assert listed[0] == [], "the reaper's mark holds until the worker beats"
    assert len(listed[1]) == 1, "a worker that beats is active, whatever the reaper said"
    assert ledger.workers("test") == [], "the run's own end still records it stopped"


@pytest.mark.parametrize(
    "junk",
    [
        '{"api": {"declared": "15/s", "adaptive": false, "settled": 1' + "0" * 400 + "}}",
        "[" * 100_000 + "]" * 100_000,
        "not json",
        '{"api": "fast"}',
        "[1, 2]",
    ],
    ids=["huge-int", "deep", "not-json", "not-a-state", "not-a-map"],
)
def test_a_run_starts_afresh_whatever_a_worker_left_on_record_for_its_resources(
    ledger: Ledger, junk: str
) -> None:
    """The state a run reads back to start its resources where the last run left them
    (a ledger edited by hand, or by a bug): junk is ignored and the run starts afresh
    (an integer of 400 digits, or JSON nested 100,000 deep, crashed every later run at
    its start, each leaving its worker on record as running)."""
    job = make_job(days=2)
    api = job.resource("api", rate=15)

    @job.stage(resource="api")
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        return [{"day": partition.key}]

    ledger.register_worker(WorkerRecord("old", "test", "h", 1, 10.0, 10.0, None))
    ledger.heartbeat("old", now=20.0, resources=junk)
    ledger.stop_worker("old", now=21.0)
    result = run_job(job, ledger)
    assert result.exit_code == 0, result.message
    assert not api.resumed


def test_a_run_that_learned_nothing_leaves_what_the_runs_before_learned(ledger: Ledger) -> None:
    """The latest record of a resource says nothing to start from (that run ended as the
    source was down, or was a fleet's): the record before it stands (it sent the next
    run back to its declared 15/s and the 429s that took it down)."""
    import json

    job = make_job(days=2)
    api = job.resource("api", rate=15, burst=1)

    @job.stage(resource="api")
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        return [{"day": partition.key}]

    now = time.time()
    for worker, at, settled in (("w1", now - 20.0, 4.84), ("w2", now - 10.0, None)):
        ledger.register_worker(WorkerRecord(worker, "test", "h", 1, at, at, None))
        state = {"api": {"declared": "15/s", "adaptive": False, "settled": settled}}
        ledger.heartbeat(worker, now=at, resources=json.dumps(state))
        ledger.stop_worker(worker, now=at + 1)
    seen: list[float] = []

    @job.stage(resource="api", name="look")
    async def look(ctx: Context, partition: Partition) -> None:
        seen.append(api.rate)

    result = run_job(job, ledger)
    assert result.exit_code == 0, result.message
    assert api.resumed and min(seen) == pytest.approx(4.84, abs=0.01)


def test_what_a_run_learned_a_week_ago_is_not_started_from(ledger: Ledger) -> None:
    """A source may have changed in a week, and no run since said it had not."""
    import json

    job = make_job(days=2)
    api = job.resource("api", rate=15, burst=1)

    @job.stage(resource="api")
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        return [{"day": partition.key}]

    at = time.time() - 8 * 86400
    ledger.register_worker(WorkerRecord("w1", "test", "h", 1, at, at, None))
    state = {"api": {"declared": "15/s", "adaptive": False, "settled": 4.84}}
    ledger.heartbeat("w1", now=at, resources=json.dumps(state))
    ledger.stop_worker("w1", now=at + 1)
    assert run_job(job, ledger).exit_code == 0
    assert not api.resumed


@pytest.mark.parametrize(
    "other", ["none", "beside", "crashed", "between_beats", "crashed_lately", "stopped_before"]
)
def test_a_worker_that_shared_its_run_with_another_leaves_nothing_to_start_from(
    ledger: Ledger, other: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers of a fleet on a SQLite file each learn their own share of a source (two
    adaptive workers on one 100/s source recorded 28 and 72): one that another worker
    worked beside leaves nothing to start from. Beside it: one that beat during the run,
    one still running whose last beat came before the run began (it beats every third
    of its lease: a run between two of its beats took its share for the whole source),
    and one that crashed within a lease before it (it may have run on until its lease
    ran out). Alone, or after a worker that stopped before it began or crashed a lease
    and more before, it leaves what it learned."""
    import json

    from backfill.ratelimit.adaptive import AdaptiveRate

    monkeypatch.setattr(AdaptiveRate, "settled", lambda self: 4.8)  # it learned 4.8/s
    job = make_job(days=2)
    job.resource("api", rate=15, burst=1)
    now = time.time()
    # When the other worker began and last beat (the job's lease is 60 s).
    began = {"crashed": now - 90, "between_beats": now - 10, "crashed_lately": now - 50}
    if other != "none":
        at = began.get(other, now - 90)
        ledger.register_worker(WorkerRecord("other", "test", "elsewhere", 1, at, at, None))
    if other == "stopped_before":
        ledger.stop_worker("other", now=now - 5)

    @job.stage(resource="api")
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        if other == "beside":
            ledger.heartbeat("other", now=time.time())
        return [{"day": partition.key}]

    assert run_job(job, ledger).exit_code == 0
    left = [json.loads(r)["api"]["settled"] for _, r in ledger.resource_states("test")]
    shared = other in ("beside", "between_beats", "crashed_lately")
    assert left == ([None] if shared else [4.8]), left
