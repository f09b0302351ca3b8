"""The run log without -v: partitions done summed up, failures and retries line by line."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from backfill import Context, Job, Partition, PermanentError, RetryPolicy, TransientError, daily
from backfill.events import EventBus, PartitionFinished, Tick
from backfill.ledger import Status
from backfill.logs import EventLog, configure_logging
from backfill.testing import run_job


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """JSON lines at INFO into a string; the root and backfill loggers restored after."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLogger("backfill").level)
    text = io.StringIO()
    configure_logging("json", level=logging.INFO, stream=text)
    yield text
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    logging.getLogger("backfill").setLevel(saved[2])


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def flaky_job() -> Job:
    job = Job("batched", partitions=daily("2013-01-01", "2013-01-20"))
    tried: set[str] = set()

    @job.stage(retry=RetryPolicy(attempts=2, base=0.0))
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, str]]:
        if partition.key == "2013-01-05":
            raise PermanentError("no such day", category="gone")
        if partition.key == "2013-01-09" and partition.key not in tried:
            tried.add(partition.key)
            raise TransientError("busy", category="busy")
        return [{"day": partition.key}]

    return job


def test_done_partitions_are_summed_and_every_failure_and_retry_keeps_its_line(
    stream: io.StringIO,
) -> None:
    """19 done days become `partitions done` lines adding up to 19 with their records;
    the failed day and the retry have a line each; no start line is written."""
    bus = EventBus()
    bus.subscribe(EventLog(each_partition=False))
    run_job(flaky_job(), bus=bus)
    log = lines(stream)
    summed = [x for x in log if x["event"] == "partitions done"]
    assert summed, log
    assert sum(int(str(x["count"])) for x in summed) == 19
    assert sum(int(str(x["records"])) for x in summed) == 19
    assert {x["stage"] for x in summed} == {"fetch"}
    assert all(x["partition"] is None for x in summed)
    assert [x["partition"] for x in log if x["event"] == "partition failed"] == ["2013-01-05"]
    assert [x["partition"] for x in log if x["event"] == "partition retrying"] == ["2013-01-09"]
    assert not [x for x in log if x["event"] in ("partition done", "partition started")]
    # The summary comes before the run's last line.
    assert log[-1]["event"] == "run finished"


def test_each_partition_restores_a_line_per_partition_done(stream: io.StringIO) -> None:
    """With each_partition (what -v asks for), every day done has its own line."""
    bus = EventBus()
    bus.subscribe(EventLog(each_partition=True))
    run_job(flaky_job(), bus=bus)
    done = [x["partition"] for x in lines(stream) if x["event"] == "partition done"]
    assert len(done) == 19
    assert not [x for x in lines(stream) if x["event"] == "partitions done"]


def test_a_tick_writes_what_was_counted_since_the_last_line(stream: io.StringIO) -> None:
    """Each tick writes one line per stage with what finished since the one before; a
    tick with nothing new writes nothing."""
    events = EventLog(each_partition=False)
    for day in ("2013-01-01", "2013-01-02", "2013-01-03"):
        events(PartitionFinished("a", day, Status.DONE, 2, 0.5, 1))
    events(PartitionFinished("b", "2013-01-01", Status.DONE, 1, 0.25, 1))
    events(Tick(0.0))
    events(Tick(1.0))
    events(PartitionFinished("a", "2013-01-04", Status.DONE, 0, 0.5, 1))
    events(Tick(2.0))
    summed = [(x["stage"], x["count"], x["records"], x["first"], x["last"]) for x in lines(stream)]
    assert summed == [
        ("a", 3, 6, "2013-01-01", "2013-01-03"),
        ("b", 1, 1, "2013-01-01", "2013-01-01"),
        ("a", 1, 0, "2013-01-04", "2013-01-04"),
    ]
