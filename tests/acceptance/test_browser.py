"""Browser sources end to end: ``examples/tennis.py`` through the real CLI, in headless
Debian chromium, against the local tennis site (in a process of its own, which stamps
every page load it serves).

Each test launches chromium and runs for seconds: they are few, and their timeouts only
bound a hang; what they assert is counted, at the site or in the database.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from browser_support import ensure_chromium
from conftest import backfill_cmd, cli_env, run_cli
from tennis_site import SiteProcess, most_in_window

# Chromium takes every core it can get: its tests and the tests that measure a rate in
# real time share one xdist group, so they never run beside each other (pyproject's
# --dist loadgroup); a starved client cannot send at a limit, whatever the engine does.
pytestmark = pytest.mark.xdist_group("cpu_heavy")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "tennis.py"
FIRST, LAST = 2015, 2016


@pytest.fixture(scope="module")
def chromium() -> Path:
    return ensure_chromium()


def settings(site: SiteProcess, workdir: Path, **extra: str) -> dict[str, str]:
    return {
        "TENNIS_SITE": site.url,
        "TENNIS_DB": str(workdir / "tennis.db"),
        "TENNIS_FIRST": str(FIRST),
        "TENNIS_LAST": str(LAST),
        "TENNIS_RATE": "6",
        "TENNIS_JITTER": "0.05,0.2",
        **extra,
    }


def matches(workdir: Path) -> list[tuple[int, int]]:
    with sqlite3.connect(workdir / "tennis.db") as conn:
        return [tuple(r) for r in conn.execute("SELECT tournament, match FROM matches")]


def run(site: SiteProcess, workdir: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "run",
        str(EXAMPLE),
        "--state",
        f"sqlite:///{workdir / 'tennis.db'}",
        "--progress",
        "plain",
        cwd=workdir,
        env=settings(site, workdir, **extra),
        timeout=300,
    )


def start(site: SiteProcess, workdir: Path, progress: str, **extra: str) -> subprocess.Popen[str]:
    """The example run in the background, in a session of its own, output captured."""
    state = f"sqlite:///{workdir / 'tennis.db'}"
    return subprocess.Popen(
        [*backfill_cmd(), "run", str(EXAMPLE), "--state", state, "--progress", progress],
        cwd=workdir,
        env=cli_env(settings(site, workdir, **extra)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@pytest.fixture
def site() -> Iterator[SiteProcess]:
    with SiteProcess(FIRST, LAST, slow=0.2) as running:
        yield running


def test_the_example_loads_every_match_once_within_the_rate_and_a_rerun_adds_nothing(
    chromium: Path, site: SiteProcess, tmp_path: Path
) -> None:
    """Archive -> tournaments -> results: every match of the site exactly once, each page
    loaded once, never more loads in a second at the site than declared, no WTA archive
    before its first year; a second run loads nothing and adds nothing."""
    first = run(site, tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    rows = matches(tmp_path)
    assert len(rows) == len(set(rows))
    assert set(rows) == site.expected_rows()
    stats = site.stats()
    assert len(stats["stamps"]) == site.page_loads()
    assert most_in_window(stats["stamps"]) <= 6
    assert f"/archive/wta/{FIRST}" not in stats["loads"]
    assert all(n == 1 for n in stats["loads"].values())
    # Images and fonts are not loaded.
    assert not any(path in stats["assets"] for path in ("/logo.png", "/font.woff2"))
    (log,) = (tmp_path / "logs").glob("*.jsonl")
    assert log.read_text().count('"partitions discovered"') == len(
        {(t.tour, t.year) for t in site.truth}
    )

    again = run(site, tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(site.stats()["stamps"]) == site.page_loads()
    assert sorted(matches(tmp_path)) == sorted(rows)
    status = run_cli(
        "status",
        str(EXAMPLE),
        "--state",
        f"sqlite:///{tmp_path / 'tennis.db'}",
        cwd=tmp_path,
        env=settings(site, tmp_path),
    )
    assert status.returncode == 0, status.stderr
    assert "results" in status.stdout


def test_kill_9_mid_run_then_resume_leaves_every_match_exactly_once(
    chromium: Path, site: SiteProcess, tmp_path: Path
) -> None:
    """A run killed with SIGKILL part way, then run again, ends with exactly the site's
    matches, none twice."""
    proc = start(site, tmp_path, "none", TENNIS_RATE="4")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(site.stats()["stamps"]) < 12:
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be killed"
        # The whole session: the CLI, Playwright's driver and chromium die at once.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    partial = matches(tmp_path) if (tmp_path / "tennis.db").exists() else []
    assert len(set(partial)) < len(site.expected_rows())
    # A lease held by the killed run expires before the next run takes its partitions.
    resumed = run(site, tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    rows = matches(tmp_path)
    assert len(rows) == len(set(rows))
    assert set(rows) == site.expected_rows()


def test_a_block_page_opens_the_circuit_and_the_run_reports_it(
    chromium: Path, site: SiteProcess, tmp_path: Path
) -> None:
    """Every load blocked for a while: the loads fail as transient, the resource's
    circuit opens and the run says so; once the site lets us in again, the run ends
    with every match."""
    site.control(block=1.0)
    proc = start(site, tmp_path, "plain", TENNIS_RATE="8", TENNIS_JITTER="0")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and site.stats()["blocked"] < 12:
            time.sleep(0.2)
        assert site.stats()["blocked"] >= 12
        site.control(block=0.0)
        output, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    assert proc.returncode == 0, output
    assert "circuit open" in output
    assert set(matches(tmp_path)) == site.expected_rows()
    saved = list((tmp_path / "logs").rglob("*-pages/*.html"))
    assert saved, "the blocked pages were not saved beside the run log"
    assert "Just a moment" in saved[0].read_text()


def chromium_browsers(root: int) -> list[psutil.Process]:
    """The browser processes (not their renderers) under process ``root``."""
    found = []
    for proc in psutil.Process(root).children(recursive=True):
        try:
            cmdline = proc.cmdline()
        except psutil.Error:
            continue
        if cmdline and "chromium" in cmdline[0] and not any("--type=" in a for a in cmdline):
            found.append(proc)
    return found


def test_a_killed_browser_is_replaced_and_nothing_is_lost(
    chromium: Path, site: SiteProcess, tmp_path: Path
) -> None:
    """The browser process killed mid-run: a new one is launched, the partitions it was
    loading are retried, and the run ends with every match once."""
    proc = start(site, tmp_path, "plain", TENNIS_RATE="4")
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(site.stats()["stamps"]) < 8:
            time.sleep(0.2)
        browsers = chromium_browsers(proc.pid)
        assert len(browsers) == 1, browsers
        browsers[0].kill()
        output, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
    assert proc.returncode == 0, output
    rows = matches(tmp_path)
    assert len(rows) == len(set(rows))
    assert set(rows) == site.expected_rows()
    log = next((tmp_path / "logs").rglob("*.jsonl")).read_text()
    assert "launching it again" in log


if sys.platform != "linux":  # pragma: no cover
    pytestmark = [pytestmark, pytest.mark.skip("Debian's chromium: Linux only")]


BROWSER_JOB = """
import os
from backfill import Job, yearly

job = Job("pages", partitions=yearly("2015-01-01", "2015-12-31"))
job.browser("site", rate="2/s", pages=1, executable=os.environ.get("CHROMIUM_AT"))

@job.stage(resource="site")
async def read(ctx, partition):
    async with ctx.browser.page() as page:
        await page.goto("http://127.0.0.1:9/")
    return []
"""


def browser_job_run(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    (tmp_path / "job.py").write_text(BROWSER_JOB)
    return run_cli("run", "job.py", "--progress", "none", cwd=tmp_path, env=env, timeout=120)


def test_no_chromium_is_one_sentence_naming_the_package(tmp_path: Path) -> None:
    """A browser job with no chromium where it looks: exit 2, apt-get install chromium."""
    done = browser_job_run(tmp_path, {"CHROMIUM_AT": str(tmp_path / "no-chromium")})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "apt-get install chromium" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_no_playwright_is_one_sentence_naming_the_extra(tmp_path: Path) -> None:
    """Without Playwright installed, a browser job says to install backfill[browser]."""
    blocked = tmp_path / "blocked"
    (blocked / "playwright").mkdir(parents=True)
    (blocked / "playwright" / "__init__.py").write_text("raise ImportError('no playwright')\n")
    done = browser_job_run(tmp_path, {"PYTHONPATH": str(blocked)})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "pip install 'backfill[browser]'" in done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
