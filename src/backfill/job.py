"""Jobs and stages: what a user declares in a job file.

Example job file::

    from backfill import Job, daily, EmptyPartition

    job = Job("results", partitions=daily("2020-01-01", "2020-12-31", tour=["atp", "wta"]))

    @job.stage(concurrency=8, timeout=30)
    async def results(ctx, partition):
        page = await ctx.http.get_json(f"https://api.example/results/{partition.date}")
        if not page["matches"]:
            raise EmptyPartition("no matches that day")
        return page["matches"]
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast, overload

from backfill.checks import Check, CheckFunction, as_check
from backfill.errors import ConfigError
from backfill.ledger import DEFAULT_STATE_URL, Dependency
from backfill.partitions import Grain, PartitionSpec, ReferenceSpec
from backfill.ratelimit import DEFAULT_MAX_WAIT, Limit, Resource
from backfill.retry import RetryPolicy
from backfill.secrets import Masker, Secret, url_secrets
from backfill.sources import DEFAULT_MAX_BODY, CrossOrigin

if TYPE_CHECKING:
    from datetime import date

    from backfill.engine.result import RunResult
    from backfill.sinks import Sink

__all__ = ["Job", "Needs", "Stage", "load_job", "needs"]

log = logging.getLogger("backfill.job")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
StageFunction = Callable[..., Any]
_EXECUTORS = ("thread", "process")
# Longest window of each grain minus one day: how far before a day a window may start.
_SPAN_DAYS = {Grain.DAY: 0, Grain.WEEK: 6, Grain.MONTH: 30, Grain.YEAR: 365, Grain.ALL: 0}


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


class Job:
    """A named backfill: partitions, stages, and where the records go."""

    def __init__(
        self,
        name: str,
        partitions: PartitionSpec | None = None,
        *,
        sink: Sink | Sequence[Sink] | None = None,
        description: str = "",
        lease_seconds: float = 60.0,
        http_timeout: float = 30.0,
    ) -> None:
        if not _NAME.match(name):
            raise ConfigError(
                f"job name {name!r} must start with a letter and use only letters, digits, _ . -"
            )
        if lease_seconds <= 0:
            raise ConfigError("lease_seconds must be positive")
        self.name = name
        self.partitions = partitions
        self.sink = _sinks(sink, f"job {name!r}")
        self.description = description
        self.lease_seconds = lease_seconds
        self.http_timeout = http_timeout
        self.stages: dict[str, Stage] = {}
        self.resources: dict[str, Resource] = {}
        self.http_options: dict[str, dict[str, Any]] = {}

    def resource(
        self,
        name: str,
        *,
        rate: str | float | Limit | None = None,
        burst: int = 1,
        concurrency: int | None = None,
        limits: list[str | float | Limit] | None = None,
        adaptive: bool = False,
        start_rate: float | None = None,
        shared: bool = False,
        timeout: float | None = None,
        retries: int = 2,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        secrets: tuple[str, ...] = (),
        base_url: str | None = None,
        allowed_hosts: Sequence[str] = (),
        cross_origin: CrossOrigin = "strip",
        max_wait: float = DEFAULT_MAX_WAIT,
        max_body: int = DEFAULT_MAX_BODY,
        deadline: float | None = None,
        hedge: bool = True,
    ) -> Resource:
        """Declare a source and its limits; stages name it with ``resource=``.

        ``rate`` and ``limits`` accept ``"5/s"``, ``"100/min"``, ``"10000/day"``; all of them
        hold at once. ``adaptive=True`` discovers the real limit (starting at ``start_rate``
        or ``rate``). ``headers`` and ``params`` go with the requests of ``ctx.http`` to the
        origin of ``base_url`` and those in ``allowed_hosts`` (neither given: the origin of
        each URL the stage passes); a next link or redirect elsewhere gets none of them
        (``cross_origin="strip"``) or fails its partition (``"refuse"``). Their values, and
        ``secrets``, are masked in every log line, error and ledger entry. ``retries`` is
        how often one request is retried before the partition sees the error.
        ``shared=True`` makes the limits every job's that declares a resource of this name
        on the same state (by default a resource is the job's own: its runs and workers
        share it).

        What a source can impose is bounded: a wait it asks for (Retry-After, RateLimit-
        Reset) to ``max_wait`` seconds, a body to ``max_body`` bytes decoded, a whole
        answer to ``deadline`` seconds (default: four times ``timeout``, at least 60).
        A GET far slower than the source's recent answers gets a second copy, the first
        answer winning (``hedge=False`` to turn it off).

        Example::

            job.resource("racing_api", rate="2/s", limits=["10000/day"], concurrency=4,
                         base_url="https://api.racing.example",
                         headers={"Authorization": f"Bearer {TOKEN}"})
        """
        if not _NAME.match(name):
            raise ConfigError(f"resource name {name!r} must be an identifier")
        if name in self.resources:
            raise ConfigError(f"job {self.name!r} declares resource {name!r} twice")
        if retries < 0:
            raise ConfigError(f"resource {name!r}: retries must not be negative")
        owner = f"resource {name!r}"
        # Imported here: declaring a job must not load the HTTP client.
        from backfill.sources.origins import allowed_origins

        allowed_origins(base_url, allowed_hosts, owner=owner)
        if cross_origin not in ("strip", "refuse"):
            raise ConfigError(
                f"{owner}: cross_origin={cross_origin!r} is not a policy; use 'strip' (follow "
                "links to other origins without credentials) or 'refuse'"
            )
        if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 1:
            raise ConfigError(f"{owner}: max_body must be a positive number of bytes")
        for option, value in (("deadline", deadline), ("timeout", timeout)):
            if value is not None and not (isinstance(value, int | float) and 0 < value < math.inf):
                raise ConfigError(f"{owner}: {option} must be a positive number of seconds")
        if start_rate is not None and not (
            isinstance(start_rate, int | float) and 0 < start_rate < math.inf
        ):
            raise ConfigError(f"{owner}: start_rate must be a positive number of requests/s")
        resource = Resource(
            name,
            rate=rate,
            burst=burst,
            concurrency=concurrency,
            limits=limits,
            adaptive=adaptive,
            start_rate=start_rate,
            shared=shared,
            max_wait=max_wait,
        )
        self.resources[name] = resource
        self.http_options[name] = {
            "timeout": timeout if timeout is not None else self.http_timeout,
            "retries": retries,
            "headers": dict(headers or {}),
            "params": dict(params or {}),
            "secrets": tuple(secrets),
            "base_url": base_url,
            "allowed_hosts": tuple(allowed_hosts),
            "cross_origin": cross_origin,
            "max_body": max_body,
            "deadline": deadline,
            "hedge": hedge,
        }
        return resource

    @property
    def declared_secrets(self) -> tuple[Secret, ...]:
        """Every secret of the job, named by where it is declared: each header and param
        value of each resource (whatever its name), its ``secrets``, and the passwords in
        the URLs of its tables."""
        found: list[Secret] = []
        for resource, options in self.http_options.items():
            for kind in ("headers", "params"):
                for name, value in options[kind].items():
                    if value is not None:
                        found.append(Secret(f"{resource}.{kind}.{name}", str(value)))
            for index, value in enumerate(options["secrets"]):
                found.append(Secret(f"{resource}.secrets.{index}", value))
        sinks = {id(s): s for stage in self.stages.values() for s in stage.sinks}
        for sink in sinks.values():
            # Sinks that have a URL (PostgreSQL tables) may carry a password in it.
            url = getattr(sink, "url", None)
            if isinstance(url, str):
                found += url_secrets(url, f"sink.{sink.name}")
        return tuple(s for s in found if s.value)

    @property
    def secrets(self) -> tuple[str, ...]:
        """Every value declared secret (see :attr:`declared_secrets`)."""
        return tuple(s.value for s in self.declared_secrets)

    def masker(self, state: str | None = None) -> Masker:
        """The masker of the job's secrets, and of the password of the ``state`` URL, for
        every text shown or stored."""
        return Masker((*self.declared_secrets, *url_secrets(state, "state")))

    def run(
        self,
        state: str | None = None,
        *,
        stages: Sequence[str] = (),
        start: date | str | None = None,
        end: date | str | None = None,
        concurrency: int | None = None,
        grace: float = 5.0,
        progress: bool | str = True,
        log_dir: str | Path | None = None,
    ) -> RunResult:
        """Run the job from a program as ``backfill run`` does (same progress display, log
        file, Ctrl+C handling and exit code) and return the result; never exits::

            result = job.run(state="sqlite:///state.db", start="2021-01-01")
            assert result.exit_code == 0, result.message

        See :func:`backfill.engine.entry.run` for the options.
        """
        # Imported here: the engine imports this module.
        from backfill.engine.entry import run

        return run(
            self,
            state or DEFAULT_STATE_URL,
            stages=stages,
            start=start,
            end=end,
            concurrency=concurrency,
            grace=grace,
            progress=progress,
            log_dir=log_dir,
        )

    def __repr__(self) -> str:
        return f"Job({self.name!r}, stages={list(self.stages)})"

    @overload
    def stage(self, fn: StageFunction, /) -> StageFunction: ...

    @overload
    def stage(
        self,
        fn: None = None,
        /,
        *,
        name: str | None = None,
        partitions: PartitionSpec | None = None,
        concurrency: int = 4,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        sink: Sink | Sequence[Sink] | None = None,
        resource: str | Resource | None = None,
        requests_per_partition: float | None = None,
        needs: Sequence[str | Needs] = (),
        reference: bool = False,
        executor: str = "thread",
        checks: Sequence[Check | CheckFunction] = (),
    ) -> Callable[[StageFunction], StageFunction]: ...

    def stage(
        self,
        fn: StageFunction | None = None,
        /,
        *,
        name: str | None = None,
        partitions: PartitionSpec | None = None,
        concurrency: int = 4,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        sink: Sink | Sequence[Sink] | None = None,
        resource: str | Resource | None = None,
        requests_per_partition: float | None = None,
        needs: Sequence[str | Needs] = (),
        reference: bool = False,
        executor: str = "thread",
        checks: Sequence[Check | CheckFunction] = (),
    ) -> StageFunction | Callable[[StageFunction], StageFunction]:
        """Declare a stage. Usable bare (``@job.stage``) or with options.

        The function takes ``(ctx, partition)`` and returns an iterable of records, yields
        them (sync or async generator), or returns None when it writes nothing itself.
        Plain ``def`` functions run in a thread pool; ``async def`` on the event loop.
        ``resource`` binds ``ctx.http`` to a declared resource and its limits;
        ``requests_per_partition`` is an estimate for ``backfill plan`` until history exists.

        ``needs`` names earlier stages (or :func:`needs` with a lookback) that must be done
        before a partition runs; ``reference=True`` makes an unpartitioned stage ("masters":
        one partition, ``all``). ``executor="process"`` runs a CPU-bound ``def`` stage in a
        process pool. ``checks`` run on each partition's records before they are written
        (see :mod:`backfill.checks`).
        """

        def register(func: StageFunction) -> StageFunction:
            stage_name = name or func.__name__
            if not _NAME.match(stage_name):
                raise ConfigError(f"stage name {stage_name!r} must be an identifier")
            if stage_name in self.stages:
                raise ConfigError(f"job {self.name!r} declares stage {stage_name!r} twice")
            if reference and partitions is not None:
                raise ConfigError(
                    f"stage {stage_name!r}: a reference stage has no partitions; drop "
                    "partitions= or reference=True"
                )
            spec = ReferenceSpec() if reference else partitions or self.partitions
            if spec is None:
                raise ConfigError(
                    f"stage {stage_name!r} has no partitions; pass partitions= to Job() "
                    "or to the stage"
                )
            if concurrency < 1:
                raise ConfigError(f"stage {stage_name!r}: concurrency must be at least 1")
            if timeout is not None and timeout <= 0:
                raise ConfigError(f"stage {stage_name!r}: timeout must be positive")
            resource_name = resource.name if isinstance(resource, Resource) else resource
            if resource_name is not None and resource_name not in self.resources:
                known = ", ".join(self.resources) or "none"
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
            deps = self._needs(stage_name, spec, needs)
            self.stages[stage_name] = Stage(
                name=stage_name,
                fn=func,
                partitions=spec,
                concurrency=concurrency,
                timeout=timeout,
                retry=retry or RetryPolicy(),
                sink=_sinks(sink, f"stage {stage_name!r}") if sink is not None else self.sink,
                description=(inspect.getdoc(func) or "").split("\n")[0],
                resource=resource_name,
                requests_per_partition=requests_per_partition,
                needs=deps,
                executor=executor,
                checks=tuple(as_check(c) for c in checks),
            )
            return func

        if fn is not None:
            return register(fn)
        return register

    def _needs(
        self, name: str, spec: PartitionSpec, declared: Sequence[str | Needs]
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
                    f"stage {name!r}: needs= takes stage names or needs(...), "
                    f"not {type(item).__name__}"
                )
            if dep.stage == name:
                raise ConfigError(f"stage {name!r} cannot need itself")
            upstream = self.stages.get(dep.stage)
            if upstream is None:
                known = ", ".join(self.stages) or "none"
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

    def dependencies(self, stage: Stage) -> tuple[Dependency, ...]:
        """What the ledger must check before one of ``stage``'s partitions may be claimed."""
        result = []
        for dep in stage.needs:
            upstream = self.stages[dep.stage]
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

    def upstream(self, name: str) -> list[str]:
        """Every stage ``name`` needs, directly or through others, in declaration order."""
        seen: set[str] = set()
        todo = [d.stage for d in self.stages[name].needs]
        while todo:
            current = todo.pop()
            if current not in seen:
                seen.add(current)
                todo.extend(d.stage for d in self.stages[current].needs)
        return [s for s in self.stages if s in seen]

    def downstream(self, name: str) -> list[str]:
        """Every stage that needs ``name``, directly or through others."""
        return [s for s in self.stages if name in self.upstream(s)]

    def select_stages(
        self,
        names: list[str] | tuple[str, ...] | None,
        *,
        start_from: Sequence[str] = (),
        skip: Sequence[str] = (),
    ) -> list[Stage]:
        """The chosen stages in declaration order; unknown names are a ConfigError.

        ``names`` picks stages (all when none are named and no ``start_from``),
        ``start_from`` adds a stage and everything downstream of it, ``skip`` drops stages.
        """
        for option, given in (
            ("--stage", names or ()),
            ("--start-from", start_from),
            ("--skip", skip),
        ):
            unknown = [n for n in given if n not in self.stages]
            if unknown:
                known = ", ".join(self.stages) or "none"
                raise ConfigError(
                    f"unknown stage {unknown[0]!r} in {option} for job {self.name!r}; "
                    f"its stages are: {known}"
                )
        chosen: set[str] = set(names or ())
        for name in start_from:
            chosen.add(name)
            chosen.update(self.downstream(name))
        if not names and not start_from:
            chosen = set(self.stages)
        chosen -= set(skip)
        if not chosen:
            raise ConfigError(
                f"the stage options leave no stage of job {self.name!r} to run; "
                f"its stages are: {', '.join(self.stages)}"
            )
        return [stage for name, stage in self.stages.items() if name in chosen]


def _sinks(sink: Sink | Sequence[Sink] | None, owner: str) -> Sink | tuple[Sink, ...] | None:
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


def load_job_module(path: Path) -> Any:
    """Execute a job file as module ``backfill_job_<stem>`` (also in worker processes)."""
    if not path.exists():
        raise ConfigError(
            f"job file {path} does not exist; pass the path of a Python file or MODULE:ATTR"
        )
    if path.suffix != ".py" or not path.is_file():
        raise ConfigError(f"job {path} is not a Python file; pass a .py file or MODULE:ATTR")
    module_name = f"backfill_job_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load job file {path}; pass a .py file")
    module = importlib.util.module_from_spec(spec)
    # Let a job file import the helpers that sit beside it.
    sys.path.insert(0, str(path.resolve().parent))
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise ConfigError(
            f"job file {path} has a syntax error at line {exc.lineno}: {exc.msg}; fix it and "
            "run again"
        ) from exc
    except ConfigError as exc:
        detail = _masked(module, " ".join(str(exc).split()))
        raise ConfigError(f"job file {path}: {detail}") from exc
    except SystemExit as exc:
        raise ConfigError(
            f"job file {path} exits while it is imported (sys.exit({exc.code!r})"
            f"{_line_in(exc, path)}); a job file must only declare the job: move that call "
            "under `if __name__ == '__main__':`"
        ) from exc
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        detail = _masked(module, " ".join(str(exc).split()))
        raise ConfigError(
            f"job file {path} failed to load{_line_in(exc, path, ' at')}: "
            f"{type(exc).__name__}: {detail}"
        ) from exc
    finally:
        if sys.path and sys.path[0] == str(path.resolve().parent):
            sys.path.pop(0)
    return module


def _masked(module: Any, message: str) -> str:
    """An error raised while a job file loads may quote a secret: mask what looks secret,
    and whatever the jobs declared before the error."""
    declared = [s for v in vars(module).values() if isinstance(v, Job) for s in v.declared_secrets]
    return Masker(declared).mask(message)


def _line_in(exc: BaseException, path: Path, prefix: str = " at") -> str:
    """`` at line N``: the last line of ``path`` that ``exc`` passed through, if any."""
    line = ""
    # The import machinery names the file by its absolute path.
    names = {str(path), str(path.absolute())}
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename in names:
            line = f"{prefix} line {tb.tb_lineno}"
        tb = tb.tb_next
    return line


def load_job(target: str) -> Job:
    """Load a job from ``path/to/job.py``, ``path/to/job.py:ATTR`` or ``package.module:ATTR``."""
    attr: str | None = None
    location = target
    if ":" in target and not Path(target).exists():
        location, _, attr = target.rpartition(":")
    if location.endswith(".py") or Path(location).exists() or "/" in location:
        module = load_job_module(Path(location))
        where = f"job file {location}"
    else:
        try:
            module = importlib.import_module(location)
        except ImportError as exc:
            raise ConfigError(
                f"cannot import job module {location!r} ({Masker().mask(str(exc))}); pass a "
                ".py file or MODULE:ATTR"
            ) from exc
        where = f"module {location}"
    if attr is not None:
        job = getattr(module, attr, None)
        if not isinstance(job, Job):
            raise ConfigError(f"{where} has no backfill.Job named {attr!r}")
    else:
        jobs = [v for v in vars(module).values() if isinstance(v, Job)]
        if not jobs:
            raise ConfigError(f"{where} defines no backfill.Job; create one with Job('name', ...)")
        if len({id(j) for j in jobs}) > 1:
            names = ", ".join(sorted(k for k, v in vars(module).items() if isinstance(v, Job)))
            raise ConfigError(f"{where} defines several jobs ({names}); pick one with PATH:NAME")
        job = jobs[0]
    if not job.stages:
        raise ConfigError(f"job {job.name!r} has no stages; declare one with @job.stage")
    for secret in job.masker().too_short:
        log.warning(
            "%s is declared secret but has only %d character(s), too short to mask: it is "
            "shown as is wherever it appears (a value that is no secret can go in each "
            "request's own params or headers instead)",
            secret.where,
            len(secret.value),
        )
    return job
