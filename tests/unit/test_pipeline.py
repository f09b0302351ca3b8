"""Pipelines: dependencies, pipelined scheduling, stale partitions, selection, checks,
reference stages and process-pool stages, against an in-memory ledger."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import date
from typing import Any

import pytest

from backfill import EmptyPartition, Job, PermanentError, RetryPolicy, RunOptions, Status, daily
from backfill import checks as bc
from backfill.engine import claims as claims_module
from backfill.errors import ConfigError
from backfill.job import needs
from backfill.ledger import Ledger, open_ledger
from backfill.partitions import Selection, monthly
from backfill.runner import ExitCode, Runner
from backfill.testing import MemorySink, run_job

NO_RETRY = RetryPolicy(attempts=1)


@pytest.fixture
def ledger() -> Ledger:
    return open_ledger(":memory:")


def finished_keys(ledger: Ledger, job: str, stage: str, status: Status = Status.DONE) -> set[str]:
    return {r.key for r in ledger.coverage_rows(job, stage) if r.status is status}


def test_a_window_dependency_never_runs_before_all_its_inputs_are_done(ledger: Ledger) -> None:
    """Each partition of b sees its own day and the 3 days before done in the ledger."""
    job = Job("win", partitions=daily("2013-01-01", "2013-01-20"))
    violations: list[str] = []
    ran: list[str] = []

    @job.stage(concurrency=3)
    async def a(ctx: Any, p: Any) -> None:
        await asyncio.sleep(0.001 * (hash(p.key) % 7))

    @job.stage(needs=[needs("a", lookback=3)], concurrency=4)
    async def b(ctx: Any, p: Any) -> None:
        done = finished_keys(ledger, "win", "a")
        window = {str(p.start.fromordinal(p.start.toordinal() - i)) for i in range(4)}
        expected = {k for k in window if k >= "2013-01-01"}
        if not expected <= done:
            violations.append(p.key)
        ran.append(p.key)

    result = run_job(job, ledger)
    assert result.exit_code == ExitCode.OK
    assert violations == []
    assert len(ran) == 20


def test_pipelining_starts_downstream_before_upstream_ends(ledger: Ledger) -> None:
    """With b needing only the same partition of a, the first b partition completes before
    the last a partition does: stages are not run one after the other."""
    job = Job("pipe", partitions=daily("2013-01-01", "2013-02-09"))  # 40 days
    ends: dict[str, list[float]] = {"a": [], "b": []}

    @job.stage(concurrency=2)
    async def a(ctx: Any, p: Any) -> None:
        await asyncio.sleep(0.02)
        ends["a"].append(time.monotonic())

    @job.stage(needs=["a"], concurrency=2)
    async def b(ctx: Any, p: Any) -> None:
        ends["b"].append(time.monotonic())

    assert run_job(job, ledger).exit_code == ExitCode.OK
    assert len(ends["a"]) == len(ends["b"]) == 40
    assert min(ends["b"]) < max(ends["a"])


def test_a_failed_input_leaves_its_downstream_waiting_and_the_run_failed(
    ledger: Ledger,
) -> None:
    """b never runs for the day whose input failed; the others run; exit code 1."""
    job = Job("fail", partitions=daily("2013-01-01", "2013-01-05"))
    ran: list[str] = []

    @job.stage(retry=NO_RETRY)
    def a(ctx: Any, p: Any) -> None:
        if p.key == "2013-01-03":
            raise PermanentError("no such page", category="not_found")

    @job.stage(needs=["a"])
    def b(ctx: Any, p: Any) -> None:
        ran.append(p.key)

    result = run_job(job, ledger)
    assert result.exit_code == ExitCode.FAILED
    assert sorted(ran) == ["2013-01-01", "2013-01-02", "2013-01-04", "2013-01-05"]
    assert result.message is not None and "1 wait for them" in result.message
    assert ledger.blocked_keys("fail", "b", job.dependencies(job.stages["b"])) == {
        "2013-01-03": "a 2013-01-03"
    }


def run_bounded(job: Job, ledger: Ledger, options: RunOptions, seconds: float = 30) -> Any:
    """Run ``job`` as a worker would, failing the test (not hanging it) past ``seconds``."""

    async def bounded() -> Any:
        runner = Runner(job, ledger, options)
        task = asyncio.ensure_future(runner.run())
        done, _ = await asyncio.wait({task}, timeout=seconds)
        if not done:
            runner.stop("interrupted", immediate=True)
            await task
            pytest.fail(f"the run did not end within {seconds:g} s")
        return task.result()

    return asyncio.run(bounded())


def test_a_worker_ends_when_what_is_left_waits_for_failed_inputs(ledger: Ledger) -> None:
    """With other workers possible (wait_for_leases), partitions blocked by a failed input
    are not waited for: the run ends, exit 1, naming what is blocked and the repair."""
    job = Job("shared", partitions=daily("2013-01-01", "2013-01-05"))

    @job.stage(retry=NO_RETRY)
    def a(ctx: Any, p: Any) -> None:
        if p.key == "2013-01-03":
            raise PermanentError("no such page", category="not_found")

    @job.stage(needs=["a"])
    def b(ctx: Any, p: Any) -> None:
        return None

    result = run_bounded(job, ledger, RunOptions(wait_for_leases=True))
    assert result.exit_code == ExitCode.FAILED
    assert result.counts["b"].done == 4 and result.counts["b"].pending == 1
    message = result.message or ""
    assert "1 partition(s) failed" in message and "1 wait for them" in message, message
    assert "b 2013-01-03 waits for failed a 2013-01-03" in message, message
    assert "backfill retry --failed" in message, message


def test_a_worker_ends_when_a_failed_input_of_a_stage_it_does_not_run_blocks_it(
    ledger: Ledger,
) -> None:
    """A worker of the downstream stage only (upstream run by others, one of its
    partitions failed) ends with exit 1 naming the blocked partition, not exit 0 or never."""
    job = Job("split", partitions=daily("2013-01-01", "2013-01-04"))

    @job.stage(retry=NO_RETRY)
    def a(ctx: Any, p: Any) -> None:
        if p.key == "2013-01-02":
            raise PermanentError("no such page", category="not_found")

    @job.stage(needs=["a"])
    def b(ctx: Any, p: Any) -> None:
        return None

    assert run_job(job, ledger, RunOptions(stages=("a",))).exit_code == ExitCode.FAILED
    result = run_bounded(job, ledger, RunOptions(stages=("b",), wait_for_leases=True))
    assert result.exit_code == ExitCode.FAILED
    assert result.counts["b"].done == 3
    assert "b 2013-01-02 waits for failed a 2013-01-02" in (result.message or "")


def test_a_worker_does_not_wait_for_inputs_outside_its_selection(ledger: Ledger) -> None:
    """Pending inputs outside the selection will not be run by this run: a worker whose
    partitions need them (a lookback reaching before --from) ends instead of waiting."""
    job = Job("edge", partitions=daily("2013-01-01", "2013-01-10"))

    @job.stage
    def a(ctx: Any, p: Any) -> None:
        return None

    @job.stage(needs=[needs("a", lookback=2)])
    def b(ctx: Any, p: Any) -> None:
        return None

    selection = Selection(start=date(2013, 1, 5))
    result = run_bounded(job, ledger, RunOptions(selection=selection, wait_for_leases=True))
    # b's 5th and 6th need a's 3rd and 4th, which nobody in this selection runs.
    assert (result.counts["b"].done, result.counts["b"].pending) == (4, 2)
    assert result.counts["a"].pending == 0
    assert result.exit_code == ExitCode.FAILED
    assert "outside" in (result.message or ""), result.message


@pytest.mark.parametrize("order", ["oldest", "newest"])
def test_ready_partitions_behind_a_long_blocked_front_still_run(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, order: str
) -> None:
    """Claims of a stage with inputs check only the first pending partitions for
    readiness (32 here); when the first 80 wait for failed inputs, the 40 ready ones
    after them still run, and exactly those."""
    monkeypatch.setattr(claims_module, "_MIN_SCAN", 8)  # 2 x batch of 16 = 32
    # No periodic full scan: only the one before concluding finds what lies behind.
    monkeypatch.setattr(claims_module, "_FULL_SCAN_SPACING", 1e9)
    job = Job("front", partitions=daily("2013-01-01", "2013-04-30", order=order))
    # The 80 days at the front of the claim order (oldest first, or newest first).
    first, last = (
        ("2013-01-01", "2013-03-21") if order == "oldest" else ("2013-02-10", "2013-04-30")
    )
    blocked = {p.key for p in daily(first, last)}
    ran: list[str] = []

    @job.stage(retry=NO_RETRY, concurrency=1)
    async def a(ctx: Any, p: Any) -> None:
        if p.key in blocked:
            raise PermanentError("no such page", category="not_found")

    @job.stage(needs=["a"], concurrency=1)
    async def b(ctx: Any, p: Any) -> None:
        ran.append(p.key)

    result = run_job(job, ledger)
    assert result.exit_code == ExitCode.FAILED
    assert len(blocked) == 80
    assert sorted(ran) == sorted({p.key for p in daily("2013-01-01", "2013-04-30")} - blocked)
    assert len(ran) == 40
    assert result.message is not None and "80 wait for them" in result.message


def test_empty_inputs_count_as_finished(ledger: Ledger) -> None:
    """A day with legitimately nothing upstream still lets the downstream day run."""
    job = Job("empty", partitions=daily("2013-01-01", "2013-01-03"))
    ran: list[str] = []

    @job.stage
    def a(ctx: Any, p: Any) -> None:
        if p.key == "2013-01-02":
            raise EmptyPartition("no games")

    @job.stage(needs=["a"])
    def b(ctx: Any, p: Any) -> None:
        ran.append(p.key)

    assert run_job(job, ledger).exit_code == ExitCode.OK
    assert len(ran) == 3


def lookback_job(ran: dict[str, list[str]]) -> Job:
    job = Job("stale", partitions=daily("2013-01-01", "2013-01-10"))

    @job.stage
    def a(ctx: Any, p: Any) -> None:
        ran["a"].append(p.key)

    @job.stage(needs=[needs("a", lookback=2)])
    def b(ctx: Any, p: Any) -> None:
        ran["b"].append(p.key)

    @job.stage(needs=["b"])
    def c(ctx: Any, p: Any) -> None:
        ran["c"].append(p.key)

    @job.stage
    def other(ctx: Any, p: Any) -> None:
        ran["other"].append(p.key)

    return job


def test_rerunning_upstream_marks_exactly_the_dependent_partitions_stale(
    ledger: Ledger,
) -> None:
    """Redoing a on the 4th re-runs b on the 4th..6th (their 3-day windows hold it) and c
    on those days, and nothing else."""
    ran: dict[str, list[str]] = {"a": [], "b": [], "c": [], "other": []}
    job = lookback_job(ran)
    assert run_job(job, ledger).exit_code == ExitCode.OK
    for stage in ran.values():
        stage.clear()
    spec = job.stages["a"].partitions
    ledger.requeue("stale", ["a"], [Status.DONE], spec.selection(keys=["2013-01-04"]))
    result = run_job(job, ledger)
    assert result.exit_code == ExitCode.OK
    # Partitions of one stage run side by side on its threads: which ones, not in what order.
    assert {stage: sorted(keys) for stage, keys in ran.items()} == {
        "a": ["2013-01-04"],
        "b": ["2013-01-04", "2013-01-05", "2013-01-06"],
        "c": ["2013-01-04", "2013-01-05", "2013-01-06"],
        "other": [],
    }


def test_start_from_runs_that_stage_and_everything_downstream(ledger: Ledger) -> None:
    """--start-from b selects b and c (not a, not the independent stage)."""
    ran: dict[str, list[str]] = {"a": [], "b": [], "c": [], "other": []}
    job = lookback_job(ran)
    assert [s.name for s in job.select_stages(None, start_from=["b"])] == ["b", "c"]
    assert [s.name for s in job.select_stages(None, skip=["other"])] == ["a", "b", "c"]
    assert [s.name for s in job.select_stages(["a"], start_from=["c"])] == ["a", "c"]
    run_job(job, ledger, RunOptions(stages=("a",)))
    ran["a"].clear()
    result = run_job(job, ledger, RunOptions(stages=("b", "c")))
    assert result.exit_code == ExitCode.OK
    assert (len(ran["a"]), len(ran["b"]), len(ran["c"]), len(ran["other"])) == (0, 10, 10, 0)


def test_a_stage_whose_upstream_is_not_in_the_run_waits_and_says_so(ledger: Ledger) -> None:
    """Running b alone while a has not run: nothing of b runs, exit 1, and the message
    names the stage to include."""
    ran: dict[str, list[str]] = {"a": [], "b": [], "c": [], "other": []}
    job = lookback_job(ran)
    result = run_job(job, ledger, RunOptions(stages=("b",)))
    assert result.exit_code == ExitCode.FAILED
    assert ran["b"] == []
    assert result.message is not None and "did not include (a)" in result.message


def test_reference_stages_run_before_what_needs_them(ledger: Ledger) -> None:
    """A reference stage has one partition, "all", and its dependants wait for it."""
    job = Job("ref", partitions=daily("2013-01-01", "2013-01-05"))
    order: list[str] = []

    @job.stage(reference=True)
    async def airlines(ctx: Any, p: Any) -> None:
        await asyncio.sleep(0.05)
        order.append(f"airlines {p.key}")

    @job.stage(needs=["airlines"])
    def flights(ctx: Any, p: Any) -> None:
        order.append("flights")

    result = run_job(job, ledger)
    assert result.exit_code == ExitCode.OK
    assert order[0] == "airlines all" and order.count("flights") == 5
    assert job.stages["airlines"].reference
    assert [d.whole for d in job.dependencies(job.stages["flights"])] == [True]


def test_dependants_start_as_soon_as_a_reference_table_is_written(ledger: Ledger) -> None:
    """A reference stage's rows and outcome skip the writer's and the ledger's batching
    delays (a quarter of a second each), so what needs it starts at once."""
    job = Job("ref", partitions=daily("2013-01-01", "2013-01-02"))
    sink = MemorySink(key=["code"])
    finished: list[float] = []
    started: list[float] = []

    @job.stage(reference=True, sink=sink)
    async def airlines(ctx: Any, p: Any) -> list[dict[str, str]]:
        finished.append(time.perf_counter())
        return [{"code": "UA"}]

    @job.stage(needs=["airlines"])
    async def flights(ctx: Any, p: Any) -> None:
        started.append(time.perf_counter())

    assert run_job(job, ledger).exit_code == ExitCode.OK
    assert len(sink.rows) == 1
    assert min(started) - finished[0] < 0.2


def test_a_blocked_event_loop_does_not_space_out_claims_of_a_waiting_stage(
    ledger: Ledger,
) -> None:
    """A waiting stage claims again after a few times an empty claim's own cost, however
    long the event loop was busy elsewhere while that claim ran."""
    job = Job("ref", partitions=daily("2013-01-01", "2013-01-02"))
    finished: list[float] = []
    started: list[float] = []

    @job.stage(reference=True)
    async def airlines(ctx: Any, p: Any) -> None:
        time.sleep(0.2)  # noqa: ASYNC251 -- the point: the event loop is blocked
        finished.append(time.perf_counter())

    @job.stage(needs=["airlines"])
    async def flights(ctx: Any, p: Any) -> None:
        started.append(time.perf_counter())

    assert run_job(job, ledger).exit_code == ExitCode.OK
    assert min(started) - finished[0] < 0.2


def test_the_last_partitions_of_a_stage_are_written_without_batching_delay(
    ledger: Ledger,
) -> None:
    """Once a stage has nothing left to claim, its last rows are committed and its
    outcomes recorded at once, so the run (or what needs them) does not wait."""
    job = Job("tail", partitions=daily("2013-01-01", "2013-01-03"))
    sink = MemorySink(key=["day"])
    returned: list[float] = []

    @job.stage(concurrency=3, sink=sink)
    async def fetch(ctx: Any, p: Any) -> list[dict[str, str]]:
        await asyncio.sleep(0.05)
        returned.append(time.perf_counter())
        return [{"day": p.key}]

    assert run_job(job, ledger).exit_code == ExitCode.OK
    assert len(sink.rows) == 3
    assert time.perf_counter() - max(returned) < 0.2


def test_a_monthly_stage_waits_for_all_days_of_its_month(ledger: Ledger) -> None:
    """Grains map onto each other: the monthly total runs after the month's last day."""
    job = Job("grain", partitions=daily("2013-01-01", "2013-02-28"))
    days_done: list[str] = []
    seen: dict[str, int] = {}

    @job.stage(concurrency=8)
    def day(ctx: Any, p: Any) -> None:
        days_done.append(p.key)

    @job.stage(partitions=monthly("2013-01-01", "2013-02-28"), needs=["day"])
    def month(ctx: Any, p: Any) -> None:
        seen[p.key] = len(finished_keys(ledger, "grain", "day") & _days_of(p))

    assert run_job(job, ledger).exit_code == ExitCode.OK
    assert seen == {"2013-01": 31, "2013-02": 28}


def _days_of(p: Any) -> set[str]:
    return {str(p.start.fromordinal(o)) for o in range(p.start.toordinal(), p.end.toordinal() + 1)}


def test_dependencies_are_validated_when_declared() -> None:
    """Unknown or later stages, self-dependencies and missing dimensions are refused."""
    job = Job("bad", partitions=daily("2013-01-01", "2013-01-02", tour=["atp"]))

    @job.stage
    def a(ctx: Any, p: Any) -> None: ...

    with pytest.raises(ConfigError, match="needs 'later', which is not declared above it"):
        job.stage(name="early", needs=["later"])(lambda ctx, p: None)
    with pytest.raises(ConfigError, match="cannot need itself"):
        job.stage(name="selfish", needs=["selfish"])(lambda ctx, p: None)
    with pytest.raises(ConfigError, match="dimension 'tour'"):
        job.stage(name="flat", partitions=daily("2013-01-01", "2013-01-02"), needs=["a"])(
            lambda ctx, p: None
        )
    with pytest.raises(ConfigError, match="lookback must be 0 or more"):
        needs("a", lookback=-1)
    with pytest.raises(ConfigError, match="unknown stage 'nope' in --start-from"):
        job.select_stages(None, start_from=["nope"])
    with pytest.raises(ConfigError, match="leave no stage"):
        job.select_stages(None, skip=["a"])


# -- checks ---------------------------------------------------------------------------


def test_a_failing_check_fails_the_partition_with_its_category_and_writes_nothing(
    ledger: Ledger,
) -> None:
    """min_rows below its count fails with INSUFFICIENT_DATA; the rows are not written;
    passing partitions store their check results."""
    job = Job("chk", partitions=daily("2013-01-01", "2013-01-03"))
    sink = MemorySink(key=["id"])

    def nonnegative(records: Any, p: Any) -> str | None:
        bad = [r["id"] for r in records if r["v"] is not None and r["v"] < 0]
        return f"negative values in {bad}" if bad else None

    @job.stage(
        sink=sink,
        retry=NO_RETRY,
        checks=[
            bc.min_rows(2),
            bc.max_null_rate("v", 0.5),
            bc.check(nonnegative, category="BAD_VALUE"),
        ],
    )
    def s(ctx: Any, p: Any) -> list[dict[str, Any]]:
        day = p.start.day
        if day == 1:
            return [{"id": 1, "v": 1}]  # too few
        if day == 2:
            return [{"id": 2, "v": None}, {"id": 3, "v": None}, {"id": 4, "v": 2}]
        return [{"id": 5, "v": 1}, {"id": 6, "v": -1}]

    result = run_job(job, ledger)
    assert result.exit_code == ExitCode.FAILED
    rows = {r.key: r for r in ledger.coverage_rows("chk", "s")}
    assert rows["2013-01-01"].error_category == "INSUFFICIENT_DATA"
    assert "min_rows(2) failed: 1 row(s), at least 2 expected" in (
        rows["2013-01-01"].error_message or ""
    )
    assert rows["2013-01-02"].error_category == "INCOMPLETE_DATA"
    assert rows["2013-01-03"].error_category == "BAD_VALUE"
    assert "negative values in [6]" in (rows["2013-01-03"].error_message or "")
    assert sink.rows == {}
    assert '"ok":false' in (rows["2013-01-01"].checks or "")


def test_passing_checks_are_stored_with_the_partition(ledger: Ledger) -> None:
    job = Job("ok", partitions=daily("2013-01-01", "2013-01-01"))

    @job.stage(checks=[bc.min_rows(1), lambda records, p: len(records) < 10])
    def s(ctx: Any, p: Any) -> list[dict[str, Any]]:
        return [{"id": 1}]

    assert run_job(job, ledger).exit_code == ExitCode.OK
    (row,) = ledger.coverage_rows("ok", "s")
    assert row.status is Status.DONE
    assert row.checks == '[{"name":"min_rows(1)","ok":true,"value":1},{"name":"check","ok":true}]'


def test_a_check_that_raises_fails_the_partition_instead_of_crashing(ledger: Ledger) -> None:
    job = Job("boom", partitions=daily("2013-01-01", "2013-01-01"))

    @job.stage(checks=[bc.check(lambda records, p: records[5]["x"], name="fragile")])
    def s(ctx: Any, p: Any) -> list[dict[str, Any]]:
        return [{"id": 1}]

    assert run_job(job, ledger).exit_code == ExitCode.FAILED
    (row,) = ledger.coverage_rows("boom", "s")
    assert row.error_category == "PROCESSING_ERROR"
    assert "fragile failed: the check raised IndexError" in (row.error_message or "")


# -- process pool -----------------------------------------------------------------------


def cpu_stage(ctx: Any, p: Any) -> list[dict[str, Any]]:
    total = sum(i * i for i in range(20_000))
    return [{"key": p.key, "pid": os.getpid(), "total": total}]


def test_process_stages_run_in_other_processes(ledger: Ledger) -> None:
    """executor="process" runs a def stage in worker processes; its records come back."""
    job = Job("cpu", partitions=daily("2013-01-01", "2013-01-04"))
    sink = MemorySink(key=["key"])
    job.stage(name="crunch", executor="process", concurrency=2, sink=sink)(cpu_stage)
    result = run_job(job, ledger)
    assert result.exit_code == ExitCode.OK
    rows = list(sink.rows.values())
    assert len(rows) == 4
    assert all(r["pid"] != os.getpid() for r in rows)
    assert {r["total"] for r in rows} == {sum(i * i for i in range(20_000))}


def test_process_executor_refuses_async_stages() -> None:
    job = Job("cpu", partitions=daily("2013-01-01", "2013-01-04"))
    with pytest.raises(ConfigError, match="executor='process' runs plain def functions"):

        @job.stage(executor="process")
        async def s(ctx: Any, p: Any) -> None: ...


def test_a_claim_that_found_nothing_while_its_inputs_finished_claims_again(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A downstream claim finds nothing ready; before the stage looks at its answer, the
    upstream stage records its last partitions and ends. The stage claims again rather
    than ending with a ready partition left pending (a run said "1 partition(s) wait for
    upstream partitions outside the selection" with none outside it)."""
    monkeypatch.setattr(claims_module, "_FULL_SCAN_SPACING", 0)  # every claim is whole
    job = Job("race", partitions=daily("2013-01-01", "2013-01-03"))
    ran: list[str] = []

    @job.stage(concurrency=1)
    async def a(ctx: Any, p: Any) -> None:
        await asyncio.sleep(0.01)

    @job.stage(needs=["a"], concurrency=1)
    async def b(ctx: Any, p: Any) -> None:
        ran.append(p.key)

    real_take = claims_module.StageLoop._take
    delayed: list[bool] = []

    async def take(
        self: claims_module.StageLoop, limit: int, suspects: bool = False, full: bool = True
    ) -> Any:
        claims, cost = await real_take(self, limit, suspects, full)
        if self.stage.name == "b" and not claims and not suspects and not self._running:
            # The answer is late: the upstream ends meanwhile.
            while "a" in self._activity.active:
                await self._activity.progress.wait()
            delayed.append(True)
        return claims, cost

    monkeypatch.setattr(claims_module.StageLoop, "_take", take)
    result = run_job(job, ledger)
    assert delayed, "the race was not set up"
    assert result.exit_code == ExitCode.OK, result.message
    assert sorted(ran) == ["2013-01-01", "2013-01-02", "2013-01-03"]
