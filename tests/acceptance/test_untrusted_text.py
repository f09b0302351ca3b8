"""Text from a source, the ledger or the command line is shown, never interpreted: no
Rich markup is parsed out of it and no escape sequence reaches the terminal."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from conftest import run_cli

EVIL = "[/bold] \x1b[2J\x07 evil"
SHOWN = "[/bold] \\x1b[2J\\x07 evil"
CATEGORY = "BAD[/red]\x1b]0;title\x07"
CATEGORY_SHOWN = "BAD[/red]\\x1b]0;title\\x07"
# What the attacker wants a terminal to do: clear the screen, ring, retitle the window,
# start a sequence with the 8-bit CSI.
ATTACKS = ("\x1b[2J", "\x07", "\x1b]0;", "\x9b")

JOB = """
from backfill import FatalError, Job, PermanentError, RetryPolicy, daily
from pathlib import Path

HERE = Path(__file__).parent
job = Job("evil", partitions=daily("2013-01-01", "2013-01-05"))


@job.stage(retry=RetryPolicy(attempts=1, base=0.0))
async def fetch(ctx, partition):
    if partition.start.day == 3:
        if (HERE / "fatal").exists():
            raise FatalError({evil!r})
        raise PermanentError({evil!r}, category={category!r})
    return [{{"day": partition.key}}]
"""


def assert_shown(result: subprocess.CompletedProcess[str], code: int, *expected: str) -> None:
    text = result.stdout + result.stderr
    assert result.returncode == code, text
    assert "Traceback" not in text
    assert "MarkupError" not in text
    for seq in ATTACKS:
        assert seq not in text, f"{seq!r} reached the terminal: {text!r}"
    for piece in expected:
        assert piece in text, text


@pytest.fixture
def evil(tmp_path: Path) -> Path:
    """A job whose 2013-01-03 fails with a message and category full of markup and
    escape sequences; run once (exit 1)."""
    (tmp_path / "job.py").write_text(
        textwrap.dedent(JOB.format(evil=EVIL, category=CATEGORY)).lstrip()
    )
    return tmp_path


def test_run_status_coverage_and_runs_show_a_source_message_as_text(evil: Path) -> None:
    """A failure message with markup, ESC and BEL: run (plain), status, coverage,
    coverage --gaps and the text report exit as usual and show it escaped."""
    assert_shown(run_cli("run", "job.py", "--progress", "plain", cwd=evil), 1, SHOWN)
    assert_shown(run_cli("status", "job.py", cwd=evil), 0, CATEGORY_SHOWN, SHOWN)
    assert_shown(run_cli("coverage", "job.py", cwd=evil), 0, SHOWN)
    assert_shown(run_cli("coverage", "job.py", "--gaps", cwd=evil), 0, SHOWN)
    assert_shown(run_cli("coverage", "job.py", "--format", "table", "-o", "c.txt", cwd=evil), 0)
    assert SHOWN in (evil / "c.txt").read_text()
    assert_shown(run_cli("retry", "job.py", "--failed", "--progress", "plain", cwd=evil), 1)


def test_json_reports_carry_the_text_faithfully(evil: Path) -> None:
    """``coverage --format json`` stays valid JSON and carries the message exactly."""
    run_cli("run", "job.py", "--progress", "none", cwd=evil)
    result = run_cli("coverage", "job.py", "--format", "json", cwd=evil)
    assert_shown(result, 0)
    (gap,) = [g for g in json.loads(result.stdout)["gaps"] if g["state"] == "failed"]
    assert gap["reason"] == f"{CATEGORY}: {EVIL}"


def test_ledger_rows_written_by_others_are_shown_as_text(evil: Path) -> None:
    """A run's command and host and a worker's host (rows any process sharing the
    ledger can write) are shown escaped by ``runs`` and ``status``."""
    run_cli("run", "job.py", "--progress", "none", cwd=evil)
    with sqlite3.connect(evil / ".backfill/state.db") as conn:
        conn.execute("UPDATE backfill_runs SET command = ?, host = ?", (EVIL, "h[red]\x9b2J"))
        now = time.time()
        conn.execute(
            "INSERT INTO backfill_workers (id, job, host, pid, started_at, heartbeat_at) "
            "VALUES ('w', 'evil', ?, 1, ?, ?)",
            ("[/]\x1b]0;host\x07", now, now),
        )
    assert_shown(run_cli("runs", "job.py", cwd=evil), 0, SHOWN, "h[red]\\x9b2J")
    assert_shown(run_cli("status", "job.py", cwd=evil), 0, "[/]\\x1b]0;host\\x07")


@pytest.mark.parametrize("progress", ["plain", "live"])
def test_the_end_of_a_run_shows_a_fatal_message_as_text(evil: Path, progress: str) -> None:
    """A fatal error's message ends the run (exit 2) on one escaped line, in plain and
    live progress (on a terminal, as rich sees it)."""
    (evil / "fatal").touch()
    result = run_cli("run", "job.py", "--progress", progress, cwd=evil, env={"TTY_COMPATIBLE": "1"})
    assert_shown(result, 2, SHOWN)


def test_console_log_lines_show_a_source_message_as_text(evil: Path) -> None:
    """With -v the console log lines quote the message escaped."""
    result = run_cli("run", "job.py", "-v", "--progress", "none", cwd=evil)
    assert_shown(result, 1, SHOWN)
    assert "partition failed" in result.stderr


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (["run", "job.py", "--partition", "[/bold]\x1b[2J"], "unknown partition '[/bold]\\x1b[2J'"),
        (["status", "job.py", "--stage", "[/b]\x07"], "[/b]\\x07"),
        (["coverage", "job.py", "--where", "x=[red]\x9b"], "'x'"),
        (["plan", "job.py", "--partition", "\x1b]0;t\x07"], "\\x1b]0;t\\x07"),
        (["run", "job[/b]\x1b[2J.py"], "job[/b]\\x1b[2J.py"),
    ],
)
def test_arguments_echoed_in_errors_are_shown_as_text(
    evil: Path, args: list[str], shown: str
) -> None:
    """Bad arguments with markup or escapes are one escaped error line, exit 2."""
    result = run_cli(*args, cwd=evil)
    assert_shown(result, 2, shown)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["run", "job.py", "--bogus[/b]\x1b[2J"],
        ["run", "job.py", "extra[/b]\x1b]0;t\x07"],
        ["nosuch[/b]\x9b2J"],
    ],
)
def test_usage_errors_of_the_parser_are_shown_as_text(evil: Path, args: list[str]) -> None:
    """The parser's own usage errors quote a bad option or argument without obeying it."""
    assert_shown(run_cli(*args, cwd=evil), 2, "[/b]")
