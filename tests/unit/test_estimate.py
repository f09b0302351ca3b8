"""Quota-aware planning: requests per partition, time at the limit, quota warnings."""

from __future__ import annotations

import pytest

from backfill import Context, Job, Partition, daily
from backfill.estimate import estimate


def racing_job() -> Job:
    job = Job("racing", partitions=daily("2015-01-01", "2025-10-18"))  # 3,944 days
    job.resource("racing_api", rate="2/s", limits=["10000/day"])

    @job.stage(resource="racing_api", requests_per_partition=2)
    async def cards(ctx: Context, partition: Partition) -> None:
        return None

    return job


def test_declared_estimate_gives_duration_at_the_rate_and_a_quota_warning() -> None:
    """3,944 days × 2 requests at 2/s is 66 minutes, and more than a 10,000/day quota."""
    job = racing_job()
    stages = list(job.stages.values())
    (e,) = estimate(job, stages, {"cards": 3944}, {})
    assert e.source == "declared"
    assert e.requests == 7888
    assert e.seconds == pytest.approx(3944.0)
    assert e.quota_warnings == ()
    (big,) = estimate(job, stages, {"cards": 20_000}, {})
    assert big.quota_warnings == (
        "needs 40,000 requests, more than the 10000/day quota: at least 4.0 days",
    )


def test_history_beats_the_declared_guess() -> None:
    """Once partitions recorded their requests, their average is used."""
    job = racing_job()
    (e,) = estimate(job, list(job.stages.values()), {"cards": 100}, {"cards": (50, 3.5)})
    assert (e.source, e.requests) == ("history", 350.0)


def test_unknown_requests_per_partition_says_so() -> None:
    """Without history or a declaration, the estimate is unknown rather than invented."""
    job = Job("x", partitions=daily("2020-01-01", "2020-01-31"))
    job.resource("api", rate="5/s")

    @job.stage(resource="api")
    async def fetch(ctx: Context, partition: Partition) -> None:
        return None

    (e,) = estimate(job, [job.stages["fetch"]], {"fetch": 31}, {"fetch": (1, 2.0)})
    assert e.requests is None
    assert e.source == "unknown"


def test_a_stage_with_nothing_to_run_leaves_the_estimate_known() -> None:
    """The demo's reference tables, done and never declared: a stage with nothing to run
    needs no requests, so its unknown requests per partition leave the others' estimate
    standing (`backfill plan` on the demo said "unknown" once they were done)."""
    job = racing_job()

    @job.stage(resource="racing_api", reference=True)
    async def courses(ctx: Context, partition: Partition) -> None:
        return None

    stages = list(job.stages.values())
    (e,) = estimate(job, stages, {"cards": 100, "courses": 0}, {"courses": (1, 1.0)})
    assert (e.source, e.requests, e.requests_per_partition) == ("declared", 200.0, 2.0)
    (unknown,) = estimate(job, stages, {"cards": 100, "courses": 1}, {})
    assert unknown.requests is None and unknown.source == "unknown"
