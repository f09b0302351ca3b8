#!/usr/bin/env python
"""Dashboard and coverage report benchmark: what one snapshot costs, how large it is, and
how large the HTML coverage report is, for jobs of a few hundred to 100,000 partitions.

Run from the repository root::

    .venv/bin/python bench/dashboard_bench.py

Each case plans its job into a fresh SQLite ledger and gives the partitions a mix of
states with a few bulk updates (by row id: 80 % done, 5 % empty, 1 % failed, 0.1 %
running, the rest pending; reference stages done). Then it times
:meth:`~backfill.web.snapshot.Dashboard.snapshot` (the median of 5, wall and CPU) against
the baseline of the same run, the ledger's own per-stage counts (what any status display
needs at least), and measures the snapshot's JSON and the HTML coverage report.

This is a measurement, not a test: it asserts no timings and exits 0 unless it crashes.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import _machine
from backfill import Context, Job, Partition, daily, yearly
from backfill import coverage as cov
from backfill.cli import load_job
from backfill.ledger import open_ledger, open_reader
from backfill.web.snapshot import Dashboard

REPEAT = 5


def _noop_job(job: Job, reference: bool) -> Job:
    if reference:

        @job.stage(reference=True)
        async def teams(ctx: Context, partition: Partition) -> None:
            return None

    @job.stage(needs=["teams"] if reference else ())
    async def fetch(ctx: Context, partition: Partition) -> None:
        return None

    return job


def cases() -> dict[str, Callable[[], Job]]:
    return {
        "demo job (3 reference stages, 2 x 365 days)": lambda: load_job(
            "backfill.demo.flights:job"
        ),
        "yearly x 34 teams (952)": lambda: _noop_job(
            Job("seasons", partitions=yearly("1996-01-01", "2023-12-31", team=range(34))), False
        ),
        "1,000 days x 100 regions + reference (100,001)": lambda: _noop_job(
            Job("big", partitions=daily("2013-01-01", "2015-09-27", region=range(100))), True
        ),
    }


def fill(path: Path, job: Job) -> int:
    ledger = open_ledger(f"sqlite:///{path}")
    for name, stage in job.stages.items():
        ledger.plan(job.name, name, stage.partitions.partitions())
    ledger.close()
    with sqlite3.connect(path) as conn:
        conn.executescript(
            """
            UPDATE backfill_partitions SET status = 'done', attempts = 1, records = 20,
                finished_at = 1.7e9 + id WHERE id % 100 < 80 OR window_start = '0001-01-01';
            UPDATE backfill_partitions SET status = 'empty', attempts = 1, records = 0,
                finished_at = 1.7e9 + id WHERE id % 100 BETWEEN 80 AND 84
                AND window_start != '0001-01-01';
            UPDATE backfill_partitions SET status = 'failed', attempts = 3,
                finished_at = 1.7e9 + id, error_category = 'timeout',
                error_message = 'read timed out (' || id || ')'
                WHERE id % 100 = 85 AND window_start != '0001-01-01';
            UPDATE backfill_partitions SET status = 'running', lease_owner = 'w',
                lease_expires_at = 1e12 WHERE id % 1000 = 999 AND window_start != '0001-01-01';
            """
        )
        (n,) = conn.execute("SELECT count(*) FROM backfill_partitions").fetchone()
    conn.close()
    return int(n)


def timed(call: Callable[[], object]) -> tuple[float, float]:
    """Median wall and CPU seconds of ``REPEAT`` calls."""
    walls, cpus = [], []
    for _ in range(REPEAT):
        wall, cpu = time.perf_counter(), time.process_time()
        call()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> int:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, (name, make) in enumerate(cases().items()):
            job = make()
            path = Path(tmp) / f"state{index}.db"
            partitions = fill(path, job)
            ledger = open_reader(f"sqlite:///{path}")
            try:
                dashboard = Dashboard(job, ledger)
                snapshot = dashboard.snapshot()
                wall, cpu = timed(dashboard.snapshot)
                base_wall, _ = timed(partial(ledger.counts, job.name, list(job.stages)))
                coverage = cov.collect(job, ledger, list(job.stages.values()))
                page = cov.to_html(coverage)
            finally:
                ledger.close()
            rows.append(
                (
                    name,
                    f"{partitions:,}",
                    f"{wall * 1000:,.0f}",
                    f"{cpu * 1000:,.0f}",
                    f"{base_wall * 1000:,.0f}",
                    f"{len(snapshot['calendar']['cells']):,} {snapshot['calendar']['unit']}s",
                    f"{len(json.dumps(snapshot)) / 1000:,.0f}",
                    f"{len(page.encode()) / 1e6:,.2f}",
                )
            )
    header = (
        "case",
        "partitions",
        "snapshot ms",
        "snapshot CPU ms",
        "counts alone ms",
        "calendar",
        "snapshot KB",
        "coverage HTML MB",
    )
    print("| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * (len(header) - 1))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    print("\n".join(_machine.facts()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
