"""The command line's own surface, in a subprocess: help that shows flags as flags,
counting -v, the worker's state, --version and shell completion."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from conftest import backfill_cmd, cli_env, run_cli

COMMANDS = [
    "run",
    "worker",
    "plan",
    "status",
    "coverage",
    "retry",
    "reset",
    "runs",
    "serve",
    "demo",
]
VERBOSE = ["run", "worker", "retry", "serve"]

QUIET_JOB = """
import logging

from backfill import Job, daily

job = Job("quiet", partitions=daily("2013-01-01", "2013-01-02"))


@job.stage
async def fetch(ctx, partition):
    ctx.log.debug("debug line of %s", partition.key)
"""


def help_of(*args: str, cwd: Path) -> str:
    result = run_cli(*args, "--help", cwd=cwd, env={"COLUMNS": "120"})
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_shows_no_value_types_for_flags(tmp_path: Path, command: str | None) -> None:
    """No option of any command shows as `<bool>` (flags) or `<int>` (-v counts)."""
    text = help_of(*([command] if command else []), cwd=tmp_path)
    assert "<bool>" not in text
    if command in VERBOSE:
        (line,) = [line for line in text.splitlines() if "--verbose" in line]
        assert "<int>" not in line
        assert "-vv" in line, line


@pytest.mark.parametrize("command", VERBOSE)
def test_verbose_is_described_everywhere(tmp_path: Path, command: str) -> None:
    """Every command with -v says what it does: info with -v, debug with -vv."""
    text = help_of(command, cwd=tmp_path)
    (line,) = [line for line in text.splitlines() if "--verbose" in line]
    assert re.search(r"-v info, -vv debug", line), line


def test_run_help_names_the_job_argument_and_where_logs_go(tmp_path: Path) -> None:
    """The usage line names JOB; --log-dir says where logs go for each kind of state."""
    text = " ".join(help_of("run", cwd=tmp_path).replace("│", " ").split())
    assert re.search(r"Usage: backfill run \[OPTIONS\] \{?JOB\}?", text), text[:200]
    assert "logs/ beside a SQLite state file" in text
    assert ".backfill/logs in the working directory for a PostgreSQL state" in text


def test_counting_verbose_is_accepted(tmp_path: Path) -> None:
    """`-vv` runs with debug lines on stderr, including what stages log at debug."""
    (tmp_path / "job.py").write_text(textwrap.dedent(QUIET_JOB))
    result = run_cli("run", "job.py", "-vv", "--progress", "none", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "debug line of 2013-01-01" in result.stderr


def test_worker_help_says_the_state_is_shared_and_required(tmp_path: Path) -> None:
    """The worker's --state has no SQLite default; its help names PostgreSQL."""
    text = " ".join(help_of("worker", cwd=tmp_path).replace("│", " ").split())
    assert "sqlite:///.backfill/state.db" not in text
    assert "postgresql://USER@HOST/DB" in text
    assert "required" in text


def test_worker_without_a_state_is_one_sentence_exit_2(tmp_path: Path) -> None:
    """`backfill worker` with neither --state nor BACKFILL_STATE says what to pass, exit 2,
    and creates nothing."""
    (tmp_path / "job.py").write_text(textwrap.dedent(QUIET_JOB))
    result = run_cli("worker", "job.py", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: backfill worker needs the state its workers share")
    assert "--state postgresql://USER@HOST/DB" in lines[0]
    assert "BACKFILL_STATE" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.py"]


def test_version_prints_the_installed_version(tmp_path: Path) -> None:
    """`backfill --version` prints `backfill X.Y.Z`, the installed distribution's version."""
    result = run_cli("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"backfill {importlib.metadata.version('backfill')}"


def in_bash(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`backfill ARGS` as a child of bash (not exec'd by it): the shell it detects."""
    return subprocess.run(
        ["bash", "-c", '"$@"; exit $?', "bash", *backfill_cmd(), *args],
        cwd=cwd,
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def test_shell_completion_completes_commands_and_installs(tmp_path: Path) -> None:
    """Completion answers `backfill ru<TAB>` with run and runs; from bash, the script is
    printed and installed into the user's start-up file."""
    result = run_cli(
        cwd=tmp_path,
        env={"_BACKFILL_COMPLETE": "complete_bash", "COMP_WORDS": "backfill ru", "COMP_CWORD": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["run", "runs"]
    home = tmp_path / "home"
    home.mkdir()
    script = in_bash("--show-completion", cwd=tmp_path, env={"HOME": str(home)})
    assert script.returncode == 0, script.stdout + script.stderr
    assert "_BACKFILL_COMPLETE=complete_bash" in script.stdout
    installed = in_bash("--install-completion", cwd=tmp_path, env={"HOME": str(home)})
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert "backfill" in (home / ".bashrc").read_text()
