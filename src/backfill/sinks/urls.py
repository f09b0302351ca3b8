"""``table(url, name, ...)``: the table sink for a destination URL, dispatched to the
SQLite, PostgreSQL or DuckDB adapter by the URL's scheme."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from backfill._optional import require_postgres
from backfill.errors import ConfigError
from backfill.sinks.protocol import Mode, OnNewField, OutsideWindow, Sink


def table(
    url: str,
    name: str,
    *,
    key: Sequence[str] | None = None,
    mode: str | Mode = Mode.UPSERT,
    columns: Mapping[str, str] | None = None,
    on_new_field: str | OnNewField = OnNewField.ADD,
    partition_column: str | None = None,
    outside_window: str | OutsideWindow | None = None,
) -> Sink:
    """A table sink for a destination URL: ``sqlite:///PATH``, a file path, ``postgresql://``
    or ``duckdb:///PATH``.

    ``outside_window="allow"`` (replace-partition by a ``partition_column`` of the records
    only) writes rows dated outside their partition's window instead of failing it; a redo
    of the partition does not replace them.

    Example::

        sink = table("postgresql://me@db/warehouse", "flights",
                     key=["year", "month", "day", "carrier", "flight", "origin"])
    """
    options: dict[str, Any] = {
        "key": key,
        "mode": mode,
        "columns": columns,
        "on_new_field": on_new_field,
        "partition_column": partition_column,
        "outside_window": outside_window,
    }
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres"):
        require_postgres("a PostgreSQL table")
        from backfill.sinks.postgres import PostgresTable

        return PostgresTable(url, name, **options)
    if sep and scheme == "duckdb":
        from backfill.sinks.duckdb import DuckDBTable, require_duckdb

        require_duckdb("a DuckDB table")
        path = rest[1:] if rest.startswith("/") else rest
        if not path:
            raise ConfigError(f"sink URL {url!r} names no file; use duckdb:///PATH")
        return DuckDBTable(path, name, **options)
    if not sep or scheme == "sqlite":
        from backfill.sinks.sqlite import SQLiteTable

        path = url if not sep else (rest[1:] if rest.startswith("/") else rest)
        if not path:
            raise ConfigError(f"sink URL {url!r} names no file; use sqlite:///PATH")
        return SQLiteTable(path, name, **options)
    raise ConfigError(
        f"unsupported sink URL {scheme}://...; use sqlite:///PATH, a file path, "
        "duckdb:///PATH or postgresql://USER@HOST/DATABASE"
    )
