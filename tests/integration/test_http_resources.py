"""HTTP resources against a real server on 127.0.0.1 that records every request."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from backfill import Context, Job, Partition, RetryPolicy, Status, daily
from backfill.ledger import open_ledger
from backfill.partitions import Selection
from backfill.testing import run_job
from promptly import promptly, scheduled_first
from wire_stamps import WireStamps

Handler = Callable[[Request, int], Response]


class RecordingServer:
    """A loopback server whose answers come from ``handler(request, n)`` (n counts from 0)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.paths: list[str] = []
        self.handler: Handler = lambda request, n: JSONResponse({"data": [{"n": n}]})
        self._lock = threading.Lock()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        with self._lock:
            n = len(self.times)
            self.times.append(time.monotonic())
            self.paths.append(str(request.url))
        response = self.handler(request, n)
        await response(scope, receive, send)

    def worst_window(self, width: float = 1.0) -> int:
        return max(sum(1 for t in self.times if s <= t < s + width) for s in self.times)


@pytest.fixture
def server() -> Iterator[tuple[RecordingServer, str]]:
    app = RecordingServer()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="critical", access_log=False, lifespan="off")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.01)
    yield app, f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(5)
    sock.close()


@pytest.mark.xdist_group("cpu_heavy")  # real time: never beside chromium (see test_browser.py)
def test_three_stages_sharing_a_resource_stay_under_its_rate(
    server: tuple[RecordingServer, str],
) -> None:
    """Three stages on one resource of 20/s, burst 2: no 1 s window sees more than 22
    requests arrive, stamped by the kernel as they reach the wire (the server here runs
    in the test's own process, and notes a request only when the GIL lets it)."""
    app, url = server
    job = Job("shared", partitions=daily("2013-01-01", "2013-01-10"))
    job.resource("api", rate="20/s", burst=2, concurrency=16)
    wire = WireStamps(url, prefix=b"/x")

    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        for _ in range(3):
            await ctx.http.get_json(f"{wire.url}/x", params={"day": partition.key})
        return []

    for name in ("a", "b", "c"):
        job.stage(name=name, resource="api", concurrency=8)(fetch)
    try:
        result = run_job(job)
    finally:
        wire.close()
    assert result.exit_code == 0
    times = sorted(wire.times)
    assert len(times) == len(app.times) == 90
    assert max(sum(1 for t in times if s <= t < s + 1.0) for s in times) <= 22
    assert times[-1] - times[0] >= (90 - 2) / 20 - 0.1


def _retry_after_job(url: str) -> Job:
    job = Job("ra", partitions=daily("2013-01-01", "2013-01-01"))
    job.resource("api", rate="50/s", concurrency=1, retries=3)

    @job.stage(resource="api")
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        body = await ctx.http.get_json(f"{url}/x")
        return list(body["data"])

    return job


def test_retry_after_in_seconds_is_honoured(server: tuple[RecordingServer, str]) -> None:
    """A 429 with Retry-After: 1 holds the next request back at least one second."""
    app, url = server
    app.handler = _refusing(lambda n: n == 0, retry_after="1")
    assert run_job(_retry_after_job(url)).exit_code == 0
    assert len(app.times) == 2
    assert app.times[1] - app.times[0] >= 0.95


def test_retry_after_as_an_http_date_is_honoured(server: tuple[RecordingServer, str]) -> None:
    """A 503 whose Retry-After is an HTTP-date two seconds ahead holds requests back."""
    app, url = server

    def handler(request: Request, n: int) -> Response:
        if n == 0:
            when = email.utils.formatdate(time.time() + 2, usegmt=True)
            return JSONResponse({"error": "busy"}, 503, headers={"Retry-After": when})
        return JSONResponse({"data": [{"n": n}]})

    app.handler = handler
    assert run_job(_retry_after_job(url)).exit_code == 0
    assert app.times[1] - app.times[0] >= 0.95  # HTTP-dates have whole-second resolution


def _refusing(which: Callable[[int], bool], *, retry_after: str) -> Handler:
    """Answers 429 with ``retry_after`` to the requests ``which`` picks (by number from
    0), and a row to the others."""
    return lambda request, n: (
        JSONResponse({"error": "slow down"}, 429, headers={"Retry-After": retry_after})
        if which(n)
        else JSONResponse({"data": [{"n": n}]})
    )


def _paused_events(events: list[str]) -> Any:
    from backfill.events import EventBus, ResourceChanged

    bus = EventBus()
    bus.subscribe(
        lambda e: (
            events.append(e.what) if isinstance(e, ResourceChanged) and e.kind == "paused" else None
        )
    )
    return bus


def test_a_429_storm_holds_every_refused_request_for_its_retry_after(
    server: tuple[RecordingServer, str],
) -> None:
    """Eight concurrent requests answered 429, all sent before the first was refused: no
    pause (they are one refusal's echoes), the rate comes down, and every refused
    request waits the second it was asked for."""
    app, url = server
    app.handler = _refusing(lambda n: n < 8, retry_after="1")
    job = Job("storm", partitions=daily("2013-01-01", "2013-01-08"))
    api = job.resource("api", rate="1000/s", burst=8, concurrency=8, retries=3)

    @job.stage(resource="api", concurrency=8)
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        await asyncio.sleep(0)
        body = await ctx.http.get_json(f"{url}/x")
        return list(body["data"])

    events: list[str] = []
    assert run_job(job, bus=_paused_events(events)).exit_code == 0
    assert api.pauses == 0 and events == []
    assert api.rate < 1000
    assert len(app.times) == 16
    storm_end = app.times[7]
    assert all(t - storm_end >= 0.9 for t in app.times[8:])


def _days_at_20_a_second(url: str, *, days: int, concurrency: int) -> tuple[Job, Any]:
    """A job fetching ``url``/x?day=... for each of ``days`` days of 2013 through a
    resource of 20/s, burst 1, ``concurrency`` at once; the job and its resource."""
    job = Job("days", partitions=daily("2013-01-01", f"2013-01-{days:02d}"))
    api = job.resource("api", rate="20/s", burst=1, concurrency=concurrency)

    @job.stage(resource="api", concurrency=concurrency)
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        body = await ctx.http.get_json(f"{url}/x", params={"day": partition.key})
        return list(body["data"])

    return job, api


def test_a_lone_429_slows_the_resource_and_only_its_request_waits(
    server: tuple[RecordingServer, str],
) -> None:
    """One request refused with Retry-After: 1 among many accepted: the others go on
    (no second of the whole run lost), and the refused one goes again a second later."""
    app, url = server
    refused: list[str] = []

    def handler(request: Request, n: int) -> Response:
        if n == 12:
            refused.append(request.query_params["day"])
            return JSONResponse({"error": "slow down"}, 429, headers={"Retry-After": "1"})
        return JSONResponse({"data": [{"n": n}]})

    app.handler = handler
    job, api = _days_at_20_a_second(url, days=30, concurrency=4)
    events: list[str] = []
    assert run_job(job, bus=_paused_events(events)).exit_code == 0
    assert api.pauses == 0 and events == []
    refused_at = app.times[12]
    # Others went on within the second the refused request waits, a little slower...
    assert sum(1 for t in app.times[13:] if t - refused_at < 0.9) >= 12
    assert api.rate < 20
    # ...and it went again a second later, once.
    again = [t for t, p in zip(app.times, app.paths, strict=True) if f"day={refused[0]}" in p]
    assert len(again) == 2 and again[1] - again[0] >= 0.95


def test_a_refused_request_s_own_wait_does_not_count_against_the_stage_timeout(
    server: tuple[RecordingServer, str],
) -> None:
    """The second a lone 429 asks its request to wait is the source's wait, not the
    partition's work: a stage of 0.6 s still ends."""
    app, url = server
    app.handler = _refusing(lambda n: n == 0, retry_after="1")
    job = Job("patient", partitions=daily("2013-01-01", "2013-01-01"))
    api = job.resource("api", rate="20/s", burst=1)

    @job.stage(resource="api", timeout=0.6)
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        body = await ctx.http.get_json(f"{url}/x")
        return list(body["data"])

    assert run_job(job).exit_code == 0
    assert api.pauses == 0 and len(app.times) == 2
    assert app.times[1] - app.times[0] >= 0.95


def test_a_source_that_refuses_again_at_the_lower_rate_pauses_the_resource_once(
    server: tuple[RecordingServer, str],
) -> None:
    """A second 429, of a request sent after the first slowed the resource down and
    within the second it asked for: the source insists, and every request waits."""
    app, url = server
    app.handler = _refusing(lambda n: n in (3, 7), retry_after="1")
    job, api = _days_at_20_a_second(url, days=20, concurrency=2)
    events: list[str] = []
    assert run_job(job, bus=_paused_events(events)).exit_code == 0
    assert api.pauses == 1 and events == ["paused (429)"]
    insisted = app.times[7]
    assert all(t - insisted >= 0.9 for t in app.times[8:])


@pytest.mark.xdist_group("cpu_heavy")  # real time: never beside chromium (see test_browser.py)
def test_after_five_seconds_refused_the_rate_is_back_within_a_second(
    server: tuple[RecordingServer, str],
) -> None:
    """A resource of 40/s taken at it for a second and a half, then every request refused
    (429, Retry-After: 1) for five seconds: a request goes within a quarter of the
    outage or so of the source's return, and from a second and a half after the first
    it takes again, most of the rate goes through (halved at every refusal, it was a request
    every few seconds, and came back over minutes). Through the outage, a few requests
    a second. (The client and the server, threads of this process, go ahead of the
    machine's other work where it lets them: see tests/promptly.py.)"""
    app, url = server
    began: list[float] = []

    def handler(request: Request, n: int) -> Response:
        now = time.monotonic()
        if not began:
            began.append(now)
        if 1.5 <= now - began[0] < 6.5:
            return JSONResponse({"error": "down"}, 429, headers={"Retry-After": "1"})
        return JSONResponse({"data": [{"n": n}]})

    app.handler = handler
    job = Job("outage", partitions=daily("2013-01-01", "2013-09-30"))
    api = job.resource("api", rate="40/s", concurrency=4, retries=10)
    rates: list[tuple[float, float]] = []  # (when a stage began, the rate run then)

    @job.stage(resource="api", concurrency=4, retry=RetryPolicy(attempts=5))
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        rates.append((time.monotonic(), api.rate))
        body = await ctx.http.get_json(f"{url}/x", params={"day": partition.key})
        return list(body["data"])

    with promptly():
        assert run_job(job).exit_code == 0
    first = began[0]
    back = first + 6.5
    taken = min(t for t in app.times if t >= back)
    # (The probes are a quarter of the outage so far apart, and a refusal's second.)
    assert taken - back < 2.5
    got = sum(1 for t in app.times if taken + 1.5 <= t < taken + 3.5)
    quarters = [
        sum(1 for t in app.times if first + q / 4 <= t < first + (q + 1) / 4) for q in range(48)
    ]
    run = [
        round(max((r for t, r in rates if first + q / 4 <= t < first + (q + 1) / 4), default=0))
        for q in range(48)
    ]
    assert got >= 0.6 * 40 * 2.0, (
        f"{got} from 1.5 s to 3.5 s after the first taken again, {taken - first:.2f} s in; "
        f"requests per quarter second from the first: {quarters}; the rate run: {run}"
    )
    assert app.times[-1] >= taken + 3.5  # the run still had requests to send then
    assert sum(1 for t in app.times if first + 2.5 <= t < back) <= 5 * 4


def test_server_errors_are_retried_per_request_without_losing_rows(
    server: tuple[RecordingServer, str],
) -> None:
    """5xx and truncated bodies are retried request by request; every row arrives once."""
    app, url = server

    def handler(request: Request, n: int) -> Response:
        if n % 4 == 1:
            return JSONResponse({"error": "oops"}, 502)
        if n % 4 == 2:
            return Response(b'{"data": [{"day": "x"', media_type="application/json")
        return JSONResponse({"data": [{"day": request.query_params["day"]}]})

    app.handler = handler
    from backfill.testing import MemorySink

    sink = MemorySink(key=["day"])
    job = Job("faulty", partitions=daily("2013-01-01", "2013-01-20"), sink=sink)
    job.resource("api", rate="200/s", burst=5, concurrency=4, retries=4)

    @job.stage(resource="api", retry=RetryPolicy(attempts=3, base=0.0))
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        body = await ctx.http.get_json(f"{url}/x", params={"day": partition.key})
        return list(body["data"])

    ledger = open_ledger(":memory:")
    assert run_job(job, ledger).exit_code == 0
    assert sorted(k[0] for k in sink.rows) == [p.key for p in job.stages["fetch"].partitions]
    entries = ledger.entries("faulty", "fetch", status=Status.DONE)
    assert sum(1 for _ in entries) == 20


JOB_FILE = """
import os
from backfill import Job, PermanentError, daily

URL = os.environ["TEST_URL"]
job = Job("guarded", partitions=daily("2013-01-01", "2013-01-05"))
job.resource("source_api", rate="50/s", params={"api_key": "SECRET-KEY-123"}, retries=0)


@job.stage(resource="source_api", concurrency=2)
async def fetch(ctx, partition):
    body = await ctx.http.get_json(f"{URL}/x", params={"day": partition.key})
    return body["data"]
"""


def _cli(workdir: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "backfill.cli", *args],
        cwd=workdir,
        env={"PATH": "/usr/bin:/bin", "TEST_URL": url, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_401_stops_the_run_with_one_line_naming_resource_and_status(
    server: tuple[RecordingServer, str], tmp_path: Path
) -> None:
    """401: exit 2, one line naming the resource and the status, no secret, ledger clean."""
    app, url = server
    app.handler = lambda request, n: JSONResponse({"error": "bad key"}, 401)
    (tmp_path / "job.py").write_text(textwrap.dedent(JOB_FILE))
    result = _cli(tmp_path, url, "run", "job.py", "--progress", "none")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, result.stderr
    assert "resource source_api" in errors[0]
    assert "401" in errors[0]
    assert "SECRET-KEY-123" not in result.stdout + result.stderr
    ledger = open_ledger(f"sqlite:///{tmp_path}/.backfill/state.db")
    counts = ledger.counts("guarded", ["fetch"])["fetch"]
    assert (counts.running, counts.failed, counts.pending) == (0, 0, 5)


def test_secrets_never_reach_the_ledger_or_the_screen(
    server: tuple[RecordingServer, str], tmp_path: Path
) -> None:
    """With an api_key in every URL, failure messages in the ledger and status mask it."""
    app, url = server
    app.handler = lambda request, n: JSONResponse({"error": "no such day"}, 404)
    (tmp_path / "job.py").write_text(textwrap.dedent(JOB_FILE))
    result = _cli(tmp_path, url, "run", "job.py", "--progress", "plain")
    assert result.returncode == 1
    status = _cli(tmp_path, url, "status", "job.py")
    assert "http_404" in status.stdout
    assert "api_key=***" in status.stdout
    for text in (result.stdout, result.stderr, status.stdout, status.stderr):
        assert "SECRET-KEY-123" not in text
    for state_file in (tmp_path / ".backfill").glob("state.db*"):
        assert b"SECRET-KEY-123" not in state_file.read_bytes()
    assert all("api_key=SECRET-KEY-123" in p for p in app.paths)


@pytest.fixture
def bucket_server() -> Iterator[str]:
    """A 20/s token-bucket API (burst 5) in a process of its own (tests/bucket_server.py)."""
    script = Path(__file__).resolve().parent.parent / "bucket_server.py"
    proc = subprocess.Popen(
        [sys.executable, str(script), "20", "5"],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=scheduled_first,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"{url}/accepted", timeout=1)
                break
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.slow
@pytest.mark.xdist_group("cpu_heavy")  # real time: never beside chromium (see test_browser.py)
def test_adaptive_mode_finds_a_hidden_limit_in_real_time(bucket_server: str) -> None:
    """Told nothing, a resource against a server limited to 20/s settles within 10 % of it
    after warm-up, with fewer than 2 % of requests answered 429. The server runs in a
    process of its own and counts requests as the kernel received them; it and the
    client go ahead of the machine's other work where it lets them (tests/promptly.py)."""
    url = bucket_server
    job = Job("adaptive", partitions=daily("2000-01-01", "2013-12-31"))
    api = job.resource("api", adaptive=True, start_rate=5, concurrency=8, retries=5)

    @job.stage(resource="api", concurrency=8)
    async def fetch(ctx: Context, partition: Partition) -> None:
        await ctx.http.get_json(f"{url}/x")

    from backfill import Runner

    rates: list[float] = []  # the rate the resource ran at, each second

    async def run_for(seconds: float) -> None:
        runner = Runner(job, open_ledger(":memory:"))
        task = asyncio.create_task(runner.run())
        for _ in range(int(seconds)):
            await asyncio.sleep(1.0)
            rates.append(round(api.rate, 1))
        runner.stop("interrupted", immediate=True)
        await task

    started = time.monotonic()
    with promptly():
        asyncio.run(run_for(36.0))
    seen = httpx.get(f"{url}/accepted", timeout=10).json()
    accepted, refused = seen["accepted"], seen["refused"]
    late = [t for t in accepted if 12.0 <= t - started < 36.0]
    rate = len(late) / 24.0
    total = len(accepted) + refused
    seconds = [sum(1 for t in accepted if s <= t - started < s + 1) for s in range(36)]
    said = (
        f"admitted per second: {seconds}; the rate run at: {rates}; {refused} refused, "
        f"{api.pauses} pauses, {api.sent_late} sent late"
    )
    assert 18.0 <= rate <= 21.0, f"{rate}/s; {said}"
    assert refused / total < 0.02, (refused, total)


@pytest.mark.xdist_group("cpu_heavy")  # real time: never beside chromium (see test_browser.py)
def test_a_run_starts_at_the_rate_the_run_before_learned(
    bucket_server: str, tmp_path: Path
) -> None:
    """Declared 60/s against a server that takes 20/s (bucket 5): the first run is refused
    down to what the source takes. The next run on the same state starts there, says so
    once, and is not refused its way down again."""
    url = bucket_server
    job = Job("resume", partitions=daily("2013-01-01", "2013-02-19"))
    api = job.resource("api", rate=60, concurrency=8, retries=5)
    first_rate: list[float] = []

    @job.stage(resource="api", concurrency=8)
    async def fetch(ctx: Context, partition: Partition) -> None:
        if not first_rate:
            first_rate.append(api.rate)
        await ctx.http.get_json(f"{url}/x")

    from backfill import Runner
    from backfill.runner import RunOptions

    def run(days: tuple[str, str]) -> tuple[list[str], int]:
        first_rate.clear()
        said: list[str] = []
        ledger = open_ledger(f"sqlite:///{tmp_path / 'state.db'}")
        try:
            selection = Selection(*(date.fromisoformat(day) for day in days))
            runner = Runner(job, ledger, RunOptions(selection=selection))
            api.subscribe(lambda name, what, seconds, kind: said.append(what))
            before = httpx.get(f"{url}/accepted", timeout=10).json()["refused"]
            with promptly():
                result = asyncio.run(runner.run())
            assert result.exit_code == 0, result.message
        finally:
            ledger.close()
        return said, httpx.get(f"{url}/accepted", timeout=10).json()["refused"] - before

    said, refused = run(("2013-01-01", "2013-01-25"))
    assert first_rate[0] >= 58.0, "the first run starts at (a hair under) its declared rate"
    assert refused >= 2, "declared three times too fast, the first run is refused"
    learned = api.state()["settled"]  # the rate run at, or a search's last step accepted
    assert learned <= 20.0
    time.sleep(1.0)  # the server's bucket refills
    said, refused = run(("2013-01-26", "2013-02-19"))
    assert first_rate == [pytest.approx(learned, abs=0.01)], "the second starts where it ended"
    assert said[:1] == [
        f"declared 60/s is more than the source accepted in the last run: starts at "
        f"{learned:.3g}/s, the rate it learned"
    ]
    assert refused <= 1, f"{refused} refused in the second run; it said {said}"


def test_a_failing_source_opens_the_circuit_instead_of_burning_retries(
    server: tuple[RecordingServer, str],
) -> None:
    """While the site is down the circuit opens and holds requests back; when it is back,
    a probe closes the circuit and every partition finishes."""
    app, url = server
    down_until = time.monotonic() + 3.0
    app.handler = lambda request, n: (
        JSONResponse({"error": "down"}, 500)
        if time.monotonic() < down_until
        else JSONResponse({"data": [{"n": n}]})
    )
    job = Job("outage", partitions=daily("2013-01-01", "2013-01-20"))
    job.resource("api", rate="50/s", concurrency=4, retries=50)

    @job.stage(resource="api", concurrency=4)
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        body = await ctx.http.get_json(f"{url}/x")
        return list(body["data"])

    from backfill.events import EventBus, ResourceChanged

    events: list[str] = []
    bus = EventBus()
    bus.subscribe(lambda e: events.append(e.what) if isinstance(e, ResourceChanged) else None)
    result = run_job(job, bus=bus)
    assert result.exit_code == 0
    assert any(e.startswith("circuit open: too many errors") for e in events)
    assert events[-1] == "circuit closed"
    during_outage = sum(1 for t in app.times if t < down_until)
    assert during_outage < 40  # at 50/s an unguarded client would send ~150


def test_waiting_on_a_paused_resource_does_not_count_against_the_stage_timeout(
    server: tuple[RecordingServer, str],
) -> None:
    """A 429 with Retry-After: 2 pauses the resource while partitions wait for their turn;
    with a stage timeout of 0.5 s none of them fails as a timeout (the wait is the
    source's, not the partition's), and every one is done."""
    app, url = server
    app.handler = _refusing(lambda n: n == 0, retry_after="2")
    job = Job("paused", partitions=daily("2013-01-01", "2013-01-12"))
    job.resource("api", rate="50/s", concurrency=4, retries=3)

    @job.stage(resource="api", concurrency=4, timeout=0.5, retry=RetryPolicy(attempts=1))
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        body = await ctx.http.get_json(f"{url}/x")
        return list(body["data"])

    started = time.monotonic()
    result = run_job(job)
    assert result.exit_code == 0, result.message
    assert result.counts["fetch"].done == 12
    assert time.monotonic() - started >= 2.0  # the pause was honoured


def test_a_stage_that_times_out_says_what_the_source_last_did_wrong(
    server: tuple[RecordingServer, str],
) -> None:
    """A partition whose request failed (503) and that then runs out of time in its own
    work fails as a timeout whose message names the source's last error."""
    app, url = server
    app.handler = lambda request, n: JSONResponse({"error": "busy"}, 503)
    job = Job("flaky", partitions=daily("2013-01-01", "2013-01-01"))
    job.resource("api", rate="50/s", retries=0)

    @job.stage(resource="api", timeout=0.6, retry=RetryPolicy(attempts=1))
    async def fetch(ctx: Context, partition: Partition) -> None:
        with contextlib.suppress(Exception):
            await ctx.http.get_json(f"{url}/x")
        await asyncio.sleep(5)  # the stage's own slow work

    ledger = open_ledger(":memory:")
    result = run_job(job, ledger)
    assert result.exit_code == 1
    (entry,) = ledger.entries("flaky", "fetch", status=Status.FAILED)
    assert entry.error_category == "timeout"
    assert "took longer than its timeout of 0.6 s" in (entry.error_message or "")
    assert "the source's last error:" in (entry.error_message or "")
    assert "answered 503" in (entry.error_message or "")


def test_a_request_waits_out_an_open_circuit_for_max_wait_at_most(
    server: tuple[RecordingServer, str],
) -> None:
    """A source down for good: requests wait for its circuit (not spending attempts)
    for max_wait, then the partitions fail with the source's error and how long it was
    down, instead of the run waiting forever."""
    app, url = server
    app.handler = lambda request, n: JSONResponse({"error": "down"}, 503)
    job = Job("down", partitions=daily("2013-01-01", "2013-01-12"))
    job.resource("api", rate="50/s", concurrency=4, retries=1, max_wait=3)

    @job.stage(resource="api", concurrency=4, retry=RetryPolicy(attempts=1))
    async def fetch(ctx: Context, partition: Partition) -> None:
        await ctx.http.get_json(f"{url}/x")

    ledger = open_ledger(":memory:")
    started = time.monotonic()
    result = run_job(job, ledger)
    assert result.exit_code == 1
    assert time.monotonic() - started < 30
    failed = ledger.entries("down", "fetch", status=Status.FAILED)
    assert len(failed) == 12
    # The first few fail on their own retries before the circuit opens; the rest waited.
    waited = [e for e in failed if "longer than max_wait=3 s" in (e.error_message or "")]
    assert len(waited) >= 6, [e.error_message for e in failed]
    assert all("its last error: " in (e.error_message or "") for e in waited)
    assert len(app.times) < 60  # probes, not every partition's retries


class StallOnce:
    """Answers at once, except the ``stall_at``-th request, which hangs ``seconds``."""

    def __init__(self, stall_at: int, seconds: float) -> None:
        self.stall_at = stall_at
        self.seconds = seconds
        self.count = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.count += 1
        n = self.count
        if n == self.stall_at:
            await asyncio.sleep(self.seconds)
        await JSONResponse({"data": [{"n": n}]})(scope, receive, send)


@pytest.fixture
def stalling() -> Iterator[tuple[StallOnce, str]]:
    app = StallOnce(stall_at=30, seconds=6.0)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="critical", access_log=False, lifespan="off")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.01)
    yield app, f"http://127.0.0.1:{sock.getsockname()[1]}"
    uv.should_exit = True
    thread.join(8)
    sock.close()


@pytest.mark.parametrize("hedge", [True, False])
def test_a_stalled_request_is_hedged_instead_of_waited_out(
    stalling: tuple[StallOnce, str], hedge: bool
) -> None:
    """One answer among 40 hangs for 6 s. Hedged (the default), a second copy goes once
    that request is far slower than the source's usual answers, the first answer wins,
    and the run does not wait out the stall; with hedge=False it does."""
    app, url = stalling
    job = Job("hedged", partitions=daily("2013-01-01", "2013-02-09"))
    job.resource("api", rate="50/s", concurrency=2, timeout=10, hedge=hedge)

    @job.stage(resource="api", concurrency=2)
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
        body = await ctx.http.get_json(f"{url}/x")
        return list(body["data"])

    started = time.monotonic()
    result = run_job(job)
    took = time.monotonic() - started
    assert result.exit_code == 0
    assert result.counts["fetch"].done == 40
    if hedge:
        assert took < 5.0, took
        assert app.count == 41  # the copy counts as a request at the source
        assert result.requests == 41
    else:
        assert took >= 6.0
        assert app.count == 40
