"""SIGINT and SIGTERM at any moment of `backfill run`: exit 130, one line, no traceback.

When is "the first millisecond"? A signal can reach the process before Python runs any
code of ours: before exec, the default action kills it (-2, -15); during interpreter
start-up Python's own SIGINT handler raises KeyboardInterrupt inside its start-up
imports. No program can answer those, so the moments here are measured from the instant
the command's handlers are in place, which /proc/PID/status shows (SIGTERM appears in
SigCgt; Python itself never catches it). That instant must come before anything heavy:
the test also checks that the job file is not imported yet at that moment.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import SAMPLE_JOB, cli_env, executions

BACKFILL = Path(sys.executable).with_name("backfill")
# The sample job, plus a mark left when the job file is imported.
JOB = textwrap.dedent(SAMPLE_JOB) + '\n(HERE / "imported").touch()\n'
INTERRUPTED = "interrupted; nothing was lost: run the same command again to resume"


def catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (SigCgt in /proc/PID/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    mask = next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(mask, 16) >> (signum - 1) & 1)


def interrupt(workdir: Path, signum: int, moment: str) -> tuple[int, str, str, bool]:
    """Start `backfill run`, send ``signum`` at ``moment`` (seconds after its handlers are
    in place, or "run": once partitions are running); return the exit code, stdout,
    stderr, and whether the job file was imported when the handlers were first seen."""
    proc = subprocess.Popen(
        [str(BACKFILL), "run", "job.py", "--progress", "plain"],
        cwd=workdir,
        env=cli_env({"SAMPLE_DELAY": "0.1"}),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not catches(proc.pid, signal.SIGTERM):
            assert proc.poll() is None and time.monotonic() < deadline, "never handled SIGTERM"
            time.sleep(0.001)
        imported = (workdir / "imported").exists()
        if moment == "run":
            while sum(executions(workdir).values()) < 4:
                assert proc.poll() is None and time.monotonic() < deadline, "never ran"
                time.sleep(0.01)
        else:
            # Not a synchronisation: the moment chosen to interrupt, wherever it falls.
            time.sleep(float(moment))
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, out, err, imported


@pytest.mark.parametrize("moment", ["0", "0.05", "0.2", "run"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_at_any_moment_exits_130_with_one_line(
    workdir: Path, signum: int, moment: str
) -> None:
    """SIGINT or SIGTERM from the first moment the command runs to the middle of the run:
    exit 130, no traceback, at most one line on stderr."""
    code, out, err, imported = interrupt(workdir, signum, moment)
    assert code == 130, out + err
    assert "Traceback" not in out + err
    assert "Aborted" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) <= 1, err
    if moment == "0":
        # The handlers come before the heavy imports, not with the run.
        assert not imported
    if moment == "run":
        assert "resume" in out  # the graceful stop's report
    elif moment == "0":
        assert lines == [INTERRUPTED]
    else:
        # Before the run: the one line; on a fast machine the run may have begun.
        assert lines == [INTERRUPTED] or (not lines and "resume" in out), out + err


def test_sigterm_before_the_handlers_kills_quietly_or_exits_130(workdir: Path) -> None:
    """SIGTERM sent right after spawn, before Python may have started: the process is
    killed by it (no word is possible) or, if already handled, exits 130 with one line;
    never a traceback."""
    proc = subprocess.Popen(
        [str(BACKFILL), "run", "job.py"],
        cwd=workdir,
        env=cli_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode in (130, -signal.SIGTERM), out + err
    assert "Traceback" not in err
    assert len(err.splitlines()) <= 1


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """The sample job, leaving a file named ``imported`` when the job file is imported."""
    (tmp_path / "job.py").write_text(JOB)
    (tmp_path / "fixed").touch()
    return tmp_path
