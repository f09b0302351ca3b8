"""Timeouts of plain ``def`` stages through the runner: a healthy partition never pays for
a timed-out neighbour, and the run ends without waiting for calls it gave up on."""

from __future__ import annotations

import threading
import time
from collections import Counter

from backfill import Context, Job, Partition, RetryPolicy, Status, daily
from backfill.ledger import open_ledger
from backfill.runner import ExitCode
from backfill.testing import run_job


def test_fast_days_finish_while_slow_days_time_out() -> None:
    """The issue's case: 20 days, the odd ones sleeping 2 s and the even ones fast,
    timeout 0.3 s, concurrency 4, one attempt: the 10 fast days are done and the 10
    slow ones failed as timeout."""
    job = Job("sync", partitions=daily("2013-01-01", "2013-01-20"))

    @job.stage(concurrency=4, timeout=0.3, retry=RetryPolicy(attempts=1))
    def fetch(ctx: Context, partition: Partition) -> list[dict[str, str]]:
        if partition.start.day % 2:
            time.sleep(2)
        return [{"day": partition.key}]

    ledger = open_ledger(":memory:")
    result = run_job(job, ledger)
    entries = ledger.entries("sync", "fetch", limit=100)
    outcome = Counter(
        (
            "slow" if e.key.endswith(("1", "3", "5", "7", "9")) else "fast",
            e.status,
            e.error_category,
        )
        for e in entries
    )
    assert outcome == Counter(
        {("fast", Status.DONE, None): 10, ("slow", Status.FAILED, "timeout"): 10}
    )
    assert result.exit_code == ExitCode.FAILED


def test_the_run_ends_while_timed_out_calls_still_run() -> None:
    """Calls that timed out and never return on their own do not hold the run: it ends
    while they are still blocked, and its other partitions are done."""
    job = Job("sync", partitions=daily("2013-01-01", "2013-01-12"))
    release = threading.Event()
    blocked = threading.Semaphore(0)

    @job.stage(concurrency=2, timeout=0.2, retry=RetryPolicy(attempts=1))
    def fetch(ctx: Context, partition: Partition) -> None:
        if partition.start.day <= 4:
            blocked.release()
            release.wait(60)
        return None

    ledger = open_ledger(":memory:")
    try:
        result = run_job(job, ledger)
        counts = ledger.counts("sync", ["fetch"])["fetch"]
        assert (counts.done, counts.failed) == (8, 4)
        assert result.exit_code == ExitCode.FAILED
        assert not release.is_set()
        assert all(blocked.acquire(timeout=0) for _ in range(4))
    finally:
        release.set()


def test_a_timeout_raised_by_a_stage_without_one_fails_only_its_partition() -> None:
    """A stage with no timeout of its own that raises TimeoutError (a socket's read
    timeout) fails that partition as timeout with the error's text; the run goes on."""
    job = Job("sync", partitions=daily("2013-01-01", "2013-01-03"))

    @job.stage(retry=RetryPolicy(attempts=1))
    def fetch(ctx: Context, partition: Partition) -> None:
        if partition.key == "2013-01-02":
            raise TimeoutError("the socket read timed out")
        return None

    ledger = open_ledger(":memory:")
    result = run_job(job, ledger)
    assert result.exit_code == ExitCode.FAILED
    entries = {e.key: e for e in ledger.entries("sync", "fetch")}
    failed = entries["2013-01-02"]
    assert (failed.status, failed.error_category) == (Status.FAILED, "timeout")
    assert "the socket read timed out" in (failed.error_message or "")
    assert entries["2013-01-03"].status is Status.DONE
