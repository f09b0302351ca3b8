"""SQLite on disk: the ledger contract on a real file, the table sink, and both together."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backfill import Context, Job, Partition, SQLiteTable, Status, daily
from backfill.ledger import Ledger
from backfill.ledger.sqlite import SQLiteLedger
from backfill.runner import ExitCode
from backfill.testing import run_job
from ledger_contract import LedgerContract


class TestSQLiteFileLedger(LedgerContract):
    """The whole contract, against a ledger file in a temporary directory."""

    @pytest.fixture
    def ledger(self, tmp_path: Path) -> Iterator[Ledger]:
        store = SQLiteLedger(tmp_path / "state.db")
        yield store
        store.close()

    @pytest.fixture
    def second_ledger(self, tmp_path: Path) -> Iterator[Ledger]:
        store = SQLiteLedger(tmp_path / "state.db")
        yield store
        store.close()


def rows(db: Path, sql: str = "SELECT * FROM t ORDER BY 1, 2") -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def test_a_job_on_disk_writes_exact_rows_and_reruns_change_nothing(tmp_path: Path) -> None:
    """File ledger + file sink: exact rows after a run, and the same after requeue + rerun."""
    db = tmp_path / "out.db"
    job = Job(
        "disk",
        partitions=daily("2013-01-01", "2013-02-28"),
        sink=SQLiteTable(db, "t", key=["day", "n"]),
    )

    @job.stage(concurrency=4)
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        return [{"day": partition.key, "n": n} for n in range(partition.start.day)]

    ledger = SQLiteLedger(tmp_path / "state.db")
    assert run_job(job, ledger).exit_code == ExitCode.OK
    expected = 2 * sum(range(1, 29)) + 29 + 30 + 31
    assert rows(db, "SELECT count(*), count(DISTINCT day || '/' || n) FROM t") == [
        (expected, expected)
    ]
    ledger.requeue("disk", ["fetch"], [Status.DONE])
    assert run_job(job, ledger).exit_code == ExitCode.OK
    assert rows(db, "SELECT count(*) FROM t") == [(expected,)]
    ledger.close()
