#!/usr/bin/env python
"""HTTP benchmark: backfill at a source's real limit, at every rate, against the scripts
users write today, in the same run.

Run from the repository root::

    .venv/bin/python bench/http_bench.py                      # every case (~10 min)
    .venv/bin/python bench/http_bench.py --quick              # the backfill cases only
    .venv/bin/python bench/http_bench.py --cases year-100     # one scenario, every client
    .venv/bin/python bench/http_bench.py --cases 10d-5/declared,q1-100 --trace

A scenario is a slice of 2013 (the full year, Q1, the first ten or five days) served by a
replay API (:class:`backfill.demo.server.ReplayServer`) with its own limit: a token bucket
of ``rate`` per second holding ``bucket`` requests, answered by 429 + Retry-After. Every
request waits 0-5 ms on its way to the bucket (``arrival_jitter``), as on a network, and
20-120 ms after it; at 100/s the API also injects faults (2 % 5xx, 1 % truncated bodies,
0.5 % stalls of 5 s, seed 2013). Each case (scenario x client) runs in a fresh subprocess
against a fresh API of its own, in a process of its own by default, and fetches the three
reference tables and every 500-row page of every day:

* ``declared``    -- the demo job (``backfill.demo.flights:job``) through ``Runner``, told
  the limit (FLIGHTS_RATE=rate, FLIGHTS_BURST=bucket), FLIGHTS_CONCURRENCY=16, into a
  fresh SQLite sink;
* ``declared-b1`` -- the same, told the rate but not the bucket (FLIGHTS_BURST=1, the
  default): one request at a time;
* ``declared-3x`` -- the same, told three times the limit;
* ``adaptive``    -- the same, not told the limit (FLIGHTS_RATE=adaptive);
* ``declared-3x-again``, ``adaptive-again`` -- the same, on a state where runs of the
  same job learned the source: days from October, about ten seconds of running (into a
  sink of their own, against APIs of their own; their days forgotten after each run)
  before the one measured, which starts where they left the rate; the reference tables
  are done then, so its pages needed leave them out;
* ``gather``      -- ``asyncio.gather`` under ``Semaphore(10)``, a sleep of 10/rate - 0.05 s
  after each request (0.05 s at 100/s: the rate hard-coded as a user would), retry after
  Retry-After (or 1 s) on any failure;
* ``threadpool``  -- ``ThreadPoolExecutor(15)`` with one shared ``httpx.Client``, requests
  spaced 1/rate apart by a shared lock, the same naive retry.

Columns: the ceiling is the least time the source allows for the pages needed (flights
pages plus the 3 reference tables) at its rate; efficiency against pages = ceiling /
elapsed; efficiency against admitted = (admitted - bucket) / rate / elapsed, where
admitted is what the API let through its bucket (faults and abandoned stalls included);
429 % of requests; duplicate pages (a page answered whole more than once, not counting
answers the client had given up on: every stall outlasts every client's timeout); data
exact (every expected row, no key twice). The baselines keep rows in memory, the backfill
cases write them to SQLite and keep a ledger.

This is a measurement, not a test: it asserts no timings and exits 0 unless a case crashes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import operator
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import httpx

import _machine
from backfill.demo.data import FLIGHT_KEY, REFERENCE_TABLES

PAGE_SIZE = 500
SEED = 2013
ARRIVAL_JITTER = 0.005
CLIENT_TIMEOUT = 3.0
BACKFILL_CONCURRENCY = 16
GATHER_CONCURRENCY = 10
# The latency a user assumes when turning a rate into a sleep per slot.
GATHER_ASSUMED_LATENCY = 0.05
THREADS = 15
NAIVE_RETRY_SLEEP = 1.0
# A naive client retries "forever"; this only keeps a broken run from hanging.
NAIVE_MAX_ATTEMPTS = 100
# After a case, wait (outside the timed region) for stalled requests the client gave up
# on to finish server-side, so the server's counters are final.
DRAIN_SECONDS = 10.0
TRACE_EVERY = 0.25
# The run before an "-again" case: days from October (outside every scenario but the
# year), about ten seconds' worth at the scenario's rate (two pages a day), Q4 at most.
WARM_FROM = date(2013, 10, 1)
WARM_SECONDS = 10.0

# The targets.
TARGET_PAGES = 0.90  # every backfill case, adaptive included
TARGET_ADMITTED = 0.97  # backfill, declared, full year
TARGET_429_DECLARED = 0.01
TARGET_429_ADAPTIVE = 0.02


@dataclass(frozen=True, slots=True)
class Scenario:
    """A slice of 2013 and the API's limit; the clients that run against it."""

    name: str
    what: str
    days: int
    rate: float
    bucket: int
    faults: bool
    clients: tuple[str, ...]


SCENARIOS = (
    Scenario(
        "year-100",
        "full year, 100/s, bucket 10, faults on",
        365,
        100.0,
        10,
        True,
        ("declared", "declared-b1", "adaptive", "adaptive-again", "gather", "threadpool"),
    ),
    Scenario(
        "q1-100",
        "Q1, 100/s, bucket 10, faults on (a stall near the end)",
        90,
        100.0,
        10,
        True,
        ("declared",),
    ),
    Scenario(
        "10d-5",
        "first ten days, 5/s, bucket 1",
        10,
        5.0,
        1,
        False,
        ("declared", "gather", "threadpool"),
    ),
    Scenario(
        "5d-2",
        "first five days, 2/s, bucket 1",
        5,
        2.0,
        1,
        False,
        ("declared", "gather", "threadpool"),
    ),
    Scenario(
        "q1-5",
        "Q1, 5/s, bucket 1",
        90,
        5.0,
        1,
        False,
        ("declared", "declared-3x", "adaptive", "declared-3x-again", "adaptive-again"),
    ),
)
SCENARIO_BY_NAME = {s.name: s for s in SCENARIOS}
BACKFILL_CLIENTS = (
    "declared",
    "declared-b1",
    "declared-3x",
    "adaptive",
    "declared-3x-again",
    "adaptive-again",
)
CLIENTS = (*BACKFILL_CLIENTS, "gather", "threadpool")
AGAIN = "-again"
ALL_CASES = tuple(f"{s.name}/{c}" for s in SCENARIOS for c in s.clients)


def gather_sleep(rate: float) -> float:
    """The pause after each request that makes Semaphore(10) about ``rate`` per second."""
    return max(0.0, GATHER_CONCURRENCY / rate - GATHER_ASSUMED_LATENCY)


def client_label(client: str, rate: float) -> str:
    if client.endswith(AGAIN):
        return f"{client_label(client.removesuffix(AGAIN), rate)}, after runs that learned"
    if client == "declared":
        return f"backfill, declared {rate:g}/s"
    if client == "declared-b1":
        return f"backfill, declared {rate:g}/s, burst 1 (the default)"
    if client == "declared-3x":
        return f"backfill, declared {3 * rate:g}/s (3x)"
    if client == "adaptive":
        return "backfill, adaptive"
    if client == "gather":
        return f"gather + Semaphore(10) + sleep({gather_sleep(rate):.3g})"
    return f"ThreadPoolExecutor(15), 1/{rate:g} s apart"


# -- shared helpers ------------------------------------------------------------------------


@dataclass
class Result:
    """What one child measured; printed as one JSON line on its stdout."""

    case: str
    scenario: str
    client: str
    elapsed: float
    needed: int  # pages the source must answer at least: flights pages + reference tables
    expected_rows: int
    rows: int
    distinct: int  # distinct flight keys among ``rows``
    server: dict[str, int]  # the replay API's counters after the case
    duplicate_pages: int  # pages answered whole more than once, abandoned stalls aside
    counts: dict[str, Any] = field(default_factory=dict)  # the client's own counts
    notes: list[str] = field(default_factory=list)
    # (t, admitted so far, 429s so far, stalls so far, the resource's rate or None)
    trace: list[tuple[float, int, int, int, float | None]] = field(default_factory=list)
    client_cpu: float = 0.0  # CPU seconds of the case's process while it ran
    server_cpu: float | None = None  # ... and of the API's own process (None: a thread)
    others_cpu: float | None = None  # ... and of every other process of the machine
    load_before: float | None = None  # 1-minute load average, read by the driver
    load_after: float | None = None

    @property
    def spec(self) -> Scenario:
        return SCENARIO_BY_NAME[self.scenario]

    @property
    def requests(self) -> int:
        return self.server["requests"]

    @property
    def rate_limited(self) -> int:
        return self.server["rate_limited"]

    @property
    def admitted(self) -> int:
        return self.requests - self.rate_limited - self.server["unauthorized"]

    @property
    def ok(self) -> int:
        # Every stall outlives every client's timeout, so a stalled request is a
        # client-side failure even though the server counts it ok once it finishes.
        return self.server["ok"] - self.server["stalled"]

    @property
    def other_errors(self) -> int:
        s = self.server
        return s["errors"] + s["truncated"] + s["stalled"] + s["bad_requests"] + s["unauthorized"]

    @property
    def pages_efficiency(self) -> float:
        return self.needed / self.spec.rate / self.elapsed

    @property
    def admitted_efficiency(self) -> float:
        spec = self.spec
        return (self.admitted - spec.bucket) / spec.rate / self.elapsed

    @property
    def share_429(self) -> float:
        return self.rate_limited / self.requests if self.requests else 0.0

    @property
    def exact(self) -> bool:
        return self.rows == self.expected_rows and self.distinct == self.rows


def day_list(count: int) -> list[date]:
    from backfill.demo.data import load_flights

    return load_flights().days()[:count]


def needed_pages(days: list[date]) -> tuple[int, int]:
    """(pages the source must answer, flight rows) to fetch ``days`` and the references."""
    from backfill.demo.data import load_flights

    data = load_flights()
    counts = [data.count(day) for day in days]
    flights = sum(max(1, math.ceil(c / PAGE_SIZE)) for c in counts)
    return flights + len(REFERENCE_TABLES), sum(counts)


def server_config(spec: Scenario) -> Any:
    from backfill.demo.server import ReplayConfig

    config = ReplayConfig(
        rate_limit=spec.rate,
        burst=spec.bucket,
        page_size=PAGE_SIZE,
        arrival_jitter=ARRIVAL_JITTER,
        seed=SEED,
    )
    if spec.faults:
        return config
    return dataclasses.replace(config, error_rate=0.0, truncate_rate=0.0, stall_rate=0.0)


def fetch_stats(url: str) -> dict[str, int]:
    body = httpx.get(f"{url}/stats", timeout=5.0).json()
    body.pop("rate_limit", None)
    return {k: int(v) for k, v in body.items()}


def drained(stats: dict[str, int]) -> bool:
    """True when no request is still being answered (stalls included)."""
    answered = sum(v for k, v in stats.items() if k not in ("requests", "stalled"))
    return answered >= stats["requests"]


def final_stats(url: str, notes: list[str]) -> tuple[dict[str, int], int]:
    """The API's counters once every request is answered, and its duplicate pages."""
    deadline = time.monotonic() + DRAIN_SECONDS
    stats = fetch_stats(url)
    while not drained(stats) and time.monotonic() < deadline:
        time.sleep(0.2)
        stats = fetch_stats(url)
    if not drained(stats):
        notes.append("server counters not final: stalled requests still open after the run")
    pages = httpx.get(f"{url}/stats/pages", timeout=5.0).json()["pages"]
    duplicates = sum(1 for p in pages.values() if p["ok"] - p["stalled"] > 1)
    return stats, duplicates


@dataclass(frozen=True)
class Api:
    url: str
    pid: int | None  # the server's process, when it has its own


def process_cpu(pid: int | None) -> float | None:
    """CPU seconds (user + system) used so far by process ``pid`` (Linux only)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> float | None:
    """CPU seconds the whole machine has been busy so far, every core (Linux only)."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def replay_api(spec: Scenario, mode: str) -> Iterator[Api]:
    """A fresh replay API for one case, in a thread of this process or in its own."""
    if mode == "thread":
        from backfill.demo.server import ReplayServer

        server = ReplayServer(server_config(spec))
        server.start()
        try:
            yield Api(server.url, None)
        finally:
            server.stop()
        return
    command = [sys.executable, str(Path(__file__).resolve()), "--serve", spec.name]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"the replay API process did not start (said {url!r})")
        yield Api(url, proc.pid)
    finally:
        if proc.stdin is not None:
            proc.stdin.close()  # EOF: the server process stops
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def serve_main(spec: Scenario) -> None:
    """--serve: run a replay API until stdin closes; print its URL first."""
    from backfill.demo.server import ReplayServer

    server = ReplayServer(server_config(spec))
    server.start()
    print(server.url, flush=True)
    try:
        sys.stdin.read()
    finally:
        server.stop()


class Tracer:
    """Samples the API's counters (and the resource's rate, when there is one) every
    quarter second (for --trace)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.rate: Callable[[], float] | None = None
        self.samples: list[tuple[float, int, int, int, float | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._t0 = 0.0

    def _loop(self) -> None:
        with httpx.Client(timeout=5.0) as client:
            while not self._stop.is_set():
                s = client.get(f"{self.url}/stats").json()
                admitted = s["requests"] - s["rate_limited"] - s["unauthorized"]
                rate = self.rate() if self.rate is not None else None
                t = round(time.perf_counter() - self._t0, 3)
                self.samples.append((t, admitted, s["rate_limited"], s["stalled"], rate))
                self._stop.wait(TRACE_EVERY)

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._thread.start()

    def stop(self) -> list[tuple[float, int, int, int, float | None]]:
        self._stop.set()
        self._thread.join()
        return self.samples


# -- the cases (run in a child process) ----------------------------------------------------


def case_backfill(
    url: str,
    days: list[date],
    directory: Path,
    told: str,
    bucket: int,
    tracer: Tracer | None,
    *,
    sink: str = "flights.db",
    warm: bool = False,
) -> tuple[float, Any, Any]:
    os.environ["FLIGHTS_API"] = url
    os.environ["FLIGHTS_DB"] = str(directory / sink)
    os.environ["FLIGHTS_RATE"] = told
    os.environ["FLIGHTS_BURST"] = str(bucket)
    os.environ["FLIGHTS_CONCURRENCY"] = str(BACKFILL_CONCURRENCY)
    from backfill.job import load_job
    from backfill.ledger import open_ledger
    from backfill.partitions import Selection
    from backfill.runner import Runner, RunOptions

    job = load_job("backfill.demo.flights:job")
    resource = job.resources["flights_api"]
    if tracer is not None:
        tracer.rate = lambda: float(resource.rate)
    ledger = open_ledger(f"sqlite:///{directory / 'state.db'}")
    selection = Selection(start=days[0], end=days[-1]) if len(days) < 365 else None
    runner = Runner(job, ledger, RunOptions(command="bench", selection=selection))
    try:
        t0 = time.perf_counter()
        result = asyncio.run(runner.run())
        elapsed = time.perf_counter() - t0
    finally:
        ledger.close()
    counts = result.counts["flights"]
    # (A run before an "-again" case leaves its first days' weekly windows waiting for
    # September, outside its selection: exit 1, every flights day done.)
    if (result.exit_code != 0 and not warm) or counts.done + counts.empty < len(days):
        raise RuntimeError(
            f"backfill: exit {result.exit_code}, {counts.done} done, {counts.failed} failed: "
            f"{result.message}"
        )
    return elapsed, result, resource


def sink_rows(database: Path) -> tuple[int, int]:
    conn = sqlite3.connect(database)
    try:
        (rows,) = conn.execute("SELECT count(*) FROM flights").fetchone()
        (distinct,) = conn.execute(
            f"SELECT count(*) FROM (SELECT DISTINCT {', '.join(FLIGHT_KEY)} FROM flights)"
        ).fetchone()
    finally:
        conn.close()
    return rows, distinct


class NaiveFailure(Exception):
    def __init__(self, retry_after: float | None) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


def _check(response: httpx.Response, counts: dict[str, int]) -> Any:
    """The page's JSON, or NaiveFailure on 429/5xx/invalid JSON; counts the outcome."""
    if response.status_code == 429 or response.status_code >= 500:
        key = "rate_limited" if response.status_code == 429 else "errors"
        counts[key] += 1
        header = response.headers.get("Retry-After")
        raise NaiveFailure(float(header) if header and header.isdigit() else None)
    response.raise_for_status()  # any other 4xx: a bug in this script, not retried
    try:
        body = response.json()
    except ValueError:
        counts["errors"] += 1
        raise NaiveFailure(None) from None
    counts["ok"] += 1
    return body


# A unit of a naive script's work: a reference table (its name) or one day's pages.
Work = date | str


def _pages_of(url: str, work: Work) -> tuple[str, dict[str, str | int]]:
    if isinstance(work, str):
        return f"{url}/v1/{work}", {}
    return f"{url}/v1/flights", {"date": work.isoformat(), "page_size": PAGE_SIZE}


_KEY_OF = operator.itemgetter(*FLIGHT_KEY)


def case_gather(
    url: str, works: list[Work], rate: float
) -> tuple[float, list[tuple[Any, ...]], dict[str, int]]:
    """What users write today with asyncio, the rate hard-coded as a sleep per slot."""
    counts = {"ok": 0, "rate_limited": 0, "errors": 0}
    pause = gather_sleep(rate)

    async def get_page(client: httpx.AsyncClient, path: str, params: dict[str, Any]) -> Any:
        for _ in range(NAIVE_MAX_ATTEMPTS):
            try:
                try:
                    response = await client.get(path, params=params)
                except httpx.TransportError:  # timeouts included
                    counts["errors"] += 1
                    raise NaiveFailure(None) from None
                finally:
                    await asyncio.sleep(pause)
                return _check(response, counts)
            except NaiveFailure as exc:
                await asyncio.sleep(exc.retry_after or NAIVE_RETRY_SLEEP)
        raise RuntimeError(f"gather: {path} {params} failed {NAIVE_MAX_ATTEMPTS} times")

    async def fetch(
        client: httpx.AsyncClient, sem: asyncio.Semaphore, work: Work
    ) -> list[tuple[Any, ...]]:
        path, base = _pages_of(url, work)
        async with sem:
            if isinstance(work, str):
                await get_page(client, path, base)
                return []
            keys: list[tuple[Any, ...]] = []
            page, pages = 1, 1
            while page <= pages:
                body = await get_page(client, path, {**base, "page": page})
                keys.extend(map(_KEY_OF, body["data"]))
                pages = body["pages"]
                page += 1
            return keys

    async def main() -> list[tuple[Any, ...]]:
        sem = asyncio.Semaphore(GATHER_CONCURRENCY)
        async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT) as client:
            parts = await asyncio.gather(*(fetch(client, sem, work) for work in works))
        return [key for part in parts for key in part]

    t0 = time.perf_counter()
    keys = asyncio.run(main())
    return time.perf_counter() - t0, keys, counts


class Spacing:
    """A hand-written limiter: each caller gets the next instant 1/rate after the last."""

    def __init__(self, rate: float) -> None:
        self._interval = 1.0 / rate
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self._interval
        time.sleep(max(0.0, start - now))


def case_threadpool(
    url: str, works: list[Work], rate: float
) -> tuple[float, list[tuple[Any, ...]], dict[str, int]]:
    """What users write today with threads, the rate hard-coded as a shared spacing."""
    counts = {"ok": 0, "rate_limited": 0, "errors": 0}
    lock = threading.Lock()
    spacing = Spacing(rate)

    def get_page(client: httpx.Client, path: str, params: dict[str, Any]) -> Any:
        for _ in range(NAIVE_MAX_ATTEMPTS):
            local = {"ok": 0, "rate_limited": 0, "errors": 0}
            try:
                spacing.wait()
                try:
                    response = client.get(path, params=params)
                except httpx.TransportError:
                    local["errors"] += 1
                    raise NaiveFailure(None) from None
                return _check(response, local)
            except NaiveFailure as exc:
                time.sleep(exc.retry_after or NAIVE_RETRY_SLEEP)
            finally:
                with lock:
                    for key, value in local.items():
                        counts[key] += value
        raise RuntimeError(f"threadpool: {path} {params} failed {NAIVE_MAX_ATTEMPTS} times")

    def fetch(client: httpx.Client, work: Work) -> list[tuple[Any, ...]]:
        path, base = _pages_of(url, work)
        if isinstance(work, str):
            get_page(client, path, base)
            return []
        keys: list[tuple[Any, ...]] = []
        page, pages = 1, 1
        while page <= pages:
            body = get_page(client, path, {**base, "page": page})
            keys.extend(map(_KEY_OF, body["data"]))
            pages = body["pages"]
            page += 1
        return keys

    t0 = time.perf_counter()
    with (
        httpx.Client(timeout=CLIENT_TIMEOUT) as client,
        ThreadPoolExecutor(THREADS) as pool,
    ):
        parts = list(pool.map(lambda work: fetch(client, work), works))
    return time.perf_counter() - t0, [key for part in parts for key in part], counts


def told_for(spec: Scenario, client: str) -> str:
    """FLIGHTS_RATE for a backfill client."""
    return {
        "declared": f"{spec.rate:g}",
        "declared-b1": f"{spec.rate:g}",
        "declared-3x": f"{3 * spec.rate:g}",
        "adaptive": "adaptive",
    }[client.removesuffix(AGAIN)]


def warm_main(case: str, directory: Path, mode: str) -> None:
    """--warm: one run before an "-again" case, on its state (``directory``), into a sink
    of its own, against an API of its own, in a process of its own (the demo job reads
    its settings once), over days from October; its days forgotten after it (the year's
    case fetches them again). Prints how long it ran."""
    from backfill.demo.data import load_flights
    from backfill.job import load_job
    from backfill.ledger import open_ledger
    from backfill.partitions import Selection

    scenario, client_name = case.split("/")
    spec = SCENARIO_BY_NAME[scenario]
    count = math.ceil(spec.rate * WARM_SECONDS / 2)
    days = [day for day in load_flights().days() if day >= WARM_FROM][:count]
    with replay_api(spec, mode) as api:
        told = told_for(spec, client_name)
        elapsed, _, _ = case_backfill(
            api.url, days, directory, told, spec.bucket, None, sink="warm.db", warm=True
        )
    # The state keeps what the run learned of the source, and the reference tables.
    job = load_job("backfill.demo.flights:job")
    ledger = open_ledger(f"sqlite:///{directory / 'state.db'}")
    try:
        stages = [stage.name for stage in job.stages.values() if not stage.reference]
        ledger.reset(job.name, stages, Selection(start=days[0], end=days[-1]))
    finally:
        ledger.close()
    print(f"{elapsed:.3f}", flush=True)


def warm_up(case: str, directory: Path, mode: str) -> None:
    """The runs before an "-again" case: about ``WARM_SECONDS`` of running in all (Q4 is
    three seconds at 100/s), each starting where the one before left the rate."""
    command = [sys.executable, str(Path(__file__).resolve()), "--warm", case]
    ran = 0.0
    while ran < 0.9 * WARM_SECONDS:
        done = subprocess.run(
            [*command, "--dir", str(directory), "--server", mode],
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
        ran += float(done.stdout.strip().splitlines()[-1])


def child_main(case: str, directory: Path, mode: str, trace: bool) -> None:
    scenario, client_name = case.split("/")
    spec = SCENARIO_BY_NAME[scenario]
    days = day_list(spec.days)
    needed, expected_rows = needed_pages(days)
    if client_name.endswith(AGAIN):
        # The runs before learned the source, and fetched the reference tables.
        warm_up(case, directory, mode)
        needed -= len(REFERENCE_TABLES)
    notes: list[str] = []
    counts: dict[str, Any] = {}
    with replay_api(spec, mode) as api:
        url = api.url
        tracer = Tracer(url) if trace else None
        if client_name in BACKFILL_CLIENTS:
            # Imported here, not in the measured region: the CPU columns compare clients.
            import backfill.job
            import backfill.ledger
            import backfill.runner  # noqa: F401
        cpu0, server_cpu0, machine0 = time.process_time(), process_cpu(api.pid), machine_cpu()
        if tracer:
            tracer.start()
        if client_name in BACKFILL_CLIENTS:
            told = told_for(spec, client_name)
            bucket = 1 if client_name == "declared-b1" else spec.bucket
            elapsed, run, resource = case_backfill(url, days, directory, told, bucket, tracer)
            rows, distinct = sink_rows(directory / "flights.db")
            counts = {
                "sent": run.requests,
                "request retries": run.request_retries,
                "partition retries": run.retries,
                "429s seen": resource.rate_limited,
                "pauses": resource.pauses,
                "final rate": resource.rate_description(),
            }
            if client_name.endswith(AGAIN) and not resource.resumed:
                notes.append(f"{case}: did not start from what the runs before learned")
        else:
            works: list[Work] = [*REFERENCE_TABLES, *days]
            run_case = case_gather if client_name == "gather" else case_threadpool
            elapsed, keys, seen = run_case(url, works, spec.rate)
            rows, distinct = len(keys), len(set(keys))
            counts = dict(seen)
        client_cpu = time.process_time() - cpu0
        server_cpu1, machine1 = process_cpu(api.pid), machine_cpu()
        server_cpu = (
            server_cpu1 - server_cpu0
            if server_cpu0 is not None and server_cpu1 is not None
            else None
        )
        others_cpu = (
            max(0.0, machine1 - machine0 - client_cpu - (server_cpu or 0.0))
            if machine0 is not None and machine1 is not None
            else None
        )
        samples = tracer.stop() if tracer else []
        server, duplicates = final_stats(url, notes)
    if client_name not in BACKFILL_CLIENTS:
        # The naive clients count for themselves: a cross-check of the server's counters.
        seen_ok = server["ok"] - server["stalled"]
        if counts["ok"] != seen_ok or counts["rate_limited"] != server["rate_limited"]:
            notes.append(
                f"{case}: client counted {counts['ok']} ok / {counts['rate_limited']} x 429, "
                f"server {seen_ok} / {server['rate_limited']}"
            )
    result = Result(
        case=case,
        scenario=scenario,
        client=client_name,
        elapsed=elapsed,
        needed=needed,
        expected_rows=expected_rows,
        rows=rows,
        distinct=distinct,
        server=server,
        duplicate_pages=duplicates,
        counts=counts,
        notes=notes,
        trace=samples,
        client_cpu=client_cpu,
        server_cpu=server_cpu,
        others_cpu=others_cpu,
    )
    print(json.dumps(asdict(result)), flush=True)


# -- the driver (parent process) -----------------------------------------------------------


def run_child(case: str, mode: str, trace: bool) -> Result | str:
    """Run one case in a fresh interpreter; its Result, or why it crashed."""
    name = case.replace("/", "-")
    with tempfile.TemporaryDirectory(prefix=f"http-bench-{name}-") as tmp:
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            case,
            "--dir",
            tmp,
            "--server",
            mode,
        ]
        if trace:
            command.append("--trace")
        load_before = _machine.load_average()
        # stderr passes through, so a child's traceback is seen as it happens.
        proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
        load_after = _machine.load_average()
    if proc.returncode != 0:
        return f"exit {proc.returncode}"
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    data["trace"] = [tuple(x) for x in data["trace"]]
    result = Result(**data)
    result.load_before, result.load_after = load_before, load_after
    return result


def machine_facts(mode: str) -> list[str]:
    return [
        *_machine.facts(f"httpx {httpx.__version__}"),
        f"- replay API: {'own process' if mode == 'process' else 'thread in the case process'}",
    ]


def _miss(figure: str, met: bool | None) -> str:
    """``figure``, marked when it misses its target (None: no target for it)."""
    return f"{figure} ✗" if met is False else figure


def pages_target(r: Result) -> bool | None:
    return r.pages_efficiency >= TARGET_PAGES if r.client in BACKFILL_CLIENTS else None


def admitted_target(r: Result) -> bool | None:
    if r.client != "declared" or r.spec.days != 365:
        return None
    return r.admitted_efficiency >= TARGET_ADMITTED


def share_target(r: Result) -> bool | None:
    if r.client.removesuffix(AGAIN) == "adaptive":
        return r.share_429 < TARGET_429_ADAPTIVE
    if r.client in BACKFILL_CLIENTS:
        return r.share_429 < TARGET_429_DECLARED
    return None


def _others(r: Result) -> str:
    """The cores, on average, that other processes kept busy while the case ran."""
    return "n/a" if r.others_cpu is None else f"{r.others_cpu / r.elapsed:.2f}"


def scenario_lines(results: list[Result]) -> list[str]:
    lines = ["| case | what the API allows | pages needed | ceiling s |", "|---|---|---:|---:|"]
    seen: set[str] = set()
    for r in results:
        if r.scenario in seen:
            continue
        seen.add(r.scenario)
        spec = r.spec
        lines.append(f"| {spec.name} | {spec.what} | {r.needed:,} | {r.needed / spec.rate:.2f} |")
    return lines


def table(results: list[Result]) -> list[str]:
    lines = [
        "| case | client | elapsed s | vs pages | vs admitted | 429 % | duplicate pages "
        "| data exact | load 1 min | others' CPU, cores |",
        "|---|---|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for r in results:
        exact = (
            "yes"
            if r.exact
            else f"no: {r.rows:,} rows of {r.expected_rows:,}, {r.rows - r.distinct:,} twice"
        )
        share = f"{100 * r.share_429:.1f} % ({r.rate_limited} of {r.requests:,})"
        lines.append(
            f"| {r.scenario} | {client_label(r.client, r.spec.rate)} | {r.elapsed:.2f} "
            f"| {_miss(f'{r.pages_efficiency:.3f}', pages_target(r))} "
            f"| {_miss(f'{r.admitted_efficiency:.3f}', admitted_target(r))} "
            f"| {_miss(share, share_target(r))} | {r.duplicate_pages} "
            f"| {_miss(exact, r.exact)} | {_machine.load_span(r.load_before, r.load_after)} "
            f"| {_others(r)} |"
        )
    return lines


def diagnostics(results: list[Result]) -> list[str]:
    """Where the requests and the time went: outcomes, CPU, and backfill's resource."""
    lines = [
        "| case | client | requests | ok | 429s | other errors | client CPU s "
        "| server CPU s | client CPU ms per page | backfill's resource at the end |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        server = "(in client)" if r.server_cpu is None else f"{r.server_cpu:.2f}"
        per_page = 1000 * r.client_cpu / r.ok if r.ok else 0.0
        resource = (
            f"{r.counts['final rate']}; {r.counts['pauses']} pauses"
            if "final rate" in r.counts
            else ""
        )
        lines.append(
            f"| {r.scenario} | {r.client} | {r.requests:,} | {r.ok:,} | {r.rate_limited:,} "
            f"| {r.other_errors:,} | {r.client_cpu:.2f} | {server} | {per_page:.1f} "
            f"| {resource} |"
        )
    return lines


def targets() -> list[str]:
    return [
        f"- backfill (declared, 3x, adaptive), every case: vs pages >= {TARGET_PAGES:.2f}",
        f"- backfill declared, full year: vs admitted >= {TARGET_ADMITTED:.2f}",
        f"- 429s under {100 * TARGET_429_DECLARED:g} % of requests declared (3x included), "
        f"under {100 * TARGET_429_ADAPTIVE:g} % adaptive",
        "- data exact in every case, baselines included",
        "- ✗ marks a figure that misses its target; the baselines' efficiencies have none",
    ]


def trace_lines(results: list[Result]) -> list[str]:
    """Second by second for each case (--trace): requests admitted, 429s, stalls begun,
    and backfill's rate at the end of the second."""
    out: list[str] = []
    for r in results:
        admitted: list[str] = []
        refused: list[str] = []
        stalls: list[str] = []
        rates: list[str] = []
        last = (0.0, 0, 0, 0)
        mark = 1.0
        for t, n, limited, stalled, rate in r.trace:
            if t >= mark:
                admitted.append(f"{(n - last[1]) / (t - last[0]):.0f}")
                refused.append(str(limited - last[2]))
                stalls.append(str(stalled - last[3]))
                rates.append("-" if rate is None else f"{rate:.3g}")
                last = (t, n, limited, stalled)
                mark += 1.0
        out += [
            f"- {r.case}: admitted/s {' '.join(admitted)}",
            f"  429s {' '.join(refused)}",
            f"  stalls begun {' '.join(stalls)}",
        ]
        if any(rate != "-" for rate in rates):
            out.append(f"  resource rate {' '.join(rates)}")
    return out


def select(selectors: list[str], quick: bool) -> list[str]:
    """The cases a selector names (a scenario, a client, or scenario/client), in order."""
    chosen = [
        case
        for case in ALL_CASES
        if not selectors or any(sel in (case, *case.split("/")) for sel in selectors)
    ]
    if quick:
        chosen = [case for case in chosen if case.split("/")[1] in BACKFILL_CLIENTS]
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="the backfill cases only")
    parser.add_argument(
        "--cases",
        default="",
        help="comma-separated scenarios, clients or scenario/client pairs "
        f"(scenarios: {', '.join(SCENARIO_BY_NAME)}; clients: {', '.join(CLIENTS)}); "
        "default: every case",
    )
    parser.add_argument(
        "--server",
        choices=("process", "thread"),
        default="process",
        help="run the replay API in its own process (default) or in a thread of the case",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="print, second by second, what the API admitted and refused, and backfill's rate",
    )
    # Internal: the driver spawns these.
    parser.add_argument("--child", choices=ALL_CASES, help=argparse.SUPPRESS)
    parser.add_argument("--warm", choices=ALL_CASES, help=argparse.SUPPRESS)
    parser.add_argument("--serve", choices=tuple(SCENARIO_BY_NAME), help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.serve:
        serve_main(SCENARIO_BY_NAME[args.serve])
        return 0
    if args.child:
        child_main(args.child, args.dir, args.server, args.trace)
        return 0
    if args.warm:
        warm_main(args.warm, args.dir, args.server)
        return 0

    selectors = [c.strip() for c in args.cases.split(",") if c.strip()]
    known = {*ALL_CASES, *SCENARIO_BY_NAME, *CLIENTS}
    unknown = [sel for sel in selectors if sel not in known]
    if unknown:
        parser.error(
            f"unknown case(s) {', '.join(unknown)}: name a scenario "
            f"({', '.join(SCENARIO_BY_NAME)}), a client ({', '.join(CLIENTS)}) or a pair "
            "such as year-100/declared"
        )
    cases = select(selectors, args.quick)
    if not cases:
        parser.error("no case matches --cases (with --quick, only backfill clients run)")
    results: list[Result] = []
    crashed: list[str] = []
    for case in cases:
        print(f"# {case} ...", file=sys.stderr, flush=True)
        outcome = run_child(case, args.server, args.trace)
        if isinstance(outcome, str):
            print(f"#   CRASHED ({outcome})", file=sys.stderr, flush=True)
            crashed.append(f"{case} ({outcome})")
            continue
        print(f"#   {outcome.elapsed:.2f} s", file=sys.stderr, flush=True)
        results.append(outcome)

    out = [
        "",
        f"Every API: 0-{1000 * ARRIVAL_JITTER:g} ms arrival jitter, 20-120 ms latency, "
        f"500-row pages; faults, where on: 2 % 5xx, 1 % truncated, 0.5 % stalls of 5 s "
        f"(seed {SEED}).",
        "",
        *scenario_lines(results),
        "",
        *table(results),
        "",
        "Targets:",
        *targets(),
        "",
        *diagnostics(results),
        "",
        "Machine:",
        *machine_facts(args.server),
    ]
    notes = [note for r in results for note in r.notes]
    notes += [f"{c}: CRASHED" for c in crashed]
    if notes:
        out += ["", "Notes:", *(f"- {note}" for note in notes)]
    if args.trace:
        out += ["", "Second by second (server side):", *trace_lines(results)]
    print("\n".join(out))
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
