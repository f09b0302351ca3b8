"""Tournaments per second from a site that renders only in a browser, at a polite limit.

    .venv/bin/python bench/browser_bench.py                 # every case (~3 min)
    .venv/bin/python bench/browser_bench.py --cases backfill,gather --last 2016

Each case runs against a fresh local tennis site (``tests/tennis_site.py``, in a process
of its own, stamping every page load it serves) in headless Debian chromium:

- ``backfill``: ``examples/tennis.py`` through ``backfill run`` (its own process): the
  archive read once per year and tour, tournaments discovered, ``--rate`` loads a second
  over ``--pages`` pages; ``backfill-jitter`` the same with ``jitter=(0.3, 1.0)``;
- ``seed``: the script the tennis team started from: one page, one load at a time, a
  random 1-3 s pause after each, the archive loaded again for every tournament to find
  its number (the first ``--seed-tournaments`` tournaments only: it is slow);
- ``gather``: ``asyncio.gather`` over ``--pages`` pages, tournaments shared out, no
  shared limit and no pause.

Columns: tournaments and page loads done; the time the site was in use (first load to
last, plus one interval: the ceiling's own measure); tournaments/s; that rate against
the ceiling (``--rate`` loads a second for the loads a discovering walk needs); the most
loads the site saw in any one second; the peak memory (PSS) of the browser's processes
per page;
and the machine's load average when the case ended. No timing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

import _machine

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from tennis_site import SiteProcess, most_in_window  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CASES = ("backfill", "backfill-jitter", "seed", "gather")


@dataclass
class Result:
    case: str
    tournaments: int
    loads: int
    span: float
    ceiling_rate: float
    busiest_second: int
    rss_per_page: float
    load: float

    @property
    def per_second(self) -> float:
        return self.tournaments / self.span if self.span else 0.0


class RssPeak:
    """The peak memory of the chromium processes under a process, sampled in a thread:
    their proportional set size (PSS), so libraries and memory they share count once,
    not once per process as in the sum of their RSS."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            total = 0
            try:
                children = psutil.Process(self.root).children(recursive=True)
            except psutil.Error:
                continue
            for proc in children:
                try:
                    if "chrom" in proc.name():
                        total += proc.memory_full_info().pss
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total)


def span_of(stamps: list[float], rate: float) -> float:
    return (max(stamps) - min(stamps)) + 1 / rate if stamps else 0.0


def run_backfill(site: SiteProcess, args: argparse.Namespace, jitter: str) -> tuple[int, int]:
    """The example job through the CLI; (tournaments, peak chromium RSS)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("BACKFILL_")},
            "TENNIS_SITE": site.url,
            "TENNIS_DB": f"{tmp}/tennis.db",
            "TENNIS_FIRST": str(args.first),
            "TENNIS_LAST": str(args.last),
            "TENNIS_RATE": str(args.rate),
            "TENNIS_PAGES": str(args.pages),
            "TENNIS_JITTER": jitter,
        }
        command = [sys.executable, "-m", "backfill", "run", str(ROOT / "examples" / "tennis.py")]
        command += ["--state", f"sqlite:///{tmp}/tennis.db", "--progress", "none"]
        proc = subprocess.Popen(command, env=env, cwd=tmp, stdout=subprocess.DEVNULL)
        with RssPeak(proc.pid) as rss:
            if proc.wait() != 0:
                raise RuntimeError(f"backfill run exited {proc.returncode}")
        with sqlite3.connect(f"{tmp}/tennis.db") as conn:
            (done,) = conn.execute("SELECT count(DISTINCT tournament) FROM matches").fetchone()
            rows = set(conn.execute("SELECT tournament, match FROM matches"))
        if rows != site.expected_rows():
            raise RuntimeError("the backfill did not load exactly the site's matches")
        return int(done), rss.peak


async def _archive(page: Any, url: str) -> list[dict[str, Any]]:
    await page.goto(url, wait_until="domcontentloaded")
    await page.wait_for_selector("body[data-ready]", state="attached")
    found: list[dict[str, Any]] = await page.eval_on_selector_all(
        "#tournaments li",
        "items => items.map(i => ({number: +i.dataset.number, pages: +i.dataset.pages}))",
    )
    return found


async def _draw(page: Any, url: str) -> int:
    await page.goto(url, wait_until="domcontentloaded")
    await page.wait_for_selector("body[data-ready]", state="attached")
    count: int = await page.locator("#draw tr").count()
    return count


def archives(site: SiteProcess) -> list[str]:
    return [
        f"{site.url}/archive/{tour}/{year}"
        for year in range(site.first, site.last + 1)
        for tour in ("atp", "wta")
        if not (tour == "wta" and year == site.first)
    ]


async def run_seed(site: SiteProcess, limit: int) -> int:
    """One page, sequential, 1-3 s after each load, the archive reloaded per tournament."""
    from playwright.async_api import async_playwright

    done = 0
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        page = await browser.new_page()
        for archive in archives(site):
            listed = await _archive(page, archive)
            await asyncio.sleep(random.uniform(1, 3))
            for index in range(len(listed)):
                if done >= limit:
                    await browser.close()
                    return done
                # The script found each tournament's number on the archive page again.
                number = (await _archive(page, archive))[index]["number"]
                await asyncio.sleep(random.uniform(1, 3))
                for n in range(1, listed[index]["pages"] + 1):
                    await _draw(page, f"{site.url}/tournament/{number}?page={n}")
                    await asyncio.sleep(random.uniform(1, 3))
                done += 1
        await browser.close()
    return done


async def run_gather(site: SiteProcess, pages: int) -> int:
    """``asyncio.gather`` over ``pages`` pages, no shared limit."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        tabs = [await browser.new_page() for _ in range(pages)]
        urls = archives(site)
        listed: list[list[dict[str, Any]]] = []

        async def read_archives(tab: Any, mine: list[str]) -> None:
            for url in mine:
                listed.append(await _archive(tab, url))

        await asyncio.gather(*(read_archives(t, urls[i::pages]) for i, t in enumerate(tabs)))
        found = [t for group in listed for t in group]

        async def read_draws(tab: Any, mine: list[dict[str, Any]]) -> None:
            for t in mine:
                for n in range(1, t["pages"] + 1):
                    await _draw(tab, f"{site.url}/tournament/{t['number']}?page={n}")

        await asyncio.gather(*(read_draws(t, found[i::pages]) for i, t in enumerate(tabs)))
        await browser.close()
    return len(found)


def run_case(case: str, args: argparse.Namespace) -> Result:
    with SiteProcess(args.first, args.last, slow=0.2) as site:
        peak = 0
        pages = args.pages
        if case.startswith("backfill"):
            jitter = "0.3,1.0" if case == "backfill-jitter" else "0"
            tournaments, peak = run_backfill(site, args, jitter)
        else:
            with RssPeak(os.getpid()) as rss:
                if case == "seed":
                    pages = 1
                    tournaments = asyncio.run(run_seed(site, args.seed_tournaments))
                else:
                    tournaments = asyncio.run(run_gather(site, args.pages))
            peak = rss.peak
        stamps = site.stats()["stamps"]
        # The ceiling: a discovering walk's loads (each archive once) at the rate.
        needed = site.page_loads()
        ceiling = len(site.truth) / (needed / args.rate)
        return Result(
            case,
            tournaments,
            len(stamps),
            span_of(stamps, args.rate),
            ceiling,
            most_in_window(stamps),
            peak / pages / 2**20,
            os.getloadavg()[0],
        )


def table(results: list[Result], rate: float) -> list[str]:
    lines = [
        "| case | tournaments | page loads | site in use (s) | tournaments/s | vs ceiling "
        f"| most loads in 1 s (limit {rate:g}) | peak PSS per page (MB) | load avg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.case} | {r.tournaments} | {r.loads} | {r.span:.1f} | {r.per_second:.3f} "
            f"| {r.per_second / r.ceiling_rate:.2f} | {r.busiest_second} "
            f"| {r.rss_per_page:.0f} | {r.load:.2f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--rate", type=float, default=4.0)
    parser.add_argument("--pages", type=int, default=4)
    parser.add_argument("--first", type=int, default=2015)
    parser.add_argument("--last", type=int, default=2018)
    parser.add_argument("--seed-tournaments", type=int, default=6)
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"no browser at {CHROMIUM}: apt-get install chromium", file=sys.stderr)
        return 2
    results = []
    for case in args.cases.split(","):
        if case not in CASES:
            print(f"unknown case {case!r}; use some of {', '.join(CASES)}", file=sys.stderr)
            return 2
        results.append(run_case(case, args))
        print(f"{case}: done", file=sys.stderr)
    walk = SiteProcess(args.first, args.last)
    print(
        f"\n{len(walk.truth)} tournaments, {walk.page_loads()} page loads for a discovering "
        f"walk; ceiling {len(walk.truth) / (walk.page_loads() / args.rate):.3f} tournaments/s "
        f"at {args.rate:g} loads/s\n"
    )
    print("\n".join([*table(results, args.rate), "", "Machine:", *_machine.facts()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
