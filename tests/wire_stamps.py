"""When requests reach the wire, stamped by the kernel rather than by a busy process.

A server in the test process notes a request's arrival only once its event loop gets to
it: on a loaded machine that can be tens of milliseconds after the client sent it, and
two requests sent apart then look bunched. :class:`WireStamps` is a loopback proxy in
front of such a server that reads each request with ``recvmsg`` and keeps the kernel's
receive timestamp (``SO_TIMESTAMPNS``, set when the packet reached the socket), so how
late the proxy's own thread runs does not matter.

It relays plain HTTP/1.1 without pipelining (what httpx sends): the next request on a
connection comes only after the answer to the one before, so each ``recvmsg`` that
starts a request holds that request alone and its timestamp is the request's.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

__all__ = ["WireStamps"]

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux
_METHODS = (b"GET ", b"POST ", b"PUT ", b"DELETE ", b"HEAD ", b"PATCH ", b"OPTIONS ")


class WireStamps:
    """A loopback proxy to ``upstream`` (``http://host:port``) noting when each request
    whose path starts with ``prefix`` arrived, on the kernel's wall clock (``time.time``
    scale), in :attr:`times`."""

    def __init__(self, upstream: str, prefix: bytes = b"/v1") -> None:
        host, _, port = upstream.removeprefix("http://").rstrip("/").partition(":")
        self.upstream = (host, int(port))
        self.prefix = prefix
        self.times: list[float] = []
        self.unstamped = 0
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Accepted sockets inherit the option, so every packet of theirs is stamped.
        self._listener.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, name="wire-stamps", daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self._listener.getsockname()[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        for sock in list(self._sockets):
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> WireStamps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            client.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            self._sockets += [client, server]
            threading.Thread(target=self._requests, args=(client, server), daemon=True).start()
            threading.Thread(target=self._answers, args=(server, client), daemon=True).start()

    def _requests(self, client: socket.socket, server: socket.socket) -> None:
        space = socket.CMSG_SPACE(16)
        try:
            while True:
                data, ancillary, _, _ = client.recvmsg(1 << 16, space)
                if not data:
                    break
                if data.startswith(_METHODS):
                    path = data.split(b" ", 2)[1]
                    if path.startswith(self.prefix):
                        self._note(ancillary)
                server.sendall(data)
        except OSError:
            pass
        finally:
            _shut(server)

    def _note(self, ancillary: list[tuple[int, int, bytes]]) -> None:
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                seconds, nanoseconds = struct.unpack("qq", value[:16])
                with self._lock:
                    self.times.append(seconds + nanoseconds / 1e9)
                return
        # No stamp (not expected on Linux): the read time is the best there is.
        with self._lock:
            self.unstamped += 1
            self.times.append(time.time())

    @staticmethod
    def _answers(server: socket.socket, client: socket.socket) -> None:
        try:
            while True:
                data = server.recv(1 << 16)
                if not data:
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            _shut(client)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
