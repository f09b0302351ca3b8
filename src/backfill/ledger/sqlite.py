"""The embedded ledger: one SQLite file in WAL mode, zero set-up.

Every write is one short ``BEGIN IMMEDIATE`` transaction, so two processes pointed at
the same file (two ``backfill run`` on one laptop) serialise their claims and never
lease the same partition twice.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import re
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any

from backfill._sqlite import is_full, retry_locked
from backfill.errors import LedgerError, disk_full_message
from backfill.ledger import (
    MAX_LOST_LEASES,
    Claim,
    Completer,
    CoverageRow,
    Dependency,
    FailureGroup,
    Fence,
    LedgerEntry,
    NoState,
    Outcome,
    ResetCounts,
    RunRecord,
    StageCounts,
    Status,
    WindowCount,
    WorkerRecord,
    _deps,
    dims_from_json,
    dims_json,
    limits,
)
from backfill.partitions import Order, Partition, Selection

__all__ = ["SCHEMA_VERSION", "SQLiteLedger"]

SCHEMA_VERSION = 8
_PLAN_CHUNK = 20_000


def _load_queries() -> dict[str, str]:
    text = resources.files("backfill.ledger").joinpath("sql/sqlite_queries.sql").read_text()
    queries: dict[str, str] = {}
    for block in re.split(r"^-- name: ", text, flags=re.M)[1:]:
        name, _, body = block.partition("\n")
        queries[name.strip()] = body.strip()
    return queries


_SCHEMA = resources.files("backfill.ledger").joinpath("sql/sqlite_schema.sql").read_text()
_Q = _load_queries()
_MIGRATIONS = {
    version: resources.files("backfill.ledger")
    .joinpath(f"sql/sqlite_migrations/{version:04d}.sql")
    .read_text()
    for version in range(2, SCHEMA_VERSION + 1)
}


def _statements(script: str) -> list[str]:
    """Split a schema script into statements (comments may hold semicolons)."""
    code = "\n".join(line.split("--", 1)[0] for line in script.splitlines())
    return [s.strip() for s in code.split(";") if s.strip()]


def _selection_sql(selection: Selection | None) -> tuple[str, dict[str, Any]]:
    """A SQL fragment (``AND ...``) and its parameters for a selection."""
    if selection is None or selection.is_everything:
        return "", {}
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if selection.start is not None:
        clauses.append("window_end >= :sel_start")
        params["sel_start"] = selection.start.isoformat()
    if selection.end is not None:
        clauses.append("window_start <= :sel_end")
        params["sel_end"] = selection.end.isoformat()
    if selection.keys:
        clauses.append("key IN (SELECT value FROM json_each(:sel_keys))")
        params["sel_keys"] = json.dumps(sorted(selection.keys))
    for i, (dim, allowed) in enumerate(sorted(selection.dims.items())):
        clauses.append(
            f"json_extract(dims, :sel_dim_path_{i}) IN (SELECT value FROM json_each(:sel_dim_{i}))"
        )
        params[f"sel_dim_path_{i}"] = f'$."{dim}"'
        params[f"sel_dim_{i}"] = json.dumps(sorted(allowed))
    return "".join(f" AND {c}" for c in clauses), params


class SQLiteLedger:
    """The :class:`~backfill.ledger.Ledger` on a SQLite file (or ``:memory:``).

    ``read_only``: open an existing ledger file for reading only: nothing is created,
    migrated or written (see :meth:`_connect_read_only`).
    """

    def __init__(
        self, path: str | Path, *, url: str | None = None, read_only: bool = False
    ) -> None:
        self.path = path
        self.url = url or f"sqlite:///{path}"
        self._lock = threading.RLock()
        self._stage_ids: dict[tuple[str, str], int] = {}
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
        row = conn.execute("SELECT value FROM backfill_meta WHERE key='schema_version'").fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"state {self.url} has schema version {version}, newer than this "
                f"backfill understands ({SCHEMA_VERSION}); upgrade backfill"
            )
        if version < SCHEMA_VERSION:
            raise LedgerError(
                f"state {self.url} has schema version {version}, older than this backfill's "
                f"({SCHEMA_VERSION}); run `backfill run` once to upgrade it"
            )

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
        if row is not None:
            version_row = conn.execute(
                "SELECT value FROM backfill_meta WHERE key='schema_version'"
            ).fetchone()
            version = int(version_row[0]) if version_row else 0
            if version > SCHEMA_VERSION:
                raise LedgerError(
                    f"state {self.url} has schema version {version}, newer than this "
                    f"backfill understands ({SCHEMA_VERSION}); upgrade backfill"
                )
            if version == SCHEMA_VERSION:
                return
            scripts = [_MIGRATIONS[v] for v in range(version + 1, SCHEMA_VERSION + 1)]
        else:
            scripts = [_SCHEMA]
        conn.execute("BEGIN IMMEDIATE")
        try:
            for script in scripts:
                for statement in _statements(script):
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

    @contextlib.contextmanager
    def _tx(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction; driver errors become :class:`LedgerError` here and only here."""
        with self._lock:
            conn = self._conn
            try:
                if write:
                    conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    if write:
                        self._stage_ids.clear()
                        # SQLite may have rolled back already (e.g. on SQLITE_FULL).
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                    raise
                if write:
                    conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if write:
                    # Stage ids created in the lost transaction do not exist.
                    self._stage_ids.clear()
                    if conn.in_transaction:
                        # A failed COMMIT leaves it open; the next transaction must start.
                        with contextlib.suppress(sqlite3.Error):
                            conn.execute("ROLLBACK")
                if is_full(exc):
                    raise LedgerError(disk_full_message(self.path)) from exc
                raise LedgerError(f"state {self.url}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _stage_id(self, conn: sqlite3.Connection, job: str, stage: str, create: bool) -> int | None:
        cached = self._stage_ids.get((job, stage))
        if cached is not None:
            return cached
        params = {"job": job, "stage": stage}
        row = conn.execute(_Q["stage_id"], params).fetchone()
        if row is None and create:
            conn.execute(_Q["insert_stage"], params)
            row = conn.execute(_Q["stage_id"], params).fetchone()
        if row is None:
            return None
        self._stage_ids[(job, stage)] = int(row[0])
        return int(row[0])

    # -- partitions ----------------------------------------------------------------

    def plan(
        self,
        job: str,
        stage: str,
        partitions: Iterable[Partition],
        *,
        fingerprint: str | None = None,
    ) -> int:
        if fingerprint is not None:
            with self._tx() as conn:
                stage_id = self._stage_id(conn, job, stage, create=True)
                row = conn.execute(_Q["planned"], {"stage_id": stage_id}).fetchone()
            if row is not None and row[0] == fingerprint:
                return 0
        inserted = 0
        iterator = iter(partitions)
        # Partitions share a handful of dims and, per window, dates: encode each once,
        # not once per row (json.dumps per row was a quarter of plan's time).
        dims_text: dict[tuple[tuple[str, str], ...], str | None] = {}
        iso: dict[date, str] = {}
        while True:
            chunk = list(itertools.islice(iterator, _PLAN_CHUNK))
            if not chunk:
                break
            rows = []
            for p in chunk:
                dims = dims_text.get(p.dims)
                if dims is None and p.dims:
                    dims = dims_text[p.dims] = dims_json(p.dims)
                start = iso.get(p.start) or iso.setdefault(p.start, p.start.isoformat())
                end = iso.get(p.end) or iso.setdefault(p.end, p.end.isoformat())
                rows.append((p.key, start, end, dims))
            payload = json.dumps(rows, separators=(",", ":"))
            with self._tx() as conn:
                stage_id = self._stage_id(conn, job, stage, create=True)
                before = conn.total_changes
                conn.execute(_Q["plan"], (stage_id, payload))
                inserted += conn.total_changes - before
        if fingerprint is not None:
            with self._tx() as conn:
                stage_id = self._stage_id(conn, job, stage, create=True)
                conn.execute(_Q["set_planned"], {"stage_id": stage_id, "planned": fingerprint})
        return inserted

    def claim(
        self,
        job: str,
        stage: str,
        owner: str,
        *,
        limit: int,
        lease_seconds: float,
        now: float,
        run_id: str,
        selection: Selection | None = None,
        order: Order = Order.OLDEST,
        needs: Sequence[Dependency] = (),
        suspects: bool = False,
        scan: int | None = None,
    ) -> list[Claim]:
        where, params = _selection_sql(selection)
        direction = "ASC" if order is Order.OLDEST else "DESC"
        lost = "= 1" if suspects else "= 0"
        with self._tx() as conn:
            stage_id = self._stage_id(conn, job, stage, create=False)
            if stage_id is None:
                return []
            ready, ready_params = _deps.ready_filter(
                needs, self._dep_ids(conn, job, needs), "sqlite"
            )
            params.update(ready_params)
            params.update(
                stage_id=stage_id,
                owner=owner,
                expires=now + lease_seconds,
                run_id=run_id,
                now=now,
                limit=limit,
                max_lost=MAX_LOST_LEASES,
                scan=scan,
            )

            # Only a readiness check can make the scan longer than the claim itself.
            front = scan is not None and bool(ready)

            def pending(lost: str) -> str:
                query = _Q["claim_pending_front" if front else "claim_pending"]
                return query.format(where=where, direction=direction, ready=ready, lost=lost)

            rows = conn.execute(pending(lost), params).fetchall()
            if len(rows) < limit:
                # Expired leases come back as suspects (see release_expired).
                conn.execute(_Q["fail_lost"].format(where=where), params)
                released = conn.execute(_Q["release_expired"].format(where=where), params)
                if released.rowcount:
                    params["limit"] = limit - len(rows)
                    rows += conn.execute(pending(lost), params).fetchall()
            if suspects and not rows:
                # Lost twice or more: one at a time (see Ledger.claim).
                rows = conn.execute(pending("> 1"), dict(params, limit=1)).fetchall()
        # Rows of one batch share a few dims values and dates: decode each once.
        dates: dict[str, date] = {}
        dims: dict[str | None, tuple[tuple[str, str], ...]] = {}
        claims = []
        for row in rows:
            start = dates.get(row[2]) or dates.setdefault(row[2], date.fromisoformat(row[2]))
            end = dates.get(row[3]) or dates.setdefault(row[3], date.fromisoformat(row[3]))
            row_dims = dims.get(row[4])
            if row_dims is None:
                row_dims = dims[row[4]] = dims_from_json(row[4])
            claims.append(
                Claim(row[0], stage, row[1], start, end, row_dims, row[5], row[6], row[7])
            )
        # RETURNING gives no order guarantee; the caller asked for window order.
        claims.sort(key=lambda c: (c.start, c.id), reverse=order is Order.NEWEST)
        return claims

    def _dep_ids(
        self, conn: sqlite3.Connection, job: str, needs: Sequence[Dependency]
    ) -> list[int | None]:
        return [self._stage_id(conn, job, dep.stage, create=False) for dep in needs]

    def _inputs_query(
        self,
        conn: sqlite3.Connection,
        name: str,
        job: str,
        stage: str,
        needs: Sequence[Dependency],
        selection: Selection | None,
        condition: str,
    ) -> tuple[str, dict[str, Any]] | None:
        stage_id = self._stage_id(conn, job, stage, create=False)
        if stage_id is None or not needs:
            return None
        where, params = _selection_sql(selection)
        sql, extra = _deps.inputs_query(
            _Q[name], where, needs, self._dep_ids(conn, job, needs), "sqlite", condition
        )
        return sql, {**params, **extra, "stage_id": stage_id}

    def mark_stale(
        self,
        job: str,
        stage: str,
        needs: Sequence[Dependency],
        selection: Selection | None = None,
    ) -> int:
        with self._tx() as conn:
            query = self._inputs_query(
                conn, "mark_stale", job, stage, needs, selection, _deps.NEWER
            )
            if query is None:
                return 0
            sql, params = query
            params["message"] = _deps.STALE_MESSAGE
            return conn.execute(sql, params).rowcount

    def stale_keys(
        self,
        job: str,
        stage: str,
        needs: Sequence[Dependency],
        selection: Selection | None = None,
    ) -> set[str]:
        with self._tx(write=False) as conn:
            query = self._inputs_query(
                conn, "stale_keys", job, stage, needs, selection, _deps.NEWER
            )
            if query is None:
                return set()
            return {row[0] for row in conn.execute(*query)}

    def blocked_keys(
        self,
        job: str,
        stage: str,
        needs: Sequence[Dependency],
        selection: Selection | None = None,
    ) -> dict[str, str]:
        with self._tx(write=False) as conn:
            query = self._inputs_query(
                conn, "blocked_keys", job, stage, needs, selection, _deps.FAILED
            )
            if query is None:
                return {}
            return {row[0]: row[1] for row in conn.execute(*query)}

    def coverage_rows(
        self, job: str, stage: str, selection: Selection | None = None
    ) -> Iterator[CoverageRow]:
        where, params = _selection_sql(selection)
        with self._tx(write=False) as conn:
            stage_id = self._stage_id(conn, job, stage, create=False)
            if stage_id is None:
                return iter(())
            rows = conn.execute(
                _Q["coverage_rows"].format(where=where), dict(params, stage_id=stage_id)
            ).fetchall()
        dates: dict[str, date] = {}
        dims: dict[str | None, tuple[tuple[str, str], ...]] = {}

        def day(text: str) -> date:
            value = dates.get(text)
            if value is None:
                value = dates[text] = date.fromisoformat(text)
            return value

        def convert(row: tuple[Any, ...]) -> CoverageRow:
            row_dims = dims.get(row[3])
            if row_dims is None:
                row_dims = dims[row[3]] = dims_from_json(row[3])
            return CoverageRow(row[0], day(row[1]), day(row[2]), row_dims, Status(row[4]), *row[5:])

        return (convert(r) for r in rows)

    def window_counts(self, job: str, stage: str) -> list[WindowCount]:
        with self._tx(write=False) as conn:
            stage_id = self._stage_id(conn, job, stage, create=False)
            if stage_id is None:
                return []
            rows = conn.execute(_Q["window_counts"], {"stage_id": stage_id}).fetchall()
        return [
            WindowCount(
                date.fromisoformat(start), date.fromisoformat(end), Status(status), n, bool(stale)
            )
            for start, end, status, stale, n in rows
        ]

    def complete(self, owner: str, outcomes: Sequence[Outcome], *, now: float) -> int:
        if not outcomes:
            return 0
        rows = _outcome_rows(owner, outcomes, now)
        # Releases first, then finishes: the changes of the second count what this
        # worker finished.
        releases = [r for r in rows if r[0] == Status.PENDING.value]
        finishes = [r for r in rows if r[0] != Status.PENDING.value]
        with self._tx() as conn:
            before = conn.total_changes
            conn.executemany(_Q["complete"], releases)
            released = conn.total_changes - before
            conn.executemany(_Q["complete"], finishes)
            finished = conn.total_changes - before - released
            if finished:
                conn.execute(_Q["count_finished"], {"n": finished, "owner": owner})
            return released + finished

    def completer(self, database: str) -> Completer | None:
        """Record outcomes inside a sink's transaction when the sink is this same file.

        Then a partition's rows and its done-mark commit together: exactly once.
        """
        if self.path == ":memory:" or database != f"sqlite:{Path(self.path).resolve()}":
            return None
        return _complete_on

    def fence(self, database: str) -> Fence | None:
        """Prove leases inside a sink's transaction when the sink is this same file."""
        return _begin_on if self.completer(database) is not None else None

    def begin(self, owner: str, leases: Sequence[tuple[int, int]]) -> set[int]:
        if not leases:
            return set()
        with self._tx() as conn:
            return _begin_on(conn, owner, leases)

    def save_checkpoint(self, owner: str, claim_id: int, checkpoint: str | None) -> bool:
        with self._tx() as conn:
            cur = conn.execute(
                _Q["save_checkpoint"], {"id": claim_id, "owner": owner, "checkpoint": checkpoint}
            )
            return cur.rowcount == 1

    def request_stats(self, job: str, stage: str) -> tuple[int, float | None]:
        with self._tx(write=False) as conn:
            stage_id = self._stage_id(conn, job, stage, create=False)
            if stage_id is None:
                return 0, None
            n, avg = conn.execute(_Q["request_stats"], {"stage_id": stage_id}).fetchone()
        return int(n), (float(avg) if avg is not None else None)

    def renew(self, owner: str, *, lease_seconds: float, now: float) -> int:
        with self._tx() as conn:
            cur = conn.execute(_Q["renew"], {"owner": owner, "expires": now + lease_seconds})
            return cur.rowcount

    def release_owner(self, owner: str, *, lost: bool = False) -> int:
        params = {"owner": owner, "max_lost": MAX_LOST_LEASES}
        with self._tx() as conn:
            if not lost:
                return conn.execute(_Q["release_owner"], params).rowcount
            failed = conn.execute(_Q["fail_lost_of_owner"], params).rowcount
            return failed + conn.execute(_Q["release_lost"], params).rowcount

    # -- reading -------------------------------------------------------------------

    def counts(
        self,
        job: str,
        stages: Sequence[str],
        selection: Selection | None = None,
        *,
        recent: bool = True,
    ) -> dict[str, StageCounts]:
        where, params = _selection_sql(selection)
        result: dict[str, StageCounts] = {}
        with self._tx(write=False) as conn:
            for stage in stages:
                stage_id = self._stage_id(conn, job, stage, create=False)
                if stage_id is None:
                    result[stage] = StageCounts(stage)
                    continue
                q = dict(params, stage_id=stage_id)
                by_status: dict[str, int] = {}
                records = 0
                for status, n, recs in conn.execute(_Q["counts"].format(where=where), q):
                    by_status[status] = n
                    records += recs
                recent_n, span, latest = 0, 0.0, None
                last = conn.execute(_Q["last_run_of_stage"], q).fetchone() if recent else None
                if last is not None and last[0] is not None:
                    q["run_id"] = last[0]
                    n, first, final = conn.execute(_Q["recent"].format(where=where), q).fetchone()
                    if n and first is not None and final is not None:
                        recent_n, span = int(n), float(final) - float(first)
                        latest = float(final)
                result[stage] = StageCounts(
                    stage,
                    pending=by_status.get("pending", 0),
                    running=by_status.get("running", 0),
                    done=by_status.get("done", 0),
                    empty=by_status.get("empty", 0),
                    failed=by_status.get("failed", 0),
                    records=records,
                    recent_finished=recent_n,
                    recent_span=span,
                    last_finished_at=latest,
                )
        return result

    def unfinished(
        self,
        job: str,
        stage: str,
        selection: Selection | None = None,
        *,
        running_only: bool = False,
        needs: Sequence[Dependency] = (),
    ) -> bool:
        where, params = _selection_sql(selection)
        with self._tx(write=False) as conn:
            stage_id = self._stage_id(conn, job, stage, create=False)
            if stage_id is None:
                return False
            ready, ready_params = _deps.ready_filter(
                needs, self._dep_ids(conn, job, needs), "sqlite"
            )
            q = dict(params, stage_id=stage_id, **ready_params)
            names = ("any_running",) if running_only else ("any_pending", "any_running")
            return any(
                conn.execute(_Q[name].format(where=where, ready=ready), q).fetchone() is not None
                for name in names
            )

    def failure_groups(
        self, job: str, stages: Sequence[str], selection: Selection | None = None
    ) -> list[FailureGroup]:
        where, params = _selection_sql(selection)
        groups: list[FailureGroup] = []
        with self._tx(write=False) as conn:
            for stage in stages:
                stage_id = self._stage_id(conn, job, stage, create=False)
                if stage_id is None:
                    continue
                rows = conn.execute(
                    _Q["failure_groups"].format(where=where), dict(params, stage_id=stage_id)
                )
                groups.extend(
                    FailureGroup(stage, category, n, key, message)
                    for category, n, _, key, message in rows
                )
        return groups

    def entries(
        self,
        job: str,
        stage: str,
        *,
        status: Status | None = None,
        selection: Selection | None = None,
        limit: int = 100,
    ) -> list[LedgerEntry]:
        where, params = _selection_sql(selection)
        if status is not None:
            where += " AND status = :status"
            params["status"] = status.value
        with self._tx(write=False) as conn:
            stage_id = self._stage_id(conn, job, stage, create=False)
            if stage_id is None:
                return []
            rows = conn.execute(
                _Q["entries"].format(where=where), dict(params, stage_id=stage_id, limit=limit)
            ).fetchall()
        return [
            LedgerEntry(
                stage=stage,
                key=r[0],
                status=Status(r[1]),
                attempts=r[2],
                records=r[3],
                duration=r[4],
                error_category=r[5],
                error_message=r[6],
                run_id=r[7],
                finished_at=r[8],
            )
            for r in rows
        ]

    # -- maintenance ---------------------------------------------------------------

    def _per_stage(
        self,
        query: str,
        job: str,
        stages: Sequence[str],
        selection: Selection | None,
        **extra: Any,
    ) -> int:
        where, params = _selection_sql(selection)
        params.update(extra)
        changed = 0
        with self._tx() as conn:
            for stage in stages:
                stage_id = self._stage_id(conn, job, stage, create=False)
                if stage_id is None:
                    continue
                cur = conn.execute(_Q[query].format(where=where), dict(params, stage_id=stage_id))
                changed += cur.rowcount
        return changed

    def requeue(
        self,
        job: str,
        stages: Sequence[str],
        statuses: Sequence[Status] = (Status.FAILED,),
        selection: Selection | None = None,
    ) -> int:
        if any(s not in (Status.FAILED, Status.EMPTY, Status.DONE) for s in statuses):
            raise ValueError("only finished partitions can be requeued")
        return self._per_stage(
            "requeue", job, stages, selection, statuses=json.dumps([s.value for s in statuses])
        )

    def reset(
        self,
        job: str,
        stages: Sequence[str],
        selection: Selection | None = None,
        *,
        downstream: Mapping[str, Sequence[Dependency]] | None = None,
    ) -> ResetCounts:
        where, params = _selection_sql(selection)
        removed = stale = 0
        with self._tx() as conn:
            ids = [self._stage_id(conn, job, stage, create=False) for stage in stages]
            known = [stage_id for stage_id in ids if stage_id is not None]
            if downstream:
                for stage_id in known:
                    conn.execute(_Q["redo"].format(where=where), dict(params, stage_id=stage_id))
                for name, needs in downstream.items():
                    query = self._inputs_query(
                        conn, "mark_stale", job, name, needs, None, _deps.NEWER
                    )
                    if query is not None:
                        sql, args = query
                        stale += conn.execute(sql, dict(args, message=_deps.STALE_MESSAGE)).rowcount
            for stage_id in known:
                cur = conn.execute(_Q["reset"].format(where=where), dict(params, stage_id=stage_id))
                removed += cur.rowcount
                # The next plan must put the forgotten partitions back.
                conn.execute(_Q["forget_plan"], {"stage_id": stage_id})
        return ResetCounts(removed, stale)

    # -- runs and workers ----------------------------------------------------------

    def start_run(self, run: RunRecord) -> None:
        with self._tx() as conn:
            conn.execute(
                _Q["start_run"],
                {
                    "id": run.id,
                    "job": run.job,
                    "command": run.command,
                    "host": run.host,
                    "pid": run.pid,
                    "options": json.dumps(dict(run.options), default=str),
                    "started_at": run.started_at,
                    "status": run.status,
                },
            )

    def finish_run(
        self,
        run_id: str,
        *,
        now: float,
        status: str,
        exit_code: int,
        counts: Mapping[str, Any],
    ) -> None:
        with self._tx() as conn:
            conn.execute(
                _Q["finish_run"],
                {
                    "id": run_id,
                    "now": now,
                    "status": status,
                    "exit_code": exit_code,
                    "counts": json.dumps(dict(counts), default=str),
                },
            )

    def runs(self, job: str, limit: int = 20) -> list[RunRecord]:
        with self._tx(write=False) as conn:
            rows = conn.execute(_Q["runs"], {"job": job, "limit": limit}).fetchall()
        return [
            RunRecord(
                id=r[0],
                job=r[1],
                started_at=r[2],
                host=r[3],
                pid=r[4],
                command=r[5],
                options=json.loads(r[6]),
                finished_at=r[7],
                status=r[8],
                exit_code=r[9],
                counts=json.loads(r[10]),
            )
            for r in rows
        ]

    def register_worker(self, worker: WorkerRecord) -> None:
        with self._tx() as conn:
            conn.execute(
                _Q["register_worker"],
                {
                    "id": worker.id,
                    "job": worker.job,
                    "host": worker.host,
                    "pid": worker.pid,
                    "started_at": worker.started_at,
                    "heartbeat_at": worker.heartbeat_at,
                },
            )

    def heartbeat(self, worker_id: str, *, now: float, resources: str | None = None) -> None:
        with self._tx() as conn:
            conn.execute(_Q["heartbeat"], {"id": worker_id, "now": now, "resources": resources})

    def stop_worker(self, worker_id: str, *, now: float) -> None:
        with self._tx() as conn:
            conn.execute(_Q["stop_worker"], {"id": worker_id, "now": now})

    def workers(self, job: str, *, active_only: bool = True) -> list[WorkerRecord]:
        where = " AND stopped_at IS NULL" if active_only else ""
        with self._tx(write=False) as conn:
            rows = conn.execute(_Q["workers"].format(where=where), {"job": job}).fetchall()
        return [WorkerRecord(*r) for r in rows]

    # -- resource schedules --------------------------------------------------------

    # Every process on this file runs on this host: one clock. Rates are shared through
    # the file only for resources declared shared=True; quotas always (they must hold
    # across restarts).
    fleet = False

    def take_starts(
        self,
        job: str,
        resource: str,
        *,
        count: int,
        interval: float,
        tolerance: float,
        quotas: Sequence[tuple[int, float]] = (),
        max_pause: float = math.inf,
    ) -> tuple[list[float], float, float]:
        """Book ``count`` starts of a resource (see :func:`backfill.ledger.limits.take_starts`);
        ``job`` is the schedule's scope."""
        with self._tx() as conn:
            return limits.take_starts(
                _query(conn),
                job,
                resource,
                count=count,
                interval=interval,
                tolerance=tolerance,
                quotas=quotas,
                max_pause=max_pause,
            )

    def pause_resource(self, job: str, resource: str, seconds: float) -> None:
        """Pause a resource's schedule for every run sharing it (a Retry-After, a quota)."""
        with self._tx() as conn:
            conn.execute(_Q["pause_resource"], {"job": job, "name": resource, "seconds": seconds})

    def quota_use(
        self, job: str, resource: str, quotas: Sequence[tuple[int, float]]
    ) -> dict[str, limits.QuotaUse]:
        """What each quota's current window has spent (see :func:`limits.quota_use`)."""
        with self._tx(write=False) as conn:
            return limits.quota_use(_query(conn), job, resource, quotas)

    def resume_resource(self, job: str, resource: str) -> float | None:
        """End a resource's stored pause now (see :func:`backfill.ledger.limits.resume`)."""
        with self._tx() as conn:
            return limits.resume(_query(conn), job, resource)


def _query(conn: sqlite3.Connection) -> limits.Query:
    """Named queries of this dialect on ``conn``, as :mod:`backfill.ledger.limits` runs them
    (lists travel as JSON, read back with json_each)."""

    def query(name: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        bound = {k: json.dumps(v) if isinstance(v, list) else v for k, v in params.items()}
        return conn.execute(_Q[name], bound).fetchall()

    return query


def _outcome_rows(owner: str, outcomes: Sequence[Outcome], now: float) -> list[tuple[Any, ...]]:
    # Positional parameters: binding nine named ones from a dict per row cost as much
    # as the UPDATE itself.
    return [
        (
            o.status.value,
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


def _complete_on(
    raw: sqlite3.Connection, owner: str, outcomes: Sequence[Outcome], now: float
) -> set[int]:
    """Apply outcomes on a connection to the ledger's file, in its open transaction."""
    applied: set[int] = set()
    for outcome, row in zip(outcomes, _outcome_rows(owner, outcomes, now), strict=True):
        if raw.execute(_Q["complete"], row).rowcount:
            applied.add(outcome.id)
    finished = sum(1 for o in outcomes if o.id in applied and o.status is not Status.PENDING)
    if finished:
        raw.execute(_Q["count_finished"], {"n": finished, "owner": owner})
    return applied


def _begin_on(raw: sqlite3.Connection, owner: str, leases: Sequence[tuple[int, int]]) -> set[int]:
    """Mark leases begun on a connection to the ledger's file; return those held."""
    payload = json.dumps([list(lease) for lease in leases], separators=(",", ":"))
    rows = raw.execute(_Q["begin"], {"owner": owner, "leases": payload}).fetchall()
    return {int(row[0]) for row in rows}
