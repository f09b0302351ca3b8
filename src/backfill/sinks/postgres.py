"""A PostgreSQL table as a sink (psycopg 3): binary COPY into a staging table, then one
``INSERT ... SELECT`` into the target (with ``ON CONFLICT DO UPDATE`` for upserts)."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any

import psycopg
import psycopg.errors

from backfill._postgres import postgres_identity, safe_url
from backfill.errors import ConfigError, PermanentError, SinkError, TransientError
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

__all__ = ["PostgresConnection", "PostgresTable", "safe_url"]

_PG_TYPES = {
    "boolean": "boolean",
    "integer": "bigint",
    "real": "double precision",
    "text": "text",
    "blob": "bytea",
    "date": "date",
    "timestamp": "timestamp",
    "json": "jsonb",
    None: "text",
}


# The target table's alias in an upsert, to compare its whole row with EXCLUDED.
_TARGET = "_backfill_target"
# Columns a table can have, dropped ones included (MaxHeapAttributeNumber).
_MAX_COLUMNS = 1600
# Bytes of a name PostgreSQL keeps (NAMEDATALEN - 1), until the server says otherwise.
_NAME_BYTES = 63
_FLOATS = ("double precision", "real")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _holds_nan(rows: Sequence[tuple[Any, ...]], columns: Sequence[int]) -> bool:
    """Whether these rows may hold a NaN in one of ``columns``: a column's sum is NaN when
    one of its values is (a C loop, about 140 ns a row for five columns; a scan of the
    staging table cost five times that). Infinities of both signs, or a value that is not
    a number, answer yes too: NULLIF is right for them all the same."""
    for i in columns:
        try:
            total = sum(filter(None, map(itemgetter(i), rows)), 0.0)
        except (TypeError, OverflowError):
            return True
        if total != total:
            return True
    return False


class PostgresConnection:
    """One psycopg connection; reconnects at the next transaction after a drop."""

    def __init__(self, url: str, description: str) -> None:
        self.url = url
        self.description = description
        self.raw: Any = None
        self._connect()

    def _connect(self) -> None:
        try:
            self.raw = psycopg.connect(self.url, connect_timeout=10)
        except psycopg.OperationalError as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise SinkError(f"cannot connect to {self.description}: {reason}") from exc
        except psycopg.ProgrammingError as exc:
            raise SinkError(f"bad PostgreSQL URL for {self.description}: {exc}") from exc

    def begin(self) -> None:
        if self.raw is None or self.raw.closed or self.raw.broken:
            try:
                self._connect()
            except SinkError as exc:
                raise TransientError(exc.args[0], category="sink_unreachable") from exc

    def commit(self) -> None:
        try:
            self.raw.commit()
        except psycopg.OperationalError as exc:
            raise TransientError(f"{self.description}: {exc}", category="sink_unreachable") from exc

    def rollback(self) -> None:
        if self.raw is None or self.raw.closed:
            return
        try:
            if not self.raw.broken:
                self.raw.rollback()
                return
        except psycopg.OperationalError:
            pass
        # Lost (the server restarted, say): the next begin() connects afresh.
        self.raw.close()

    def close(self) -> None:
        if self.raw is not None:
            self.raw.close()


class PostgresTable:
    """Write records into ``table`` of the PostgreSQL database at ``url``.

    ``table`` may be ``schema.table``. Created when missing, from ``columns`` or from the
    first batch's values. See :mod:`backfill.sinks` for the modes.

    Example::

        PostgresTable("postgresql://me@db/warehouse", "flights",
                      key=["year", "month", "day", "carrier", "flight", "origin"])
    """

    def __init__(
        self,
        url: str,
        table: str,
        *,
        key: Sequence[str] | None = None,
        mode: str | Mode = Mode.UPSERT,
        columns: Mapping[str, str] | None = None,
        on_new_field: str | OnNewField = OnNewField.ADD,
        partition_column: str | None = None,
        outside_window: str | OutsideWindow | None = None,
    ) -> None:
        schema, _, name = table.rpartition(".")
        self.spec = TableSpec.declare(
            name,
            key=key,
            mode=mode,
            columns=columns,
            on_new_field=on_new_field,
            partition_column=partition_column,
            outside_window=outside_window,
        )
        self.limits = Limits(
            "PostgreSQL", columns=_MAX_COLUMNS, name_bytes=_NAME_BYTES, nul_in_text=False
        )
        spec = self.spec
        for column in (*spec.key, *spec.columns, spec.partition_column):
            if len(column.encode()) > _NAME_BYTES:
                raise ConfigError(
                    f"table {name}: {column!r} is {len(column.encode())} bytes long; "
                    f"PostgreSQL keeps {_NAME_BYTES}, so name a shorter column"
                )
        self.schema = schema or None
        self.url = url
        self._safe = safe_url(url)
        self._identity = postgres_identity(url)
        self.qualified = (_quote(self.schema) + "." if self.schema else "") + _quote(name)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def key(self) -> tuple[str, ...]:
        return self.spec.key

    @property
    def database(self) -> str:
        return self._safe

    @property
    def identity(self) -> DatabaseIdentity:
        return self._identity

    @property
    def description(self) -> str:
        where = f"{self.schema}.{self.spec.name}" if self.schema else self.spec.name
        return f"table {where} in {self._safe}"

    def connect(self) -> PostgresConnection:
        conn = PostgresConnection(self.url, self.description)
        try:
            existing = self._existing(conn.raw)
            name_bytes = int(conn.raw.execute("SHOW max_identifier_length").fetchone()[0])
            conn.raw.rollback()
        except Exception as exc:
            conn.close()
            raise SinkError(f"cannot use {self.description}: {exc}") from exc
        missing = [k for k in self.spec.key if existing and k not in existing]
        if missing:
            conn.close()
            raise SinkError(
                f"{self.description} exists without key column {missing[0]!r}; "
                "drop the table or change the key"
            )
        self.limits = dataclasses.replace(self.limits, name_bytes=name_bytes)
        return conn

    def _used(self, raw: Any) -> int:
        """How many of the table's columns are used up, dropped ones included."""
        row = raw.execute(
            "SELECT coalesce(max(attnum), 0) FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) AND attnum > 0",
            (self.qualified,),
        ).fetchone()
        return int(row[0])

    def _existing(self, raw: Any) -> dict[str, tuple[str, int]]:
        """Column name -> (type, type oid), in table order; empty when there is no table."""
        rows = raw.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.atttypid "
            "FROM pg_attribute a WHERE a.attrelid = to_regclass(%s) "
            "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            (self.qualified,),
        ).fetchall()
        return {r[0]: (r[1], r[2]) for r in rows}

    def write(self, conn: SinkConnection, batch: Sequence[Rows]) -> int:
        errors = psycopg.errors
        try:
            return self._write(conn.raw, batch)
        except errors.NotNullViolation as exc:
            column = exc.diag.column_name or "?"
            raise PermanentError(
                f"a record has no value for key field {column!r} of table {self.spec.name}",
                category="missing_key",
            ) from exc
        except (
            errors.DeadlockDetected,
            errors.SerializationFailure,
            errors.LockNotAvailable,
        ) as exc:
            raise TransientError(f"{self.description}: {exc}", category="sink_busy") from exc
        except errors.ProgramLimitExceeded as exc:
            # A row or value beyond what the server takes (row too big, say): the same
            # every time, so the partition's, not a lost connection to retry.
            raise PermanentError(
                f"table {self.spec.name}: {' '.join(str(exc).split())} (a limit of PostgreSQL); "
                "the stage should send fewer or smaller fields",
                category="too_big",
            ) from exc
        except psycopg.OperationalError as exc:
            raise TransientError(
                f"{self.description}: {' '.join(str(exc).split())}", category="sink_unreachable"
            ) from exc
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            raise self._clash(batch, conn.raw, exc) from exc
        except psycopg.errors.InsufficientPrivilege as exc:
            raise SinkError(f"cannot write {self.description}: {exc}") from exc
        except psycopg.ProgrammingError as exc:
            raise PermanentError(
                f"table {self.spec.name}: {' '.join(str(exc).split())}", category="type_clash"
            ) from exc
        except (TypeError, ValueError, OverflowError, RecursionError) as exc:
            raise self._clash(batch, conn.raw, exc) from exc

    def _clash(self, batch: Sequence[Rows], raw: Any, exc: BaseException) -> PermanentError:
        """Name the field whose value does not fit, when it can be found."""
        found = self.spec.unstorable(batch, self.limits)
        if found is not None:
            return PermanentError(found, category="bad_value")
        reverse = {pg: logical for logical, pg in _PG_TYPES.items() if logical is not None}
        with contextlib.suppress(Exception):
            raw.rollback()
        try:
            existing = self._existing(raw)
            raw.rollback()
        except Exception:
            existing = {}
        types = {name: reverse.get(kind) for name, (kind, _) in existing.items()}
        for rows in batch:
            found = self.spec.clash(rows, types)
            if found is not None:
                return PermanentError(found, category="type_clash")
        reason = " ".join(str(exc).split())
        return PermanentError(f"table {self.spec.name}: {reason}", category="type_clash")

    def _create(self, raw: Any, types: Mapping[str, str | None]) -> None:
        spec = self.spec
        columns = []
        for name, kind in types.items():
            sql_type = _PG_TYPES.get(kind, kind or "text")
            null = " NOT NULL" if name in spec.key else ""
            columns.append(f"{_quote(name)} {sql_type}{null}")
        if spec.tags_partition:
            columns.append(f"{_quote(PARTITION_COLUMN)} text NOT NULL")
        if spec.key:
            columns.append(f"PRIMARY KEY ({', '.join(_quote(k) for k in spec.key)})")
        if self.schema:
            raw.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(self.schema)}")
        raw.execute(f"CREATE TABLE IF NOT EXISTS {self.qualified} ({', '.join(columns)})")
        if spec.tags_partition:
            raw.execute(
                f"CREATE INDEX IF NOT EXISTS {_quote(spec.name + '_partition')} "
                f"ON {self.qualified} ({_quote(PARTITION_COLUMN)})"
            )

    def _write(
        self, raw: Any, batch: Sequence[Rows], *, exact: bool = False, delete: bool = True
    ) -> int:
        spec = self.spec
        existing = self._existing(raw)
        # A new table is made from every field of the batch: look at all of them.
        exact = exact or not existing
        fields, uniform = spec.fields(batch, exact=exact)
        pages = spec.tags_pages(batch)
        used = self._used(raw) if any(f not in existing for f in fields) else None
        spec.check_fields(batch, fields, existing, self.limits, pages=pages, used=used)
        spec.check_keys(batch, uniform)
        spec.check_window(batch, existing.keys() | set(fields))
        if not existing:
            if not fields:
                return 0
            # Two workers may race to create it: one waits for the other's lock.
            raw.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.qualified,))
            existing = self._existing(raw)
            if not existing:
                self._create(raw, spec.infer(batch, fields))
                existing = self._existing(raw)
        new = [f for f in fields if f not in existing]
        if new:
            self._add_columns(raw, batch, new)
            existing = self._existing(raw)
        if pages and PAGE_COLUMN not in existing:
            # The engine's own column, like _partition: never subject to on_new_field.
            raw.execute(
                f"ALTER TABLE {self.qualified} ADD COLUMN IF NOT EXISTS {_quote(PAGE_COLUMN)} text"
            )
            existing = self._existing(raw)
        if delete and spec.mode is not Mode.UPSERT:
            self._delete(raw, [rows for rows in batch if rows.first or rows.redo is not None])
        if not fields or not any(rows.records for rows in batch):
            return 0
        columns = list(fields)
        names = [*columns, *spec.engine_columns(pages)]
        stage = _quote(f"_backfill_stage_{spec.name}")
        raw.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {stage} "
            f"(LIKE {self.qualified} INCLUDING DEFAULTS) ON COMMIT DROP"
        )
        column_list = ", ".join(_quote(c) for c in names)
        floats = [i for i, c in enumerate(columns) if existing[c][0] in _FLOATS]
        nan = False
        total = 0
        rest: Sequence[Rows] = ()
        # Once exact, a missing field is None (no KeyError, so no second look).
        getter = spec.getter(columns, uniform and not exact)
        with raw.cursor() as cur:
            with cur.copy(f"COPY {stage} ({column_list}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types([existing[c][1] for c in names])
                for index, rows in enumerate(batch):
                    if not rows.records:
                        continue
                    try:
                        values = list(map(getter, rows.records))
                    except KeyError:
                        # A record carries another field in place of one of the first
                        # record's: write what came before, then look at every field of
                        # the rest.
                        rest = batch[index:]
                        break
                    nan = nan or _holds_nan(values, floats)
                    suffix = spec.suffix(rows, pages)
                    if suffix:
                        for value in values:
                            copy.write_row(value + suffix)
                    else:
                        for value in values:
                            copy.write_row(value)
                    total += len(values)
            # SQLite keeps no NaN (it stores NULL): neither does this, so a job moves
            # between the two unchanged. NULLIF on every row made the INSERT a third
            # slower, so only a batch that may hold a NaN pays it.
            select_list = column_list
            if nan:
                select_list = ", ".join(
                    f"NULLIF({_quote(c)}, 'NaN') AS {_quote(c)}" if i in floats else _quote(c)
                    for i, c in enumerate(names)
                )
            insert = f"INSERT INTO {self.qualified} AS {_TARGET} ({column_list}) "
            if spec.key:
                keys = ", ".join(_quote(k) for k in spec.key)
                updates = ", ".join(
                    f"{_quote(c)} = EXCLUDED.{_quote(c)}" for c in columns if c not in spec.key
                )
                # A row the upsert would leave byte for byte as it is is not rewritten.
                # *<> compares stored images, not values: -0.0 after 0.0, or 1.00 after
                # 1.0, still updates; so does a row whose columns outside the batch hold
                # anything but their default (EXCLUDED carries the default there).
                action = (
                    f"DO UPDATE SET {updates} WHERE {_TARGET} *<> EXCLUDED"
                    if updates
                    else "DO NOTHING"
                )
                conflict = f" ON CONFLICT ({keys}) {action}"
                cur.execute("SAVEPOINT backfill_upsert")
                try:
                    cur.execute(f"{insert}SELECT {select_list} FROM {stage}{conflict}")
                except psycopg.errors.CardinalityViolation:
                    # The same key twice in one batch: the last record wins.
                    cur.execute("ROLLBACK TO SAVEPOINT backfill_upsert")
                    cur.execute(
                        f"{insert}SELECT DISTINCT ON ({keys}) {select_list} FROM {stage} "
                        f"ORDER BY {keys}, ctid DESC{conflict}"
                    )
                cur.execute("RELEASE SAVEPOINT backfill_upsert")
            else:
                cur.execute(f"{insert}SELECT {select_list} FROM {stage}")
            cur.execute(f"DROP TABLE {stage}")
        if rest:
            return total + self._write(raw, rest, exact=True, delete=False)
        return total

    def _add_columns(self, raw: Any, batch: Sequence[Rows], new: list[str]) -> None:
        spec = self.spec
        spec.check_new_fields(batch, new)
        types = spec.infer(batch, new)
        for name in new:
            sql_type = _PG_TYPES.get(types.get(name), types.get(name) or "text")
            raw.execute(
                f"ALTER TABLE {self.qualified} ADD COLUMN IF NOT EXISTS {_quote(name)} {sql_type}"
            )

    def _delete(self, raw: Any, batch: Sequence[Rows]) -> None:
        """Delete what the batch's rows replace: every earlier row of a partition written
        ``first``, else those tagged with the page being redone."""
        if not batch:
            return
        spec = self.spec
        whole = [rows for rows in batch if rows.first]
        redo: list[Rows] = []
        existing: Mapping[str, tuple[str, int]] = {}
        if len(whole) < len(batch) or spec.partition_column != PARTITION_COLUMN:
            existing = self._existing(raw)
            # A table without the column has no row written under a checkpoint.
            if PAGE_COLUMN in existing:
                redo = [rows for rows in batch if not rows.first]
        page = f" AND {_quote(PAGE_COLUMN)} = %s"
        if spec.partition_column == PARTITION_COLUMN:
            if whole:
                raw.execute(
                    f"DELETE FROM {self.qualified} WHERE {_quote(PARTITION_COLUMN)} = ANY(%s)",
                    ([rows.partition.key for rows in whole],),
                )
            if redo:
                raw.execute(
                    f"DELETE FROM {self.qualified} WHERE ({_quote(PARTITION_COLUMN)}, "
                    f"{_quote(PAGE_COLUMN)}) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
                    ([rows.partition.key for rows in redo], [rows.redo for rows in redo]),
                )
            return
        column = spec.replacement_column(existing)
        for rows in [*whole, *redo]:
            part = rows.partition
            dims = [(k, v) for k, v in part.dims if k in existing]
            sql = (
                f"DELETE FROM {self.qualified} WHERE {_quote(column)} >= %s "
                f"AND {_quote(column)} < %s"
            )
            sql += "".join(f" AND {_quote(k)} = %s" for k, _ in dims)
            params: tuple[Any, ...] = (part.start, part.end + dt.timedelta(days=1))
            params += tuple(v for _, v in dims)
            if not rows.first:
                sql += page
                params += (rows.redo,)
            raw.execute(sql, params)
