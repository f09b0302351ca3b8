"""Through the real Runner, any call takes a resource's slot: `ctx.slot()` in any stage."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from backfill import Context, Job, Partition, daily
from backfill.testing import run_job


class Inside:
    """Counts the calls inside a block at once, from any thread, and the most seen."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0
        self.calls = 0

    def enter(self) -> None:
        with self.lock:
            self.now += 1
            self.calls += 1
            self.most = max(self.most, self.now)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1


def test_a_def_stage_never_has_more_calls_inside_than_the_resources_concurrency():
    """A plain def stage with 8 threads, through `with ctx.slot()`: at most 3 inside at once."""
    job = Job("warehouse_totals", partitions=daily("2013-01-01", "2013-01-30"))
    job.resource("warehouse", concurrency=3)
    inside = Inside()

    @job.stage(resource="warehouse", concurrency=8)
    def totals(ctx: Context, partition: Partition) -> list[dict[str, object]]:
        with ctx.slot("warehouse"):
            inside.enter()
            time.sleep(0.02)  # a query the warehouse runs
            inside.leave()
        return [{"day": partition.key}]

    result = run_job(job)
    assert result.exit_code == 0
    assert inside.calls == 30
    assert inside.most == 3


def test_an_async_stage_takes_its_own_resources_slot_by_default():
    """`async with ctx.slot()` in an async stage holds the stage's resource: at most 2 inside."""
    job = Job("pages", partitions=daily("2013-01-01", "2013-01-20"))
    job.resource("browser", concurrency=2)
    inside = Inside()

    @job.stage(resource="browser", concurrency=10)
    async def render(ctx: Context, partition: Partition) -> None:
        async with ctx.slot():
            inside.enter()
            await asyncio.sleep(0.02)  # a page the browser renders
            inside.leave()

    assert run_job(job).exit_code == 0
    assert inside.calls == 20
    assert inside.most == 2


def test_a_slot_released_by_an_error_lets_the_others_through():
    """A call failing inside its slot gives the slot back: the run still finishes the rest."""
    job = Job("flaky_queries", partitions=daily("2013-01-01", "2013-01-06"))
    job.resource("warehouse", concurrency=1)
    failed: set[str] = set()

    @job.stage(resource="warehouse", concurrency=3)
    def totals(ctx: Context, partition: Partition) -> None:
        with ctx.slot():
            if partition.key.endswith("02") and partition.key not in failed:
                failed.add(partition.key)
                raise ConnectionError("warehouse went away")

    result = run_job(job)
    assert result.exit_code == 0
    assert failed == {"2013-01-02"}


def test_a_plugged_in_client_kind_is_made_once_per_run_and_closed_at_its_end(
    monkeypatch: pytest.MonkeyPatch,
):
    """`ctx.client("warehouse")` through the real Runner: one client for every partition of
    the run, bound to the stage's resource, closed when the run ends."""
    from backfill.sources import clients

    made: list[FakeWarehouse] = []

    class FakeWarehouse:
        def __init__(self, resource: object) -> None:
            self.resource = resource
            self.queries = 0
            self.closed = False

        def query(self) -> int:
            self.queries += 1
            return self.queries

        async def aclose(self) -> None:
            self.closed = True

    def factory(job: object, resource: object, clock: object) -> FakeWarehouse:
        made.append(FakeWarehouse(resource))
        return made[-1]

    monkeypatch.setitem(clients._KINDS, "warehouse", factory)
    job = Job("warehouse_client", partitions=daily("2013-01-01", "2013-01-12"))
    job.resource("warehouse", concurrency=4)

    @job.stage(resource="warehouse", concurrency=4)
    def totals(ctx: Context, partition: Partition) -> list[dict[str, object]]:
        with ctx.slot():
            return [{"day": partition.key, "n": ctx.client("warehouse").query()}]

    result = run_job(job)
    assert result.exit_code == 0
    assert len(made) == 1
    assert made[0].resource is job.resources["warehouse"]
    assert made[0].queries == 12
    assert made[0].closed
