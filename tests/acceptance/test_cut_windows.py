"""`plan` and `coverage --gaps` of a job whose windows are cut by its range's ends, through
the real command line: every label reads as one range, figures read as English."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from conftest import run_cli

JOB = """
from backfill import Job, PermanentError, RetryPolicy, weekly, yearly

job = Job("cut", partitions=weekly("2015-01-04", "2015-12-31"))
job.resource("api", rate="5/s", limits=["10/day"])


@job.stage(resource="api", requests_per_partition=5, retry=RetryPolicy(attempts=1))
def weather(ctx, partition):
    if partition.key == "2015-12-28..2015-12-31":
        raise PermanentError("station offline", category="OFFLINE")
    return [{"n": n} for n in range(7 * partition.days)]


@job.stage(
    partitions=yearly("2003-01-01", "2010-03-31", sym=["AAPL"]),
    retry=RetryPolicy(attempts=1),
)
def yearly_avg(ctx, partition):
    if partition.start.year >= 2009:
        raise PermanentError("no quotes", category="NO_DATA")
    return [{"avg": 1.0}]
"""


@pytest.fixture
def cut_job(tmp_path: Path) -> Path:
    (tmp_path / "job.py").write_text(textwrap.dedent(JOB))
    return tmp_path


def test_plan_prints_an_open_selection_and_a_quota_in_words(cut_job: Path) -> None:
    """`plan --from DAY` says `selection: from DAY`, and a quota the plan exceeds reads
    `at least N days`."""
    result = run_cli("plan", "job.py", "--from", "2015-06-01", cwd=cut_job)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    (selection,) = [line for line in lines if line.startswith("selection:")]
    assert selection.startswith("selection: from 2015-06-01 · "), selection
    assert "...." not in result.stdout
    (warning,) = [line for line in lines if line.startswith("warning:")]
    assert warning.endswith("more than the 10/day quota: at least 15.5 days"), warning


def test_coverage_gaps_of_cut_windows_read_as_one_range_each(cut_job: Path) -> None:
    """A failed week cut to four days, a range of failed years ending in a year cut to
    a quarter: each gap is one range of days; the first week, cut to its Sunday and
    holding a Sunday's records, is not thin."""
    first = run_cli("run", "job.py", "--progress", "none", cwd=cut_job)
    assert first.returncode == 1, first.stdout + first.stderr
    gaps = run_cli("coverage", "job.py", "--gaps", cwd=cut_job)
    assert gaps.returncode == 0, gaps.stderr
    lines = [line.strip() for line in gaps.stdout.splitlines() if line.startswith("  ")]
    assert lines == [
        "weather 2015-12-28..2015-12-31 failed: OFFLINE: station offline (1)",
        "yearly_avg AAPL 2009-01-01..2010-03-31 failed: NO_DATA: no quotes (2)",
    ]


RESUMED_JOB = """
from backfill import Job, daily

job = Job("learned", partitions=daily("2015-01-01", "2015-01-30"))
job.resource("api", rate="15/s")
job.resource("found", adaptive=True)


@job.stage(resource="api", requests_per_partition=10)
def pages(ctx, partition):
    return []


@job.stage(resource="found", requests_per_partition=10)
def more(ctx, partition):
    return []
"""


def test_plan_counts_at_the_rate_the_last_run_learned(tmp_path: Path) -> None:
    """A declared rate the last run was refused down from, and an adaptive limit it found:
    `plan` estimates at those, as the next run starts there, not at the declared 15/s
    nor leaving the adaptive one unknown."""
    import json

    from backfill.ledger import WorkerRecord, open_ledger

    (tmp_path / "job.py").write_text(textwrap.dedent(RESUMED_JOB))
    state = f"sqlite:///{tmp_path / 'state.db'}"
    ledger = open_ledger(state)
    try:
        now = time.time()
        ledger.register_worker(WorkerRecord("w1", "learned", "h", 1, now - 20, now - 20, None))
        learned = {
            "api": {"declared": "15/s", "adaptive": False, "settled": 5.0},
            "found": {"declared": None, "adaptive": True, "settled": 25.0},
        }
        ledger.heartbeat("w1", now=now - 10, resources=json.dumps(learned))
        ledger.stop_worker("w1", now=now - 9)
    finally:
        ledger.close()
    result = run_cli("plan", "job.py", "--state", state, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    (api,) = [line for line in lines if line.startswith("api:")]
    assert api.endswith("= 300 requests at 15/s (running at 5/s) ≈ 1m00s"), api
    (found,) = [line for line in lines if line.startswith("found:")]
    assert found.endswith(
        "= 300 requests at adaptive, now 12.50/s (25/s found by the last run) ≈ 12s"
    ), found


REFERENCE_JOB = """
from backfill import Job, daily

job = Job("refs", partitions=daily("2013-01-01", "2013-01-20"))
job.resource("api", rate="10/s", burst=2)


@job.stage(resource="api", reference=True)
def carriers(ctx, partition):
    return [{"n": 1}]


@job.stage(resource="api", needs=["carriers"], requests_per_partition=2)
def flights(ctx, partition):
    return [{"n": 1}]
"""


def test_plan_estimates_once_the_reference_tables_are_done(tmp_path: Path) -> None:
    """A reference stage that declares no requests per partition and ran once (too
    little history to go by): done, it needs nothing, and the days still to run get
    their estimate (the demo's `plan` said "requests per partition unknown" once its
    reference tables were in); with nothing left at all, `plan` says so."""
    (tmp_path / "job.py").write_text(textwrap.dedent(REFERENCE_JOB))
    state = f"sqlite:///{tmp_path / 'state.db'}"
    done = run_cli("run", "job.py", "--state", state, "--stage", "carriers", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = run_cli("plan", "job.py", "--state", state, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (api,) = [line for line in result.stdout.splitlines() if line.startswith("api:")]
    assert api == "api: 20 partitions × 2.0 requests (declared) = 40 requests at 10/s ≈ 4s", api
    run_cli("run", "job.py", "--state", state, cwd=tmp_path)
    result = run_cli("plan", "job.py", "--state", state, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "api: nothing to run" in result.stdout.splitlines(), result.stdout
