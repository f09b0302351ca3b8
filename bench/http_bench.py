#!/usr/bin/env python
"""HTTP benchmark: backfill at a source's rate limit versus hand-written clients.

Run from the repository root::

    .venv/bin/python bench/http_bench.py                 # every day of 2013 at 100 req/s
    .venv/bin/python bench/http_bench.py --quick         # the first 60 days only
    .venv/bin/python bench/http_bench.py --rate 50 --cases backfill-declared,threadpool
    .venv/bin/python bench/http_bench.py --burst 10 --trace   # a laxer bucket; req/s per second

Every case runs in a fresh subprocess against its own fresh replay API
(:class:`backfill.demo.server.ReplayServer`, ``ReplayConfig(rate_limit=RATE, seed=...)``:
a server-side token bucket answered by 429 + Retry-After, 2 % 5xx, 1 % truncated bodies,
0.5 % stalls of 5 s) and fetches every page (500 rows) of every day:

* ``backfill-declared`` -- the demo job (``backfill.demo.flights:job``) through ``Runner``,
  told the limit (FLIGHTS_RATE=RATE), FLIGHTS_CONCURRENCY=16, into a fresh SQLite sink;
* ``backfill-adaptive`` -- the same, not told the limit (FLIGHTS_RATE=adaptive);
* ``gather-semaphore`` -- ``asyncio.gather`` over the days under ``Semaphore(10)``, a 50 ms
  sleep after each request, retry after 1 s (or Retry-After) on any failure;
* ``threadpool``       -- ``ThreadPoolExecutor(15)`` with one shared ``httpx.Client``, one
  task per day, the same naive retry.

The hand-written clients only count the rows they fetch; the backfill cases also write
them to SQLite (and keep a ledger), which costs CPU the table below reports.

The ceiling is the least time the source allows: (requests needed) / RATE, where the
requests needed are sum over days of max(1, ceil(rows / 500)); ratio = ceiling / elapsed.
With ``--server thread`` the replay API runs in a thread of the case's own process; by
default (``--server process``) it runs in a process of its own, so a CPU-hungry client
cannot slow the server down (and the reverse), as with a real remote API.

This is a measurement, not a test: it asserts no timings and exits 0 unless a case crashes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import httpx

import _machine

CASES = ("backfill-declared", "backfill-adaptive", "gather-semaphore", "threadpool")
BACKFILL_CASES = ("backfill-declared", "backfill-adaptive")
DEFAULT_RATE = 100.0
QUICK_DAYS = 60
PAGE_SIZE = 500
SEED = 2013
FLIGHTS_TOTAL = 336_776
CLIENT_TIMEOUT = 3.0
BACKFILL_CONCURRENCY = 16
GATHER_CONCURRENCY = 10
GATHER_PAUSE = 0.05
THREADS = 15
NAIVE_RETRY_SLEEP = 1.0
# A naive client retries "forever"; this only keeps a broken run from hanging.
NAIVE_MAX_ATTEMPTS = 100
# After a case, wait (outside the timed region) for stalled requests the client gave up
# on to finish server-side, so the server's counters are final.
DRAIN_SECONDS = 10.0
# The targets, for both backfill cases.
TARGET_RATIO = 0.97
TARGET_429_SHARE = 0.01


# -- shared helpers ------------------------------------------------------------------------


@dataclass
class Result:
    """What one child measured; printed as one JSON line on its stdout."""

    case: str
    days: int
    elapsed: float
    needed: int  # successful requests the source requires at least
    expected_rows: int
    rows: int
    server: dict[str, int]  # the replay API's counters after the case
    client: dict[str, int] = field(default_factory=dict)  # the client's own counts, if any
    notes: list[str] = field(default_factory=list)
    trace: list[tuple[float, int]] = field(default_factory=list)  # (t, accepted so far)
    client_cpu: float = 0.0  # CPU seconds of the case's process while it ran
    server_cpu: float | None = None  # ... and of the API's own process (None: a thread)

    @property
    def ok(self) -> int:
        # Every stall outlives every client's 3 s timeout, so a stalled request is a
        # client-side failure even though the server counts it ok once it finishes.
        return self.server["ok"] - self.server["stalled"]

    @property
    def rate_limited(self) -> int:
        return self.server["rate_limited"]

    @property
    def requests(self) -> int:
        return self.server["requests"]

    @property
    def other_errors(self) -> int:
        s = self.server
        return s["errors"] + s["truncated"] + s["stalled"] + s["bad_requests"] + s["unauthorized"]


def day_list(limit: int | None) -> list[date]:
    from backfill.demo.data import load_flights

    days = load_flights().days()
    return days[:limit] if limit else days


def needed_requests(days: list[date]) -> tuple[int, int]:
    """(successful requests needed, rows) to fetch every page of ``days``."""
    from backfill.demo.data import load_flights

    data = load_flights()
    counts = [data.count(day) for day in days]
    return sum(max(1, math.ceil(c / PAGE_SIZE)) for c in counts), sum(counts)


def server_config(rate: float, burst: int | None) -> Any:
    from backfill.demo.server import ReplayConfig

    config = ReplayConfig(rate_limit=rate, page_size=PAGE_SIZE, seed=SEED)
    return config if burst is None else dataclasses.replace(config, burst=burst)


def fetch_stats(url: str) -> dict[str, int]:
    body = httpx.get(f"{url}/stats", timeout=5.0).json()
    body.pop("rate_limit", None)
    return {k: int(v) for k, v in body.items()}


def drained(stats: dict[str, int]) -> bool:
    """True when no request is still being answered (stalls included)."""
    answered = sum(v for k, v in stats.items() if k not in ("requests", "stalled"))
    return answered >= stats["requests"]


def final_stats(url: str, notes: list[str]) -> dict[str, int]:
    deadline = time.monotonic() + DRAIN_SECONDS
    stats = fetch_stats(url)
    while not drained(stats) and time.monotonic() < deadline:
        time.sleep(0.2)
        stats = fetch_stats(url)
    if not drained(stats):
        notes.append("server counters not final: stalled requests still open after the run")
    return stats


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


@contextlib.contextmanager
def replay_api(rate: float, burst: int | None, mode: str) -> Iterator[Api]:
    """A fresh replay API for one case, in a thread of this process or in its own."""
    if mode == "thread":
        from backfill.demo.server import ReplayServer

        server = ReplayServer(server_config(rate, burst))
        server.start()
        try:
            yield Api(server.url, None)
        finally:
            server.stop()
        return
    command = [sys.executable, str(Path(__file__).resolve()), "--serve", "--rate", str(rate)]
    if burst is not None:
        command += ["--burst", str(burst)]
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


def serve_main(rate: float, burst: int | None) -> None:
    """--serve: run a replay API until stdin closes; print its URL first."""
    from backfill.demo.server import ReplayServer

    server = ReplayServer(server_config(rate, burst))
    server.start()
    print(server.url, flush=True)
    try:
        sys.stdin.read()
    finally:
        server.stop()


class Tracer:
    """Samples the server's accepted-request counter every 0.25 s (for --trace)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._t0 = 0.0

    def _loop(self) -> None:
        with httpx.Client(timeout=5.0) as client:
            while not self._stop.is_set():
                s = client.get(f"{self.url}/stats").json()
                accepted = s["requests"] - s["rate_limited"] - s["unauthorized"]
                self.samples.append((round(time.perf_counter() - self._t0, 3), accepted))
                self._stop.wait(0.25)

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._thread.start()

    def stop(self) -> list[tuple[float, int]]:
        self._stop.set()
        self._thread.join()
        return self.samples


# -- the cases (run in a child process) ----------------------------------------------------


def case_backfill(url: str, days: list[date], directory: Path, rate: str) -> tuple[float, Any]:
    os.environ["FLIGHTS_API"] = url
    os.environ["FLIGHTS_DB"] = str(directory / "flights.db")
    os.environ["FLIGHTS_RATE"] = rate
    os.environ["FLIGHTS_CONCURRENCY"] = str(BACKFILL_CONCURRENCY)
    from backfill.job import load_job
    from backfill.ledger import open_ledger
    from backfill.partitions import Selection
    from backfill.runner import Runner, RunOptions

    job = load_job("backfill.demo.flights:job")
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
    if result.exit_code != 0 or counts.done + counts.empty < len(days):
        raise RuntimeError(
            f"backfill: exit {result.exit_code}, {counts.done} done, {counts.failed} failed: "
            f"{result.message}"
        )
    return elapsed, (result, job.resources["flights_api"])


def sink_rows(database: Path) -> tuple[int, int]:
    conn = sqlite3.connect(database)
    try:
        (rows,) = conn.execute("SELECT count(*) FROM flights").fetchone()
        (distinct,) = conn.execute(
            "SELECT count(*) FROM (SELECT DISTINCT year, month, day, carrier, flight, origin "
            "FROM flights)"
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


def case_gather(url: str, days: list[date]) -> tuple[float, int, dict[str, int]]:
    """What users write today with asyncio."""
    counts = {"ok": 0, "rate_limited": 0, "errors": 0}

    async def get_page(client: httpx.AsyncClient, day: date, page: int) -> Any:
        params: dict[str, str | int] = {
            "date": day.isoformat(),
            "page": page,
            "page_size": PAGE_SIZE,
        }
        for _ in range(NAIVE_MAX_ATTEMPTS):
            try:
                try:
                    response = await client.get(f"{url}/v1/flights", params=params)
                except httpx.TransportError:  # timeouts included
                    counts["errors"] += 1
                    raise NaiveFailure(None) from None
                finally:
                    await asyncio.sleep(GATHER_PAUSE)
                return _check(response, counts)
            except NaiveFailure as exc:
                await asyncio.sleep(exc.retry_after or NAIVE_RETRY_SLEEP)
        raise RuntimeError(f"gather: {day} page {page} failed {NAIVE_MAX_ATTEMPTS} times")

    async def fetch_day(client: httpx.AsyncClient, sem: asyncio.Semaphore, day: date) -> int:
        async with sem:
            rows, page, pages = 0, 1, 1
            while page <= pages:
                body = await get_page(client, day, page)
                rows += len(body["data"])
                pages = body["pages"]
                page += 1
            return rows

    async def main() -> int:
        sem = asyncio.Semaphore(GATHER_CONCURRENCY)
        async with httpx.AsyncClient(timeout=CLIENT_TIMEOUT) as client:
            rows = await asyncio.gather(*(fetch_day(client, sem, day) for day in days))
        return sum(rows)

    t0 = time.perf_counter()
    rows = asyncio.run(main())
    return time.perf_counter() - t0, rows, counts


def case_threadpool(url: str, days: list[date]) -> tuple[float, int, dict[str, int]]:
    """What users write today with threads."""
    counts = {"ok": 0, "rate_limited": 0, "errors": 0}
    lock = threading.Lock()

    def get_page(client: httpx.Client, day: date, page: int) -> Any:
        params: dict[str, str | int] = {
            "date": day.isoformat(),
            "page": page,
            "page_size": PAGE_SIZE,
        }
        for _ in range(NAIVE_MAX_ATTEMPTS):
            local = {"ok": 0, "rate_limited": 0, "errors": 0}
            try:
                try:
                    response = client.get(f"{url}/v1/flights", params=params)
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
        raise RuntimeError(f"threadpool: {day} page {page} failed {NAIVE_MAX_ATTEMPTS} times")

    def fetch_day(client: httpx.Client, day: date) -> int:
        rows, page, pages = 0, 1, 1
        while page <= pages:
            body = get_page(client, day, page)
            rows += len(body["data"])
            pages = body["pages"]
            page += 1
        return rows

    t0 = time.perf_counter()
    with (
        httpx.Client(timeout=CLIENT_TIMEOUT) as client,
        ThreadPoolExecutor(THREADS) as pool,
    ):
        rows = sum(pool.map(lambda day: fetch_day(client, day), days))
    return time.perf_counter() - t0, rows, counts


def child_main(
    case: str,
    rate: float,
    burst: int | None,
    limit: int | None,
    directory: Path,
    mode: str,
    trace: bool,
) -> None:
    days = day_list(limit)
    needed, expected_rows = needed_requests(days)
    notes: list[str] = []
    client: dict[str, int] = {}
    with replay_api(rate, burst, mode) as api:
        url = api.url
        tracer = Tracer(url) if trace else None
        if tracer:
            tracer.start()
        if case in BACKFILL_CASES:
            # Imported here, not in the measured region: the CPU columns compare clients.
            import backfill.job
            import backfill.ledger
            import backfill.runner  # noqa: F401
        cpu0, server_cpu0 = time.process_time(), process_cpu(api.pid)
        if case in BACKFILL_CASES:
            told = "adaptive" if case == "backfill-adaptive" else f"{rate:g}"
            elapsed, (run, resource) = case_backfill(url, days, directory, told)
            rows, distinct = sink_rows(directory / "flights.db")
            if distinct != rows:
                notes.append(f"{case}: {rows - distinct} duplicate keys in the sink")
            client = {"sent": run.requests, "retries": run.retries, "records": run.records}
            notes.append(
                f"{case}: {run.retries} partition retries; resource paused "
                f"{resource.pauses}×, {resource.rate_limited} × 429 seen, "
                f"final rate {resource.rate_description()}"
            )
        elif case == "gather-semaphore":
            elapsed, rows, client = case_gather(url, days)
        elif case == "threadpool":
            elapsed, rows, client = case_threadpool(url, days)
        else:
            raise SystemExit(f"unknown case {case!r}")
        if case not in BACKFILL_CASES:
            client["requests"] = sum(client.values())
        client_cpu = time.process_time() - cpu0
        server_cpu1 = process_cpu(api.pid)
        server_cpu = (
            server_cpu1 - server_cpu0
            if server_cpu0 is not None and server_cpu1 is not None
            else None
        )
        samples = tracer.stop() if tracer else []
        server = final_stats(url, notes)
    if case not in BACKFILL_CASES:
        # The naive clients count for themselves: a cross-check of the server's counters.
        seen_ok = server["ok"] - server["stalled"]
        if client["ok"] != seen_ok or client["rate_limited"] != server["rate_limited"]:
            notes.append(
                f"{case}: client counted {client['ok']} ok / {client['rate_limited']} × 429, "
                f"server {seen_ok} / {server['rate_limited']}"
            )
    result = Result(
        case,
        len(days),
        elapsed,
        needed,
        expected_rows,
        rows,
        server,
        client,
        notes,
        samples,
        client_cpu,
        server_cpu,
    )
    print(json.dumps(asdict(result)), flush=True)


# -- the driver (parent process) -----------------------------------------------------------


def run_child(
    case: str, rate: float, burst: int | None, limit: int | None, mode: str, trace: bool
) -> Result | str:
    """Run one case in a fresh interpreter; its Result, or why it crashed."""
    with tempfile.TemporaryDirectory(prefix=f"http-bench-{case}-") as tmp:
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            case,
            "--rate",
            str(rate),
            "--dir",
            tmp,
            "--server",
            mode,
        ]
        if limit:
            command += ["--days", str(limit)]
        if burst is not None:
            command += ["--burst", str(burst)]
        if trace:
            command.append("--trace")
        # stderr passes through, so a child's traceback is seen as it happens.
        proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        return f"exit {proc.returncode}"
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    data["trace"] = [tuple(x) for x in data["trace"]]
    return Result(**data)


def machine_facts(mode: str) -> list[str]:
    return [
        *_machine.facts(f"httpx {httpx.__version__}"),
        f"- replay API: {'own process' if mode == 'process' else 'thread in the case process'}",
    ]


def table(results: list[Result], rate: float) -> list[str]:
    lines = [
        "| client | elapsed s | ceiling s | ratio to ceiling | ok requests | 429s "
        "| 429 % of requests | other errors | rows |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        ceiling = r.needed / rate
        rows = f"{r.rows:,}" if r.rows == r.expected_rows else f"{r.rows:,} MISMATCH"
        share = 100 * r.rate_limited / r.requests if r.requests else 0.0
        lines.append(
            f"| {r.case} | {r.elapsed:.2f} | {ceiling:.2f} | {ceiling / r.elapsed:.3f} | "
            f"{r.ok:,} | {r.rate_limited:,} | {share:.2f} % | {r.other_errors:,} | {rows} |"
        )
    return lines


def diagnostics(results: list[Result]) -> list[str]:
    """Where the time might go: the CPU each side used while the case ran."""
    lines = [
        "| client | requests sent | client CPU s | server CPU s | client CPU ms per ok request |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        server = "(in client)" if r.server_cpu is None else f"{r.server_cpu:.2f}"
        per_ok = 1000 * r.client_cpu / r.ok if r.ok else 0.0
        lines.append(
            f"| {r.case} | {r.requests:,} | {r.client_cpu:.2f} | {server} | {per_ok:.1f} |"
        )
    return lines


def verdicts(results: list[Result], rate: float) -> list[str]:
    out: list[str] = []
    for r in results:
        if r.case not in BACKFILL_CASES:
            continue
        ratio = r.needed / rate / r.elapsed
        share = r.rate_limited / r.requests if r.requests else 0.0
        out.append(
            f"- {r.case}: ratio >= {TARGET_RATIO}: "
            f"{'PASS' if ratio >= TARGET_RATIO else 'MISS'} ({ratio:.3f}); "
            f"429s < {100 * TARGET_429_SHARE:g} % of requests: "
            f"{'PASS' if share < TARGET_429_SHARE else 'MISS'} ({100 * share:.2f} %)"
        )
    return out or ["- no backfill case run"]


def trace_lines(results: list[Result]) -> list[str]:
    """Accepted requests per second, second by second, for each case (--trace)."""
    out: list[str] = []
    for r in results:
        per_second: list[str] = []
        last_t, last_n, next_mark = 0.0, 0, 1.0
        for t, n in r.trace:
            if t >= next_mark:
                per_second.append(f"{(n - last_n) / (t - last_t):.0f}")
                last_t, last_n, next_mark = t, n, next_mark + 1.0
        out.append(f"- {r.case}: {' '.join(per_second)}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--rate", type=float, default=DEFAULT_RATE, help="the API's limit, req/s (default 100)"
    )
    parser.add_argument(
        "--burst",
        type=int,
        default=None,
        help="the API's token-bucket capacity (default: ReplayConfig's, 5)",
    )
    parser.add_argument("--quick", action="store_true", help=f"the first {QUICK_DAYS} days only")
    parser.add_argument(
        "--cases",
        default=",".join(CASES),
        help=f"comma-separated subset of {','.join(CASES)} (default: all)",
    )
    parser.add_argument(
        "--server",
        choices=("process", "thread"),
        default="process",
        help="run the replay API in its own process (default) or in a thread of the case",
    )
    parser.add_argument(
        "--trace", action="store_true", help="print accepted requests per second per case"
    )
    # Internal: the driver spawns these.
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--days", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.rate > 0:
        parser.error("--rate must be positive")
    if args.burst is not None and args.burst < 1:
        parser.error("--burst must be at least 1")

    if args.serve:
        serve_main(args.rate, args.burst)
        return 0
    if args.child:
        child_main(args.child, args.rate, args.burst, args.days, args.dir, args.server, args.trace)
        return 0

    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(cases) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    limit = QUICK_DAYS if args.quick else None
    results: list[Result] = []
    crashed: list[str] = []
    for case in cases:
        print(f"# {case} ...", file=sys.stderr, flush=True)
        outcome = run_child(case, args.rate, args.burst, limit, args.server, args.trace)
        if isinstance(outcome, str):
            print(f"#   CRASHED ({outcome})", file=sys.stderr, flush=True)
            crashed.append(f"{case} ({outcome})")
            continue
        print(f"#   {outcome.elapsed:.2f} s", file=sys.stderr, flush=True)
        results.append(outcome)

    first = results[0] if results else None
    scope = (
        f"{first.days} days, {first.needed:,} pages, {first.expected_rows:,} rows"
        if first
        else "nothing"
    )
    burst = server_config(args.rate, args.burst).bucket
    out = [
        "",
        f"Rate limit {args.rate:g} req/s (burst {burst}); {scope}; "
        f"faults: 2 % 5xx, 1 % truncated, 0.5 % stalls of 5 s (seed {SEED}).",
        "",
        *table(results, args.rate),
        "",
        *diagnostics(results),
        "",
        "Machine:",
        *machine_facts(args.server),
        "",
        "Targets (informative):",
        *verdicts(results, args.rate),
    ]
    notes = [note for r in results for note in r.notes]
    if first and first.days == 365 and first.expected_rows != FLIGHTS_TOTAL:
        notes.append(f"data set has {first.expected_rows:,} rows, not {FLIGHTS_TOTAL:,}: MISMATCH")
    notes += [f"{c}: CRASHED" for c in crashed]
    if notes:
        out += ["", "Notes:", *(f"- {note}" for note in notes)]
    if args.trace:
        out += ["", "Accepted requests per second (server side):", *trace_lines(results)]
    print("\n".join(out))
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
