"""The command line, end to end, on the sample job."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from conftest import backfill_cmd, cli_env, executions, run_cli

STATE = ".backfill/state.db"


def ledger_counts(workdir: Path, state: str = STATE) -> dict[str, int]:
    with sqlite3.connect(workdir / state) as conn:
        return dict(conn.execute("SELECT status, count(*) FROM backfill_partitions GROUP BY 1"))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "job.py", "--from", "2013-02-01", "--to", "2013-01-01"], "is after --to"),
        (["run", "job.py", "--stage", "nope"], "unknown stage 'nope'"),
        (["run", "missing.py"], "does not exist"),
        (["run", "broken.py"], "syntax error at line 3"),
        (["run", "inverted.py"], "is after end"),
        (["run", "job.py", "--state", "sqlite:///no/such/dir/state.db"], "does not exist"),
        (["run", "job.py", "--from", "2013-02-30"], "is not a valid date"),
        (["run", "job.py", "--where", "tour=atp"], "unknown dimension 'tour'"),
        (["run", "job.py", "--partition", "1999-01-01"], "unknown partition '1999-01-01'"),
        (["run", "job.py", "--from", "2020-01-01"], "no partition matches"),
        (["run", "job.py", "--order", "sideways"], "unknown order"),
        (["status", "job.py", "--stage", "nope"], "unknown stage"),
        (["plan", "missing.py"], "does not exist"),
        (["retry", "job.py"], "--failed"),
        (["reset", "job.py", "--partition", "x"], "unknown partition"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    workdir: Path, args: list[str], expected: str
) -> None:
    """Bad input gets one line saying what to fix, exit code 2, and no state file."""
    (workdir / "broken.py").write_text("from backfill import Job\n\njob = Job('x'\n")
    (workdir / "inverted.py").write_text(
        "from backfill import Job, daily\njob = Job('x', partitions=daily('2014-01-01', "
        "'2013-01-01'))\n"
    )
    result = run_cli(*args, cwd=workdir)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert lines[0].startswith("error: ")
    assert not (workdir / ".backfill").exists()
    assert not (workdir / "no").exists()
    assert "Traceback" not in result.stderr + result.stdout


def test_bad_input_leaves_an_existing_ledger_unchanged(workdir: Path) -> None:
    """After a run, a bad command does not touch the state file."""
    (workdir / "fixed").touch()
    assert run_cli("run", "job.py", cwd=workdir).returncode == 0
    state = workdir / STATE
    before = (state.read_bytes(), state.stat().st_mtime_ns)
    result = run_cli("run", "job.py", "--stage", "nope", cwd=workdir)
    assert result.returncode == 2
    assert (state.read_bytes(), state.stat().st_mtime_ns) == before


def test_failures_are_listed_and_retry_reruns_only_them(workdir: Path) -> None:
    """Permanent failures: exit 1, listed by status; retry --failed reruns just those, exit 0."""
    first = run_cli("run", "job.py", cwd=workdir)
    assert first.returncode == 1, first.stdout + first.stderr
    assert ledger_counts(workdir) == {"done": 87, "failed": 3}

    status = run_cli("status", "job.py", cwd=workdir)
    assert status.returncode == 0
    assert "UNLUCKY" in status.stdout
    assert "unlucky day 2013-01-13" in status.stdout
    for key in ("2013-01-13", "2013-02-13", "2013-03-13"):
        assert key in status.stdout

    (workdir / "fixed").touch()
    again = run_cli("retry", "job.py", "--failed", cwd=workdir)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "re-running 3 partition(s)" in again.stdout
    assert ledger_counts(workdir) == {"done": 90}
    runs = executions(workdir)
    assert {k for k, n in runs.items() if n == 2} == {"2013-01-13", "2013-02-13", "2013-03-13"}
    assert all(n in (1, 2) for n in runs.values())
    assert len(runs) == 90


PIPELINE_JOB = """
from pathlib import Path
from backfill import Job, PermanentError, RetryPolicy, daily, needs

HERE = Path(__file__).parent
job = Job("pipeline", partitions=daily("2013-01-01", "2013-01-20"))

@job.stage(retry=RetryPolicy(attempts=1))
async def fetch(ctx, partition):
    if partition.key == "2013-01-05" and not (HERE / "fixed").exists():
        raise PermanentError("not published yet", category="missing")
    return None

@job.stage(needs=[needs("fetch", lookback=2)])
async def rolling(ctx, partition):
    return None
"""


def test_retry_of_a_failed_input_also_runs_the_partitions_that_waited_for_it(
    tmp_path: Path,
) -> None:
    """retry --failed re-runs the failed partition and the later stage's partitions
    that were waiting for it, so nothing is left pending behind an "ok"."""
    (tmp_path / "job.py").write_text(textwrap.dedent(PIPELINE_JOB))
    first = run_cli("run", "job.py", cwd=tmp_path)
    assert first.returncode == 1, first.stdout + first.stderr
    assert ledger_counts(tmp_path) == {"done": 36, "failed": 1, "pending": 3}
    (tmp_path / "fixed").touch()
    again = run_cli("retry", "job.py", "--failed", cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "re-running 1 partition(s)" in again.stdout
    assert ledger_counts(tmp_path) == {"done": 40}


def test_sigint_saves_state_and_the_next_run_finishes_the_rest(workdir: Path) -> None:
    """Ctrl+C: exit 130, status shows partial progress, the next run completes the rest
    without redoing finished partitions."""
    (workdir / "fixed").touch()
    proc = subprocess.Popen(
        [*backfill_cmd(), "run", "job.py", "--progress", "plain"],
        cwd=workdir,
        env=cli_env({"SAMPLE_DELAY": "0.1"}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while sum(executions(workdir).values()) < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, out + err
    assert "resume" in out

    counts = ledger_counts(workdir)
    assert counts.get("running", 0) == 0
    done_before = counts["done"]
    assert 0 < done_before < 90
    status = run_cli("status", "job.py", cwd=workdir)
    assert f"{done_before:,}" in status.stdout
    with sqlite3.connect(workdir / STATE) as conn:
        finished = {
            k for (k,) in conn.execute("SELECT key FROM backfill_partitions WHERE status = 'done'")
        }
    before = executions(workdir)

    rest = run_cli("run", "job.py", "--progress", "plain", cwd=workdir)
    assert rest.returncode == 0, rest.stdout + rest.stderr
    assert ledger_counts(workdir) == {"done": 90}
    after = executions(workdir)
    for key in finished:
        assert after[key] == before[key]


def test_plain_progress_lines_when_not_a_terminal(workdir: Path) -> None:
    """Without a terminal, progress comes as plain lines with counts, rate and ETA."""
    (workdir / "fixed").touch()
    result = run_cli("run", "job.py", cwd=workdir)
    assert result.returncode == 0
    assert "fetch: 90/90 (100%) done 90" in result.stdout
    assert "ETA" in result.stdout
    assert "\x1b[" not in result.stdout


def test_plan_is_a_dry_run(workdir: Path) -> None:
    """plan counts what a run would do, executes nothing and creates no state."""
    result = run_cli("plan", "job.py", cwd=workdir)
    assert result.returncode == 0
    assert "90 partition(s) to run" in result.stdout
    assert not (workdir / ".backfill").exists()
    assert not executions(workdir)

    (workdir / "fixed").touch()
    run_cli("run", "job.py", "--to", "2013-01-31", cwd=workdir)
    partial = run_cli("plan", "job.py", cwd=workdir)
    assert "59 partition(s) to run" in partial.stdout


def test_selection_from_the_command_line(workdir: Path) -> None:
    """--from/--to and --partition restrict a run to exactly those partitions."""
    (workdir / "fixed").touch()
    run_cli("run", "job.py", "--from", "2013-03-30", cwd=workdir)
    run_cli("run", "job.py", "--partition", "2013-01-05", "-p", "2013-01-07", cwd=workdir)
    assert set(executions(workdir)) == {"2013-03-30", "2013-03-31", "2013-01-05", "2013-01-07"}


def test_reset_needs_confirmation_and_then_forgets(workdir: Path) -> None:
    """reset refuses without --yes off a terminal; with --yes the next run redoes the work."""
    (workdir / "fixed").touch()
    run_cli("run", "job.py", "--to", "2013-01-10", cwd=workdir)
    refused = run_cli("reset", "job.py", cwd=workdir)
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    assert ledger_counts(workdir)["done"] == 10

    done = run_cli("reset", "job.py", "--from", "2013-01-06", "--yes", cwd=workdir)
    assert done.returncode == 0
    assert "reset 85 partition record(s)" in done.stdout
    assert ledger_counts(workdir) == {"done": 5}


def test_state_option_and_module_job_reference(workdir: Path) -> None:
    """--state puts the ledger where asked; a job can be named as path.py:NAME."""
    (workdir / "fixed").touch()
    (workdir / "state").mkdir()
    result = run_cli(
        "run",
        "job.py:job",
        "--state",
        "sqlite:///state/mine.db",
        "--to",
        "2013-01-03",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    assert not (workdir / ".backfill").exists()
    assert ledger_counts(workdir, "state/mine.db") == {"done": 3, "pending": 87}


@pytest.mark.parametrize("command", ["run", "plan", "status", "retry", "reset", "demo"])
def test_every_command_has_help_with_examples(workdir: Path, command: str) -> None:
    """``--help`` works for every command and shows examples."""
    result = run_cli(command, "--help", cwd=workdir)
    assert result.returncode == 0
    assert "Examples" in result.stdout


def test_two_concurrent_runs_share_the_work_without_overlap(workdir: Path) -> None:
    """Two runs of one job started together on one state file execute every partition
    exactly once: the run lock lets one through, the other stops at once with exit 75
    and its one line (or finds nothing left, when it comes after the first ended)."""
    (workdir / "fixed").touch()
    procs = [
        subprocess.Popen(
            [*backfill_cmd(), "run", "job.py", "--progress", "none"],
            cwd=workdir,
            env=cli_env({"SAMPLE_DELAY": "0.02"}),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    codes = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        codes.append(proc.returncode)
        assert proc.returncode in (0, 75), out + err
        if proc.returncode == 75:
            assert "is held by" in err, out + err
            assert len(err.strip().splitlines()) == 1, err
    assert 0 in codes  # the run that finished last leaves nothing behind
    runs = executions(workdir)
    assert len(runs) == 90
    assert set(runs.values()) == {1}
    assert ledger_counts(workdir) == {"done": 90}


KILLER_JOB = """
import os, signal
from pathlib import Path
from backfill import Job, daily

LOG = Path(__file__).parent / "executions.log"
job = Job("killer", partitions=daily("2013-01-01", "2013-01-05"))

@job.stage(concurrency=1)
async def fetch(ctx, partition):
    with LOG.open("a") as log:
        log.write(partition.key + "\\n")
    if partition.key == "2013-01-03":
        os.kill(os.getpid(), signal.SIGKILL)  # e.g. out of memory on this day's data
    return None
"""


def test_a_partition_that_kills_its_worker_ends_failed_after_three_deaths(
    tmp_path: Path,
) -> None:
    """A day whose stage kills the process is retried by the next runs (each finds the
    dead worker and takes its leases back), alone, so the run after its third death
    fails it as worker_lost, and it alone: the days that shared its batch finish."""
    (tmp_path / "job.py").write_text(textwrap.dedent(KILLER_JOB))
    codes = [run_cli("run", "job.py", cwd=tmp_path).returncode for _ in range(4)]
    assert codes == [-9, -9, -9, 1]
    runs = executions(tmp_path)
    assert runs["2013-01-03"] == 3
    # Done before the first death, maybe not yet on record: at most once more.
    assert runs["2013-01-01"] in (1, 2) and runs["2013-01-02"] in (1, 2)
    assert runs["2013-01-04"] == runs["2013-01-05"] == 1
    assert ledger_counts(tmp_path) == {"done": 4, "failed": 1}
    last = run_cli("run", "job.py", cwd=tmp_path)
    assert last.returncode == 1
    assert "worker_lost" in last.stdout and "backfill retry --failed" in last.stdout, last.stdout
    status = run_cli("status", "job.py", cwd=tmp_path)
    assert "worker_lost" in status.stdout, status.stdout
    assert "died 3 times in a row" in status.stdout


def test_status_says_when_a_dead_workers_partitions_come_back(workdir: Path) -> None:
    """A dead worker of this host (its process gone): a run starting here takes its
    partitions back at once, and `status` says so beside the lease's expiry; of dead
    workers elsewhere only (silent past their lease), the expiry alone."""
    from backfill import daily
    from backfill.engine.lease import host
    from backfill.ledger import WorkerRecord, open_ledger

    state = workdir / ".backfill" / "state.db"
    state.parent.mkdir()
    ledger = open_ledger(f"sqlite:///{state}")
    ledger.plan("sample", "fetch", daily("2013-01-01", "2013-03-31"))
    gone = subprocess.Popen(["true"])
    gone.wait()
    now = time.time()
    for worker, where, pid in (("here", host(), gone.pid), ("there", "elsewhere", 1)):
        ledger.register_worker(WorkerRecord(worker, "sample", where, pid, now - 9, now - 9, None))
        ledger.claim("sample", "fetch", worker, limit=2, lease_seconds=60, now=now - 9, run_id="r")
    ledger.close()
    expiry = "their partitions return to the pool when their leases expire (60 s after the last"

    status = run_cli("status", "job.py", cwd=workdir)
    assert status.returncode == 0, status.stderr
    text = " ".join(status.stdout.split())
    assert f"1 dead worker(s): {expiry} heartbeat), or at once when a run starts on this host" in (
        text
    ), status.stdout

    ledger = open_ledger(f"sqlite:///{state}")
    ledger.stop_worker("here", now=now)
    ledger.register_worker(WorkerRecord("far", "sample", "elsewhere", 2, now - 90, now - 90, None))
    ledger.close()
    status = run_cli("status", "job.py", cwd=workdir)
    text = " ".join(status.stdout.split())
    assert f"1 dead worker(s): {expiry} heartbeat)" in text, status.stdout
    assert "at once" not in text, status.stdout
