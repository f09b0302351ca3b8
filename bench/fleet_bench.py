#!/usr/bin/env python
"""Fleet benchmark: no-op partitions per second with 1, 2 and 4 worker processes sharing
one PostgreSQL ledger, against the same number of no-op jobs through pgqueuer.

    .venv/bin/pip install pgqueuer           # the peer; bench environment only
    .venv/bin/python bench/fleet_bench.py    # N = 100,000 on BACKFILL_TEST_POSTGRES_URL

Each case gets a fresh schema. ``backfill`` cases plan N partitions, then start k
processes that each run ``Runner`` (what ``backfill worker`` runs) with a no-op stage;
``pgqueuer`` cases enqueue N jobs, then start k processes that each drain the queue.
``ledger alone`` cases are the floor under ``backfill``: k processes that only claim
batches of 1,000 and complete them through the same ledger, with no runner around it.
The time is the wall time from starting the processes until the last one exits; the CPU
columns are what the processes and the PostgreSQL server spent (the server's only when
it runs on this machine). This is a measurement, not a test: it asserts no timings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from urllib.parse import quote

import psycopg

import _machine

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def in_schema(url: str, schema: str) -> str:
    option = quote(f"-csearch_path={schema}", safe="")
    return f"{url}{'&' if '?' in url else '?'}options={option}"


def make_job(n: int, pipeline: bool = False):  # type: ignore[no-untyped-def]
    from backfill import Job
    from ledger_bench import make_spec

    job = Job("bench", partitions=make_spec(n))

    @job.stage(concurrency=64)
    async def noop(ctx, partition):  # type: ignore[no-untyped-def]
        return None

    if pipeline:
        # A second stage that needs the first, partition by partition.
        @job.stage(concurrency=64, needs=["noop"])
        async def after(ctx, partition):  # type: ignore[no-untyped-def]
            return None

    return job


def child_backfill(url: str, n: int, pipeline: bool = False) -> None:
    from backfill.ledger.postgres import PostgresLedger
    from backfill.runner import Runner, RunOptions

    ledger = PostgresLedger(url)
    options = RunOptions(concurrency=64, command="bench", wait_for_leases=True)
    result = asyncio.run(Runner(make_job(n, pipeline), ledger, options).run())
    ledger.close()
    print(json.dumps({"executed": result.executed}))


def child_ledger(url: str) -> None:
    from backfill.ledger.postgres import PostgresLedger
    from ledger_bench import drain

    ledger = PostgresLedger(url)
    done = drain(ledger, "bench", "noop", f"bench-{os.getpid()}")
    ledger.close()
    print(json.dumps({"executed": done}))


def child_pgqueuer(url: str) -> None:
    from datetime import timedelta

    from pgqueuer.db import PsycopgDriver
    from pgqueuer.qm import QueueManager
    from pgqueuer.queries import Queries
    from pgqueuer.types import QueueExecutionMode

    done = 0

    async def main() -> None:
        nonlocal done
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
        qm = QueueManager(Queries(PsycopgDriver(conn)))

        @qm.entrypoint("noop")
        async def noop(job: object) -> None:
            nonlocal done
            done += 1

        await qm.run(
            dequeue_timeout=timedelta(seconds=1),
            batch_size=1000,
            mode=QueueExecutionMode.drain,
        )
        await conn.close()

    asyncio.run(main())
    print(json.dumps({"executed": done}))


def server_cpu() -> float | None:
    """CPU seconds the local PostgreSQL processes spent so far (ended backends count
    through their parent, the postmaster), or None when none are visible here."""
    ticks, seen = 0, False
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name, _, rest = stat.partition("(")[2].rpartition(")")
        if name != "postgres":
            continue
        fields = rest.split()
        ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        seen = True
    return ticks / os.sysconf("SC_CLK_TCK") if seen else None


def spawn(k: int, *args: str) -> dict[str, object]:
    """Run k children; their wall time, partitions executed and CPU (children, server)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server = server_cpu()
    started = time.perf_counter()
    procs = [
        subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True)
        for _ in range(k)
    ]
    executed = 0
    for proc in procs:
        out, _ = proc.communicate()
        executed += json.loads(out.strip().splitlines()[-1])["executed"]
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_after = server_cpu()
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    db = None if server is None or server_after is None else server_after - server
    return {"s": elapsed, "executed": executed, "cpu": cpu, "db_cpu": db}


def fresh(url: str) -> tuple[str, str]:
    schema = f"bf_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return schema, in_schema(url, schema)


def drop(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def case_backfill(
    url: str, n: int, k: int, child: str = "backfill", pipeline: bool = False
) -> dict[str, object]:
    from backfill.ledger.postgres import PostgresLedger

    schema, scoped = fresh(url)
    try:
        ledger = PostgresLedger(scoped)
        job = make_job(n, pipeline)
        t0 = time.perf_counter()
        for stage in job.stages.values():
            # As `backfill run` plans it (fingerprint included): joining workers skip it.
            ledger.plan("bench", stage.name, stage.partitions, fingerprint=repr(stage.partitions))
        plan_s = time.perf_counter() - t0
        extra = ["--pipeline"] if pipeline else []
        result = spawn(k, "--child", child, "--url", scoped, "--n", str(n), *extra)
        counts = ledger.counts("bench", list(job.stages))
        done = sum(c.done for c in counts.values())
        ledger.close()
    finally:
        drop(url, schema)
    name = "backfill" if child == "backfill" else "ledger alone"
    if pipeline:
        name += ", 2 stages"
    total = n * len(job.stages)
    ok = done == total == result["executed"]
    return {"case": f"{name} x{k}", "plan_s": plan_s, "ok": ok, "partitions": total, **result}


def case_pgqueuer(url: str, n: int, k: int) -> dict[str, object]:
    from pgqueuer.db import PsycopgDriver
    from pgqueuer.queries import Queries

    schema, scoped = fresh(url)
    try:

        async def enqueue() -> None:
            conn = await psycopg.AsyncConnection.connect(scoped, autocommit=True)
            queries = Queries(PsycopgDriver(conn))
            await queries.install()
            for start in range(0, n, 10_000):
                size = min(10_000, n - start)
                await queries.enqueue(["noop"] * size, [None] * size, [0] * size)
            await conn.close()

        t0 = time.perf_counter()
        asyncio.run(enqueue())
        plan_s = time.perf_counter() - t0
        result = spawn(k, "--child", "pgqueuer", "--url", scoped)
    finally:
        drop(url, schema)
    return {"case": f"pgqueuer x{k}", "plan_s": plan_s, "ok": result["executed"] == n, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--url", default=os.environ.get("BACKFILL_TEST_POSTGRES_URL", DEFAULT_URL))
    parser.add_argument("--child", choices=["backfill", "ledger", "pgqueuer"])
    parser.add_argument(
        "--pipeline",
        action="store_true",
        help="also run a job of two stages, the second needing the first (2 x N partitions)",
    )
    args = parser.parse_args()
    if args.child == "backfill":
        return child_backfill(args.url, args.n, args.pipeline)
    if args.child == "ledger":
        return child_ledger(args.url)
    if args.child == "pgqueuer":
        return child_pgqueuer(args.url)
    try:
        import pgqueuer  # noqa: F401

        peer = True
    except ImportError:
        print("pgqueuer is not installed: the peer is skipped (.venv/bin/pip install pgqueuer)")
        peer = False
    rows = []
    for k in (int(x) for x in args.workers.split(",")):
        rows.append(case_backfill(args.url, args.n, k))
        if peer:
            rows.append(case_pgqueuer(args.url, args.n, k))
        rows.append(case_backfill(args.url, args.n, k, child="ledger"))
        if args.pipeline:
            rows.append(case_backfill(args.url, args.n, k, pipeline=True))
    print(f"\n{args.n:,} no-op partitions (jobs) on PostgreSQL\n")
    print(
        "| case | enqueue/plan s | work s | per second | workers' CPU s | server CPU s | all done |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        rate = int(r.get("partitions", args.n)) / float(r["s"])  # type: ignore[call-overload]
        db = "-" if r["db_cpu"] is None else f"{r['db_cpu']:.2f}"
        print(
            f"| {r['case']} | {r['plan_s']:.2f} | {r['s']:.2f} | {rate:,.0f} "
            f"| {r['cpu']:.2f} | {db} | {r['ok']} |"
        )
    print()
    print("\n".join(_machine.facts(f"psycopg {psycopg.__version__}")))


if __name__ == "__main__":
    main()
