"""Stages and their dependencies as declared: the :class:`Stage` value, :func:`needs`, and
the checks that turn ``@job.stage(...)`` options into a valid stage."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from backfill.checks import Check, CheckFunction, as_check
from backfill.errors import ConfigError
from backfill.partitions import Grain, PartitionSpec, ReferenceSpec
from backfill.partitions.refresh import RefreshWindow, parse_refresh
from backfill.ratelimit import Resource
from backfill.retry import RetryPolicy

if TYPE_CHECKING:
    from backfill.sinks import Sink

__all__ = ["NAME", "Needs", "Stage", "StageFunction", "build_stage", "needs", "sinks_of"]

# What a job, stage or resource may be called.
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
StageFunction = Callable[..., Any]
_EXECUTORS = ("thread", "process")


@dataclass(frozen=True, slots=True)
class Needs:
    """What a stage needs of an earlier stage before one of its partitions may run.

    By default, the upstream partitions whose windows overlap this partition's window
    (the same day; all days of a month for a monthly stage; the month of a day for a daily
    stage over a monthly one), with the same values of the dimensions both share.
    ``lookback=N`` adds the N upstream partitions before that (a daily stage with
    ``lookback=6`` needs the day itself and the 6 days before: a 7-day rolling window).
    ``whole=True`` needs every partition of the upstream stage (implied for reference
    stages).
    """

    stage: str
    lookback: int = 0
    whole: bool = False


def needs(stage: str, *, lookback: int = 0, whole: bool = False) -> Needs:
    """Declare a dependency for ``@job.stage(needs=[...])``; see :class:`Needs`."""
    if lookback < 0:
        raise ConfigError(f"needs({stage!r}): lookback must be 0 or more")
    return Needs(stage, lookback, whole)


@dataclass(frozen=True, slots=True)
class Stage:
    """One step of a job: a function of ``(ctx, partition)`` run for every partition."""

    name: str
    fn: StageFunction
    partitions: PartitionSpec
    concurrency: int = 4
    timeout: float | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    sink: Sink | tuple[Sink, ...] | None = None
    description: str = ""
    resource: str | None = None
    requests_per_partition: float | None = None
    needs: tuple[Needs, ...] = ()
    executor: str = "thread"
    checks: tuple[Check, ...] = ()
    # Finished partitions a keep-current run redoes every run (the newest ones).
    refresh_last: RefreshWindow | None = None

    @property
    def reference(self) -> bool:
        """Whether the stage is unpartitioned (one partition, ``all``)."""
        return isinstance(self.partitions, ReferenceSpec)

    @property
    def sinks(self) -> tuple[Sink, ...]:
        """Every table the stage writes (none, one, or several)."""
        if self.sink is None:
            return ()
        return self.sink if isinstance(self.sink, tuple) else (self.sink,)

    @property
    def multi_table(self) -> bool:
        """Whether the stage returns ``{table name: records}`` for several tables."""
        return isinstance(self.sink, tuple)

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.fn) or inspect.isasyncgenfunction(self.fn)


def build_stage(
    func: StageFunction,
    *,
    job: str,
    declared: Mapping[str, Stage],
    resources: Mapping[str, Resource],
    name: str | None,
    partitions: PartitionSpec | None,
    job_partitions: PartitionSpec | None,
    concurrency: int,
    timeout: float | None,
    retry: RetryPolicy | None,
    sink: Sink | Sequence[Sink] | None,
    job_sink: Sink | tuple[Sink, ...] | None,
    resource: str | Resource | None,
    requests_per_partition: float | None,
    needs: Sequence[str | Needs],
    reference: bool,
    executor: str,
    checks: Sequence[Check | CheckFunction],
    refresh_last: int | str | timedelta | None = None,
) -> Stage:
    """The stage ``func`` declares in job ``job``, whose stages so far are ``declared``:
    its options checked, its ``partitions`` and ``sink`` its own or else the job's."""
    stage_name = name or func.__name__
    if not NAME.match(stage_name):
        raise ConfigError(f"stage name {stage_name!r} must be an identifier")
    if stage_name in declared:
        raise ConfigError(f"job {job!r} declares stage {stage_name!r} twice")
    if reference and partitions is not None:
        raise ConfigError(
            f"stage {stage_name!r}: a reference stage has no partitions; drop "
            "partitions= or reference=True"
        )
    spec = ReferenceSpec() if reference else partitions or job_partitions
    if spec is None:
        raise ConfigError(
            f"stage {stage_name!r} has no partitions; pass partitions= to Job() or to the stage"
        )
    if concurrency < 1:
        raise ConfigError(f"stage {stage_name!r}: concurrency must be at least 1")
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"stage {stage_name!r}: timeout must be positive")
    resource_name = resource.name if isinstance(resource, Resource) else resource
    if resource_name is not None and resource_name not in resources:
        known = ", ".join(resources) or "none"
        raise ConfigError(
            f"stage {stage_name!r} uses unknown resource {resource_name!r}; declare it "
            f"with job.resource(...) first (declared: {known})"
        )
    if executor not in _EXECUTORS:
        raise ConfigError(
            f"stage {stage_name!r}: unknown executor {executor!r}; use thread or process"
        )
    if executor == "process" and (
        inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)
    ):
        raise ConfigError(
            f"stage {stage_name!r}: executor='process' runs plain def functions; "
            "make it a def, or drop executor="
        )
    deps = _resolve_needs(stage_name, spec, needs, declared)
    stage_sink = sinks_of(sink, f"stage {stage_name!r}") if sink is not None else job_sink
    if spec.grain is Grain.HOUR:
        _check_hourly_sinks(stage_name, stage_sink)
    refresh = parse_refresh(refresh_last, what=f"stage {stage_name!r}")
    if refresh is not None and reference:
        raise ConfigError(
            f"stage {stage_name!r}: a reference stage has no newest partitions to refresh; "
            "drop refresh_last="
        )
    return Stage(
        name=stage_name,
        fn=func,
        partitions=spec,
        concurrency=concurrency,
        timeout=timeout,
        retry=retry or RetryPolicy(),
        sink=stage_sink,
        description=(inspect.getdoc(func) or "").split("\n")[0],
        resource=resource_name,
        requests_per_partition=requests_per_partition,
        needs=deps,
        executor=executor,
        checks=tuple(as_check(c) for c in checks),
        refresh_last=refresh,
    )


def _check_hourly_sinks(name: str, sink: Sink | tuple[Sink, ...] | None) -> None:
    """Replacing an hourly partition by a date column would delete its whole day."""
    from backfill.sinks.columns import PARTITION_COLUMN
    from backfill.sinks.protocol import Mode
    from backfill.sinks.spec import TableSpec

    for one in sink if isinstance(sink, tuple) else (sink,) if sink is not None else ():
        spec = getattr(one, "spec", None)
        if (
            isinstance(spec, TableSpec)
            and spec.mode is Mode.REPLACE_PARTITION
            and spec.partition_column != PARTITION_COLUMN
        ):
            raise ConfigError(
                f"stage {name!r} has hourly partitions, which table {spec.name} cannot "
                f"replace by the date column {spec.partition_column!r} (that would replace "
                "the whole day); drop partition_column= to replace by the partition key"
            )


def _resolve_needs(
    name: str, spec: PartitionSpec, declared: Sequence[str | Needs], stages: Mapping[str, Stage]
) -> tuple[Needs, ...]:
    """Validate a stage's dependencies: declared above it (so no cycles), and with
    dimensions the stage also has."""
    if isinstance(declared, str | Needs):
        declared = [declared]
    result: list[Needs] = []
    for item in declared:
        dep = Needs(item) if isinstance(item, str) else item
        if not isinstance(dep, Needs):
            raise ConfigError(
                f"stage {name!r}: needs= takes stage names or needs(...), not {type(item).__name__}"
            )
        if dep.stage == name:
            raise ConfigError(f"stage {name!r} cannot need itself")
        upstream = stages.get(dep.stage)
        if upstream is None:
            known = ", ".join(stages) or "none"
            raise ConfigError(
                f"stage {name!r} needs {dep.stage!r}, which is not declared above it "
                f"(declare the stages it needs first; declared so far: {known})"
            )
        if upstream.reference and not dep.whole:
            dep = Needs(dep.stage, 0, True)
        if not dep.whole:
            missing = [d for d in upstream.partitions.dims if d not in spec.dims]
            if missing:
                raise ConfigError(
                    f"stage {name!r} needs {dep.stage!r}, whose dimension {missing[0]!r} "
                    f"it does not have; give it that dimension or use "
                    f"needs({dep.stage!r}, whole=True)"
                )
            if spec.grain is Grain.ALL:
                dep = Needs(dep.stage, 0, True)
        if any(d.stage == dep.stage for d in result):
            raise ConfigError(f"stage {name!r} lists {dep.stage!r} twice in needs=")
        result.append(dep)
    return tuple(result)


def sinks_of(sink: Sink | Sequence[Sink] | None, owner: str) -> Sink | tuple[Sink, ...] | None:
    """One sink as is; several as a tuple with distinct table names."""
    if sink is None or not isinstance(sink, list | tuple):
        return cast("Sink | None", sink)
    sinks = tuple(sink)
    if not sinks:
        return None
    names = [s.name for s in sinks]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise ConfigError(f"{owner} lists table {duplicate!r} twice; name each table once")
    return sinks
