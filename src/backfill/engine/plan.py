"""The stage graph of one run, resolved once: which stages run, which are only planned,
what each one waits for, and the partitions the ledger is told about before work starts.

The job answers ``upstream``, ``downstream`` and ``dependencies`` by walking its stages;
a run asks them at every claim, so it asks once here and keeps the answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from backfill.engine.db import LedgerThread
from backfill.job import Job, Stage
from backfill.ledger import Dependency, Ledger
from backfill.partitions import Selection

__all__ = ["StageGraph", "StageNode", "plan_partitions"]


@dataclass(frozen=True, slots=True)
class StageNode:
    """One stage as the run sees it."""

    stage: Stage
    # What the ledger checks before one of its partitions may be claimed.
    needs: tuple[Dependency, ...]
    # Every stage it needs, directly or through others.
    upstream: frozenset[str]
    # Whether any stage of the job needs it: then what it finished must be on record
    # before its dependants conclude that nothing more will come.
    has_downstream: bool
    # The run's selection; a reference stage's single partition is always in it.
    selection: Selection | None


class StageGraph:
    """The selected stages of a job and every stage they need, resolved once.

    Example::

        graph = StageGraph(job, job.select_stages(["b"]), None)
        graph.node("b").upstream   # frozenset({"a"})
        graph.outside              # ["a"]: needed, planned, but not run
    """

    def __init__(self, job: Job, stages: Sequence[Stage], selection: Selection | None) -> None:
        self.stages = list(stages)
        self.names = [s.name for s in self.stages]
        self.included = frozenset(self.names)
        upstream = {name: frozenset(job.upstream(name)) for name in job.stages}
        needed = self.included.union(*(upstream[name] for name in self.names))
        self._nodes = {
            name: StageNode(
                stage=stage,
                needs=job.dependencies(stage),
                upstream=upstream[name],
                has_downstream=any(name in up for up in upstream.values()),
                selection=None if stage.reference else selection,
            )
            for name, stage in job.stages.items()
            if name in needed
        }
        # Stages the selected ones need are planned too (not run): their partitions must
        # be on record for a dependency to wait for them. In declaration order.
        self.planned = [node.stage for node in self._nodes.values()]
        self.outside = sorted(needed - self.included)

    def node(self, name: str) -> StageNode:
        return self._nodes[name]

    def dependent(self) -> list[StageNode]:
        """The selected stages that wait for inputs."""
        return [self._nodes[name] for name in self.names if self._nodes[name].stage.needs]

    def resources(self) -> list[str]:
        """The resources the selected stages use, sorted."""
        return sorted({s.resource for s in self.stages if s.resource is not None})


async def plan_partitions(db: LedgerThread, ledger: Ledger, job: str, graph: StageGraph) -> None:
    """Put every partition of the planned stages on record, and mark stale the finished
    partitions of the selected stages whose inputs are being (or were) redone: they run
    again."""
    for stage in graph.planned:
        # The spec's repr names every partition it holds: a worker joining a run already
        # planned skips the insert of each one.
        await db.call(
            ledger.plan, job, stage.name, stage.partitions, fingerprint=repr(stage.partitions)
        )
    for node in graph.dependent():
        await db.call(ledger.mark_stale, job, node.stage.name, node.needs, node.selection)
