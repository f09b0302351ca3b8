"""The HTML coverage report stays small on a real SQLite ledger of many partitions, and
still holds a square per partition in its state."""

from __future__ import annotations

import re
import sqlite3
from collections import Counter
from pathlib import Path

from backfill import Context, Job, Partition, daily, yearly
from backfill import coverage as cov
from backfill.ledger import open_ledger, open_reader

CELL = re.compile(r"<i class=(\w+)>")


def planned(path: Path, job: Job) -> None:
    """Plan every stage of ``job`` in a ledger file, then give its partitions a mix of
    states with a few bulk updates: by row id, 80 % done, 5 % empty, 1 % failed (each
    with its own message), 0.1 % running, the rest pending."""
    ledger = open_ledger(f"sqlite:///{path}")
    for name, stage in job.stages.items():
        ledger.plan(job.name, name, stage.partitions.partitions())
    ledger.close()
    with sqlite3.connect(path) as conn:
        conn.executescript(
            """
            UPDATE backfill_partitions SET status = 'done', attempts = 1, finished_at = id,
                records = 20 + abs(random()) % 30 WHERE id % 100 < 80;
            UPDATE backfill_partitions SET status = 'empty', attempts = 1, finished_at = id,
                records = 0, error_message = 'no games that day' WHERE id % 100 BETWEEN 80 AND 84;
            UPDATE backfill_partitions SET status = 'failed', attempts = 3, finished_at = id,
                error_category = 'timeout',
                error_message = 'read timed out after 30 s (' || id || ')' WHERE id % 100 = 85;
            UPDATE backfill_partitions SET status = 'running', lease_owner = 'w',
                lease_expires_at = 1e12 WHERE id % 1000 = 999;
            """
        )
    conn.close()


def report(path: Path, job: Job) -> tuple[str, cov.Coverage]:
    ledger = open_reader(f"sqlite:///{path}")
    try:
        coverage = cov.collect(job, ledger, list(job.stages.values()))
    finally:
        ledger.close()
    return cov.to_html(coverage), coverage


def test_the_report_of_100000_daily_partitions_stays_under_5_mb(tmp_path: Path) -> None:
    """1,000 days x 100 regions: the page is under 5 MB (it was 15 MB, every square
    carrying its key, state, colour and title inline) and still has one square per
    partition, in its state."""
    job = Job("big", partitions=daily("2013-01-01", "2015-09-27", region=range(100)))

    @job.stage()
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, str]]:
        return []

    planned(tmp_path / "state.db", job)
    page, coverage = report(tmp_path / "state.db", job)
    size = len(page.encode())
    print(f"coverage HTML of 100,000 partitions: {size:,} bytes")
    assert size < 5_000_000, size
    shown = Counter(CELL.findall(page))
    counts = {s.value: n for s, n in coverage.counts("fetch").items() if n}
    assert sum(shown.values()) == 100_000
    assert shown == counts


def test_the_report_of_952_yearly_partitions_is_a_square_each(tmp_path: Path) -> None:
    """28 seasons x 34 teams: a square per season (it painted each season's 365 days, in
    each team's calendar: 48 MB), well under a megabyte."""
    teams = [f"team{i:02d}" for i in range(34)]
    job = Job("seasons", partitions=yearly("1996-01-01", "2023-12-31", team=teams))

    @job.stage()
    async def games(ctx: Context, partition: Partition) -> list[dict[str, str]]:
        return []

    planned(tmp_path / "state.db", job)
    page, coverage = report(tmp_path / "state.db", job)
    size = len(page.encode())
    print(f"coverage HTML of 952 yearly partitions: {size:,} bytes")
    assert size < 200_000, size
    shown = Counter(CELL.findall(page))
    assert sum(shown.values()) == 952
    assert shown == {s.value: n for s, n in coverage.counts("games").items() if n}
