"""The run's own end: whatever its background tasks did, it ends in order with a result."""

from __future__ import annotations

import asyncio

import pytest

from backfill import Job, Runner, daily
from backfill.engine.outcomes import Outcomes
from backfill.errors import LedgerError
from backfill.ledger import open_ledger


def test_a_background_task_that_failed_before_the_end_still_gives_a_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A background flush that raised (the state gone) before the run cancelled it: the
    run ends with a result naming the cause and exit 2, not with the exception."""

    async def failing_flusher(self: Outcomes, seconds: float = 0.0) -> None:
        raise LedgerError("lost the state database for more than 120 s")

    monkeypatch.setattr(Outcomes, "flush_every", failing_flusher)
    job = Job("gone", partitions=daily("2013-01-01", "2013-01-03"))

    @job.stage(resource=None)
    async def slow(ctx: object, partition: object) -> None:
        await asyncio.sleep(0.05)  # the flusher has failed by the time the stage ends

    result = asyncio.run(Runner(job, open_ledger(":memory:")).run())
    assert result.exit_code == 2
    assert "lost the state database" in result.message
