"""table(url, ...): which adapter a destination URL gets, and the URLs it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest

from backfill.errors import ConfigError
from backfill.sinks import table
from backfill.sinks.postgres import PostgresTable
from backfill.sinks.sqlite import SQLiteTable


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///data/out.db", "data/out.db"),
        ("sqlite:////data/out.db", "/data/out.db"),
        ("sqlite://out.db", "out.db"),
        ("out.db", "out.db"),
        ("/data/out.db", "/data/out.db"),
    ],
)
def test_sqlite_urls_and_plain_paths_give_a_sqlite_table_on_that_file(url: str, path: str) -> None:
    """sqlite:///PATH (relative, or absolute with a fourth slash), sqlite://PATH and a bare
    path all name a SQLite file."""
    sink = table(url, "flights", key=["id"])
    assert isinstance(sink, SQLiteTable)
    assert sink.path == Path(path)
    assert sink.name == "flights"


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_postgres_urls_give_a_postgres_table(scheme: str) -> None:
    """Both spellings of the PostgreSQL scheme reach the PostgreSQL adapter, unconnected."""
    sink = table(f"{scheme}://nobody@127.0.0.1:9/none", "flights", mode="append")
    assert isinstance(sink, PostgresTable)
    assert sink.name == "flights"


def test_a_sqlite_url_without_a_file_is_refused() -> None:
    """sqlite:/// with nothing after it names no file: one sentence says the form to use."""
    with pytest.raises(ConfigError, match="names no file; use sqlite:///PATH"):
        table("sqlite:///", "flights", key=["id"])


def test_an_unknown_scheme_is_refused_naming_the_forms_accepted() -> None:
    """A URL of another database is a configuration error listing the supported forms."""
    with pytest.raises(ConfigError, match=r"unsupported sink URL mysql://\.\.\.; use sqlite"):
        table("mysql://me@db/x", "flights", key=["id"])


def test_the_declaration_is_checked_whatever_the_url() -> None:
    """Options reach TableSpec.declare: a bad mode fails at table(), before any connection."""
    with pytest.raises(ConfigError, match="unknown mode 'merge'"):
        table("out.db", "flights", mode="merge")
