"""The dashboard follows a state that does not exist yet, or is replaced, on a real SQLite
file and a real PostgreSQL database."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from backfill import Context, Job, Partition, daily
from backfill.ledger import open_ledger
from backfill.testing import run_job
from backfill.web.snapshot import Dashboard, StateReader
from pg_support import fresh_schema


def small_job(last: str = "2013-01-10") -> Job:
    job = Job("late", partitions=daily("2013-01-01", last))

    @job.stage()
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, str]]:
        return [{"day": partition.key}]

    return job


class Ticks:
    """A clock the test moves on: the reader looks again only when it is told to."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_schema() as url:
        yield url


def tables(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchall()
    return [r[0] for r in rows]


def test_postgres_tables_created_after_the_dashboard_started_are_picked_up(pg_url: str) -> None:
    """Before the first run the snapshot says it waits (and no table appears); once a
    run has created the tables, the next look finds them and the progress shows."""
    job = small_job()
    ticks = Ticks()
    dashboard = Dashboard(job, StateReader.open(pg_url, clock=ticks))
    before = dashboard.snapshot()
    assert before["waiting"].startswith("no state in postgresql://")
    assert before["stages"][0]["finished"] == 0
    assert tables(pg_url) == []
    writer = open_ledger(pg_url)
    try:
        run_job(job, writer)
    finally:
        writer.close()
    assert dashboard.snapshot()["waiting"] is not None  # not looked again yet
    ticks.now += 1.0
    after = dashboard.snapshot()
    dashboard.state.close()
    assert after["waiting"] is None
    assert (after["stages"][0]["done"], after["stages"][0]["finished"]) == (10, 10)
    assert after["runs"][0]["status"] == "done"


def test_a_sqlite_state_replaced_by_a_new_one_is_read_again(tmp_path: Path) -> None:
    """A state file deleted and created anew (``demo --fresh``) while the dashboard
    reads it: the dashboard waits while it is gone, then reads the new one."""
    state = tmp_path / "state.db"
    url = f"sqlite:///{state}"
    ticks = Ticks()
    first = open_ledger(url)
    run_job(small_job(), first)
    first.close()
    dashboard = Dashboard(small_job("2013-01-20"), StateReader.open(url, clock=ticks))
    assert dashboard.snapshot()["stages"][0]["finished"] == 10
    for name in ("state.db", "state.db-wal", "state.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    ticks.now += 1.0
    gone = dashboard.snapshot()
    assert gone["waiting"] == f"no state at {state}; nothing has run yet"
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    second = open_ledger(f"sqlite:///{fresh / 'state.db'}")
    run_job(small_job("2013-01-20"), second)
    second.close()
    for path in fresh.iterdir():
        shutil.move(path, tmp_path / path.name)
    ticks.now += 1.0
    again = dashboard.snapshot()
    dashboard.state.close()
    assert again["waiting"] is None
    assert again["stages"][0]["finished"] == 20


def test_a_state_without_this_job_says_it_waits_for_its_first_run(tmp_path: Path) -> None:
    """A state where another job ran, but not this one: the snapshot says nothing of
    this job is recorded yet, instead of showing an idle 0 of 10."""
    url = f"sqlite:///{tmp_path / 'state.db'}"
    other = Job("other", partitions=daily("2013-01-01", "2013-01-02"))

    @other.stage()
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, str]]:
        return []

    writer = open_ledger(url)
    run_job(other, writer)
    writer.close()
    dashboard = Dashboard(small_job(), StateReader.open(url))
    snapshot = dashboard.snapshot()
    dashboard.state.close()
    assert snapshot["waiting"] == "nothing of job late is recorded in this state yet"
