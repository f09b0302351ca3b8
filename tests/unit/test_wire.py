"""A fleet's start is checked where the request is written: late there, it is not sent."""

from __future__ import annotations

import asyncio
import itertools
import time

import httpx
import pytest

from backfill.ratelimit import Grant, Resource, WireGap, take_grant
from backfill.ratelimit.sharing import Taken
from backfill.sources import wire
from backfill.sources.http import HttpClient


class ShiftClock:
    """The system clock, moved ahead on demand (a process that was descheduled)."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def time(self) -> float:
        return time.time() + self.ahead

    def monotonic(self) -> float:
        return time.monotonic() + self.ahead

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class FleetSchedule:
    """A shared rate granting every start at once, on the worker's own clock."""

    def __init__(self, clock: ShiftClock) -> None:
        self.clock = clock
        self.taken = 0

    async def take(self, count: int) -> Taken:
        self.taken += count
        now = self.clock.monotonic()
        return Taken([now] * count, 0.0)

    def pause(self, seconds: float) -> None:
        raise AssertionError("not paused here")


async def _serve(counter: list[int]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            if not head:
                break
            counter.append(1)
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b'content-length: 11\r\n\r\n{"ok":true}'
            )
            await writer.drain()

    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handle(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(guarded, "127.0.0.1", 0)


def test_a_fleet_start_gone_stale_on_the_way_to_the_wire_is_not_sent() -> None:
    """A request whose start came due, then waited past half an interval before its
    first byte was written (the loop or the CPU was busy), never reaches the server: it
    takes a new start from the fleet's schedule, and only that one goes out."""
    clock = ShiftClock()
    resource = Resource("api", rate=20, clock=clock)
    schedule = FleetSchedule(clock)
    resource.share_with(schedule)
    received: list[int] = []

    async def main() -> tuple[object, int]:
        server = await _serve(received)
        port = server.sockets[0].getsockname()[1]
        client = HttpClient(resource=resource)
        stalls = [0.2]

        async def stall(request: httpx.Request) -> None:
            # Between the start being granted and the write: 200 ms, four intervals.
            if stalls:
                clock.ahead += stalls.pop()

        client._client.event_hooks = {"request": [stall], "response": []}
        try:
            body = await client.get_json(f"http://127.0.0.1:{port}/v1/x")
        finally:
            await client.aclose()
            server.close()
            await server.wait_closed()
        return body, client.requests

    body, sent = asyncio.run(main())
    assert body == {"ok": True}
    assert received == [1]
    assert sent == 1
    assert schedule.taken == 2
    assert resource.late_starts == 1
    assert resource.requests == 1


def test_a_start_on_time_at_the_wire_goes_out_once() -> None:
    """Without a stall the first start is used: one start taken, one request sent. (At
    2/s a start may reach the wire a quarter second late: a busy machine's scheduling
    alone, at 20/s 25 ms, took one again in a run of the suite.)"""
    clock = ShiftClock()
    resource = Resource("api", rate=2, clock=clock)
    schedule = FleetSchedule(clock)
    resource.share_with(schedule)
    received: list[int] = []

    async def main() -> None:
        server = await _serve(received)
        port = server.sockets[0].getsockname()[1]
        client = HttpClient(resource=resource)
        try:
            for _ in range(3):
                await client.get_json(f"http://127.0.0.1:{port}/v1/x")
        finally:
            await client.aclose()
            server.close()
            await server.wait_closed()

    asyncio.run(main())
    assert received == [1, 1, 1]
    assert schedule.taken == 3
    assert resource.late_starts == 0


def test_the_wire_check_is_installed_in_the_default_transport() -> None:
    """This httpx keeps its pool where the check is put in; an upgrade that moves it
    fails here rather than silently dropping the check."""
    transport = httpx.AsyncHTTPTransport()
    assert wire.install(transport)
    assert isinstance(transport._pool._network_backend, wire.PacedBackend)
    assert wire.install(transport)  # twice is once
    assert not isinstance(transport._pool._network_backend._inner, wire.PacedBackend)


def test_a_grant_is_made_only_for_fleet_starts_and_taken_once() -> None:
    """A slow resource of one process leaves its spacing at the wire (never refused); a fleet
    start leaves a grant that the first write takes, with the start's deadline."""

    async def main() -> tuple[object, Grant | None, object]:
        alone = Resource("api", rate=5)
        await alone.acquire()
        after_alone = take_grant()
        clock = ShiftClock()
        shared = Resource("api", rate=20, clock=clock)
        shared.share_with(FleetSchedule(clock))
        await shared.acquire()
        grant = take_grant()
        again = take_grant()
        return after_alone, grant, again

    after_alone, grant, again = asyncio.run(main())
    assert isinstance(after_alone, WireGap) and again is None
    assert grant is not None and grant.deadline == pytest.approx(grant.start + 0.025)


class LaterSchedule(FleetSchedule):
    """Grants every start ``ahead`` seconds in the future."""

    def __init__(self, clock: ShiftClock, ahead: float) -> None:
        super().__init__(clock)
        self.ahead = ahead

    async def take(self, count: int) -> Taken:
        starts, paused, *_ = await super().take(count)
        return Taken([start + self.ahead for start in starts], paused)


def test_a_start_handed_over_early_waits_at_the_wire_for_its_instant() -> None:
    """With the way to the wire measured at 100 ms, a start is handed over ahead of its
    instant and the request waits at the wire: it reaches the server no earlier than its
    start, and not late."""
    clock = ShiftClock()
    resource = Resource("api", rate=20, clock=clock)
    resource.share_with(LaterSchedule(clock, 0.4))
    resource.wire.way = 0.1
    received: list[int] = []
    arrivals: list[float] = []

    async def main() -> float:
        server = await _serve(received)
        port = server.sockets[0].getsockname()[1]
        client = HttpClient(resource=resource)

        async def note(request: httpx.Request) -> None:
            arrivals.append(clock.monotonic())

        client._client.event_hooks = {"request": [note], "response": []}
        began = clock.monotonic()
        try:
            await client.get_json(f"http://127.0.0.1:{port}/v1/x")
        finally:
            await client.aclose()
            server.close()
            await server.wait_closed()
        return began

    began = asyncio.run(main())
    assert received == [1]
    # Handed over 150 ms (1.5 x the way) before its instant, 400 ms out.
    assert arrivals[0] - began < 0.4 - 0.1
    assert resource.late_starts == 0


def test_a_request_too_slow_for_every_start_goes_after_a_few_misses() -> None:
    """A process so busy that every granted start is stale by the time its request is
    written: after a few misses the request goes anyway (said once), rather than asking
    for starts forever."""
    clock = ShiftClock()
    resource = Resource("api", rate=20, clock=clock)
    schedule = FleetSchedule(clock)
    resource.share_with(schedule)
    received: list[int] = []

    async def main() -> None:
        server = await _serve(received)
        port = server.sockets[0].getsockname()[1]
        client = HttpClient(resource=resource)

        async def stall(request: httpx.Request) -> None:
            clock.ahead += 0.2  # every time: the way to the wire always takes 200 ms

        client._client.event_hooks = {"request": [stall], "response": []}
        try:
            await client.get_json(f"http://127.0.0.1:{port}/v1/x")
        finally:
            await client.aclose()
            server.close()
            await server.wait_closed()

    asyncio.run(main())
    assert received == [1]
    assert resource.late_starts == 5
    assert resource.sent_late == 1
    assert schedule.taken == 6


def test_one_process_keeps_its_rate_between_the_instants_requests_reach_the_wire() -> None:
    """At 5/s, the first request's way to the wire is slow (a new connection, 150 ms):
    the second, whose turn comes on time, waits at the wire for the rest of its interval
    instead of reaching a strict source 50 ms after the first."""
    from wire_stamps import WireStamps

    resource = Resource("api", rate=5)
    received: list[int] = []

    async def main() -> list[float]:
        server = await _serve(received)
        port = server.sockets[0].getsockname()[1]
        wire = WireStamps(f"http://127.0.0.1:{port}", prefix=b"/v1")
        client = HttpClient(resource=resource)
        slow = [0.15]

        async def cold(request: httpx.Request) -> None:
            if slow:
                await asyncio.sleep(slow.pop())

        client._client.event_hooks = {"request": [cold], "response": []}
        try:
            await asyncio.gather(*(client.get_json(f"{wire.url}/v1/x") for _ in range(4)))
        finally:
            await client.aclose()
            wire.close()
            server.close()
            await server.wait_closed()
        return sorted(wire.times)

    times = asyncio.run(main())
    assert len(times) == 4
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= 0.2 - 0.01, gaps


def test_readable_tells_an_idle_socket_from_one_its_peer_closed() -> None:
    import socket

    left, right = socket.socketpair()
    try:
        assert wire._readable(left) is False  # open, nothing to read
        right.close()
        assert wire._readable(left) is True  # the peer hung up: b"" waits to be read
    finally:
        left.close()
    assert wire._readable(left) is True  # closed: httpcore drops it
    assert wire._readable(None) is True


def test_a_keep_alive_connection_the_server_closed_is_not_reused() -> None:
    """The pool asks each idle connection whether it is readable before reusing it; the
    stream answers from the socket it looked up once."""
    connections: list[int] = []

    async def main() -> list[int]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            connections.append(1)
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                b'content-length: 11\r\n\r\n{"ok":true}'
            )
            await writer.drain()
            writer.close()  # no "Connection: close": the client believes it may reuse it

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = HttpClient(timeout=5.0, retries=0)
        try:
            statuses = []
            for _ in range(3):
                await asyncio.sleep(0.05)  # the close reaches the client's socket
                statuses.append((await client.get_json(f"http://127.0.0.1:{port}/x"))["ok"])
            assert statuses == [True, True, True]
        finally:
            await client.aclose()
            server.close()
            await server.wait_closed()
        return connections

    assert len(asyncio.run(main())) == 3


def test_a_hedged_copy_whose_fleet_start_goes_stale_takes_a_new_start_and_goes() -> None:
    """In a fleet, a page stalls at the source, so the client sends a second copy; the
    copy's start goes stale on its way to the wire (the loop was busy). It is not sent on
    it: it takes a new start and goes then, and wins the race. Counted once: the copy
    that was not sent is no request (it was dropped, and counted as sent)."""
    clock = ShiftClock()
    resource = Resource("api", rate=20, clock=clock)
    schedule = FleetSchedule(clock)
    resource.share_with(schedule)
    received: list[bytes] = []

    async def main() -> tuple[float, int, int]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    received.append(head.split(b" ")[1])
                    if head.split(b" ")[1] == b"/v1/stall" and received.count(b"/v1/stall") == 1:
                        await asyncio.sleep(5.0)  # the first copy stalls
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                        b'content-length: 11\r\n\r\n{"ok":true}'
                    )
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = HttpClient(resource=resource, timeout=10.0)
        for _ in range(20):  # latencies to hedge by
            await client.get_json(f"http://127.0.0.1:{port}/v1/x")
        stall_paths: list[str] = []

        async def stall(request: httpx.Request) -> None:
            if request.url.path == "/v1/stall":
                stall_paths.append(request.url.path)
                if len(stall_paths) == 2:
                    clock.ahead += 0.2  # the copy's way to the wire: four intervals

        client._client.event_hooks = {"request": [stall], "response": []}
        began = time.monotonic()
        try:
            await client.get_json(f"http://127.0.0.1:{port}/v1/stall")
            took = time.monotonic() - began
        finally:
            await client.aclose()
            server.close()
            await server.wait_closed()
        return took, client.requests, client.hedging.sent

    took, requests, copies = asyncio.run(main())
    assert took < 2.0
    assert received.count(b"/v1/stall") == 2
    assert resource.late_starts >= 1  # (more, when this machine was busy too)
    assert (requests, copies) == (22, 1)
    assert resource.requests == 22
