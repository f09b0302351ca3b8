"""A batch that fails on one partition's data finds the culprits in a few transactions
and writes every other partition."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from backfill.errors import PermanentError
from backfill.partitions import daily
from backfill.sinks import Rows, SinkConnection
from backfill.writer import Destination, WriteResult


class Connection:
    def __init__(self, table: Table) -> None:
        self.table = table
        self.raw: Any = None
        self.pending: list[str] = []

    def begin(self) -> None:
        self.table.transactions += 1
        self.pending = []

    def commit(self) -> None:
        self.table.written.extend(self.pending)

    def rollback(self) -> None:
        self.pending = []

    def close(self) -> None:
        pass


class Table:
    """A table that refuses, as a database does, any batch holding a bad partition."""

    name = "t"
    database = "fake://db"
    description = "table t in fake://db"

    def __init__(self, bad: set[str]) -> None:
        self.bad = bad
        self.transactions = 0
        self.written: list[str] = []

    def connect(self) -> SinkConnection:
        return Connection(self)

    def write(self, conn: SinkConnection, batch: Sequence[Rows]) -> int:
        assert isinstance(conn, Connection)
        for rows in batch:
            if rows.partition.key in self.bad:
                raise PermanentError(
                    f"partition {rows.partition.key}: field 'x' of table t is hostile",
                    category="bad_field",
                )
            conn.pending.append(rows.partition.key)
        return len(batch)


def write_batch(table: Table, keys: list[str]) -> list[WriteResult]:
    """Hand every partition over at once; the destination writes them as one batch."""
    parts = [p for p in daily("2013-01-01", "2013-12-31") if p.key in keys]

    async def hand_over() -> list[WriteResult]:
        destination = Destination(
            table.database,
            [table],
            owner="me",
            batch_rows=len(parts),
            max_delay=600.0,
        )
        await destination.open()
        try:
            return await asyncio.gather(
                *(destination.submit({"t": Rows(p, [{"day": p.key}])}, None, p) for p in parts)
            )
        finally:
            await destination.close()

    return asyncio.run(hand_over())


def test_one_bad_partition_among_many_costs_a_few_transactions_not_one_each() -> None:
    """One hostile partition in a batch of 128: it alone is refused, the 127 others are
    written once each, in at most 2 log2(128) + 1 transactions (one each would be 129)."""
    keys = [p.key for p in daily("2013-01-01", "2013-05-08")]
    assert len(keys) == 128
    table = Table(bad={"2013-03-02"})
    results = write_batch(table, keys)
    refused = {k for k, r in zip(keys, results, strict=True) if r.error is not None}
    assert refused == {"2013-03-02"}
    assert sorted(table.written) == sorted(set(keys) - refused)
    assert table.transactions <= 15, table.transactions


def test_every_bad_partition_is_found_and_named() -> None:
    """Several hostile partitions, adjacent and apart: each is refused with its own
    message and category, every healthy one is written once."""
    keys = [p.key for p in daily("2013-01-01", "2013-01-20")]
    bad = {"2013-01-01", "2013-01-07", "2013-01-08", "2013-01-20"}
    table = Table(bad=bad)
    results = write_batch(table, keys)
    for key, result in zip(keys, results, strict=True):
        if key in bad:
            assert result.error is not None and result.error.category == "bad_field"
            assert result.error.message.startswith(f"partition {key}:")
        else:
            assert result.error is None
    assert sorted(table.written) == sorted(set(keys) - bad)
