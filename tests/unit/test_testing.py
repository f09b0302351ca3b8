"""`backfill.testing`: the test switch that turns backoff off for users' own tests."""

from __future__ import annotations

import time
from collections import Counter

from backfill import Context, Job, Partition, RetryPolicy, TransientError, daily
from backfill.testing import MemorySink, run_job, set_testing


def test_set_testing_runs_a_flaky_stage_without_its_backoff_waits():
    """Under `set_testing(True)` a stage failing twice is retried at once, its tries counted."""
    job = Job("flaky", partitions=daily("2013-01-01", "2013-01-01"))
    tries = Counter[str]()

    # Without the switch the waits before the second and third tries would be ~30 s each.
    @job.stage(retry=RetryPolicy(attempts=3, base=30.0, cap=30.0, jitter=False))
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, object]]:
        tries["n"] += 1
        if tries["n"] < 3:
            raise TransientError("try again", category="network")
        return [{"id": 1}]

    started = time.monotonic()
    with set_testing(True):
        result = run_job(job, sink=MemorySink(key=["id"]))
    assert result.exit_code == 0
    assert tries["n"] == 3
    assert time.monotonic() - started < 20.0
