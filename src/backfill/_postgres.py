"""What the PostgreSQL ledger and the PostgreSQL sink share."""

from __future__ import annotations

from urllib.parse import quote

import psycopg
import psycopg.conninfo

from backfill.ledger.identity import DatabaseIdentity


def postgres_identity(url: str) -> DatabaseIdentity:
    """The database a URL names, without its password: two URLs name the same tables
    when they agree on user, host, port, database and options (a search_path)."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return DatabaseIdentity("postgresql", "(unparseable URL)")
    user = str(info.get("user") or "")
    host = info.get("host") or "localhost"
    port = info.get("port") or "5432"
    name = info.get("dbname") or user or ""
    options = str(info.get("options") or "")
    return DatabaseIdentity(
        "postgresql", f"{host}:{port}/{name}", user=user, options=quote(options, safe="")
    )


def safe_url(url: str) -> str:
    """The URL without its password, for messages and identity: two URLs name the same
    tables when they agree on user, host, port, database and options (a search_path)."""
    return str(postgres_identity(url))
