"""The Sink protocol: what a destination table is to the engine, the connection it writes
in, the rows of one partition it is handed, and the modes a table is declared with."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from backfill.ledger.identity import DatabaseIdentity
from backfill.partitions import Partition

Record = Mapping[str, Any]


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
