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

Where each concern lives: :mod:`~backfill.sinks.protocol` (the Sink protocol, Rows, the
modes), :mod:`~backfill.sinks.columns` (engine columns, reserved names, portable types),
:mod:`~backfill.sinks.spec` (TableSpec, the declaration), :mod:`~backfill.sinks.checks`
(the checks of hostile records), :mod:`~backfill.sinks.urls` (``table(url, ...)``),
:mod:`~backfill.sinks.records` (records turned into mappings); the adapters are
:mod:`~backfill.sinks.sqlite` and :mod:`~backfill.sinks.postgres`.
"""

from __future__ import annotations

from backfill.sinks.checks import Limits
from backfill.sinks.columns import LOGICAL_TYPES, PAGE_COLUMN, PARTITION_COLUMN, logical_type
from backfill.sinks.protocol import (
    Mode,
    OnNewField,
    OutsideWindow,
    Record,
    Rows,
    Sink,
    SinkConnection,
)
from backfill.sinks.records import to_mapping, to_mappings
from backfill.sinks.spec import TableSpec
from backfill.sinks.urls import table

__all__ = [
    "LOGICAL_TYPES",
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
    "logical_type",
    "table",
    "to_mapping",
    "to_mappings",
]
