"""A plain ``def`` stage whose calls hang past their timeout, through the real command:
the command ends without waiting for the threads it gave up on."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

from conftest import run_cli

JOB = """
import time

from backfill import Job, RetryPolicy, daily

job = Job("hangs", partitions=daily("2013-01-01", "2013-01-08"))


@job.stage(concurrency=2, timeout=0.5, retry=RetryPolicy(attempts=1))
def fetch(ctx, partition):
    if partition.start.day <= 2:
        time.sleep(300)  # a source that never answers
    return [{"day": partition.key}]
"""


def test_the_command_exits_without_waiting_for_hung_calls(tmp_path: Path) -> None:
    """Two calls hang for 5 minutes past a 0.5 s timeout: the command reports them
    failed as timeout, the other six done, and exits 1 long before the calls return."""
    (tmp_path / "job.py").write_text(textwrap.dedent(JOB))
    try:
        result = run_cli("run", "job.py", "--progress", "none", cwd=tmp_path, timeout=90)
    except subprocess.TimeoutExpired:
        raise AssertionError("the command waited for the hung calls' threads") from None
    assert result.returncode == 1, result.stdout + result.stderr
    assert "6 done, 0 empty, 2 failed, 0 left" in result.stdout, result.stdout
