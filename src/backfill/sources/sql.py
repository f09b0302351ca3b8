"""``ctx.sql``: the SQL client kind, a warehouse's queries under its resource.

A warehouse is declared on the job with its URL (SQLAlchemy 2: ``postgresql://`` through
psycopg 3, ``duckdb:///file.duckdb`` through duckdb-engine, ``sqlite:///file.db``, or any
dialect installed, such as ``bigquery://``) and its limits::

    job.warehouse("warehouse", "postgresql://me@db/analytics", concurrency=15,
                  limits=["2000/day"], timeout=600)

    @job.stage(resource="warehouse")
    async def totals(ctx, partition):
        return await ctx.sql.records(
            "SELECT carrier, count(*) AS n FROM flights WHERE day = :day GROUP BY carrier")

Every query takes a turn at the resource (its concurrency, rates and daily quota, the
quota kept in the ledger across restarts) for as long as it runs. Queries are
parameterised only: ``:day``, ``:start``, ``:end`` and each of the partition's
dimensions are bound from the partition, other ``:names`` from ``params``; a name bound
by neither stops the run naming it.

Where the driver says how many bytes a query scanned (BigQuery's query job does; a job
may read it from other drivers' cursors with ``scanned=``), the run's figures count
them, and ``bytes_budget=`` bounds them: once a run has scanned its budget no new query
starts, and the run stops as it does for any fatal error (the partitions left wait for
the next run; queries already running finish).

A query past its timeout is cancelled on the server (PostgreSQL: ``statement_timeout``
on the server, a cancel request besides; DuckDB and SQLite: ``interrupt()``; others: the
driver's cancel), its connection rolled back and returned to the pool (or discarded when
it cannot be made sound), and the partition fails as ``timeout`` with the query's
duration, so the next partition starts at once. ``backfill retry --failed`` redoes it.

Errors are classified once, here: the database refusing a query (syntax, an unknown
table) fails its partition with the database's own one-line message; a dropped
connection, a deadlock or a busy database is transient; a warehouse that cannot be
reached at all stops the run (exit 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from backfill.errors import ConfigError, FatalError, PermanentError, StageError, TransientError
from backfill.secrets import Masker, url_secrets

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

    from backfill.clock import Clock
    from backfill.partitions import Partition
    from backfill.ratelimit import Resource

__all__ = [
    "BOUND_NAMES",
    "PartitionSql",
    "QueryStats",
    "ScannedBytes",
    "SqlClient",
    "check_warehouse_url",
    "format_bytes",
    "parse_bytes",
    "partition_params",
    "query_params",
]

log = logging.getLogger("backfill.sql")

T = TypeVar("T")

# What every partition binds, besides its dimensions.
BOUND_NAMES = ("day", "start", "end", "begins", "ends", "key")
DEFAULT_BATCH = 10_000
# How long a cancelled query's thread is given to come back before its connection is
# thrown away instead of returned (a driver that ignores cancels must not hang a slot).
CANCEL_GRACE = 10.0
# The server's own limit (PostgreSQL) fires first; the client's cancel a little later
# only if the server did not answer.
_CLIENT_MARGIN = 0.5
# SQLSTATE classes worth retrying: connection exceptions, serialization failures and
# deadlocks, insufficient resources, operator intervention (a restart).
_TRANSIENT_SQLSTATE = ("08", "40", "53", "57P")
_QUERY_CANCELED = "57014"
# Sizes a budget may be written in: decimal (GB) and binary (GiB) units.
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1}
for _i, _p in enumerate("kmgtp", start=1):
    _UNITS[f"{_p}b"] = 1000**_i
    _UNITS[f"{_p}ib"] = 1024**_i

# How a job reads the bytes a query scanned from the driver's cursor (None: not said).
ScannedBytes = Callable[[Any], "int | None"]


def parse_bytes(value: int | str, what: str) -> int:
    """A number of bytes from ``2_000_000_000``, ``"500GB"`` or ``"2TiB"``; a
    ConfigError of one sentence naming ``what`` otherwise."""
    if isinstance(value, bool):
        raise ConfigError(f"{what} must be a number of bytes or a size such as '500GB'")
    if isinstance(value, int):
        number = value
    else:
        found = _SIZE.match(value) if isinstance(value, str) else None
        if found is None or (found.group(2) or "").lower() not in _UNITS:
            raise ConfigError(
                f"{what} {value!r} must be a number of bytes or a size such as '500GB' or '2TiB'"
            )
        number = int(float(found.group(1)) * _UNITS[(found.group(2) or "").lower()])
    if number <= 0:
        raise ConfigError(f"{what} must be more than 0 bytes")
    return number


def format_bytes(count: float) -> str:
    """``1.5 GB``, ``312 MB``, ``40 B`` (decimal units, as warehouses bill)."""
    for unit, size in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.3g} {unit}"
    return f"{count:.0f} B"


def reported_bytes(cursor: Any) -> int | None:
    """The bytes a finished query scanned, where its DB-API cursor says: BigQuery's
    (google-cloud-bigquery) keeps its query job, whose ``total_bytes_processed`` it is."""
    job = getattr(cursor, "query_job", None) or getattr(cursor, "_query_job", None)
    value = getattr(job, "total_bytes_processed", None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _require_sqlalchemy(what: str) -> None:
    try:
        import sqlalchemy  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"{what} needs warehouse support, which is not installed: "
            "pip install 'backfill[warehouse]'"
        ) from exc


def check_warehouse_url(url: str, what: str = "warehouse") -> str:
    """The dialect name of a SQLAlchemy URL; a ConfigError naming what to fix when the
    URL is malformed or its dialect (or driver) is not installed."""
    _require_sqlalchemy(f"a {what}")
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    masker = Masker(url_secrets(url, what))
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(
            f"{what} URL {masker.mask(url)!r} is not a database URL; write e.g. "
            "duckdb:///warehouse.duckdb or postgresql://USER@HOST/DATABASE"
        ) from exc
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername == "postgresql+psycopg":
        from backfill._optional import require_postgres

        require_postgres(f"{what} on PostgreSQL")
    try:
        parsed.get_dialect()
    except NoSuchModuleError as exc:
        raise ConfigError(
            f"{what} URL {masker.mask(url)!r}: unknown SQL dialect {parsed.drivername!r}; use "
            "duckdb, postgresql, sqlite, or install the dialect's SQLAlchemy package"
        ) from exc
    except ImportError as exc:
        extra = "postgres" if parsed.get_backend_name() == "postgresql" else "warehouse"
        raise ConfigError(
            f"{what} URL {masker.mask(url)!r}: the driver of {parsed.drivername!r} is not "
            f"installed ({exc.name or exc}); pip install 'backfill[{extra}]'"
        ) from exc
    return parsed.get_backend_name()


def _engine_url(url: str) -> str:
    """PostgreSQL through psycopg 3 (SQLAlchemy's default would be psycopg2)."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    return url


def partition_params(partition: Partition) -> dict[str, Any]:
    """What a partition binds: ``:day`` (its first day), ``:start``, ``:end`` (the
    window's first day and the day after its last, so ``day >= :start AND day < :end``
    holds whole days), ``:begins`` and ``:ends`` (the window as aware UTC times, for a
    timestamp column: an hourly partition's hour, a day in the partition's time zone),
    ``:key``, and each dimension by name."""
    from datetime import timedelta

    return {
        "day": partition.start,
        "start": partition.start,
        "end": partition.end + timedelta(days=1),
        "begins": partition.begins,
        "ends": partition.ends,
        "key": partition.key,
        **partition.dim_map,
    }


_COMMENT = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)
_QUOTED = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")
# A :name as SQLAlchemy reads one: not after a colon, a word character or a backslash,
# nor followed by a colon (``:day::date`` is no parameter; write ``CAST(:day AS DATE)``).
_PARAM = re.compile(r"(?<![:\w\\]):([A-Za-z_]\w*)(?![:\w])")


def query_params(sql: str) -> list[str]:
    """The ``:names`` a query binds, in order of first use (quotes and comments skipped)."""
    bare = _QUOTED.sub("''", _COMMENT.sub(" ", sql))
    return list(dict.fromkeys(_PARAM.findall(bare)))


def _bind(
    sql: str, given: Mapping[str, Any], where: str, partition_names: Sequence[str] = ()
) -> dict[str, Any]:
    """The values of the query's parameters; a ConfigError naming a missing one."""
    wanted = query_params(sql)
    missing = [name for name in wanted if name not in given]
    if missing:
        bound = ", ".join(f":{n}" for n in (*partition_names, *given)) or "none"
        raise ConfigError(
            f"{where} uses the parameter :{missing[0]}, which nothing binds (bound: "
            f"{bound}); pass it with params={{{missing[0]!r}: ...}}"
        )
    return {name: given[name] for name in wanted}


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip()
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line or type(orig).__name__


def _sqlstate(exc: BaseException) -> str | None:
    orig = getattr(exc, "orig", None) or exc
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return state if isinstance(state, str) else None


@dataclass(slots=True)
class QueryStats:
    """What a warehouse client did in a run, for the run's figures and the log."""

    queries: int = 0
    rows: int = 0
    seconds: float = 0.0
    # Bytes scanned, where the driver said (None: it never did).
    scanned: int | None = None
    timeouts: int = 0
    errors: int = 0
    # Queries running now (the highest seen at once, for the concurrency's proof).
    running: int = 0
    most_at_once: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def started(self) -> None:
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)

    def finished(self, rows: int, seconds: float, outcome: str, scanned: int | None) -> None:
        with self._lock:
            self.running -= 1
            self.queries += 1
            self.rows += rows
            self.seconds += seconds
            if scanned is not None:
                self.scanned = (self.scanned or 0) + scanned
            if outcome == "timeout":
                self.timeouts += 1
            elif outcome != "ok":
                self.errors += 1

    def as_dict(self) -> dict[str, float]:
        return {
            "queries": self.queries,
            "rows": self.rows,
            "seconds": round(self.seconds, 3),
            "timeouts": self.timeouts,
            "errors": self.errors,
            "most_at_once": self.most_at_once,
            **({"bytes_scanned": self.scanned} if self.scanned is not None else {}),
        }


class _Timeout(Exception):
    """The client's own clock ran out (the server's did not answer in time)."""


class _Unreachable(Exception):
    """No connection could be made (raised on a client thread, judged on the loop)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _Held:
    """The connection a call runs on, once it has one (a cancel interrupts it), and the
    bytes its statements scanned, where the driver said."""

    __slots__ = ("conn", "scanned")

    def __init__(self) -> None:
        self.conn: Connection | None = None
        self.scanned: int | None = None


class SqlClient:
    """The ``sql`` client kind: one SQLAlchemy engine and its pool per warehouse and run.

    ``timeout`` (seconds) bounds each query unless a call gives its own; ``pool_size``
    defaults to the resource's concurrency. Methods are coroutines; the driver's blocking
    calls run on the client's own threads, one per connection.
    """

    def __init__(
        self,
        url: str,
        *,
        resource: Resource | None = None,
        clock: Clock | None = None,
        timeout: float | None = None,
        pool_size: int | None = None,
        secrets: Sequence[str] = (),
        name: str = "warehouse",
        bytes_budget: int | None = None,
        scanned: ScannedBytes | None = None,
    ) -> None:
        self.dialect = check_warehouse_url(url, f"warehouse {name!r}")
        self.bytes_budget = bytes_budget
        self._scanned = scanned or reported_bytes
        self._scanned_failed = False
        from sqlalchemy import create_engine, event

        self.name = name
        self.resource = resource
        self.clock = clock
        self.timeout = timeout
        self._masker = Masker((*url_secrets(url, name),))
        self._secrets = tuple(secrets)
        size = pool_size or (resource.concurrency if resource is not None else None) or 4
        self.pool_size = size
        # A connection is rolled back where it is given back (see _give_back): the pool
        # need not do it again.
        options: dict[str, Any] = {
            "pool_size": size,
            "max_overflow": 0,
            "pool_timeout": 3600,
            "pool_reset_on_return": None,
        }
        if self.dialect == "postgresql":
            # Connecting to an unreachable server must not hang a slot for minutes.
            options["connect_args"] = {"connect_timeout": 10}
        self.engine: Engine = create_engine(_engine_url(url), **options)
        if self.dialect == "sqlite":
            # pysqlite's own transaction handling would commit behind SQLAlchemy's back.
            @event.listens_for(self.engine, "connect")
            def _sqlite_wait(dbapi_conn: Any, _record: Any) -> None:
                dbapi_conn.execute("PRAGMA busy_timeout = 30000")

        # A connection per query at most: a thread waiting for one would hold a thread the
        # connections' return needs.
        self._connections: asyncio.Semaphore | None = None
        self._threads = ThreadPoolExecutor(size + 2, thread_name_prefix=f"backfill-sql-{name}")
        self.stats = QueryStats()
        self._reached = False

    @property
    def description(self) -> str:
        """The warehouse, for messages (no password)."""
        return self._masker.mask(self.engine.url.render_as_string(hide_password=True))

    def bound(
        self, partition: Partition, *, where: str = "query", timeout: float | None = None
    ) -> PartitionSql:
        """This client for one partition: its parameters bound to every query."""
        return PartitionSql(self, partition, where=where, timeout=timeout)

    # -- queries ---------------------------------------------------------------------

    async def records(
        self,
        sql: str,
        params: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        where: str = "query",
    ) -> list[dict[str, Any]]:
        """Run a query; its rows as dicts."""
        values = _bind(sql, params or {}, where)

        def fetch(conn: Connection, held: _Held) -> tuple[list[dict[str, Any]], int]:
            if self.dialect == "postgresql":
                # One statement, nothing to commit: no BEGIN and ROLLBACK round trips.
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            result = self._measured(conn.execute(_text(sql), values), held)
            rows = [dict(r._mapping) for r in result]
            return rows, len(rows)

        return await self._run(fetch, timeout, sql)

    async def execute(
        self,
        sql: str,
        params: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        where: str = "query",
    ) -> int:
        """Run a statement in a transaction of its own; the rows it changed."""
        values = _bind(sql, params or {}, where)

        def run(conn: Connection, held: _Held) -> tuple[int, int]:
            count = self._measured(conn.execute(_text(sql), values), held).rowcount
            conn.commit()
            return max(count, 0), max(count, 0)

        return await self._run(run, timeout, sql)

    async def transaction(
        self,
        statements: Sequence[tuple[str, Mapping[str, Any]]],
        *,
        timeout: float | None = None,
        where: str = "query",
        before_commit: Callable[[Connection], None] | None = None,
    ) -> list[int]:
        """Run statements in one transaction (all or nothing), bounded together by one
        timeout; the rows each changed. ``before_commit`` runs on the connection last,
        inside the transaction (a done-mark, a check)."""
        bound = [(sql, _bind(sql, params, where)) for sql, params in statements]

        def run(conn: Connection, held: _Held) -> tuple[list[int], int]:
            counts = [
                max(self._measured(conn.execute(_text(sql), values), held).rowcount, 0)
                for sql, values in bound
            ]
            if before_commit is not None:
                before_commit(conn)
            conn.commit()
            return counts, counts[-1] if counts else 0

        return await self._run(run, timeout, bound[-1][0] if bound else "")

    async def stream(
        self,
        sql: str,
        params: Mapping[str, Any] | None = None,
        *,
        batch: int = DEFAULT_BATCH,
        timeout: float | None = None,
        where: str = "query",
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Run a query; its rows in lists of up to ``batch``, fetched as they are asked
        for (a server-side cursor where the driver has one). The resource's turn and the
        connection are held until the last batch is read or the loop stops; ``timeout``
        bounds the whole stream."""
        values = _bind(sql, params or {}, where)
        limit = self._limit(timeout)
        self._within_budget()
        held = _Held()
        async with self._connection() as (conn, loop):
            started = time.monotonic()
            self.stats.started()
            rows = 0
            outcome = "error"
            if limit is not None and self.dialect == "postgresql":
                # Set once, before the cursor opens (a commit later would close it).
                ms = max(1, int(limit * 1000))
                await loop.run_in_executor(self._threads, _statement_timeout, conn, ms)
            try:
                result = await self._step(
                    conn,
                    loop,
                    lambda: self._measured(
                        conn.execution_options(stream_results=True).execute(_text(sql), values),
                        held,
                    ),
                    limit,
                    started,
                )
                while True:
                    chunk = await self._step(
                        conn, loop, lambda: result.mappings().fetchmany(batch), limit, started
                    )
                    if not chunk:
                        break
                    rows += len(chunk)
                    yield [dict(r) for r in chunk]
                outcome = "ok"
            except _Timeout:
                outcome = "timeout"
                raise self._timed_out(limit, time.monotonic() - started) from None
            finally:
                self._finished(rows, started, outcome, sql, held.scanned)

    # -- one query from its turn to its connection's return --------------------------

    async def _run(
        self, work: Callable[[Connection, _Held], tuple[T, int]], timeout: float | None, sql: str
    ) -> T:
        """One query: a turn, then a connection, the statement and the connection's return
        in one call on the client's threads (a query costs one hop, not three)."""
        limit = self._limit(timeout)
        loop = asyncio.get_running_loop()
        self._within_budget()
        held = _Held()
        async with self._turn():
            started = time.monotonic()
            self.stats.started()
            rows, outcome = 0, "error"

            def call() -> tuple[T, int]:
                conn = self._connect()
                held.conn = conn
                try:
                    if limit is not None and self.dialect == "postgresql":
                        left = limit - (time.monotonic() - started)
                        _statement_timeout(conn, max(1, int(left * 1000)))
                    return work(conn, held)
                finally:
                    _give_back(conn)

            try:
                future = loop.run_in_executor(self._threads, call)
                value, rows = await self._wait(future, held, limit, started)
                outcome = "ok"
                return value
            except _Timeout:
                outcome = "timeout"
                raise self._timed_out(limit, time.monotonic() - started) from None
            except StageError as exc:
                if exc.category == "timeout":
                    outcome = "timeout"
                raise
            finally:
                self._finished(rows, started, outcome, sql, held.scanned)

    def _limit(self, timeout: float | None) -> float | None:
        limit = timeout if timeout is not None else self.timeout
        if limit is not None and limit <= 0:
            raise ConfigError(f"warehouse {self.name!r}: a query timeout must be positive")
        return limit

    def _finished(
        self, rows: int, started: float, outcome: str, sql: str, scanned: int | None
    ) -> None:
        seconds = time.monotonic() - started
        self.stats.finished(rows, seconds, outcome, scanned)
        extra: dict[str, Any] = {"resource": self.name, "rows": rows, "seconds": round(seconds, 3)}
        if scanned is not None:
            extra["bytes_scanned"] = scanned
        log.debug(
            "query on %s: %s, %d rows in %.3f s%s",
            self.name,
            outcome,
            rows,
            seconds,
            f", {format_bytes(scanned)} scanned" if scanned is not None else "",
            extra=extra,
        )

    def _measured(self, result: Any, held: _Held) -> Any:
        """``result``, its statement's scanned bytes added to ``held`` where the driver
        said (on the client's thread, right after the statement ran)."""
        cursor = getattr(result, "cursor", None)
        if cursor is None:
            return result
        try:
            scanned = self._scanned(cursor)
        except Exception as exc:
            if not self._scanned_failed:
                self._scanned_failed = True
                log.warning(
                    "warehouse %s: reading the bytes a query scanned failed (%s); "
                    "they are not counted",
                    self.name,
                    self._masker.mask(_first_line(exc)),
                )
            return result
        if scanned is not None:
            held.scanned = (held.scanned or 0) + int(scanned)
        return result

    def _within_budget(self) -> None:
        """Refuse a new query once the run has scanned the warehouse's bytes budget."""
        budget, scanned = self.bytes_budget, self.stats.scanned
        if budget is not None and scanned is not None and scanned >= budget:
            raise FatalError(
                f"warehouse {self.name!r} has scanned {format_bytes(scanned)} in this run, "
                f"its bytes_budget of {format_bytes(budget)}: no more queries start; the "
                "partitions left wait for the next run (raise bytes_budget= to go on)",
                category="bytes_budget",
            )

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        """A turn at the resource and a place in the pool (a thread waiting for a
        connection would hold a thread the connections' return needs)."""
        turn = self.resource.turn() if self.resource is not None else contextlib.nullcontext()
        if self._connections is None:
            self._connections = asyncio.Semaphore(self.pool_size)
        async with turn, self._connections:
            yield

    @contextlib.asynccontextmanager
    async def _connection(
        self,
    ) -> AsyncIterator[tuple[Connection, asyncio.AbstractEventLoop]]:
        """A turn, then a pooled connection held across several calls (a stream), given
        back at the end (rolled back, or thrown away when it cannot be)."""
        loop = asyncio.get_running_loop()
        async with self._turn():
            try:
                conn = await loop.run_in_executor(self._threads, self._connect)
            except _Unreachable as exc:
                raise self._unreachable(exc.cause) from None
            try:
                yield conn, loop
            finally:
                await loop.run_in_executor(self._threads, _give_back, conn)

    def _connect(self) -> Connection:
        """A pooled connection (on a client thread); _Unreachable when none can be made."""
        from sqlalchemy.exc import DBAPIError, SQLAlchemyError

        try:
            conn = self.engine.connect()
        except (DBAPIError, SQLAlchemyError, OSError) as exc:
            raise _Unreachable(exc) from None
        self._reached = True
        return conn

    def _unreachable(self, exc: BaseException) -> StageError:
        message = self._masker.mask(_first_line(exc))
        if not self._reached:
            # Never reached in this run: the URL, the server or the credentials.
            return FatalError(
                f"cannot reach warehouse {self.name!r} at {self.description}: {message}",
                category="warehouse",
            )
        return TransientError(
            f"warehouse {self.name!r} dropped the connection: {message}", category="network"
        )

    async def _wait(
        self,
        future: asyncio.Future[T],
        held: _Held,
        limit: float | None,
        started: float,
    ) -> T:
        """The call's result within what is left of ``limit``; a call past it, or whose
        caller is cancelled (the stage's own timeout, the run stopping), is cancelled on
        the server first."""
        try:
            if limit is None:
                return await asyncio.shield(future)
            left = limit - (time.monotonic() - started)
            margin = _CLIENT_MARGIN if self.dialect == "postgresql" else 0.0
            try:
                return await asyncio.wait_for(asyncio.shield(future), max(0.0, left) + margin)
            except TimeoutError:
                await self._cancel(held, future)
                raise _Timeout from None
        except asyncio.CancelledError:
            await self._cancel(held, future)
            raise
        except _Unreachable as exc:
            raise self._unreachable(exc.cause) from None
        except (StageError, _Timeout):
            raise
        except Exception as exc:
            raise self._classify(exc, limit, time.monotonic() - started) from None

    async def _step(
        self,
        conn: Connection,
        loop: asyncio.AbstractEventLoop,
        call: Callable[[], T],
        limit: float | None,
        started: float,
    ) -> T:
        """One blocking call on a held connection (a stream's next batch), bounded by
        what is left of ``limit``."""
        held = _Held()
        held.conn = conn
        return await self._wait(loop.run_in_executor(self._threads, call), held, limit, started)

    async def _cancel(self, held: _Held, future: asyncio.Future[Any]) -> None:
        """Stop the running call on the server and wait (bounded) for its thread."""
        if future.done():
            return
        if held.conn is not None:
            _interrupt(held.conn)
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(asyncio.shield(future), CANCEL_GRACE)
        if not future.done():
            log.warning(
                "a cancelled query on %s did not stop within %g s; its connection is discarded",
                self.name,
                CANCEL_GRACE,
            )
            if held.conn is not None:
                with contextlib.suppress(Exception):
                    held.conn.invalidate()

    def _timed_out(self, limit: float | None, seconds: float) -> PermanentError:
        return PermanentError(
            f"the query on warehouse {self.name!r} took longer than its timeout of "
            f"{limit:g} s (cancelled on the server after {seconds:.1f} s); "
            "retry it with a larger timeout",
            category="timeout",
        )

    def _classify(self, exc: Exception, limit: float | None, seconds: float) -> StageError:
        """A driver's error as transient, permanent or fatal, in one line."""
        from sqlalchemy.exc import DBAPIError, OperationalError

        message = self._masker.mask(_first_line(exc))
        state = _sqlstate(exc)
        orig = getattr(exc, "orig", None)
        kind = type(orig).__name__ if orig is not None else type(exc).__name__
        if state == _QUERY_CANCELED or kind == "InterruptException":
            if limit is not None:
                return self._timed_out(limit, seconds)
            return TransientError(f"the query was cancelled: {message}", category="timeout")
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return TransientError(f"warehouse {self.name!r}: {message}", category="network")
        if state is not None and state.startswith(_TRANSIENT_SQLSTATE):
            return TransientError(f"warehouse {self.name!r}: {message}", category="network")
        if self.dialect == "sqlite" and isinstance(exc, OperationalError) and "locked" in message:
            return TransientError(f"warehouse {self.name!r}: {message}", category="busy")
        if kind in ("IOException", "ConnectionException"):
            return TransientError(f"warehouse {self.name!r}: {message}", category="network")
        return PermanentError(f"the database refused the query: {message}", category="sql")

    async def aclose(self) -> None:
        """Close the pool (the run ends)."""
        await asyncio.get_running_loop().run_in_executor(self._threads, self.engine.dispose)
        self._threads.shutdown(wait=False)


def _text(sql: str) -> Any:
    from sqlalchemy import text

    return text(sql)


def _statement_timeout(conn: Connection, ms: int) -> None:
    """The server's own limit for the next statement (PostgreSQL)."""
    conn.exec_driver_sql(f"SET statement_timeout = {int(ms)}")
    # A session setting: it holds after this commit, which leaves no transaction open
    # (a read then runs in autocommit).
    conn.commit()


def _interrupt(conn: Connection) -> None:
    """Ask the server (or the embedded engine) to stop the connection's running query."""
    try:
        raw = conn.connection.dbapi_connection
    except Exception:
        return
    if raw is None:
        return
    for name in ("cancel_safe", "interrupt", "cancel"):
        method = getattr(raw, name, None)
        if callable(method):
            with contextlib.suppress(Exception):
                method()
            return


def _give_back(conn: Connection) -> None:
    """Return a connection healthy: rolled back, the server's timeout reset; one that
    cannot be is discarded, so the pool makes a new one."""
    try:
        if conn.invalidated:
            return
        conn.rollback()
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET statement_timeout = 0")
            conn.commit()
    except Exception:
        with contextlib.suppress(Exception):
            conn.invalidate()
    finally:
        with contextlib.suppress(Exception):
            conn.close()


class PartitionSql:
    """``ctx.sql``: the warehouse client with the partition's parameters bound.

    ``:day``, ``:start``, ``:end``, ``:key`` and the partition's dimensions need no
    ``params``; ``params`` adds others (and may override these)::

        rows = await ctx.sql.records("SELECT * FROM t WHERE day = :day AND tour = :tour")
        async for batch in ctx.sql.stream("SELECT * FROM big WHERE day = :day"):
            ...
    """

    __slots__ = ("_where", "client", "partition", "timeout")

    def __init__(
        self,
        client: SqlClient,
        partition: Partition,
        *,
        where: str = "query",
        timeout: float | None = None,
    ) -> None:
        self.client = client
        self.partition = partition
        self.timeout = timeout
        self._where = where

    def params(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """What this partition binds, with ``extra`` on top."""
        return {**partition_params(self.partition), **(extra or {})}

    def _timeout(self, timeout: float | None) -> float | None:
        return timeout if timeout is not None else self.timeout

    async def records(
        self, sql: str, params: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> list[dict[str, Any]]:
        """The query's rows as dicts."""
        return await self.client.records(
            sql, self.params(params), timeout=self._timeout(timeout), where=self._where
        )

    async def execute(
        self, sql: str, params: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> int:
        """Run a statement in its own transaction; the rows it changed."""
        return await self.client.execute(
            sql, self.params(params), timeout=self._timeout(timeout), where=self._where
        )

    async def stream(
        self,
        sql: str,
        params: Mapping[str, Any] | None = None,
        *,
        batch: int = DEFAULT_BATCH,
        timeout: float | None = None,
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The query's rows in lists of up to ``batch``."""
        async for chunk in self.client.stream(
            sql,
            self.params(params),
            batch=batch,
            timeout=self._timeout(timeout),
            where=self._where,
        ):
            yield chunk
