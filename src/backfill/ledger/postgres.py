"""The shared ledger: PostgreSQL, for a fleet of workers on many machines.

Every method is one short transaction on a pooled connection. Claims take batches with
``FOR UPDATE SKIP LOCKED``, so any number of workers claim at once without waiting on
each other or leasing a partition twice. A lost connection (a server restart, a network
blip) is retried with backoff for up to :attr:`PostgresLedger.retry_for` seconds
(``backfill.retry.RECONNECT_SECONDS``), then the call fails with one sentence.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from datetime import date
from typing import Any, TypeVar

import psycopg
from psycopg.sql import SQL, Identifier
from psycopg_pool import ConnectionPool, PoolTimeout

from backfill._postgres import postgres_identity
from backfill.backoff import Backoff
from backfill.errors import LedgerError
from backfill.ledger.algorithm import SQLLedger
from backfill.ledger.dialect import Dialect, check_version, statements
from backfill.ledger.models import (
    MAX_LOST_LEASES,
    Dependency,
    NoState,
    Outcome,
    Status,
    dims_json,
    params_json,
)
from backfill.ledger.postgres_errors import connect_error as _connect_error
from backfill.ledger.postgres_errors import last_line as _last_line
from backfill.ledger.postgres_errors import on_sink, redact_url
from backfill.partitions import Partition
from backfill.retry import RECONNECT_SECONDS

__all__ = ["MAX_LOST_LEASES", "SCHEMA_VERSION", "PostgresDialect", "PostgresLedger", "redact_url"]

log = logging.getLogger("backfill.ledger.postgres")
# The state database coming back (a restart, a failover): 0.1 s doubling to 5 s, drawn
# from the top half; kept under set_testing, so the loop never spins.
_RECONNECT = Backoff(first=0.1, cap=5.0, jitter=0.5, switchable=False)
T = TypeVar("T")

SCHEMA_VERSION = 8
# Any constant will do: it only serialises concurrent schema set-up and migrations.
_MIGRATION_LOCK = 0x6261636B66696C6C  # "backfill"


class PostgresDialect(Dialect):
    """PostgreSQL's spelling: ``%(name)s`` placeholders, date columns and integer day
    arithmetic, ``jsonb`` read with ``->>``, lists as arrays, batches through
    ``unnest``."""

    name = "postgres"
    schema_version = SCHEMA_VERSION

    def param(self, name: str) -> str:
        return f"%({name})s"

    def days_before(self, expr: str, days: int) -> str:
        return f"({expr} - {days})" if days else expr

    def window_low(self, dep: Dependency) -> str:
        n = dep.lookback
        if n == 0:
            return "p.window_start"
        if dep.grain == "week":
            return f"(p.window_start - {7 * n})"
        if dep.grain in ("month", "year"):
            return (
                f"(date_trunc('{dep.grain}', p.window_start) - interval '{n} {dep.grain}s')::date"
            )
        return f"(p.window_start - {n})"

    def dim(self, alias: str, name: str) -> str:
        # Dimension names are validated identifiers (letters, digits, _ . : -), never quotes.
        return f"({alias}.dims ->> '{name}')"

    def dim_by_param(self, param: str) -> str:
        return f"dims ->> %({param})s"

    def in_list(self, expr: str, param: str) -> str:
        return f"{expr} = ANY(%({param})s)"

    def list_value(self, values: Sequence[Any]) -> Any:
        return list(values)

    def date_value(self, day: date) -> Any:
        return day

    def dim_value(self, name: str) -> Any:
        return name

    def date_of(self, raw: Any) -> date:
        return raw  # type: ignore[no-any-return]

    def dims_of(self, raw: Any) -> tuple[tuple[str, str], ...]:
        # jsonb's canonical text.
        if not raw:
            return ()
        return tuple((str(k), str(v)) for k, v in json.loads(raw).items())

    def plan(self, conn: Any, stage_id: int, chunk: Sequence[Partition], memo: Any) -> int:
        params: dict[str, Any] = {
            "stage_id": stage_id,
            "keys": [p.key for p in chunk],
            "starts": [p.start for p in chunk],
            "ends": [p.end for p in chunk],
            "dims": [
                memo[p.dims] if p.dims in memo else memo.setdefault(p.dims, dims_json(p.dims))
                for p in chunk
            ],
            "params": [params_json(p.params) if p.params else None for p in chunk],
        }
        return int(conn.execute(self.queries["plan"], params).rowcount)

    def complete(self, conn: Any, owner: str, outcomes: Sequence[Outcome], now: float) -> int:
        return len(self.complete_on(conn, owner, outcomes, now))

    def complete_on(
        self, conn: Any, owner: str, outcomes: Sequence[Outcome], now: float
    ) -> set[int]:
        """Apply outcomes on a connection to the ledger's database, in its open transaction;
        return the ids applied (those whose lease ``owner`` still held)."""
        ordered = sorted(outcomes, key=lambda o: o.id)
        params = {
            "owner": owner,
            "now": now,
            "ids": [o.id for o in ordered],
            "statuses": [o.status.value for o in ordered],
            "attempts": [o.attempts for o in ordered],
            "records": [o.records for o in ordered],
            "durations": [o.duration for o in ordered],
            "categories": [o.error_category for o in ordered],
            "messages": [o.error_message for o in ordered],
            "requests": [o.requests for o in ordered],
            "checks": [o.checks for o in ordered],
        }
        # A sink's connection prepares statements it runs often; this one must be planned
        # for its own batch (see PostgresLedger.__init__).
        rows = conn.execute(self.queries["complete"], params, prepare=False).fetchall()
        finished = sum(1 for _, status in rows if status != Status.PENDING.value)
        if finished:
            conn.execute(
                self.queries["count_finished"], {"n": finished, "owner": owner}, prepare=False
            )
        return {int(claim_id) for claim_id, _ in rows}

    def begin_on(self, conn: Any, owner: str, leases: Sequence[tuple[int, int]]) -> set[int]:
        """Mark leases begun on a connection to the ledger's database, in its open
        transaction; return the ids ``owner`` still holds (their rows stay locked)."""
        ordered = sorted(leases)
        params = {
            "owner": owner,
            "ids": [lease[0] for lease in ordered],
            "claims": [lease[1] for lease in ordered],
        }
        rows = conn.execute(self.queries["begin"], params, prepare=False).fetchall()
        return {int(row[0]) for row in rows}

    def complete_in_sink(
        self, conn: Any, owner: str, outcomes: Sequence[Outcome], now: float
    ) -> set[int]:
        """:meth:`complete_on` on a sink's connection (see :func:`on_sink`)."""
        with on_sink("recording done-marks"):
            return self.complete_on(conn, owner, outcomes, now)

    def begin_in_sink(self, conn: Any, owner: str, leases: Sequence[tuple[int, int]]) -> set[int]:
        """:meth:`begin_on` on a sink's connection (see :func:`on_sink`)."""
        with on_sink("proving leases"):
            return self.begin_on(conn, owner, leases)


_PATH_ITEM = re.compile(r'\s*("(?:[^"]|"")*"|[^,\s]+)\s*(?:,|$)')


def _search_path(setting: str, user: str) -> list[str]:
    """The schema names of a ``search_path`` setting, ``"$user"`` resolved."""
    names = []
    for item in _PATH_ITEM.findall(setting):
        name = item[1:-1].replace('""', '"') if item.startswith('"') else item.lower()
        names.append(user if name == "$user" else name)
    return [n for n in names if n]


def _read_only_session(conn: psycopg.Connection[Any]) -> None:
    """Every transaction of a reader's connection is read-only: the server refuses a write."""
    conn.execute("SET default_transaction_read_only = on")


class PostgresLedger(SQLLedger):
    """The :class:`~backfill.ledger.Ledger` on a PostgreSQL database.

    ``url`` is a libpq URL, e.g. ``postgresql://backfill:secret@db:5432/backfill``. The
    tables go to the first schema of the session's search_path (``public`` by default);
    add ``?options=-csearch_path%3DNAME`` to keep them in schema ``NAME``, which is
    created when it does not exist yet.

    ``read_only``: use an existing ledger of this schema version without creating or
    migrating anything; every transaction is read-only.
    """

    dialect = PostgresDialect()
    retry_for = RECONNECT_SECONDS
    # Workers on many machines share this database: every resource's rate is shared.
    fleet = True

    def __init__(self, url: str, *, pool_size: int = 4, read_only: bool = False) -> None:
        self.url = url
        self.safe_url = redact_url(url)
        super().__init__()
        self.identity = postgres_identity(url)
        self._gone = False
        if read_only:
            self._check_read_only(url)
        else:
            self._check(url)
        # No server-side prepared statements: a prepared statement's generic plan guesses
        # 10 rows for an unnest() of a 1,000-id batch and joins it by a nested loop over
        # every leased row (completions ran 6x slower); planning each call costs ~0.5 ms.
        # It also keeps the ledger usable behind a transaction-mode pooler.
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True, "prepare_threshold": None},
            open=False,
            name="backfill-ledger",
            reconnect_timeout=self.retry_for,
            configure=_read_only_session if read_only else None,
        )
        self._pool.open(wait=False)

    @staticmethod
    def _connect(url: str) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(url, autocommit=True, connect_timeout=10)
        except (psycopg.Error, ValueError) as exc:
            raise _connect_error(url, exc) from exc

    def _check(self, url: str) -> None:
        """Connect once (a clear error for a bad URL), then create or migrate the schema."""
        with self._connect(url) as conn:
            try:
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
                    self._make_schema(conn)
                    self._migrate(conn)
            except psycopg.Error as exc:
                # The primary message alone: the full text quotes the failing SQL.
                reason = exc.diag.message_primary or _last_line(str(exc))
                raise LedgerError(f"cannot set up the ledger in {self.safe_url}: {reason}") from exc

    def _make_schema(self, conn: psycopg.Connection[Any]) -> None:
        """Where none of the search_path's schemas exists (a URL naming a schema of its
        own, say), create the first one: the tables go there."""
        row = conn.execute(
            "SELECT current_schema(), current_user, current_setting('search_path')"
        ).fetchone()
        if row is None or row[0] is not None:
            return
        names = _search_path(row[2], row[1])
        if not names:
            raise LedgerError(
                f"the search_path of {self.safe_url} names no schema to keep the ledger's "
                "tables in; name one in the URL: ?options=-csearch_path%3DNAME"
            )
        conn.execute(SQL("CREATE SCHEMA IF NOT EXISTS {}").format(Identifier(names[0])))

    def _check_read_only(self, url: str) -> None:
        """Connect once (a clear error for a bad URL) and check the schema, changing
        nothing: no tables is no state yet, another version is refused."""
        with self._connect(url) as conn:
            try:
                row = conn.execute("SELECT to_regclass('backfill_meta')").fetchone()
                if row is None or row[0] is None:
                    raise NoState(f"no state in {self.safe_url}; nothing has run yet")
                found = conn.execute(
                    "SELECT value FROM backfill_meta WHERE key = 'schema_version'"
                ).fetchone()
            except psycopg.Error as exc:
                raise LedgerError(
                    f"cannot read the ledger in {self.safe_url}: {_last_line(str(exc))}"
                ) from exc
        version = int(found[0]) if found else 0
        check_version(version, SCHEMA_VERSION, self.safe_url, reader=True)

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        row = conn.execute("SELECT to_regclass('backfill_meta')").fetchone()
        version = None
        if row is not None and row[0] is not None:
            found = conn.execute(
                "SELECT value FROM backfill_meta WHERE key = 'schema_version'"
            ).fetchone()
            version = int(found[0]) if found else 0
            if check_version(version, SCHEMA_VERSION, self.safe_url, reader=False):
                return
        for script in self.dialect.upgrade_scripts(version):
            # One simple query per script: the server runs its statements in order.
            conn.execute(";\n".join(statements(script)).encode())
        conn.execute(
            "INSERT INTO backfill_meta (key, value) VALUES ('schema_version', %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(SCHEMA_VERSION),),
        )

    def _transact(self, body: Callable[[Any], T], write: bool) -> T:
        """Run ``body`` in one transaction; driver errors become LedgerError here only.

        A lost connection is retried with exponential backoff and jitter: every body is
        safe to repeat (claims a committed-but-unacknowledged batch would hold are
        released when the worker ends; completes only touch rows still leased).
        """
        # Once the database has been gone for a whole window, each further call (a
        # stopping run records what it can) tries once: the run ends soon, not a window
        # per call later.
        patience = 0.0 if self._gone else self.retry_for
        deadline = time.monotonic() + patience
        attempt = 0
        while True:
            attempt += 1
            try:
                # Waiting for a connection the pool cannot make counts against the window.
                wait = min(10.0, max(1.0, deadline - time.monotonic()))
                with self._pool.connection(timeout=wait) as conn, conn.transaction():
                    result = body(conn)
                self._gone = False
                return result
            except (psycopg.OperationalError, PoolTimeout) as exc:
                # Stage ids the lost transaction created do not exist.
                self._stage_ids.clear()
                if time.monotonic() + _RECONNECT.ceiling(attempt) > deadline:
                    self._gone = True
                    raise LedgerError(
                        f"lost the state database {self.safe_url} for more than "
                        f"{self.retry_for:g} s: {_last_line(str(exc))}"
                    ) from exc
                delay = _RECONNECT.delay(attempt)
                log.warning(
                    "state database unavailable (%s); retrying in %.1f s",
                    _last_line(str(exc)),
                    delay,
                )
                time.sleep(delay)
            except psycopg.Error as exc:
                raise LedgerError(f"state {self.safe_url}: {_last_line(str(exc))}") from exc

    def close(self) -> None:
        self._pool.close()
