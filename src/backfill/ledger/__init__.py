"""The ledger: the durable record of every (job, stage, partition) and every run.

The engine speaks to it only through :class:`WorkLedger`, reports through
:class:`ReportLedger` (:class:`Ledger` is both). The algorithm lives once, in
:class:`backfill.ledger.algorithm.SQLLedger`; SQLite is the embedded dialect, PostgreSQL the
shared one for a fleet of workers, and both pass the same contract suite
(``tests/ledger_contract.py``).
"""

from __future__ import annotations

from pathlib import Path

from backfill._optional import require_postgres
from backfill.errors import ConfigError
from backfill.ledger.identity import DatabaseIdentity
from backfill.ledger.models import (
    MAX_LOST_LEASES,
    Claim,
    CoverageRow,
    Dependency,
    FailureGroup,
    LedgerEntry,
    NoState,
    Outcome,
    ResetCounts,
    RunRecord,
    StageCounts,
    Status,
    WindowCount,
    WorkerRecord,
    dims_from_json,
    dims_json,
)
from backfill.ledger.protocols import (
    Completer,
    Fence,
    Ledger,
    ReportLedger,
    SharedCompletion,
    SharedLimits,
    WorkLedger,
)

__all__ = [
    "DEFAULT_STATE_URL",
    "MAX_LOST_LEASES",
    "Claim",
    "Completer",
    "CoverageRow",
    "DatabaseIdentity",
    "Dependency",
    "FailureGroup",
    "Fence",
    "Ledger",
    "LedgerEntry",
    "NoState",
    "Outcome",
    "ReportLedger",
    "ResetCounts",
    "RunRecord",
    "SharedCompletion",
    "SharedLimits",
    "StageCounts",
    "Status",
    "WindowCount",
    "WorkLedger",
    "WorkerRecord",
    "dims_from_json",
    "dims_json",
    "open_ledger",
    "open_reader",
]

DEFAULT_STATE_URL = "sqlite:///.backfill/state.db"


def open_ledger(url: str | None = None, *, create: bool = True) -> Ledger:
    """Open the state store named by ``url`` (default: ``.backfill/state.db`` here).

    ``postgresql://USER:PASSWORD@HOST:PORT/DATABASE`` opens the shared PostgreSQL ledger
    (``postgres://`` works too). A new state is created and an older one migrated.
    With ``create=False`` the state is opened read-only (see :func:`open_reader`), and
    where there is none yet an empty in-memory ledger stands in, so read-only commands
    leave no trace.
    """
    from backfill.ledger.sqlite import SQLiteLedger

    if not create:
        try:
            return open_reader(url)
        except NoState:
            return SQLiteLedger(":memory:", url=url or DEFAULT_STATE_URL)
    url = url or DEFAULT_STATE_URL
    scheme, target = _target(url)
    if scheme == "postgres":
        require_postgres("a PostgreSQL state")
        from backfill.ledger.postgres import PostgresLedger

        return PostgresLedger(url)
    if target == ":memory:":
        return SQLiteLedger(":memory:", url=url)
    file = Path(target)
    if url == DEFAULT_STATE_URL:
        file.parent.mkdir(parents=True, exist_ok=True)
    return SQLiteLedger(file, url=url)


def open_reader(url: str | None = None) -> Ledger:
    """Open the state store named by ``url`` for reading only: nothing is created,
    migrated or written, in SQLite (the file is opened read-only) as in PostgreSQL
    (every transaction is read-only).

    Raises :class:`NoState` when nothing has run on it yet (no SQLite file, or a
    database without the backfill tables), and a :class:`LedgerError` when it is not a
    backfill ledger, or one of another schema version (an older one is upgraded by the
    next ``backfill run``, never by a reader).
    """
    from backfill.ledger.sqlite import SQLiteLedger

    url = url or DEFAULT_STATE_URL
    scheme, target = _target(url)
    if scheme == "postgres":
        require_postgres("a PostgreSQL state")
        from backfill.ledger.postgres import PostgresLedger

        return PostgresLedger(url, read_only=True)
    if target == ":memory:":
        return SQLiteLedger(":memory:", url=url)
    return SQLiteLedger(Path(target), url=url, read_only=True)


def _target(url: str) -> tuple[str, str]:
    """("postgres", url) or ("sqlite", file path or ``:memory:``) for a state URL."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "sqlite", "/" + url
    if scheme in ("postgresql", "postgres"):
        return "postgres", url
    if scheme == "sqlite":
        path = rest[1:] if rest.startswith("/") else rest
        return "sqlite", path if path not in ("", ":memory:") else ":memory:"
    raise ConfigError(
        f"unsupported state URL {url.split('://')[0]!r}://...; use sqlite:///PATH "
        "(a file), a plain file path, or postgresql://USER@HOST:PORT/DATABASE"
    )
