"""`backfill run` and `backfill worker` on a shared PostgreSQL state, at the edges: work
blocked by a failed input, and the database restarting under a fleet."""

from __future__ import annotations

import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from conftest import backfill_cmd, cli_env
from pg_support import Cluster, fresh_schema, private_cluster

BLOCKED_JOB = """
from backfill import Job, PermanentError, RetryPolicy, daily

job = Job("blocked", partitions=daily("2013-01-01", "2013-01-10"))


@job.stage(retry=RetryPolicy(attempts=1))
def fetch(ctx, partition):
    if partition.key == "2013-01-04":
        raise PermanentError("the source has no such day", category="not_found")


@job.stage(needs=["fetch"])
def summary(ctx, partition):
    return None
"""


@pytest.fixture
def state() -> Iterator[str]:
    with fresh_schema() as url:
        yield url


@pytest.mark.parametrize("command", ["run", "worker"])
def test_work_blocked_by_a_failed_input_ends_the_run_with_exit_1(
    tmp_path: Path, state: str, command: str
) -> None:
    """On a shared state, a pipeline whose first stage fails one partition for good does
    not wait for the blocked downstream partition: exit 1, naming it and the repair."""
    (tmp_path / "job.py").write_text(textwrap.dedent(BLOCKED_JOB))
    try:
        result = subprocess.run(
            [*backfill_cmd(), command, "job.py", "--state", state, "--progress", "none"],
            cwd=tmp_path,
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`backfill {command}` still waited after 60 s")
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "1 partition(s) failed" in output, output
    assert "summary 2013-01-04 waits for failed fetch 2013-01-04" in output, output
    assert "backfill retry --failed" in output, output


FLEET_JOB = """
import asyncio
import os

from backfill import Job, daily, table

STATE = os.environ["BACKFILL_STATE"]
job = Job("restarts", partitions=daily("2013-01-01", "2013-12-31"))
readings = table(STATE, "readings", key=["day", "n"])
summaries = table(STATE, "summaries", key=["day"])


@job.stage(sink=readings, concurrency=2)
async def fetch(ctx, partition):
    await asyncio.sleep(0.1)
    return [{"day": partition.key, "n": n, "value": n * n} for n in range(ROWS)]


@job.stage(needs=["fetch"], sink=summaries, concurrency=2)
async def summary(ctx, partition):
    await asyncio.sleep(0.05)
    return [{"day": partition.key, "rows": ROWS}]
"""
ROWS = 20
DAYS = 365


@pytest.fixture
def own_cluster() -> Iterator[Cluster]:
    """A fresh PostgreSQL cluster on a free port, torn down afterwards."""
    with private_cluster() as cluster:
        yield cluster


def _count(url: str, sql: str) -> int:
    try:
        with psycopg.connect(url, connect_timeout=2) as conn:
            row = conn.execute(sql).fetchone()
            return int(row[0]) if row else 0
    except psycopg.Error:
        return 0


def _wait_for_done(url: str, at_least: int, workers: list[subprocess.Popen[str]]) -> None:
    deadline = time.monotonic() + 120
    query = "SELECT count(*) FROM backfill_partitions WHERE status = 'done'"
    while _count(url, query) < at_least:
        assert time.monotonic() < deadline, f"fewer than {at_least} partitions done in time"
        for w in workers:
            if w.poll() is not None:
                _, err = w.communicate()
                pytest.fail(f"a worker ended early with exit {w.returncode}: {err[-3000:]}")
        time.sleep(0.05)


def test_four_workers_ride_out_two_postgres_restarts(tmp_path: Path, own_cluster: Cluster) -> None:
    """Two `pg_ctl restart -m fast` under 4 workers whose sink is the ledger's database (rows
    and done-marks in one transaction): every worker reconnects and exits 0; every row is
    there once."""
    (tmp_path / "job.py").write_text(textwrap.dedent(FLEET_JOB).replace("ROWS", str(ROWS)))
    env = cli_env({"BACKFILL_STATE": own_cluster.url})
    workers = [
        subprocess.Popen(
            [*backfill_cmd(), "worker", "job.py", "--progress", "none"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    try:
        for at_least in (150, 400):
            _wait_for_done(own_cluster.url, at_least, workers)
            own_cluster.pg_ctl("restart", "-m", "fast")
        outputs = [w.communicate(timeout=240) for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.communicate()
    codes = [w.returncode for w in workers]
    assert codes == [0, 0, 0, 0], [err[-3000:] for _, err in outputs]
    url = own_cluster.url
    assert _count(url, "SELECT count(*) FROM readings") == DAYS * ROWS
    assert _count(url, "SELECT count(DISTINCT (day, n)) FROM readings") == DAYS * ROWS
    assert _count(url, "SELECT count(*) FROM summaries") == DAYS
    statuses = "SELECT count(*) FROM backfill_partitions WHERE status = 'done'"
    assert _count(url, statuses) == 2 * DAYS
