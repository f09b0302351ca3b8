"""Which database a ledger and a sink live in, as one value both produce."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backfill._postgres import postgres_identity, safe_url
from backfill._sqlite import sqlite_identity
from backfill.ledger import DatabaseIdentity, SharedCompletion
from backfill.ledger.sqlite import SQLiteLedger
from backfill.sinks import table

BASE = "postgresql://bob:s3cret@db.example:5432/warehouse"


def test_two_spellings_of_one_sqlite_file_are_one_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Relative, absolute, through ``..`` and through a symlink: one file, one identity."""
    (tmp_path / "sub").mkdir()
    target = tmp_path / "state.db"
    os.symlink(target, tmp_path / "link.db")
    monkeypatch.chdir(tmp_path / "sub")
    spellings = ["../state.db", str(target), str(tmp_path / "sub" / ".." / "state.db")]
    spellings.append(str(tmp_path / "link.db"))
    assert {sqlite_identity(path) for path in spellings} == {sqlite_identity(target)}


def test_two_sqlite_files_are_two_databases(tmp_path: Path) -> None:
    """Another file in the same folder is another database."""
    assert sqlite_identity(tmp_path / "a.db") != sqlite_identity(tmp_path / "b.db")


def test_a_postgres_identity_leaves_out_the_password() -> None:
    """The password is no part of the identity, nor of its text."""
    assert postgres_identity(BASE) == postgres_identity(BASE.replace("s3cret", "other"))
    assert "s3cret" not in str(postgres_identity(BASE))
    assert str(postgres_identity(BASE)) == safe_url(BASE)


def test_postgres_defaults_name_the_same_database_as_their_explicit_values() -> None:
    """No host is localhost, no port is 5432, no database name is the user's."""
    assert postgres_identity("postgresql://bob@/") == postgres_identity(
        "postgresql://bob@localhost:5432/bob"
    )


@pytest.mark.parametrize(
    "other",
    [
        BASE + "?options=-csearch_path%3Da",  # another schema of the same database
        BASE.replace("/warehouse", "/lake"),  # another database on the same server
        BASE.replace("bob:", "ann:"),  # another role ("$user" may name another schema)
        BASE.replace(":5432", ":5433"),  # another server on the same host
        BASE.replace("db.example", "db2.example"),
    ],
)
def test_a_postgres_url_differing_in_schema_database_role_or_server_is_another_database(
    other: str,
) -> None:
    """Whatever changes which tables an unqualified name reaches changes the identity."""
    assert postgres_identity(other) != postgres_identity(BASE)


def test_a_sqlite_identity_reads_as_the_sinks_database_text(tmp_path: Path) -> None:
    """The identity's text is what the SQLite sink names its database."""
    sink = table(str(tmp_path / "x.db"), "t", key=["k"])
    assert str(sink.identity) == sink.database


def test_a_sqlite_ledger_completes_inside_a_sink_on_its_own_file_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sink on the ledger's file, however spelled, gets a completer and a fence; a sink
    on another file, or any sink beside an in-memory ledger, gets neither."""
    monkeypatch.chdir(tmp_path)
    ledger = SQLiteLedger(tmp_path / "state.db")
    memory = SQLiteLedger(":memory:")
    try:
        assert isinstance(ledger, SharedCompletion)
        same = table("./state.db", "t", key=["k"]).identity
        other = table(str(tmp_path / "other.db"), "t", key=["k"]).identity
        assert ledger.completer(same) is not None
        assert ledger.fence(same) is not None
        assert ledger.completer(other) is None
        assert ledger.fence(other) is None
        assert memory.identity is None
        assert memory.completer(DatabaseIdentity("sqlite", ":memory:")) is None
    finally:
        ledger.close()
        memory.close()
