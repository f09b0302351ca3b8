"""`backfill schedule`: the configuration that runs a job every day with the tools people
already run (cron, a systemd user timer), not a scheduler of our own. It prints both and,
with ``--install``, writes the systemd user units."""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from backfill.cli._common import Command, JobArg, app, fail, handle_errors, out, shown
from backfill.errors import ConfigError
from backfill.job import load_job
from backfill.ledger import DEFAULT_STATE_URL
from backfill.partitions.zones import zone
from backfill.secrets import url_secrets

__all__ = ["Schedule", "crontab_line", "systemd_units"]

_AT = re.compile(r"([01]?\d|2[0-3]):([0-5]\d)")


@dataclass(frozen=True, slots=True)
class Schedule:
    """One job's daily keep-current run: where, when, in which zone, with which state."""

    job: str
    job_path: Path
    workdir: Path
    hour: int
    minute: int
    tz: str
    state: str | None
    python: str
    through: str = "yesterday"

    @property
    def unit(self) -> str:
        return f"backfill-{re.sub(r'[^A-Za-z0-9_.-]', '-', self.job)}"

    def command(self, progress: str = "plain") -> list[str]:
        argv = [self.python, "-m", "backfill", "run", str(self.job_path)]
        argv += ["--through", self.through, "--progress", progress]
        if self.state is not None:
            argv += ["--state", self.state]
        return argv


def parse_at(value: str) -> tuple[int, int]:
    """``06:15`` as (6, 15)."""
    m = _AT.fullmatch(value.strip())
    if m is None:
        raise ConfigError(f"--at {value!r} is not a time of day; write it as HH:MM, e.g. 06:15")
    return int(m[1]), int(m[2])


def crontab_line(s: Schedule) -> str:
    """A crontab entry (``crontab -e``); ``CRON_TZ`` (cronie, busybox) sets its zone."""
    run = " ".join(shlex.quote(a) for a in s.command())
    return (
        f"CRON_TZ={s.tz}\n"
        f"{s.minute} {s.hour} * * * cd {shlex.quote(str(s.workdir))} && mkdir -p .backfill "
        f"&& {run} >> .backfill/cron.log 2>&1"
    )


def systemd_units(s: Schedule) -> dict[str, str]:
    """The service and timer of a systemd user unit pair, by file name."""
    exec_start = " ".join(_systemd_quote(a) for a in s.command())
    service = f"""[Unit]
Description=backfill {s.job}: keep current through {s.through}

[Service]
Type=oneshot
WorkingDirectory={s.workdir}
ExecStart={exec_start}
# 75: another run of the job was still live; the next day's run catches up.
SuccessExitStatus=75
"""
    timer = f"""[Unit]
Description=Run backfill {s.job} every day at {s.hour:02d}:{s.minute:02d} {s.tz}

[Timer]
OnCalendar=*-*-* {s.hour:02d}:{s.minute:02d}:00 {s.tz}
Persistent=true

[Install]
WantedBy=timers.target
"""
    return {f"{s.unit}.service": service, f"{s.unit}.timer": timer}


def _systemd_quote(arg: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", arg):
        return arg
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def user_unit_dir() -> Path:
    """Where systemd looks for a user's units."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "systemd" / "user"


@app.command(cls=Command)
@handle_errors
def schedule(
    job_path: JobArg,
    at: Annotated[str, typer.Option("--at", help="Time of day to run, HH:MM.")] = "06:15",
    tz: Annotated[
        str | None,
        typer.Option("--tz", help="IANA zone of --at (default: the job's tz, else UTC)."),
    ] = None,
    state: Annotated[
        str | None,
        typer.Option(
            "--state",
            envvar="BACKFILL_STATE",
            help="State URL the scheduled runs use (default: the default state, resolved "
            "in the job's directory).",
        ),
    ] = None,
    install: Annotated[
        bool,
        typer.Option("--install", help="Write the systemd user units (not enabled)."),
    ] = False,
) -> None:
    """Print a crontab line and a systemd service + timer that keep a job current daily.

    Each runs `backfill run JOB --through yesterday` at --at in --tz. No scheduler of
    our own: cron, systemd or a Kubernetes CronJob starts the run (see the README).

    [bold]Examples[/]

      backfill schedule jobs/results.py --at 06:15 --tz Europe/London
      backfill schedule jobs/results.py --at 06:15 --install
    """
    hour, minute = parse_at(at)
    job = load_job(job_path)
    zone_name = tz or job.tz or "UTC"
    zone(zone_name)
    if state is not None and url_secrets(state, "state"):
        raise fail(
            "the state URL holds a password, which a crontab or unit file would show to "
            "anyone who reads it; drop --state and set BACKFILL_STATE in the service's "
            "environment (systemctl --user edit, or the crontab's environment) instead"
        )
    path = Path(
        job_path.rpartition(":")[0] if ":" in job_path and not Path(job_path).exists() else job_path
    ).resolve()
    s = Schedule(
        job=job.name,
        job_path=path,
        workdir=path.parent,
        hour=hour,
        minute=minute,
        tz=zone_name,
        state=state if state is not None else DEFAULT_STATE_URL,
        python=sys.executable,
    )
    units = systemd_units(s)
    _lines("# crontab (crontab -e):\n" + crontab_line(s))
    for name, text in units.items():
        _lines(f"\n# {name}\n{text.rstrip()}")
    if install:
        directory = user_unit_dir()
        try:
            directory.mkdir(parents=True, exist_ok=True)
            for name, text in units.items():
                (directory / name).write_text(text)
        except OSError as exc:
            raise fail(f"cannot write the units in {directory} ({exc.strerror})") from None
        _lines(
            f"\nwrote {', '.join(units)} in {directory}; enable them with:\n"
            f"  systemctl --user daemon-reload && systemctl --user enable --now {s.unit}.timer"
        )


def _lines(text: str) -> None:
    # Line by line: each is made safe to show, the line breaks are ours.
    for line in text.split("\n"):
        out.print(shown(line), soft_wrap=True, highlight=False)
