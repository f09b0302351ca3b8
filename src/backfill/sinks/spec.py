"""TableSpec: what a table sink was declared with, checked once at declaration, and what
both adapters derive from it per batch: the engine's tag columns, the fields records carry
and how to read them, and the column types to create."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Container, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from backfill.errors import ConfigError, PermanentError
from backfill.sinks.checks import RecordChecks
from backfill.sinks.columns import (
    PAGE_COLUMN,
    PARTITION_COLUMN,
    RESERVED,
    fold,
    logical_type,
    widen,
)
from backfill.sinks.protocol import Mode, OnNewField, OutsideWindow, Record, Rows

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True, slots=True)
class TableSpec(RecordChecks):
    """What a table sink was declared with: adapters share it, and its checks of records
    (inherited from :class:`~backfill.sinks.checks.RecordChecks`)."""

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
            if fold(column) in RESERVED:
                raise ConfigError(
                    f"table {name}: column {column!r} is reserved for "
                    f"{RESERVED[fold(column)]}; choose another name"
                )
            other = spelled.setdefault(fold(column), column)
            if other != column:
                raise ConfigError(
                    f"table {name}: columns {other!r} and {column!r} differ only by case; "
                    "keep one spelling"
                )
        folded = fold(partition_column or PARTITION_COLUMN)
        if partition_column not in (None, PARTITION_COLUMN) and folded in RESERVED:
            raise ConfigError(
                f"table {name}: partition_column {partition_column!r} is reserved for "
                f"{RESERVED[folded]}; name a date column of the records"
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
                    kind = widen(kind, logical_type(record.get(name)))
            types[name] = kind
        for name, declared in self.columns.items():
            types.setdefault(name, declared)
        for k in self.key:
            types.setdefault(k, "text")
        return types
