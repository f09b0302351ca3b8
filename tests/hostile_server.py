"""A deliberately hostile HTTP source on loopback, for tests of what a source may send.

:class:`HostileServer` listens on two ephemeral ports of 127.0.0.1: two origins (a port
is part of an origin), ``origin`` and ``other``, so a test can send a client from one
to the other and see what each received (:attr:`HostileServer.seen`). It speaks plain
HTTP/1.1 itself, on its own event loop in a thread, so that it can send what a well-
behaved server framework never would. Every answer closes its connection; every
handler is cut off after :data:`HANDLER_SECONDS`, and :meth:`HostileServer.stop` ends
everything still running, so a test always stops by itself.

Routes (both origins serve all of them; query parameters in brackets):

``/echo``
    200, JSON: ``data`` (an empty list) and what arrived (``origin``, ``method``,
    ``target``, ``headers``).
``/next`` [page=1, last=3, to=ORIGIN, mask=PARAM, link=1]
    Page ``page`` of ``last``: ``{"data": [page], "next": URL}``, the next page's URL
    on origin ``to`` (default: this one), carrying ``PARAM=***`` when ``mask`` is given
    (an echoed, masked credential). ``link=1`` puts the next URL in a ``Link`` header
    and answers the bare list instead.
``/next-loop``
    ``{"data": [1], "next": <its own URL>}``: a pagination that never ends.
``/redirect`` [to=URL, status=302]
    A redirect to ``to``.
``/redirect-loop``
    A 302 to itself.
``/header`` [h=NAME:VALUE (repeatable), status=200]
    ``{"data": []}`` with those headers.
``/deep`` [depth=100000]
    A JSON array nested ``depth`` levels deep.
``/html``
    200 with an HTML page where JSON was expected.
``/gzip-bomb``
    About 1 MB that decodes (``Content-Encoding: gzip``) to 1 GiB of zero bytes.
``/endless``
    A chunked body that never ends (64 KiB chunks, as fast as the client reads).
``/trickle`` [size=100, every=2]
    ``Content-Length: size``, one byte every ``every`` seconds.

More routes: :meth:`HostileServer.route`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import struct
import threading
import urllib.parse
import zlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["HANDLER_SECONDS", "HostileServer", "Request", "Seen", "gzip_bomb", "respond"]

# No handler runs longer than this (an endless stream or a trickle included).
HANDLER_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Seen:
    """One request as it arrived: on which origin, and with which headers."""

    origin: str
    method: str
    target: str
    headers: dict[str, str]

    @property
    def query(self) -> dict[str, list[str]]:
        return urllib.parse.parse_qs(urllib.parse.urlsplit(self.target).query)


@dataclass(frozen=True, slots=True)
class Request:
    """A request being answered: ``origin`` is the listener's own origin."""

    origin: str
    method: str
    target: str
    headers: dict[str, str]
    body: bytes
    pairs: list[tuple[str, str]] = field(default_factory=list)

    @property
    def query(self) -> dict[str, str]:
        """The query's parameters (the last value of a repeated one)."""
        return dict(self.pairs)

    @property
    def path(self) -> str:
        return urllib.parse.urlsplit(self.target).path

    @property
    def url(self) -> str:
        return self.origin + self.target


Handler = Callable[[Request, asyncio.StreamWriter], Awaitable[None]]

_REASONS = {200: "OK", 301: "Moved", 302: "Found", 303: "See Other", 307: "Temporary",
            308: "Permanent", 404: "Not Found", 429: "Too Many Requests",
            503: "Unavailable"}  # fmt: skip


async def respond(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes = b"",
    headers: list[tuple[str, str]] | None = None,
    *,
    content_type: str = "application/json",
) -> None:
    """Write a whole answer, with a ``Content-Length``, and close the connection."""
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Whatever')}"]
    lines += [f"{k}: {v}" for k, v in headers or []]
    lines += [f"content-type: {content_type}", f"content-length: {len(body)}"]
    lines += ["connection: close", "", ""]
    writer.write("\r\n".join(lines).encode("latin-1") + body)
    await writer.drain()


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


@functools.cache
def gzip_bomb() -> bytes:
    """A gzip member of about 1 MB that decodes to 1 GiB of zero bytes.

    Built from one compressed MiB repeated: after a full flush the compressor forgets
    what came before, so each MiB compresses to the same bytes (seconds instead of
    compressing a whole GiB).
    """
    mib = bytes(1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    first = compressor.compress(mib) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(mib) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(1024):
        crc = zlib.crc32(mib, crc)
    # A final, empty stored-less block (BFINAL=1, fixed Huffman, end of block), then the
    # gzip trailer: CRC-32 and size modulo 2**32 of the decoded data.
    return first + block * 1023 + b"\x03\x00" + struct.pack("<II", crc, (1 << 30) & 0xFFFFFFFF)


async def _echo(request: Request, writer: asyncio.StreamWriter) -> None:
    body = {
        "data": [],
        "origin": request.origin,
        "method": request.method,
        "target": request.target,
        "headers": request.headers,
    }
    await respond(writer, 200, _json(body))


async def _next(request: Request, writer: asyncio.StreamWriter) -> None:
    q = request.query
    page, last = int(q.get("page", "1")), int(q.get("last", "3"))
    link = None
    if page < last:
        params = {k: v for k, v in q.items() if k not in ("page", "mask")}
        params["page"] = str(page + 1)
        query = urllib.parse.urlencode(params)
        if "mask" in q:
            query += f"&{q['mask']}=***"
        link = f"{q.get('to', request.origin)}/next?{query}"
    if q.get("link") == "1":
        headers = [("link", f'<{link}>; rel="next"')] if link else []
        await respond(writer, 200, _json([page]), headers)
    else:
        await respond(writer, 200, _json({"data": [page], "next": link}))


async def _next_loop(request: Request, writer: asyncio.StreamWriter) -> None:
    await respond(writer, 200, _json({"data": [1], "next": request.url}))


async def _redirect(request: Request, writer: asyncio.StreamWriter) -> None:
    status = int(request.query.get("status", "302"))
    await respond(writer, status, b"", [("location", request.query["to"])])


async def _redirect_loop(request: Request, writer: asyncio.StreamWriter) -> None:
    await respond(writer, 302, b"", [("location", request.target)])


async def _header(request: Request, writer: asyncio.StreamWriter) -> None:
    status = int(request.query.get("status", "200"))
    headers = []
    for key, value in request.pairs:
        if key == "h":
            name, _, text = value.partition(":")
            headers.append((name, text))
    await respond(writer, status, _json({"data": []}), headers)


async def _deep(request: Request, writer: asyncio.StreamWriter) -> None:
    depth = int(request.query.get("depth", "100000"))
    await respond(writer, 200, b"[" * depth + b"]" * depth)


async def _html(request: Request, writer: asyncio.StreamWriter) -> None:
    page = b"<html><body><h1>Scheduled maintenance</h1></body></html>"
    await respond(writer, 200, page, content_type="text/html")


async def _gzip_bomb(request: Request, writer: asyncio.StreamWriter) -> None:
    body = await asyncio.get_running_loop().run_in_executor(None, gzip_bomb)
    await respond(writer, 200, body, [("content-encoding", "gzip")])


async def _endless(request: Request, writer: asyncio.StreamWriter) -> None:
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    chunk = b"%x\r\n%s\r\n" % (64 * 1024, b" " * 64 * 1024)
    while True:
        writer.write(chunk)
        await writer.drain()


async def _trickle(request: Request, writer: asyncio.StreamWriter) -> None:
    size, every = int(request.query.get("size", "100")), float(request.query.get("every", "2"))
    writer.write(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nconnection: close\r\n\r\n" % size
    )
    for _ in range(size):
        writer.write(b" ")
        await writer.drain()
        await asyncio.sleep(every)


class HostileServer:
    """Two loopback origins serving the routes above; see the module's docstring.

    Example::

        with HostileServer.running() as server:
            ...  # requests to server.origin and server.other
            assert not [s for s in server.seen if s.origin == server.other]
    """

    def __init__(self) -> None:
        self.routes: dict[str, Handler] = {
            "/echo": _echo,
            "/next": _next,
            "/next-loop": _next_loop,
            "/redirect": _redirect,
            "/redirect-loop": _redirect_loop,
            "/header": _header,
            "/deep": _deep,
            "/html": _html,
            "/gzip-bomb": _gzip_bomb,
            "/endless": _endless,
            "/trickle": _trickle,
        }
        self.seen: list[Seen] = []
        self.origin = ""
        self.other = ""
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def route(self, path: str, handler: Handler) -> None:
        """Answer ``path`` (on both origins) with ``handler(request, writer)``."""
        self.routes[path] = handler

    def seen_on(self, origin: str) -> list[Seen]:
        """The requests that reached ``origin`` so far."""
        with self._lock:
            return [s for s in self.seen if s.origin == origin]

    @classmethod
    @contextlib.contextmanager
    def running(cls) -> Iterator[HostileServer]:
        """A started server, stopped on the way out."""
        server = cls()
        server.start()
        try:
            yield server
        finally:
            server.stop()

    def start(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            try:
                asyncio.run(self._serve(ready))
            except BaseException as exc:  # surfaced by start()
                failure.append(exc)
                ready.set()

        self._thread = threading.Thread(target=serve, name="hostile-server", daemon=True)
        self._thread.start()
        if not ready.wait(10) or failure:
            raise RuntimeError(f"the hostile server did not start: {failure}")

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(10)

    async def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        servers = []
        origins = []
        for _ in range(2):
            holder: list[str] = []
            server = await asyncio.start_server(
                functools.partial(self._connection, holder), "127.0.0.1", 0
            )
            port = server.sockets[0].getsockname()[1]
            holder.append(f"http://127.0.0.1:{port}")
            origins.append(holder[0])
            servers.append(server)
        self.origin, self.other = origins
        ready.set()
        try:
            await self._stopped.wait()
        finally:
            for server in servers:
                server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _connection(
        self, holder: list[str], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            async with asyncio.timeout(HANDLER_SECONDS):
                await self._answer(holder[0], reader, writer)
        except (
            TimeoutError,
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
        ):
            pass  # the client went away, or sent what no route answers
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(
        self, origin: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # More than the reader's 64 KiB limit of head is a LimitOverrunError: no answer.
        head = await reader.readuntil(b"\r\n\r\n")
        first, *lines = head.decode("latin-1").split("\r\n")
        method, target, _ = first.split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines:
            if ":" in line:
                name, value = line.split(":", 1)
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await reader.readexactly(length) if length else b""
        pairs = urllib.parse.parse_qsl(urllib.parse.urlsplit(target).query)
        with self._lock:
            self.seen.append(Seen(origin, method, target, headers))
        handler = self.routes.get(urllib.parse.urlsplit(target).path)
        request = Request(origin, method, target, headers, body, pairs)
        if handler is None:
            await respond(writer, 404, _json({"error": f"no route {request.path}"}))
            return
        try:
            await handler(request, writer)
        except (KeyError, ValueError) as exc:
            # A query the route cannot use (e.g. a client that dropped it): say so.
            await respond(writer, 400, _json({"error": f"bad query: {exc!r}"}))
