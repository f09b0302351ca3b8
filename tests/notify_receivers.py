"""Loopback receivers for notification tests: a JSON webhook (what Apprise's ``json://``
posts) and an SMTP server (aiosmtpd). Each records what it got, binds 127.0.0.1 only, and
stops with its context."""

from __future__ import annotations

import email
import email.policy
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller


@dataclass
class Received:
    """What a receiver got: one entry per message."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    raw: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait(self, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        """The messages, once ``count`` have come (or ``timeout`` passed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.02)
        with self.lock:
            return list(self.messages)


@contextmanager
def webhook(*, hang: bool = False) -> Iterator[tuple[str, Received]]:
    """A JSON webhook at ``json://127.0.0.1:PORT`` (yielded without scheme as
    ``127.0.0.1:PORT``); ``hang`` reads each request and never answers until stopped."""
    got = Received()
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length).decode()
            with got.lock:
                got.raw.append(self.path + "\n" + body)
                got.messages.append({"path": self.path, **json.loads(body)})
            if hang:
                stop.wait(60)
                return
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", got
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def smtp() -> Iterator[tuple[str, Received]]:
    """An SMTP server on ``127.0.0.1:PORT``; each message as subject, from, to, text."""
    got = Received()

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            raw = envelope.content.decode("utf-8", "replace")
            message = email.message_from_string(raw, policy=email.policy.default)
            part = message.get_body(preferencelist=("plain",))
            text = part.get_content() if part is not None else ""
            with got.lock:
                got.raw.append(raw)
                got.messages.append(
                    {
                        "subject": str(message["Subject"]),
                        "from": str(message["From"]),
                        "to": str(message["To"]),
                        "text": text,
                    }
                )
            return "250 OK"

    port = _free_port()
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield f"127.0.0.1:{port}", got
    finally:
        controller.stop()
