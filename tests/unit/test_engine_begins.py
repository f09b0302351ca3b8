"""Begin marks: one ledger call for a fast stage's many partitions, a slow stage's none
begun before a slot is free for it."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from pathlib import Path

from backfill import Context, Job, Partition, daily
from backfill.ledger import Ledger, open_ledger
from backfill.testing import run_job


class CountingLedger:
    """A ledger that remembers the size of every begin call."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self.begins: list[int] = []

    def begin(self, owner: str, leases: Sequence[tuple[int, int]]) -> set[int]:
        self.begins.append(len(leases))
        return self._ledger.begin(owner, leases)

    def __getattr__(self, name: str) -> object:
        return getattr(self._ledger, name)


def test_a_fast_stage_begins_many_partitions_per_ledger_call(tmp_path: Path) -> None:
    """3,000 no-op partitions at concurrency 2 take far fewer begin calls than one per
    two partitions (the slots' worth), each partition begun exactly once."""
    job = Job("fast", partitions=daily("2000-01-01", "2008-03-18"))

    @job.stage(concurrency=2)
    async def noop(ctx: Context, partition: Partition) -> None:
        return None

    ledger = CountingLedger(open_ledger(f"sqlite:///{tmp_path / 'state.db'}"))
    result = run_job(job, ledger)  # type: ignore[arg-type]
    assert result.counts["noop"].done == 3000
    assert sum(ledger.begins) == 3000
    assert len(ledger.begins) < 3000 / 2 / 4, ledger.begins


def test_a_slow_stage_begins_only_partitions_with_a_free_slot(tmp_path: Path) -> None:
    """Partitions taking 60 ms (longer than the begin look-ahead) at concurrency 2: no
    begin call marks more than the two that can start at once."""
    job = Job("slow", partitions=daily("2013-01-01", "2013-01-24"))

    @job.stage(concurrency=2)
    async def wait(ctx: Context, partition: Partition) -> None:
        await asyncio.sleep(0.06)

    ledger = CountingLedger(open_ledger(f"sqlite:///{tmp_path / 'state.db'}"))
    result = run_job(job, ledger)  # type: ignore[arg-type]
    assert result.counts["wait"].done == 24
    assert sum(ledger.begins) == 24
    assert max(ledger.begins) <= 2, ledger.begins


def test_a_begin_call_carries_the_buffered_outcomes_on_the_same_trip() -> None:
    """flush_with writes the buffered outcomes, then calls the rider, in that order and
    in one call to the ledger's thread; what the ledger refused is reported as lost."""
    from backfill.clock import SystemClock
    from backfill.engine.db import LedgerThread
    from backfill.engine.outcomes import Outcomes
    from backfill.ledger import Outcome, Status

    order: list[str] = []
    lost: list[str] = []

    class Ledger:
        def complete(self, owner: str, outcomes: Sequence[Outcome], *, now: float) -> int:
            order.append(f"complete {len(outcomes)}")
            return len(outcomes) - 1

    async def go() -> set[int]:
        clock = SystemClock()
        db = LedgerThread(clock)
        buffer = Outcomes(
            Ledger(),  # type: ignore[arg-type]
            db,
            "me",
            clock,
            on_flushed=lambda: order.append("flushed"),
            on_lost=lost.append,
            on_error=lambda error: None,
            forget=lambda claim_id: None,
        )
        for claim_id in (1, 2, 3):
            await buffer.record(Outcome(claim_id, Status.DONE))

        def begin(ids: list[int]) -> set[int]:
            order.append("begin")
            return set(ids)

        try:
            return await buffer.flush_with(begin, [7, 8])
        finally:
            db.shutdown()

    assert asyncio.run(go()) == {7, 8}
    assert order == ["complete 3", "begin", "flushed"]
    assert lost == ["1 outcome(s) were not recorded"]


def test_runners_of_a_fast_stage_keep_its_concurrency_and_a_stop_gives_the_rest_back(
    tmp_path: Path,
) -> None:
    """A fast stage without sinks (one runner per slot works through each begun group):
    never more than its 3 partitions at once; stopped after 1,000, the rest go back
    unstarted, and the next run does exactly those: every day once in all."""
    from backfill import Runner

    job = Job("runners", partitions=daily("2000-01-01", "2008-03-18"))
    ran: list[str] = []
    now = {"in": 0, "max": 0}
    runner: list[Runner] = []

    @job.stage(concurrency=3)
    async def noop(ctx: Context, partition: Partition) -> None:
        now["in"] += 1
        now["max"] = max(now["max"], now["in"])
        await asyncio.sleep(0)
        now["in"] -= 1
        ran.append(partition.key)
        if len(ran) == 1000 and runner:
            runner[0].stop("enough")

    state = open_ledger(f"sqlite:///{tmp_path / 'state.db'}")
    runner.append(Runner(job, state))
    first = asyncio.run(runner[0].run())
    assert now["max"] <= 3
    assert 1000 <= first.counts["noop"].done < 3000
    assert first.counts["noop"].done + first.counts["noop"].pending == 3000
    runner.clear()
    second = run_job(job, state)
    assert second.counts["noop"].done == 3000
    assert len(ran) == len(set(ran)) == 3000
    assert now["max"] <= 3


def test_a_group_begun_ahead_is_run_by_every_free_slot(tmp_path: Path) -> None:
    """A stage of 32 slots held back by a resource of 4 (a warehouse's queries): partitions
    begun ahead in groups are shared out to runners as slots free up, so the resource is
    kept full to the end; before, a group begun ahead kept the one runner it started with
    and its partitions ran one after another (a 365-query benchmark ran at 0.43 of its
    ceiling). Counted, not timed: how many queries were in the resource when each began."""
    from backfill.runner import RunOptions

    job = Job("held", partitions=daily("2013-01-01", "2013-04-30"))
    job.resource("warehouse", concurrency=4)
    inside: list[int] = [0]
    seen: list[int] = []
    durations = random.Random(7)

    @job.stage(resource="warehouse", concurrency=32)
    async def query(ctx: Context, partition: Partition) -> None:
        async with ctx.slot():
            inside[0] += 1
            seen.append(inside[0])
            await asyncio.sleep(durations.uniform(0.01, 0.04))
            inside[0] -= 1

    ledger = open_ledger(f"sqlite:///{tmp_path / 'state.db'}")
    result = run_job(job, ledger, RunOptions(concurrency=32))
    assert result.counts["query"].done == 120
    # After the first three, most began beside three others: the resource kept full
    # (queries of uneven length, so a slot frees while the others still run).
    full = sum(1 for n in seen[3:-4] if n == 4)
    assert full >= 0.8 * (len(seen) - 7), seen
