"""A local tennis results site that only renders in a browser, for the browser tests,
the example job (``examples/tennis.py``) and the benchmark.

Every page is an empty shell whose script fetches JSON and renders it, so a plain HTTP
GET sees no result. ``/archive/{tour}/{year}`` lists a year's tournaments;
``/tournament/{number}?page=N`` shows one page of its draw (``PAGE_SIZE`` matches).
Some API answers are slow (``slow`` of them, up to ``slow_seconds``); a ``block`` share
of page loads get a block page ("Just a moment...") instead; ``POST /control`` with
``{"block": 1.0}`` blocks every load until it is set back.

The server stamps every page load (documents only, not scripts or API calls) on the
machine's monotonic clock: ``GET /stats`` returns them, so a test measures the rate the
site saw. Run it in a process of its own (``python tests/tennis_site.py --port 8900``,
or :class:`SiteProcess`), so the tests' own work cannot bunch its stamps.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptly import scheduled_first

PAGE_SIZE = 8
TOURS = ("atp", "wta")
BLOCK_TITLE = "Just a moment..."


@dataclass(frozen=True, slots=True)
class Tournament:
    number: int
    tour: str
    year: int
    name: str
    matches: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.matches // PAGE_SIZE))


def tournaments(
    first: int, last: int, seed: int = 7, per_year: tuple[int, int] = (2, 4)
) -> list[Tournament]:
    """The site's tournaments: the same for the same arguments (the tests' truth). The
    WTA's archive starts a year after the ATP's."""
    rng = random.Random(seed)
    found = []
    number = 100
    for year in range(first, last + 1):
        for tour in TOURS:
            if tour == "wta" and year == first:
                continue
            for i in range(rng.randint(*per_year)):
                number += rng.randint(1, 9)
                matches = rng.choice((3, 7, 12, 15, 24))
                found.append(
                    Tournament(number, tour, year, f"{tour.upper()} {year} #{i + 1}", matches)
                )
    return found


def match_rows(t: Tournament) -> list[dict[str, Any]]:
    """Every match of a tournament's draw, in order."""
    rng = random.Random(t.number)
    return [
        {
            "match": m + 1,
            "round": f"R{1 + m // 4}",
            "winner": f"P{rng.randint(1, 500)}",
            "loser": f"P{rng.randint(501, 999)}",
            "score": f"6-{rng.randint(0, 4)} 6-{rng.randint(0, 4)}",
        }
        for m in range(t.matches)
    ]


_SHELL = """<!doctype html>
<html><head><meta charset="utf-8"><title>Tennis results</title>
<link rel="icon" href="/favicon.png"><style>@font-face{{font-family:x;src:url(/font.woff2)}}</style>
</head><body><div id="app">loading...</div><img src="/logo.png" alt="">
<script>window.VIEW = {view};</script><script src="/app.js"></script></body></html>"""

_BLOCK = f"""<!doctype html><html><head><title>{BLOCK_TITLE}</title></head>
<body><p>Checking your browser before accessing the site.</p></body></html>"""

_APP_JS = """
(async function () {
  const view = window.VIEW;
  const app = document.getElementById("app");
  const answer = await fetch(view.api);
  const data = await answer.json();
  if (view.kind === "archive") {
    const list = document.createElement("ul");
    list.id = "tournaments";
    for (const t of data.tournaments) {
      const item = document.createElement("li");
      item.dataset.number = t.number;
      item.dataset.name = t.name;
      item.dataset.pages = t.pages;
      const link = document.createElement("a");
      link.href = "/tournament/" + t.number + "?page=1";
      link.textContent = t.name;
      item.appendChild(link);
      list.appendChild(item);
    }
    app.replaceChildren(list);
  } else {
    const draw = document.createElement("table");
    draw.id = "draw";
    draw.dataset.pages = data.pages;
    for (const m of data.matches) {
      const row = document.createElement("tr");
      row.dataset.match = m.match;
      for (const key of ["round", "winner", "loser", "score"]) {
        const cell = document.createElement("td");
        cell.className = key;
        cell.textContent = m[key];
        row.appendChild(cell);
      }
      draw.appendChild(row);
    }
    app.replaceChildren(draw);
  }
  document.body.dataset.ready = "1";
})();
"""


@dataclass
class SiteState:
    """The site's data, its misbehaviour and what it saw."""

    first: int
    last: int
    seed: int = 7
    slow: float = 0.2
    slow_seconds: float = 0.4
    block: float = 0.0
    stamps: list[float] = field(default_factory=list)
    loads: dict[str, int] = field(default_factory=dict)
    blocked: int = 0
    other: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.all = tournaments(self.first, self.last, self.seed)
        self.by_number = {t.number: t for t in self.all}
        self.rng = random.Random(self.seed + 1)


def build_app(state: SiteState) -> Any:
    """The site as a Starlette app."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    def page_load(request: Request, view: dict[str, Any]) -> Response:
        state.stamps.append(time.monotonic())
        path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        state.loads[path] = state.loads.get(path, 0) + 1
        if state.block and state.rng.random() < state.block:
            state.blocked += 1
            return HTMLResponse(_BLOCK)
        return HTMLResponse(_SHELL.format(view=json.dumps(view)))

    async def slowly() -> None:
        if state.slow and state.rng.random() < state.slow:
            await asyncio.sleep(state.rng.uniform(0.05, state.slow_seconds))

    async def archive(request: Request) -> Response:
        tour, year = request.path_params["tour"], request.path_params["year"]
        return page_load(request, {"kind": "archive", "api": f"/api/archive/{tour}/{year}"})

    async def tournament(request: Request) -> Response:
        number = request.path_params["number"]
        page = request.query_params.get("page", "1")
        return page_load(request, {"kind": "draw", "api": f"/api/tournament/{number}?page={page}"})

    async def api_archive(request: Request) -> Response:
        await slowly()
        tour, year = request.path_params["tour"], int(request.path_params["year"])
        found = [t for t in state.all if t.tour == tour and t.year == year]
        return JSONResponse(
            {"tournaments": [{"number": t.number, "name": t.name, "pages": t.pages} for t in found]}
        )

    async def api_tournament(request: Request) -> Response:
        await slowly()
        t = state.by_number.get(int(request.path_params["number"]))
        if t is None:
            return JSONResponse({"error": "no such tournament"}, status_code=404)
        page = int(request.query_params.get("page", "1"))
        rows = match_rows(t)[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
        return JSONResponse({"matches": rows, "pages": t.pages})

    async def app_js(request: Request) -> Response:
        return Response(_APP_JS, media_type="application/javascript")

    async def asset(request: Request) -> Response:
        # Images and fonts: a browser that loads them is counted here.
        state.other[request.url.path] = state.other.get(request.url.path, 0) + 1
        return Response(b"\x00" * 2048, media_type="application/octet-stream")

    async def stats(request: Request) -> Response:
        return JSONResponse(
            {
                "stamps": state.stamps,
                "loads": state.loads,
                "blocked": state.blocked,
                "assets": state.other,
            }
        )

    async def control(request: Request) -> Response:
        body = await request.json()
        if "block" in body:
            state.block = float(body["block"])
        if "slow" in body:
            state.slow = float(body["slow"])
        return JSONResponse({"block": state.block, "slow": state.slow})

    return Starlette(
        routes=[
            Route("/archive/{tour}/{year}", archive),
            Route("/tournament/{number}", tournament),
            Route("/api/archive/{tour}/{year}", api_archive),
            Route("/api/tournament/{number}", api_tournament),
            Route("/app.js", app_js),
            Route("/logo.png", asset),
            Route("/favicon.png", asset),
            Route("/font.woff2", asset),
            Route("/stats", stats),
            Route("/control", control, methods=["POST"]),
        ]
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SiteProcess:
    """The site in a process of its own, on a free loopback port, stopped on exit."""

    def __init__(
        self, first: int, last: int, *, seed: int = 7, slow: float = 0.2, block: float = 0.0
    ) -> None:
        self.first, self.last = first, last
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--port",
            str(self.port),
            "--first",
            str(first),
            "--last",
            str(last),
            "--seed",
            str(seed),
            "--slow",
            str(slow),
            "--block",
            str(block),
        ]
        self.truth = tournaments(first, last, seed)
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SiteProcess:
        self.proc = subprocess.Popen(
            self.args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=dict(os.environ),
            preexec_fn=scheduled_first,  # its stamps: when loads arrived
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.stats()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("the tennis site exited at start") from None
                time.sleep(0.1)
        self.__exit__()
        raise RuntimeError("the tennis site did not start within 30 s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/stats", timeout=10) as answer:
            result: dict[str, Any] = json.load(answer)
            return result

    def control(self, **settings: float) -> None:
        request = urllib.request.Request(
            f"{self.url}/control",
            data=json.dumps(settings).encode(),
            headers={"content-type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10):
            pass

    def expected_rows(self) -> set[tuple[int, int]]:
        """(tournament number, match) of every match on the site."""
        return {(t.number, m) for t in self.truth for m in range(1, t.matches + 1)}

    def page_loads(self) -> int:
        """Loads a walk of the site needs: one per archive page and per draw page."""
        archives = len(TOURS) * (self.last - self.first + 1) - 1
        return archives + sum(t.pages for t in self.truth)


def most_in_window(stamps: list[float], seconds: float = 1.0) -> int:
    """The most stamps in any window of ``seconds`` (half-open)."""
    ordered = sorted(stamps)
    most, low = 0, 0
    for high, stamp in enumerate(ordered):
        while stamp - ordered[low] >= seconds:
            low += 1
        most = max(most, high - low + 1)
    return most


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--first", type=int, default=2015)
    parser.add_argument("--last", type=int, default=2019)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--slow", type=float, default=0.2)
    parser.add_argument("--block", type=float, default=0.0)
    args = parser.parse_args()
    import uvicorn

    state = SiteState(args.first, args.last, args.seed, slow=args.slow, block=args.block)
    uvicorn.run(build_app(state), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
