"""SQL stages: a partition computed inside its warehouse, no row through Python.

``job.sql_stage(name, sql=..., target=...)`` declares a stage whose work per partition is
one transaction in the stage's warehouse (see :mod:`backfill.sources.sql`):

* ``sql`` a ``SELECT`` (or ``WITH ... SELECT``): the partition's rows. The target table is
  made from the query's columns on first use (plus ``_partition``, the partition's key);
  each partition deletes the rows it wrote before (by ``_partition``) and inserts the
  query's: ``replace-partition`` and ``append`` are both exact on a redo.
* ``sql`` an ``INSERT INTO target ... SELECT ...`` of your own: the target exists, and the
  partition's earlier rows are those whose ``partition_column`` (a date column) falls in
  its window (and whose dimension columns hold its values); they are deleted first.

Every statement binds ``:day``, ``:start``, ``:end``, ``:key`` and the partition's
dimensions (see :func:`~backfill.sources.sql.partition_params`). The stage's checks
(``checks.min_rows``, ``checks.max_null_rate``, or any check function, which then gets
the partition's rows fetched back) run on the target inside the same transaction: a
failing one rolls it back, so nothing of the partition is written.

Exactly once: the lease is proven just before the transaction (as the sink writer does for
a table outside the ledger's database), the rows commit, then the engine records the
partition done; a crash in between redoes it, and the redo replaces its own rows.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from backfill.checks import Check, CheckResult
from backfill.errors import ConfigError, PermanentError
from backfill.sinks.columns import PARTITION_COLUMN
from backfill.sinks.protocol import Mode
from backfill.sources.sql import SqlClient, partition_params, query_params

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from backfill.context import Context
    from backfill.partitions import Partition
    from backfill.sinks import Sink

__all__ = ["SqlStage", "target_name"]

_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
_MIN_ROWS = re.compile(r"^min_rows\((\d+)\)$")
_NULL_RATE = re.compile(r"^max_null_rate\((.+),([0-9.eE+-]+)\)$")


def _quote(name: str) -> str:
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


def target_name(target: str | Sink) -> tuple[str, Mode | None, str | None]:
    """The table an SQL stage writes: its name, and the mode and partition column a
    ``table(...)`` declared (None where a bare name was given)."""
    if isinstance(target, str):
        name, mode, column = target, None, None
    else:
        spec = getattr(target, "spec", None)
        name = target.name
        mode = spec.mode if spec is not None else None
        column = spec.partition_column if spec is not None else None
        if column == PARTITION_COLUMN:
            column = None
    if not _NAME.match(name):
        raise ConfigError(f"SQL stage target {name!r} must be a table name (schema.table)")
    return name, mode, column


@dataclass(slots=True)
class SqlStage:
    """One SQL stage's statements and checks; called as the stage's function."""

    name: str
    sql: str
    target: str
    mode: Mode
    partition_column: str | None
    checks: Sequence[Check] = ()
    params: Mapping[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    inserts: bool = field(init=False, default=False)
    # Targets made in this run, per warehouse client (CREATE ... IF NOT EXISTS races).
    _made: set[int] = field(default_factory=set)
    _making: asyncio.Lock | None = None

    def __post_init__(self) -> None:
        body = _COMMENTS.sub(" ", self.sql).strip().rstrip(";").strip()
        if not body:
            raise ConfigError(f"SQL stage {self.name}: sql= is empty")
        self.sql = self.sql.strip().rstrip(";").rstrip()
        first = body.split(None, 1)[0].upper()
        if first not in ("SELECT", "WITH", "INSERT"):
            raise ConfigError(
                f"SQL stage {self.name}: sql= must be a SELECT (the partition's rows) or an "
                f"INSERT INTO {self.target} ... SELECT, not a {first} statement"
            )
        self.inserts = first == "INSERT"
        if self.mode is Mode.UPSERT:
            raise ConfigError(
                f"SQL stage {self.name}: mode must be replace-partition or append (a "
                "partition's rows are replaced as a whole)"
            )
        if self.inserts and self.partition_column is None:
            raise ConfigError(
                f"SQL stage {self.name}: an INSERT replaces the partition's rows by a date "
                "column of the target; give partition_column=... (or write a SELECT, whose "
                "rows the engine tags with their partition)"
            )
        if self.inserts and self.mode is Mode.APPEND:
            raise ConfigError(
                f"SQL stage {self.name}: append needs a SELECT (the engine tags its rows, so a "
                "redo replaces them); an INSERT of your own is replace-partition"
            )

    def function(self) -> Callable[[Context, Partition], Awaitable[None]]:
        """The stage function (a coroutine function, as the engine tells them apart)."""

        async def sql_stage(ctx: Context, partition: Partition) -> None:
            await self.run(ctx, partition)

        sql_stage.__doc__ = f"SQL stage {self.name} into {self.target}"
        return sql_stage

    async def run(self, ctx: Context, partition: Partition) -> None:
        """One partition: its rows replaced in the target, checked, in one transaction."""
        client: SqlClient = ctx.client("sql")
        where = f"the SQL of stage {self.name}"
        values = {**partition_params(partition), **self.params}
        if not self.inserts:
            await self._make_target(client, values, where)
        delete, scope = self._delete(partition)
        insert = self._insert()
        checker = self._checker(partition, scope, values)
        await ctx.prove_lease()
        counts = await client.transaction(
            [(delete, values), (insert, values)],
            timeout=self.timeout,
            where=where,
            before_commit=checker,
        )
        ctx.count_records(counts[-1])

    # -- statements ------------------------------------------------------------------

    def _insert(self) -> str:
        if self.inserts:
            return self.sql
        return (
            f"INSERT INTO {_quote(self.target)} SELECT q.*, CAST(:key AS VARCHAR) "
            f"FROM ({self.sql}) AS q"
        )

    def _delete(self, partition: Partition) -> tuple[str, str]:
        """The DELETE of the partition's earlier rows, and the WHERE that finds them."""
        if not self.inserts:
            scope = f"{_quote(PARTITION_COLUMN)} = :key"
        else:
            column = _quote(self.partition_column or "")
            scope = f"{column} >= :start AND {column} < :end"
            scope += "".join(f" AND {_quote(dim)} = :{dim}" for dim, _ in partition.dims)
        return f"DELETE FROM {_quote(self.target)} WHERE {scope}", scope

    async def _make_target(self, client: SqlClient, values: Mapping[str, Any], where: str) -> None:
        """The target, made from the query's columns on first use (no rows)."""
        if id(client) in self._made:
            return
        if self._making is None:
            self._making = asyncio.Lock()
        async with self._making:
            if id(client) in self._made:
                return
            # PostgreSQL takes no parameters in CREATE TABLE AS: the values are written in.
            from sqlalchemy import text

            wanted = {k: values[k] for k in query_params(self.sql) if k in values}
            select = text(
                f"SELECT q.*, CAST(:key AS VARCHAR) AS {_quote(PARTITION_COLUMN)} "
                f"FROM ({self.sql}) AS q WHERE 1 = 0"
            ).bindparams(**{**wanted, "key": values["key"]})
            try:
                literal = str(
                    select.compile(
                        dialect=client.engine.dialect, compile_kwargs={"literal_binds": True}
                    )
                )
            except Exception as exc:
                missing = [k for k in query_params(self.sql) if k not in values]
                if missing:
                    raise ConfigError(
                        f"{where} uses the parameter :{missing[0]}, which nothing binds; "
                        f"pass it with params={{{missing[0]!r}: ...}}"
                    ) from None
                raise ConfigError(f"{where}: {exc}") from None
            # Bound values now written in: any colon left is the query's own text.
            escaped = literal.replace(":", "\\:")
            await client.execute(
                f"CREATE TABLE IF NOT EXISTS {_quote(self.target)} AS {escaped}",
                timeout=self.timeout,
                where=where,
            )
            self._made.add(id(client))

    # -- checks ----------------------------------------------------------------------

    def _checker(
        self, partition: Partition, scope: str, values: Mapping[str, Any]
    ) -> Callable[[Connection], None] | None:
        """The stage's checks on the target's rows of the partition, run inside the
        transaction; a failing one raises, which rolls everything back."""
        if not self.checks:
            return None
        from sqlalchemy import text

        table = _quote(self.target)
        bound = {k: v for k, v in values.items() if f":{k}" in scope}

        def run(conn: Connection) -> None:
            rows: list[dict[str, Any]] | None = None
            for spec in self.checks:
                result = self._sql_check(conn, spec, table, scope, bound)
                if result is None:
                    if rows is None:
                        found = conn.execute(text(f"SELECT * FROM {table} WHERE {scope}"), bound)
                        rows = [dict(r._mapping) for r in found]
                    result = spec.run(rows, partition)
                if not result.ok:
                    raise PermanentError(
                        f"check {result.name} failed: {result.detail}", category=result.category
                    )

        return run

    @staticmethod
    def _sql_check(
        conn: Connection, spec: Check, table: str, scope: str, bound: Mapping[str, Any]
    ) -> CheckResult | None:
        """``min_rows`` and ``max_null_rate`` counted by the warehouse; None for others."""
        from sqlalchemy import text

        minimum = _MIN_ROWS.match(spec.name)
        if minimum is not None:
            n = int(minimum[1])
            count = conn.execute(text(f"SELECT count(*) FROM {table} WHERE {scope}"), bound)
            value = int(count.scalar_one())
            if value >= n:
                return CheckResult(spec.name, True, spec.category, value=value)
            return CheckResult(
                spec.name, False, spec.category, f"{value} row(s), at least {n} expected", value
            )
        nulls = _NULL_RATE.match(spec.name)
        if nulls is not None:
            column, rate = nulls[1], float(nulls[2])
            found = conn.execute(
                text(f"SELECT count(*), count({_quote(column)}) FROM {table} WHERE {scope}"),
                bound,
            ).one()
            total, present = int(found[0]), int(found[1])
            observed = (total - present) / total if total else 0.0
            if observed <= rate:
                return CheckResult(spec.name, True, spec.category, value=round(observed, 6))
            return CheckResult(
                spec.name,
                False,
                spec.category,
                f"{observed:.1%} of {total} row(s) have no {column!r}, at most {rate:.1%} allowed",
                round(observed, 6),
            )
        return None
