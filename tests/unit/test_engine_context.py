"""The context a stage receives: every field the engine fills in for a partition's
attempt (the engine builds it positionally, for speed, so each one is pinned here)."""

from __future__ import annotations

import asyncio
from typing import Any

from backfill import Context, Job, Partition, RetryPolicy, TransientError, daily
from backfill.context import RunCache, StageLog
from backfill.testing import MemorySink, run_job


def test_each_attempt_gets_its_partition_run_log_resource_checkpoint_and_services() -> None:
    """Every field of a stage's context holds what it names: the partition, job, stage,
    run, attempt, the run's cache, a log bound to the partition, the stage's resource,
    the checkpoint saved by the attempt before, the clients and the running loop; and
    ctx.write, ctx.save_checkpoint, ctx.prove_lease and ctx.count_records reach the
    engine."""
    job = Job("context", partitions=daily("2013-01-01", "2013-01-02"))
    job.resource("api", rate="1000/s")
    sink = MemorySink(["day", "page"])
    seen: list[dict[str, Any]] = []

    @job.stage(sink=sink, resource="api", retry=RetryPolicy(attempts=2, base=0.0))
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, object]]:
        seen.append(
            {
                "partition": ctx.partition,
                "job": ctx.job,
                "stage": ctx.stage,
                "run_id": ctx.run_id,
                "attempt": ctx.attempt,
                "cache": ctx.cache,
                "log": ctx.log,
                "resource": ctx._resource,
                "checkpoint": ctx.checkpoint,
                "clients": ctx._clients,
                "loop": ctx._loop,
            }
        )
        if ctx.attempt == 1:
            await ctx.write([{"day": partition.key, "page": 1}])
            await ctx.save_checkpoint(f"{partition.key}:page-2")
            raise TransientError("busy", category="busy")
        await ctx.prove_lease()
        ctx.count_records(3)
        return [{"day": partition.key, "page": 2}]

    result = run_job(job)
    assert result.exit_code == 0, result
    assert len(seen) == 4
    for day in ("2013-01-01", "2013-01-02"):
        first, second = (s for s in seen if s["partition"].key == day)
        assert first["partition"] == job.partitions.get(day)
        assert [first["attempt"], second["attempt"]] == [1, 2]
        assert first["checkpoint"] is None
        assert second["checkpoint"] == f"{day}:page-2"
        for ctx in (first, second):
            assert (ctx["job"], ctx["stage"], ctx["resource"]) == ("context", "fetch", "api")
            assert ctx["run_id"] == result.run_id
            assert isinstance(ctx["cache"], RunCache) and ctx["cache"] is seen[0]["cache"]
            assert isinstance(ctx["log"], StageLog)
            assert ctx["log"].extra == {"run_id": result.run_id, "stage": "fetch", "partition": day}
            assert ctx["clients"] is seen[0]["clients"] is not None
            assert isinstance(ctx["loop"], asyncio.AbstractEventLoop)
    # The page written before the retry, then the returned row; each second attempt's
    # records are its row and the three it counted.
    assert sorted(sink.rows) == [
        ("2013-01-01", 1),
        ("2013-01-01", 2),
        ("2013-01-02", 1),
        ("2013-01-02", 2),
    ]
    assert result.records == 2 * (1 + 3)
