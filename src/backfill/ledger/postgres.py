"""The shared ledger: PostgreSQL, for a fleet of workers on many machines.

Every method is one short transaction on a pooled connection. Claims take batches with
``FOR UPDATE SKIP LOCKED``, so any number of workers claim at once without waiting on
each other or leasing a partition twice. A lost connection (a server restart, a network
blip) is retried with backoff for up to :attr:`PostgresLedger.retry_for` seconds
(``backfill.retry.RECONNECT_SECONDS``), then the call fails with one sentence.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from importlib import resources
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psycopg
from psycopg.sql import SQL, Identifier
from psycopg_pool import ConnectionPool, PoolTimeout

from backfill._postgres import safe_url
from backfill.errors import LedgerError, TransientError
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
    dims_json,
    limits,
)
from backfill.partitions import Order, Partition, Selection
from backfill.retry import RECONNECT_SECONDS
from backfill.secrets import mask_url as redact_url

__all__ = ["MAX_LOST_LEASES", "SCHEMA_VERSION", "PostgresLedger", "redact_url"]

log = logging.getLogger("backfill.ledger.postgres")
T = TypeVar("T")

SCHEMA_VERSION = 6
_PLAN_CHUNK = 20_000
# Any constant will do: it only serialises concurrent schema set-up and migrations.
_MIGRATION_LOCK = 0x6261636B66696C6C  # "backfill"


def _load_queries() -> dict[str, str]:
    text = resources.files("backfill.ledger").joinpath("sql/postgres_queries.sql").read_text()
    queries: dict[str, str] = {}
    for block in re.split(r"^-- name: ", text, flags=re.M)[1:]:
        name, _, body = block.partition("\n")
        queries[name.strip()] = body.strip()
    return queries


_SCHEMA = resources.files("backfill.ledger").joinpath("sql/postgres_schema.sql").read_text()
_Q = _load_queries()
_MIGRATIONS: dict[int, str] = {
    version: resources.files("backfill.ledger")
    .joinpath(f"sql/postgres_migrations/{version:04d}.sql")
    .read_text()
    for version in range(2, SCHEMA_VERSION + 1)
}


def _target(url: str) -> tuple[str, str, str]:
    """(host:port, database, user) named by a URL, for messages."""
    try:
        parts = urlsplit(url)
        host = f"{parts.hostname or 'localhost'}:{parts.port or 5432}"
        database = parts.path.lstrip("/") or (parts.username or "postgres")
        return host, database, parts.username or "postgres"
    except ValueError:
        return "?", "?", "?"


def _connect_error(url: str, exc: Exception) -> LedgerError:
    """One sentence naming what is wrong with a PostgreSQL state URL (never its password)."""
    safe = redact_url(url)
    host, database, user = _target(url)
    text = " ".join(str(exc).split())
    sqlstate = getattr(getattr(exc, "diag", None), "sqlstate", None) or getattr(
        exc, "sqlstate", None
    )
    if isinstance(exc, psycopg.ProgrammingError | ValueError) or re.search(
        r"invalid (URI|connection option|[\w ]*value)|missing \"=\"", text
    ):
        message = (
            f"state URL {safe} is not a valid PostgreSQL URL ({_last_line(text)}); write it "
            "like postgresql://USER@HOST:5432/DATABASE"
        )
    elif sqlstate == "28P01" or "password authentication failed" in text:
        message = (
            f"PostgreSQL at {host} refused the password for user {user!r}; "
            "fix the password in --state or BACKFILL_STATE"
        )
    elif "no password supplied" in text:
        message = (
            f"PostgreSQL at {host} wants a password for user {user!r}; "
            "put it in --state or BACKFILL_STATE"
        )
    elif sqlstate == "3D000" or ("database" in text and "does not exist" in text):
        message = (
            f"database {database!r} does not exist on PostgreSQL at {host}; "
            f"create it (createdb {database}) or fix --state"
        )
    elif sqlstate == "28000" or ("role" in text and "does not exist" in text):
        message = f"PostgreSQL at {host} has no user {user!r}; create the role or fix --state"
    elif any(m in text for m in ("Connection refused", "could not translate", "timeout")):
        message = (
            f"cannot reach PostgreSQL at {host} ({_last_line(text)}); "
            "start the server or fix --state"
        )
    else:
        message = f"cannot open state {safe}: {_last_line(text)}"
    password = _password(url)
    if password:
        message = message.replace(password, "***")
    return LedgerError(redact_url(message))


def _password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


_PATH_ITEM = re.compile(r'\s*("(?:[^"]|"")*"|[^,\s]+)\s*(?:,|$)')


def _search_path(setting: str, user: str) -> list[str]:
    """The schema names of a ``search_path`` setting, ``"$user"`` resolved."""
    names = []
    for item in _PATH_ITEM.findall(setting):
        name = item[1:-1].replace('""', '"') if item.startswith('"') else item.lower()
        names.append(user if name == "$user" else name)
    return [n for n in names if n]


def _last_line(text: str) -> str:
    """libpq repeats a failure per address it tried; the last reason is the one to show."""
    reasons = [r.strip() for r in re.split(r"connection to server at [^:]*:", text) if r.strip()]
    reason = reasons[-1] if reasons else text
    for prefix in ("connection failed:", "connection is bad:"):
        reason = reason.strip().removeprefix(prefix)
    return reason.strip().rstrip(".")


def _selection_sql(selection: Selection | None) -> tuple[str, dict[str, Any]]:
    """A SQL fragment (``AND ...``) and its parameters for a selection."""
    if selection is None or selection.is_everything:
        return "", {}
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if selection.start is not None:
        clauses.append("window_end >= %(sel_start)s")
        params["sel_start"] = selection.start
    if selection.end is not None:
        clauses.append("window_start <= %(sel_end)s")
        params["sel_end"] = selection.end
    if selection.keys:
        clauses.append("key = ANY(%(sel_keys)s)")
        params["sel_keys"] = sorted(selection.keys)
    for i, (dim, allowed) in enumerate(sorted(selection.dims.items())):
        clauses.append(f"dims ->> %(sel_dim_name_{i})s = ANY(%(sel_dim_{i})s)")
        params[f"sel_dim_name_{i}"] = dim
        params[f"sel_dim_{i}"] = sorted(allowed)
    return "".join(f" AND {c}" for c in clauses), params


def _read_only_session(conn: psycopg.Connection[Any]) -> None:
    """Every transaction of a reader's connection is read-only: the server refuses a write."""
    conn.execute("SET default_transaction_read_only = on")


def _statements(script: str) -> str:
    """A script without comments (they may hold semicolons), run as one simple query."""
    return "\n".join(line.split("--", 1)[0] for line in script.splitlines())


class PostgresLedger:
    """The :class:`~backfill.ledger.Ledger` on a PostgreSQL database.

    ``url`` is a libpq URL, e.g. ``postgresql://backfill:secret@db:5432/backfill``. The
    tables go to the first schema of the session's search_path (``public`` by default);
    add ``?options=-csearch_path%3DNAME`` to keep them in schema ``NAME``, which is
    created when it does not exist yet.

    ``read_only``: use an existing ledger of this schema version without creating or
    migrating anything; every transaction is read-only.
    """

    retry_for = RECONNECT_SECONDS

    def __init__(self, url: str, *, pool_size: int = 4, read_only: bool = False) -> None:
        self.url = url
        self.safe_url = redact_url(url)
        self._stage_ids: dict[tuple[str, str], int] = {}
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
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"state {self.safe_url} has schema version {version}, newer than this "
                f"backfill understands ({SCHEMA_VERSION}); upgrade backfill"
            )
        if version < SCHEMA_VERSION:
            raise LedgerError(
                f"state {self.safe_url} has schema version {version}, older than this "
                f"backfill's ({SCHEMA_VERSION}); run `backfill run` once to upgrade it"
            )

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        row = conn.execute("SELECT to_regclass('backfill_meta')").fetchone()
        if row is not None and row[0] is not None:
            found = conn.execute(
                "SELECT value FROM backfill_meta WHERE key = 'schema_version'"
            ).fetchone()
            version = int(found[0]) if found else 0
            if version > SCHEMA_VERSION:
                raise LedgerError(
                    f"state {self.safe_url} has schema version {version}, newer than this "
                    f"backfill understands ({SCHEMA_VERSION}); upgrade backfill"
                )
            if version == SCHEMA_VERSION:
                return
            scripts = [_MIGRATIONS[v] for v in range(version + 1, SCHEMA_VERSION + 1)]
        else:
            scripts = [_SCHEMA]
        for script in scripts:
            conn.execute(_statements(script).encode())
        conn.execute(
            "INSERT INTO backfill_meta (key, value) VALUES ('schema_version', %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(SCHEMA_VERSION),),
        )

    def _run(self, body: Callable[[psycopg.Connection[Any]], T]) -> T:
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
        delay = 0.1
        while True:
            try:
                # Waiting for a connection the pool cannot make counts against the window.
                wait = min(10.0, max(1.0, deadline - time.monotonic()))
                with self._pool.connection(timeout=wait) as conn, conn.transaction():
                    result = body(conn)
                self._gone = False
                return result
            except (psycopg.OperationalError, PoolTimeout) as exc:
                if time.monotonic() + delay > deadline:
                    self._gone = True
                    raise LedgerError(
                        f"lost the state database {self.safe_url} for more than "
                        f"{self.retry_for:g} s: {_last_line(str(exc))}"
                    ) from exc
                log.warning(
                    "state database unavailable (%s); retrying in %.1f s",
                    _last_line(str(exc)),
                    delay,
                )
                time.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(5.0, delay * 2)
            except psycopg.Error as exc:
                raise LedgerError(f"state {self.safe_url}: {_last_line(str(exc))}") from exc

    def close(self) -> None:
        self._pool.close()

    def _stage_id(
        self, conn: psycopg.Connection[Any], job: str, stage: str, create: bool
    ) -> int | None:
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

            def planned(conn: psycopg.Connection[Any]) -> str | None:
                stage_id = self._stage_id(conn, job, stage, create=True)
                row = conn.execute(_Q["planned"], {"stage_id": stage_id}).fetchone()
                return None if row is None else row[0]

            if self._run(planned) == fingerprint:
                return 0
        inserted = 0
        iterator = iter(partitions)
        dims_text: dict[tuple[tuple[str, str], ...], str | None] = {}
        while True:
            chunk = list(itertools.islice(iterator, _PLAN_CHUNK))
            if not chunk:
                break
            params: dict[str, Any] = {
                "keys": [p.key for p in chunk],
                "starts": [p.start for p in chunk],
                "ends": [p.end for p in chunk],
                "dims": [
                    dims_text[p.dims]
                    if p.dims in dims_text
                    else dims_text.setdefault(p.dims, dims_json(p.dims))
                    for p in chunk
                ],
            }

            def insert(conn: psycopg.Connection[Any], params: dict[str, Any] = params) -> int:
                params["stage_id"] = self._stage_id(conn, job, stage, create=True)
                return conn.execute(_Q["plan"], params).rowcount

            inserted += self._run(insert)
        if fingerprint is not None:

            def record(conn: psycopg.Connection[Any]) -> None:
                stage_id = self._stage_id(conn, job, stage, create=True)
                conn.execute(_Q["set_planned"], {"stage_id": stage_id, "planned": fingerprint})

            self._run(record)
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
        params.update(
            owner=owner,
            expires=now + lease_seconds,
            run_id=run_id,
            now=now,
            limit=limit,
            max_lost=MAX_LOST_LEASES,
        )

        def take(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
            stage_id = self._stage_id(conn, job, stage, create=False)
            if stage_id is None:
                return []
            ready, ready_params = _deps.ready_filter(
                needs, self._dep_ids(conn, job, needs), "postgres"
            )
            q = dict(params, stage_id=stage_id, scan=scan, **ready_params)

            # Only a readiness check can make the scan longer than the claim itself.
            front = scan is not None and bool(ready)

            def pending(lost: str) -> str:
                query = _Q["claim_pending_front" if front else "claim_pending"]
                return query.format(where=where, direction=direction, ready=ready, lost=lost)

            rows = conn.execute(pending(lost), q).fetchall()
            if len(rows) < limit:
                # Expired leases through their own index: the pending branch above never
                # has to look at running or finished rows. They come back as suspects.
                conn.execute(_Q["fail_lost"].format(where=where), q)
                released = conn.execute(_Q["release_expired"].format(where=where), q).rowcount
                if released:
                    q["limit"] = limit - len(rows)
                    rows += conn.execute(pending(lost), q).fetchall()
            if suspects and not rows:
                # Lost twice or more: one at a time (see Ledger.claim).
                rows = conn.execute(pending("> 1"), dict(q, limit=1)).fetchall()
            return rows

        rows = self._run(take)
        # Dims come as jsonb's canonical text: a batch shares a handful, decoded once each.
        dims: dict[str, tuple[tuple[str, str], ...]] = {}
        claims = []
        for row in rows:
            raw = row[4]
            row_dims: tuple[tuple[str, str], ...] = ()
            if raw:
                row_dims = dims.get(raw) or dims.setdefault(
                    raw, tuple((str(k), str(v)) for k, v in json.loads(raw).items())
                )
            claims.append(
                Claim(row[0], stage, row[1], row[2], row[3], row_dims, row[5], row[6], row[7])
            )
        claims.sort(key=lambda c: (c.start, c.id), reverse=order is Order.NEWEST)
        return claims

    def complete(self, owner: str, outcomes: Sequence[Outcome], *, now: float) -> int:
        if not outcomes:
            return 0
        return self._run(lambda conn: len(_complete_on(conn, owner, outcomes, now)))

    def completer(self, database: str) -> Completer | None:
        """Record outcomes inside a sink's transaction when the sink's URL is this
        ledger's own (same server, database, user and options, so the same tables).

        Then a partition's rows and its done-mark commit together: exactly once.
        """
        return _complete_in_sink if database == safe_url(self.url) else None

    def fence(self, database: str) -> Fence | None:
        """Prove leases inside a sink's transaction when the sink is this database."""
        return _begin_in_sink if database == safe_url(self.url) else None

    def begin(self, owner: str, leases: Sequence[tuple[int, int]]) -> set[int]:
        if not leases:
            return set()
        return self._run(lambda conn: _begin_on(conn, owner, leases))

    def _dep_ids(
        self, conn: psycopg.Connection[Any], job: str, needs: Sequence[Dependency]
    ) -> list[int | None]:
        return [self._stage_id(conn, job, dep.stage, create=False) for dep in needs]

    def _inputs_query(
        self,
        conn: psycopg.Connection[Any],
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
            _Q[name], where, needs, self._dep_ids(conn, job, needs), "postgres", condition
        )
        return sql, {**params, **extra, "stage_id": stage_id}

    def mark_stale(
        self,
        job: str,
        stage: str,
        needs: Sequence[Dependency],
        selection: Selection | None = None,
    ) -> int:
        def mark(conn: psycopg.Connection[Any]) -> int:
            query = self._inputs_query(
                conn, "mark_stale", job, stage, needs, selection, _deps.NEWER
            )
            if query is None:
                return 0
            sql, params = query
            params["message"] = _deps.STALE_MESSAGE
            return conn.execute(sql, params).rowcount

        return self._run(mark)

    def stale_keys(
        self,
        job: str,
        stage: str,
        needs: Sequence[Dependency],
        selection: Selection | None = None,
    ) -> set[str]:
        def read(conn: psycopg.Connection[Any]) -> set[str]:
            query = self._inputs_query(
                conn, "stale_keys", job, stage, needs, selection, _deps.NEWER
            )
            if query is None:
                return set()
            return {row[0] for row in conn.execute(*query)}

        return self._run(read)

    def blocked_keys(
        self,
        job: str,
        stage: str,
        needs: Sequence[Dependency],
        selection: Selection | None = None,
    ) -> dict[str, str]:
        def read(conn: psycopg.Connection[Any]) -> dict[str, str]:
            query = self._inputs_query(
                conn, "blocked_keys", job, stage, needs, selection, _deps.FAILED
            )
            if query is None:
                return {}
            return {row[0]: row[1] for row in conn.execute(*query)}

        return self._run(read)

    def coverage_rows(
        self, job: str, stage: str, selection: Selection | None = None
    ) -> Iterator[CoverageRow]:
        where, params = _selection_sql(selection)

        def read(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
            stage_id = self._stage_id(conn, job, stage, create=False)
            if stage_id is None:
                return []
            return conn.execute(
                _Q["coverage_rows"].format(where=where), dict(params, stage_id=stage_id)
            ).fetchall()

        rows = self._run(read)
        return (
            CoverageRow(
                r[0],
                r[1],
                r[2],
                tuple((str(k), str(v)) for k, v in (r[3] or {}).items()),
                Status(r[4]),
                *r[5:],
            )
            for r in rows
        )

    def window_counts(self, job: str, stage: str) -> list[WindowCount]:
        def read(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
            stage_id = self._stage_id(conn, job, stage, create=False)
            if stage_id is None:
                return []
            return conn.execute(_Q["window_counts"], {"stage_id": stage_id}).fetchall()

        return [
            WindowCount(start, end, Status(status), n, bool(stale))
            for start, end, status, stale, n in self._run(read)
        ]

    def save_checkpoint(self, owner: str, claim_id: int, checkpoint: str | None) -> bool:
        params = {"id": claim_id, "owner": owner, "checkpoint": checkpoint}
        return self._run(lambda conn: conn.execute(_Q["save_checkpoint"], params).rowcount == 1)

    def request_stats(self, job: str, stage: str) -> tuple[int, float | None]:
        def read(conn: psycopg.Connection[Any]) -> tuple[int, float | None]:
            stage_id = self._stage_id(conn, job, stage, create=False)
            if stage_id is None:
                return 0, None
            row = conn.execute(_Q["request_stats"], {"stage_id": stage_id}).fetchone()
            assert row is not None
            return int(row[0]), (float(row[1]) if row[1] is not None else None)

        return self._run(read)

    def renew(self, owner: str, *, lease_seconds: float, now: float) -> int:
        params = {"owner": owner, "expires": now + lease_seconds}
        return self._run(lambda conn: conn.execute(_Q["renew"], params).rowcount)

    def release_owner(self, owner: str, *, lost: bool = False) -> int:
        params = {"owner": owner, "max_lost": MAX_LOST_LEASES}

        def release(conn: psycopg.Connection[Any]) -> int:
            if not lost:
                return int(conn.execute(_Q["release_owner"], params).rowcount)
            failed = conn.execute(_Q["fail_lost_of_owner"], params).rowcount
            return int(failed + conn.execute(_Q["release_lost"], params).rowcount)

        return self._run(release)

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

        def read(conn: psycopg.Connection[Any]) -> dict[str, StageCounts]:
            result: dict[str, StageCounts] = {}
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
                    records += int(recs)
                recent_n, span, latest = 0, 0.0, None
                last = conn.execute(_Q["last_run_of_stage"], q).fetchone() if recent else None
                if last is not None and last[0] is not None:
                    q["run_id"] = last[0]
                    row = conn.execute(_Q["recent"].format(where=where), q).fetchone()
                    assert row is not None
                    n, first, final = row
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

        return self._run(read)

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

        def read(conn: psycopg.Connection[Any]) -> bool:
            stage_id = self._stage_id(conn, job, stage, create=False)
            if stage_id is None:
                return False
            ready, ready_params = _deps.ready_filter(
                needs, self._dep_ids(conn, job, needs), "postgres"
            )
            q = dict(params, stage_id=stage_id, **ready_params)
            names = ("any_running",) if running_only else ("any_pending", "any_running")
            return any(
                conn.execute(_Q[name].format(where=where, ready=ready), q).fetchone() is not None
                for name in names
            )

        return self._run(read)

    def failure_groups(
        self, job: str, stages: Sequence[str], selection: Selection | None = None
    ) -> list[FailureGroup]:
        where, params = _selection_sql(selection)

        def read(conn: psycopg.Connection[Any]) -> list[FailureGroup]:
            groups: list[FailureGroup] = []
            for stage in stages:
                stage_id = self._stage_id(conn, job, stage, create=False)
                if stage_id is None:
                    continue
                rows = conn.execute(
                    _Q["failure_groups"].format(where=where), dict(params, stage_id=stage_id)
                )
                groups.extend(
                    FailureGroup(stage, category, int(n), key, message)
                    for category, n, key, message in rows
                )
            return groups

        return self._run(read)

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
            where += " AND status = %(status)s"
            params["status"] = status.value

        def read(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
            stage_id = self._stage_id(conn, job, stage, create=False)
            if stage_id is None:
                return []
            return conn.execute(
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
            for r in self._run(read)
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

        def change(conn: psycopg.Connection[Any]) -> int:
            changed = 0
            for stage in stages:
                stage_id = self._stage_id(conn, job, stage, create=False)
                if stage_id is None:
                    continue
                cur = conn.execute(_Q[query].format(where=where), dict(params, stage_id=stage_id))
                changed += cur.rowcount
            return changed

        return self._run(change)

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
            "requeue", job, stages, selection, statuses=[s.value for s in statuses]
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

        def forget(conn: psycopg.Connection[Any]) -> ResetCounts:
            removed = stale = 0
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

        return self._run(forget)

    # -- runs and workers ----------------------------------------------------------

    def start_run(self, run: RunRecord) -> None:
        params = {
            "id": run.id,
            "job": run.job,
            "command": run.command,
            "host": run.host,
            "pid": run.pid,
            "options": json.dumps(dict(run.options), default=str),
            "started_at": run.started_at,
            "status": run.status,
        }
        self._run(lambda conn: conn.execute(_Q["start_run"], params))

    def finish_run(
        self,
        run_id: str,
        *,
        now: float,
        status: str,
        exit_code: int,
        counts: Mapping[str, Any],
    ) -> None:
        params = {
            "id": run_id,
            "now": now,
            "status": status,
            "exit_code": exit_code,
            "counts": json.dumps(dict(counts), default=str),
        }
        self._run(lambda conn: conn.execute(_Q["finish_run"], params))

    def runs(self, job: str, limit: int = 20) -> list[RunRecord]:
        rows = self._run(
            lambda conn: conn.execute(_Q["runs"], {"job": job, "limit": limit}).fetchall()
        )
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
        params = {
            "id": worker.id,
            "job": worker.job,
            "host": worker.host,
            "pid": worker.pid,
            "started_at": worker.started_at,
            "heartbeat_at": worker.heartbeat_at,
        }
        self._run(lambda conn: conn.execute(_Q["register_worker"], params))

    def heartbeat(self, worker_id: str, *, now: float, resources: str | None = None) -> None:
        params = {"id": worker_id, "now": now, "resources": resources}
        self._run(lambda conn: conn.execute(_Q["heartbeat"], params))

    def stop_worker(self, worker_id: str, *, now: float) -> None:
        self._run(lambda conn: conn.execute(_Q["stop_worker"], {"id": worker_id, "now": now}))

    # -- limits shared by the fleet --------------------------------------------------

    # Workers on many machines share this database: every resource's rate is shared.
    fleet = True

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

        def book(conn: psycopg.Connection[Any]) -> tuple[list[float], float, float]:
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

        return self._run(book)

    def pause_resource(self, job: str, resource: str, seconds: float) -> None:
        """Pause a shared resource for every worker of ``job`` (a Retry-After)."""
        params = {"job": job, "name": resource, "seconds": seconds}
        self._run(lambda conn: conn.execute(_Q["pause_resource"], params))

    def quota_use(
        self, job: str, resource: str, quotas: Sequence[tuple[int, float]]
    ) -> dict[str, limits.QuotaUse]:
        """What each quota's current window has spent (see :func:`limits.quota_use`)."""
        return self._run(lambda conn: limits.quota_use(_query(conn), job, resource, quotas))

    def resume_resource(self, job: str, resource: str) -> float | None:
        """End a resource's stored pause now (see :func:`backfill.ledger.limits.resume`)."""
        return self._run(lambda conn: limits.resume(_query(conn), job, resource))

    def workers(self, job: str, *, active_only: bool = True) -> list[WorkerRecord]:
        where = " AND stopped_at IS NULL" if active_only else ""
        rows = self._run(
            lambda conn: conn.execute(_Q["workers"].format(where=where), {"job": job}).fetchall()
        )
        return [WorkerRecord(*r) for r in rows]


def _query(conn: psycopg.Connection[Any]) -> limits.Query:
    """Named queries of this dialect on ``conn``, as :mod:`backfill.ledger.limits` runs them."""

    def query(name: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        cursor = conn.execute(_Q[name], params)
        return cursor.fetchall() if cursor.description is not None else []

    return query


@contextlib.contextmanager
def _on_sink(what: str) -> Iterator[None]:
    """Driver errors of ledger statements run on a sink's connection (in its transaction),
    translated: a lost connection (a restart's AdminShutdown included) is transient, so
    the writer redoes the whole transaction, rows, fences and done-marks, on a new one."""
    try:
        yield
    except psycopg.OperationalError as exc:
        raise TransientError(
            f"{what}: {_last_line(str(exc))}", category="sink_unreachable"
        ) from exc
    except psycopg.Error as exc:
        raise LedgerError(f"{what}: {_last_line(str(exc))}") from exc


def _complete_in_sink(
    conn: psycopg.Connection[Any], owner: str, outcomes: Sequence[Outcome], now: float
) -> set[int]:
    """:func:`_complete_on` on a sink's connection (see :func:`_on_sink`)."""
    with _on_sink("recording done-marks"):
        return _complete_on(conn, owner, outcomes, now)


def _begin_in_sink(
    conn: psycopg.Connection[Any], owner: str, leases: Sequence[tuple[int, int]]
) -> set[int]:
    """:func:`_begin_on` on a sink's connection (see :func:`_on_sink`)."""
    with _on_sink("proving leases"):
        return _begin_on(conn, owner, leases)


def _complete_on(
    conn: psycopg.Connection[Any], owner: str, outcomes: Sequence[Outcome], now: float
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
    rows = conn.execute(_Q["complete"], params, prepare=False).fetchall()
    finished = sum(1 for _, status in rows if status != Status.PENDING.value)
    if finished:
        conn.execute(_Q["count_finished"], {"n": finished, "owner": owner}, prepare=False)
    return {int(claim_id) for claim_id, _ in rows}


def _begin_on(
    conn: psycopg.Connection[Any], owner: str, leases: Sequence[tuple[int, int]]
) -> set[int]:
    """Mark leases begun on a connection to the ledger's database, in its open
    transaction; return the ids ``owner`` still holds (their rows stay locked)."""
    ordered = sorted(leases)
    params = {
        "owner": owner,
        "ids": [lease[0] for lease in ordered],
        "claims": [lease[1] for lease in ordered],
    }
    rows = conn.execute(_Q["begin"], params, prepare=False).fetchall()
    return {int(row[0]) for row in rows}
