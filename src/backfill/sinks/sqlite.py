"""A table in a SQLite file as a sink: large transactions in WAL mode, each inserting its
rows a hundred-odd at a time (multi-row ``INSERT ... VALUES`` through ``executemany``).

Tables the sink creates are STRICT, so a value of the wrong type fails its partition
(with the table and column named) instead of being stored as whatever it was.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import operator
import re
import sqlite3
from collections.abc import Container, Iterable, Mapping, Sequence
from itertools import chain, repeat
from pathlib import Path
from typing import Any

from backfill._sqlite import is_full, retry_locked, sqlite_identity
from backfill.errors import (
    BackfillError,
    PermanentError,
    SinkError,
    TransientError,
    disk_full_message,
)
from backfill.ledger.identity import DatabaseIdentity
from backfill.sinks import (
    PAGE_COLUMN,
    PARTITION_COLUMN,
    Limits,
    Mode,
    OnNewField,
    OutsideWindow,
    Rows,
    SinkConnection,
    TableSpec,
)

__all__ = ["SQLiteConnection", "SQLiteTable"]

_STRICT_TYPES = {
    "boolean": "INTEGER",
    "integer": "INTEGER",
    "real": "REAL",
    "text": "TEXT",
    "blob": "BLOB",
    "date": "TEXT",
    "timestamp": "TEXT",
    "json": "TEXT",
    None: "ANY",
}
_STRICT_ALLOWED = {"INT", "INTEGER", "REAL", "TEXT", "BLOB", "ANY"}
# Values bound per INSERT statement: rows of a batch go in statements of this many values
# (over how many columns a row has); the last few rows of a batch go one at a time.
_PARAMETERS_PER_STATEMENT = 2_000


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _to_text(value: object) -> object:
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dict | list | tuple):
        # Unescaped, so a lone surrogate fails at binding as it does in plain text; no
        # NaN, which JSON cannot spell (PostgreSQL refuses it too).
        return json.dumps(
            value, separators=(",", ":"), default=str, ensure_ascii=False, allow_nan=False
        )
    return value


class SQLiteConnection:
    """A connection to one SQLite file, in WAL mode, with explicit transactions."""

    def __init__(self, path: Path, description: str) -> None:
        self.description = description
        self.path = path
        try:
            self.raw = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            retry_locked(lambda: self.raw.execute("PRAGMA journal_mode=WAL"))
            self.raw.execute("PRAGMA synchronous=NORMAL")
            self.raw.execute("PRAGMA cache_size=-65536")
            # Statements of many rows keep a statement journal (to undo just the statement
            # on an error): in memory, not in a temporary file.
            self.raw.execute("PRAGMA temp_store=MEMORY")
        except sqlite3.Error as exc:
            if is_full(exc):
                raise SinkError(disk_full_message(path)) from exc
            raise SinkError(f"cannot open {description}: {exc}") from exc

    def _busy(self, exc: sqlite3.OperationalError) -> BackfillError:
        """A failed BEGIN or COMMIT: busy (retried), unless the disk is full (fatal)."""
        if is_full(exc):
            return SinkError(disk_full_message(self.path))
        return TransientError(f"{self.description}: {exc}", category="sink_busy")

    def begin(self) -> None:
        try:
            self.raw.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise self._busy(exc) from exc

    def commit(self) -> None:
        try:
            self.raw.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            raise self._busy(exc) from exc

    def rollback(self) -> None:
        if self.raw.in_transaction:
            self.raw.execute("ROLLBACK")

    def close(self) -> None:
        self.raw.close()


class SQLiteTable:
    """Write records into ``table`` of the SQLite file at ``path``.

    The table is created when missing: from ``columns`` (name -> type: ``integer``,
    ``real``, ``text``, ``boolean``, ``blob``, ``date``, ``timestamp``, ``json``) where
    given, otherwise from the types of the first batch's values. See
    :mod:`backfill.sinks` for the modes.

    Example::

        SQLiteTable("flights.db", "flights", key=["year", "month", "day", "carrier",
                                                  "flight", "origin"])
    """

    def __init__(
        self,
        path: str | Path,
        table: str,
        *,
        key: Sequence[str] | None = None,
        mode: str | Mode = Mode.UPSERT,
        columns: Mapping[str, str] | None = None,
        on_new_field: str | OnNewField = OnNewField.ADD,
        partition_column: str | None = None,
        outside_window: str | OutsideWindow | None = None,
    ) -> None:
        self.spec = TableSpec.declare(
            table,
            key=key,
            mode=mode,
            columns=columns,
            on_new_field=on_new_field,
            partition_column=partition_column,
            outside_window=outside_window,
        )
        self.path = Path(path)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def key(self) -> tuple[str, ...]:
        return self.spec.key

    @property
    def database(self) -> str:
        return f"sqlite:{self.path.resolve()}"

    @property
    def identity(self) -> DatabaseIdentity:
        return sqlite_identity(self.path)

    @property
    def description(self) -> str:
        return f"table {self.spec.name} in {self.path}"

    def connect(self) -> SQLiteConnection:
        parent = self.path.resolve().parent
        if not parent.is_dir():
            raise SinkError(
                f"cannot open {self.description}: directory {parent} does not exist; "
                "create it or point the sink elsewhere"
            )
        conn = SQLiteConnection(self.path, self.description)
        try:
            existing = self._existing(conn.raw)
        except sqlite3.Error as exc:
            conn.close()
            raise SinkError(f"cannot open {self.description}: {exc}") from exc
        missing = [k for k in self.spec.key if existing and k not in existing]
        if missing:
            conn.close()
            raise SinkError(
                f"{self.description} exists without key column {missing[0]!r}; "
                "drop the table or change the key"
            )
        return conn

    # -- writing ---------------------------------------------------------------------

    def _existing(self, raw: sqlite3.Connection) -> dict[str, str]:
        rows = raw.execute(f"PRAGMA table_info({_quote(self.spec.name)})").fetchall()
        return {r[1]: str(r[2]).upper() for r in rows}

    def _create(self, raw: sqlite3.Connection, types: Mapping[str, str | None]) -> None:
        spec = self.spec
        strict = all(_STRICT_TYPES.get(t, t) in _STRICT_ALLOWED for t in types.values())
        columns = []
        for name, kind in types.items():
            sql_type = _STRICT_TYPES.get(kind, kind) if strict or kind in _STRICT_TYPES else kind
            if not strict and sql_type == "ANY":
                sql_type = ""
            null = " NOT NULL" if name in spec.key else ""
            columns.append(f"{_quote(name)} {sql_type}{null}".replace("  ", " "))
        if spec.tags_partition:
            columns.append(f"{_quote(PARTITION_COLUMN)} TEXT NOT NULL")
        if spec.key:
            columns.append(f"PRIMARY KEY ({', '.join(_quote(k) for k in spec.key)})")
        raw.execute(
            f"CREATE TABLE IF NOT EXISTS {_quote(spec.name)} ({', '.join(columns)})"
            + (" STRICT" if strict else "")
        )
        if spec.tags_partition:
            raw.execute(
                f"CREATE INDEX IF NOT EXISTS {_quote(spec.name + '_partition')} "
                f"ON {_quote(spec.name)} ({_quote(PARTITION_COLUMN)})"
            )

    def write(self, conn: SinkConnection, batch: Sequence[Rows]) -> int:
        raw: sqlite3.Connection = conn.raw
        try:
            return self._write(raw, batch)
        except sqlite3.IntegrityError as exc:
            raise self._data_error(exc) from exc
        except (sqlite3.InterfaceError, sqlite3.ProgrammingError) as exc:
            raise PermanentError(
                f"table {self.spec.name}: a value cannot be stored ({exc})",
                category="type_clash",
            ) from exc
        except sqlite3.OperationalError as exc:
            text = str(exc)
            if is_full(exc):
                raise SinkError(disk_full_message(self.path)) from exc
            if "locked" in text or "busy" in text:
                raise TransientError(f"{self.description}: {text}", category="sink_busy") from exc
            raise SinkError(f"cannot write {self.description}: {text}") from exc
        except (ValueError, TypeError, OverflowError, RecursionError, sqlite3.DataError) as exc:
            # Binding or encoding a value failed (an integer beyond 64 bits, a lone
            # surrogate, JSON that cannot be written, text too long): name the value, fail
            # its partition.
            found = self.spec.unstorable(batch, _limits(raw))
            if found is not None:
                raise PermanentError(found, category="bad_value") from exc
            raise PermanentError(
                f"table {self.spec.name}: a value cannot be stored ({exc})", category="type_clash"
            ) from exc
        except sqlite3.Error as exc:
            raise SinkError(f"cannot write {self.description}: {exc}") from exc

    def _data_error(self, exc: sqlite3.IntegrityError) -> PermanentError:
        text = str(exc)
        prefix = "NOT NULL constraint failed: "
        if text.startswith(prefix):
            column = text[len(prefix) :].rpartition(".")[2]
            return PermanentError(
                f"a record has no value for key field {column!r} of table {self.spec.name}",
                category="missing_key",
            )
        if text.startswith("cannot store"):
            column = text.rpartition(".")[2]
            return PermanentError(
                f"table {self.spec.name}, field {column!r}: {text.rpartition(' column ')[0]} "
                "column",
                category="type_clash",
            )
        return PermanentError(f"table {self.spec.name}: {text}", category="integrity")

    def _write(
        self,
        raw: sqlite3.Connection,
        batch: Sequence[Rows],
        *,
        exact: bool = False,
        delete: bool = True,
    ) -> int:
        spec = self.spec
        existing = self._existing(raw)
        # A new table is made from every field of the batch: look at all of them.
        exact = exact or not existing
        fields, uniform = spec.fields(batch, exact=exact)
        pages = spec.tags_pages(batch)
        spec.check_fields(batch, fields, existing, _limits(raw), pages=pages)
        spec.check_keys(batch, uniform)
        spec.check_window(batch, existing.keys() | set(fields))
        if not existing:
            if not fields:
                return 0
            self._create(raw, spec.infer(batch, fields))
            existing = self._existing(raw)
        new = [f for f in fields if f not in existing]
        if new:
            self._add_columns(raw, batch, new)
        if pages and PAGE_COLUMN not in existing:
            # The engine's own column, like _partition: never subject to on_new_field.
            raw.execute(f"ALTER TABLE {_quote(spec.name)} ADD COLUMN {_quote(PAGE_COLUMN)} TEXT")
            existing[PAGE_COLUMN] = "TEXT"
        if delete and spec.mode is not Mode.UPSERT:
            self._delete(raw, [rows for rows in batch if rows.first or rows.redo is not None])
        if not fields:
            return 0
        columns = list(fields)
        insert = _Insert(raw, spec, columns, pages)
        convert = {
            i for i, c in enumerate(columns) if existing.get(c, "TEXT") in ("TEXT", "", "ANY")
        }
        # Once exact, a missing field is None (no KeyError, so no second look).
        getter = spec.getter(columns, uniform and not exact)
        for index, rows in enumerate(batch):
            if not rows.records:
                continue
            values: Iterable[tuple[Any, ...]] = map(getter, rows.records)
            suffix = spec.suffix(rows, pages)
            if suffix:
                values = map(operator.add, values, repeat(suffix))
            try:
                flat = list(chain.from_iterable(values))
            except KeyError:
                # A record carries another field in place of one of the first record's:
                # write what came before, then look at every field from this one on.
                insert.finish()
                return insert.total + self._write(raw, batch[index:], exact=True, delete=False)
            if convert and _needs_conversion(flat[: insert.width], convert):
                width = insert.width
                flat = [_to_text(v) if i % width in convert else v for i, v in enumerate(flat)]
            insert.add(flat)
        insert.finish()
        return insert.total

    def _add_columns(self, raw: sqlite3.Connection, batch: Sequence[Rows], new: list[str]) -> None:
        spec = self.spec
        spec.check_new_fields(batch, new)
        types = spec.infer(batch, new)
        strict = bool(
            raw.execute(
                "SELECT strict FROM pragma_table_list WHERE name = ?", (spec.name,)
            ).fetchone()[0]
        )
        for name in new:
            kind = types.get(name)
            sql_type = (
                _STRICT_TYPES.get(kind, kind or "") if strict else _STRICT_TYPES.get(kind, "")
            )
            if not strict and sql_type == "ANY":
                sql_type = ""
            raw.execute(
                f"ALTER TABLE {_quote(spec.name)} ADD COLUMN {_quote(name)} {sql_type}".rstrip()
            )

    def _delete(self, raw: sqlite3.Connection, batch: Sequence[Rows]) -> None:
        """Delete what the batch's rows replace: every earlier row of a partition written
        ``first``, else those tagged with the page being redone."""
        if not batch:
            return
        spec = self.spec
        table = _quote(spec.name)
        whole = [rows for rows in batch if rows.first]
        redo: list[Rows] = []
        existing: Mapping[str, str] = {}
        if len(whole) < len(batch) or spec.partition_column != PARTITION_COLUMN:
            existing = self._existing(raw)
            # A table without the column has no row written under a checkpoint.
            if PAGE_COLUMN in existing:
                redo = [rows for rows in batch if not rows.first]
        page = f" AND {_quote(PAGE_COLUMN)} = ?"
        if spec.partition_column == PARTITION_COLUMN:
            where = f"DELETE FROM {table} WHERE {_quote(PARTITION_COLUMN)} = ?"
            if whole:
                raw.executemany(where, [(rows.partition.key,) for rows in whole])
            if redo:
                raw.executemany(where + page, [(rows.partition.key, rows.redo) for rows in redo])
            return
        column = spec.replacement_column(existing)
        for rows in [*whole, *redo]:
            part = rows.partition
            dims = [(k, v) for k, v in part.dims if k in existing]
            sql = f"DELETE FROM {table} WHERE {_quote(column)} >= ? AND {_quote(column)} <= ?"
            sql += "".join(f" AND {_quote(k)} = ?" for k, _ in dims)
            params: tuple[Any, ...] = (part.start.isoformat(), _day_end(part.end))
            params += tuple(v for _, v in dims)
            if not rows.first:
                sql += page
                params += (rows.redo,)
            raw.execute(sql, params)


def _limits(raw: sqlite3.Connection) -> Limits:
    return Limits(
        "SQLite",
        columns=raw.getlimit(sqlite3.SQLITE_LIMIT_COLUMN),
        value_bytes=raw.getlimit(sqlite3.SQLITE_LIMIT_LENGTH),
    )


def _needs_conversion(row: list[Any], convert: Container[int]) -> bool:
    # A cheap look at one row; the rare stray date or dict lower down is caught by the
    # binding error and fails only its partition.
    plain = (str, int, float, type(None), bytes)
    return not all(isinstance(v, plain) for i, v in enumerate(row) if i in convert)


class _Insert:
    """Inserts (or upserts) flat rows of values with as few statements as it can: many
    rows per statement, the last few one at a time.

    Binding every value costs the same either way, but one statement per row also pays
    for a statement's step and reset, and Python's loop, per row: a hundred-odd rows per
    statement save about a fifth of the time a batch of flights takes.
    """

    def __init__(
        self, raw: sqlite3.Connection, spec: TableSpec, columns: list[str], pages: bool
    ) -> None:
        self.raw = raw
        self.table = spec.name
        names = [*columns, *spec.engine_columns(pages)]
        self.names = names
        self.width = len(names)
        limit = raw.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self.per_statement = max(1, min(_PARAMETERS_PER_STATEMENT, limit) // self.width)
        head = f"INSERT INTO {_quote(spec.name)} ({', '.join(_quote(c) for c in names)}) VALUES "
        row = f"({', '.join('?' for _ in names)})"
        tail = ""
        if spec.key:
            values = [c for c in columns if c not in spec.key]
            updates = ", ".join(f"{_quote(c)} = excluded.{_quote(c)}" for c in values)
            # A row that would stay the same is left alone: no page rewritten, nothing to
            # the WAL (a re-run or an overlapping window sends mostly unchanged rows).
            # IS NOT treats NULLs as values; SQLite keeps no -0.0 to tell from 0.0.
            unchanged = (
                f"({', '.join(_quote(c) for c in values)}) IS NOT "
                f"({', '.join('excluded.' + _quote(c) for c in values)})"
            )
            keys = ", ".join(_quote(k) for k in spec.key)
            tail = f" ON CONFLICT ({keys}) " + (
                f"DO UPDATE SET {updates} WHERE {unchanged}" if updates else "DO NOTHING"
            )
        self.one = head + row + tail
        self.many = head + ", ".join([row] * self.per_statement) + tail
        self.pending: list[Any] = []
        self.total = 0

    def add(self, flat: list[Any]) -> None:
        """Queue rows (their values one after the other); write every full statement's worth."""
        self.total += len(flat) // self.width
        step = self.per_statement * self.width
        pending = self.pending
        start = 0
        first: list[list[Any]] = []
        if pending:
            start = step - len(pending)
            if len(flat) < start:
                pending += flat
                return
            pending += flat[:start]
            first.append(pending)
        end = start + (len(flat) - start) // step * step
        self.pending = flat[end:]
        self._run(self.many, chain(first, (flat[i : i + step] for i in range(start, end, step))))

    def finish(self) -> None:
        """Write the rows still queued."""
        pending, width = self.pending, self.width
        if pending:
            self._run(self.one, (pending[i : i + width] for i in range(0, len(pending), width)))
            pending.clear()

    def _run(self, sql: str, params: Iterable[list[Any]]) -> None:
        try:
            self.raw.executemany(sql, params)
        except (sqlite3.InterfaceError, sqlite3.ProgrammingError) as exc:
            # "Error binding parameter 23: ...": name the field it belongs to.
            number = re.match(r"Error binding parameter (\d+)", str(exc))
            if number is None:
                raise
            name = self.names[(int(number[1]) - 1) % self.width]
            raise PermanentError(
                f"table {self.table}, field {name!r}: a value cannot be stored "
                f"({str(exc).partition(': ')[2] or exc})",
                category="type_clash",
            ) from exc


def _day_end(day: dt.date) -> str:
    # Covers both date and timestamp text: '2013-01-31' <= '2013-01-31T23:59...' < '2013-02'.
    return day.isoformat() + "\uffff"
