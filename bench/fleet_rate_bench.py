#!/usr/bin/env python
"""Fleet rate benchmark: workers on one PostgreSQL state in front of a source with its
own limit, against one worker on the same state and one on a SQLite file, in the same run.

Run from the repository root (PostgreSQL at BACKFILL_TEST_POSTGRES_URL, default
postgresql://postgres@127.0.0.1:5432/test; each case gets a database of its own)::

    .venv/bin/python bench/fleet_rate_bench.py                 # every case (~4 min)
    .venv/bin/python bench/fleet_rate_bench.py --cases strict-20

A case is a replay API (:class:`backfill.demo.server.ReplayServer`) with a token bucket
of ``limit`` per second holding ``bucket`` requests (429 + Retry-After past it), 5 ms of
jitter on the way to it and 20-120 ms after it, faults off, and the demo job
(``backfill.demo.flights:job``) told the declared rate and burst, run by ``workers``
processes of ``backfill worker`` (PostgreSQL) or one ``backfill run`` (SQLite), the
demo's concurrency of 8 split among the workers. Each case runs the first ``days`` of
2013 (two pages a day and the three reference tables) from a fresh state and sink.

Columns: elapsed (from starting the processes until the last exits, start-up included);
share of the limit, what the API admitted per second over the elapsed time against its
limit; the share of requests answered 429; the pauses the workers said ("paused (...)"); the
workers' exit codes; the machine's load. This is a measurement, not a
test: it asserts no timings and exits 0 unless a case crashes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import psycopg

import _machine

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
CONCURRENCY = 8
TIMEOUT = 600.0


@dataclass(frozen=True)
class Case:
    name: str
    what: str
    limit: float
    bucket: int
    declared: float
    burst: int
    days: int
    runs: tuple[tuple[str, int], ...]  # (state kind, workers)


CASES = (
    Case(
        "strict-20",
        "20/s, bucket 1; declared 20/s, burst 1 (correct)",
        20.0,
        1,
        20.0,
        1,
        90,
        (("sqlite", 1), ("postgres", 1), ("postgres", 4)),
    ),
    Case(
        "strict-3x",
        "5/s, bucket 1; declared 15/s, burst 1 (3x too high)",
        5.0,
        1,
        15.0,
        1,
        31,
        (("sqlite", 1), ("postgres", 1), ("postgres", 2)),
    ),
    Case(
        "bucket-40",
        "40/s, bucket 4; declared 40/s, burst 4 (correct)",
        40.0,
        4,
        40.0,
        4,
        181,
        (("sqlite", 1), ("postgres", 1), ("postgres", 3)),
    ),
)
CASE_BY_NAME = {c.name: c for c in CASES}


@dataclass
class Result:
    case: str
    state: str
    workers: int
    elapsed: float
    requests: int
    refused: int
    pauses: int
    codes: list[int]
    load: tuple[float | None, float | None]


def serve(case: Case) -> tuple[subprocess.Popen[str], str]:
    """A replay API of the case's limit in a process of its own; its URL."""
    code = (
        "import sys\n"
        "from backfill.demo.server import ReplayConfig, ReplayServer\n"
        f"config = ReplayConfig(rate_limit={case.limit}, burst={case.bucket}, "
        "arrival_jitter=0.005, error_rate=0.0, truncate_rate=0.0, stall_rate=0.0, seed=2013)\n"
        "server = ReplayServer(config)\n"
        "server.start()\n"
        "print(server.url, flush=True)\n"
        "sys.stdin.read()\n"
        "server.stop()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        raise RuntimeError(f"the replay API did not start (said {url!r})")
    return proc, url


def stats(url: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{url}/stats", timeout=5) as answer:
        data: dict[str, int] = json.loads(answer.read())
    return data


def run_case(case: Case, state_kind: str, workers: int, pg_url: str) -> Result:
    server, url = serve(case)
    database = None
    try:
        with tempfile.TemporaryDirectory(prefix="fleet-rate-") as tmp:
            if state_kind == "postgres":
                database = f"bench_fleet_rate_{uuid.uuid4().hex[:10]}"
                with psycopg.connect(pg_url, autocommit=True) as conn:
                    conn.execute(f"CREATE DATABASE {database}")
                state = pg_url.rsplit("/", 1)[0] + f"/{database}"
                command = "worker"
            else:
                state = f"sqlite:///{Path(tmp) / 'state.db'}"
                command = "run"
            env = {
                **os.environ,
                "FLIGHTS_API": url,
                "FLIGHTS_DB": str(Path(tmp) / "flights.db"),
                "FLIGHTS_RATE": f"{case.declared:g}",
                "FLIGHTS_BURST": str(case.burst),
                "FLIGHTS_CONCURRENCY": str(CONCURRENCY),
            }
            last = (date(2013, 1, 1) + timedelta(days=case.days - 1)).isoformat()
            backfill = str(Path(sys.executable).with_name("backfill"))
            argv = [backfill, command, "backfill.demo.flights:job", "--state", state]
            argv += ["--to", last, "--progress", "plain"]
            load_before = _machine.load_average()
            t0 = time.monotonic()
            procs = [
                subprocess.Popen(
                    argv,
                    env=env,
                    cwd=tmp,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
                for _ in range(workers)
            ]
            outputs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
            elapsed = time.monotonic() - t0
            final = stats(url)
            return Result(
                case=case.name,
                state=state_kind,
                workers=workers,
                elapsed=elapsed,
                requests=final["requests"],
                refused=final["rate_limited"],
                pauses=sum(out.count("paused (") for out in outputs),
                codes=[p.returncode for p in procs],
                load=(load_before, _machine.load_average()),
            )
    finally:
        if server.stdin is not None:
            server.stdin.close()
        server.wait(15)
        if database is not None:
            with psycopg.connect(pg_url, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def table(results: list[Result]) -> list[str]:
    lines = [
        "| case | state | workers | elapsed s | share of the limit | 429 % | pauses "
        "| exit codes | load 1 min |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in results:
        case = CASE_BY_NAME[r.case]
        admitted = r.requests - r.refused
        share = admitted / case.limit / r.elapsed
        lines.append(
            f"| {r.case} | {r.state} | {r.workers} | {r.elapsed:.1f} | {share:.2f} | "
            f"{100 * r.refused / max(1, r.requests):.1f} % ({r.refused} of {r.requests}) | "
            f"{r.pauses} | {', '.join(map(str, r.codes))} | "
            f"{_machine.load_span(*r.load)} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--cases", default="", help="comma-separated case names")
    args = parser.parse_args(argv)
    chosen = [c for c in CASES if not args.cases or c.name in args.cases.split(",")]
    if not chosen:
        parser.error(f"no such case: {args.cases} (cases: {', '.join(CASE_BY_NAME)})")
    pg_url = os.environ.get("BACKFILL_TEST_POSTGRES_URL", DEFAULT_URL)
    results = []
    for case in chosen:
        for state_kind, workers in case.runs:
            print(f"# {case.name}: {state_kind}, {workers} worker(s) ...", file=sys.stderr)
            results.append(run_case(case, state_kind, workers, pg_url))
    print()
    for case in chosen:
        print(f"- {case.name}: {case.what}, the first {case.days} days of 2013")
    print()
    print("\n".join(table(results)))
    print()
    print("Machine:")
    print("\n".join(_machine.facts()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
