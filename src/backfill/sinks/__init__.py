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

Records come from sources nobody controls, so a record no table could take fails its own
partition (a :class:`~backfill.errors.PermanentError` naming partition, table and field),
never the run: field names are checked before any column is made for them (reserved
engine columns, names differing only by case, empty, NUL, invalid Unicode, longer than
the database keeps, more columns than it allows), and a value the database refuses
(an integer beyond 64 bits, a lone surrogate, NaN inside JSON) is looked for and named
once the write has failed. A row replace-partition by a date column could not find again
(dated outside its partition's window) fails its partition too, unless the table allows it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import json
import math
import re
import string
from collections.abc import Callable, Collection, Container, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from operator import itemgetter
from typing import Any, Protocol

from backfill._optional import require_postgres
from backfill.errors import ConfigError, PermanentError
from backfill.ledger.identity import DatabaseIdentity
from backfill.partitions import Partition

__all__ = [
    "PAGE_COLUMN",
    "PARTITION_COLUMN",
    "Limits",
    "Mode",
    "OnNewField",
    "OutsideWindow",
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

# What the engine keeps in its own columns, by their case-folded names: a field spelled
# like one would override (or be confused with) the engine's tag.
_RESERVED = {
    PARTITION_COLUMN: "the engine's partition tag (_partition)",
    PAGE_COLUMN: "the engine's checkpoint tag (_page)",
}
# SQLite folds the case of ASCII letters only, and so does this.
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_INT64 = (-(2**63), 2**63 - 1)


def _fold(name: str) -> str:
    """A column name as SQLite compares them: ASCII letters case-folded."""
    return name.translate(_ASCII_LOWER)


class Mode(StrEnum):
    UPSERT = "upsert"
    REPLACE_PARTITION = "replace-partition"
    APPEND = "append"


class OnNewField(StrEnum):
    """What a field the table lacks does: add a nullable column, or fail the partition."""

    ADD = "add"
    FAIL = "fail"


class OutsideWindow(StrEnum):
    """What a replace-partition table by a date column of the records does with a row
    dated outside its partition's window (which a redo of the partition would not delete):
    fail the partition, or write it and leave such rows to the user."""

    FAIL = "fail"
    ALLOW = "allow"


@dataclass(frozen=True, slots=True)
class Limits:
    """What one database's tables can hold, for the checks a batch passes before it is
    written, and for naming the value a failed write could not store (None: no limit)."""

    database: str
    columns: int
    name_bytes: int | None = None
    nul_in_text: bool = True
    value_bytes: int | None = None


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
    outside_window: OutsideWindow = OutsideWindow.FAIL

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
        outside_window: str | OutsideWindow | None = None,
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
        spelled: dict[str, str] = {}
        for column in (*keys, *(columns or {})):
            if not _IDENTIFIER.match(column):
                raise ConfigError(
                    f"table {name}: column name {column!r} must be letters, digits and underscores"
                )
            if _fold(column) in _RESERVED:
                raise ConfigError(
                    f"table {name}: column {column!r} is reserved for "
                    f"{_RESERVED[_fold(column)]}; choose another name"
                )
            other = spelled.setdefault(_fold(column), column)
            if other != column:
                raise ConfigError(
                    f"table {name}: columns {other!r} and {column!r} differ only by case; "
                    "keep one spelling"
                )
        folded = _fold(partition_column or PARTITION_COLUMN)
        if partition_column not in (None, PARTITION_COLUMN) and folded in _RESERVED:
            raise ConfigError(
                f"table {name}: partition_column {partition_column!r} is reserved for "
                f"{_RESERVED[folded]}; name a date column of the records"
            )
        try:
            outside = OutsideWindow(outside_window or OutsideWindow.FAIL)
        except ValueError:
            raise ConfigError(
                f"table {name}: outside_window must be 'fail' or 'allow', not {outside_window!r}"
            ) from None
        by_date = mode is Mode.REPLACE_PARTITION and partition_column not in (
            None,
            PARTITION_COLUMN,
        )
        if outside_window is not None and not by_date:
            raise ConfigError(
                f"table {name}: outside_window applies only to mode='replace-partition' with "
                "a partition_column of the records; drop it"
            )
        return cls(
            name=name,
            key=keys,
            mode=mode,
            columns=dict(columns or {}),
            on_new_field=on_new_field,
            partition_column=partition_column or PARTITION_COLUMN,
            outside_window=outside,
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

    def check_fields(
        self,
        batch: Sequence[Rows],
        fields: Sequence[str],
        existing: Collection[str],
        limits: Limits,
        *,
        pages: bool,
        used: int | None = None,
    ) -> None:
        """Fail the partition whose records bring a field no column can be made for,
        before any is: a name reserved for the engine, one that is not text, empty, holds
        NUL or a lone surrogate, is longer than the database keeps, or differs only by
        case from a column or another field (SQLite could not tell them apart; one rule
        for both databases); or more fields than the table can have columns.

        ``used``: the columns the table uses up already (PostgreSQL counts dropped ones
        too); by default those of ``existing``.
        """
        for name in fields:
            if isinstance(name, str) and _fold(name) in _RESERVED:
                raise self._field_error(
                    batch,
                    name,
                    f"is reserved for {_RESERVED[_fold(name)]}; rename it in the stage",
                    "reserved_field",
                )
        new = [f for f in fields if f not in existing]
        if not new:
            return
        spelled = {_fold(column): column for column in reversed(list(existing))}
        for name in new:
            problem = _name_problem(name, limits)
            if problem is not None:
                raise self._field_error(batch, name, problem, "bad_field")
            other = spelled.setdefault(_fold(name), name)
            if other != name:
                what = "column" if other in existing else "field"
                raise self._field_error(
                    batch,
                    name,
                    f"and {what} {other!r} differ only by case; keep one spelling in the stage",
                    "bad_field",
                )
        engine = [c for c in self.engine_columns(pages) if c not in existing]
        total = (len(existing) if used is None else used) + len(new) + len(engine)
        if total > limits.columns:
            where = _carrier(batch, new)
            raise PermanentError(
                f"partition {where}: its records bring {len(new):,} new fields, so table "
                f"{self.name} would have {total:,} columns, more than the {limits.columns:,} "
                f"{limits.database} allows; gather them into one json field in the stage",
                category="too_many_fields",
            )

    def _field_error(
        self, batch: Sequence[Rows], name: object, problem: str, category: str
    ) -> PermanentError:
        return PermanentError(
            f"partition {_carrier(batch, [name])}: field {_shown(name)} of table {self.name} "
            f"{problem}",
            category=category,
        )

    def check_window(self, batch: Sequence[Rows], columns: Container[str]) -> None:
        """Fail the partition with a row that its redo would not delete, when the table
        replaces partitions by a date column of the records: a row dated outside the
        partition's window, not dated at all, or whose dimension column (``columns``: the
        table's, after this batch) holds another value than the partition's.

        Such a row would survive every redo and be written again each time.
        """
        if (
            self.mode is not Mode.REPLACE_PARTITION
            or self.tags_partition
            or self.outside_window is OutsideWindow.ALLOW
        ):
            return
        column = self.partition_column
        hint = (
            "a redo of the partition would not replace it; keep each row in its own "
            "partition in the stage, or declare table(..., outside_window='allow')"
        )
        for rows in batch:
            part = rows.partition
            dims = [(k, v) for k, v in part.dims if k in columns]
            for record in rows.records:
                value = record.get(column)
                day = _day_of(value)
                if day is None:
                    raise PermanentError(
                        f"partition {part.key}: a record of table {self.name} has "
                        f"{column}={_shown(value, 40)}, not a date (YYYY-MM-DD...); "
                        f"replace-partition by {column!r} finds a partition's rows by that date",
                        category="outside_partition",
                    )
                if not part.start <= day <= part.end:
                    raise PermanentError(
                        f"partition {part.key}: a record of table {self.name} has "
                        f"{column}={_shown(value, 40)}, outside the partition's window "
                        f"{part.start}..{part.end}; {hint}",
                        category="outside_partition",
                    )
                for dim, want in dims:
                    got = record.get(dim)
                    if got is None or (got != want and str(got) != want):
                        raise PermanentError(
                            f"partition {part.key}: a record of table {self.name} has "
                            f"{dim}={_shown(got, 40)}, not the partition's {want!r}; {hint}",
                            category="outside_partition",
                        )

    def unstorable(self, batch: Sequence[Rows], limits: Limits) -> str | None:
        """The first value no column of the database can hold, described with partition,
        table and field; None when there is none.

        Looked for only once a write has failed: an integer beyond signed 64 bits, text
        with a lone surrogate (or a NUL, where the database's text cannot hold one), and
        in a json value also NaN or infinity, keys JSON cannot spell, and nesting too deep
        to encode.
        """
        for rows in batch:
            for record in rows.records:
                for name, value in record.items():
                    problem = _value_problem(value, limits)
                    if problem is not None:
                        return (
                            f"partition {rows.partition.key}: field {_shown(name)} of table "
                            f"{self.name} holds {problem}"
                        )
        return None

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
                # Text takes any value but bytes, which no database turns into text.
                if have == want or (have != "blob" and _widen(want, have) == want):
                    continue
                return (
                    f"partition {rows.partition.key}: field {name!r} of table {self.name} "
                    f"holds a {have} value ({_shown(value, 40)}) where the column is {want}"
                )
        return None


def _shown(value: object, width: int = 100) -> str:
    """A field name (or, ``width`` 40, a value) for a message: never too long to print,
    and a value no longer than a glance needs."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<an integer of {value.bit_length()} bits>"
    if isinstance(value, dt.date):
        return value.isoformat()
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def _carrier(batch: Sequence[Rows], names: Sequence[object]) -> str:
    """The key of the first partition whose records carry one of ``names``."""
    for rows in batch:
        if any(name in record for record in rows.records for name in names):
            return rows.partition.key
    return batch[0].partition.key


def _name_problem(name: object, limits: Limits) -> str | None:
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, but field names must be text; rename it in the stage"
    if not name:
        return "is empty; name it in the stage"
    if "\x00" in name:
        return "holds a NUL character; rename it in the stage"
    try:
        size = len(name.encode())
    except UnicodeEncodeError:
        return "holds a lone surrogate, which is not valid Unicode; rename it in the stage"
    if limits.name_bytes is not None and size > limits.name_bytes:
        return (
            f"is {size} bytes long, and {limits.database} keeps only {limits.name_bytes}; "
            "rename it in the stage"
        )
    return None


def _text_problem(text: str, limits: Limits) -> str | None:
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        return (
            f"a lone surrogate ({text[exc.start]!r} at character {exc.start}), which is not "
            "valid Unicode; the stage should repair or drop it"
        )
    if not limits.nul_in_text and "\x00" in text:
        return (
            f"a NUL character, which {limits.database} text cannot hold; the stage should remove it"
        )
    return None


def _value_problem(value: object, limits: Limits) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        if _INT64[0] <= value <= _INT64[1]:
            return None
        return (
            f"an integer of {value.bit_length()} bits, beyond the signed 64 bits an integer "
            "column holds; the stage should send it as text"
        )
    if isinstance(value, str):
        problem = _text_problem(value, limits)
        if problem is not None:
            return f"text with {problem}"
        return _size_problem(len(value.encode()), limits)
    if isinstance(value, bytes | bytearray | memoryview):
        return _size_problem(len(value), limits)
    if isinstance(value, Mapping | list | tuple):
        return _json_problem(value, limits)
    return None


def _size_problem(size: int, limits: Limits) -> str | None:
    if limits.value_bytes is None or size <= limits.value_bytes:
        return None
    return (
        f"a value of {size:,} bytes, more than the {limits.value_bytes:,} {limits.database} "
        "stores in one value; the stage should split or drop it"
    )


def _json_problem(value: object, limits: Limits) -> str | None:
    # A walk of its own, not recursion: the value may be nested deeper than Python recurses.
    stack = [value]
    seen: set[int] = set()
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            problem = _text_problem(item, limits)
            if problem is not None:
                return f"a json value with {problem}"
        elif isinstance(item, float) and not math.isfinite(item):
            return (
                f"a json value holding {item!r}, which JSON cannot spell; the stage should "
                "send null or text"
            )
        elif isinstance(item, Mapping | list | tuple) and id(item) not in seen:
            seen.add(id(item))
            stack.extend(item.items() if isinstance(item, Mapping) else item)
    try:
        json.dumps(value, allow_nan=False, default=str)
    except RecursionError:
        return "a json value nested too deeply to encode (about 1,000 levels at most)"
    except (TypeError, ValueError) as exc:
        return f"a json value that cannot be encoded ({exc})"
    return None


def _day_of(value: object) -> dt.date | None:
    """The day a partition-column value dates its row to, as both databases compare it:
    a date, a datetime, or text starting YYYY-MM-DD; None for anything else."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str) and len(value) >= 10 and value[4] == value[7] == "-":
        try:
            return dt.date.fromisoformat(value[:10])
        except ValueError:
            return None
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
    def identity(self) -> DatabaseIdentity:
        """The same as a value, as ledgers name theirs: a ledger of an equal identity
        records done-marks in this table's transaction (exactly once)."""

    @property
    def description(self) -> str:
        """Where the rows go, for messages (never carries a secret)."""

    def connect(self) -> SinkConnection:
        """Open a connection and check the destination; raise SinkError if unreachable."""

    def write(self, conn: SinkConnection, batch: Sequence[Rows]) -> int:
        """Write these partitions' rows inside ``conn``'s open transaction.

        Raise :class:`~backfill.errors.PermanentError` for bad records (missing key, type
        clash, a new field under ``on_new_field="fail"``, a field name or value no column
        can hold, a row outside its partition's window), TransientError for a busy or
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
    outside_window: str | OutsideWindow | None = None,
) -> Sink:
    """A table sink for a destination URL: ``sqlite:///PATH``, a file path, or ``postgresql://``.

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
