"""A token-bucket API in a process of its own, for tests of rates in real time: a busy
machine slows it down on its own cores and clock, never through the client's GIL.

Run as ``python bucket_server.py LIMIT BURST``; it prints its port on the first line of
stdout. ``GET /x`` is admitted (200) while the bucket has a token and answered 429 with
``Retry-After: 1`` beyond; ``GET /accepted`` gives the admitted requests' monotonic times
(the clock is the machine's: comparable with the test's ``time.monotonic()``) and how many
were refused.
"""

from __future__ import annotations

import socket
import sys
import time

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def main() -> None:
    limit, burst = float(sys.argv[1]), float(sys.argv[2])
    state = {"tokens": burst, "last": time.monotonic(), "refused": 0}
    accepted: list[float] = []

    async def take(request: Request) -> JSONResponse:
        now = time.monotonic()
        state["tokens"] = min(burst, state["tokens"] + (now - state["last"]) * limit)
        state["last"] = now
        if state["tokens"] < 1:
            state["refused"] += 1
            return JSONResponse({"error": "slow down"}, 429, headers={"Retry-After": "1"})
        state["tokens"] -= 1
        accepted.append(now)
        return JSONResponse({"data": []})

    async def report(request: Request) -> JSONResponse:
        return JSONResponse({"accepted": accepted, "refused": state["refused"]})

    app = Starlette(routes=[Route("/x", take), Route("/accepted", report)])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    config = uvicorn.Config(app, log_level="critical", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
