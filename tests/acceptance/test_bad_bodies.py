"""A source answering 200 with a body that lacks the records field, through the CLI."""

from __future__ import annotations

import json
import sqlite3
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from conftest import run_cli

DAYS = 10
ROWS_PER_DAY = 5
PAGE_SIZE = 3
MAINTENANCE_ANSWERS = 4

JOB = """
import os

from backfill import EmptyPartition, Job, PageNumber, RetryPolicy, SQLiteTable, daily

API = os.environ["API"]
job = Job(
    "edges",
    partitions=daily("2013-01-01", "2013-01-10"),
    sink=SQLiteTable("rows.db", "rows", key=["day", "n"]),
)


@job.stage(concurrency=2, retry=RetryPolicy(attempts=8, base=0.01, cap=0.05))
async def fetch(ctx, partition):
    records = []
    async for page in ctx.http.paginate(
        f"{API}/rows", params={"day": partition.key}, pagination=PageNumber()
    ):
        records.extend(page.records)
    if not records:
        raise EmptyPartition("no rows that day")
    return records
"""


class PagedRows(BaseHTTPRequestHandler):
    """Paged rows of a day, or ``{"error": "maintenance"}`` (status 200) while
    :meth:`down` says so."""

    lock = threading.Lock()

    def down(self) -> bool:
        return False

    def do_GET(self) -> None:
        query = parse_qs(urlparse(self.path).query)
        day, page = query["day"][0], int(query.get("page", ["1"])[0])
        if self.down():
            body: object = {"error": "maintenance"}
        else:
            rows = [{"day": day, "n": i} for i in range(ROWS_PER_DAY)]
            pages = -(-ROWS_PER_DAY // PAGE_SIZE)
            body = {"data": rows[(page - 1) * PAGE_SIZE : page * PAGE_SIZE], "pages": pages}
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


class MaintenanceFirst(PagedRows):
    """In maintenance for the first answers, then paged rows."""

    answered = 0

    def down(self) -> bool:
        cls = type(self)
        with cls.lock:
            cls.answered += 1
            return cls.answered <= MAINTENANCE_ANSWERS


@pytest.fixture
def maintenance_api() -> Iterator[tuple[type[MaintenanceFirst], str]]:
    """A loopback API that is in maintenance for its first few answers."""
    handler = type("Handler", (MaintenanceFirst,), {"answered": 0, "lock": threading.Lock()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_maintenance_answers_are_retried_and_no_day_is_recorded_empty(
    tmp_path: Path, maintenance_api: tuple[type[MaintenanceFirst], str]
) -> None:
    """Bodies without the records field are retried: every row lands, no partition is
    empty, exit 0."""
    handler, url = maintenance_api
    (tmp_path / "job.py").write_text(textwrap.dedent(JOB))
    result = run_cli("run", "job.py", "--progress", "plain", cwd=tmp_path, env={"API": url})
    assert result.returncode == 0, result.stdout + result.stderr
    assert handler.answered > MAINTENANCE_ANSWERS
    with sqlite3.connect(tmp_path / ".backfill/state.db") as conn:
        statuses = dict(conn.execute("SELECT status, count(*) FROM backfill_partitions GROUP BY 1"))
    assert statuses == {"done": DAYS}
    with sqlite3.connect(tmp_path / "rows.db") as conn:
        rows = conn.execute("SELECT count(*), count(DISTINCT day) FROM rows").fetchone()
    assert rows == (DAYS * ROWS_PER_DAY, DAYS)


WINDOW_JOB = """
import os

from backfill import Job, PageNumber, SQLiteTable, daily

API = os.environ["API"]
job = Job(
    "window",
    partitions=daily("2013-01-01", "2013-01-30"),
    sink=SQLiteTable("rows.db", "rows", key=["day", "n"]),
)
job.resource("api", rate=20, concurrency=4)


@job.stage(resource="api", concurrency=4)
async def fetch(ctx, partition):
    records = []
    async for page in ctx.http.paginate(
        f"{API}/rows", params={"day": partition.key}, pagination=PageNumber()
    ):
        records.extend(page.records)
    return records
"""


class MaintenanceWindow(PagedRows):
    """In maintenance for ``seconds`` once the first ``after`` answers are out."""

    after = 20
    seconds = 10.0
    answered = 0
    began: float | None = None

    def down(self) -> bool:
        import time

        cls = type(self)
        with cls.lock:
            cls.answered += 1
            if cls.answered > cls.after and cls.began is None:
                cls.began = time.monotonic()
            return cls.began is not None and time.monotonic() - cls.began < cls.seconds


def test_ten_seconds_of_maintenance_mid_run_end_exact_after_the_run_itself(
    tmp_path: Path,
) -> None:
    """A source answering 200 {"error": "maintenance"} for 10 s in the middle of a run,
    against a job written as the README shows (a resource, the default retries): the
    bad bodies open the resource's circuit instead of burning every partition's
    retries, and the run itself ends exact, no partition empty or failed."""
    handler = type("Handler", (MaintenanceWindow,), {"lock": threading.Lock()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        (tmp_path / "job.py").write_text(textwrap.dedent(WINDOW_JOB))
        url = f"http://127.0.0.1:{server.server_address[1]}"
        result = run_cli("run", "job.py", "--progress", "none", cwd=tmp_path, env={"API": url})
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert handler.began is not None, "the maintenance window never began"
    assert result.returncode == 0, result.stdout + result.stderr
    with sqlite3.connect(tmp_path / ".backfill/state.db") as conn:
        statuses = dict(conn.execute("SELECT status, count(*) FROM backfill_partitions GROUP BY 1"))
    assert statuses == {"done": 30}
    with sqlite3.connect(tmp_path / "rows.db") as conn:
        rows = conn.execute("SELECT count(*), count(DISTINCT day) FROM rows").fetchone()
    assert rows == (30 * ROWS_PER_DAY, 30)
