"""The ``backfill`` command line: parses input, calls the library, renders output.

Exit codes: 0 everything selected is done, 1 some partitions failed, 2 usage or
configuration error (nothing changed), 75 another run of the job is live on the same
SQLite state (nothing done), 130 interrupted (state saved; run again to resume).
"""

from __future__ import annotations

# Importing the command modules registers their commands, in the order --help lists them.
# isort: off
from backfill.cli import run, reports, redo, history, serve, schedule  # noqa: F401

# isort: on
from backfill.cli._common import app, execute
from backfill.job import load_job

__all__ = ["app", "execute", "load_job", "main"]


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    app(args=argv, prog_name="backfill")
