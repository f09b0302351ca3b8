"""What the SQLite ledger and the SQLite sink share."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from backfill.backoff import Backoff
from backfill.ledger.identity import DatabaseIdentity

# Another process switching the same new file to WAL: 10 ms doubling to 0.5 s; kept under
# set_testing, so the loop never spins.
_LOCKED = Backoff(first=0.01, cap=0.5, jitter=0.0, switchable=False)


def retry_locked(step: Callable[[], object], seconds: float = 30.0) -> None:
    """Run ``step``, waiting out another process that is creating the same file.

    Switching a new file to WAL takes an exclusive lock that SQLite does not wait for.
    """
    deadline = time.monotonic() + seconds
    attempt = 0
    while True:
        attempt += 1
        try:
            step()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(_LOCKED.delay(attempt))


def is_full(exc: sqlite3.Error) -> bool:
    """Whether SQLite says the database cannot grow: SQLITE_FULL (the disk is full, or a
    size limit is reached), which no retry will fix."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == sqlite3.SQLITE_FULL


def sqlite_identity(path: str | Path) -> DatabaseIdentity:
    """The database a SQLite file is: its resolved path, so that every spelling of one
    file (relative, through ``..`` or a symlink) is one database."""
    return DatabaseIdentity("sqlite", str(Path(path).resolve()))
