"""The writer batches partitions' rows into few transactions, but never holds a batch
that nothing more can join: the run's last partitions are written at once."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from backfill import Job, Runner, daily
from backfill import writer as writer_module
from backfill.ledger import open_ledger
from backfill.sinks import table


def test_the_last_partitions_of_a_downstream_stage_are_not_held_for_a_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch may wait for more rows only while some partition in flight could still
    bring them: with a batching delay of a minute, a run of two stages (the second
    waits for the first) still ends as soon as its work is done."""
    monkeypatch.setattr(writer_module, "MAX_DELAY", 60.0)
    db = tmp_path / "out.db"
    job = Job("batches", partitions=daily("2013-01-01", "2013-01-12"))

    @job.stage(resource=None, concurrency=4, sink=table(f"sqlite:///{db}", "days", key=["day"]))
    async def days(ctx: object, partition: object) -> list[dict[str, object]]:
        await asyncio.sleep(0.01)
        return [{"day": str(partition)}]

    @job.stage(
        resource=None,
        concurrency=4,
        needs=["days"],
        sink=table(f"sqlite:///{db}", "sums", key=["day"]),
    )
    async def sums(ctx: object, partition: object) -> list[dict[str, object]]:
        return [{"day": str(partition), "n": 1}]

    async def run() -> object:
        ledger = open_ledger(":memory:")
        # Far under the delay: a batch held for it fails the test instead of hanging it.
        return await asyncio.wait_for(Runner(job, ledger).run(), timeout=20.0)

    result = asyncio.run(run())
    assert result.exit_code == 0, result.message
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM days").fetchone() == (12,)
        assert conn.execute("SELECT count(*) FROM sums").fetchone() == (12,)


def test_a_batch_waits_for_partitions_still_in_flight_and_no_longer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two partitions in flight: the first one's rows wait for the second's (one
    transaction for both, not one each); once the second ends without writing, they are
    written at once."""
    monkeypatch.setattr(writer_module, "MAX_DELAY", 60.0)
    sink = table(f"sqlite:///{tmp_path / 'out.db'}", "days", key=["day"])
    first, second = list(daily("2013-01-01", "2013-01-02"))

    def rows(partition: object) -> dict[str, list[dict[str, object]]]:
        return {"days": [{"day": str(partition)}]}

    async def scenario() -> tuple[bool, int]:
        writer = writer_module.SinkWriter("me")
        await writer.open([sink])
        (destination,) = writer.destinations.values()
        for _ in range(3):
            writer.began()
        one = asyncio.create_task(writer.write([sink], first, rows(first), None, first=True))
        two = asyncio.create_task(writer.write([sink], second, rows(second), None, first=True))
        await asyncio.sleep(0.2)
        held = not one.done() and not two.done()
        writer.ended()  # the third partition ends without rows: nothing more can join
        await asyncio.wait_for(asyncio.gather(one, two), timeout=10.0)
        writer.ended()
        writer.ended()
        await writer.close()
        return held, destination.transactions

    held, transactions = asyncio.run(scenario())
    assert held, "the batch was written while a partition in flight could still join it"
    assert transactions == 1
