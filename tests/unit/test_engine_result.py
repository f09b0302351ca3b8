"""How a run's final counts become its status, exit code and message
(backfill.engine.result.conclude)."""

from __future__ import annotations

from backfill.engine.result import Conclusion, ExitCode, RunStatus, conclude
from backfill.ledger import StageCounts


def counts(**fields: int) -> dict[str, StageCounts]:
    return {"fetch": StageCounts("fetch", **fields)}


def test_nothing_left_is_done_with_exit_0() -> None:
    """Every partition finished: done, exit 0, no message."""
    final = Conclusion(counts(done=3), waiting=0, blocked={}, outside=())
    assert conclude(final, fatal=None, interrupted=False) == (RunStatus.DONE, ExitCode.OK, None)


def test_a_fatal_error_wins_over_everything_with_exit_2() -> None:
    """A fatal cause makes the run fatal (exit 2) even with failures and interruptions."""
    final = Conclusion(counts(failed=2), waiting=0, blocked={}, outside=())
    status, code, message = conclude(final, fatal="disk full", interrupted=True)
    assert (status, code, message) == (RunStatus.FATAL, ExitCode.USAGE, "disk full")


def test_an_interrupted_run_exits_130() -> None:
    """Interrupted without a fatal error: 130, whatever is left."""
    final = Conclusion(counts(pending=4), waiting=0, blocked={}, outside=())
    assert conclude(final, fatal=None, interrupted=True)[:2] == (
        RunStatus.INTERRUPTED,
        ExitCode.INTERRUPTED,
    )


def test_failures_exit_1_and_say_how_to_retry() -> None:
    """Failed partitions: exit 1, a message naming them, worker deaths, and the repair."""
    final = Conclusion(counts(failed=2), waiting=0, blocked={}, outside=(), lost=1)
    status, code, message = conclude(final, fatal=None, interrupted=False)
    assert (status, code) == (RunStatus.FAILED, ExitCode.FAILED)
    assert message is not None
    assert "2 partition(s) failed" in message
    assert "1 of them died with their worker" in message
    assert "backfill retry --failed" in message


def test_partitions_blocked_by_failed_inputs_exit_1_with_an_example() -> None:
    """Pending partitions behind a failed input: exit 1, and one of them as an example."""
    final = Conclusion(
        counts(pending=1), waiting=1, blocked={"fetch": {"2013-01-02": "a 2013-01-01"}}, outside=()
    )
    _, code, message = conclude(final, fatal=None, interrupted=False)
    assert code == ExitCode.FAILED
    assert "fetch 2013-01-02 waits for failed a 2013-01-01" in (message or "")


def test_waiting_for_stages_outside_the_run_names_them() -> None:
    """Partitions waiting for stages the run did not include: exit 1, naming them."""
    final = Conclusion(counts(pending=2), waiting=2, blocked={}, outside=("a",))
    _, code, message = conclude(final, fatal=None, interrupted=False)
    assert code == ExitCode.FAILED
    assert "upstream stages this run did not include (a)" in (message or "")


def test_work_leased_elsewhere_is_left_unfinished_not_lost() -> None:
    """Partitions still running on another worker: exit 1, and nothing was lost."""
    final = Conclusion(counts(running=2), waiting=0, blocked={}, outside=())
    _, code, message = conclude(final, fatal=None, interrupted=False)
    assert code == ExitCode.FAILED
    assert "2 leased by another worker" in (message or "")
    assert "nothing was lost" in (message or "")
