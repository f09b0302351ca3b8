"""Dependencies only some users need, asked for where they are needed: a missing one is
one sentence that names the extra to install, not an ImportError from deep inside."""

from __future__ import annotations

import importlib

from backfill.errors import ConfigError

__all__ = ["require_apprise", "require_postgres"]


def require_postgres(what: str) -> None:
    """Raise :class:`ConfigError` when psycopg (or its pool) is not installed, for
    ``what`` ("a PostgreSQL state", "a PostgreSQL table")."""
    for module in ("psycopg", "psycopg_pool"):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(
                f"{what} needs PostgreSQL support, which is not installed: "
                "pip install 'backfill[postgres]'"
            ) from exc


def require_apprise(what: str) -> None:
    """Raise :class:`ConfigError` when Apprise is not installed, for ``what``
    ("notifications")."""
    try:
        importlib.import_module("apprise")
    except ImportError as exc:
        raise ConfigError(
            f"{what} need Apprise, which is not installed: pip install 'backfill[notify]'"
        ) from exc
