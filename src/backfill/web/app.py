"""The dashboard's web app: one page, a Server-Sent Events stream, JSON and ``/metrics``.

Thin: it parses requests and renders what :class:`~backfill.web.snapshot.Dashboard`
reads from the ledger. Bound to loopback it needs no token; elsewhere every request must
carry the token (``?token=`` or ``Authorization: Bearer``). Without a token it answers
only requests addressed to loopback by their ``Host`` header, so a page on another site
whose name is rebound to 127.0.0.1 (DNS rebinding) cannot read it.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from backfill.errors import ConfigError
from backfill.job import Job
from backfill.ledger import Ledger
from backfill.web.metrics import render_metrics
from backfill.web.snapshot import Dashboard, StateReader

__all__ = ["DashboardApp", "check_bind", "create_app"]

Handler = Callable[[Request], Awaitable[Response]]

# Reading the ledger takes at most this share of the time, however large the job and
# however many clients ask: after a read that took t seconds the next waits 4 t.
_BUSY_SHARE = 0.2


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


_LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]"})


def host_is_loopback(header: str, server: tuple[str, int] | None) -> bool:
    """Whether a request's ``Host`` header names this server on loopback: 127.0.0.1,
    localhost, [::1] or the address it is bound to, with the port it serves (no port
    only when that is 80, the default for http)."""
    if server is None:
        return False
    bound, port = server
    header = header.lower()
    if header.startswith("["):
        name, bracket, rest = header.partition("]")
        name += bracket
        if rest and not rest.startswith(":"):
            return False
        given = rest[1:]
    else:
        name, _, given = header.partition(":")
    own = f"[{bound}]" if ":" in bound else bound
    if name not in _LOOPBACK_NAMES and name != own:
        return False
    return given == str(port) or (given == "" and port == 80)


def check_bind(host: str, token: str | None) -> None:
    """Refuse to expose the dashboard beyond this machine without a token."""
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"refusing to serve the dashboard on {host} without a token; pass --token "
            "(or set BACKFILL_DASHBOARD_TOKEN), or bind 127.0.0.1"
        )


class DashboardApp:
    """The ASGI app; ``streams`` counts the SSE streams open right now."""

    def __init__(
        self,
        job: Job,
        state: Ledger | StateReader,
        *,
        token: str | None = None,
        interval: float = 1.0,
    ) -> None:
        self.dashboard = Dashboard(job, state)
        self.job = job
        self.token = token
        self.interval = interval
        self.streams = 0
        self._latest: dict[str, Any] | None = None
        self._latest_at = -float("inf")
        self._cost = 0.0
        self._lock = asyncio.Lock()
        self._page = (
            resources.files("backfill.web").joinpath("dashboard.html").read_text(encoding="utf-8")
        )
        routes = [
            Route("/", self._guard(self.page)),
            Route("/events", self._guard(self.events)),
            Route("/api/snapshot", self._guard(self.snapshot_json)),
            Route("/metrics", self._guard(self.metrics)),
            Route("/healthz", self.health),
        ]
        self.app = Starlette(routes=routes)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.token is None and scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            server = scope.get("server")
            if not host_is_loopback(host, server):
                port = server[1] if server else "PORT"
                refusal = PlainTextResponse(
                    f"this dashboard answers only at http://127.0.0.1:{port}/, "
                    f"http://localhost:{port}/ or http://[::1]:{port}/\n",
                    status_code=403,
                )
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _guard(self, handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            if self.token is not None:
                supplied = request.query_params.get("token", "")
                auth = request.headers.get("authorization", "")
                if auth.lower().startswith("bearer "):
                    supplied = auth[7:]
                if not hmac.compare_digest(supplied.encode(), self.token.encode()):
                    return PlainTextResponse("a valid token is required\n", status_code=401)
            return await handler(request)

        return guarded

    async def snapshot(self) -> dict[str, Any]:
        """The latest snapshot, read again from the ledger at most once per half interval
        however many clients ask, and less often when a read is slow (see _BUSY_SHARE)."""
        async with self._lock:
            rest = max(self.interval / 2, self._cost * (1 / _BUSY_SHARE - 1))
            if self._latest is None or time.monotonic() - self._latest_at >= rest:
                start = time.monotonic()
                self._latest = await run_in_threadpool(self.dashboard.snapshot)
                self._latest_at = time.monotonic()
                self._cost = self._latest_at - start
            return self._latest

    async def page(self, request: Request) -> Response:
        return HTMLResponse(self._page.replace("__JOB__", self.job.name))

    async def snapshot_json(self, request: Request) -> Response:
        return JSONResponse(await self.snapshot())

    async def metrics(self, request: Request) -> Response:
        body = await run_in_threadpool(lambda: render_metrics(self.job, self.dashboard.ledger))
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "streams": self.streams})

    async def events(self, request: Request) -> Response:
        return EventSourceResponse(self._stream(), ping=15)

    async def _stream(self) -> AsyncIterator[dict[str, str]]:
        # sse-starlette cancels this generator when the client goes away.
        self.streams += 1
        try:
            while True:
                snapshot = await self.snapshot()
                yield {"event": "snapshot", "data": json.dumps(snapshot)}
                await asyncio.sleep(self.interval)
        finally:
            self.streams -= 1


def create_app(
    job: Job, state: Ledger | StateReader, *, token: str | None = None, interval: float = 1.0
) -> DashboardApp:
    """The dashboard for ``job`` on ``state`` (a ledger, or a :class:`StateReader` of a
    state that may not exist yet), refreshing every ``interval`` seconds."""
    return DashboardApp(job, state, token=token, interval=interval)
