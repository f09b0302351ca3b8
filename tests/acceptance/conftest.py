"""Acceptance tests run the real ``backfill`` command in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

SAMPLE_JOB = """
import asyncio
import os
from pathlib import Path

from backfill import Job, PermanentError, RetryPolicy, daily

HERE = Path(__file__).parent
LOG = HERE / "executions.log"

job = Job("sample", partitions=daily("2013-01-01", "2013-03-31"))


@job.stage(concurrency=4, retry=RetryPolicy(attempts=2, base=0.0))
async def fetch(ctx, partition):
    with LOG.open("a") as log:
        log.write(partition.key + "\\n")
    await asyncio.sleep(float(os.environ.get("SAMPLE_DELAY", "0")))
    if partition.start.day == 13 and not (HERE / "fixed").exists():
        raise PermanentError(f"unlucky day {partition.key}", category="UNLUCKY")
    return [{"day": partition.key}]
"""


def backfill_cmd() -> list[str]:
    return [sys.executable, "-m", "backfill"]


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BACKFILL_")}
    env["COLUMNS"] = "200"
    env.update(extra or {})
    return env


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*backfill_cmd(), *args],
        cwd=cwd,
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def until_quota_line(run: subprocess.Popen[str]) -> tuple[list[str], threading.Thread]:
    """Read ``run``'s output on a thread until it says a quota is used up; the lines so
    far (the thread goes on adding to them) and the thread."""
    lines: list[str] = []

    def read() -> None:
        assert run.stdout is not None
        lines.extend(run.stdout)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_for(lambda: any("quota used up" in line for line in lines), 60, "the quota line")
    return lines, reader


def executions(workdir: Path) -> Counter[str]:
    log = workdir / "executions.log"
    if not log.exists():
        return Counter()
    return Counter(line for line in log.read_text().splitlines() if line)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory holding the sample job (90 daily partitions, the 13th of each month
    failing permanently until a file named ``fixed`` exists)."""
    (tmp_path / "job.py").write_text(textwrap.dedent(SAMPLE_JOB))
    return tmp_path
