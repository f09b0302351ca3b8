"""What a run was asked for, and what it ends with: its status, exit code and message.

:func:`conclude` is the one place that turns the final counts of a run into its exit
code: 0 only when nothing of the selection is left, 1 when partitions failed or wait for
something, 2 on a fatal error, 130 when interrupted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from backfill.ledger import MAX_LOST_LEASES, StageCounts
from backfill.partitions import Order, Selection

__all__ = ["Conclusion", "ExitCode", "RunOptions", "RunResult", "RunStatus", "conclude"]


class ExitCode:
    OK = 0
    FAILED = 1
    USAGE = 2
    # Another run of the job is live on the same SQLite state: nothing was done.
    BUSY = 75
    INTERRUPTED = 130


class RunStatus(StrEnum):
    DONE = "done"
    FAILED = "failed"
    FATAL = "fatal"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True, slots=True)
class RunOptions:
    """What one invocation asks for. ``stages=()`` means every stage."""

    stages: tuple[str, ...] = ()
    selection: Selection | None = None
    order: Order | None = None
    concurrency: int | None = None
    grace: float = 5.0
    command: str = "run"
    argv: tuple[str, ...] = ()
    # With other workers on the same ledger: when nothing is claimable but partitions are
    # still leased, wait (their leases expire if their workers died) instead of leaving.
    wait_for_leases: bool = False

    def as_record(self) -> dict[str, Any]:
        sel = self.selection
        return {
            "stages": list(self.stages),
            "selection": sel.describe() if sel else "everything",
            "order": self.order.value if self.order else None,
            "concurrency": self.concurrency,
            "argv": list(self.argv),
        }


@dataclass(slots=True)
class RunResult:
    run_id: str
    status: RunStatus
    exit_code: int
    elapsed: float
    counts: dict[str, StageCounts]
    records: int = 0
    retries: int = 0
    requests: int = 0
    request_retries: int = 0
    message: str | None = None
    executed: int = 0
    stage_stats: dict[str, dict[str, float]] = field(default_factory=dict)
    # Per warehouse (ctx.sql): queries, rows, seconds, timeouts, errors, most at once.
    warehouses: dict[str, dict[str, float]] = field(default_factory=dict)

    def summary(self, stats: Mapping[str, Any]) -> dict[str, Any]:
        """What the ledger keeps of the result with the run (``stats``: its metrics)."""
        return {
            "executed": self.executed,
            "records": self.records,
            "retries": self.retries,
            "requests": self.requests,
            "request_retries": self.request_retries,
            "elapsed": round(self.elapsed, 3),
            "stages": {
                n: {"done": c.done, "empty": c.empty, "failed": c.failed, "pending": c.pending}
                for n, c in self.counts.items()
            },
            "message": self.message,
            "stats": stats,
            **({"warehouses": self.warehouses} if self.warehouses else {}),
        }


@dataclass(frozen=True, slots=True)
class Conclusion:
    """The final counts of a run and what it knows about them, read before deciding."""

    counts: Mapping[str, StageCounts]
    # Pending partitions of stages that wait for inputs.
    waiting: int
    # Per stage, its pending partitions that wait for a failed input (key -> input).
    blocked: Mapping[str, Mapping[str, str]]
    # Upstream stages the run needs but does not include.
    outside: Sequence[str]
    # Failed partitions whose worker died with them every time.
    lost: int = 0


def conclude(
    final: Conclusion, *, fatal: str | None, interrupted: bool
) -> tuple[RunStatus, int, str | None]:
    """Status, exit code and message (unmasked) of a run that ended with ``final``."""
    counts = final.counts
    failed = sum(c.failed for c in counts.values())
    # Read after every lease of this worker was released: whatever is still pending or
    # running is work left, and exit 0 must mean that nothing is.
    left = sum(c.pending + c.running for c in counts.values())
    if fatal is not None:
        return RunStatus.FATAL, ExitCode.USAGE, fatal
    if interrupted:
        return RunStatus.INTERRUPTED, ExitCode.INTERRUPTED, None
    if failed or final.blocked:
        message = failed_message(failed, final.waiting, final.blocked, final.lost)
        return RunStatus.FAILED, ExitCode.FAILED, message
    if final.waiting and (final.outside or not any(c.running for c in counts.values())):
        message = (
            f"{final.waiting} partition(s) wait for upstream stages this run did "
            f"not include ({', '.join(final.outside)}); run those too, e.g. with --start-from"
            if final.outside
            else f"{final.waiting} partition(s) wait for upstream partitions outside the "
            "selection; widen --from/--to/--where, or run without them"
        )
        return RunStatus.FAILED, ExitCode.FAILED, message
    if left:
        return RunStatus.FAILED, ExitCode.FAILED, left_message(counts)
    return RunStatus.DONE, ExitCode.OK, None


def left_message(counts: Mapping[str, StageCounts]) -> str:
    """What a run that found nothing more to do leaves unfinished, and what to do."""
    running = sum(c.running for c in counts.values())
    pending = sum(c.pending for c in counts.values())
    parts = [f"{running} leased by another worker"] if running else []
    if pending:
        parts.append(f"{pending} pending, waiting for inputs not finished yet")
    return (
        f"{running + pending} partition(s) left unfinished ({', '.join(parts)}); nothing "
        "was lost: run the same command again to finish them (`backfill status` shows "
        "where they are)"
    )


def failed_message(
    failed: int, waiting: int, blocked: Mapping[str, Mapping[str, str]], lost: int = 0
) -> str:
    """Why a run that worked through everything it could still ends with exit 1, and how
    to repair it: failed partitions (``lost`` of them killed their worker every time),
    and those that wait for a failed input."""
    parts = [f"{failed} partition(s) failed; see `backfill status`"] if failed else []
    if lost:
        parts.append(
            f"{lost} of them died with their worker {MAX_LOST_LEASES} times in a row "
            "(worker_lost: out of memory, or killed from outside)"
        )
    if blocked:
        stage, keys = next(iter(blocked.items()))
        key, blocker = min(keys.items())
        parts.append(
            f"{waiting} wait for them"
            if failed
            else f"{waiting} partition(s) wait for failed inputs"
        )
        parts[-1] += (
            f" (e.g. {stage} {key} waits for failed {blocker}; "
            "`backfill coverage --gaps` lists them)"
        )
    elif waiting:
        parts.append(f"{waiting} wait for them (run `backfill coverage --gaps`)")
    parts.append(
        "once the cause is fixed, `backfill retry --failed` runs them again, and what "
        "waits for them"
    )
    return "; ".join(parts)
