"""PostgreSQL for tests: the server named by BACKFILL_TEST_POSTGRES_URL, one schema per use;
or, for a test that restarts or stops its server, a cluster of its own on another port.

Outside CI a test that needs PostgreSQL is skipped, with the reason, when no server
answers; with ``CI=true`` it fails instead, so CI can never pass by skipping.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
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


class Cluster:
    """A PostgreSQL cluster of its own (initdb into a temporary directory, another port),
    so that restarting it disturbs nobody else's server."""

    def __init__(self, bin_dir: Path, root: Path, port: int) -> None:
        self.bin_dir = bin_dir
        self.data = root / "data"
        self.socket_dir = root
        self.port = port
        self.log = root / "server.log"
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def _as_owner(self, *command: str) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run(
            [*prefix, *command], capture_output=True, text=True, timeout=120, check=False
        )

    def pg_ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1"
        done = self._as_owner(
            str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
            "-o", options, "-w", "-t", "60", *args,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr + self.log.read_text()

    def init(self) -> None:
        done = self._as_owner(
            str(self.bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres",
            "--auth=trust", "--no-sync",
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@contextmanager
def private_cluster() -> Iterator[Cluster]:
    """A fresh PostgreSQL cluster of this test's own on a free port, torn down afterwards.

    Skipped with the reason when the server binaries are missing; under ``CI=true`` that
    fails instead."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        reason = "needs PostgreSQL's server binaries (initdb, pg_ctl) to run a cluster of its own"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI must run this test")
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="backfill-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    cluster = Cluster(bin_dir, root, _free_port())
    try:
        cluster.init()
        cluster.pg_ctl("start")
        yield cluster
    finally:
        if (cluster.data / "postmaster.pid").exists():
            cluster.pg_ctl("stop", "-m", "immediate")
        shutil.rmtree(root, ignore_errors=True)
