"""The CLI on untrusted sources: a hostile answer fails its partition only; paused
resources can be released; a job file cannot exit the command."""

from __future__ import annotations

import sqlite3
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from backfill.ledger.postgres import PostgresLedger
from backfill.ledger.sqlite import SQLiteLedger
from conftest import run_cli
from hostile_server import HostileServer
from pg_support import fresh_schema

KEY = "k-77c1e0a4d2"
TOKEN = "tok-4be2a91f0c"

JOB = """
from backfill import Job, NextUrl, RetryPolicy, daily

ORIGIN = {origin!r}
OTHER = {other!r}

job = Job("untrusted", partitions=daily("2013-01-01", "2013-01-03"))
job.resource(
    "api",
    rate="50/s",
    shared={shared!r},
    base_url=ORIGIN,
    cross_origin="refuse",
    params={{"api_key": {key!r}}},
    headers={{"X-Auth-Token": {token!r}}},
)


@job.stage(resource="api", retry=RetryPolicy(attempts=2, base=0.0))
async def pages(ctx, partition):
    # The 2nd leads to another origin on its second page: refused, that partition fails.
    to = OTHER if partition.key == "2013-01-02" else ORIGIN
    records = []
    async for page in ctx.http.paginate(
        f"/next?day={{partition.key}}&to={{to}}", pagination=NextUrl()
    ):
        records += [{{"day": partition.key, "page": n}} for n in page.records]
    return records
"""


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    with HostileServer.running() as server:
        yield server


def write_job(workdir: Path, hostile: HostileServer, *, shared: bool = False) -> Path:
    path = workdir / "job.py"
    text = JOB.format(
        origin=hostile.origin, other=hostile.other, key=KEY, token=TOKEN, shared=shared
    )
    path.write_text(textwrap.dedent(text))
    return path


def test_a_link_to_another_origin_fails_its_partition_only_and_the_rerun_only_it(
    hostile: HostileServer, tmp_path: Path
) -> None:
    """With cross_origin='refuse', the partition whose next link leaves the origin fails
    as `cross_origin` naming the origin; the others are done (exit 1); the other origin
    never sees a request; `retry --failed` touches that partition alone; no credential
    appears in the output or the ledger."""
    write_job(tmp_path, hostile)
    state = f"sqlite:///{tmp_path / 'state.db'}"
    first = run_cli("run", "job.py", "--state", state, "--progress", "none", cwd=tmp_path)
    assert first.returncode == 1, first.stderr
    assert hostile.seen_on(hostile.other) == []
    with sqlite3.connect(tmp_path / "state.db") as db:
        rows = dict(
            db.execute(
                "SELECT key, status || ' ' || coalesce(error_category, '') FROM backfill_partitions"
            ).fetchall()
        )
        dump = "\n".join(db.iterdump())
    assert rows == {
        "2013-01-01": "done ",
        "2013-01-02": "failed cross_origin",
        "2013-01-03": "done ",
    }
    assert hostile.other in dump
    days_before = len(hostile.seen)
    again = run_cli(
        "retry", "job.py", "--failed", "--state", state, "--progress", "none", cwd=tmp_path
    )
    assert again.returncode == 1, again.stderr
    rerun = hostile.seen[days_before:]
    assert rerun
    assert {s.query["day"][0] for s in rerun} == {"2013-01-02"}
    assert hostile.seen_on(hostile.other) == []
    for text in (first.stdout, first.stderr, again.stdout, again.stderr, dump):
        assert KEY not in text
        assert TOKEN not in text


def test_a_job_file_that_exits_at_import_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """`sys.exit(0)` in a job file is an error (exit 2, one line naming the call and the
    line), not a silent success, and leaves no state behind."""
    (tmp_path / "job.py").write_text("import sys\n\nsys.exit(0)\n")
    done = run_cli("run", "job.py", "--state", "state.db", cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "exits while it is imported (sys.exit(0) at line 3)" in lines[0]
    assert not (tmp_path / "state.db").exists()


def test_resume_resource_releases_a_stored_pause_of_31_years(
    hostile: HostileServer, tmp_path: Path
) -> None:
    """On a PostgreSQL state, `backfill resume-resource JOB NAME` ends the stored pause and
    says what was left of it (exit 0); asked again, it says the resource was not paused."""
    write_job(tmp_path, hostile)
    with fresh_schema() as url:
        ledger = PostgresLedger(url)
        ledger.take_starts("untrusted", "api", count=1, interval=0.02, tolerance=0.0)
        ledger.pause_resource("untrusted", "api", 999_999_999.0)
        ledger.close()
        done = run_cli("resume-resource", "job.py", "api", "--state", url, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().startswith("resource api of job untrusted released")
        assert "d" in done.stdout.split("had")[1]
        again = run_cli("resume-resource", "job.py", "api", "--state", url, cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip() == "resource api of job untrusted was not paused"
        ledger = PostgresLedger(url)
        _, paused, _, _ = ledger.take_starts(
            "untrusted", "api", count=1, interval=0.02, tolerance=0.0
        )
        ledger.close()
        assert paused <= 0


def test_resume_resource_names_the_resources_of_the_job_when_unknown(
    hostile: HostileServer, tmp_path: Path
) -> None:
    """An unknown resource name is one sentence listing the job's resources, exit 2."""
    write_job(tmp_path, hostile)
    done = run_cli("resume-resource", "job.py", "apii", "--state", "state.db", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: job 'untrusted' has no resource 'apii'; its resources are: api"
    ]


@pytest.mark.parametrize("shared", [False, True])
def test_resume_resource_releases_a_pause_kept_in_a_sqlite_state(
    hostile: HostileServer, tmp_path: Path, shared: bool
) -> None:
    """A SQLite state keeps a resource's pause between runs too (a shared resource's for
    every job): the command releases it (exit 0), and the next booking is due at once."""
    write_job(tmp_path, hostile, shared=shared)
    scope = "*" if shared else "untrusted"
    ledger = SQLiteLedger(tmp_path / "state.db")
    ledger.take_starts(scope, "api", count=1, interval=0.02, tolerance=0.0)
    ledger.pause_resource(scope, "api", 600.0)
    ledger.close()
    done = run_cli("resume-resource", "job.py", "api", "--state", "state.db", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "released: its pause had" in done.stdout
    ledger = SQLiteLedger(tmp_path / "state.db")
    due, paused, _, _ = ledger.take_starts(scope, "api", count=1, interval=0.02, tolerance=0.0)
    ledger.close()
    assert paused <= 0
    assert due == [0.0]


def test_resume_resource_on_a_state_nothing_ran_on_changes_nothing(
    hostile: HostileServer, tmp_path: Path
) -> None:
    """Where nothing has run, nothing is paused: the command says so, exits 0, and creates
    no state."""
    write_job(tmp_path, hostile)
    done = run_cli("resume-resource", "job.py", "api", "--state", "state.db", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "resource api of job untrusted was not paused"
    assert not (tmp_path / "state.db").exists()


CAPPED_JOB = """
from backfill import Job, RetryPolicy, daily

job = Job("capped", partitions=daily("2013-01-01", "2013-01-01"))
job.resource("api", rate="50/s", retries=0, max_wait=1)


@job.stage(resource="api", retry=RetryPolicy(attempts=1))
async def fetch(ctx, partition):
    await ctx.http.get_json({url!r})
    return []
"""


def test_a_wait_cut_to_max_wait_is_said_in_the_progress_and_the_log(
    hostile: HostileServer, tmp_path: Path
) -> None:
    """A 429 asking for a day pauses a resource with max_wait=1 for 1 s, and the progress
    lines and the run's log both say what was asked and what is waited."""
    url = f"{hostile.origin}/header?h=Retry-After:86400&status=429"
    (tmp_path / "job.py").write_text(textwrap.dedent(CAPPED_JOB.format(url=url)))
    done = run_cli(
        "run", "job.py", "--state", "state.db", "--progress", "plain", cwd=tmp_path, timeout=60
    )
    assert done.returncode == 1, done.stderr
    said = "asked for 86400 s, waiting the cap of 1 s"
    assert said in done.stdout
    (log,) = (tmp_path / "logs").glob("*.jsonl")
    assert said in log.read_text()
