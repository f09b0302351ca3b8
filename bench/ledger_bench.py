#!/usr/bin/env python
"""Ledger benchmark: how fast and how lean is bookkeeping for N no-op partitions?

Run from the repository root::

    .venv/bin/python bench/ledger_bench.py              # N = 100,000 and 1,000,000
    .venv/bin/python bench/ledger_bench.py --quick      # N = 10,000 and 100,000

Cases, each in a fresh subprocess so that its peak RSS is its own:

* ``ledger``   -- ``plan`` N partitions, then ``claim(limit=1000)`` / ``complete`` until
  nothing is claimable, straight through the :class:`~backfill.ledger.Ledger` API.
* ``runner``   -- the same N partitions through the real engine: a job with one
  ``async def`` stage returning None, under ``Runner(...).run()``.
* ``baseline`` -- what a hand-written script does: one table, and per partition one
  transaction to mark it running and another to mark it done. It runs on at most
  100,000 partitions; its rate is extrapolated to N.

This is a measurement, not a test: it asserts no timings and exits 0 unless it crashes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import _machine

if TYPE_CHECKING:
    from backfill.ledger import Ledger
    from backfill.partitions import PartitionSpec

CASES = ("ledger", "runner", "baseline")
DEFAULT_SIZES = (100_000, 1_000_000)
QUICK_SIZES = (10_000, 100_000)
BASELINE_CAP = 100_000
CLAIM_LIMIT = 1000
# The targets, checked against the ``ledger`` case at TARGET_N partitions.
TARGET_N = 1_000_000
TARGET_RATE = 50_000.0
TARGET_RSS_MB = 300.0
RUNNER_SLOW_SECONDS = 180.0
JOB, STAGE, OWNER = "bench", "noop", "bench-owner"
FIRST_DAY = date(1900, 1, 1)
MAX_VALUES = 100


# -- shared helpers ----------------------------------------------------------------------


def shape(n: int) -> tuple[int, int]:
    """Split N into days x dimension values, with as many values (up to 100) as divide N.

    A realistic spec (daily, crossed with one dimension) rather than N days, and exact,
    so every case processes precisely N partitions.
    """
    values = max(v for v in range(1, MAX_VALUES + 1) if n % v == 0)
    return n // values, values


def make_spec(n: int) -> PartitionSpec:
    """A lazy spec of exactly N partitions: never a materialised list."""
    from backfill.partitions import daily

    days, values = shape(n)
    last = FIRST_DAY + timedelta(days=days - 1)
    return daily(FIRST_DAY, last, region=[f"r{i:03d}" for i in range(values)])


def _proc_status_mb(field_name: str) -> float | None:
    """A size from /proc/self/status (Linux), in MB."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak RSS of this process in MB.

    VmHWM first: it belongs to this process image alone, whereas ``ru_maxrss`` on Linux
    keeps the high-water mark of the pre-exec image (the parent's pages after fork).
    """
    hwm = _proc_status_mb("VmHWM")
    if hwm is not None:
        return hwm
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is bytes on macOS, kilobytes elsewhere.
    return maxrss / (1024 * 1024) if sys.platform == "darwin" else maxrss / 1024


def current_rss_mb() -> float:
    return _proc_status_mb("VmRSS") or peak_rss_mb()


@dataclass
class Result:
    """What one child measured; printed as one JSON line on its stdout."""

    case: str
    n: int  # partitions actually processed
    plan_s: float | None  # seconds to plan (None: not separable)
    work_s: float | None  # seconds for claim + (execute +) complete
    total_s: float  # seconds for the whole case, plan included
    rss_mb: float  # peak RSS of the child
    start_rss_mb: float  # RSS after imports, before any work: the fixed cost
    notes: list[str] = field(default_factory=list)

    @property
    def overall_rate(self) -> float:
        return self.n / self.total_s


# -- the cases (run in a child process) --------------------------------------------------


def drain(ledger: Ledger, job: str, stage: str, owner: str) -> int:
    """Claim ``CLAIM_LIMIT`` partitions at a time and complete them as done, until none is
    left; return how many completions the ledger applied."""
    from backfill.ledger import Outcome, Status

    finished = 0
    while True:
        claims = ledger.claim(
            job,
            stage,
            owner,
            limit=CLAIM_LIMIT,
            lease_seconds=60.0,
            now=time.time(),
            run_id="bench",
        )
        if not claims:
            return finished
        finished += ledger.complete(
            owner, [Outcome(c.id, Status.DONE) for c in claims], now=time.time()
        )


def case_ledger(n: int, directory: Path) -> Result:
    from backfill.ledger import open_ledger

    ledger = open_ledger(f"sqlite:///{directory / 'state.db'}")
    start_rss = current_rss_mb()
    spec = make_spec(n)
    t0 = time.perf_counter()
    planned = ledger.plan(JOB, STAGE, spec)
    t1 = time.perf_counter()
    finished = drain(ledger, JOB, STAGE, OWNER)
    t2 = time.perf_counter()
    # Outside the timed region: prove the work was really done, so a fast wrong ledger
    # cannot produce a flattering number.
    done = ledger.counts(JOB, [STAGE])[STAGE].done
    ledger.close()
    if not planned == finished == done == n:
        raise RuntimeError(f"ledger: planned {planned}, completed {finished}, done {done} of {n}")
    return Result("ledger", n, t1 - t0, t2 - t1, t2 - t0, peak_rss_mb(), start_rss)


def case_runner(n: int, directory: Path, concurrency: int) -> Result:
    from backfill import Job
    from backfill.ledger.sqlite import SQLiteLedger
    from backfill.partitions import Partition
    from backfill.runner import Runner, RunOptions

    class TimedPlanLedger(SQLiteLedger):
        """The SQLite ledger, timing ``plan`` so the runner's time can be split up."""

        plan_seconds = 0.0

        def plan(
            self, job: str, stage: str, partitions: Any, *, fingerprint: str | None = None
        ) -> int:
            started = time.perf_counter()
            try:
                return super().plan(job, stage, partitions, fingerprint=fingerprint)
            finally:
                self.plan_seconds += time.perf_counter() - started

    job = Job(JOB, partitions=make_spec(n))

    @job.stage
    async def noop(ctx: object, partition: Partition) -> None:
        return None

    ledger = TimedPlanLedger(directory / "state.db")
    start_rss = current_rss_mb()
    runner = Runner(job, ledger, RunOptions(concurrency=concurrency))
    t0 = time.perf_counter()
    result = asyncio.run(runner.run())
    total = time.perf_counter() - t0
    ledger.close()
    done = result.counts[STAGE].done
    if result.exit_code != 0 or done != n or result.executed != n:
        raise RuntimeError(
            f"runner: exit {result.exit_code}, executed {result.executed}, done {done} of {n}"
        )
    notes = [f"runner concurrency={concurrency}"]
    if total > RUNNER_SLOW_SECONDS:
        notes.append(
            f"runner took {total:.0f} s for {n:,} partitions "
            f"(more than {RUNNER_SLOW_SECONDS / 60:.0f} minutes)"
        )
    plan = ledger.plan_seconds
    return Result("runner", n, plan, total - plan, total, peak_rss_mb(), start_rss, notes)


def _baseline_keys(n: int) -> Iterator[str]:
    spec = make_spec(n)
    return (p.key for p in spec)


def case_baseline(n: int, directory: Path) -> Result:
    """The hand-written script the ledger replaces: per-row commits, nothing batched."""
    # Same import cost as the other cases (the spec comes from backfill), so the RSS
    # column compares bookkeeping, not interpreters.
    import backfill.partitions  # noqa: F401

    conn = sqlite3.connect(directory / "state.db", isolation_level=None)
    # The same durability settings as the ledger, so the comparison is like for like.
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(
        "CREATE TABLE partitions (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, "
        "status TEXT NOT NULL DEFAULT 'pending', started_at REAL, finished_at REAL)"
    )
    start_rss = current_rss_mb()
    t0 = time.perf_counter()
    # Even a hand-written script inserts its list in one transaction; a row-per-commit
    # insert would make the baseline look worse than anyone would write it.
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT OR IGNORE INTO partitions (key) VALUES (?)", ((k,) for k in _baseline_keys(n))
    )
    conn.execute("COMMIT")
    t1 = time.perf_counter()
    for key in _baseline_keys(n):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "UPDATE partitions SET status = 'running', started_at = ? "
            "WHERE key = ? AND status = 'pending'",
            (time.time(), key),
        )
        conn.execute("COMMIT")
        # ... the partition's work would go here ...
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "UPDATE partitions SET status = 'done', finished_at = ? WHERE key = ?",
            (time.time(), key),
        )
        conn.execute("COMMIT")
    t2 = time.perf_counter()
    (done,) = conn.execute("SELECT count(*) FROM partitions WHERE status = 'done'").fetchone()
    conn.close()
    if done != n:
        raise RuntimeError(f"baseline: done {done} of {n}")
    return Result("baseline", n, t1 - t0, t2 - t1, t2 - t0, peak_rss_mb(), start_rss)


def child_main(case: str, n: int, directory: Path, concurrency: int) -> None:
    if case == "ledger":
        result = case_ledger(n, directory)
    elif case == "runner":
        result = case_runner(n, directory, concurrency)
    elif case == "baseline":
        result = case_baseline(n, directory)
    else:
        raise SystemExit(f"unknown case {case!r}")
    print(json.dumps(asdict(result)), flush=True)


# -- the driver (parent process) ---------------------------------------------------------


def run_child(case: str, n: int, concurrency: int, tmp_root: str | None) -> Result:
    """Run one case in a fresh interpreter with a fresh ledger file; return its result."""
    with tempfile.TemporaryDirectory(prefix=f"ledger-bench-{case}-", dir=tmp_root) as tmp:
        command = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            case,
            "--n",
            str(n),
            "--dir",
            tmp,
            "--concurrency",
            str(concurrency),
        ]
        # stderr passes through, so a child's traceback or warning is seen as it happens.
        proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return Result(**data)


def _rate(n: int, seconds: float | None) -> str:
    return "—" if not seconds else f"{n / seconds:,.0f}"


def machine_facts() -> list[str]:
    return [
        *_machine.facts(),
        f"- SQLite {sqlite3.sqlite_version}",
        f"- temp dir: {tempfile.gettempdir()}",
    ]


def table(rows: list[tuple[int, Result]]) -> list[str]:
    lines = [
        "| case | partitions | plan/s | claim+complete/s | overall/s | peak RSS MB | vs baseline |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    baselines = {size: r for size, r in rows if r.case == "baseline"}
    for size, r in rows:
        base = baselines.get(size)
        if r.case == "baseline":
            shown = (
                f"{r.n:,}"
                if r.n == size
                else f"{r.n:,} (→ {size:,}: ~{size / r.overall_rate:,.0f} s)"
            )
            versus = "1.0×"
        else:
            shown = f"{r.n:,}"
            versus = f"{r.overall_rate / base.overall_rate:,.1f}×" if base else "—"
        lines.append(
            f"| {r.case} | {shown} | {_rate(r.n, r.plan_s)} | {_rate(r.n, r.work_s)} | "
            f"{_rate(r.n, r.total_s)} | {r.rss_mb:,.0f} | {versus} |"
        )
    return lines


def verdicts(rows: list[tuple[int, Result]]) -> list[str]:
    target = next((r for size, r in rows if r.case == "ledger" and size == TARGET_N), None)
    if target is None:
        return [f"- targets: not checked ({TARGET_N:,} partitions not among --sizes)"]
    rate, rss = target.overall_rate, target.rss_mb
    return [
        f"- overall >= {TARGET_RATE:,.0f} partitions/s at {TARGET_N:,} (ledger): "
        f"{'PASS' if rate >= TARGET_RATE else 'MISS'} ({rate:,.0f}/s)",
        f"- peak RSS < {TARGET_RSS_MB:.0f} MB at {TARGET_N:,} (ledger): "
        f"{'PASS' if rss < TARGET_RSS_MB else 'MISS'} ({rss:,.0f} MB)",
    ]


def parse_sizes(text: str) -> list[int]:
    sizes = [int(s.replace("_", "")) for s in text.split(",") if s.strip()]
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError("sizes must be positive integers, e.g. 100000,1000000")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--sizes",
        type=parse_sizes,
        default=list(DEFAULT_SIZES),
        help="comma-separated partition counts (default: 100000,1000000)",
    )
    parser.add_argument("--quick", action="store_true", help="sizes 10000,100000")
    parser.add_argument(
        "--cases",
        default=",".join(CASES),
        help=f"comma-separated subset of {','.join(CASES)} (default: all)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=64, help="RunOptions.concurrency (default: 64)"
    )
    parser.add_argument("--tmpdir", default=None, help="where ledger files go (default: system)")
    # Internal: run one case in this process (the driver spawns these). Also handy for
    # profiling a single case: py-spy record -- python bench/ledger_bench.py --child ...
    parser.add_argument("--child", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        child_main(args.child, args.n, args.dir, args.concurrency)
        return 0

    sizes = list(QUICK_SIZES) if args.quick else args.sizes
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(cases) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    for size in sizes:
        # A size with no divisor up to 100 becomes that many days, which must fit the calendar.
        if shape(size)[0] > (date.max - FIRST_DAY).days:
            parser.error(f"size {size:,} has too few small divisors; pick a round number")
    rows: list[tuple[int, Result]] = []
    for size in sizes:
        for case in cases:
            n = min(size, BASELINE_CAP) if case == "baseline" else size
            print(f"# {case}: {n:,} partitions ...", file=sys.stderr, flush=True)
            result = run_child(case, n, args.concurrency, args.tmpdir)
            print(
                f"#   {result.total_s:.1f} s, {result.overall_rate:,.0f}/s, "
                f"peak RSS {result.rss_mb:.0f} MB",
                file=sys.stderr,
                flush=True,
            )
            rows.append((size, result))

    out = ["", *table(rows), "", "Machine:", *machine_facts(), "", "Targets (informative):"]
    out += verdicts(rows)
    notes = sorted({note for _, r in rows for note in r.notes})
    fixed = max((r.start_rss_mb for _, r in rows), default=0.0)
    out += [
        "",
        "Notes:",
        "- each case runs in a fresh subprocess on a fresh SQLite file (WAL, synchronous=NORMAL)",
        f"- peak RSS includes the interpreter and imports (up to {fixed:.0f} MB before any work)",
        "- runner: plan/s is the runner's plan call; claim+complete/s also covers executing "
        "the no-op stage and run bookkeeping",
        f"- baseline runs at most {BASELINE_CAP:,} partitions; '→ N: ~s' extrapolates its rate",
        *(f"- {note}" for note in notes),
    ]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
