"""The run's own cost on the event loop: the collector kept off what the run started
with, and the TLS context the first HTTP client needs made while the run plans."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest

from backfill import Context, Job, Partition, daily
from backfill.engine.heap import frozen_heap
from backfill.ledger import open_ledger
from backfill.testing import MemorySink, run_job


@pytest.fixture(autouse=True)
def _nothing_frozen() -> Any:
    # Each test starts from a heap nobody froze, and leaves one.
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_what_existed_before_a_run_is_frozen_while_it_runs_and_given_back_after() -> None:
    """A full collection scans every object the process holds: 13-18 ms at a time in the
    demo, each a stall of the event loop (one fell on the critical path of the run's
    start). The objects there before the run are out of its view until the run ends."""
    kept: list[object] = [object() for _ in range(10)]
    assert gc.get_freeze_count() == 0
    frozen_inside: list[int] = []
    job = Job("heap", partitions=daily("2013-01-01", "2013-01-03"), sink=MemorySink(key=["d"]))

    @job.stage()
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        frozen_inside.append(gc.get_freeze_count())
        return [{"d": partition.key}]

    result = run_job(job, open_ledger(":memory:"))
    assert result.exit_code == 0
    assert len(frozen_inside) == 3
    assert min(frozen_inside) > len(kept), frozen_inside
    assert gc.get_freeze_count() == 0, "the run must give the heap back to the collector"


def test_garbage_made_of_what_a_run_started_with_is_collected_after_it() -> None:
    """A cycle among objects frozen at the start that turns to garbage during the run is
    not leaked: it is collected once the run has ended."""

    class Node:
        other: Any = None

    a, b = Node(), Node()
    a.other, b.other = b, a
    collected = threading.Event()
    import weakref

    weakref.finalize(a, collected.set)
    with frozen_heap():
        del a, b
        gc.collect()
        assert not collected.is_set(), "frozen objects are out of the collector's view"
    gc.collect()
    assert collected.is_set(), "given back after the run, the cycle is collected"


def test_runs_nested_or_side_by_side_freeze_once_and_the_last_gives_back() -> None:
    with frozen_heap():
        first = gc.get_freeze_count()
        assert first > 0
        with frozen_heap():
            assert gc.get_freeze_count() >= first
        assert gc.get_freeze_count() >= first, "the outer run still holds the heap frozen"
    assert gc.get_freeze_count() == 0


def test_a_heap_the_process_froze_itself_is_left_as_it_is() -> None:
    """A server that froze its heap before forking workers keeps it frozen: the run
    neither adds to it nor unfreezes it."""
    gc.freeze()
    before = gc.get_freeze_count()
    with frozen_heap():
        assert gc.get_freeze_count() == before
    assert gc.get_freeze_count() == before


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
