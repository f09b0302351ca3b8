"""The huge-partition pattern (``ctx.write`` each page, then ``ctx.save_checkpoint``) into
an append table, killed with SIGKILL again and again: every row lands exactly once."""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import textwrap
import time
from pathlib import Path

from conftest import backfill_cmd, cli_env

PAGED_JOB = """
import asyncio
import os

from backfill import Job, daily, table

PAGES = 8
PER_PAGE = 25

job = Job(
    "paged",
    partitions=daily("2013-01-01", "2013-01-24"),
    sink=table(os.environ["SINK_URL"], "items", mode="append"),
)


def page_of(partition, number):
    # A deterministic source: page ``number`` of a day, computed from its key.
    first = number * PER_PAGE
    return [
        {"day": partition.key, "item": i, "value": partition.start.toordinal() * 1000 + i}
        for i in range(first, first + PER_PAGE)
    ]


@job.stage(concurrency=4)
async def fetch(ctx, partition):
    number = int(ctx.checkpoint or 0)
    while number < PAGES:
        await asyncio.sleep(0.01)  # the source's latency
        await ctx.write(page_of(partition, number))
        number += 1
        await ctx.save_checkpoint(str(number))
"""

PARTITIONS = 24
PAGE_ROWS = 25
ROWS = PARTITIONS * 8 * PAGE_ROWS
KILLS = 10


# Where each variant keeps its ledger: in another file, or in the sink's own. The two
# run side by side (each round starts both), which halves the test's time.
STATES = {"separate": "state.db", "shared": "out.db"}


def _spawn(workdir: Path, *args: str, quiet: bool = True) -> subprocess.Popen[str]:
    name = workdir.name
    return subprocess.Popen(
        [*backfill_cmd(), *args, "job.py", "--state", STATES[name], "--progress", "plain"],
        cwd=workdir,
        env=cli_env({"SINK_URL": "out.db"}),
        stdout=subprocess.DEVNULL if quiet else subprocess.PIPE,
        stderr=subprocess.DEVNULL if quiet else subprocess.PIPE,
        text=True,
    )


def _rows(workdir: Path) -> int:
    try:
        with sqlite3.connect(workdir / "out.db", timeout=5) as conn:
            return int(conn.execute("SELECT count(*) FROM items").fetchone()[0])
    except sqlite3.OperationalError:
        return 0  # no table yet


def _kill_round(dirs: list[Path], rngs: dict[str, random.Random]) -> None:
    """Start a run in each directory and SIGKILL it at a random moment while it pages
    through partitions: once it has written 1 to 8 pages more than before (the pace of
    the run does not matter, so the kills are never spent before the job ends), plus up
    to 20 ms (so a kill lands anywhere between a page and its checkpoint)."""
    before = {d.name: _rows(d) for d in dirs}
    target = {name: rows + PAGE_ROWS * rngs[name].randint(1, 8) for name, rows in before.items()}
    procs = {d.name: (d, _spawn(d, "run")) for d in dirs}
    kill_at: dict[str, float] = {}
    deadline = time.monotonic() + 30
    while procs and time.monotonic() < deadline:
        now = time.monotonic()
        for name, (workdir, proc) in list(procs.items()):
            if name not in kill_at:
                if proc.poll() is None and _rows(workdir) < target[name]:
                    continue
                kill_at[name] = now + rngs[name].uniform(0.0, 0.02)
            elif now >= kill_at[name]:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)
                del procs[name]
        time.sleep(0.002)
    for _, proc in procs.values():
        proc.kill()
        proc.wait(timeout=30)


def _failures(workdir: Path, state: str) -> set[str]:
    with sqlite3.connect(workdir / state) as conn:
        rows = conn.execute(
            "SELECT DISTINCT error_category FROM backfill_partitions WHERE status = 'failed'"
        ).fetchall()
    return {r[0] for r in rows}


def _ledger(workdir: Path, state: str) -> tuple[int, int]:
    """How many partitions are done, and how many stopped midway with a checkpoint."""
    with sqlite3.connect(workdir / state) as conn:
        ((done, midway),) = conn.execute(
            "SELECT count(*) FILTER (WHERE status = 'done'), "
            "count(*) FILTER (WHERE status != 'done' AND checkpoint IS NOT NULL) "
            "FROM backfill_partitions"
        ).fetchall()
    return int(done), int(midway)


def test_sigkill_at_random_points_of_a_checkpointed_append_leaves_exact_rows(
    tmp_path: Path,
) -> None:
    """Killed with SIGKILL at 10 random moments while it pages through partitions, rerun
    after each kill, then run to the end: exact rows, none twice, whether the ledger is
    another file or the sink's own."""
    dirs = [tmp_path / name for name in STATES]
    for workdir in dirs:
        workdir.mkdir()
        (workdir / "job.py").write_text(textwrap.dedent(PAGED_JOB))
    seed = 14
    rngs = {name: random.Random(f"{seed}-{name}") for name in STATES}
    after_kills: dict[str, list[tuple[int, int]]] = {name: [] for name in STATES}
    for _ in range(KILLS):
        _kill_round(dirs, rngs)
        for workdir in dirs:
            after_kills[workdir.name].append(_ledger(workdir, STATES[workdir.name]))
    for name, kills in after_kills.items():
        # Every kill but maybe the last came before the end, and some came midway.
        assert kills[-2][0] < PARTITIONS, f"{name}, seed {seed}: finished early: {kills}"
        assert any(midway for _, midway in kills), f"{name}, seed {seed}: none midway"
    finals = {workdir: _spawn(workdir, "run", quiet=False) for workdir in dirs}
    for workdir, proc in finals.items():
        name, state = workdir.name, STATES[workdir.name]
        _, err = proc.communicate(timeout=60)
        if proc.returncode == 1:
            # A partition whose worker died three times in a row is failed as worker_lost
            # (it may be what kills them); a retry resumes it from its checkpoint.
            assert _failures(workdir, state) <= {"worker_lost"}, err[-2000:]
            retry = _spawn(workdir, "retry", "--failed", quiet=False)
            _, err = retry.communicate(timeout=60)
            proc = retry
        assert proc.returncode == 0, f"{name}, seed {seed}: {err[-2000:]}"
        assert _ledger(workdir, state) == (PARTITIONS, 0)
        with sqlite3.connect(workdir / "out.db") as conn:
            total, distinct = conn.execute(
                "SELECT count(*), (SELECT count(*) FROM (SELECT DISTINCT day, item FROM items)) "
                "FROM items"
            ).fetchone()
        assert (total, distinct) == (ROWS, ROWS), f"{name}, seed {seed}: {after_kills[name]}"
