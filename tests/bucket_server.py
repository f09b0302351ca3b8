"""A token-bucket API in a process of its own, for tests of rates in real time: a busy
machine slows it down on its own cores and clock, never through the client's GIL.

Run as ``python bucket_server.py LIMIT BURST``; it prints its port on the first line of
stdout. ``GET /x`` is admitted (200) while the bucket has a token and answered 429 with
``Retry-After: 1`` beyond; ``GET /accepted`` gives the admitted requests' monotonic times
(the clock is the machine's: comparable with the test's ``time.monotonic()``) and how many
were refused.

The bucket counts a request at the instant the kernel received it (``SO_TIMESTAMPNS``),
not when this process got round to reading it: a remote API's bucket is not slowed by
the client's machine, and a server slowed by a loaded machine would otherwise read two
requests sent apart as bunched, and refuse the second. Requests read together are
counted in the order they arrived. It speaks HTTP/1.1 with keep-alive, without
pipelining (what httpx sends): one read holds one request.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import struct
import sys
import time

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux


class Bucket:
    """``limit`` a second, ``burst`` at once, on the instants requests arrived."""

    def __init__(self, limit: float, burst: float) -> None:
        self.limit, self.burst = limit, burst
        self.tokens, self.last = burst, -1.0
        self.accepted: list[float] = []  # monotonic
        self.refused = 0

    def take(self, arrived: float) -> bool:
        if self.last >= 0.0:
            self.tokens = min(self.burst, self.tokens + max(0.0, arrived - self.last) * self.limit)
        self.last = max(self.last, arrived)
        if self.tokens < 1.0:
            self.refused += 1
            return False
        self.tokens -= 1.0
        self.accepted.append(arrived)
        return True


def _answer(status: int, body: dict[str, object], extra: str = "") -> bytes:
    data = json.dumps(body).encode()
    reason = {200: "OK", 404: "Not Found", 429: "Too Many Requests"}[status]
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(data)}\r\n{extra}\r\n"
    )
    return head.encode() + data


def _stamp(ancillary: list[tuple[int, int, bytes]], offset: float) -> float:
    """The kernel's receive instant, on the monotonic clock (``offset``: wall − monotonic)."""
    for level, kind, value in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
            seconds, nanoseconds = struct.unpack("qq", value[:16])
            return seconds + nanoseconds / 1e9 - offset
    return time.monotonic()  # (no stamp: not expected on Linux)


def serve(listener: socket.socket, bucket: Bucket) -> None:
    offset = time.time() - time.monotonic()
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    # A request read in part: when its first bytes arrived, and what came so far.
    partial: dict[socket.socket, tuple[float, bytes]] = {}
    space = socket.CMSG_SPACE(16)
    while True:
        whole: list[tuple[float, socket.socket, bytes]] = []
        for key, _ in selector.select():
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            if sock is listener:
                conn, _ = listener.accept()
                conn.setblocking(False)
                selector.register(conn, selectors.EVENT_READ)
                continue
            try:
                data, ancillary, _, _ = sock.recvmsg(1 << 16, space)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if not data:
                selector.unregister(sock)
                partial.pop(sock, None)
                sock.close()
                continue
            arrived, buffered = partial.pop(sock, (_stamp(ancillary, offset), b""))
            buffered += data
            if b"\r\n\r\n" in buffered:
                whole.append((arrived, sock, buffered))
            else:
                partial[sock] = (arrived, buffered)
        # Counted in the order they arrived, whatever order they were read in.
        for arrived, sock, request in sorted(whole, key=lambda r: r[0]):
            parts = request.split(b" ", 2)
            path = parts[1] if len(parts) == 3 else b""
            if path.startswith(b"/x"):
                if bucket.take(arrived):
                    reply = _answer(200, {"data": []})
                else:
                    reply = _answer(429, {"error": "slow down"}, "retry-after: 1\r\n")
            elif path.startswith(b"/accepted"):
                reply = _answer(200, {"accepted": bucket.accepted, "refused": bucket.refused})
            else:
                reply = _answer(404, {"error": "no such path"})
            try:
                sock.setblocking(True)
                sock.sendall(reply)
                sock.setblocking(False)
            except OSError:
                with contextlib.suppress(KeyError, ValueError):
                    selector.unregister(sock)
                sock.close()


def main() -> None:
    limit, burst = float(sys.argv[1]), float(sys.argv[2])
    listener = socket.socket()
    # Accepted sockets inherit it: every packet of theirs is stamped, the first too.
    listener.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    listener.setblocking(False)
    print(listener.getsockname()[1], flush=True)
    serve(listener, Bucket(limit, burst))


if __name__ == "__main__":
    main()
