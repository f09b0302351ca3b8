"""How long a plan takes at a resource's limits, and whether it fits a quota."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from backfill.clock import format_wall
from backfill.job import Job, Stage
from backfill.ratelimit import Resource

__all__ = ["ResourceEstimate", "estimate"]

# History beats a declared guess once this many partitions recorded their requests.
_MIN_HISTORY = 3


@dataclass(frozen=True, slots=True)
class ResourceEstimate:
    resource: str
    partitions: int
    requests_per_partition: float | None
    source: str  # "history", "declared" or "unknown"
    requests: float | None
    seconds: float | None
    rate_description: str
    quota_warnings: tuple[str, ...]


def estimate(
    job: Job,
    stages: Sequence[Stage],
    to_run: Mapping[str, int],
    history: Mapping[str, tuple[int, float | None]],
    spent: Mapping[str, Mapping[str, tuple[int, float | None, float]]] | None = None,
) -> list[ResourceEstimate]:
    """Per resource: requests the selected work needs, time at the limit, quota checks.

    ``spent``: per resource, per quota (``"COUNT/PERIOD"``), what its current window has
    already spent (used, when the oldest of those leaves the window, now): the work waits
    for that too.
    """
    result: list[ResourceEstimate] = []
    for name, resource in job.resources.items():
        users = [s for s in stages if s.resource == name]
        if not users:
            continue
        partitions = sum(to_run[s.name] for s in users)
        total: float | None = 0.0
        per: list[float] = []
        sources: set[str] = set()
        for s in users:
            if not to_run[s.name]:
                continue  # nothing to run needs no requests, however many it would take
            n, avg = history.get(s.name, (0, None))
            if n >= _MIN_HISTORY and avg is not None:
                value, origin = avg, "history"
            elif s.requests_per_partition is not None:
                value, origin = s.requests_per_partition, "declared"
            else:
                total, origin = None, "unknown"
                sources.add(origin)
                continue
            sources.add(origin)
            per.append(value)
            if total is not None:
                total += value * to_run[s.name]
        source = (
            "unknown"
            if "unknown" in sources
            else ("history" if "history" in sources else "declared")
        )
        # (An adaptive rate is known once a run found it: see Resource.resume.)
        known = bool(resource.limits) or resource.resumed
        seconds = resource.seconds_for(total) if total is not None and known else None
        warnings = []
        used = (spent or {}).get(name, {})
        for lim in resource.quotas:
            use = used.get(f"{int(lim.count)}/{lim.period:g}")
            already, frees_at, now = use if use is not None else (0, None, 0.0)
            if total is None:
                continue
            left = lim.count - already
            if already and lim.period >= 3600:
                when = format_wall(frees_at, now) if frees_at is not None else "-"
                warnings.append(
                    f"{already:,} of the {lim} quota already spent in its current window "
                    f"({left:,.0f} left now; it frees up from {when})"
                )
            if total > left and frees_at is not None:
                # What is left now, then the rest as the window frees up.
                waited = (frees_at - now) + (math.ceil((total - left) / lim.count) - 1) * lim.period
                seconds = max(seconds or 0.0, waited)
            if lim.period >= 3600 and (total > lim.count or (already and total > left)):
                periods = (total + already) / lim.count
                now_ = " allows now" if already else ""
                warnings.append(
                    f"needs {total:,.0f} requests, more than the {lim} quota{now_}: "
                    f"at least {periods:.1f} {_period_name(lim.period)}"
                )
        result.append(
            ResourceEstimate(
                resource=name,
                partitions=partitions,
                requests_per_partition=(sum(per) / len(per)) if per and total is not None else None,
                source=source,
                requests=total,
                seconds=seconds,
                rate_description=resource.rate_description(),
                quota_warnings=tuple(warnings),
            )
        )
    return result


def _period_name(seconds: float) -> str:
    return {86400.0: "days", 3600.0: "hours"}.get(seconds, f"periods of {seconds:g} s")


def limit_floors(job: Job) -> dict[str, Callable[[int], float]]:
    """Per stage through a resource with limits, the least seconds ``n`` of its
    partitions need under them (at its declared requests per partition, else one): what
    an ETA (the progress displays', ``backfill status``') is never below."""
    floors: dict[str, Callable[[int], float]] = {}
    for stage in job.stages.values():
        resource = job.resources.get(stage.resource) if stage.resource else None
        if resource is None or not resource.limits:
            continue
        floors[stage.name] = functools.partial(
            _least_seconds, resource, stage.requests_per_partition or 1.0
        )
    return floors


def _least_seconds(resource: Resource, per: float, partitions: int) -> float:
    return resource.seconds_for(partitions * per)
