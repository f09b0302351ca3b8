"""PostgreSQL for tests: the server named by BACKFILL_TEST_POSTGRES_URL, one schema per use.

Outside CI a test that needs PostgreSQL is skipped, with the reason, when no server
answers; with ``CI=true`` it fails instead, so CI can never pass by skipping.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import psycopg
import pytest

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def server_url() -> str:
    return os.environ.get("BACKFILL_TEST_POSTGRES_URL", DEFAULT_URL)


def require_postgres() -> str:
    """The server's URL; skip (or, under CI, fail) when it does not answer."""
    url = server_url()
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        reason = f"PostgreSQL at {url} does not answer ({' '.join(str(exc).split())[:200]})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI must run the PostgreSQL tests")
        pytest.skip(reason)
    return url


def in_schema(url: str, schema: str) -> str:
    """``url`` with every session's search_path set to ``schema``."""
    option = quote(f"-csearch_path={schema}", safe="")
    return f"{url}{'&' if '?' in url else '?'}options={option}"


@contextmanager
def fresh_schema() -> Iterator[str]:
    """A URL whose tables land in a new, empty schema, dropped afterwards."""
    url = require_postgres()
    schema = f"bf_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield in_schema(url, schema)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
