"""Reading the SQLite ledger read-only: nothing created, migrated or written."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from backfill.errors import LedgerError
from backfill.ledger import NoState, open_ledger, open_reader
from backfill.partitions import daily


def fingerprint(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def test_a_missing_file_is_no_state_and_stays_missing(tmp_path: Path) -> None:
    """No file: NoState with the sentence a command shows, and no file made."""
    target = tmp_path / "state.db"
    with pytest.raises(NoState, match=f"no state at {target}; nothing has run yet"):
        open_reader(f"sqlite:///{target}")
    assert not target.exists()


def test_a_database_of_other_tables_is_refused_unchanged(tmp_path: Path) -> None:
    """A SQLite file without the backfill tables is refused; no table is added."""
    target = tmp_path / "mine.db"
    with sqlite3.connect(target) as conn:
        conn.execute("CREATE TABLE mine (x)")
    conn.close()
    before = fingerprint(target)
    with pytest.raises(LedgerError, match="is not a backfill state file"):
        open_reader(str(target))
    with pytest.raises(LedgerError, match="is not a backfill state file"):
        open_ledger(str(target), create=False)
    assert fingerprint(target) == before
    with sqlite3.connect(target) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["mine"]
    conn.close()


def test_a_reader_reads_a_ledger_and_cannot_write_it(tmp_path: Path) -> None:
    """A reader sees what a writer recorded; a write through it fails, changing nothing."""
    target = tmp_path / "state.db"
    writer = open_ledger(str(target))
    writer.plan("j", "s", daily("2013-01-01", "2013-01-03").partitions())
    writer.close()
    before = fingerprint(target)
    reader = open_reader(str(target))
    try:
        assert reader.counts("j", ["s"])["s"].pending == 3
        with pytest.raises(LedgerError, match="readonly"):
            reader.plan("j", "t", daily("2013-01-01", "2013-01-03").partitions())
    finally:
        reader.close()
    assert fingerprint(target) == before
