"""Questions about a job's stage graph: what a stage needs of the ledger before it runs,
what is upstream and downstream of a stage, and which stages the stage options choose."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from backfill.errors import ConfigError
from backfill.job.stages import Stage
from backfill.ledger import Dependency
from backfill.partitions import DiscoveredSpec, Grain

__all__ = [
    "dependencies",
    "discoverers",
    "downstream",
    "found_by_keys",
    "select_stages",
    "upstream",
]

# Longest window of each grain minus one day: how far before a day a window may start.
_SPAN_DAYS = {
    Grain.HOUR: 0,
    Grain.DAY: 0,
    Grain.WEEK: 6,
    Grain.MONTH: 30,
    Grain.YEAR: 365,
    Grain.ALL: 0,
}


def dependencies(stages: Mapping[str, Stage], stage: Stage) -> tuple[Dependency, ...]:
    """What the ledger must check before one of ``stage``'s partitions may be claimed."""
    result = []
    for dep in stage.needs:
        upstream = stages[dep.stage]
        grain = upstream.partitions.grain
        result.append(
            Dependency(
                stage=dep.stage,
                whole=dep.whole,
                lookback=dep.lookback,
                grain=grain.value,
                span_days=_SPAN_DAYS[grain],
                dims=tuple(upstream.partitions.dims) if not dep.whole else (),
            )
        )
    return tuple(result)


def _inputs(stage: Stage) -> list[str]:
    """The stages ``stage`` waits for: those it needs, and the one that discovers its
    partitions (which needs no ledger check: a partition exists once it is found)."""
    names = [d.stage for d in stage.needs]
    if stage.discovered_from is not None:
        names.append(stage.discovered_from)
    return names


def upstream(stages: Mapping[str, Stage], name: str) -> list[str]:
    """Every stage ``name`` needs or is discovered by, directly or through others, in
    declaration order."""
    seen: set[str] = set()
    todo = _inputs(stages[name])
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(_inputs(stages[current]))
    return [s for s in stages if s in seen]


def downstream(stages: Mapping[str, Stage], name: str) -> list[str]:
    """Every stage that needs ``name`` (or is discovered by it), directly or through others."""
    return [s for s in stages if name in upstream(stages, s)]


def select_stages(
    job: str,
    stages: Mapping[str, Stage],
    names: Sequence[str] | None,
    *,
    start_from: Sequence[str] = (),
    skip: Sequence[str] = (),
) -> list[Stage]:
    """The chosen stages of job ``job`` in declaration order; unknown names are a
    ConfigError (see :meth:`backfill.job.Job.select_stages`)."""
    for option, given in (
        ("--stage", names or ()),
        ("--start-from", start_from),
        ("--skip", skip),
    ):
        unknown = [n for n in given if n not in stages]
        if unknown:
            known = ", ".join(stages) or "none"
            raise ConfigError(
                f"unknown stage {unknown[0]!r} in {option} for job {job!r}; its stages are: {known}"
            )
    chosen: set[str] = set(names or ())
    for name in start_from:
        chosen.add(name)
        chosen.update(downstream(stages, name))
    if not names and not start_from:
        chosen = set(stages)
    chosen -= set(skip)
    if not chosen:
        raise ConfigError(
            f"the stage options leave no stage of job {job!r} to run; "
            f"its stages are: {', '.join(stages)}"
        )
    return [stage for name, stage in stages.items() if name in chosen]


def discoverers(stages: Mapping[str, Stage]) -> dict[str, list[Stage]]:
    """Per stage that discovers partitions, the stages that get them."""
    found: dict[str, list[Stage]] = {}
    for stage in stages.values():
        if stage.discovered_from is not None:
            found.setdefault(stage.discovered_from, []).append(stage)
    return found


def found_by_keys(
    stages: Mapping[str, Stage], selected: Sequence[Stage], keys: Mapping[str, Iterable[str]]
) -> frozenset[str]:
    """For a selection by key: what the selected partitions of discovering stages find
    for the selected stages that take it (``<key>/<name>=``), so a run of an archive
    page that had not been read also runs the tournaments it finds."""
    names_selected = {s.name for s in selected}
    found: set[str] = set()
    for source, targets in discoverers(stages).items():
        names = [
            t.partitions.name
            for t in targets
            if t.name in names_selected and isinstance(t.partitions, DiscoveredSpec)
        ]
        for key in keys.get(source, ()) if names else ():
            found.update(f"{key}/{name}=" for name in names)
    return frozenset(found)
