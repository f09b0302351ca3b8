"""Backfill every US flight out of New York in 2013 as a three-stage pipeline.

1. ``airlines``, ``airports``, ``planes``: reference tables ("masters"), fetched once;
2. ``flights``: every flight of one day per partition, once the reference tables are in;
3. ``airport_daily``: per day and origin airport, the day's flights and mean departure
   delay plus a 7-day rolling window; a day runs as soon as it and the 6 days before it
   are in the flights table, while later days of flights are still being fetched.

The source is a paged JSON API (``backfill demo --serve`` runs a local replay of it) that
is slow, rate limited and unreliable; the destination is one SQLite file (or PostgreSQL).

    backfill demo --serve &                 # the API, on http://127.0.0.1:8813
    backfill run examples/flights.py        # the backfill; Ctrl+C and re-run to resume
    backfill coverage examples/flights.py   # what is done, and what is missing and why

Settings come from the environment: FLIGHTS_API (the API's base URL), FLIGHTS_DB (the
SQLite file to fill, or a postgresql:// URL), FLIGHTS_RATE (the API's limit in requests
per second, or "adaptive" to let the resource find it), FLIGHTS_BURST (how many requests
its limit lets through at once, 1 by default), FLIGHTS_CONCURRENCY (requests in flight).
"""

import operator
import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date, timedelta
from typing import Any

from backfill import (
    Context,
    EmptyPartition,
    Job,
    PageNumber,
    Partition,
    RetryPolicy,
    checks,
    daily,
    needs,
    table,
)
from backfill._optional import require_postgres

API = os.environ.get("FLIGHTS_API", "http://127.0.0.1:8813").rstrip("/")
DATABASE = os.environ.get("FLIGHTS_DB", "flights.db")
RATE = os.environ.get("FLIGHTS_RATE", "20")
CONCURRENCY = int(os.environ.get("FLIGHTS_CONCURRENCY", "8"))
BURST = int(os.environ.get("FLIGHTS_BURST", "1"))
PAGE_SIZE = 500
WINDOW_DAYS = 7

job = Job(
    "flights",
    partitions=daily("2013-01-01", "2013-12-31"),
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
        burst=BURST,
        concurrency=CONCURRENCY,
        timeout=1.5,
        retries=3,
    )

PATIENT = RetryPolicy(attempts=10, base=0.25, cap=8.0)


def _reference_stage(name: str, key: str, what: str) -> None:
    """A reference stage (fetched once) filling table ``name`` keyed by ``key``."""

    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        body = await ctx.http.get_json(f"{API}/v1/{name}")
        rows: list[dict[str, Any]] = body["data"]
        return rows

    fetch.__doc__ = f"The {what} (reference data, fetched once)."
    sink = table(DATABASE, name, key=[key])
    job.stage(name=name, reference=True, resource="flights_api", retry=PATIENT, sink=sink)(fetch)


for _name, _key, _what in (
    ("airlines", "carrier", "carriers"),
    ("airports", "faa", "airports"),
    ("planes", "tailnum", "aircraft"),
):
    _reference_stage(_name, _key, _what)


_RECORD_DAY = operator.itemgetter("year", "month", "day")


def _same_day(records: Sequence[Mapping[str, Any]], partition: Partition) -> str | None:
    day = partition.date
    # Counted in C (map and list.count): a Python loop over a day's ~900 records was a
    # fifth of the engine's own time per partition.
    wrong = len(records) - list(map(_RECORD_DAY, records)).count((day.year, day.month, day.day))
    return f"{wrong} record(s) of another day" if wrong else None


@job.stage(
    needs=["airlines", "airports", "planes"],
    resource="flights_api",
    concurrency=CONCURRENCY,
    timeout=120,
    retry=PATIENT,
    requests_per_partition=2,
    sink=table(DATABASE, "flights", key=["year", "month", "day", "carrier", "flight", "origin"]),
    checks=[checks.check(_same_day, name="same_day", category="INCONSISTENT_DATA")],
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


@contextmanager
def _connect() -> Iterator[Any]:
    """A connection to the destination database (the SQLite file or PostgreSQL)."""
    if DATABASE.startswith(("postgresql://", "postgres://")):
        require_postgres("the demo on PostgreSQL")
        import psycopg

        with psycopg.connect(DATABASE) as pg:
            yield pg
    else:
        path = DATABASE.removeprefix("sqlite:///")
        conn = sqlite3.connect(path, timeout=30)
        try:
            yield conn
        finally:
            conn.close()


DAY_TOTALS = (
    "SELECT origin, count(*), sum(dep_delay), count(dep_delay) FROM flights "
    "WHERE year = {p} AND month = {p} AND day = {p} GROUP BY origin"
)


def _day_totals(ctx: Context, conn: Any, day: date) -> list[tuple[str, int, int | None, int]]:
    """Per origin: the day's flights, and the sum and count of its departure delays.

    Every day is in seven windows; a day's flights are final once its partition is done,
    so its totals are read once per run and kept in the run cache until the last window
    that needs them.
    """
    key = ("airport_daily", day)
    totals: list[tuple[str, int, int | None, int]] | None = ctx.cache.get(key)
    if totals is None:
        placeholder = "%s" if not isinstance(conn, sqlite3.Connection) else "?"
        sql = DAY_TOTALS.format(p=placeholder)
        totals = [tuple(row) for row in conn.execute(sql, (day.year, day.month, day.day))]
        ctx.cache.set(key, totals)
    return totals


@job.stage(
    needs=[needs("flights", lookback=WINDOW_DAYS - 1)],
    concurrency=4,
    sink=table(DATABASE, "airport_daily", key=["date", "origin"]),
    checks=[checks.min_rows(3)],  # JFK, LGA and EWR fly every day
)
def airport_daily(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
    """Per origin airport: the day's flights and mean departure delay, and the same over
    the 7 days ending that day (read back from the flights table)."""
    first = date(2013, 1, 1)
    days = [partition.date - timedelta(days=n) for n in range(WINDOW_DAYS)]
    totals: dict[str, list[list[int]]] = {}
    with _connect() as conn:
        for offset, day in enumerate(days):
            if day < first:
                continue
            for origin, n, delay_sum, delays in _day_totals(ctx, conn, day):
                slot = totals.setdefault(origin, [[0, 0, 0], [0, 0, 0]])
                for index in (0, 1) if offset == 0 else (1,):
                    slot[index][0] += n
                    slot[index][1] += delay_sum or 0
                    slot[index][2] += delays
    # Later windows start after this one's first day (partitions that run out of order
    # and still need it read it again).
    ctx.cache.pop(("airport_daily", days[-1]))
    return [
        {
            "date": partition.date.isoformat(),
            "origin": origin,
            "flights": today[0],
            "avg_dep_delay": today[1] / today[2] if today[2] else None,
            "flights_7d": week[0],
            "avg_dep_delay_7d": week[1] / week[2] if week[2] else None,
        }
        for origin, (today, week) in sorted(totals.items())
    ]
