"""Backfill every US flight out of New York in 2013, one day per partition.

The source is a paged JSON API (``backfill demo --serve`` runs a local replay of it) that
is slow, rate limited and unreliable; the destination is a SQLite table keyed by flight.

    backfill demo --serve &                 # the API, on http://127.0.0.1:8813
    backfill run examples/flights.py        # the backfill; Ctrl+C and re-run to resume
    backfill status examples/flights.py

Settings come from the environment: FLIGHTS_API (the API's base URL), FLIGHTS_DB (the
SQLite file to fill, or a postgresql:// URL), FLIGHTS_RATE (the API's limit in requests
per second, or "adaptive" to let the resource find it), FLIGHTS_CONCURRENCY (requests in
flight).
"""

import os
from typing import Any

from backfill import (
    Context,
    EmptyPartition,
    Job,
    PageNumber,
    Partition,
    RetryPolicy,
    daily,
    table,
)

API = os.environ.get("FLIGHTS_API", "http://127.0.0.1:8813").rstrip("/")
DATABASE = os.environ.get("FLIGHTS_DB", "flights.db")
RATE = os.environ.get("FLIGHTS_RATE", "20")
CONCURRENCY = int(os.environ.get("FLIGHTS_CONCURRENCY", "8"))
PAGE_SIZE = 500

job = Job(
    "flights",
    partitions=daily("2013-01-01", "2013-12-31"),
    sink=table(DATABASE, "flights", key=["year", "month", "day", "carrier", "flight", "origin"]),
    description="2013 flights from NYC airports, from a paged JSON API",
)

# Every request of every stage using this resource together stays under the API's limit.
# A stalled request is abandoned after 1.5 s and retried (up to 3 times per request).
if RATE == "adaptive":
    # The limit is not known: start gently and let the resource discover it from 429s.
    job.resource(
        "flights_api",
        adaptive=True,
        start_rate=5,
        concurrency=CONCURRENCY,
        timeout=1.5,
        retries=3,
    )
else:
    job.resource(
        "flights_api",
        rate=float(RATE),
        burst=1,
        concurrency=CONCURRENCY,
        timeout=1.5,
        retries=3,
    )


@job.stage(
    resource="flights_api",
    concurrency=CONCURRENCY,
    timeout=120,
    retry=RetryPolicy(attempts=10, base=0.25, cap=8.0),
    requests_per_partition=2,
)
async def flights(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
    """Every flight of one day, all pages."""
    records: list[dict[str, Any]] = []
    async for page in ctx.http.paginate(
        f"{API}/v1/flights",
        params={"date": partition.date.isoformat(), "page_size": PAGE_SIZE},
        pagination=PageNumber(page_param="page", data="data", total_pages="pages"),
    ):
        records.extend(page.records)
    if not records:
        raise EmptyPartition("no flights that day")
    return records
