"""A full disk under the state, the sink and the log: fatal at once, one line, exit 2;
the next run, with space again, finishes exactly."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import run_cli

DAYS = 90
ROWS_PER_DAY = 200

# About 4 MB of rows for a 2 MB disk, in a SQLite file or a DuckDB one.
JOB = """
import os

from backfill import Job, SQLiteTable, daily
from backfill.sinks.duckdb import DuckDBTable

DISK = os.environ["DISK"]
SINK = SQLiteTable if os.environ["SINK"] == "sqlite" else DuckDBTable
job = Job(
    "full",
    partitions=daily("2013-01-01", "2013-03-31"),
    sink=SINK(f"{DISK}/rows.{os.environ['SINK']}", "rows", key=["day", "n"]),
)


@job.stage(concurrency=4)
def fetch(ctx, partition):
    return [
        {"day": partition.key, "n": n, "payload": f"{partition.key}/{n}/" + "x" * 200}
        for n in range(200)
    ]
"""


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs, always unmounted afterwards (skipped where mounting is not allowed)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.parametrize(
    ("sink", "taken"),
    [("sqlite", 0), ("sqlite", 1_950_000), ("duckdb", 0)],
    ids=["empty-disk", "nearly-full-disk", "duckdb-sink"],
)
def test_a_full_disk_is_one_line_exit_2_and_the_next_run_finishes(
    tmp_path: Path, small_disk: Path, sink: str, taken: int
) -> None:
    """State, sink and log on a disk that fills (while rows are written, or as soon as
    the state and the log are): exit 2, one error line naming the path, no traceback
    nor logging error, the summary printed; with space again the same command finishes
    with every row exactly once. (A DuckDB sink's failed commit was retried as a busy
    file for two minutes, a warning a try, and never said the disk was full.)"""
    (tmp_path / "job.py").write_text(textwrap.dedent(JOB))
    if taken:
        (small_disk / "taken").write_bytes(b"\0" * taken)
    args = ["run", "job.py", "--state", f"sqlite:///{small_disk}/state.db"]
    args += ["--log-dir", str(small_disk / "logs"), "--progress", "plain"]
    env = {"DISK": str(small_disk), "SINK": sink}

    full = run_cli(*args, cwd=tmp_path, env=env)
    output = full.stdout + full.stderr
    assert full.returncode == 2, output
    assert "Traceback" not in output
    assert "Logging error" not in output
    errors = [line for line in full.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, full.stderr
    assert f"disk full writing {small_disk}/" in errors[0]
    assert "free space and run again" in errors[0]
    assert len(full.stderr.splitlines()) <= 2, full.stderr  # the error, a log warning
    assert "fatal" in full.stdout and "selection:" in full.stdout  # the summary

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    again = run_cli(*args, cwd=tmp_path, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    with sqlite3.connect(small_disk / "state.db") as conn:
        statuses = dict(conn.execute("SELECT status, count(*) FROM backfill_partitions GROUP BY 1"))
    assert statuses == {"done": DAYS}
    count = "SELECT count(*), count(DISTINCT day) FROM rows"
    if sink == "sqlite":
        with sqlite3.connect(small_disk / "rows.sqlite") as conn:
            rows = conn.execute(count).fetchone()
    else:
        import duckdb

        with duckdb.connect(str(small_disk / "rows.duckdb")) as db:
            rows = db.execute(count).fetchone()
    assert rows == (DAYS * ROWS_PER_DAY, DAYS)
