"""What the SQLite ledger and the SQLite sink share."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from backfill.ledger.identity import DatabaseIdentity


def retry_locked(step: Callable[[], object], seconds: float = 30.0) -> None:
    """Run ``step``, waiting out another process that is creating the same file.

    Switching a new file to WAL takes an exclusive lock that SQLite does not wait for.
    """
    deadline = time.monotonic() + seconds
    delay = 0.01
    while True:
        try:
            step()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


def is_full(exc: sqlite3.Error) -> bool:
    """Whether SQLite says the database cannot grow: SQLITE_FULL (the disk is full, or a
    size limit is reached), which no retry will fix."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == sqlite3.SQLITE_FULL


def sqlite_identity(path: str | Path) -> DatabaseIdentity:
    """The database a SQLite file is: its resolved path, so that every spelling of one
    file (relative, through ``..`` or a symlink) is one database."""
    return DatabaseIdentity("sqlite", str(Path(path).resolve()))
