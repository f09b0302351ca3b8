"""The runner's public names, where they have always been imported from.

The engine itself lives in :mod:`backfill.engine`, one module per concern.
"""

from backfill.engine import ExitCode, Runner, RunOptions, RunResult, RunStatus, worker_is_dead

__all__ = ["ExitCode", "RunOptions", "RunResult", "RunStatus", "Runner", "worker_is_dead"]
