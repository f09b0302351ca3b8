"""The stage graph of a run (backfill.engine.plan), resolved once from the job."""

from __future__ import annotations

from datetime import date
from typing import Any

from backfill import Job, daily
from backfill.engine.plan import StageGraph
from backfill.job import needs
from backfill.partitions import Selection


def chain() -> Job:
    """ref (reference) <- a <- b <- c, and d on its own."""
    job = Job("graph", partitions=daily("2013-01-01", "2013-01-05"))

    @job.stage(reference=True)
    async def ref(ctx: Any, partition: Any) -> None:
        return None

    @job.stage(needs=["ref"])
    async def a(ctx: Any, partition: Any) -> None:
        return None

    @job.stage(needs=[needs("a", lookback=2)])
    async def b(ctx: Any, partition: Any) -> None:
        return None

    @job.stage(needs=["b"])
    async def c(ctx: Any, partition: Any) -> None:
        return None

    @job.stage
    async def d(ctx: Any, partition: Any) -> None:
        return None

    return job


def test_upstream_is_every_stage_needed_directly_or_through_others() -> None:
    """A stage's upstream holds its inputs and their inputs, transitively."""
    job = chain()
    graph = StageGraph(job, job.select_stages(["c"]), None)
    assert graph.node("c").upstream == {"ref", "a", "b"}
    assert graph.node("a").upstream == {"ref"}


def test_stages_the_selected_ones_need_are_planned_but_outside_the_run() -> None:
    """Selecting b plans ref, a and b (in declaration order), runs b only, and names the
    stages it needs but does not run."""
    job = chain()
    graph = StageGraph(job, job.select_stages(["b"]), None)
    assert [s.name for s in graph.planned] == ["ref", "a", "b"]
    assert graph.names == ["b"]
    assert graph.included == {"b"}
    assert graph.outside == ["a", "ref"]


def test_dependencies_are_those_the_job_resolves() -> None:
    """Each node carries the job's own dependencies of its stage (lookback included)."""
    job = chain()
    graph = StageGraph(job, job.select_stages(None), None)
    assert graph.node("b").needs == job.dependencies(job.stages["b"])
    assert graph.node("b").needs[0].lookback == 2
    assert graph.node("d").needs == ()


def test_downstream_is_known_for_every_stage() -> None:
    """A stage that another needs has downstream; the last of a chain and a lone stage
    have none."""
    job = chain()
    graph = StageGraph(job, job.select_stages(None), None)
    assert graph.node("a").has_downstream
    assert graph.node("ref").has_downstream
    assert not graph.node("c").has_downstream
    assert not graph.node("d").has_downstream


def test_a_reference_stage_ignores_the_runs_selection() -> None:
    """The selection applies to calendar stages; a reference stage's one partition is
    always in the run."""
    job = chain()
    selection = Selection(start=date(2013, 1, 2), end=date(2013, 1, 3))
    graph = StageGraph(job, job.select_stages(None), selection)
    assert graph.node("ref").selection is None
    assert graph.node("a").selection is selection


def test_dependent_lists_the_selected_stages_with_inputs_in_order() -> None:
    """Only selected stages that wait for inputs are dependent."""
    job = chain()
    graph = StageGraph(job, job.select_stages(["a", "c", "d"]), None)
    assert [n.stage.name for n in graph.dependent()] == ["a", "c"]


def test_the_job_is_asked_once_per_stage() -> None:
    """Building the graph resolves dependencies once per stage; reading it asks no more."""
    job = chain()
    asked: list[str] = []
    resolve = job.dependencies

    def counting(stage: Any) -> Any:
        asked.append(stage.name)
        return resolve(stage)

    job.dependencies = counting  # type: ignore[method-assign]
    graph = StageGraph(job, job.select_stages(None), None)
    for _ in range(3):
        assert all(graph.node(name).needs is not None for name in graph.names)
    assert sorted(asked) == ["a", "b", "c", "d", "ref"]
