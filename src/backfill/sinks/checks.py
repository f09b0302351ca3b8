"""The checks a table applies to records from sources nobody controls, before and after a
write: key fields present, field names a column can be made for, rows inside their
partition's window, values that fit their column or that no column can hold. Each failure
is a PermanentError of its own partition naming partition, table and field.

:class:`RecordChecks` holds them as methods of :class:`~backfill.sinks.spec.TableSpec`.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Collection, Container, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from backfill.errors import PermanentError
from backfill.sinks.columns import LOGICAL_TYPES, RESERVED, fold, logical_type, widen
from backfill.sinks.protocol import Mode, OnNewField, OutsideWindow, Rows

_INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True, slots=True)
class Limits:
    """What one database's tables can hold, for the checks a batch passes before it is
    written, and for naming the value a failed write could not store (None: no limit)."""

    database: str
    columns: int
    name_bytes: int | None = None
    nul_in_text: bool = True
    value_bytes: int | None = None


class Declared(Protocol):
    """What the checks read of a table's declaration (a TableSpec)."""

    @property
    def name(self) -> str: ...

    @property
    def key(self) -> tuple[str, ...]: ...

    @property
    def mode(self) -> Mode: ...

    @property
    def on_new_field(self) -> OnNewField: ...

    @property
    def partition_column(self) -> str: ...

    @property
    def outside_window(self) -> OutsideWindow: ...

    @property
    def tags_partition(self) -> bool: ...

    def engine_columns(self, pages: bool) -> list[str]: ...


class RecordChecks:
    """The per-batch checks of a table's records; a base of TableSpec, whose fields they read.

    Methods rather than functions because adapters ask them of their ``spec``; apart from
    TableSpec so the declaration and the defence against hostile records each read whole.
    """

    __slots__ = ()

    def check_keys(self: Declared, batch: Sequence[Rows], uniform: bool) -> None:
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
        self: Declared,
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
            if isinstance(name, str) and fold(name) in RESERVED:
                raise _field_error(
                    self.name,
                    batch,
                    name,
                    f"is reserved for {RESERVED[fold(name)]}; rename it in the stage",
                    "reserved_field",
                )
        new = [f for f in fields if f not in existing]
        if not new:
            return
        spelled = {fold(column): column for column in reversed(list(existing))}
        for name in new:
            problem = _name_problem(name, limits)
            if problem is not None:
                raise _field_error(self.name, batch, name, problem, "bad_field")
            other = spelled.setdefault(fold(name), name)
            if other != name:
                what = "column" if other in existing else "field"
                raise _field_error(
                    self.name,
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

    def check_new_fields(self: Declared, batch: Sequence[Rows], new: Sequence[str]) -> None:
        """Fail the partition that brings a field the table lacks, under ``on_new_field="fail"``."""
        if self.on_new_field is not OnNewField.FAIL:
            return
        where = next(rows.partition.key for rows in batch if any(new[0] in r for r in rows.records))
        raise PermanentError(
            f"a record of partition {where} has field {new[0]!r}, which table "
            f"{self.name} lacks (on_new_field='fail'); add the column or drop the field",
            category="schema_drift",
        )

    def check_window(self: Declared, batch: Sequence[Rows], columns: Container[str]) -> None:
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

    def clash(self: Declared, rows: Rows, types: Mapping[str, str | None]) -> str | None:
        """The first value that does not fit its column, described; None if all fit."""
        for record in rows.records:
            for name, value in record.items():
                want = types.get(name)
                have = logical_type(value)
                if want is None or have is None or want not in LOGICAL_TYPES:
                    continue
                # Text takes any value but bytes, which no database turns into text.
                if have == want or (have != "blob" and widen(want, have) == want):
                    continue
                return (
                    f"partition {rows.partition.key}: field {name!r} of table {self.name} "
                    f"holds a {have} value ({_shown(value, 40)}) where the column is {want}"
                )
        return None

    def unstorable(self: Declared, batch: Sequence[Rows], limits: Limits) -> str | None:
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


def _field_error(
    table: str, batch: Sequence[Rows], name: object, problem: str, category: str
) -> PermanentError:
    return PermanentError(
        f"partition {_carrier(batch, [name])}: field {_shown(name)} of table {table} {problem}",
        category=category,
    )


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
