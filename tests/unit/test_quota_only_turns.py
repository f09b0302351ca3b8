"""A resource of a concurrency and a quota only (a warehouse's 15 queries at once, 2,000 a
day) hands out turns as fast as its pool allows until the quota is spent: the quota is
no rate to space its starts by."""

from __future__ import annotations

import asyncio

from backfill.ratelimit import Resource


def test_quota_only_resource_is_not_spaced_at_the_quotas_rate() -> None:
    """6/day with concurrency 2: six turns are handed out at once, the seventh waits."""
    resource = Resource("warehouse", concurrency=2, limits=["6/day"])
    got: list[int] = []

    async def one(i: int) -> None:
        async with resource.turn():
            got.append(i)
            await asyncio.sleep(0.01)

    async def go() -> None:
        tasks = [asyncio.create_task(one(i)) for i in range(7)]
        done, pending = await asyncio.wait(tasks, timeout=5.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        assert len(done) == 6

    asyncio.run(go())
    assert sorted(got) == list(range(6))
