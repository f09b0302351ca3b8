"""TableSpec: what a table declaration accepts, and the per-batch checks both sinks share."""

from __future__ import annotations

from typing import Any

import pytest

from backfill.errors import ConfigError, PermanentError
from backfill.partitions import daily
from backfill.sinks import Limits, Rows, TableSpec

DAYS = daily("2013-01-01", "2013-01-31")
SQLITE = Limits("SQLite", columns=2000)
POSTGRES = Limits("PostgreSQL", columns=1600, name_bytes=63, nul_in_text=False)


def declare(name: str = "t", **options: Any) -> TableSpec:
    settings: dict[str, Any] = {
        "key": None,
        "mode": "append",
        "columns": None,
        "on_new_field": "add",
        "partition_column": None,
    }
    settings.update(options)
    return TableSpec.declare(name, **settings)


def rows(day: int, *records: dict[Any, Any]) -> Rows:
    partition = DAYS.get(f"2013-01-{day:02d}")
    assert partition is not None
    return Rows(partition, list(records))


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"columns": {"_partition": "text"}}, "'_partition' is reserved"),
        ({"mode": "upsert", "key": ["_Page"]}, "'_Page' is reserved"),
        ({"columns": {"Name": "text", "name": "text"}}, "'Name' and 'name' differ only by case"),
        (
            {"mode": "replace-partition", "partition_column": "_PAGE"},
            "partition_column '_PAGE' is reserved",
        ),
        ({"outside_window": "allow"}, "outside_window applies only to"),
        (
            {"mode": "replace-partition", "outside_window": "fail"},
            "outside_window applies only to",
        ),
        (
            {"mode": "replace-partition", "partition_column": "day", "outside_window": "keep"},
            "outside_window must be 'fail' or 'allow'",
        ),
    ],
)
def test_a_declaration_a_table_could_not_honour_is_refused_in_one_sentence(
    options: dict[str, Any], words: str
) -> None:
    """Reserved engine columns, columns differing only by case and a misplaced or unknown
    outside_window are configuration errors that say what to change."""
    with pytest.raises(ConfigError, match=words) as info:
        declare(**options)
    assert str(info.value).startswith("table t: ") and "\n" not in str(info.value)


def test_outside_window_is_accepted_where_it_applies() -> None:
    """Replace-partition by a date column of the records takes either outside_window."""
    allow = declare(mode="replace-partition", partition_column="day", outside_window="allow")
    assert allow.outside_window == "allow"
    assert declare(mode="replace-partition", partition_column="day").outside_window == "fail"


def test_engine_columns_are_reserved_in_every_mode_and_case() -> None:
    """A record field spelled like _partition or _page (any case) fails its partition,
    in upsert tables too, so it can never pass for the engine's tag."""
    for spec in (declare(), declare(mode="upsert", key=["k"])):
        batch = [rows(1, {"k": 1}), rows(2, {"k": 2, "_PARTITION": "x"})]
        with pytest.raises(PermanentError, match=r"^partition 2013-01-02: field '_PARTITION'") as e:
            spec.check_fields(batch, ["k", "_PARTITION"], {"k": "INTEGER"}, SQLITE, pages=False)
        assert e.value.category == "reserved_field"


def test_the_first_spelling_of_a_name_wins_and_the_later_partition_fails() -> None:
    """Two partitions of one batch spelling a new field differently: the one that brings
    the later spelling is named, with both spellings."""
    batch = [rows(1, {"Name": 1}), rows(2, {"name": 2})]
    with pytest.raises(PermanentError, match=r"2013-01-02: field 'name' .* field 'Name'"):
        declare().check_fields(batch, ["Name", "name"], {}, SQLITE, pages=False)
    # Exact spellings of existing columns are fine, even two of them (a PostgreSQL table).
    declare().check_fields(batch, ["Name", "name"], ["Name", "name"], POSTGRES, pages=False)


def test_the_column_limit_counts_the_engine_columns_and_the_used_slots() -> None:
    """The limit counts the table's columns (PostgreSQL's dropped ones with ``used``), the
    new fields and the engine's own columns still to be added."""
    spec = declare()
    fields = [f"f{i}" for i in range(1599)]
    batch = [rows(1, dict.fromkeys(fields, 1))]
    spec.check_fields(batch, fields, {}, POSTGRES, pages=False)  # 1,599 + _partition
    with pytest.raises(PermanentError, match="1,601 columns, more than the 1,600") as info:
        spec.check_fields(batch, fields, {}, POSTGRES, pages=True)
    assert info.value.category == "too_many_fields"
    existing = {"a": 1, "_partition": 1}
    with pytest.raises(PermanentError, match="1,602 columns"):
        spec.check_fields(batch, fields[:2], existing, POSTGRES, pages=False, used=1600)


def test_names_are_checked_against_the_database_that_keeps_them() -> None:
    """A name over 63 bytes fails on PostgreSQL (which would cut it short), not on SQLite."""
    name = "ß" * 32  # 64 bytes in UTF-8
    batch = [rows(1, {name: 1})]
    declare().check_fields(batch, [name], {}, SQLITE, pages=False)
    with pytest.raises(PermanentError, match="is 64 bytes long, and PostgreSQL keeps only 63"):
        declare().check_fields(batch, [name], {}, POSTGRES, pages=False)


def test_a_cyclic_or_huge_value_is_described_without_hanging_or_crashing() -> None:
    """The search for an unstorable value stops on a cycle and prints no huge integer."""
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    found = declare().unstorable([rows(1, {"j": cyclic})], SQLITE)
    assert found is not None and "field 'j'" in found and "Circular reference" in found
    huge = 10**5000
    found = declare().unstorable([rows(1, {"v": huge})], SQLITE)
    assert found is not None and "an integer of 16610 bits" in found
    assert declare().unstorable([rows(1, {"v": 2**63 - 1, "s": "a\x00"})], SQLITE) is None
    assert "NUL" in (declare().unstorable([rows(1, {"s": "a\x00"})], POSTGRES) or "")


def test_a_window_check_shows_a_huge_value_briefly() -> None:
    """A partition-column value that is a huge integer is named by its size, not printed."""
    spec = declare(mode="replace-partition", partition_column="day")
    with pytest.raises(PermanentError, match=r"day=<an integer of \d+ bits>, not a date"):
        spec.check_window([rows(1, {"day": 10**5000})], {"day"})


def test_a_postgres_table_refuses_declared_names_it_would_cut_short() -> None:
    """A key, column or partition_column over PostgreSQL's 63 bytes is a configuration
    error at declaration (PostgreSQL would silently shorten it), not a failure mid-run."""
    from backfill.sinks import table

    long = "k" * 64
    url = "postgresql://nobody@127.0.0.1:9/none"
    for options in (
        {"key": [long]},
        {"key": ["k"], "columns": {long: "text"}},
        {"mode": "replace-partition", "partition_column": long},
    ):
        with pytest.raises(ConfigError, match=f"'{long}' is 64 bytes long; PostgreSQL keeps 63"):
            table(url, "t", **options)
    table(url, "t", key=["k" * 63])
