"""``job.run(...)`` from a user's own program: the run ``backfill run`` makes, with its
progress, log file, signal handling and exit code, returned instead of exited."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from conftest import cli_env, executions, run_cli

STATE = "sqlite:///state.db"
# A program of the user's: runs the sample job, prints the result, then whether its own
# SIGINT handler is back, and ends normally (job.run never exits).
PROGRAM = textwrap.dedent(
    """
    import json
    import signal
    import sys

    from job import job

    result = job.run(state=sys.argv[1], start=sys.argv[2], end=sys.argv[3], progress="plain")
    print(json.dumps({
        "exit_code": result.exit_code,
        "status": result.status.value,
        "executed": result.executed,
        "run_id": result.run_id,
        "message": result.message,
        "handler_restored": signal.getsignal(signal.SIGINT) is signal.default_int_handler,
    }))
    """
)


def start(workdir: Path, first: str, last: str, delay: str = "0") -> subprocess.Popen[str]:
    (workdir / "program.py").write_text(PROGRAM)
    return subprocess.Popen(
        [sys.executable, "program.py", STATE, first, last],
        cwd=workdir,
        env=cli_env({"SAMPLE_DELAY": delay, "PYTHONPATH": str(workdir)}),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def result_of(proc: subprocess.Popen[str]) -> dict[str, object]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    found: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return found


def test_job_run_returns_the_result_the_cli_exits_with(workdir: Path) -> None:
    """A run from a program writes the run's log file, returns exit code 1 with the
    failure's message, and the CLI on the same state ends the same way."""
    result = result_of(start(workdir, "2013-01-01", "2013-01-20"))
    assert (result["exit_code"], result["status"], result["executed"]) == (1, "failed", 20)
    assert "1 partition(s) failed" in str(result["message"])
    assert (workdir / "logs" / f"{result['run_id']}.jsonl").is_file()
    cli = run_cli(
        "run", "job.py", "--state", STATE, "--from", "2013-01-01", "--to", "2013-01-20", cwd=workdir
    )
    assert cli.returncode == result["exit_code"]
    assert "1 partition(s) failed" in cli.stdout


def test_sigint_stops_a_run_from_a_program_cleanly(workdir: Path) -> None:
    """SIGINT during ``job.run`` stops the run gracefully: the result says interrupted,
    exit code 130 as the CLI's, the program's own handler is back, and the CLI resumes
    the rest without running any partition twice."""
    proc = start(workdir, "2013-01-01", "2013-01-12", delay="0.1")
    try:
        deadline = time.monotonic() + 60
        while sum(executions(workdir).values()) < 4:
            assert proc.poll() is None and time.monotonic() < deadline, "never ran"
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        result = result_of(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (result["exit_code"], result["status"]) == (130, "interrupted")
    assert result["handler_restored"] is True
    assert 4 <= int(str(result["executed"])) < 12
    cli = run_cli(
        "run", "job.py", "--state", STATE, "--from", "2013-01-01", "--to", "2013-01-12", cwd=workdir
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    ran = executions(workdir)
    assert len(ran) == 12 and max(ran.values()) == 1
