"""Begin marks: one ledger call for a fast stage's many partitions, a slow stage's none
begun before a slot is free for it."""

from __future__ import annotations

import asyncio
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
