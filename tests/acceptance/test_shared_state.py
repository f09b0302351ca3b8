"""`backfill run` and `backfill worker` on a shared PostgreSQL state, at the edges: work
blocked by a failed input, and the database restarting under a fleet."""

from __future__ import annotations

import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import backfill_cmd, cli_env

from pg_support import fresh_schema

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
