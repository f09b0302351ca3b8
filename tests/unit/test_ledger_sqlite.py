"""The ledger contract on an in-memory SQLite ledger, plus SQLite-only behaviour."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from backfill.errors import ConfigError, LedgerError
from backfill.ledger import Ledger, open_ledger
from backfill.ledger.sqlite import SQLiteLedger
from ledger_contract import LedgerContract


class TestSQLiteMemoryLedger(LedgerContract):
    """The whole contract in memory; both "connections" share one locked connection."""

    @pytest.fixture
    def ledger(self) -> Iterator[Ledger]:
        store = SQLiteLedger(":memory:")
        yield store
        store.close()

    @pytest.fixture
    def second_ledger(self, ledger: Ledger) -> Ledger:
        return ledger


def test_memory_url_opens_an_empty_ledger() -> None:
    """``sqlite://:memory:`` and ``:memory:`` give a working, empty ledger."""
    for url in ("sqlite://:memory:", ":memory:", "sqlite://"):
        store = open_ledger(url)
        assert store.counts("j", ["s"])["s"].total == 0
        store.close()


def test_read_only_open_of_a_missing_file_creates_nothing(tmp_path: Path) -> None:
    """Opening a missing state file without create leaves no file behind."""
    target = tmp_path / "nothing.db"
    store = open_ledger(f"sqlite:///{target}", create=False)
    assert store.counts("j", ["s"])["s"].total == 0
    store.close()
    assert not target.exists()


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    """A state path in a directory that does not exist fails in one sentence."""
    with pytest.raises(LedgerError, match="does not exist; create it or pass another --state"):
        open_ledger(f"sqlite:///{tmp_path}/no/such/dir/state.db")
    assert not (tmp_path / "no").exists()


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    """A state path pointing at some other file is refused, and the file is untouched."""
    target = tmp_path / "notes.db"
    target.write_bytes(b"these are my notes, not a database" * 100)
    before = target.read_bytes()
    with pytest.raises(LedgerError, match="not a usable backfill state database"):
        open_ledger(str(target))
    assert target.read_bytes() == before


def test_unsupported_scheme_is_a_config_error() -> None:
    """An unknown URL scheme names the forms that work."""
    with pytest.raises(ConfigError, match="use sqlite:///PATH"):
        open_ledger("mysql://db/state")


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A state file written by a newer backfill is not touched by an older one."""
    target = tmp_path / "state.db"
    SQLiteLedger(target).close()
    import sqlite3

    with sqlite3.connect(target) as conn:
        conn.execute("UPDATE backfill_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(LedgerError, match="upgrade backfill"):
        SQLiteLedger(target)


def test_state_survives_reopening(tmp_path: Path) -> None:
    """What one process recorded, the next one sees."""
    from backfill.partitions import daily

    first = SQLiteLedger(tmp_path / "s.db")
    first.plan("j", "s", daily("2013-01-01", "2013-01-31"))
    first.close()
    second = SQLiteLedger(tmp_path / "s.db")
    assert second.counts("j", ["s"])["s"].pending == 31
    second.close()


@pytest.mark.parametrize("old_version", [1, 2, 3, 4, 5, 6, 7, 8, 9])
def test_an_older_state_file_is_migrated_in_place(tmp_path: Path, old_version: int) -> None:
    """A state file of schema 1 to 9 is brought up to date on open, keeping its rows."""
    import sqlite3

    from backfill.ledger import Outcome, Status
    from backfill.ledger.sqlite import SCHEMA_VERSION
    from backfill.partitions import daily

    target = tmp_path / "old.db"
    store = SQLiteLedger(target)
    store.plan("j", "s", daily("2013-01-01", "2013-01-31"))
    store.close()
    with sqlite3.connect(target) as conn:
        conn.execute("ALTER TABLE backfill_resources DROP COLUMN pace")
        if old_version < 9:
            conn.execute("ALTER TABLE backfill_partitions DROP COLUMN params")
    with sqlite3.connect(target) as conn:
        if old_version < 8:
            conn.execute("ALTER TABLE backfill_workers DROP COLUMN resources")
            for table in ("backfill_resources", "backfill_quotas", "backfill_quota_starts"):
                conn.execute(f"DROP TABLE {table}")
        if old_version < 7:
            conn.execute("ALTER TABLE backfill_partitions DROP COLUMN begun")
        if old_version < 6:
            conn.execute("ALTER TABLE backfill_stages DROP COLUMN planned")
            conn.execute("ALTER TABLE backfill_partitions DROP COLUMN lost_leases")
        if old_version < 5:
            conn.execute("ALTER TABLE backfill_partitions DROP COLUMN checks")
            conn.execute("DROP INDEX backfill_partitions_window")
        if old_version < 4:
            conn.execute("ALTER TABLE backfill_workers DROP COLUMN finished")
        if old_version < 3:
            conn.execute("ALTER TABLE backfill_partitions DROP COLUMN requests")
            conn.execute("ALTER TABLE backfill_partitions DROP COLUMN checkpoint")
        if old_version == 1:
            conn.execute("DROP INDEX backfill_partitions_pending")
            conn.execute(
                "CREATE INDEX backfill_partitions_claim "
                "ON backfill_partitions (stage_id, status, window_start)"
            )
        conn.execute(
            "UPDATE backfill_meta SET value = ? WHERE key = 'schema_version'", (str(old_version),)
        )
    migrated = SQLiteLedger(target)
    (got,) = migrated.claim("j", "s", "me", limit=1, lease_seconds=60, now=1.0, run_id="r")
    assert migrated.begin("me", [(got.id, got.claims)]) == {got.id}
    assert migrated.complete("me", [Outcome(got.id, Status.DONE, requests=2)], now=2.0) == 1
    assert migrated.counts("j", ["s"])["s"].done == 1
    assert migrated.workers("j") == []
    due, _, _, _ = migrated.take_starts("j", "api", count=1, interval=0.5, tolerance=0.0)
    assert due == [0.0]
    migrated.close()
    with sqlite3.connect(target) as conn:
        version = conn.execute("SELECT value FROM backfill_meta").fetchone()[0]
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert int(version) == SCHEMA_VERSION
    assert "backfill_partitions_claim" not in indexes
    assert "backfill_partitions_window" in indexes
    reopened = SQLiteLedger(target)
    assert reopened.plan("j", "s", daily("2013-01-01", "2013-02-01"), fingerprint="f") == 1
    assert reopened.plan("j", "s", daily("2013-01-01", "2013-02-01"), fingerprint="f") == 0
    reopened.close()
