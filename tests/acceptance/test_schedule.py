"""`backfill schedule`: a crontab line and a systemd service + timer for a daily
keep-current run, the units written with --install, and the crontab's command working."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from conftest import cli_env, run_cli

JOB = """
from pathlib import Path

from backfill import Job, daily

HERE = Path(__file__).parent

job = Job("racing", partitions=daily("2024-03-30", "yesterday"), tz="Europe/London")


@job.stage
def fetch(ctx, partition):
    with (HERE / "fetches.log").open("a") as log:
        log.write(partition.key + "\\n")
    return None
"""


def _cron_command(output: str) -> str:
    line = next(ln for ln in output.splitlines() if ln.startswith("15 6 * * * "))
    return line.removeprefix("15 6 * * * ")


def test_schedule_prints_a_crontab_line_and_systemd_units_that_work(tmp_path: Path) -> None:
    """The crontab line runs at 06:15 London time and its command keeps the job current;
    the timer fires at 06:15 Europe/London and the service runs the same command."""
    (tmp_path / "job.py").write_text(textwrap.dedent(JOB))
    result = run_cli("schedule", "job.py", "--at", "06:15", "--tz", "Europe/London", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "CRON_TZ=Europe/London" in text
    assert "OnCalendar=*-*-* 06:15:00 Europe/London" in text
    assert "Persistent=true" in text
    assert "# backfill-racing.service" in text and "# backfill-racing.timer" in text
    assert f"ExecStart={Path(__import__('sys').executable)} -m backfill run" in text
    assert "--through yesterday" in text

    command = _cron_command(text)
    ran = subprocess.run(
        ["sh", "-c", command],
        env=cli_env({"BACKFILL_NOW": "2024-04-02T06:15:00+01:00"}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    # Each day once; the stage runs days side by side, so in any order.
    assert sorted((tmp_path / "fetches.log").read_text().split()) == [
        "2024-03-30",
        "2024-03-31",
        "2024-04-01",
    ]
    assert "done" in (tmp_path / ".backfill" / "cron.log").read_text()


def test_schedule_install_writes_the_user_units(tmp_path: Path) -> None:
    """--install writes the service and timer where systemd looks for a user's units."""
    (tmp_path / "job.py").write_text(textwrap.dedent(JOB))
    config = tmp_path / "config"
    result = run_cli(
        "schedule",
        "job.py",
        "--at",
        "7:05",
        "--install",
        cwd=tmp_path,
        env={"XDG_CONFIG_HOME": str(config)},
    )
    assert result.returncode == 0, result.stderr
    units = config / "systemd" / "user"
    timer = (units / "backfill-racing.timer").read_text()
    assert "OnCalendar=*-*-* 07:05:00 Europe/London" in timer  # the job's zone
    service = (units / "backfill-racing.service").read_text()
    assert f"WorkingDirectory={tmp_path}" in service
    assert "systemctl --user enable --now backfill-racing.timer" in result.stdout
    if shutil.which("systemd-analyze"):
        check = subprocess.run(
            ["systemd-analyze", "calendar", "*-*-* 07:05:00 Europe/London"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert check.returncode == 0, check.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--at", "25:00"), "is not a time of day"),
        (("--tz", "Mars/Olympus"), "IANA name"),
        (("--state", "postgresql://me:hunter22@db/x"), "holds a password"),
    ],
)
def test_schedule_refuses_bad_input_in_one_sentence(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    """A bad time, zone, or a state URL with a password: exit 2, nothing written."""
    (tmp_path / "job.py").write_text(textwrap.dedent(JOB))
    result = run_cli(
        "schedule",
        "job.py",
        *args,
        "--install",
        cwd=tmp_path,
        env={"XDG_CONFIG_HOME": str(tmp_path / "config")},
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert "hunter22" not in result.stderr + result.stdout
    assert not (tmp_path / "config").exists()
