"""The dashboard on loopback without a token answers only requests addressed to loopback,
so a page on another site that rebinds its name to 127.0.0.1 cannot read it."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
import uvicorn

from backfill import Context, Job, Partition, daily
from backfill.ledger import open_ledger
from backfill.testing import run_job
from backfill.web.app import create_app

PATHS = ["/", "/api/snapshot", "/events", "/metrics", "/healthz"]


def small_job() -> Job:
    job = Job("hosts", partitions=daily("2013-01-01", "2013-01-05"))

    @job.stage
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, str]]:
        return [{"day": partition.key}]

    return job


@contextmanager
def served(token: str | None, family: socket.AddressFamily = socket.AF_INET) -> Iterator[int]:
    """Serve the dashboard on a free loopback port in a thread; yield the port."""
    ledger = open_ledger(":memory:")
    job = small_job()
    run_job(job, ledger)
    app = create_app(job, ledger, token=token, interval=0.05)
    sock = socket.socket(family)
    sock.bind(("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="off"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "dashboard did not start"
        time.sleep(0.02)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        ledger.close()


@pytest.fixture
def port() -> Iterator[int]:
    with served(token=None) as bound:
        yield bound


def status(port: int, path: str, host: str, address: str = "127.0.0.1", **kw: str) -> int:
    """The status of GET path with this Host header; for the SSE stream, of its headers."""
    url = f"http://{address}:{port}{path}"
    with (
        httpx.Client(timeout=5) as client,
        client.stream("GET", url, headers={"Host": host, **kw}) as response,
    ):
        return response.status_code


@pytest.mark.parametrize("path", PATHS)
def test_a_foreign_host_is_refused_on_every_path(port: int, path: str) -> None:
    """Host: evil.example:PORT (a rebound name) gets 403 on the page, the snapshot, the
    stream, the metrics and the health check alike; so do a wrong port and no name."""
    assert status(port, path, f"evil.example:{port}") == 403
    assert status(port, path, "evil.example") == 403
    assert status(port, path, f"127.0.0.1:{port + 1}") == 403
    assert status(port, path, f"localhost.evil.example:{port}") == 403
    assert status(port, path, "") in (400, 403)


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "localhost:{port}", "[::1]:{port}"])
def test_loopback_names_with_the_served_port_are_answered(port: int, host: str) -> None:
    """127.0.0.1, localhost and [::1] with the port served are the dashboard's own."""
    for path in ("/", "/api/snapshot", "/metrics"):
        assert status(port, path, host.format(port=port)) == 200


def test_the_refusal_is_one_line_saying_where_the_dashboard_is(port: int) -> None:
    """The 403 body is one line naming the addresses that work."""
    response = httpx.get(
        f"http://127.0.0.1:{port}/api/snapshot", headers={"Host": "evil.example"}, timeout=5
    )
    assert response.status_code == 403
    assert response.text.count("\n") == 1
    assert f"http://127.0.0.1:{port}/" in response.text
    assert "stages" not in response.text


def test_an_ipv6_loopback_dashboard_checks_hosts_too() -> None:
    """Served on [::1], [::1]:PORT is answered and a foreign name refused."""
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    with served(token=None, family=socket.AF_INET6) as port:
        assert status(port, "/api/snapshot", f"[::1]:{port}", address="[::1]") == 200
        assert status(port, "/api/snapshot", f"evil.example:{port}", address="[::1]") == 403


def test_with_a_token_the_token_decides() -> None:
    """With a token the Host is not what guards: the token is (401 without, 200 with)."""
    with served(token="t0ken") as port:
        assert status(port, "/api/snapshot", f"evil.example:{port}") == 401
        bearer = {"Authorization": "Bearer t0ken"}
        assert status(port, "/api/snapshot", f"dashboard.example:{port}", **bearer) == 200
