"""A source that goes down for a minute mid-run: the run waits it out and says why,
nothing fails, and traffic resumes within seconds of the source's return."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse

from backfill.job import load_job
from backfill.ledger import open_reader
from backfill.web.snapshot import Dashboard
from conftest import backfill_cmd, cli_env, run_cli

pytestmark = pytest.mark.slow

OUTAGE = 60.0

JOB = """
import os

from backfill import Job, daily, table

job = Job(
    "outage",
    partitions=daily("2013-01-01", "2013-02-09"),
    sink=table("rows.db", "rows", key=["day"]),
)
job.resource("api", rate="10/s", concurrency=4)


@job.stage(resource="api", concurrency=4, timeout=5)
async def fetch(ctx, partition):
    body = await ctx.http.get_json(os.environ["API"] + "/v1/day", params={"d": partition.key})
    return [{"day": partition.key, "n": body["n"]}]
"""


class Source:
    """Answers each day; while ``down``, every request gets 503."""

    def __init__(self) -> None:
        self.down = False
        self.served: list[tuple[float, int]] = []  # (when, status)
        self.lock = threading.Lock()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        with self.lock:
            status = 503 if self.down else 200
            self.served.append((time.monotonic(), status))
            n = len(self.served)
        body: dict[str, Any] = (
            {"error": "down for maintenance"}
            if status == 503
            else {"n": n, "day": request.query_params.get("d")}
        )
        await JSONResponse(body, status)(scope, receive, send)


@pytest.fixture
def source() -> Iterator[tuple[Source, str]]:
    app = Source()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    yield app, f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(5)
    sock.close()


def _done(workdir: Path) -> int:
    state = workdir / ".backfill" / "state.db"
    if not state.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5) as conn:
            row = conn.execute(
                "SELECT count(*) FROM backfill_partitions WHERE status = 'done'"
            ).fetchone()
    except sqlite3.OperationalError:
        return 0
    return int(row[0])


def test_a_minute_of_outage_is_waited_out_said_and_costs_no_partition(
    tmp_path: Path, source: tuple[Source, str]
) -> None:
    """The source answers 503 to everything for 60 s mid-run. Meanwhile `status` and the
    dashboard say the stage is stalled because the api's circuit is open; no partition
    fails (not as a timeout, not out of retries); requests succeed again within 10 s of
    the source's return; the run ends exit 0 with every row."""
    app, url = source
    (tmp_path / "job.py").write_text(textwrap.dedent(JOB))
    run = subprocess.Popen(
        [*backfill_cmd(), "run", "job.py", "--progress", "plain"],
        cwd=tmp_path,
        env=cli_env({"API": url}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while _done(tmp_path) < 10:
            assert time.monotonic() < deadline, "the run did not get going"
            assert run.poll() is None, run.communicate()[0]
            time.sleep(0.05)
        app.down = True
        went_down = time.monotonic()
        time.sleep(OUTAGE - 20.0)
        status = run_cli("status", "job.py", cwd=tmp_path, env={"API": url})
        job = load_job(str(tmp_path / "job.py"))
        ledger = open_reader(f"sqlite:///{tmp_path / '.backfill' / 'state.db'}")
        try:
            snapshot = Dashboard(job, ledger).snapshot()
        finally:
            ledger.close()
        time.sleep(max(0.0, went_down + OUTAGE - time.monotonic()))
        app.down = False
        came_back = time.monotonic()
        output, _ = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, output
    assert status.returncode == 0, status.stderr
    assert "fetch: stalled" in status.stdout, status.stdout
    assert "api circuit open since" in status.stdout, status.stdout
    (stage,) = snapshot["stages"]
    assert stage["stalled"] and "api circuit open since" in stage["stalled"], stage
    assert stage["eta"] is None
    (api,) = snapshot["resources"]
    assert api["circuit"] in ("open", "probing"), api
    first_ok = min(t for t, code in app.served if code == 200 and t >= came_back)
    assert first_ok - came_back < 10.0
    with sqlite3.connect(tmp_path / "rows.db") as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT day) FROM rows").fetchone() == (40, 40)
    assert _done(tmp_path) == 40
    # While down, the source saw a probe every few seconds, not every partition's retries.
    during = [t for t, code in app.served if code == 503]
    assert len(during) < 60, len(during)
