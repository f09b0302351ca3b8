"""The run's own cost on the event loop: the TLS context the first HTTP client needs is
made while the run plans."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_a_run_with_an_http_resource_makes_the_tls_context_while_it_plans() -> None:
    """The CA bundle (~20 ms, loaded outside the GIL) is loaded on a thread of its own
    as the run starts, not on the loop in front of its first requests; a fresh process
    shows it."""
    out = _fresh_process(
        """
        job.resource("api", rate=10)

        @job.stage(resource="api")
        async def fetch(ctx: Context, partition: Partition):
            # No client made: the stage asks nothing of ctx.http.
            for _ in range(200):
                if http._ssl is not None:
                    break
                await asyncio.sleep(0.01)
            seen.append(http._ssl is not None)
            return [{"d": partition.key}]
        """
    )
    assert out == ["True"]


def test_a_run_without_http_resources_loads_no_ca_bundle() -> None:
    out = _fresh_process(
        """
        @job.stage()
        async def fetch(ctx: Context, partition: Partition):
            await asyncio.sleep(0.2)
            seen.append(http._ssl is not None)
            return [{"d": partition.key}]
        """
    )
    assert out == ["False"]


def _fresh_process(stages: str) -> list[str]:
    """What the stages of a one-day job appended to ``seen``, run in a new process."""
    script = (
        textwrap.dedent(
            """
        import asyncio
        import backfill.sources.http as http
        from backfill import Context, Job, Partition, daily
        from backfill.ledger import open_ledger
        from backfill.runner import Runner
        from backfill.testing import MemorySink

        job = Job("warm", partitions=daily("2013-01-01", "2013-01-01"), sink=MemorySink(key=["d"]))
        seen = []
        """
        )
        + textwrap.dedent(stages)
        + textwrap.dedent(
            """
        assert http._ssl is None
        result = asyncio.run(Runner(job, open_ledger(":memory:")).run())
        assert result.exit_code == 0, result.message
        print(*seen)
        """
        )
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_runs_one_after_another_in_one_process_leave_their_garbage_to_the_collector() -> None:
    """A scheduler or a notebook runs jobs again and again in one process: each finished
    run is collected. (Freezing the heap for a run's length, tried to spare the loop the
    collector's full passes, kept every finished run: gc.freeze() resets the collector's
    counts, so small runs never reached a full collection.)"""
    import asyncio
    import weakref

    from backfill import Context, Job, Partition, daily
    from backfill.ledger import open_ledger
    from backfill.runner import Runner
    from backfill.testing import MemorySink

    refs = []
    for _ in range(100):
        job = Job("loop", partitions=daily("2013-01-01", "2013-01-02"), sink=MemorySink(key=["d"]))

        @job.stage()
        async def fetch(ctx: Context, partition: Partition) -> list[dict[str, str]]:
            return [{"d": partition.key}]

        runner = Runner(job, open_ledger(":memory:"))
        refs.append(weakref.ref(runner))
        assert asyncio.run(runner.run()).exit_code == 0
        del runner, job, fetch
    kept = sum(ref() is not None for ref in refs)
    assert kept < 25, f"{kept} of 100 finished runs still held"
