"""PostgreSQL's failures in one sentence each: a URL that does not connect, and a
ledger statement that fails inside a sink's transaction."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from urllib.parse import urlsplit

import psycopg

from backfill.errors import LedgerError, TransientError
from backfill.secrets import mask_url as redact_url

__all__ = ["connect_error", "last_line", "on_sink", "redact_url"]


def _parts(url: str) -> tuple[str, str, str]:
    """(host:port, database, user) named by a URL, for messages."""
    try:
        parts = urlsplit(url)
        host = f"{parts.hostname or 'localhost'}:{parts.port or 5432}"
        database = parts.path.lstrip("/") or (parts.username or "postgres")
        return host, database, parts.username or "postgres"
    except ValueError:
        return "?", "?", "?"


def connect_error(url: str, exc: Exception) -> LedgerError:
    """One sentence naming what is wrong with a PostgreSQL state URL (never its password)."""
    safe = redact_url(url)
    host, database, user = _parts(url)
    text = " ".join(str(exc).split())
    sqlstate = getattr(getattr(exc, "diag", None), "sqlstate", None) or getattr(
        exc, "sqlstate", None
    )
    if isinstance(exc, psycopg.ProgrammingError | ValueError) or re.search(
        r"invalid (URI|connection option|[\w ]*value)|missing \"=\"", text
    ):
        message = (
            f"state URL {safe} is not a valid PostgreSQL URL ({last_line(text)}); write it "
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
            f"cannot reach PostgreSQL at {host} ({last_line(text)}); "
            "start the server or fix --state"
        )
    else:
        message = f"cannot open state {safe}: {last_line(text)}"
    password = _password(url)
    if password:
        message = message.replace(password, "***")
    return LedgerError(redact_url(message))


def _password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def last_line(text: str) -> str:
    """libpq repeats a failure per address it tried; the last reason is the one to show."""
    reasons = [r.strip() for r in re.split(r"connection to server at [^:]*:", text) if r.strip()]
    reason = reasons[-1] if reasons else text
    for prefix in ("connection failed:", "connection is bad:"):
        reason = reason.strip().removeprefix(prefix)
    return reason.strip().rstrip(".")


@contextlib.contextmanager
def on_sink(what: str) -> Iterator[None]:
    """Driver errors of ledger statements run on a sink's connection (in its transaction),
    translated: a lost connection (a restart's AdminShutdown included) is transient, so
    the writer redoes the whole transaction, rows, fences and done-marks, on a new one."""
    try:
        yield
    except psycopg.OperationalError as exc:
        raise TransientError(f"{what}: {last_line(str(exc))}", category="sink_unreachable") from exc
    except psycopg.Error as exc:
        raise LedgerError(f"{what}: {last_line(str(exc))}") from exc
