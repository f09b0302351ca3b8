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


def _cap_growth(conn: sqlite3.Connection) -> None:
    """Let the database file grow no more (SQLite then answers SQLITE_FULL, as on a full
    disk)."""
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    conn.execute(f"PRAGMA max_page_count = {pages + 1}")


def test_a_full_disk_under_the_sink_is_fatal_at_once_and_names_the_file(tmp_path: Path) -> None:
    """SQLITE_FULL writing a table is a SinkError (fatal, never retried as busy) saying
    "disk full writing PATH; free space and run again"."""
    from backfill.errors import SinkError
    from backfill.partitions import daily as days
    from backfill.sinks import Rows

    sink = SQLiteTable(tmp_path / "out.db", "t", key=["n"])
    conn = sink.connect()
    try:
        _cap_growth(conn.raw)
        partition = next(iter(days("2013-01-01", "2013-01-01")))
        batch = [Rows(partition, [{"n": n, "text": "x" * 500} for n in range(2_000)])]
        conn.begin()
        with pytest.raises(SinkError) as excinfo:
            sink.write(conn, batch)
        conn.rollback()
    finally:
        conn.close()
    assert str(excinfo.value) == (
        f"disk full writing {tmp_path / 'out.db'}; free space and run again"
    )


def test_a_full_disk_under_the_ledger_names_the_file_and_leaves_it_usable(
    tmp_path: Path,
) -> None:
    """SQLITE_FULL writing the state is a LedgerError naming the file; the transaction
    is rolled back, so the next write on the same connection works once there is room."""
    from backfill.errors import LedgerError
    from backfill.partitions import daily as days

    path = tmp_path / "state.db"
    store = SQLiteLedger(path)
    try:
        _cap_growth(store._conn)
        with pytest.raises(LedgerError) as excinfo:
            store.plan("j", "s", days("2000-01-01", "2013-12-31"))
        assert str(excinfo.value) == f"disk full writing {path}; free space and run again"
        store._conn.execute("PRAGMA max_page_count = 1073741823")
        assert store.plan("j", "s", days("2013-01-01", "2013-01-31")) == 31
    finally:
        store.close()
