"""Acceptance tests run the real ``backfill`` command in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import Counter
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
