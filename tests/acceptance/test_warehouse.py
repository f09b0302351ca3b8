"""Warehouse jobs through the real CLI: a daily query quota holds across a kill and a
restart; an unknown dialect and an unreachable warehouse are one line and exit 2; a
syntax error fails its partitions with the database's message."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import textwrap
import time
from pathlib import Path

from conftest import backfill_cmd, cli_env, run_cli, until_quota_line, wait_for

QUOTA_JOB = """
from backfill import Job, daily

job = Job("wq", partitions=daily("2013-01-01", "2013-01-30"))
job.warehouse("warehouse", "sqlite:///warehouse.db", concurrency=2, limits=["6/day"])


@job.stage(resource="warehouse", concurrency=2)
async def count(ctx, partition):
    await ctx.sql.execute("INSERT INTO hits (day) VALUES (:day)")
    return None
"""


def _hits(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM hits").fetchone()[0])


def _start(workdir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*backfill_cmd(), "run", "job.py", "--progress", "plain"],
        cwd=workdir,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_daily_query_quota_holds_across_a_kill_and_a_restart(tmp_path: Path) -> None:
    """6 queries a day: a run killed with SIGKILL after 3, then run again, runs at most
    6 queries in all, and the second run waits for the quota, saying so."""
    with sqlite3.connect(tmp_path / "warehouse.db") as conn:
        conn.execute("CREATE TABLE hits (day TEXT)")
    (tmp_path / "job.py").write_text(textwrap.dedent(QUOTA_JOB))
    first = _start(tmp_path)
    wait_for(lambda: _hits(tmp_path / "warehouse.db") >= 3, 60, "3 queries")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    second = _start(tmp_path)
    lines, reader = until_quota_line(second)
    time.sleep(1.0)  # nothing more runs while it waits
    second.send_signal(signal.SIGINT)
    second.wait(timeout=30)
    reader.join(timeout=10)
    output = "".join(lines)
    assert second.returncode == 130, output
    hits = _hits(tmp_path / "warehouse.db")
    # A kill may cost the starts the killed run had booked but not used (its concurrency).
    assert 6 - 2 <= hits <= 6, output
    assert "resource warehouse: quota used up (6/day)" in output


BAD_JOB = """
from backfill import Job, daily

job = Job("bad", partitions=daily("2013-01-01", "2013-01-03"))
job.warehouse("warehouse", {url!r})


@job.stage(resource="warehouse")
async def q(ctx, partition):
    return await ctx.sql.records({sql!r})
"""


def _bad(
    tmp_path: Path, url: str, sql: str = "SELECT :day AS d"
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "job.py").write_text(textwrap.dedent(BAD_JOB.format(url=url, sql=sql)))
    return run_cli("run", "job.py", "--progress", "plain", cwd=tmp_path)


def test_unknown_dialect_is_exit_2_in_one_line(tmp_path: Path) -> None:
    """A URL of an unknown dialect stops at loading: exit 2, one line naming it."""
    result = _bad(tmp_path, "nosuchdb://host/db")
    assert result.returncode == 2, result.stdout + result.stderr
    message = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(message) == 1, result.stderr
    assert "unknown SQL dialect 'nosuchdb'" in message[0]


def test_unreachable_warehouse_is_exit_2_in_one_line(tmp_path: Path) -> None:
    """A warehouse nobody answers at: exit 2, one line naming it, no password."""
    result = _bad(tmp_path, "postgresql://me:hunter2@127.0.0.1:1/db")
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "hunter2" not in output
    lines = [line for line in result.stderr.splitlines() if "cannot reach warehouse" in line]
    assert len(lines) == 1, output
    assert "127.0.0.1:1" in lines[0]


def test_syntax_error_fails_each_partition_with_the_databases_message(tmp_path: Path) -> None:
    """A query the database refuses fails its partitions (exit 1) with its one-line
    message in `backfill status`."""
    url = f"duckdb:///{tmp_path / 'w.duckdb'}"
    result = _bad(tmp_path, url, "SELEC :day")
    assert result.returncode == 1, result.stdout + result.stderr
    status = run_cli("status", "job.py", cwd=tmp_path)
    assert "syntax error" in status.stdout, status.stdout + status.stderr
    assert status.stdout.count("syntax error") >= 1
