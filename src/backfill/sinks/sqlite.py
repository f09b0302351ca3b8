"""A SQLite table as a sink: batched, idempotent upserts keyed by the record key."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from backfill.errors import PermanentError, SinkError
from backfill.partitions import Partition
from backfill.sinks import Record

__all__ = ["SQLiteTable"]

_SQL_TYPES = {bool: "INTEGER", int: "INTEGER", float: "REAL", str: "TEXT", bytes: "BLOB"}


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class SQLiteTable:
    """Upsert records into ``table`` of the SQLite file at ``path``, keyed by ``key``.

    The table is created from ``columns`` (name -> SQL type) when given, otherwise from
    the first records written (types inferred from their values). A record missing a key
    field, or carrying a field the table lacks, fails its partition with a message that
    names the field.

    Example::

        SQLiteTable("flights.db", "flights", key=["year", "month", "day", "carrier",
                                                  "flight", "origin"])
    """

    def __init__(
        self,
        path: str | Path,
        table: str,
        *,
        key: Sequence[str],
        columns: Mapping[str, str] | None = None,
    ) -> None:
        if not key:
            raise SinkError(f"table {table!r} needs at least one key column")
        self.path = Path(path)
        self.table = table
        self.key = tuple(key)
        self.declared = dict(columns or {})
        self._conn: sqlite3.Connection | None = None
        self._columns: list[str] | None = None
        self._lock = threading.Lock()

    @property
    def description(self) -> str:
        return f"sqlite table {self.table} in {self.path}"

    def open(self) -> None:
        if self._conn is not None:
            return
        if not self.path.resolve().parent.is_dir():
            raise SinkError(
                f"cannot open {self.description}: directory {self.path.resolve().parent} "
                "does not exist; create it or point the sink elsewhere"
            )
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            rows = conn.execute(f"PRAGMA table_info({_quote(self.table)})").fetchall()
        except sqlite3.Error as exc:
            raise SinkError(f"cannot open {self.description}: {exc}") from exc
        self._conn = conn
        if rows:
            self._columns = [r[1] for r in rows]
            missing = [k for k in self.key if k not in self._columns]
            if missing:
                raise SinkError(
                    f"{self.description} exists without key column {missing[0]!r}; "
                    "drop the table or change the key"
                )
        elif self.declared:
            self._create(self.declared)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _create(self, columns: Mapping[str, str]) -> None:
        assert self._conn is not None
        cols = ", ".join(f"{_quote(n)} {t}".rstrip() for n, t in columns.items())
        pk = ", ".join(_quote(k) for k in self.key)
        self._conn.execute(
            f"CREATE TABLE IF NOT EXISTS {_quote(self.table)} ({cols}, PRIMARY KEY ({pk}))"
        )
        self._columns = [
            r[1] for r in self._conn.execute(f"PRAGMA table_info({_quote(self.table)})")
        ]

    def _infer(self, records: Sequence[Record]) -> dict[str, str]:
        types: dict[str, str] = {}
        for record in records:
            for name, value in record.items():
                if name not in types or types[name] == "":
                    types[name] = _SQL_TYPES.get(type(value), "") if value is not None else ""
        for k in self.key:
            types.setdefault(k, "")
        # A column seen only as None gets no declared type: SQLite then stores later
        # values as they come instead of coercing them to the first guess.
        return {**types, **self.declared}

    def write(self, partition: Partition, records: Sequence[Record]) -> int:
        if not records:
            return 0
        with self._lock:
            if self._conn is None:
                self.open()
            assert self._conn is not None
            if self._columns is None:
                self._create(self._infer(records))
            columns = self._columns
            assert columns is not None
            known = set(columns)
            for record in records:
                for k in self.key:
                    if record.get(k) is None:
                        raise PermanentError(
                            f"a record of partition {partition.key} has no value for key "
                            f"field {k!r} of table {self.table}",
                            category="missing_key",
                        )
                extra = record.keys() - known
                if extra:
                    raise PermanentError(
                        f"a record of partition {partition.key} has field "
                        f"{sorted(extra)[0]!r}, which table {self.table} lacks",
                        category="schema_drift",
                    )
            names = ", ".join(_quote(c) for c in columns)
            marks = ", ".join("?" for _ in columns)
            keys = ", ".join(_quote(k) for k in self.key)
            updates = ", ".join(
                f"{_quote(c)} = excluded.{_quote(c)}" for c in columns if c not in self.key
            )
            action = f"DO UPDATE SET {updates}" if updates else "DO NOTHING"
            sql = (
                f"INSERT INTO {_quote(self.table)} ({names}) VALUES ({marks}) "
                f"ON CONFLICT ({keys}) {action}"
            )
            rows: list[tuple[Any, ...]] = [tuple(r.get(c) for c in columns) for r in records]
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    self._conn.executemany(sql, rows)
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise SinkError(f"cannot write {self.description}: {exc}") from exc
            return len(rows)
