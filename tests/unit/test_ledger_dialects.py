"""The two dialects of the one SQL ledger: what each spells its own way, and that they
offer the algorithm the same named queries."""

from __future__ import annotations

import re
from datetime import date

import pytest

from backfill.errors import LedgerError
from backfill.ledger import Dependency
from backfill.ledger.dialect import Dialect, check_version, statements
from backfill.ledger.postgres import PostgresDialect
from backfill.ledger.sqlite import SQLiteDialect
from backfill.partitions import Selection

SQLITE = SQLiteDialect()
POSTGRES = PostgresDialect()


def test_both_dialects_offer_the_same_named_queries_with_the_same_fragments() -> None:
    """Every query the algorithm runs exists in both files, with the same ``{...}`` holes."""

    def holes(dialect: Dialect) -> dict[str, set[str]]:
        return {name: set(re.findall(r"\{(\w+)\}", sql)) for name, sql in dialect.queries.items()}

    assert holes(SQLITE) == holes(POSTGRES)


@pytest.mark.parametrize("dialect", [SQLITE, POSTGRES], ids=["sqlite", "postgres"])
def test_a_dialect_upgrades_a_new_state_with_its_schema_and_an_old_one_by_its_migrations(
    dialect: Dialect,
) -> None:
    """No tables: the schema script; version v: the migrations after v, in order."""
    assert dialect.upgrade_scripts(None) == [dialect.schema]
    latest = dialect.schema_version
    assert dialect.upgrade_scripts(latest) == []
    assert dialect.upgrade_scripts(latest - 2) == [
        dialect.migrations[latest - 1],
        dialect.migrations[latest],
    ]


def test_a_newer_schema_is_refused_and_an_older_one_only_by_a_reader() -> None:
    """Newer: upgrade backfill. Older: a writer migrates, a reader asks for a run first."""
    assert check_version(8, 8, "x", reader=True)
    assert not check_version(7, 8, "x", reader=False)
    with pytest.raises(LedgerError, match="newer than this backfill understands"):
        check_version(9, 8, "x", reader=False)
    with pytest.raises(LedgerError, match="run `backfill run` once to upgrade it"):
        check_version(7, 8, "x", reader=True)


def test_statements_drop_comments_that_hold_semicolons() -> None:
    """A semicolon inside a comment does not split a statement."""
    script = "CREATE TABLE a (x int); -- one; two\nCREATE INDEX i ON a (x);\n"
    assert statements(script) == ["CREATE TABLE a (x int)", "CREATE INDEX i ON a (x)"]


def test_a_selection_is_spelled_in_each_dialects_placeholders_and_values() -> None:
    """Dates, keys and dimensions: ISO text and JSON lists in SQLite, dates and arrays in
    PostgreSQL."""
    selection = Selection(
        start=date(2013, 1, 1),
        end=date(2013, 1, 31),
        keys=frozenset({"b", "a"}),
        dims={"tour": frozenset({"atp"})},
    )
    sql, params = SQLITE.selection_sql(selection)
    assert ":sel_start" in sql and "json_each(:sel_keys)" in sql
    assert params["sel_start"] == "2013-01-01"
    assert params["sel_keys"] == '["a", "b"]'
    assert params["sel_dim_name_0"] == '$."tour"'
    sql, params = POSTGRES.selection_sql(selection)
    assert "%(sel_start)s" in sql and "key = ANY(%(sel_keys)s)" in sql
    assert params["sel_start"] == date(2013, 1, 1)
    assert params["sel_keys"] == ["a", "b"]
    assert params["sel_dim_name_0"] == "tour"


def test_everything_selects_without_a_clause() -> None:
    """No selection, or one of everything, adds no SQL."""
    assert SQLITE.selection_sql(None) == ("", {})
    assert POSTGRES.selection_sql(Selection()) == ("", {})


@pytest.mark.parametrize(
    ("grain", "sqlite", "postgres"),
    [
        ("day", "date(p.window_start, '-3 days')", "(p.window_start - 3)"),
        ("week", "date(p.window_start, '-21 days')", "(p.window_start - 21)"),
        (
            "month",
            "date(p.window_start, 'start of month', '-3 months')",
            "(date_trunc('month', p.window_start) - interval '3 months')::date",
        ),
        (
            "year",
            "date(p.window_start, 'start of year', '-3 years')",
            "(date_trunc('year', p.window_start) - interval '3 years')::date",
        ),
    ],
)
def test_a_lookback_moves_back_whole_units_in_each_dialect(
    grain: str, sqlite: str, postgres: str
) -> None:
    """Three units of lookback: days and weeks by days, months and years from the unit's start."""
    dep = Dependency("up", lookback=3, grain=grain)
    assert SQLITE.window_low(dep) == sqlite
    assert POSTGRES.window_low(dep) == postgres
    assert SQLITE.window_low(Dependency("up")) == POSTGRES.window_low(Dependency("up"))


def test_dims_and_dates_read_back_the_same_in_both_dialects() -> None:
    """A row's dims and dates decode to the same values whichever database held them."""
    assert SQLITE.dims_of('{"tour":"atp"}') == POSTGRES.dims_of('{"tour": "atp"}')
    assert SQLITE.dims_of(None) == POSTGRES.dims_of(None) == ()
    assert SQLITE.date_of("2013-01-02") == POSTGRES.date_of(date(2013, 1, 2))
