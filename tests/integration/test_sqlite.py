"""SQLite on disk: the ledger contract on a real file, the table sink, and both together."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backfill import Context, Job, Partition, SinkError, SQLiteTable, Status, daily
from backfill.errors import PermanentError
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


def test_sink_creates_the_table_from_the_first_records_and_upserts(tmp_path: Path) -> None:
    """The table is created with inferred types; writing the same keys again updates rows."""
    sink = SQLiteTable(tmp_path / "out.db", "t", key=["day", "id"])
    part = daily("2013-01-01", "2013-01-01").get("2013-01-01")
    assert part is not None
    sink.open()
    assert sink.write(part, [{"day": "d1", "id": 1, "v": 1.5, "n": None}]) == 1
    assert sink.write(part, [{"day": "d1", "id": 1, "v": 2.5, "n": 3}, {"day": "d1", "id": 2}]) == 2
    sink.close()
    assert rows(tmp_path / "out.db") == [("d1", 1, 2.5, 3), ("d1", 2, None, None)]
    with sqlite3.connect(tmp_path / "out.db") as conn:
        types = {r[1]: r[2] for r in conn.execute("PRAGMA table_info(t)")}
    assert types == {"day": "TEXT", "id": "INTEGER", "v": "REAL", "n": ""}


def test_sink_refuses_a_record_without_its_key_or_with_an_unknown_field(tmp_path: Path) -> None:
    """A missing key field or a field the table lacks fails the partition, naming the field,
    and nothing of that write is committed."""
    sink = SQLiteTable(tmp_path / "out.db", "t", key=["id"], columns={"id": "INTEGER", "v": "TEXT"})
    part = daily("2013-01-01", "2013-01-01").get("2013-01-01")
    assert part is not None
    sink.open()
    with pytest.raises(PermanentError, match="key field 'id' of table t"):
        sink.write(part, [{"id": 1, "v": "a"}, {"v": "b"}])
    with pytest.raises(PermanentError, match="field 'w', which table t lacks"):
        sink.write(part, [{"id": 1, "v": "a"}, {"id": 2, "w": 1}])
    sink.close()
    assert rows(tmp_path / "out.db") == []


def test_sink_in_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    """A destination whose directory does not exist fails at open, in one sentence."""
    sink = SQLiteTable(tmp_path / "nope" / "out.db", "t", key=["id"])
    with pytest.raises(SinkError, match="does not exist"):
        sink.open()


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
