"""Keeping a job current (`backfill run --through yesterday`, `refresh_last=`): after a
day change, exactly the new day and the refresh window are fetched, their rows replaced,
their downstream partitions redone; `backfill plan` says so beforehand. A second run of a
job live on a SQLite state exits 75 naming the run that holds it, writing nothing."""

from __future__ import annotations

import sqlite3
import subprocess
import textwrap
import time
from collections import Counter
from pathlib import Path

from conftest import backfill_cmd, cli_env, run_cli

DAILY_JOB = """
import os
from pathlib import Path

from backfill import Job, daily, table

HERE = Path(__file__).parent
LOG = HERE / "fetches.log"
OUT = f"sqlite:///{HERE / 'out.db'}"

job = Job("racing", partitions=daily("2024-03-25", "2024-03-27"), tz="Europe/London")


@job.stage(refresh_last=2, sink=table(OUT, "results", key=["day"]))
def fetch(ctx, partition):
    with LOG.open("a") as log:
        log.write(f"fetch {partition.key}\\n")
    version = os.environ.get("SOURCE_VERSION", "1")
    hours = (partition.ends - partition.begins).total_seconds() / 3600
    return [{"day": partition.key, "version": version, "hours": hours}]


@job.stage(needs=["fetch"], sink=table(OUT, "summary", key=["day"]))
def summary(ctx, partition):
    with LOG.open("a") as log:
        log.write(f"summary {partition.key}\\n")
    return [{"day": partition.key, "version": os.environ.get("SOURCE_VERSION", "1")}]
"""


def fetched(workdir: Path) -> Counter[str]:
    log = workdir / "fetches.log"
    lines = log.read_text().splitlines() if log.exists() else []
    (workdir / "fetches.log").unlink(missing_ok=True)
    return Counter(lines)


def rows(workdir: Path, table: str) -> dict[str, tuple[str, float | None]]:
    with sqlite3.connect(workdir / "out.db") as db:
        found = db.execute(
            f"SELECT day, version, {'hours' if table == 'results' else 'NULL'} FROM {table}"
        )
        return {day: (version, hours) for day, version, hours in found}


def test_a_keep_current_run_after_a_day_change_fetches_the_new_day_and_the_refresh_window(
    tmp_path: Path,
) -> None:
    """Day one fetches 25 March to 1 April; on 3 April (London) `--through yesterday`
    fetches 2 April and redoes 31 March and 1 April (refresh_last=2) with the source's
    corrections, and their summaries; every other row stays as it was."""
    (tmp_path / "job.py").write_text(textwrap.dedent(DAILY_JOB))
    args = ("run", "job.py", "--through", "yesterday", "--progress", "none")
    first = run_cli(*args, cwd=tmp_path, env={"BACKFILL_NOW": "2024-04-02T06:15:00+01:00"})
    assert first.returncode == 0, first.stdout + first.stderr
    days = [f"2024-03-{d}" for d in range(25, 32)] + ["2024-04-01"]
    assert fetched(tmp_path) == Counter(
        [f"fetch {d}" for d in days] + [f"summary {d}" for d in days]
    )
    assert rows(tmp_path, "results")["2024-03-31"] == ("1", 23.0)  # the clocks went forward

    plan = run_cli(
        "plan",
        "job.py",
        "--through",
        "yesterday",
        cwd=tmp_path,
        env={"BACKFILL_NOW": "2024-04-03T06:15:00+01:00"},
    )
    assert plan.returncode == 0, plan.stderr
    assert "through 2024-04-02" in plan.stdout
    assert (
        "fetch: 2 finished partition(s) in the last 2 days (2024-03-31..2024-04-01)" in plan.stdout
    )

    second = run_cli(
        *args,
        cwd=tmp_path,
        env={"BACKFILL_NOW": "2024-04-03T06:15:00+01:00", "SOURCE_VERSION": "2"},
    )
    assert second.returncode == 0, second.stdout + second.stderr
    assert "refresh: fetch: 2 finished partition(s)" in second.stdout
    redone = ["2024-03-31", "2024-04-01", "2024-04-02"]
    assert fetched(tmp_path) == Counter(
        [f"fetch {d}" for d in redone] + [f"summary {d}" for d in redone]
    )
    results = rows(tmp_path, "results")
    assert len(results) == 9
    assert {d for d, (v, _) in results.items() if v == "2"} == set(redone)
    summary = rows(tmp_path, "summary")
    assert len(summary) == 9
    assert {d for d, (v, _) in summary.items() if v == "2"} == set(redone)

    # The same morning again: no new day, the refresh window only.
    again = run_cli(*args, cwd=tmp_path, env={"BACKFILL_NOW": "2024-04-03T07:00:00+01:00"})
    assert again.returncode == 0, again.stderr
    assert fetched(tmp_path) == Counter(
        [f"fetch {d}" for d in redone[1:]] + [f"summary {d}" for d in redone[1:]]
    )
    assert len(rows(tmp_path, "results")) == 9


SLOW_JOB = """
import time
from pathlib import Path

from backfill import Job, daily, table

HERE = Path(__file__).parent

job = Job("slow", partitions=daily("2024-01-01", "2024-01-04"))


@job.stage(concurrency=1, sink=table(f"sqlite:///{HERE / 'out.db'}", "rows", key=["day"]))
def fetch(ctx, partition):
    (HERE / "started").touch()
    deadline = time.monotonic() + 60
    while not (HERE / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return [{"day": partition.key}]
"""


def test_a_second_run_on_a_live_sqlite_state_exits_75_naming_the_holder(tmp_path: Path) -> None:
    """While one run works, a second of the same job exits 75 with one line naming the
    live run, and writes nothing; the first finishes everything once."""
    (tmp_path / "job.py").write_text(textwrap.dedent(SLOW_JOB))
    first = subprocess.Popen(
        [*backfill_cmd(), "run", "job.py", "--progress", "none"],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "started").exists():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first run never started its stage"
            time.sleep(0.05)
        second = run_cli("run", "job.py", "--progress", "none", cwd=tmp_path)
        assert second.returncode == 75, second.stdout + second.stderr
        lines = [line for line in second.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, second.stderr
        assert "held by live run" in lines[0]
        assert second.stdout == ""
    finally:
        (tmp_path / "go").touch()
        out, errors = first.communicate(timeout=120)
    assert first.returncode == 0, out + errors
    with sqlite3.connect(tmp_path / "out.db") as db:
        assert db.execute("SELECT count(*) FROM rows").fetchone() == (4,)
    # The second run left no trace: one run on record.
    with sqlite3.connect(tmp_path / ".backfill" / "state.db") as db:
        assert db.execute("SELECT count(*) FROM backfill_runs").fetchone() == (1,)


JOINING_JOB = """
import time
from pathlib import Path

from backfill import Job, daily

HERE = Path(__file__).parent

job = Job("joined", partitions=daily("2024-01-01", "2024-01-12"))


@job.stage(concurrency=1)
def fetch(ctx, partition):
    with (HERE / "executions.log").open("a") as log:
        log.write(partition.key + "\\n")
    deadline = time.monotonic() + 60
    while not (HERE / "go").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return None
"""


def test_a_second_run_on_a_live_postgres_state_joins_it_as_a_worker(tmp_path: Path) -> None:
    """On PostgreSQL the second run joins the live one: both exit 0 and every partition
    runs exactly once between them."""
    import psycopg

    from pg_support import fresh_schema

    (tmp_path / "job.py").write_text(textwrap.dedent(JOINING_JOB))
    with fresh_schema() as state:
        cmd = [*backfill_cmd(), "run", "job.py", "--state", state, "--progress", "none"]
        spawn = dict(
            cwd=tmp_path,
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        first = subprocess.Popen(cmd, **spawn)  # type: ignore[call-overload]
        second = None
        try:
            deadline = time.monotonic() + 60
            while not (tmp_path / "executions.log").exists():
                assert first.poll() is None, first.communicate()
                assert time.monotonic() < deadline, "the first run never started its stage"
                time.sleep(0.05)
            second = subprocess.Popen(cmd, **spawn)  # type: ignore[call-overload]
            with psycopg.connect(state, autocommit=True) as db:
                while True:
                    (workers,) = db.execute(
                        "SELECT count(*) FROM backfill_workers WHERE stopped_at IS NULL"
                    ).fetchone()
                    if workers >= 2:
                        break
                    assert second.poll() is None, second.communicate()
                    assert time.monotonic() < deadline + 60, "the second run never joined"
                    time.sleep(0.05)
        finally:
            (tmp_path / "go").touch()
            outputs = [p.communicate(timeout=120) for p in (first, second) if p is not None]
    assert first.returncode == 0, outputs[0]
    assert second is not None and second.returncode == 0, outputs[1]
    runs = Counter((tmp_path / "executions.log").read_text().split())
    assert len(runs) == 12
    assert set(runs.values()) == {1}


FRESH_JOB = """
from backfill import Job, daily, hourly

job = Job("fresh", partitions=daily("2024-03-28", "yesterday"), tz="Europe/London")


@job.stage
def fetch(ctx, partition):
    return None


@job.stage(partitions=hourly("2024-03-31", "2024-03-31", tz="Europe/London"))
def ticks(ctx, partition):
    return None
"""


def test_status_metrics_and_coverage_check_show_freshness(tmp_path: Path) -> None:
    """After a run on 2 April (London), status and /metrics say the newest day done is
    1 April, 6h 15m behind at 06:15 BST; the hourly stage's newest hour ended at 23:00
    UTC on 31 March; the next morning the coverage check fails until a run catches up."""
    from backfill.job import load_job
    from backfill.ledger import open_ledger
    from backfill.web.metrics import render_metrics

    (tmp_path / "job.py").write_text(textwrap.dedent(FRESH_JOB))
    day_two = {"BACKFILL_NOW": "2024-04-02T06:15:00+01:00"}
    ran = run_cli("run", "job.py", "--progress", "none", cwd=tmp_path, env=day_two)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    status = run_cli("status", "job.py", cwd=tmp_path, env=day_two)
    assert "fetch: newest done 2024-04-01, 6h 15m behind" in status.stdout
    assert "ticks: newest done 2024-03-31T22, 1d 6h behind" in status.stdout

    check = run_cli(
        "coverage",
        "job.py",
        "--stage",
        "fetch",
        "--fail-on-gaps",
        "--through",
        "yesterday",
        cwd=tmp_path,
        env=day_two,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    day_three = {"BACKFILL_NOW": "2024-04-03T06:15:00+01:00"}
    late = run_cli(
        "coverage",
        "job.py",
        "--stage",
        "fetch",
        "--gaps",
        "--fail-on-gaps",
        "--through",
        "yesterday",
        cwd=tmp_path,
        env=day_three,
    )
    assert late.returncode == 1, late.stdout + late.stderr
    assert "2024-04-02" in late.stdout

    import os

    os.environ["BACKFILL_NOW"] = day_two["BACKFILL_NOW"]
    try:
        job = load_job(str(tmp_path / "job.py"))
        ledger = open_ledger(f"sqlite:///{tmp_path / '.backfill' / 'state.db'}")
        try:
            text = render_metrics(job, ledger).decode()
        finally:
            ledger.close()
    finally:
        del os.environ["BACKFILL_NOW"]
    assert 'backfill_freshness_seconds{job="fresh",stage="fetch"} 22500.0' in text
    assert 'backfill_freshness_seconds{job="fresh",stage="ticks"} 108900.0' in text
