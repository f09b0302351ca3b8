"""Quotas hold across a kill and a restart on the default SQLite state, and a run waiting
for its quota says so; a resource declared shared holds its rate across two jobs."""

from __future__ import annotations

import re
import signal
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from backfill.ledger.sqlite import SQLiteLedger
from conftest import backfill_cmd, cli_env, run_cli, until_quota_line, wait_for
from wire_stamps import WireStamps

QUOTA_JOB = """
import os

from backfill import Job, daily

job = Job("quota", partitions=daily("2013-01-01", "2013-01-30"))
job.resource("api", rate="20/s", limits=["12/day"], concurrency=2)


@job.stage(resource="api", concurrency=2)
async def fetch(ctx, partition):
    body = await ctx.http.get_json(os.environ["API"] + "/v1/day", params={"d": partition.key})
    return [{"day": partition.key, "n": body["n"]}]
"""


class Counting(BaseHTTPRequestHandler):
    """Answers every request with its number; the server counts them."""

    def do_GET(self) -> None:
        server: CountingServer = self.server  # type: ignore[assignment]
        with server.lock:
            server.count += 1
            n = server.count
        body = f'{{"n": {n}}}'.encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


class CountingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Counting)
        self.lock = threading.Lock()
        self.count = 0

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


@pytest.fixture
def api() -> Iterator[CountingServer]:
    server = CountingServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _start(workdir: Path, api: str, job: str = "job.py") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*backfill_cmd(), "run", job, "--progress", "plain"],
        cwd=workdir,
        env=cli_env({"API": api}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_daily_quota_is_not_exceeded_across_a_kill_and_a_restart(
    tmp_path: Path, api: CountingServer
) -> None:
    """12/day on the default SQLite state: a run killed with SIGKILL after 5 requests,
    then run again, sends at most 12 requests in all; the second run waits for the
    quota, says it is used up and when it resumes, and Ctrl+C ends it (exit 130)."""
    (tmp_path / "job.py").write_text(textwrap.dedent(QUOTA_JOB))
    first = _start(tmp_path, api.url)
    wait_for(lambda: api.count >= 5, 60, "5 requests")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    sent_first = api.count
    second = _start(tmp_path, api.url)
    lines, reader = until_quota_line(second)
    time.sleep(1.0)  # nothing more goes out while it waits
    second.send_signal(signal.SIGINT)
    second.wait(timeout=30)
    reader.join(timeout=10)
    output = "".join(lines)
    assert second.returncode == 130, output
    assert api.count <= 12, (sent_first, api.count)
    # A kill may cost the starts the killed run had booked but not sent: no more than
    # the requests it had waiting (its concurrency).
    assert api.count >= 12 - 2, (sent_first, api.count)
    quota = next(line for line in lines if "quota used up" in line)
    assert "resource api: quota used up (12/day): resumes" in quota
    assert "UTC (in " in quota
    # plan counts what the quota's window has spent already.
    plan = run_cli("plan", "job.py", cwd=tmp_path, env={"API": api.url})
    assert plan.returncode == 0, plan.stderr
    spent = re.search(r"api (\d+) of the 12/day quota already spent", plan.stdout)
    assert spent is not None and 10 <= int(spent[1]) <= 12, plan.stdout


def test_a_run_stopped_while_it_waits_for_its_quota_leaves_the_quota_as_it_was(
    tmp_path: Path, api: CountingServer
) -> None:
    """3 every 30 s, four requests waiting: the run sends three, waits for the quota and
    is stopped (Ctrl+C) meanwhile. The starts its waiting requests would take are not
    booked while they are far off, so the state holds the three it sent and no more:
    the next run may send when the first of them leaves the window, not a window or
    two later."""
    job = QUOTA_JOB.replace('"12/day"', '"3/30s"').replace("concurrency=2", "concurrency=4")
    (tmp_path / "job.py").write_text(textwrap.dedent(job))
    run = _start(tmp_path, api.url)
    lines, reader = until_quota_line(run)
    run.send_signal(signal.SIGINT)
    run.wait(timeout=30)
    reader.join(timeout=10)
    assert run.returncode == 130, "".join(lines)
    assert api.count == 3
    # The next window holds three starts again, all due as soon as the three sent leave
    # it (a start booked for a waiting request and never sent would push one of them a
    # whole window later).
    ledger = SQLiteLedger(tmp_path / ".backfill" / "state.db")
    try:
        due, _, _, _ = ledger.take_starts(
            "quota", "api", count=3, interval=0.0, tolerance=0.0, quotas=[(3, 30.0)]
        )
    finally:
        ledger.close()
    assert max(due) - min(due) < 5.0, due
    assert max(due) <= 30.0, due


SHARED_JOB = """
import os

from backfill import Job, daily

job = Job("{name}", partitions=daily("2013-01-01", "2013-02-28"))
job.resource("api", rate="20/s", shared=True, concurrency=4)


@job.stage(resource="api", concurrency=4)
async def fetch(ctx, partition):
    body = await ctx.http.get_json(os.environ["API"] + "/v1/{name}", params={{"d": partition.key}})
    return [{{"day": partition.key, "n": body["n"]}}]
"""


def test_two_jobs_sharing_a_resource_stay_under_its_rate_together(
    tmp_path: Path, api: CountingServer
) -> None:
    """Two jobs on one SQLite state, each declaring the same resource shared=True at
    20/s, run at the same time: the API never sees more than 21 requests (rate + burst)
    in any one-second window, stamped as they reach the wire."""
    for name in ("results", "odds"):
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(SHARED_JOB.format(name=name)))
    with WireStamps(api.url) as wire:
        runs = [_start(tmp_path, wire.url, f"{name}.py") for name in ("results", "odds")]
        outputs = [run.communicate(timeout=120)[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output
    times = sorted(wire.times)
    assert len(times) == 2 * 59
    busiest = max(sum(1 for t in times if s <= t < s + 1.0) for s in times)
    assert busiest <= 21, f"{busiest} requests in one second"
    # Together at the rate, not each at it: 118 requests need at least ~5.8 s.
    assert times[-1] - times[0] >= 117 / 20 - 0.1
