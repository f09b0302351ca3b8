"""The :class:`Job`: what a job file declares (its partitions, resources, stages and
tables) and how it is run from a program. The checks of each declaration live beside it
(``stages``, ``resources``); questions about the stage graph in ``graph``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from backfill.checks import Check, CheckFunction
from backfill.errors import ConfigError
from backfill.job import graph
from backfill.job.resources import declared_secrets, http_options
from backfill.job.stages import NAME, Needs, Stage, StageFunction, build_stage, sinks_of
from backfill.ledger import DEFAULT_STATE_URL, Dependency
from backfill.partitions import PartitionSpec
from backfill.partitions.zones import zone
from backfill.ratelimit import DEFAULT_MAX_WAIT, Limit, Resource
from backfill.retry import RetryPolicy
from backfill.secrets import Masker, Secret, notify_url_secrets, url_secrets
from backfill.sources import DEFAULT_MAX_BODY, CrossOrigin
from backfill.sources.browser_options import DEFAULT_BLOCKED, BlockPage, BrowserOptions

if TYPE_CHECKING:
    from datetime import date, timedelta

    from backfill.engine.result import RunResult
    from backfill.entities.resolver import EntitySpec
    from backfill.sinks import Mode, Sink

__all__ = ["Job"]


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
        tz: str | None = None,
        notify: Sequence[str] = (),
    ) -> None:
        """``tz`` (an IANA name) is the zone of the job's days where a partition spec
        names none: ``today``/``yesterday``, keep-current runs and freshness follow it.
        ``notify`` lists Apprise URLs told when a run ends, fails or needs a person
        (see :mod:`backfill.notify`); their secrets are masked everywhere."""
        if not NAME.match(name):
            raise ConfigError(
                f"job name {name!r} must start with a letter and use only letters, digits, _ . -"
            )
        if lease_seconds <= 0:
            raise ConfigError("lease_seconds must be positive")
        self.name = name
        if tz is not None:
            zone(tz)
        self.tz = tz
        self.partitions = partitions.in_zone(tz) if partitions is not None else None
        self.notify = tuple(notify)
        self.sink = sinks_of(sink, f"job {name!r}")
        self.description = description
        self.lease_seconds = lease_seconds
        self.http_timeout = http_timeout
        self.stages: dict[str, Stage] = {}
        self.resources: dict[str, Resource] = {}
        self.http_options: dict[str, dict[str, Any]] = {}
        self.browser_options: dict[str, BrowserOptions] = {}
        self.entity_kinds: dict[str, EntitySpec] = {}
        # Warehouses (resources with a SQL URL): what ctx.sql connects to.
        self.sql_options: dict[str, dict[str, Any]] = {}

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
        if not NAME.match(name):
            raise ConfigError(f"resource name {name!r} must be an identifier")
        if name in self.resources:
            raise ConfigError(f"job {self.name!r} declares resource {name!r} twice")
        options = http_options(
            f"resource {name!r}",
            timeout=timeout,
            default_timeout=self.http_timeout,
            retries=retries,
            headers=headers,
            params=params,
            secrets=secrets,
            base_url=base_url,
            allowed_hosts=allowed_hosts,
            cross_origin=cross_origin,
            max_body=max_body,
            deadline=deadline,
            hedge=hedge,
            start_rate=start_rate,
        )
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
        self.http_options[name] = options
        return resource

    def browser(
        self,
        name: str,
        *,
        rate: str | float | Limit | None = None,
        pages: int = 4,
        jitter: tuple[float, float] | None = None,
        recycle_every: int = 50,
        block: Sequence[str] = DEFAULT_BLOCKED,
        allow: Sequence[str] = (),
        block_page: BlockPage | None = None,
        timeout: float = 30.0,
        headless: bool = True,
        executable: str | Path | None = None,
        failures: str | Path | None = None,
        args: Sequence[str] = (),
        limits: list[str | float | Limit] | None = None,
        shared: bool = False,
        max_wait: float = DEFAULT_MAX_WAIT,
    ) -> Resource:
        """Declare a source read in a browser; its stages use ``ctx.browser``, a pool of
        ``pages`` Playwright pages on Debian's chromium (``apt-get install chromium``).

        Page loads count as the resource's requests (``rate``, ``limits``) and pages as
        its concurrency. ``jitter=(0.3, 1.0)`` adds a random wait before each load on top
        of the rate; ``block`` (images, fonts and media by default; ``allow`` takes some
        back) are not loaded; ``block_page`` (a title fragment such as ``"Just a
        moment"``, or a function of the page) detects a block page, which fails the load
        as transient and counts against the resource's circuit breaker, as a timeout or
        a 5xx do. See :class:`~backfill.sources.browser_options.BrowserOptions`.

        Example::

            job.browser("tennis_site", rate="1/s", pages=4, jitter=(0.3, 1.0),
                        block_page="Just a moment")
        """
        if not isinstance(pages, int) or isinstance(pages, bool) or pages < 1:
            raise ConfigError(f"browser {name!r}: pages must be a whole number >= 1")
        options = BrowserOptions.checked(
            f"browser {name!r}",
            pages=pages,
            jitter=jitter,
            recycle_every=recycle_every,
            block=block,
            allow=allow,
            block_page=block_page,
            timeout=timeout,
            headless=headless,
            executable=executable,
            failures=failures,
            args=args,
        )
        resource = self.resource(
            name,
            rate=rate,
            concurrency=pages,
            limits=limits,
            shared=shared,
            max_wait=max_wait,
            timeout=timeout,
            retries=0,
        )
        self.browser_options[name] = options
        return resource

    def entities(
        self,
        kind: str,
        *,
        database: str | None = None,
        accept: float = 0.9,
        review: float = 0.75,
        margin: float = 0.03,
        references: Sequence[str] = (),
        index: str = "auto",
    ) -> EntitySpec:
        """Declare an entity kind (``players``, ``horses``) that stages resolve names of
        with ``ctx.entities(kind)``, stored in ``database`` (by default the database of
        the job's table). A fuzzy match scoring ``accept`` or more (and ``margin`` ahead
        of the next entity) is linked; from ``review`` it gets a provisional entity and a
        place in the review queue; below, a new entity. ``references`` (``"table.column"``)
        are the columns holding the kind's ids: a merge moves their rows too. ``index``:
        ``"auto"`` (pg_trgm on PostgreSQL when it can be had), ``"memory"``, ``"trigram"``.

        Example::

            job.entities("players", references=["matches.winner_id", "matches.loser_id"])

            @job.stage
            async def matches(ctx, partition):
                for row in await fetch(partition):
                    row["winner_id"] = await ctx.entities("players").resolve(
                        row["winner"], source="atp", country=row["winner_country"])
                    ...
        """
        # Imported here: the entities package needs its extra, only when declared.
        from backfill._optional import require_entities
        from backfill.entities.match import Thresholds
        from backfill.entities.resolver import EntitySpec

        require_entities()
        if kind in self.entity_kinds:
            raise ConfigError(f"job {self.name!r} declares entity kind {kind!r} twice")
        spec = EntitySpec(
            kind,
            database or self._sink_database(kind),
            Thresholds(accept=accept, review=review, margin=margin),
            tuple(references),
            index,
        )
        self.entity_kinds[kind] = spec
        return spec

    def _sink_database(self, kind: str) -> str:
        """The database of the job's table sink, for an entity kind declared without one."""
        sinks = self.sink if isinstance(self.sink, tuple) else (self.sink,)
        for sink in sinks:
            url = getattr(sink, "url", None)
            if isinstance(url, str):
                return url
            path = getattr(sink, "path", None)
            if isinstance(path, Path):
                return f"sqlite:///{path}"
        raise ConfigError(
            f"entity kind {kind!r} needs a database: pass database='sqlite:///PATH' or a "
            "postgresql:// URL, or give the job a table sink to store it beside"
        )

    def warehouse(
        self,
        name: str,
        url: str,
        *,
        concurrency: int = 4,
        rate: str | float | Limit | None = None,
        limits: list[str | float | Limit] | None = None,
        timeout: float | None = None,
        shared: bool = False,
        max_wait: float = DEFAULT_MAX_WAIT,
        bytes_budget: int | str | None = None,
        scanned: Callable[[Any], int | None] | None = None,
    ) -> Resource:
        """Declare a warehouse: a resource whose stages query ``url`` with ``ctx.sql``
        (SQLAlchemy 2 URLs: ``duckdb:///FILE``, ``postgresql://USER@HOST/DB``,
        ``sqlite:///FILE``, any installed dialect). ``concurrency`` queries at once,
        ``limits`` such as ``["2000/day"]`` (kept in the state across restarts), each query
        cancelled on the server after ``timeout`` seconds. ``bytes_budget`` (``"500GB"``)
        bounds the bytes a run's queries scan, where the driver says (BigQuery's does;
        ``scanned(cursor)`` reads them from another driver's DB-API cursor). See
        :mod:`backfill.sources.sql`.

        Example::

            job.warehouse("warehouse", "duckdb:///flights.duckdb", concurrency=15,
                          limits=["2000/day"], timeout=600)
        """
        from backfill.sources.sql import check_warehouse_url, parse_bytes

        check_warehouse_url(url, f"warehouse {name!r}")
        budget = (
            parse_bytes(bytes_budget, f"warehouse {name!r}: bytes_budget")
            if bytes_budget is not None
            else None
        )
        if scanned is not None and not callable(scanned):
            raise ConfigError(
                f"warehouse {name!r}: scanned must be a function of a DB-API cursor that "
                "returns the bytes its query scanned (or None)"
            )
        if concurrency < 1:
            raise ConfigError(f"warehouse {name!r}: concurrency must be 1 or more")
        if timeout is not None and timeout <= 0:
            raise ConfigError(f"warehouse {name!r}: timeout must be positive")
        resource = self.resource(
            name,
            rate=rate,
            concurrency=concurrency,
            limits=limits,
            shared=shared,
            max_wait=max_wait,
            secrets=tuple(s.value for s in url_secrets(url, name)),
        )
        self.sql_options[name] = {
            "url": url,
            "timeout": timeout,
            "bytes_budget": budget,
            "scanned": scanned,
        }
        return resource

    @property
    def declared_secrets(self) -> tuple[Secret, ...]:
        """Every secret of the job, named by where it is declared: each header and param
        value of each resource (whatever its name), its ``secrets``, and the passwords in
        the URLs of its tables and entity databases, and the notification URLs' tokens."""
        notify = (
            secret
            for i, url in enumerate(self.notify)
            for secret in notify_url_secrets(url, f"notify.{i}")
        )
        entity_secrets = (
            s
            for kind, spec in self.entity_kinds.items()
            for s in url_secrets(spec.database, f"entities.{kind}")
        )
        return (
            *declared_secrets(self.http_options, self.stages.values()),
            *notify,
            *entity_secrets,
        )

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
        refresh_last: int | str | timedelta | None = None,
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
        refresh_last: int | str | timedelta | None = None,
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
        (see :mod:`backfill.checks`). ``refresh_last`` (days, or a duration such as
        ``"36h"``) makes every keep-current run redo the newest finished partitions in
        that window, replacing their rows (late corrections at the source).
        """

        def register(func: StageFunction) -> StageFunction:
            stage = build_stage(
                func,
                job=self.name,
                declared=self.stages,
                resources=self.resources,
                name=name,
                partitions=partitions.in_zone(self.tz) if partitions is not None else None,
                job_partitions=self.partitions,
                concurrency=concurrency,
                timeout=timeout,
                retry=retry,
                sink=sink,
                job_sink=self.sink,
                resource=resource,
                requests_per_partition=requests_per_partition,
                needs=needs,
                reference=reference,
                executor=executor,
                checks=checks,
                refresh_last=refresh_last,
            )
            self.stages[stage.name] = stage
            return func

        if fn is not None:
            return register(fn)
        return register

    def sql_stage(
        self,
        name: str,
        *,
        sql: str,
        target: str | Sink,
        resource: str | None = None,
        mode: str | Mode | None = None,
        partition_column: str | None = None,
        needs: Sequence[str | Needs] = (),
        partitions: PartitionSpec | None = None,
        concurrency: int = 4,
        timeout: float | None = None,
        retry: RetryPolicy | None = None,
        checks: Sequence[Check | CheckFunction] = (),
        params: dict[str, Any] | None = None,
    ) -> Stage:
        """Declare a stage computed inside a warehouse: per partition, its earlier rows in
        ``target`` deleted and ``sql``'s inserted, in one transaction of the warehouse
        ``resource`` (by default the job's only one), with the checks run on the target
        before it commits. ``sql`` is a SELECT of the partition's rows, or an INSERT INTO
        the target of your own (then ``partition_column`` names its date column).
        ``timeout`` bounds the transaction (default: the warehouse's); past it, the query
        is cancelled on the server and the partition fails as ``timeout``. See
        :mod:`backfill.sources.sql_stage`.

        Example::

            job.sql_stage("delays", sql=(
                "SELECT carrier, CAST(:day AS DATE) AS day, avg(dep_delay) AS dep_delay "
                "FROM flights WHERE day = :day GROUP BY carrier"),
                target="daily_delays", needs=["load"], checks=[checks.min_rows(1)])
        """
        from backfill.checks import as_check
        from backfill.sinks.protocol import Mode
        from backfill.sources.sql_stage import SqlStage, target_name

        warehouses = list(self.sql_options)
        if resource is None:
            if len(warehouses) != 1:
                raise ConfigError(
                    f"SQL stage {name!r}: name its warehouse with resource=... (declared: "
                    f"{', '.join(warehouses) or 'none; declare one with job.warehouse'})"
                )
            resource = warehouses[0]
        if resource not in self.sql_options:
            raise ConfigError(
                f"SQL stage {name!r}: resource {resource!r} is not a warehouse; declare it "
                "with job.warehouse(NAME, URL, ...)"
            )
        table, declared_mode, declared_column = target_name(target)
        chosen = mode if mode is not None else declared_mode or Mode.REPLACE_PARTITION
        try:
            chosen = Mode(chosen)
        except ValueError:
            raise ConfigError(
                f"SQL stage {name!r}: mode {chosen!r} is not replace-partition or append"
            ) from None
        fn = SqlStage(
            name,
            sql,
            table,
            chosen,
            partition_column or declared_column,
            checks=[as_check(c) for c in checks],
            params=dict(params or {}),
            timeout=timeout,
        )
        self.stage(
            name=name,
            partitions=partitions,
            concurrency=concurrency,
            retry=retry,
            resource=resource,
            needs=needs,
        )(fn.function())
        return self.stages[name]

    def dependencies(self, stage: Stage) -> tuple[Dependency, ...]:
        """What the ledger must check before one of ``stage``'s partitions may be claimed."""
        return graph.dependencies(self.stages, stage)

    def upstream(self, name: str) -> list[str]:
        """Every stage ``name`` needs, directly or through others, in declaration order."""
        return graph.upstream(self.stages, name)

    def downstream(self, name: str) -> list[str]:
        """Every stage that needs ``name``, directly or through others."""
        return graph.downstream(self.stages, name)

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
        return graph.select_stages(self.name, self.stages, names, start_from=start_from, skip=skip)
