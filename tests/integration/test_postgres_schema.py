"""Where the PostgreSQL ledger's tables go: the first schema of the URL's search_path
(`?options=-csearch_path%3Dbackfill`), created when it does not exist yet."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from backfill.errors import LedgerError
from backfill.ledger import NoState, open_ledger, open_reader
from backfill.partitions import daily
from pg_support import in_schema, require_postgres


@pytest.fixture
def schema() -> Iterator[str]:
    """A schema name nobody uses yet, dropped (with whatever it holds) afterwards."""
    url = require_postgres()
    name = f"bf_path_{uuid.uuid4().hex[:10]}"
    yield name
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def tables_in(schema: str) -> set[str]:
    with psycopg.connect(require_postgres()) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (schema,),
        ).fetchall()
    return {r[0] for r in rows}


def test_the_ledger_creates_a_missing_search_path_schema_and_its_tables_there(
    schema: str,
) -> None:
    """A URL whose search_path names a schema that does not exist: the ledger creates it
    and puts every table of its own there, and works."""
    url = in_schema(require_postgres(), schema)
    assert "?options=-csearch_path%3D" in url
    ledger = open_ledger(url)
    try:
        ledger.plan("schemas", "fetch", daily("2013-01-01", "2013-01-03"))
        assert ledger.counts("schemas", ["fetch"])["fetch"].total == 3
    finally:
        ledger.close()
    assert {"backfill_meta", "backfill_stages", "backfill_partitions"} <= tables_in(schema)
    reader = open_reader(url)
    try:
        assert reader.counts("schemas", ["fetch"])["fetch"].pending == 3
    finally:
        reader.close()


def test_a_reader_of_a_missing_schema_finds_no_state_and_creates_nothing(schema: str) -> None:
    """Read commands on a search_path schema that does not exist say there is no state
    yet, and leave no schema behind."""
    with pytest.raises(NoState):
        open_reader(in_schema(require_postgres(), schema))
    with psycopg.connect(require_postgres()) as conn:
        found = conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (schema,)
        ).fetchone()
    assert found == (0,)


def test_a_search_path_naming_no_schema_is_one_sentence() -> None:
    """An empty search_path leaves nowhere to put the tables: one line says what to set."""
    url = f"{require_postgres()}?options=-csearch_path%3D"
    with pytest.raises(LedgerError) as caught:
        open_ledger(url)
    message = str(caught.value)
    assert "\n" not in message
    assert "search_path" in message and "options=-csearch_path%3DNAME" in message
