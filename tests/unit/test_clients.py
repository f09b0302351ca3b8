"""The client registry: kinds plug in, one client per kind and resource, and ctx uses it."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest

from backfill import BackfillError, Job, daily
from backfill.clock import Clock, SystemClock
from backfill.context import Context, RunCache, StageLog
from backfill.ratelimit import Resource
from backfill.sources import clients as registry
from backfill.sources.clients import Clients, register_client
from backfill.sources.http import HttpClient


class FakeWarehouse:
    """A client of a new kind: remembers what it was made with, and being closed."""

    def __init__(self, resource: Resource | None, clock: Clock) -> None:
        self.resource = resource
        self.clock = clock
        self.closed = False

    async def aclose(self) -> None:
        self.closed = True


def make_warehouse(job: Job, resource: Resource | None, clock: Clock) -> FakeWarehouse:
    return FakeWarehouse(resource, clock)


def make_job() -> Job:
    job = Job("totals", partitions=daily("2013-01-01", "2013-01-02"))
    job.resource("warehouse", concurrency=2)
    job.resource("api", rate="5/s", retries=4, base_url="https://api.example")
    return job


def make_context(clients: Clients, resource: str | None = "warehouse") -> Context:
    job = clients.job
    stage = next(iter(job.stages), "totals")
    log = StageLog(logging.getLogger("test"), {})
    partition = job.partitions.get("2013-01-01") if job.partitions else None
    return Context(
        partition=partition,  # type: ignore[arg-type]
        job=job.name,
        stage=stage,
        run_id="r1",
        attempt=1,
        cache=RunCache(),
        log=log,
        _resource=resource,
        _clients=clients,
    )


def test_a_plugged_in_kind_gets_one_client_per_resource_on_the_runs_clock():
    """A new kind is made once per resource, bound to it, on the run's clock, and closed."""
    job = make_job()
    clock = SystemClock()
    clients = Clients(job, clock=clock, kinds={"warehouse": make_warehouse})
    first = clients.get("warehouse", "warehouse")
    assert clients.get("warehouse", "warehouse") is first
    assert first.resource is job.resources["warehouse"] and first.clock is clock
    other = clients.get("warehouse", "api")
    assert other is not first
    assert clients.made("warehouse") == [first, other] and clients.made("http") == []
    asyncio.run(clients.aclose())
    assert first.closed and other.closed
    assert clients.made("warehouse") == [first, other]


def test_http_is_the_first_registered_kind_with_the_resources_options():
    """`http` is registered: its client carries the resource, its retries and the clock."""
    job = make_job()
    clock = SystemClock()
    clients = Clients(job, clock=clock)
    http = clients.http("api")
    assert isinstance(http, HttpClient)
    assert http.resource is job.resources["api"] and http.retries == 4
    assert http.clock is clock
    assert clients.get("http", "api") is http
    assert clients.http(None).resource is None
    asyncio.run(clients.aclose())


def test_register_client_plugs_a_kind_into_every_later_run(monkeypatch: pytest.MonkeyPatch):
    """`register_client` adds a kind the default registry of every run then knows."""
    monkeypatch.setattr(registry, "_KINDS", dict(registry._KINDS))
    register_client("test_warehouse", make_warehouse)
    clients = Clients(make_job(), clock=SystemClock())
    assert isinstance(clients.get("test_warehouse", "warehouse"), FakeWarehouse)


def test_unknown_kinds_resources_and_bad_names_are_one_sentence():
    """An unknown kind lists the kinds; an unknown resource says to declare it."""
    clients = Clients(make_job(), clock=SystemClock(), kinds={"http": make_warehouse})
    with pytest.raises(BackfillError, match="no client of kind 'sql'; the kinds are http"):
        clients.get("sql", "warehouse")
    with pytest.raises(BackfillError, match="unknown resource 'dwh'; declare it on the job"):
        clients.resource("dwh")
    with pytest.raises(BackfillError, match="client kind 'not a name' must be an identifier"):
        register_client("not a name", make_warehouse)


def test_context_takes_clients_and_slots_from_the_registry():
    """`ctx.client(kind)` is the stage resource's client; `ctx.slot()` its resource's turn."""
    job = make_job()
    clients = Clients(job, clock=SystemClock(), kinds={"warehouse": make_warehouse})

    async def main() -> tuple[Any, int]:
        ctx = make_context(clients)
        async with ctx.slot():
            held = job.resources["warehouse"].requests
        return ctx.client("warehouse"), held

    client, held = asyncio.run(main())
    assert client.resource is job.resources["warehouse"]
    assert held == 1


def test_def_stages_take_their_slots_from_threads_while_the_loop_hands_them_out():
    """`with ctx.slot()` from six threads on a pool of 2: never more than 2 inside."""
    clients = Clients(make_job(), clock=SystemClock())
    lock = threading.Lock()
    inside = {"now": 0, "most": 0}

    def query(ctx: Context) -> None:
        with ctx.slot():
            with lock:
                inside["now"] += 1
                inside["most"] = max(inside["most"], inside["now"])
            time.sleep(0.03)
            with lock:
                inside["now"] -= 1

    async def main() -> None:
        ctx = make_context(clients)
        await asyncio.gather(*(asyncio.to_thread(query, ctx) for _ in range(6)))

    asyncio.run(main())
    assert inside["most"] == 2


def test_misused_slots_say_what_to_do():
    """`with` on the event loop, no resource, or no run: each refused in one sentence."""
    clients = Clients(make_job(), clock=SystemClock())

    async def on_the_loop() -> None:
        with make_context(clients).slot():
            pass

    with pytest.raises(RuntimeError, match="takes its slot with `async with ctx"):
        asyncio.run(on_the_loop())

    async def no_resource() -> None:
        make_context(clients, resource=None).slot()

    with pytest.raises(RuntimeError, match="declares no resource: name the one"):
        asyncio.run(no_resource())
    outside = make_context(clients).slot()
    with pytest.raises(RuntimeError, match="only available while a stage runs"), outside:
        pass
