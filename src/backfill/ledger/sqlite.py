"""The embedded ledger: one SQLite file in WAL mode, zero set-up.

Every write is one short ``BEGIN IMMEDIATE`` transaction, so two processes pointed at
the same file (two ``backfill run`` on one laptop) serialise their claims and never
lease the same partition twice.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Callable, Sequence
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

from backfill._sqlite import is_full, retry_locked, sqlite_identity
from backfill.errors import LedgerError, disk_full_message
from backfill.ledger.algorithm import SQLLedger
from backfill.ledger.dialect import Dialect, check_version, statements
from backfill.ledger.models import (
    Dependency,
    NoState,
    Outcome,
    Status,
    dims_from_json,
    dims_json,
    params_json,
)
from backfill.partitions import Partition

__all__ = ["SCHEMA_VERSION", "SQLiteDialect", "SQLiteLedger"]

SCHEMA_VERSION = 10
T = TypeVar("T")


class SQLiteDialect(Dialect):
    """SQLite's spelling: ``:name`` placeholders, ISO date text and ``date()``
    modifiers, JSON text read with ``json_extract``, lists as JSON read with
    ``json_each``."""

    name = "sqlite"
    schema_version = SCHEMA_VERSION

    def param(self, name: str) -> str:
        return f":{name}"

    def days_before(self, expr: str, days: int) -> str:
        return f"date({expr}, '-{days} days')" if days else expr

    def window_low(self, dep: Dependency) -> str:
        n = dep.lookback
        if n == 0:
            return "p.window_start"
        if dep.grain == "week":
            return f"date(p.window_start, '-{7 * n} days')"
        if dep.grain == "month":
            return f"date(p.window_start, 'start of month', '-{n} months')"
        if dep.grain == "year":
            return f"date(p.window_start, 'start of year', '-{n} years')"
        return f"date(p.window_start, '-{n} days')"

    def dim(self, alias: str, name: str) -> str:
        # Dimension names are validated identifiers (letters, digits, _ . : -), never quotes.
        return f"json_extract({alias}.dims, '$.\"{name}\"')"

    def dim_by_param(self, param: str) -> str:
        return f"json_extract(dims, :{param})"

    def in_list(self, expr: str, param: str) -> str:
        return f"{expr} IN (SELECT value FROM json_each(:{param}))"

    def list_value(self, values: Sequence[Any]) -> Any:
        return json.dumps(list(values))

    def date_value(self, day: date) -> Any:
        return day.isoformat()

    def dim_value(self, name: str) -> Any:
        return f'$."{name}"'

    def date_of(self, raw: Any) -> date:
        return date.fromisoformat(raw)

    def dims_of(self, raw: Any) -> tuple[tuple[str, str], ...]:
        return dims_from_json(raw)

    def plan(self, conn: Any, stage_id: int, chunk: Sequence[Partition], memo: Any) -> int:
        # json.dumps per row was a quarter of plan's time: dims and dates come from memo.
        rows: list[tuple[Any, ...]] = []
        # A window's partitions come one after another with the same dates: encoded
        # again only when the window changes.
        window: tuple[Any, Any] | None = None
        start = end = ""
        for p in chunk:
            dims = memo.get(p.dims)
            if dims is None and p.dims:
                dims = memo[p.dims] = dims_json(p.dims)
            if window is None or p.start is not window[0] or p.end is not window[1]:
                window = (p.start, p.end)
                start = memo.get(p.start) or memo.setdefault(p.start, p.start.isoformat())
                end = memo.get(p.end) or memo.setdefault(p.end, p.end.isoformat())
            if p.params:
                rows.append((p.key, start, end, dims, params_json(p.params)))
            else:
                rows.append((p.key, start, end, dims))
        payload = json.dumps(rows, separators=(",", ":"))
        before = conn.total_changes
        conn.execute(self.queries["plan"], (stage_id, payload))
        return int(conn.total_changes - before)

    def complete(self, conn: Any, owner: str, outcomes: Sequence[Outcome], now: float) -> int:
        rows = _outcome_rows(owner, outcomes, now)
        # Releases first, then finishes: the changes of the second count what this
        # worker finished. Most batches hold no release.
        releases = [r for r in rows if r[0] == _PENDING]
        finishes = [r for r in rows if r[0] != _PENDING] if releases else rows
        before = conn.total_changes
        if releases:
            conn.executemany(self.queries["complete"], releases)
        released = conn.total_changes - before
        conn.executemany(self.queries["complete"], finishes)
        finished = conn.total_changes - before - released
        if finished:
            conn.execute(self.queries["count_finished"], {"n": finished, "owner": owner})
        return int(released + finished)

    def complete_on(
        self, conn: Any, owner: str, outcomes: Sequence[Outcome], now: float
    ) -> set[int]:
        applied: set[int] = set()
        for outcome, row in zip(outcomes, _outcome_rows(owner, outcomes, now), strict=True):
            if conn.execute(self.queries["complete"], row).rowcount:
                applied.add(outcome.id)
        finished = sum(1 for o in outcomes if o.id in applied and o.status is not Status.PENDING)
        if finished:
            conn.execute(self.queries["count_finished"], {"n": finished, "owner": owner})
        return applied

    def begin_on(self, conn: Any, owner: str, leases: Sequence[tuple[int, int]]) -> set[int]:
        # (id, claims) pairs are JSON arrays as they are: no list made per lease.
        pairs = leases if isinstance(leases, list | tuple) else list(leases)
        payload = json.dumps(pairs, separators=(",", ":"))
        rows = conn.execute(self.queries["begin"], {"owner": owner, "leases": payload})
        return {int(row[0]) for row in rows}


def _outcome_rows(owner: str, outcomes: Sequence[Outcome], now: float) -> list[tuple[Any, ...]]:
    # Positional parameters: binding nine named ones from a dict per row cost as much
    # as the UPDATE itself. str() of a status is its value, without the enum's property.
    return [
        (
            str(o.status),
            o.attempts,
            o.records,
            o.duration,
            o.error_category,
            o.error_message,
            now,
            o.id,
            owner,
            o.requests,
            o.checks,
        )
        for o in outcomes
    ]


_PENDING = str(Status.PENDING)


class SQLiteLedger(SQLLedger):
    """The :class:`~backfill.ledger.Ledger` on a SQLite file (or ``:memory:``).

    ``read_only``: open an existing ledger file for reading only: nothing is created,
    migrated or written (see :meth:`_connect_read_only`).
    """

    dialect = SQLiteDialect()

    # Every process on this file runs on this host: one clock. Rates are shared through
    # the file only for resources declared shared=True; quotas always (they must hold
    # across restarts).
    fleet = False

    def __init__(
        self, path: str | Path, *, url: str | None = None, read_only: bool = False
    ) -> None:
        self.path = path
        self.url = url or f"sqlite:///{path}"
        super().__init__()
        self.identity = None if path == ":memory:" else sqlite_identity(path)
        self._lock = threading.RLock()
        self._conn = self._connect_read_only() if read_only else self._connect()

    # -- connection ----------------------------------------------------------------

    def _connect_read_only(self) -> sqlite3.Connection:
        """A read-only connection to an existing ledger file.

        First a probe says whether the file is a ledger at all. When no ``-wal`` file
        exists nobody has the database open, and the probe reads it as immutable, so
        that not even SQLite's ``-wal``/``-shm`` files appear beside a file that is not
        ours. Reading a ledger itself takes an ordinary read-only connection: a run may
        start meanwhile, and only that connection sees its writes safely (beside a
        ledger in WAL mode SQLite then keeps its own ``-wal``/``-shm`` files).
        """
        path = Path(self.path)
        if not path.is_file():
            raise NoState(f"no state at {path}; nothing has run yet")
        probe_mode = "ro" if Path(f"{path}-wal").exists() else "ro&immutable=1"
        try:
            with contextlib.closing(self._uri_connect(path, probe_mode)) as probe:
                self._check_schema(probe, path)
            return self._uri_connect(path, "ro")
        except sqlite3.DatabaseError as exc:
            if "not a database" in str(exc):
                raise LedgerError(
                    f"{path} is not a backfill state file (it is not a SQLite database); "
                    "pass the state of a job with --state"
                ) from exc
            raise LedgerError(f"cannot read state {self.url}: {exc}; pass another --state") from exc

    @staticmethod
    def _uri_connect(path: Path, mode: str) -> sqlite3.Connection:
        return sqlite3.connect(
            f"{path.resolve().as_uri()}?mode={mode}",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
            timeout=30.0,
        )

    def _check_schema(self, conn: sqlite3.Connection, path: Path) -> None:
        """Refuse, without changing it, a file that is not a ledger of this version."""
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        if not tables:
            raise NoState(f"no state at {path}; nothing has run yet")
        if "backfill_meta" not in tables:
            raise LedgerError(
                f"{path} is not a backfill state file (it has no backfill tables); "
                "pass the state of a job with --state"
            )
        check_version(self._version(conn), SCHEMA_VERSION, self.url, reader=True)

    @staticmethod
    def _version(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT value FROM backfill_meta WHERE key='schema_version'").fetchone()
        return int(row[0]) if row else 0

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            parent = Path(self.path).resolve().parent
            if not parent.is_dir():
                raise LedgerError(
                    f"cannot open state {self.url}: directory {parent} does not exist; "
                    "create it or pass another --state"
                )
        try:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open state {self.url}: {exc}; pass another --state") from exc
        try:
            retry_locked(lambda: conn.execute("PRAGMA journal_mode=WAL"))
            # WAL + NORMAL survives a killed process; only an OS crash may lose the
            # last commits, and those partitions are simply redone.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            retry_locked(lambda: self._migrate(conn))
        except sqlite3.DatabaseError as exc:
            conn.close()
            if is_full(exc):
                raise LedgerError(disk_full_message(self.path)) from exc
            raise LedgerError(
                f"state {self.url} is not a usable backfill state database ({exc}); "
                "pass another --state"
            ) from exc
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        row = conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name='backfill_meta'"
        ).fetchone()
        found = None
        if row is not None:
            found = self._version(conn)
            if check_version(found, SCHEMA_VERSION, self.url, reader=False):
                return
        conn.execute("BEGIN IMMEDIATE")
        try:
            for script in self.dialect.upgrade_scripts(found):
                for statement in statements(script):
                    conn.execute(statement)
            conn.execute(
                "INSERT OR REPLACE INTO backfill_meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
            conn.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (e.g. on SQLITE_FULL).
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _transact(self, body: Callable[[Any], T], write: bool) -> T:
        """One transaction; driver errors become :class:`LedgerError` here and only here."""
        with self._lock:
            conn = self._conn
            try:
                if write:
                    conn.execute("BEGIN IMMEDIATE")
                try:
                    result = body(conn)
                except BaseException:
                    # SQLite may have rolled back already (e.g. on SQLITE_FULL).
                    if write and conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                if write:
                    conn.execute("COMMIT")
                return result
            except sqlite3.Error as exc:
                if write and conn.in_transaction:
                    # A failed COMMIT leaves it open; the next transaction must start.
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                if is_full(exc):
                    raise LedgerError(disk_full_message(self.path)) from exc
                raise LedgerError(f"state {self.url}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()
