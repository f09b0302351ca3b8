"""Sinks: the tables a stage's records go to.

A sink is one table in one database. The engine buffers the rows of many partitions and
writes them in one transaction per database (:class:`SinkConnection`), so a table is
written in large batches, and marks those partitions done only once the transaction has
committed. Writes are idempotent in every mode: a partition redone after a crash between
"rows written" and "partition marked done" never leaves a row twice.

Modes (:class:`Mode`):

``upsert``
    Insert, or update the row with the same key.
``replace-partition``
    Delete the partition's earlier rows, then insert. The partition's rows are those whose
    ``partition_column`` holds its key (the default column ``_partition`` is filled in by
    the engine); a date column of your own (``partition_column="date"``) matches every row
    dated inside the partition's window, e.g. rows an earlier script loaded.
``append``
    Insert rows that have no key. Each row carries its partition's key in ``_partition``,
    so a partition that runs again replaces what it appended before instead of doubling it.

In append and replace-partition modes, rows that ``ctx.write`` writes after a checkpoint
carry it in ``_page`` (a nullable column added when first needed): an attempt resuming
from that checkpoint deletes exactly those rows before it writes the page again, so a
kill between a page and its checkpoint doubles nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import re
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from operator import itemgetter
from typing import Any, Protocol

from backfill.errors import ConfigError, PermanentError
from backfill.partitions import Partition

__all__ = [
    "PAGE_COLUMN",
    "PARTITION_COLUMN",
    "Mode",
    "OnNewField",
    "Record",
    "Rows",
    "Sink",
    "SinkConnection",
    "TableSpec",
    "table",
    "to_mapping",
]

Record = Mapping[str, Any]

PARTITION_COLUMN = "_partition"
# The checkpoint in force when ctx.write wrote a row (NULL before the first one).
PAGE_COLUMN = "_page"

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Mode(StrEnum):
    UPSERT = "upsert"
    REPLACE_PARTITION = "replace-partition"
    APPEND = "append"


class OnNewField(StrEnum):
    """What a field the table lacks does: add a nullable column, or fail the partition."""

    ADD = "add"
    FAIL = "fail"


# Portable column types; adapters map them onto their own SQL types.
LOGICAL_TYPES = ("boolean", "integer", "real", "text", "blob", "date", "timestamp", "json")


def logical_type(value: object) -> str | None:
    """The portable column type for a Python value (None for None)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float | decimal.Decimal):
        return "real"
    if isinstance(value, str):
        return "text"
    if isinstance(value, bytes | bytearray | memoryview):
        return "blob"
    if isinstance(value, dt.datetime):
        return "timestamp"
    if isinstance(value, dt.date):
        return "date"
    if isinstance(value, Mapping | list | tuple):
        return "json"
    return "text"


def _widen(a: str | None, b: str | None) -> str | None:
    if a is None or a == b:
        return b
    if b is None:
        return a
    if {a, b} == {"integer", "real"}:
        return "real"
    if {a, b} <= {"boolean", "integer"}:
        return "integer"
    return "text"


@dataclass(frozen=True, slots=True)
class Rows:
    """One partition's records for one table.

    ``first`` is False for the later pages of a partition written with ``ctx.write``, and
    for every page of an attempt that resumes from a checkpoint: append and
    replace-partition delete the partition's old rows only before the first page.
    ``page`` tags the rows (in ``PAGE_COLUMN``) with the checkpoint in force when they were
    written; ``redo`` names the checkpoint an attempt resumes from, whose rows (written
    after it was saved, before the next one) are deleted before these are inserted.
    Upserts, idempotent by their key, ignore both.
    """

    partition: Partition
    records: Sequence[Record]
    first: bool = True
    page: str | None = None
    redo: str | None = None


@dataclass(frozen=True, slots=True)
class TableSpec:
    """What a table sink was declared with: adapters share it, and its checks."""

    name: str
    key: tuple[str, ...] = ()
    mode: Mode = Mode.UPSERT
    columns: Mapping[str, str] = dataclasses.field(default_factory=dict)
    on_new_field: OnNewField = OnNewField.ADD
    partition_column: str = PARTITION_COLUMN

    @classmethod
    def declare(
        cls,
        name: str,
        *,
        key: Sequence[str] | None,
        mode: str | Mode,
        columns: Mapping[str, str] | None,
        on_new_field: str | OnNewField,
        partition_column: str | None,
    ) -> TableSpec:
        """Check a declaration; a bad one is a ConfigError that says what to change."""
        if not _IDENTIFIER.match(name):
            raise ConfigError(f"table name {name!r} must be letters, digits and underscores")
        try:
            mode = Mode(mode)
        except ValueError:
            raise ConfigError(
                f"table {name}: unknown mode {mode!r}; use one of "
                + ", ".join(m.value for m in Mode)
            ) from None
        try:
            on_new_field = OnNewField(on_new_field)
        except ValueError:
            raise ConfigError(
                f"table {name}: on_new_field must be 'add' or 'fail', not {on_new_field!r}"
            ) from None
        keys = tuple(key or ())
        if mode is Mode.UPSERT and not keys:
            raise ConfigError(f"table {name}: upsert needs key=[...] (the columns of a row's key)")
        if mode is Mode.APPEND and partition_column not in (None, PARTITION_COLUMN):
            raise ConfigError(
                f"table {name}: append tags rows in {PARTITION_COLUMN}; drop partition_column"
            )
        for column in (*keys, *(columns or {})):
            if not _IDENTIFIER.match(column):
                raise ConfigError(
                    f"table {name}: column name {column!r} must be letters, digits and underscores"
                )
        return cls(
            name=name,
            key=keys,
            mode=mode,
            columns=dict(columns or {}),
            on_new_field=on_new_field,
            partition_column=partition_column or PARTITION_COLUMN,
        )

    @property
    def tags_partition(self) -> bool:
        """Whether the engine fills ``partition_column`` with the partition key."""
        return self.mode is not Mode.UPSERT and self.partition_column == PARTITION_COLUMN

    def tags_pages(self, batch: Sequence[Rows]) -> bool:
        """Whether the batch's rows carry their page in ``PAGE_COLUMN``: some were written
        under a checkpoint, into a table that replaces partitions or appends."""
        return self.mode is not Mode.UPSERT and any(rows.page is not None for rows in batch)

    def suffix(self, rows: Rows, pages: bool) -> tuple[Any, ...]:
        """The values the engine adds to each of ``rows``' records: its partition's key
        (see :attr:`tags_partition`), then its page when ``pages``."""
        if self.tags_partition:
            return (rows.partition.key, rows.page) if pages else (rows.partition.key,)
        return (rows.page,) if pages else ()

    def engine_columns(self, pages: bool) -> list[str]:
        """The columns of :meth:`suffix`'s values."""
        names = [PARTITION_COLUMN] if self.tags_partition else []
        return [*names, PAGE_COLUMN] if pages else names

    def fields(self, batch: Sequence[Rows], *, exact: bool = False) -> tuple[list[str], bool]:
        """Every field the batch's records carry, in first-seen order, and whether every
        record carries all of them.

        The common case costs next to nothing: plain dicts with as many fields as the first
        are taken to carry its fields, unlooked at. Read their values with
        :meth:`getter`: its KeyError means a record carries another field in place of one
        of them, and the records from there on must be asked about again with ``exact``.
        """
        first: Record | None = None
        for rows in batch:
            if rows.records:
                first = rows.records[0]
                break
        if first is None:
            return [], True
        names = list(first)
        if not exact:
            width = {len(names)}
            if all(
                set(map(len, rows.records)) <= width and set(map(type, rows.records)) <= {dict}
                for rows in batch
            ):
                return names, True
        reference = first.keys()
        if all(r.keys() == reference for rows in batch for r in rows.records):
            return names, True
        seen: dict[str, None] = {}
        for rows in batch:
            for record in rows.records:
                seen.update(dict.fromkeys(record))
        return list(seen), False

    @staticmethod
    def getter(fields: Sequence[str], uniform: bool) -> Callable[[Record], tuple[Any, ...]]:
        """A record's values in ``fields`` order, as a tuple.

        For uniform records (see :meth:`fields`) a missing field is a KeyError; otherwise
        it is None.
        """
        names = list(fields)
        if not uniform:
            return lambda record: tuple(map(record.get, names))
        if not names:
            return lambda record: ()
        if len(names) == 1:
            name = names[0]
            return lambda record: (record[name],)
        return itemgetter(*names)

    def check_keys(self, batch: Sequence[Rows], uniform: bool) -> None:
        """Fail with the field's name when a record lacks a key field.

        With uniform records only the first of each partition needs a look: a key field
        present but None is caught by the table's NOT NULL constraint.
        """
        if not self.key:
            return
        for rows in batch:
            records = rows.records[:1] if uniform else rows.records
            for record in records:
                for k in self.key:
                    if record.get(k) is None:
                        raise PermanentError(
                            f"a record of partition {rows.partition.key} has no value for "
                            f"key field {k!r} of table {self.name}",
                            category="missing_key",
                        )

    def check_new_fields(self, batch: Sequence[Rows], new: Sequence[str]) -> None:
        """Fail the partition that brings a field the table lacks, under ``on_new_field="fail"``."""
        if self.on_new_field is not OnNewField.FAIL:
            return
        where = next(rows.partition.key for rows in batch if any(new[0] in r for r in rows.records))
        raise PermanentError(
            f"a record of partition {where} has field {new[0]!r}, which table "
            f"{self.name} lacks (on_new_field='fail'); add the column or drop the field",
            category="schema_drift",
        )

    def replacement_column(self, existing: Container[str]) -> str:
        """The user's date column that replace-partition deletes by; it must exist."""
        column = self.partition_column
        if column not in existing:
            raise PermanentError(
                f"table {self.name} has no column {column!r} to replace partitions by; "
                "set partition_column to a date column of the records",
                category="schema",
            )
        return column

    def infer(self, batch: Sequence[Rows], fields: Sequence[str]) -> dict[str, str | None]:
        """Column types from the declaration, else from every value of the batch."""
        types: dict[str, str | None] = {}
        for name in fields:
            if name in self.columns:
                types[name] = self.columns[name]
                continue
            kind: str | None = None
            for rows in batch:
                for record in rows.records:
                    kind = _widen(kind, logical_type(record.get(name)))
            types[name] = kind
        for name, declared in self.columns.items():
            types.setdefault(name, declared)
        for k in self.key:
            types.setdefault(k, "text")
        return types

    def clash(self, rows: Rows, types: Mapping[str, str | None]) -> str | None:
        """The first value that does not fit its column, described; None if all fit."""
        for record in rows.records:
            for name, value in record.items():
                want = types.get(name)
                have = logical_type(value)
                if want is None or have is None or want not in LOGICAL_TYPES:
                    continue
                if have == want or _widen(want, have) == want:
                    continue
                return (
                    f"partition {rows.partition.key}: field {name!r} of table {self.name} "
                    f"holds a {have} value ({value!r:.40}) where the column is {want}"
                )
        return None


class SinkConnection(Protocol):
    """One connection to a destination database; the engine owns its transactions.

    ``raw`` is the driver's connection: a ledger in the same database records the
    partitions' done-marks on it, inside the transaction that writes their rows.
    """

    raw: Any

    def begin(self) -> None: ...

    def commit(self) -> None: ...

    def rollback(self) -> None: ...

    def close(self) -> None: ...


class Sink(Protocol):
    """A destination table. Methods block; the engine calls them on a thread of its own.

    Tables whose ``database`` is equal share one connection and one transaction.
    """

    @property
    def name(self) -> str:
        """The table's name; a stage writing several tables returns rows under it."""

    @property
    def database(self) -> str:
        """Which database this is (no secret in it): equal for tables that share one."""

    @property
    def description(self) -> str:
        """Where the rows go, for messages (never carries a secret)."""

    def connect(self) -> SinkConnection:
        """Open a connection and check the destination; raise SinkError if unreachable."""

    def write(self, conn: SinkConnection, batch: Sequence[Rows]) -> int:
        """Write these partitions' rows inside ``conn``'s open transaction.

        Raise :class:`~backfill.errors.PermanentError` for bad records (missing key, type
        clash, a new field under ``on_new_field="fail"``), TransientError for a busy or
        dropped database, and SinkError when the destination cannot be used at all.
        """


def table(
    url: str,
    name: str,
    *,
    key: Sequence[str] | None = None,
    mode: str | Mode = Mode.UPSERT,
    columns: Mapping[str, str] | None = None,
    on_new_field: str | OnNewField = OnNewField.ADD,
    partition_column: str | None = None,
) -> Sink:
    """A table sink for a destination URL: ``sqlite:///PATH``, a file path, or ``postgresql://``.

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
    }
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres"):
        from backfill.sinks.postgres import PostgresTable

        return PostgresTable(url, name, **options)
    if not sep or scheme == "sqlite":
        from backfill.sinks.sqlite import SQLiteTable

        path = url if not sep else (rest[1:] if rest.startswith("/") else rest)
        if not path:
            raise ConfigError(f"sink URL {url!r} names no file; use sqlite:///PATH")
        return SQLiteTable(path, name, **options)
    raise ConfigError(
        f"unsupported sink URL {scheme}://...; use sqlite:///PATH, a file path, or "
        "postgresql://USER@HOST/DATABASE"
    )


def to_mapping(record: object) -> Record:
    """Turn a dict, dataclass instance or pydantic model into a mapping."""
    if isinstance(record, Mapping):
        return record
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return dataclasses.asdict(record)
    dump = getattr(record, "model_dump", None)
    if callable(dump):
        result = dump()
        if isinstance(result, Mapping):
            return result
    raise PermanentError(
        f"a stage returned a {type(record).__name__}; records must be dicts, dataclasses "
        "or pydantic models",
        category="bad_record",
    )


def to_mappings(records: Iterable[object]) -> list[Record]:
    # Plain dicts (what JSON decodes to) skip to_mapping's checks: a page of 500 records
    # spent a third of a millisecond on them.
    return [r if type(r) is dict else to_mapping(r) for r in records]
