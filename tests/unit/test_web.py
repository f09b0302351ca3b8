"""The dashboard app in process, on loopback: snapshot, SSE streams, token, /metrics."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from backfill import (
    Context,
    EmptyPartition,
    Job,
    Partition,
    PermanentError,
    RetryPolicy,
    daily,
    needs,
    yearly,
)
from backfill.errors import ConfigError, LedgerError
from backfill.ledger import Ledger, Status, open_ledger
from backfill.testing import run_job
from backfill.web.app import DashboardApp, check_bind, create_app
from backfill.web.snapshot import Dashboard, StateReader


def sample_job() -> Job:
    job = Job("web", partitions=daily("2013-01-01", "2013-01-31"))

    @job.stage(retry=RetryPolicy(attempts=1, base=0.0))
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, str]]:
        if partition.start.day == 13:
            raise PermanentError("injected: no data on the 13th", category="INJECTED")
        return [{"day": partition.key}, {"day": partition.key + "b"}]

    return job


class Served:
    def __init__(self, app: DashboardApp) -> None:
        self.app = app
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="critical", lifespan="off")
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            await self.server.serve(sockets=[self.sock])

        asyncio.run(main())

    def tasks(self) -> int:
        assert self.loop is not None

        async def count() -> int:
            return len(asyncio.all_tasks())

        return asyncio.run_coroutine_threadsafe(count(), self.loop).result(5)


@pytest.fixture
def ledger() -> Ledger:
    store = open_ledger(":memory:")
    run_job(sample_job(), store)
    return store


def serve(app: DashboardApp) -> Iterator[Served]:
    served = Served(app)
    served.thread.start()
    deadline = time.monotonic() + 10
    while not served.server.started:
        assert time.monotonic() < deadline, "dashboard did not start"
        time.sleep(0.02)
    try:
        yield served
    finally:
        served.server.should_exit = True
        served.thread.join(10)
        served.sock.close()


@pytest.fixture
def served(ledger: Ledger) -> Iterator[Served]:
    yield from serve(create_app(sample_job(), ledger, interval=0.05))


@pytest.fixture
def served_with_token(ledger: Ledger) -> Iterator[Served]:
    yield from serve(create_app(sample_job(), ledger, token="t0ken", interval=0.05))


def test_snapshot_has_progress_failures_calendar_and_runs(served: Served) -> None:
    """The JSON snapshot reports the ledger's counts, the failed partition's message, a
    calendar day per partition and the run with its metrics."""
    snap = httpx.get(f"{served.url}/api/snapshot", timeout=5).json()
    [stage] = snap["stages"]
    assert (stage["total"], stage["done"], stage["failed"], stage["records"]) == (31, 30, 1, 60)
    assert snap["failures"][0]["key"] == "2013-01-13"
    assert "injected" in snap["failures"][0]["message"]
    assert len(snap["calendar"]["cells"]) == 31
    assert snap["calendar"]["cells"][12] == "failed"
    assert snap["runs"][0]["partitions"] == 31


def test_page_is_self_contained(served: Served) -> None:
    """The page loads nothing from elsewhere: no external script, style or font."""
    html = httpx.get(served.url, timeout=5).text
    assert "<script>" in html and "EventSource" in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in html


def test_sse_streams_end_when_clients_disconnect(served: Served) -> None:
    """100 clients connect, read a snapshot and leave: the server closes every stream
    and holds no more tasks than before."""
    before = served.tasks()
    with httpx.Client(timeout=5) as client:
        for _ in range(100):
            with client.stream("GET", f"{served.url}/events") as response:
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        break
    deadline = time.monotonic() + 10
    while served.app.streams and time.monotonic() < deadline:
        time.sleep(0.05)
    assert served.app.streams == 0
    assert served.tasks() <= before + 2


def test_token_is_required_when_set(served_with_token: Served) -> None:
    """Without the token every page answers 401; with it (query or bearer) 200."""
    url = served_with_token.url
    assert httpx.get(f"{url}/api/snapshot", timeout=5).status_code == 401
    assert httpx.get(f"{url}/metrics", timeout=5).status_code == 401
    assert httpx.get(f"{url}/api/snapshot?token=t0ken", timeout=5).status_code == 200
    headers = {"Authorization": "Bearer t0ken"}
    assert httpx.get(f"{url}/metrics", headers=headers, timeout=5).status_code == 200


def test_binding_beyond_loopback_needs_a_token() -> None:
    """0.0.0.0 without a token is refused in one sentence; loopback or a token is fine."""
    with pytest.raises(ConfigError, match=r"refusing to serve the dashboard on 0\.0\.0\.0"):
        check_bind("0.0.0.0", None)
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    check_bind("0.0.0.0", "secret")


def test_metrics_parse_and_match_the_ledger(served: Served, ledger: Ledger) -> None:
    """/metrics parses with prometheus-client's parser; its counters equal the ledger's
    counts, and the duration histogram counts every finished partition."""
    text = httpx.get(f"{served.url}/metrics", timeout=5).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    counts = ledger.counts("web", ["fetch"])["fetch"]
    labels = (("job", "web"), ("outcome", "done"), ("stage", "fetch"))
    assert samples[("backfill_partitions_finished_total", labels)] == counts.done
    failed = (("job", "web"), ("outcome", "failed"), ("stage", "fetch"))
    assert samples[("backfill_partitions_finished_total", failed)] == counts.failed
    records = (("job", "web"), ("stage", "fetch"))
    assert samples[("backfill_records_total", records)] == counts.records == 60
    hist = (("job", "web"), ("resource", ""), ("stage", "fetch"))
    assert samples[("backfill_partition_duration_seconds_count", hist)] == counts.finished
    assert all("partition" not in dict(key[1]) for key in samples)


def reference_job() -> Job:
    job = Job("ref", partitions=daily("2013-01-01", "2013-01-31"))

    @job.stage(reference=True)
    async def teams(ctx: Context, partition: Partition) -> list[dict[str, str]]:
        return [{"team": "a"}]

    @job.stage(needs=["teams"])
    async def games(ctx: Context, partition: Partition) -> list[dict[str, str]]:
        return [{"day": partition.key}]

    return job


def test_a_job_with_a_reference_stage_gets_its_snapshot_with_a_calendar_of_its_days() -> None:
    """A reference stage (its window spans every date) answers /api/snapshot with 200; the
    calendar covers the other stages' 31 days and says the reference stage is left out."""
    job = reference_job()
    store = open_ledger(":memory:")
    run_job(job, store)
    for served in serve(create_app(job, store, interval=0.05)):
        response = httpx.get(f"{served.url}/api/snapshot", timeout=30)
        assert response.status_code == 200, response.text
        calendar = response.json()["calendar"]
        assert (calendar["unit"], calendar["start"]) == ("day", "2013-01-01")
        assert calendar["cells"] == ["done"] * 31
        assert calendar["left_out"] == [{"stage": "teams", "why": "reference: no dates"}]


def mixed_job() -> Job:
    """Two stages over 7 days x 2 regions; ``b`` needs ``a`` of its day and the day before."""
    job = Job("mix", partitions=daily("2013-01-01", "2013-01-07", region=["x", "y"]))

    @job.stage(retry=RetryPolicy(attempts=1, base=0.0))
    async def a(ctx: Context, partition: Partition) -> list[dict[str, str]]:
        if partition.start.day == 1 or partition.start.day == 2:
            raise EmptyPartition("nothing that day")
        if partition.start.day == 3 and partition["region"] == "x":
            raise PermanentError("injected", category="INJECTED")
        return [{"k": partition.key}]

    @job.stage(needs=[needs("a", lookback=1)], retry=RetryPolicy(attempts=1, base=0.0))
    async def b(ctx: Context, partition: Partition) -> list[dict[str, str]]:
        if partition.start.day == 1 or (partition.start.day == 2 and partition["region"] == "x"):
            raise EmptyPartition("nothing that day")
        return [{"k": partition.key}]

    return job


def test_a_calendar_day_shows_its_worst_actionable_state_and_its_mix() -> None:
    """Failed beats blocked beats stale beats leased; a day where everything finished is
    done even when some of it was empty, and empty only when all of it was; each day
    carries its mix of states."""
    job = mixed_job()
    store = open_ledger(":memory:")
    run_job(job, store)
    day = daily("2013-01-01", "2013-01-07", region=["x", "y"])
    store.requeue("mix", ["a"], [Status.DONE], day.selection(start="2013-01-05", end="2013-01-05"))
    store.requeue("mix", ["b"], [Status.DONE], day.selection(start="2013-01-07", end="2013-01-07"))
    [held] = store.claim(
        "mix",
        "b",
        "someone",
        limit=1,
        lease_seconds=600.0,
        now=time.time(),
        run_id="r9",
        needs=job.dependencies(job.stages["b"]),
    )
    assert held.key == "2013-01-07/region=x"
    calendar = Dashboard(job, store).snapshot()["calendar"]
    assert calendar["cells"] == [
        "empty",  # everything empty
        "done",  # 1 done, 3 empty
        "failed",  # a x failed, b x waits for it
        "blocked",  # b x waits for a x of the day before
        "stale",  # a redone: b's partitions computed from it are stale
        "stale",  # b looks back at the redone day
        "leased",  # b x held by a worker, b y pending
    ]
    mix = [dict(zip(calendar["states"], counts, strict=True)) for counts in calendar["mix"]]
    shown = [{k: v for k, v in m.items() if v} for m in mix]
    assert shown[0] == {"empty": 4}
    assert shown[1] == {"done": 1, "empty": 3}
    assert shown[2] == {"failed": 1, "blocked": 1, "done": 2}
    assert shown[3] == {"blocked": 1, "done": 3}
    assert shown[4] == {"stale": 2, "pending": 2}
    assert shown[6] == {"leased": 1, "pending": 1, "done": 2}


def test_a_yearly_job_mostly_done_is_not_painted_by_its_empty_partitions() -> None:
    """A yearly x team job with one team empty each year: every day is done, not empty."""
    job = Job("seasons", partitions=yearly("2010-01-01", "2012-12-31", team=["a", "b", "c"]))

    @job.stage()
    async def games(ctx: Context, partition: Partition) -> list[dict[str, str]]:
        if partition["team"] == "c":
            raise EmptyPartition("no games")
        return [{"k": partition.key}]

    store = open_ledger(":memory:")
    run_job(job, store)
    calendar = Dashboard(job, store).snapshot()["calendar"]
    assert calendar["unit"] == "day"
    assert len(calendar["cells"]) == 365 + 366 + 365
    assert set(calendar["cells"]) == {"done"}


class SlowDashboard:
    """Stands in for a Dashboard whose every read of the ledger takes 0.2 s."""

    def __init__(self) -> None:
        self.busy = 0.0

    def snapshot(self) -> dict[str, object]:
        start = time.monotonic()
        time.sleep(0.2)
        self.busy += time.monotonic() - start
        return {"at": start}


def test_a_costly_snapshot_is_read_again_only_after_a_pause_four_times_its_cost(
    ledger: Ledger,
) -> None:
    """However often clients ask, reading the ledger takes at most about a fifth of the
    time when one read is slow (0.2 s against an interval of 0.05 s)."""
    app = create_app(sample_job(), ledger, interval=0.05)
    slow = SlowDashboard()
    app.dashboard = slow  # type: ignore[assignment]

    async def ask() -> float:
        start = time.monotonic()
        while time.monotonic() - start < 2.5:
            await app.snapshot()
            await asyncio.sleep(0.01)
        return time.monotonic() - start

    elapsed = asyncio.run(ask())
    assert slow.busy / elapsed < 0.4, (slow.busy, elapsed)


def test_why_the_dashboard_waits_never_shows_the_state_password() -> None:
    """A state that cannot be read yet is named on the page with its password masked,
    whatever the error says."""
    url = "postgresql://backfill:hunter2-pw@db.internal:5432/backfill"

    def unreachable(_: str) -> Ledger:
        raise LedgerError(f"cannot connect to {url}: connection refused")

    reader = StateReader(url, opener=unreachable)
    snapshot = Dashboard(sample_job(), reader).snapshot()
    assert snapshot["waiting"].startswith("cannot read the state yet: cannot connect to")
    assert "hunter2-pw" not in json.dumps(snapshot)
