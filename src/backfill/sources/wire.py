"""The last moment before a request reaches the wire: where a fleet's start is checked.

A worker of a fleet is handed start instants from one schedule shared by every worker
(see :mod:`backfill.fleet`). Between the moment a start is granted and the moment the
request's first byte is written, the request passes through httpx's connection pool,
whose awaits let other tasks of the event loop run, and the process may be descheduled
by a busy machine: tens of milliseconds, enough to land the request on top of the
starts other workers were given after it. So the check that a start is still on time
is made here, in the network stream's ``write``, with nothing that yields between it
and the socket: a request found late is not sent (:class:`LateStart`, raised before any
byte goes out) and takes a new start.

The network backend is httpcore's public extension point; httpx's transport does not
take one, so :func:`install` puts it into the transport's pool.
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
import typing
from typing import Any

import httpcore
import httpx

from backfill.ratelimit import LateStart, take_grant

__all__ = ["LateStart", "PacedBackend", "install"]


class _PacedStream(httpcore.AsyncNetworkStream):
    """A network stream whose first write of each request checks the request's start."""

    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._socket: socket.socket | None = None

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return await self._inner.read(max_bytes, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # From here to the socket nothing yields to the event loop (anyio writes to the
        # transport at once when its buffer has room), so on time here is on time there.
        grant = take_grant()
        if grant is not None:
            # Handed over early by the way's usual length: wait here for the instant
            # (a late wake is checked again); too late, LateStart.
            wait = grant.at_wire()
            while wait > 0:
                await asyncio.sleep(wait)
                wait = grant.at_wire()
        await self._inner.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._inner.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _PacedStream(await self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # httpcore asks this of every idle connection each time it hands a request a
            # connection; anyio answers by building all of a socket's attributes (a
            # getpeername call among them): 3 ms a request at 100/s with 16 connections.
            # The socket is the same for the stream's life: look it up once.
            if self._socket is None:
                self._socket = self._inner.get_extra_info("socket")
            return _readable(self._socket)
        return self._inner.get_extra_info(info)


def _readable(sock: socket.socket | None) -> bool:
    """Whether ``sock`` has something to read (or is gone): an idle keep-alive connection
    the server closed. None or a closed socket counts as readable, as httpcore does."""
    if sock is None or sock.fileno() < 0:
        return True
    poll = select.poll()
    poll.register(sock, select.POLLIN)
    return bool(poll.poll(0))


class PacedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, with streams that check a fleet start before writing."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend) -> None:
        self._inner = inner

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_tcp(
            host, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )
        return _PacedStream(stream)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        stream = await self._inner.connect_unix_socket(
            path, timeout=timeout, socket_options=socket_options
        )
        return _PacedStream(stream)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def install(transport: httpx.AsyncHTTPTransport) -> bool:
    """Put a :class:`PacedBackend` into ``transport``'s connection pool; False when this
    httpx keeps its pool elsewhere (then fleet starts are checked only when granted)."""
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if not isinstance(backend, httpcore.AsyncNetworkBackend):
        return False
    if not isinstance(backend, PacedBackend):
        pool._network_backend = PacedBackend(backend)  # type: ignore[union-attr]
    return True
