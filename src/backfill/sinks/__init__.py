"""Sinks: where a stage's records go.

A sink writes one partition's records durably and idempotently: writing the same
partition twice leaves the same rows, so a partition redone after a crash between
"rows written" and "partition marked done" never duplicates anything.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from backfill.errors import PermanentError
from backfill.partitions import Partition

__all__ = ["Record", "Sink", "to_mapping"]

Record = Mapping[str, Any]


class Sink(Protocol):
    """A destination table. Methods are blocking; the engine calls them off the event loop."""

    @property
    def description(self) -> str:
        """Where the rows go, for messages (never carries a secret)."""

    def open(self) -> None:
        """Connect and check the destination; raise :class:`~backfill.errors.SinkError`."""

    def write(self, partition: Partition, records: Sequence[Record]) -> int:
        """Durably write one partition's records; return how many rows were written."""

    def close(self) -> None: ...


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
    return [to_mapping(r) for r in records]
