"""Backfill every US flight out of New York in 2013, one day per partition.

The source is a paged JSON API (``backfill demo --serve`` runs a local replay of it) that
is slow, rate limited and unreliable; the destination is a SQLite table keyed by flight.

    backfill demo --serve &                 # the API, on http://127.0.0.1:8813
    backfill run examples/flights.py        # the backfill; Ctrl+C and re-run to resume
    backfill status examples/flights.py

Settings come from the environment: FLIGHTS_API (the API's base URL), FLIGHTS_DB (the
SQLite file to fill), FLIGHTS_CONCURRENCY (requests in flight).
"""

import os
from typing import Any

from backfill import Context, EmptyPartition, Job, Partition, RetryPolicy, SQLiteTable, daily

API = os.environ.get("FLIGHTS_API", "http://127.0.0.1:8813").rstrip("/")
DATABASE = os.environ.get("FLIGHTS_DB", "flights.db")
CONCURRENCY = int(os.environ.get("FLIGHTS_CONCURRENCY", "8"))
PAGE_SIZE = 500

job = Job(
    "flights",
    partitions=daily("2013-01-01", "2013-12-31"),
    sink=SQLiteTable(
        DATABASE, "flights", key=["year", "month", "day", "carrier", "flight", "origin"]
    ),
    description="2013 flights from NYC airports, from a paged JSON API",
    # A stalled request is abandoned after 3 s and retried.
    http_timeout=3.0,
)


@job.stage(
    concurrency=CONCURRENCY,
    timeout=60,
    retry=RetryPolicy(attempts=10, base=0.25, cap=8.0),
)
async def flights(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
    """Every flight of one day, all pages."""
    records: list[dict[str, Any]] = []
    page = 1
    while True:
        body = await ctx.http.get_json(
            f"{API}/v1/flights",
            params={"date": partition.date.isoformat(), "page": page, "page_size": PAGE_SIZE},
        )
        records.extend(body["data"])
        if page >= body["pages"]:
            break
        page += 1
    if not records:
        raise EmptyPartition("no flights that day")
    return records
