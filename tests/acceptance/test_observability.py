"""Logs, metrics and the dashboard through the real CLI, and the dashboard in Chromium."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import sqlite3
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from backfill.demo.server import ReplayConfig, ReplayServer
from backfill.ledger import RunRecord, StageCounts, Status, WorkerRecord, open_ledger
from backfill.partitions import daily
from browser_support import ensure_chromium
from conftest import backfill_cmd, cli_env, run_cli

# Chromium takes every core it can get: its tests and the tests that measure a rate in
# real time share one xdist group, so they never run beside each other (pyproject's
# --dist loadgroup); a starved client cannot send at a limit, whatever the engine does.
pytestmark = pytest.mark.xdist_group("cpu_heavy")

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
API_KEY = "k3y-0f-the-test-4711"

FLIGHTS_JOB = """
import os

from backfill import Job, PageNumber, PermanentError, RetryPolicy, daily

API = os.environ.get("FLIGHTS_API", "http://127.0.0.1:8813")
job = Job("flights", partitions=daily("2013-01-01", os.environ.get("LAST_DAY", "2013-03-31")))
job.resource(
    "flights_api", rate=float(os.environ.get("RATE", "30")), burst=1, concurrency=4,
    retries=3, timeout=2, params={"api_key": os.environ.get("API_KEY", "")},
)


@job.stage(resource="flights_api", concurrency=4, retry=RetryPolicy(attempts=3, base=0.1))
async def flights(ctx, partition):
    if partition.key == "2013-01-13":
        raise PermanentError("injected failure: the 13th is cursed", category="INJECTED")
    day = "not-a-day" if partition.key == "2013-01-07" else partition.date.isoformat()
    records = []
    async for page in ctx.http.paginate(
        f"{API}/v1/flights?api_key={os.environ.get('API_KEY', '')}",
        params={"date": day, "page_size": 500},
        pagination=PageNumber(page_param="page", data="data", total_pages="pages"),
    ):
        ctx.log.info("page %s of %s", page.number, partition.key)
        records.extend(page.records)
    return records
"""


def write_job(tmp_path: Path) -> Path:
    job = tmp_path / "flights_job.py"
    job.write_text(textwrap.dedent(FLIGHTS_JOB))
    return job


def start_dashboard(
    job: str, state: Path, cwd: Path, *extra: str
) -> tuple[subprocess.Popen[str], str]:
    """Start `backfill serve` on a free loopback port; return it and its URL."""
    proc = subprocess.Popen(
        [*backfill_cmd(), "serve", job, "--state", f"sqlite:///{state}", "--port", "0", *extra],
        cwd=cwd,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"http://127\.0\.0\.1:\d+/", line)
    if match is None:
        proc.kill()
        raise AssertionError(f"no URL from backfill serve: {line!r} {proc.stderr.read()!r}")
    return proc, match.group(0)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_serve_on_all_interfaces_without_token_refuses_to_start(tmp_path: Path) -> None:
    """`serve --host 0.0.0.0` without a token exits 2 with one sentence saying what to do."""
    write_job(tmp_path)
    result = run_cli("serve", "flights_job.py", "--host", "0.0.0.0", cwd=tmp_path, timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "refusing to serve the dashboard on 0.0.0.0 without a token" in lines[0]
    assert "--token" in lines[0]


def snapshot_of(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url}api/snapshot", timeout=30)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_serve_started_before_the_state_exists_picks_up_the_first_run(workdir: Path) -> None:
    """`serve` on a state nothing has created yet says it waits for the first run (and
    creates nothing); a run started afterwards appears in its snapshot, progress and all."""
    state = workdir / "later" / "state.db"
    state.parent.mkdir()
    serve, url = start_dashboard("job.py", state, workdir, "--interval", "0.2")
    try:
        before = snapshot_of(url)
        assert not state.exists()
        run = run_cli("run", "job.py", "--state", f"sqlite:///{state}", cwd=workdir)
        assert run.returncode == 1, run.stderr  # the 13th of each month fails
        deadline = time.monotonic() + 30
        while True:
            after = snapshot_of(url)
            [stage] = after["stages"]
            if stage["finished"] == 90 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        stop(serve)
    assert (stage["done"], stage["failed"], stage["finished"]) == (87, 3, 90), stage
    assert after["waiting"] is None
    assert after["runs"][0]["status"] == "failed"
    assert before["waiting"] == f"no state at {state}; nothing has run yet"
    assert before["stages"][0]["finished"] == 0


def test_json_logs_parse_carry_ids_and_hide_the_api_key(tmp_path: Path) -> None:
    """With an api key in the URL and params, every stderr and log-file line is JSON,
    partition lines name run, stage and partition, and the key appears nowhere."""
    write_job(tmp_path)
    config = dataclasses.replace(ReplayConfig.calm(), api_key=API_KEY)
    with ReplayServer(config) as server:
        result = run_cli(
            "run",
            "flights_job.py",
            "--progress",
            "none",
            "--log-format",
            "json",
            "-vv",
            cwd=tmp_path,
            env={"FLIGHTS_API": server.url, "API_KEY": API_KEY, "LAST_DAY": "2013-01-15"},
        )
    assert result.returncode == 1, result.stderr  # the injected failure and the bad day
    [log_file] = (tmp_path / ".backfill" / "logs").glob("*.jsonl")
    assert str(log_file.relative_to(tmp_path)) in result.stdout
    stderr_lines = [json.loads(line) for line in result.stderr.splitlines()]
    file_lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert any(line["logger"].startswith("httpx") for line in stderr_lines)  # URLs logged
    for lines in (stderr_lines, file_lines):
        about = [x for x in lines if x["event"].startswith(("partition ", "page "))]
        assert len(about) >= 15
        for line in about:
            assert {"run_id", "stage", "partition", "worker"} <= line.keys(), line
    failed = [x for x in file_lines if x["event"] == "partition failed"]
    assert {x["partition"] for x in failed} == {"2013-01-07", "2013-01-13"}
    with sqlite3.connect(tmp_path / ".backfill" / "state.db") as conn:
        messages = " ".join(
            m
            for (m,) in conn.execute(
                "SELECT error_message FROM backfill_partitions WHERE error_message IS NOT NULL"
            )
        )
    assert "answered 400" in messages
    for text in (result.stdout, result.stderr, log_file.read_text(), messages):
        assert API_KEY not in text


@pytest.mark.slow
def test_metrics_match_the_ledger_at_the_end_of_the_demo(tmp_path: Path) -> None:
    """After the demo, /metrics parses and its counters equal the ledger's counts and
    the run's own request total."""
    demo_dir = tmp_path / "demo"
    result = run_cli(
        "demo", "--dir", str(demo_dir), "--rate", "100", "--progress", "none", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    state = demo_dir / "state.db"
    proc, url = start_dashboard("backfill.demo.flights:job", state, tmp_path)
    try:
        text = httpx.get(f"{url}metrics", timeout=10).text
    finally:
        stop(proc)
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            key = sample.name + "".join(
                f":{labels[k]}" for k in ("status", "outcome", "le") if k in labels
            )
            values[key] = values.get(key, 0.0) + sample.value
    ledger = open_ledger(f"sqlite:///{state}")
    stages = ["airlines", "airports", "planes", "flights", "airport_daily"]
    try:
        by_stage = ledger.counts("flights", stages)
        [run] = ledger.runs("flights")
    finally:
        ledger.close()
    assert by_stage["flights"].done == 365 and by_stage["flights"].records == 336_776
    counts = StageCounts(
        "all",
        done=sum(c.done for c in by_stage.values()),
        failed=sum(c.failed for c in by_stage.values()),
        records=sum(c.records for c in by_stage.values()),
    )
    assert counts.done == 733
    assert values["backfill_partitions_finished_total:done"] == counts.done
    assert values["backfill_partitions_finished_total:failed"] == counts.failed == 0
    assert values["backfill_records_total"] == counts.records == 336_776 + 1095 + 16 + 1458 + 3322
    assert values["backfill_partitions:done"] == counts.done
    assert values["backfill_requests_total"] == run.counts["requests"] > 0
    assert values["backfill_retries_total"] == run.counts["retries"]
    assert values["backfill_partition_duration_seconds_count"] == 733
    assert values["backfill_runs_total:done"] == 1


# -- the dashboard in a real browser -------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> Path:
    return ensure_chromium()


@pytest.fixture
def running_job(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """The flights job running against a rate-limited replay API in another process."""
    write_job(tmp_path)
    config = dataclasses.replace(ReplayConfig.calm(), rate_limit=25.0, burst=1)
    with ReplayServer(config) as server:
        proc = subprocess.Popen(
            [*backfill_cmd(), "run", "flights_job.py", "--progress", "none"],
            cwd=tmp_path,
            env=cli_env({"FLIGHTS_API": server.url, "RATE": "25"}),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            yield tmp_path, proc
        finally:
            stop(proc)


@pytest.mark.slow
def test_dashboard_in_chromium_shows_live_progress_and_the_injected_failure(
    chromium: Path, running_job: tuple[Path, subprocess.Popen[str]]
) -> None:
    """Headless Chromium sees the finished count rise without a reload and the failures
    table list the injected failure; a screenshot is saved."""
    from playwright.sync_api import sync_playwright

    workdir, run = running_job
    state = workdir / ".backfill" / "state.db"
    deadline = time.monotonic() + 30
    while not state.exists():
        assert run.poll() is None, run.stderr.read() if run.stderr else ""
        assert time.monotonic() < deadline, "the run never created its state"
        time.sleep(0.05)
    serve, url = start_dashboard("flights_job.py", state, workdir, "--interval", "0.3")
    finished = '[data-stage="flights"] [data-testid="finished"]'
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(chromium), headless=True, args=["--no-sandbox"]
            )
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(url, timeout=15_000)
                page.wait_for_selector(finished, timeout=15_000)
                page.evaluate("window.__notReloaded = true")
                first = int(page.inner_text(finished).split("/")[0].replace(",", ""))
                page.wait_for_function(
                    f"""() => {{
                        const cell = document.querySelector('{finished}');
                        return cell && parseInt(cell.textContent.replace(/,/g, '')) > {first};
                    }}""",
                    timeout=30_000,
                )
                later = int(page.inner_text(finished).split("/")[0].replace(",", ""))
                page.wait_for_selector(
                    '[data-testid="failures"] td:has-text("injected failure")', timeout=60_000
                )
                assert page.evaluate("window.__notReloaded") is True
                assert page.inner_text('[data-testid="connection"]') == "live"
                failures = page.inner_text('[data-testid="failures"]')
                ARTIFACTS.mkdir(exist_ok=True)
                shot = ARTIFACTS / "dashboard.png"
                page.screenshot(path=str(shot), full_page=True)
                print(f"dashboard screenshot: {shot}")
            finally:
                browser.close()
    finally:
        stop(serve)
    assert later > first, (first, later)
    assert "2013-01-13" in failures and "INJECTED" in failures
    assert shot.stat().st_size > 10_000


@pytest.fixture
def running_demo(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """The demo job (three reference stages, flights, airport_daily) running against the
    replay API, faults and all, at 20 requests/s, in another process."""
    state = tmp_path / "state.db"
    with ReplayServer(ReplayConfig(rate_limit=20.0)) as server:
        env = {
            "FLIGHTS_API": server.url,
            "FLIGHTS_DB": str(tmp_path / "flights.db"),
            "FLIGHTS_RATE": "20",
        }
        proc = subprocess.Popen(
            [
                *backfill_cmd(),
                "run",
                "backfill.demo.flights:job",
                "--state",
                f"sqlite:///{state}",
                "--progress",
                "none",
            ],
            cwd=tmp_path,
            env=cli_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            yield state, proc
        finally:
            stop(proc)


def finished_in(state: Path) -> int:
    """Partitions the ledger has finished (0 while it is being created)."""
    try:
        with contextlib.closing(sqlite3.connect(f"{state.as_uri()}?mode=ro", uri=True)) as conn:
            (n,) = conn.execute(
                "SELECT count(*) FROM backfill_partitions WHERE status IN ('done', 'empty')"
            ).fetchone()
    except sqlite3.Error:
        return 0
    return int(n)


@pytest.mark.slow
def test_dashboard_of_the_demo_renders_progress_within_5_s_and_follows_it(
    chromium: Path, running_demo: tuple[Path, subprocess.Popen[str]]
) -> None:
    """The demo job, reference stages included: within 5 s of loading, the page shows
    every stage's progress and the API's resource; then the count rises without a
    reload, the calendar draws the year's days, and says the reference stages are not
    on it."""
    from playwright.sync_api import sync_playwright

    state, run = running_demo
    deadline = time.monotonic() + 60
    while finished_in(state) < 4:  # the three reference tables and a day of flights
        assert run.poll() is None, run.stderr.read() if run.stderr else ""
        assert time.monotonic() < deadline, "the demo finished nothing in a minute"
        time.sleep(0.1)
    serve, url = start_dashboard(
        "backfill.demo.flights:job", state, state.parent, "--interval", "0.5"
    )
    flights = '[data-stage="flights"] [data-testid="finished"]'
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(chromium), headless=True, args=["--no-sandbox"]
            )
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1100})
                loading = time.monotonic()
                page.goto(url, timeout=5_000)
                page.wait_for_function(
                    """() => {
                        const cell = document.querySelector(
                            '[data-stage="flights"] [data-testid="finished"]');
                        return cell && parseInt(cell.textContent.replace(/,/g, '')) > 0
                            && document.querySelector('[data-resource="flights_api"]');
                    }""",
                    timeout=5_000,
                )
                rendered = time.monotonic() - loading
                stages = page.eval_on_selector_all(
                    '[data-testid="stages"] tr[data-stage]',
                    "rows => rows.map(r => r.dataset.stage)",
                )
                resource = page.inner_text('[data-resource="flights_api"]')
                first = int(page.inner_text(flights).split("/")[0].replace(",", ""))
                page.evaluate("window.__notReloaded = true")
                page.wait_for_function(
                    f"""() => {{
                        const cell = document.querySelector('{flights}');
                        return cell && parseInt(cell.textContent.replace(/,/g, '')) > {first};
                    }}""",
                    timeout=30_000,
                )
                days = page.eval_on_selector_all(
                    '[data-testid="calendar"] .day[data-status]:not([data-status=""])',
                    "cells => cells.map(c => [c.dataset.status, c.title])",
                )
                left_out = page.inner_text('[data-testid="left-out"]')
                assert page.evaluate("window.__notReloaded") is True
                connection = page.inner_text('[data-testid="connection"]')
                ARTIFACTS.mkdir(exist_ok=True)
                shot = ARTIFACTS / "dashboard-demo.png"
                page.screenshot(path=str(shot), full_page=True)
            finally:
                browser.close()
    finally:
        stop(serve)
    assert rendered < 5.0, rendered
    assert stages == ["airlines", "airports", "planes", "flights", "airport_daily"]
    assert "20/s" in resource and "closed" in resource
    assert connection == "live"
    assert len(days) == 365
    assert {status for status, _ in days} <= {"done", "leased", "pending", "missing"}
    assert any(status == "done" for status, _ in days)
    assert days[0][1].startswith("2013-01-01: ") and "done" in days[0][1]
    assert "airlines, airports, planes" in left_out


@pytest.mark.slow
def test_coverage_report_in_chromium_tells_each_square_on_hover(
    chromium: Path, workdir: Path
) -> None:
    """Hovering a square of the HTML coverage report shows its key, state and reason,
    computed in the page from its calendar: the 13ths failed, the other days done."""
    from playwright.sync_api import sync_playwright

    assert run_cli("run", "job.py", "--progress", "none", cwd=workdir).returncode == 1
    page_file = workdir / "coverage.html"
    made = run_cli("coverage", "job.py", "--format", "html", "-o", str(page_file), cwd=workdir)
    assert made.returncode == 0, made.stderr
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(chromium), headless=True, args=["--no-sandbox"]
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(page_file.as_uri(), timeout=15_000)
            squares = page.locator(".g i[class]")
            titles = []
            for index in (0, 12, 31 + 12, 89):
                squares.nth(index).hover()
                titles.append(squares.nth(index).get_attribute("title"))
        finally:
            browser.close()
    assert titles == [
        "2013-01-01: done",
        "2013-01-13: failed (UNLUCKY: unlucky day 2013-01-13)",
        "2013-02-13: failed (UNLUCKY: unlucky day 2013-02-13)",
        "2013-03-31: done",
    ]


HELD_JOB = """
from backfill import Job, PermanentError, RetryPolicy, daily

job = Job("held", partitions=daily("2013-01-01", "2013-01-10"))
job.resource("api", rate=5)


@job.stage(resource="api", retry=RetryPolicy(attempts=1, base=0.0))
async def fetch(ctx, partition):
    if partition.start.day == 3:
        raise PermanentError("the API refused day 3", category="REFUSED")
    return [{"k": partition.key}]


@job.stage(needs=["fetch"])
async def summary(ctx, partition):
    return [{"k": partition.key}]
"""


def held_state(workdir: Path) -> Path:
    """A state where fetch has work left but finished nothing for ten minutes while a
    live worker reports the api circuit open, summary waits for fetch's failed day,
    another worker died, and its run is still recorded as running."""
    (workdir / "job.py").write_text(HELD_JOB)
    assert run_cli("run", "job.py", "--progress", "none", cwd=workdir).returncode == 1
    state = workdir / ".backfill" / "state.db"
    now = time.time()
    ledger = open_ledger(f"sqlite:///{state}")
    try:
        late = daily("2013-01-08", "2013-01-10")
        ledger.requeue("held", ["fetch"], [Status.DONE], late.selection(start="2013-01-08"))
        resources = {
            "api": {
                "declared": "5/s",
                "adaptive": False,
                "rate": 5.0,
                "circuit": "open",
                "circuit_since": now - 300,
                "requests": 120,
                "rate_limited": 7,
            }
        }
        ledger.register_worker(
            WorkerRecord("w1.example:11:live", "held", "w1.example", 11, now, now, None)
        )
        ledger.heartbeat("w1.example:11:live", now=now, resources=json.dumps(resources))
        gone = now - 1000
        ledger.register_worker(
            WorkerRecord("w2.example:22:gone", "held", "w2.example", 22, gone, gone, None)
        )
        ledger.start_run(RunRecord("gone", "held", gone, "w2.example", 22, "run"))
    finally:
        ledger.close()
    with contextlib.closing(sqlite3.connect(state)) as conn, conn:
        conn.execute("UPDATE backfill_partitions SET finished_at = finished_at - 600")
    return state


@pytest.mark.slow
def test_dashboard_in_chromium_shows_why_nothing_moves(chromium: Path, workdir: Path) -> None:
    """Without hovering: the stalled stage's sentence with the open circuit, the blocked
    partitions with an example, the resource's state, the dead worker and the lost run."""
    from playwright.sync_api import sync_playwright

    state = held_state(workdir)
    serve, url = start_dashboard("job.py", state, workdir)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(chromium), headless=True, args=["--no-sandbox"]
            )
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                page.goto(url, timeout=15_000)
                page.wait_for_selector('[data-testid="stalled"]', timeout=15_000)
                seen = {
                    name: page.inner_text(selector)
                    for name, selector in {
                        "stalled": '[data-note="fetch"] [data-testid="stalled"]',
                        "blocked": '[data-note="summary"] [data-testid="blocked"]',
                        "resource": '[data-resource="api"]',
                        "workers": '[data-testid="workers"]',
                        "runs": '[data-testid="runs"]',
                    }.items()
                }
                visible = page.is_visible('[data-note="fetch"] [data-testid="stalled"]')
                circuit = page.eval_on_selector(
                    '[data-resource="api"] [data-testid="circuit"]',
                    "badge => getComputedStyle(badge).backgroundColor",
                )
                dead = page.eval_on_selector_all("#workers tr.dead", "rows => rows.length")
                lost = page.eval_on_selector_all("#runs tr.lost", "rows => rows.length")
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "dashboard-held.png"), full_page=True)
            finally:
                browser.close()
    finally:
        stop(serve)
    assert visible
    assert re.fullmatch(
        r"stalled 10m\d\ds: api circuit open since \d\d:\d\d:\d\d UTC", seen["stalled"]
    )
    assert seen["blocked"] == "1 blocked: 2013-01-03 waits for failed fetch 2013-01-03"
    assert (
        "5/s" in seen["resource"]
        and "open" in seen["resource"]
        and "api circuit open" in seen["resource"]
    )
    assert circuit == "rgb(198, 40, 40)"  # the failed colour
    assert dead == 1 and "dead" in seen["workers"]
    assert lost == 1 and "lost" in seen["runs"] and "last heartbeat" in seen["runs"]
