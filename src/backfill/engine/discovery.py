"""Partitions a stage discovers: taken out of what it returned, and planned into the
ledger for every stage declared ``discovered(<that stage>)`` once the discovering
partition has finished, before its done-mark is recorded.

Planning inserts only what is not recorded yet, so a discoverer that dies before its
done-mark, or runs again, finds the same partitions and adds nothing twice; a
discovered partition is then claimed, retried and reported like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from backfill.engine.db import LedgerThread
from backfill.errors import ConfigError
from backfill.events import EventBus, PartitionsDiscovered
from backfill.job import Job, Stage
from backfill.job.graph import discoverers
from backfill.ledger import Ledger
from backfill.partitions import Discover, DiscoveredSpec, Partition
from backfill.partitions.discovered import params_json

__all__ = ["plan_found", "take_found"]


def take_found(job: Job, stage: Stage, result: Any) -> tuple[Any, list[Discover]]:
    """What a stage returned without its :class:`Discover` items, and those items (the
    first of each key; their params checked). A ConfigError when no stage takes them."""
    if not isinstance(result, list | tuple) or not any(isinstance(r, Discover) for r in result):
        return result, []
    records = [r for r in result if not isinstance(r, Discover)]
    found: dict[str, Discover] = {}
    for item in result:
        if isinstance(item, Discover) and item.key not in found:
            params_json(item)  # a PermanentError of this partition when they are not JSON
            found[item.key] = item
    if not discoverers(job.stages).get(stage.name):
        raise ConfigError(
            f"stage {stage.name} yielded Discover({next(iter(found))!r}), but no stage "
            f"declares partitions=discovered({stage.name!r}) to run what it finds"
        )
    return records, list(found.values())


async def plan_found(
    db: LedgerThread,
    ledger: Ledger,
    job: Job,
    stage: Stage,
    parent: Partition,
    found: Sequence[Discover],
    bus: EventBus,
) -> int:
    """Put the partitions ``parent`` found on record for each stage discovered by
    ``stage`` (saying how many were new of each); how many were new in all."""
    added = 0
    for target in discoverers(job.stages).get(stage.name, []):
        spec = target.partitions
        assert isinstance(spec, DiscoveredSpec)
        children = [spec.child(parent, item) for item in found]
        new = await db.call(ledger.plan, job.name, target.name, children)
        if new:
            bus.emit(PartitionsDiscovered(target.name, stage.name, parent.key, new))
        added += new
    return added
