"""Run metrics: folded from events, tallied per partition, stored in the run record."""

from __future__ import annotations

import asyncio

import httpx

from backfill import Job, PermanentError, RetryPolicy, TransientError, daily
from backfill.events import PartitionFinished, PartitionRetrying
from backfill.ledger import Status, open_ledger
from backfill.runstats import DURATION_BUCKETS, RunStats, stage_stats
from backfill.sources.http import HttpClient, RequestTally, partition_requests
from backfill.testing import run_job


def finished(stage: str, key: str, status: Status, duration: float, **kw: int) -> PartitionFinished:
    return PartitionFinished(stage, key, status, kw.pop("records", 0), duration, 1, **kw)


def test_stats_fold_outcomes_requests_429s_and_retries_per_stage_and_run() -> None:
    """Each stage counts its own outcomes, records, requests, 429s and retries; the run
    sums them; released (pending) partitions count requests but no outcome."""
    stats = RunStats(["a", "b"])
    stats(finished("a", "k1", Status.DONE, 1.0, records=10, requests=3, rate_limited=1))
    stats(finished("a", "k2", Status.FAILED, 2.0, requests=2))
    stats(finished("b", "k1", Status.EMPTY, 0.5, requests=1))
    stats(finished("b", "k2", Status.PENDING, 0.0, requests=4, rate_limited=2))
    stats(PartitionRetrying("a", "k2", 1, 0.1, "http_500", "boom"))
    record = stats.as_record()
    a, b, run = record["stages"]["a"], record["stages"]["b"], record["run"]
    assert (a["done"], a["failed"], a["records"], a["requests"], a["rate_limited"]) == (
        1,
        1,
        10,
        5,
        1,
    )
    assert a["retries"] == 1
    assert (b["partitions"], b["empty"], b["requests"], b["rate_limited"]) == (1, 1, 5, 2)
    assert (run["partitions"], run["requests"], run["rate_limited"], run["retries"]) == (
        3,
        10,
        3,
        1,
    )
    assert run["max"] == 2.0


def test_slowest_partitions_and_histogram_keep_the_right_figures() -> None:
    """The slowest list holds the ten longest partitions, longest first; the histogram
    buckets add up to the number of finished partitions."""
    stats = RunStats()
    for i in range(50):
        stats(finished("s", f"2013-01-{i:02d}", Status.DONE, float(i)))
    record = stats.as_record()["stages"]["s"]
    assert [key for key, _ in record["slowest"]] == [f"2013-01-{i:02d}" for i in range(49, 39, -1)]
    assert sum(record["buckets"]) == 50
    assert len(record["buckets"]) == len(DURATION_BUCKETS) + 1
    assert record["p50"] == 25.0 and record["max"] == 49.0


def test_http_client_tallies_requests_and_429s_of_the_partition() -> None:
    """A 429 then a 200 for one partition: two requests, one rate limited."""
    answers = iter([429, 200])

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(next(answers), json={}, headers={"Retry-After": "0"})

    async def go() -> RequestTally:
        tally = RequestTally()
        partition_requests.set(tally)
        client = HttpClient(retries=1, transport=httpx.MockTransport(handler))
        await client.get_json("http://127.0.0.1/x")
        await client.aclose()
        return tally

    tally = asyncio.run(go())
    assert (tally.requests, tally.rate_limited) == (2, 1)


def test_run_record_stores_per_stage_metrics() -> None:
    """After a run, the ledger's run record carries partitions, records, retries and
    duration percentiles per stage, read back by ``stage_stats``."""
    job = Job("metrics", partitions=daily("2013-01-01", "2013-01-10"))
    seen: set[str] = set()

    @job.stage(retry=RetryPolicy(attempts=3, base=0.0, cap=0.0))
    def fetch(ctx: object, partition: object) -> list[dict[str, str]]:
        key = partition.key  # type: ignore[attr-defined]
        if key == "2013-01-03":
            raise PermanentError("bad day", category="BAD")
        if key == "2013-01-05" and key not in seen:
            seen.add(key)
            raise TransientError("flaky")
        return [{"day": key}, {"day": key}]

    ledger = open_ledger(":memory:")
    result = run_job(job, ledger)
    assert result.exit_code == 1
    [record] = ledger.runs("metrics")
    stats = stage_stats(record.counts)["fetch"]
    assert (stats["partitions"], stats["done"], stats["failed"]) == (10, 9, 1)
    assert (stats["records"], stats["retries"]) == (18, 1)
    assert 0 <= stats["p50"] <= stats["p95"] <= stats["max"]
    assert record.counts["stats"]["run"]["records"] == 18
    assert result.stage_stats["fetch"]["count"] == 10
