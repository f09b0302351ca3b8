#!/usr/bin/env python
"""Engine benchmark: what ``backfill run`` itself costs per partition, as a user meets it.

Run from the repository root::

    .venv/bin/python bench/engine_bench.py                     # N = 100,000 and 1,000,000
    .venv/bin/python bench/engine_bench.py --quick             # N = 10,000 and 100,000
    .venv/bin/python bench/engine_bench.py --baseline ../main/.venv/bin/backfill --rounds 2

Cases, each a fresh process on a fresh SQLite state, its peak RSS its own:

* ``run``      -- the ``backfill`` command of this checkout: ``backfill run job.py
  --progress none`` of a job whose one stage (``async def``, concurrency 4, the default)
  returns None, N partitions (daily, crossed with one dimension); process start, job
  loading, planning and the run's end included, as a user meets them.
* ``baseline`` -- the same command and job with another ``backfill`` (``--baseline``:
  e.g. a worktree of the commit before a change, in its own venv), so both are measured
  in the same minutes.
* ``ledger``   -- the ledger alone (``ledger_bench.py``'s ``ledger`` case: plan, then
  claim 1,000 / complete until done), no engine: the floor under the engine's figure.

With ``--rounds`` above 1 the cases alternate round after round, so a busy moment of a
shared machine falls on either side; the machine's 1-minute load average is printed
beside every figure. This is a measurement, not a test: it asserts no timings.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import _machine

CASES = ("run", "baseline", "ledger")
DEFAULT_SIZES = (100_000, 1_000_000)
QUICK_SIZES = (10_000, 100_000)
TARGET_N = 1_000_000
TARGET_RATE = 25_000.0
TARGET_RSS_MB = 150.0
FLAT_WITHIN = 0.10
HERE = Path(__file__).resolve().parent

# The job both commands run: N partitions, a daily spec crossed with one dimension of
# as many values (up to 100) as divide N, so the count is exact; or (--shape days) N days.
JOB = """
import os
from datetime import date, timedelta

from backfill import Job, daily

N = int(os.environ["ENGINE_BENCH_N"])
DAYS_ONLY = os.environ.get("ENGINE_BENCH_SHAPE") == "days"
VALUES = 1 if DAYS_ONLY else max(v for v in range(1, 101) if N % v == 0)
FIRST = date(1900, 1, 1)
job = Job(
    "engine-bench",
    partitions=daily(
        FIRST,
        FIRST + timedelta(days=N // VALUES - 1),
        **({} if DAYS_ONLY else {"region": [f"r{i:03d}" for i in range(VALUES)]}),
    ),
)


@job.stage
async def noop(ctx, partition):
    return None
"""


@dataclass
class Row:
    round: int
    case: str
    n: int
    seconds: float
    cpu: float  # user + system CPU seconds of the whole process
    rss_mb: float
    load: float

    @property
    def rate(self) -> float:
        return self.n / self.seconds


def load_now() -> float:
    return os.getloadavg()[0]


def timed_child(
    command: list[str], env: dict[str, str], cwd: Path
) -> tuple[float, float, float, str]:
    """Run ``command``; its wall time, CPU time and own peak RSS (MB), from wait4, and
    its stdout."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        errors = proc.stderr.read().decode(errors="replace")
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {proc.returncode}:\n{text}\n{errors}")
    # ru_maxrss is kilobytes on Linux, bytes on macOS.
    rss = usage.ru_maxrss / (1024 * 1024) if sys.platform == "darwin" else usage.ru_maxrss / 1024
    return seconds, usage.ru_utime + usage.ru_stime, rss, text


def run_case(case: str, n: int, backfill: dict[str, str], tmp_root: str | None, shape: str) -> Row:
    load = load_now()
    with tempfile.TemporaryDirectory(prefix=f"engine-bench-{case}-", dir=tmp_root) as tmp:
        directory = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("BACKFILL_")}
        if case == "ledger":
            command = [
                sys.executable,
                str(HERE / "ledger_bench.py"),
                "--child",
                "ledger",
                "--n",
                str(n),
                "--dir",
                tmp,
            ]
            _, cpu, rss, text = timed_child(command, env, directory)
            # The ledger's own time (plan + claim/complete), as ledger_bench reports it.
            seconds = json.loads(text.strip().splitlines()[-1])["total_s"]
        else:
            (directory / "job.py").write_text(textwrap.dedent(JOB))
            env["ENGINE_BENCH_N"] = str(n)
            env["ENGINE_BENCH_SHAPE"] = shape
            command = [
                backfill[case],
                "run",
                "job.py",
                "--state",
                "sqlite:///state.db",
                "--progress",
                "none",
            ]
            seconds, cpu, rss, text = timed_child(command, env, directory)
            if f"{n:,} done" not in text:
                raise RuntimeError(f"{case}: not every partition done:\n{text}")
    return Row(0, case, n, seconds, cpu, rss, load)


def table(rows: list[Row]) -> list[str]:
    lines = [
        "| round | partitions | case | wall s | partitions/s | CPU s | peak RSS MB | load |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.round} | {r.n:,} | {r.case} | {r.seconds:.1f} | {r.rate:,.0f} | "
            f"{r.cpu:.1f} | {r.rss_mb:.0f} | {r.load:.1f} |"
        )
    return lines


def verdicts(rows: list[Row]) -> list[str]:
    runs = [r for r in rows if r.case == "run"]
    at_target = [r for r in runs if r.n == TARGET_N]
    if not at_target:
        return [f"- targets: not checked ({TARGET_N:,} partitions not among --sizes)"]
    best = max(at_target, key=lambda r: r.rate)
    rss = max(r.rss_mb for r in at_target)
    out = [
        f"- run >= {TARGET_RATE:,.0f} partitions/s at {TARGET_N:,} (best of "
        f"{len(at_target)}, load {best.load:.1f}): "
        f"{'PASS' if best.rate >= TARGET_RATE else 'MISS'} ({best.rate:,.0f}/s)",
        f"- run peak RSS < {TARGET_RSS_MB:.0f} MB at {TARGET_N:,}: "
        f"{'PASS' if rss < TARGET_RSS_MB else 'MISS'} ({rss:.0f} MB)",
    ]
    small = [r.rss_mb for r in runs if r.n == min(r.n for r in runs)]
    if small and min(r.n for r in runs) < TARGET_N:
        growth = rss / min(small) - 1
        out.append(
            f"- run peak RSS flat within {FLAT_WITHIN:.0%} from {min(r.n for r in runs):,} to "
            f"{TARGET_N:,}: {'PASS' if growth <= FLAT_WITHIN else 'MISS'} ({growth:+.1%})"
        )
    return out


def parse_sizes(text: str) -> list[int]:
    sizes = [int(s.replace("_", "")) for s in text.split(",") if s.strip()]
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError("sizes must be positive integers, e.g. 100000,1000000")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--sizes", type=parse_sizes, default=list(DEFAULT_SIZES))
    parser.add_argument("--quick", action="store_true", help="sizes 10000,100000")
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds (default 1)")
    parser.add_argument(
        "--backfill",
        default=str(Path(sys.executable).with_name("backfill")),
        help="the backfill command measured (default: the one beside this Python)",
    )
    parser.add_argument(
        "--baseline", default=None, help="another backfill command to compare, same job"
    )
    parser.add_argument("--no-ledger", action="store_true", help="skip the ledger-alone case")
    parser.add_argument(
        "--shape",
        choices=("regions", "days"),
        default="regions",
        help="regions: days x one dimension (default); days: N daily partitions",
    )
    parser.add_argument("--tmpdir", default=None, help="where state files go (default: system)")
    args = parser.parse_args(argv)

    sizes = list(QUICK_SIZES) if args.quick else args.sizes
    commands = {"run": args.backfill}
    cases = ["run"]
    if args.baseline:
        commands["baseline"] = args.baseline
        cases.insert(0, "baseline")
    if not args.no_ledger:
        cases.append("ledger")
    rows: list[Row] = []
    for round_ in range(1, args.rounds + 1):
        for size in sizes:
            # Alternate which side goes first from round to round.
            order = cases if round_ % 2 else list(reversed(cases))
            for case in order:
                print(f"# round {round_}: {case}, {size:,} partitions ...", file=sys.stderr)
                row = run_case(case, size, commands, args.tmpdir, args.shape)
                row.round = round_
                print(
                    f"#   {row.seconds:.1f} s, {row.rate:,.0f}/s, CPU {row.cpu:.1f} s, "
                    f"peak RSS {row.rss_mb:.0f} MB, load {row.load:.1f}",
                    file=sys.stderr,
                    flush=True,
                )
                rows.append(row)
    out = ["", *table(rows), "", "Machine:", *_machine.facts(), ""]
    out += [f"- run: {args.backfill}", f"- job shape: {args.shape}"]
    if args.baseline:
        out += [f"- baseline: {args.baseline}"]
    out += ["", "Targets (informative):", *verdicts(rows)]
    out += [
        "",
        "Notes:",
        "- run and baseline: the whole command (start, job loading, planning, the run, its "
        "end); ledger: the ledger's own plan + claim/complete time, in its own process",
        "- CPU s: user + system CPU of the whole process (both of a run's threads), which "
        "a busy machine inflates far less than wall time",
        "- load: the 1-minute load average as the case started (2 cores: above 2 is shared)",
    ]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
