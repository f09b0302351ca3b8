"""A worker stalled past its lease (SIGSTOP: a GC or VM pause) must not write twice.

Worker A runs a job whose partitions write pages with ``ctx.write``; it is stopped while
it holds partitions, worker B takes them over once their leases expire and finishes
the job, then A is continued (or continued and killed half a second later). However
the two interleave, the table ends with every row exactly once: A's writes for the
partitions it lost are fenced out, and it starts none of those it had claimed.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from conftest import backfill_cmd, cli_env, run_cli
from pg_support import fresh_schema

pytestmark = pytest.mark.slow

DAYS = 20
PAGES = 5
ROWS = 20

MODES = ("append", "replace-partition", "upsert")

JOB = f"""
import asyncio, os
from backfill import Job, daily, table

URL = os.environ["SINK_URL"]
job = Job("stall", partitions=daily("2013-01-01", "2013-01-{DAYS}"), lease_seconds=2.0)


def pages(mode):
    sink = table(
        URL,
        mode.replace("-", "_"),
        key=None if mode == "append" else ["day", "page", "n"],
        mode=mode,
    )

    async def fetch(ctx, partition):
        for page in range({PAGES}):
            await asyncio.sleep(0.03)
            await ctx.write(
                [{{"day": partition.key, "page": page, "n": n}} for n in range({ROWS})]
            )
        return []

    job.stage(name=mode.replace("-", "_"), sink=sink, concurrency=3)(fetch)


for mode in {MODES!r}:
    pages(mode)
"""


@contextlib.contextmanager
def places(kind: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(state URL, sink URL): one SQLite file, two SQLite files, or one PostgreSQL."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}", str(tmp_path / "state.db")
    elif kind == "sqlite-apart":
        yield f"sqlite:///{tmp_path / 'state.db'}", str(tmp_path / "rows.db")
    else:
        with fresh_schema() as url:
            yield url, url


def rows(kind: str, sink: str, mode: str = "append") -> list[tuple[str, int, int]]:
    query = f"SELECT day, page, n FROM {mode.replace('-', '_')}"
    if kind.startswith("sqlite"):
        if not Path(sink).exists():
            return []
        with contextlib.closing(sqlite3.connect(sink, timeout=30)) as conn:
            try:
                return conn.execute(query).fetchall()
            except sqlite3.OperationalError:
                return []
    with psycopg.connect(sink) as conn:
        if conn.execute(f"SELECT to_regclass('{mode.replace('-', '_')}')").fetchone() == (None,):
            return []
        return conn.execute(query).fetchall()  # type: ignore[return-value]


def holds_a_transaction(kind: str, state: str, sink: str) -> bool:
    """Whether a stopped worker would block everyone else: it holds SQLite's write lock,
    or a PostgreSQL transaction with row locks. Stopping it there tests SQLite's
    locking, not our leases."""
    if kind.startswith("sqlite"):
        for path in {state.removeprefix("sqlite:///"), sink}:
            if not Path(path).exists():
                continue
            conn = sqlite3.connect(path, timeout=0.05, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
            except sqlite3.OperationalError:
                return True
            finally:
                conn.close()
        return False
    with psycopg.connect(state, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND xact_start IS NOT NULL"
        ).fetchone()
    return bool(row and row[0])


def start_worker(tmp_path: Path, state: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*backfill_cmd(), "worker", "job.py", "--state", state, "--progress", "none"],
        cwd=tmp_path,
        env=cli_env(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_while_holding_partitions(
    worker: subprocess.Popen[str], kind: str, state: str, sink: str, rng: random.Random
) -> None:
    """SIGSTOP the worker once it has written some pages, outside a transaction."""
    deadline = time.monotonic() + 60
    while not rows(kind, sink):
        assert worker.poll() is None, worker.communicate()
        assert time.monotonic() < deadline, "worker A wrote nothing in 60 s"
        time.sleep(0.05)
    time.sleep(rng.uniform(0.0, 0.4))
    for _ in range(200):
        os.kill(worker.pid, signal.SIGSTOP)
        if not holds_a_transaction(kind, state, sink):
            return
        os.kill(worker.pid, signal.SIGCONT)
        time.sleep(rng.uniform(0.005, 0.03))
    pytest.fail("could not stop worker A outside a transaction")


@pytest.mark.parametrize(
    ("kind", "then_kill"),
    [
        ("sqlite", False),
        ("sqlite", True),
        ("sqlite-apart", False),
        ("postgres", False),
        ("postgres", True),
    ],
)
def test_a_worker_stalled_past_its_lease_writes_nothing_twice(
    tmp_path: Path, kind: str, then_kill: bool
) -> None:
    """SIGSTOP a worker past its lease, let another finish the job, SIGCONT it (and, in
    a variant, SIGKILL it half a second later): in append, replace-partition and upsert
    tables alike every row exactly once, nothing missing, and the stalled worker says
    once that its leases passed on."""
    (tmp_path / "job.py").write_text(textwrap.dedent(JOB))
    rng = random.Random(f"{kind}-{then_kill}")
    with places(kind, tmp_path) as (state, sink):
        env = {"SINK_URL": sink}
        a = start_worker(tmp_path, state, env)
        try:
            stop_while_holding_partitions(a, kind, state, sink, rng)
            time.sleep(2.5)  # past A's lease
            b = run_cli("worker", "job.py", "--state", state, "--progress", "none",
                        cwd=tmp_path, env=env, timeout=120)  # fmt: skip
            assert b.returncode == 0, b.stderr
            os.kill(a.pid, signal.SIGCONT)
            if then_kill:
                time.sleep(0.5)
                a.kill()
            _, a_err = a.communicate(timeout=60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(a.pid, signal.SIGCONT)
            if a.poll() is None:
                a.kill()
                a.communicate()
        if not then_kill:
            assert a.returncode == 0, a_err
            assert a_err.count("passed to another worker") <= 1, a_err
        final = run_cli("run", "job.py", "--state", state, "--progress", "none",
                        cwd=tmp_path, env=env, timeout=120)  # fmt: skip
        assert final.returncode == 0, final.stderr
        got = {mode: rows(kind, sink, mode) for mode in MODES}
    for mode, table_rows in got.items():
        assert len(table_rows) == len(set(table_rows)), f"duplicate rows in {mode}"
        assert len(table_rows) == DAYS * PAGES * ROWS, mode
