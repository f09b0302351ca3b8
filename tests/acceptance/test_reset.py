"""`backfill reset` of upstream partitions, through the real command line, on SQLite and
PostgreSQL: what was computed from them shows stale at once."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import run_cli
from pg_support import fresh_schema

JOB = """
from backfill import Job, daily, needs

job = Job("pipe", partitions=daily("2013-01-01", "2013-01-10"))


@job.stage
def prices(ctx, partition):
    return [{"p": 1}]


@job.stage(needs=[needs("prices", lookback=2)])
def averages(ctx, partition):
    return [{"a": 1}]


@job.stage(needs=["averages"])
def report(ctx, partition):
    return None
"""


@pytest.fixture(params=["sqlite", "postgres"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/state.db"
    else:
        with fresh_schema() as url:
            yield url


def stale_keys(workdir: Path, state: str) -> dict[str, list[str]]:
    """Per stage, the keys `coverage --format json` shows stale, as ranges."""
    result = run_cli("coverage", "job.py", "--state", state, "--format", "json", cwd=workdir)
    assert result.returncode == 0, result.stderr
    gaps = json.loads(result.stdout)["gaps"]
    found: dict[str, list[str]] = {}
    for gap in gaps:
        if gap["state"] == "stale":
            found.setdefault(gap["stage"], []).append(f"{gap['first']}..{gap['last']}")
    return found


def test_reset_of_an_input_shows_what_was_computed_from_it_stale_at_once(
    tmp_path: Path, state: str
) -> None:
    """Reset one day of prices: the 3 averages whose windows hold it and the reports
    computed from those are stale right after the reset, before any run; the command
    says how many; the next run redoes exactly those."""
    (tmp_path / "job.py").write_text(textwrap.dedent(JOB))
    first = run_cli("run", "job.py", "--state", state, "--progress", "none", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert stale_keys(tmp_path, state) == {}
    reset = run_cli(
        "reset", "job.py", "--state", state, "--stage", "prices", "-p", "2013-01-05", "--yes",
        cwd=tmp_path,
    )  # fmt: skip
    assert reset.returncode == 0, reset.stdout + reset.stderr
    assert "reset 1 partition record(s) of job pipe" in reset.stdout
    assert "6 finished partition(s) of later stages are stale now" in reset.stdout
    assert stale_keys(tmp_path, state) == {
        "averages": ["2013-01-05..2013-01-07"],
        "report": ["2013-01-05..2013-01-07"],
    }
    again = run_cli("run", "job.py", "--state", state, "--progress", "none", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "7 partition(s) run this time" in again.stdout
    assert stale_keys(tmp_path, state) == {}
