#!/usr/bin/env python
"""Warehouse benchmark: queries under a warehouse's concurrency, and where a processor's
rows are best written.

Run from the repository root::

    .venv/bin/python bench/warehouse_bench.py            # (a) 365 partitions, (b) 300,000 rows
    .venv/bin/python bench/warehouse_bench.py --quick    # (a) 120 partitions, (b) 60,000 rows
    BACKFILL_BENCH_POSTGRES_URL=postgresql://me@host/db .venv/bin/python bench/warehouse_bench.py

(a) Warehouse-bound: N partitions whose query takes 0.5 s on the server
(``SELECT pg_sleep(0.5)``) at a concurrency of 15. ``backfill`` runs them as a job
(``job.warehouse(..., concurrency=15)``, one async stage calling ``ctx.sql.records``, a
SQLite state file); the baseline is the script users write: a ``ThreadPoolExecutor(15)``
with a connection per thread. Both are compared with the ceiling N x 0.5 / 15 s (target:
``backfill`` at >= 0.95 of it).

(b) Write-bound: a processor's output for 20 days (rows of a source table, transformed)
written three ways, on DuckDB and on PostgreSQL: ``sql-stage`` (``job.sql_stage``, an
``INSERT ... SELECT`` per day inside the warehouse), ``sink`` (the rows fetched into Python
with ``ctx.sql.records`` and returned to a ``table(...)`` sink of the same database,
replace-partition) and ``per-row`` (one ``INSERT`` per row, committed per day, the way the
processor started; on a sample of one day, its rate extrapolated).

Each figure has the machine's load average (1 min) beside it, read when it was measured.
This is a measurement, not a test: it asserts no timings and exits 0 unless it crashes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import sqlalchemy as sa

import _machine
from backfill import Job, daily
from backfill.ledger import open_ledger
from backfill.runner import Runner, RunOptions

POSTGRES = os.environ.get(
    "BACKFILL_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
SCHEMA = "bench_warehouse"
DAYS = 20


def _load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def _in_schema(url: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{SCHEMA}"


def _engine(url: str) -> sa.Engine:
    return sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))


def _run(job: Job, state: Path) -> float:
    ledger = open_ledger(f"sqlite:///{state}")
    started = time.perf_counter()
    result = asyncio.run(Runner(job, ledger, RunOptions(concurrency=64)).run())
    elapsed = time.perf_counter() - started
    ledger.close()
    if result.exit_code != 0:
        raise SystemExit(f"{job.name}: {result.message}")
    return elapsed


# -- (a) warehouse-bound -----------------------------------------------------------------


def bench_concurrency(url: str, n: int, workdir: Path) -> list[tuple[str, str, str, str]]:
    ceiling = n * 0.5 / 15
    job = Job("sleepers", partitions=daily("2013-01-01", _nth_day(n)))
    job.warehouse("warehouse", url, concurrency=15)

    @job.stage(resource="warehouse", concurrency=15)
    async def sleep(ctx: Any, partition: Any) -> None:
        await ctx.sql.records("SELECT pg_sleep(0.5) AS z, :day AS d")

    load = _load()
    ours = _run(job, workdir / "state-a.db")
    rows = [("backfill (ctx.sql, concurrency 15)", f"{ours:.2f}", f"{ceiling / ours:.3f}", load)]

    import psycopg

    local = threading.local()

    def one(_: int) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = psycopg.connect(url, autocommit=True)
        conn.execute("SELECT pg_sleep(0.5)").fetchall()

    load = _load()
    started = time.perf_counter()
    with ThreadPoolExecutor(15) as pool:
        list(pool.map(one, range(n)))
    theirs = time.perf_counter() - started
    rows.append(("ThreadPoolExecutor(15)", f"{theirs:.2f}", f"{ceiling / theirs:.3f}", load))
    return rows


def _nth_day(n: int) -> str:
    import datetime as dt

    return (dt.date(2013, 1, 1) + dt.timedelta(days=n - 1)).isoformat()


# -- (b) write-bound ---------------------------------------------------------------------

SOURCE = """
SELECT day, carrier, flight, delay, delay * 2 + 1 AS score
FROM source WHERE day = CAST(:day AS DATE)
"""


def _seed(url: str, rows: int) -> None:
    per_day = rows // DAYS
    with _engine(url).begin() as conn:
        for table in ("source", "by_sql", "by_sink", "by_row"):
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        if url.startswith("duckdb"):
            generate = f"SELECT range AS i FROM range({per_day * DAYS})"
        else:
            generate = f"SELECT i FROM generate_series(0, {per_day * DAYS - 1}) AS i"
        conn.execute(
            sa.text(
                "CREATE TABLE source AS SELECT CAST(DATE '2013-01-01' + CAST(floor(i / "
                f"{per_day}.0) AS INTEGER) AS DATE) AS day, "
                "CASE i % 4 WHEN 0 THEN 'AA' WHEN 1 THEN 'UA' WHEN 2 THEN 'DL' ELSE 'B6' END "
                f"AS carrier, CAST(i AS BIGINT) AS flight, CAST(i % 97 AS DOUBLE PRECISION) "
                f"AS delay FROM ({generate}) AS g"
            )
        )
        conn.execute(
            sa.text(
                "CREATE TABLE by_row (day DATE, carrier VARCHAR, flight BIGINT, "
                "delay DOUBLE PRECISION, score DOUBLE PRECISION)"
            )
        )


def bench_writes(url: str, label: str, rows: int, workdir: Path) -> list[tuple[str, ...]]:
    _seed(url, rows)
    out: list[tuple[str, ...]] = []
    last = f"2013-01-{DAYS:02d}"

    job = Job(f"sql_{label}", partitions=daily("2013-01-01", last))
    job.warehouse("warehouse", url, concurrency=4)
    job.sql_stage("processor", sql=SOURCE, target="by_sql", concurrency=4)
    load = _load()
    elapsed = _run(job, workdir / f"state-sql-{label}.db")
    out.append((label, "sql-stage (INSERT ... SELECT)", f"{rows / elapsed:,.0f}", load))

    from backfill import table

    job = Job(f"sink_{label}", partitions=daily("2013-01-01", last))
    job.warehouse("warehouse", url, concurrency=4)
    target = table(url, "by_sink", mode="replace-partition")

    @job.stage(resource="warehouse", sink=target, concurrency=4)
    async def processor(ctx: Any, partition: Any) -> list[dict[str, Any]]:
        return await ctx.sql.records(SOURCE)

    load = _load()
    elapsed = _run(job, workdir / f"state-sink-{label}.db")
    out.append((label, "rows through Python to the sink", f"{rows / elapsed:,.0f}", load))

    engine = _engine(url)
    sample = rows // DAYS
    load = _load()
    started = time.perf_counter()
    with engine.connect() as conn:
        fetched = conn.execute(sa.text(SOURCE), {"day": "2013-01-01"}).fetchall()
        for row in fetched:
            conn.execute(
                sa.text("INSERT INTO by_row VALUES (:day, :carrier, :flight, :delay, :score)"),
                dict(row._mapping),
            )
        conn.commit()
    elapsed = time.perf_counter() - started
    out.append((label, f"per-row INSERT (sample of {sample:,})", f"{sample / elapsed:,.0f}", load))
    with engine.connect() as conn:
        counts = [
            conn.execute(sa.text(f"SELECT count(*) FROM {t}")).scalar_one()
            for t in ("by_sql", "by_sink")
        ]
    engine.dispose()
    expected = rows // DAYS * DAYS
    if counts != [expected, expected]:
        raise SystemExit(f"{label}: wrote {counts}, expected {expected} each")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--cases", default="a,b", help="a (warehouse-bound), b (write-bound)")
    args = parser.parse_args()
    partitions = 120 if args.quick else 365
    rows = 60_000 if args.quick else 300_000
    cases = set(args.cases.split(","))
    pg: str | None = None
    try:
        import psycopg

        with psycopg.connect(POSTGRES, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
            conn.execute(f"CREATE SCHEMA {SCHEMA}")
        pg = _in_schema(POSTGRES)
    except Exception as exc:
        print(f"PostgreSQL at {POSTGRES} not reachable ({exc}); (a) and its rows skipped")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if "a" in cases and pg is not None:
            print(
                f"\n(a) {partitions} partitions x pg_sleep(0.5), concurrency 15, "
                f"ceiling {partitions * 0.5 / 15:.2f} s\n"
            )
            print("| client | elapsed s | of the ceiling | load (1 min) |")
            print("|---|---|---|---|")
            for row in bench_concurrency(pg, partitions, workdir):
                print("| " + " | ".join(row) + " |")
        if "b" in cases:
            print(f"\n(b) {rows:,} rows over {DAYS} daily partitions\n")
            print("| warehouse | written by | rows/s | load (1 min) |")
            print("|---|---|---|---|")
            targets = [("DuckDB", f"duckdb:///{workdir / 'bench.duckdb'}")]
            if pg is not None:
                targets.append(("PostgreSQL", pg))
            for label, url in targets:
                for row in bench_writes(url, label, rows, workdir):
                    print("| " + " | ".join(row) + " |")
    if pg is not None:
        import psycopg

        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    print()
    print("\n".join(_machine.facts(f"duckdb {__import__('duckdb').__version__}")))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
