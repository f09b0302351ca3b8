"""Read-only means read-only: plan, status, coverage, runs and serve never create or
change a file, and bad options of run fail before any state exists."""

from __future__ import annotations

import re
import sqlite3
import subprocess
from pathlib import Path

import httpx
import pytest

from conftest import backfill_cmd, cli_env, run_cli

STATE = ".backfill/state.db"
READ_COMMANDS = [
    ["plan", "job.py"],
    ["status", "job.py"],
    ["coverage", "job.py"],
    ["coverage", "job.py", "--gaps"],
    ["runs", "job.py"],
]


def fingerprint(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


def siblings(path: Path) -> set[str]:
    return {p.name for p in path.parent.iterdir() if p.name.startswith(path.name)}


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


def serve(cwd: Path, state: str, timeout: float = 30) -> tuple[int, str, str]:
    """Run `backfill serve` on a free port: when it starts, fetch a snapshot and stop it.
    Return its exit code (None when it served), its output, and the snapshot's status."""
    proc = subprocess.Popen(
        [*backfill_cmd(), "serve", "job.py", "--state", state, "--port", "0"],
        cwd=cwd,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+/", line)
        if match is None:
            out, err = proc.communicate(timeout=timeout)
            return proc.returncode, line + out + err, ""
        snapshot = httpx.get(match.group(0) + "api/snapshot", timeout=timeout)
        proc.terminate()
        out, err = proc.communicate(timeout=timeout)
        return 0, line + out + err, str(snapshot.status_code)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout)


def write_notes(path: Path, journal: str) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA journal_mode={journal}")
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        conn.execute("INSERT INTO notes (text) VALUES ('my own data')")
    conn.close()


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_a_sqlite_file_that_is_not_a_ledger_is_refused_and_left_alone(
    workdir: Path, journal: str
) -> None:
    """Pointed at someone's SQLite database, each read command says so in one sentence
    and exits 2; the file keeps its bytes and time, and no -wal, -shm or -journal file
    appears beside it."""
    notes = workdir / "notes.db"
    write_notes(notes, journal)
    before, names = fingerprint(notes), siblings(notes)
    expected = (
        f"{notes} is not a backfill state file (it has no backfill tables); "
        "pass the state of a job with --state"
    )
    for args in READ_COMMANDS:
        line = one_error_line(run_cli(*args, "--state", str(notes), cwd=workdir))
        assert line == f"error: {expected}", args
        assert fingerprint(notes) == before, args
        assert siblings(notes) == names, args
    code, output, _ = serve(workdir, str(notes))
    assert code == 2, output
    assert expected in output
    assert fingerprint(notes) == before
    assert siblings(notes) == names


def test_a_file_that_is_not_sqlite_is_refused_and_left_alone(workdir: Path) -> None:
    """A state path naming some other file is one sentence, exit 2, the file untouched."""
    notes = workdir / "notes.txt"
    notes.write_text("not a database at all\n" * 50)
    before = fingerprint(notes)
    for args in READ_COMMANDS:
        line = one_error_line(run_cli(*args, "--state", str(notes), cwd=workdir))
        assert f"{notes} is not a backfill state file" in line
        assert fingerprint(notes) == before


def test_read_commands_leave_a_ledger_as_it_was(workdir: Path) -> None:
    """After a run, plan, status, coverage, runs and serve read the ledger without
    changing a byte of it or its time; a later run still works on it."""
    assert run_cli("run", "job.py", "--progress", "none", cwd=workdir).returncode == 1
    state = workdir / STATE
    before = fingerprint(state)
    for args in READ_COMMANDS:
        result = run_cli(*args, cwd=workdir)
        assert result.returncode == 0, result.stderr
        assert fingerprint(state) == before, args
    code, output, snapshot = serve(workdir, f"sqlite:///{state}")
    assert (code, snapshot) == (0, "200"), output
    assert fingerprint(state) == before
    (workdir / "fixed").touch()
    assert run_cli("retry", "job.py", "--failed", cwd=workdir).returncode == 0


def test_a_missing_state_is_reported_and_not_created(workdir: Path) -> None:
    """With no state yet, the read commands say so (exit 0) and create nothing."""
    for args in READ_COMMANDS[1:]:
        result = run_cli(*args, cwd=workdir)
        assert result.returncode == 0, result.stderr
        assert f"no state at {STATE}; nothing has run yet" in result.stderr, args
        assert "Traceback" not in result.stderr
    assert "90 partition(s) to run" in run_cli("plan", "job.py", cwd=workdir).stdout
    assert not (workdir / ".backfill").exists()


def test_an_older_ledger_is_read_by_no_read_command_and_not_upgraded(workdir: Path) -> None:
    """A ledger of an older schema version is not migrated by a read command: it says
    to run `backfill run` once, exit 2, and the file is unchanged."""
    run_cli("run", "job.py", "--progress", "none", cwd=workdir)
    state = workdir / STATE
    with sqlite3.connect(state) as conn:
        conn.execute("UPDATE backfill_meta SET value = '3' WHERE key = 'schema_version'")
    conn.close()
    before = fingerprint(state)
    for args in READ_COMMANDS:
        line = one_error_line(run_cli(*args, cwd=workdir))
        assert "has schema version 3, older than this backfill's" in line
        assert "run `backfill run` once to upgrade it" in line
        assert fingerprint(state) == before


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "job.py", "--progress", "bogus"], "unknown --progress 'bogus'"),
        (["worker", "job.py", "--progress", "bogus"], "unknown --progress 'bogus'"),
        (["run", "job.py", "--log-dir", "job.py/logs"], "cannot write the run's log file"),
        (["run", "job.py", "--log-dir", "job.py"], "cannot write the run's log file"),
    ],
)
def test_bad_run_options_fail_before_any_state_exists(
    workdir: Path, args: list[str], expected: str
) -> None:
    """A bad --progress or a --log-dir that cannot be written is one sentence, exit 2,
    and no state file or directory is created."""
    line = one_error_line(run_cli(*args, cwd=workdir))
    assert expected in line
    assert not (workdir / ".backfill").exists()
    assert not (workdir / "logs").exists()


def test_retry_with_a_bad_option_changes_nothing(workdir: Path) -> None:
    """retry --failed with a bad --progress or --log-dir leaves its failures failed."""
    run_cli("run", "job.py", "--progress", "none", cwd=workdir)
    state = workdir / STATE
    before = fingerprint(state)
    for bad in (["--progress", "bogus"], ["--log-dir", "job.py/logs"]):
        one_error_line(run_cli("retry", "job.py", "--failed", *bad, cwd=workdir))
        assert fingerprint(state) == before
