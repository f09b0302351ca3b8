"""The dashboard app in process, on loopback: snapshot, SSE streams, token, /metrics."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from backfill import Context, Job, Partition, PermanentError, RetryPolicy, daily
from backfill.errors import ConfigError
from backfill.ledger import Ledger, open_ledger
from backfill.testing import run_job
from backfill.web.app import DashboardApp, check_bind, create_app


def sample_job() -> Job:
    job = Job("web", partitions=daily("2013-01-01", "2013-01-31"))

    @job.stage(retry=RetryPolicy(attempts=1, base=0.0))
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, str]]:
        if partition.start.day == 13:
            raise PermanentError("injected: no data on the 13th", category="INJECTED")
        return [{"day": partition.key}, {"day": partition.key + "b"}]

    return job


class Served:
    def __init__(self, app: DashboardApp) -> None:
        self.app = app
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="critical", lifespan="off")
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            await self.server.serve(sockets=[self.sock])

        asyncio.run(main())

    def tasks(self) -> int:
        assert self.loop is not None

        async def count() -> int:
            return len(asyncio.all_tasks())

        return asyncio.run_coroutine_threadsafe(count(), self.loop).result(5)


@pytest.fixture
def ledger() -> Ledger:
    store = open_ledger(":memory:")
    run_job(sample_job(), store)
    return store


def serve(app: DashboardApp) -> Iterator[Served]:
    served = Served(app)
    served.thread.start()
    deadline = time.monotonic() + 10
    while not served.server.started:
        assert time.monotonic() < deadline, "dashboard did not start"
        time.sleep(0.02)
    try:
        yield served
    finally:
        served.server.should_exit = True
        served.thread.join(10)
        served.sock.close()


@pytest.fixture
def served(ledger: Ledger) -> Iterator[Served]:
    yield from serve(create_app(sample_job(), ledger, interval=0.05))


@pytest.fixture
def served_with_token(ledger: Ledger) -> Iterator[Served]:
    yield from serve(create_app(sample_job(), ledger, token="t0ken", interval=0.05))


def test_snapshot_has_progress_failures_calendar_and_runs(served: Served) -> None:
    """The JSON snapshot reports the ledger's counts, the failed partition's message, a
    calendar day per partition and the run with its metrics."""
    snap = httpx.get(f"{served.url}/api/snapshot", timeout=5).json()
    [stage] = snap["stages"]
    assert (stage["total"], stage["done"], stage["failed"], stage["records"]) == (31, 30, 1, 60)
    assert snap["failures"][0]["key"] == "2013-01-13"
    assert "injected" in snap["failures"][0]["message"]
    assert len(snap["calendar"]["days"]) == 31
    assert snap["calendar"]["days"][12] == "failed"
    assert snap["runs"][0]["partitions"] == 31


def test_page_is_self_contained(served: Served) -> None:
    """The page loads nothing from elsewhere: no external script, style or font."""
    html = httpx.get(served.url, timeout=5).text
    assert "<script>" in html and "EventSource" in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in html


def test_sse_streams_end_when_clients_disconnect(served: Served) -> None:
    """100 clients connect, read a snapshot and leave: the server closes every stream
    and holds no more tasks than before."""
    before = served.tasks()
    with httpx.Client(timeout=5) as client:
        for _ in range(100):
            with client.stream("GET", f"{served.url}/events") as response:
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        break
    deadline = time.monotonic() + 10
    while served.app.streams and time.monotonic() < deadline:
        time.sleep(0.05)
    assert served.app.streams == 0
    assert served.tasks() <= before + 2


def test_token_is_required_when_set(served_with_token: Served) -> None:
    """Without the token every page answers 401; with it (query or bearer) 200."""
    url = served_with_token.url
    assert httpx.get(f"{url}/api/snapshot", timeout=5).status_code == 401
    assert httpx.get(f"{url}/metrics", timeout=5).status_code == 401
    assert httpx.get(f"{url}/api/snapshot?token=t0ken", timeout=5).status_code == 200
    headers = {"Authorization": "Bearer t0ken"}
    assert httpx.get(f"{url}/metrics", headers=headers, timeout=5).status_code == 200


def test_binding_beyond_loopback_needs_a_token() -> None:
    """0.0.0.0 without a token is refused in one sentence; loopback or a token is fine."""
    with pytest.raises(ConfigError, match=r"refusing to serve the dashboard on 0\.0\.0\.0"):
        check_bind("0.0.0.0", None)
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("0.0.0.0", "secret")


def test_metrics_parse_and_match_the_ledger(served: Served, ledger: Ledger) -> None:
    """/metrics parses with prometheus-client's parser; its counters equal the ledger's
    counts, and the duration histogram counts every finished partition."""
    text = httpx.get(f"{served.url}/metrics", timeout=5).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    counts = ledger.counts("web", ["fetch"])["fetch"]
    labels = (("job", "web"), ("outcome", "done"), ("stage", "fetch"))
    assert samples[("backfill_partitions_finished_total", labels)] == counts.done
    failed = (("job", "web"), ("outcome", "failed"), ("stage", "fetch"))
    assert samples[("backfill_partitions_finished_total", failed)] == counts.failed
    records = (("job", "web"), ("stage", "fetch"))
    assert samples[("backfill_records_total", records)] == counts.records == 60
    hist = (("job", "web"), ("resource", ""), ("stage", "fetch"))
    assert samples[("backfill_partition_duration_seconds_count", hist)] == counts.finished
    assert all("partition" not in dict(key[1]) for key in samples)
