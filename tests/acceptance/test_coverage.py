"""`backfill coverage` and `run --missing-only` on a pipeline with injected failures,
empty days and thin days, through the real command line."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from conftest import run_cli

JOB = """
import os
from pathlib import Path

from backfill import EmptyPartition, Job, PermanentError, RetryPolicy, daily, needs

HERE = Path(__file__).parent
FIXED = (HERE / "fixed").exists()
job = Job("cov", partitions=daily("2021-12-01", "2022-01-31", tour=["atp", "wta"]))


def note(stage, key):
    with (HERE / "executions.log").open("a") as log:
        log.write(f"{stage} {key}\\n")


@job.stage(reference=True)
def players(ctx, p):
    note("players", p.key)
    return [{"id": 1}]


@job.stage(needs=["players"], retry=RetryPolicy(attempts=1))
def results(ctx, p):
    note("results", p.key)
    day = str(p.start)
    if p["tour"] == "atp" and "2021-12-21" <= day <= "2021-12-31" and not FIXED:
        raise PermanentError("read timed out", category="timeout")
    if p.start.day == 25:
        raise EmptyPartition("no games on christmas day")
    n = 2 if day == "2022-01-10" else 40
    return [{"id": i} for i in range(n)]


@job.stage(needs=[needs("results", lookback=6)])
def rolling(ctx, p):
    note("rolling", p.key)
    return [{"x": 1}]
"""


@pytest.fixture
def pipeline(tmp_path: Path) -> Path:
    (tmp_path / "job.py").write_text(JOB)
    first = run_cli("run", "job.py", "--progress", "none", cwd=tmp_path)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "11 partition(s) failed" in first.stdout and "17 wait for them" in first.stdout
    (tmp_path / "executions.log").unlink()
    return tmp_path


def executed(workdir: Path) -> Counter[str]:
    log = workdir / "executions.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return Counter(line.split(" ", 1)[0] for line in lines)


def test_the_terminal_matrix_tells_each_class_apart(pipeline: Path) -> None:
    """Counts per stage and one glyph per day: failed, empty, thin, missing, done."""
    result = run_cli("coverage", "job.py", cwd=pipeline)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    counts = {}
    for line in text.splitlines():
        if line.startswith("│"):
            name, *values = (part.strip() for part in line.strip().strip("│").split("│"))
            counts[name] = [0 if v == "·" else int(v.replace(",", "")) for v in values]
    # done, empty, thin, failed, stale, running, blocked, missing
    assert counts["players"] == [1, 0, 0, 0, 0, 0, 0, 0]
    assert counts["results"] == [108, 3, 2, 11, 0, 0, 0, 0]
    assert counts["rolling"] == [107, 0, 0, 0, 0, 0, 17, 0]
    rows = {m[1]: m[2] for m in re.finditer(r"^(\w+(?: \w+)?\s+\d{4}-\d{2})\s+(\S+)", text, re.M)}
    assert rows["results atp  2021-12"] == "■" * 20 + "✗" * 11
    assert rows["results wta  2021-12"] == "■" * 24 + "□" + "■" * 6
    assert rows["results atp  2022-01"] == "■" * 9 + "▄" + "■" * 14 + "□" + "■" * 6
    assert rows["rolling atp  2021-12"] == "■" * 20 + "!" * 11
    assert rows["rolling atp  2022-01"] == "!" * 6 + "■" * 25


def test_gaps_are_compressed_ranges_with_their_reason(pipeline: Path) -> None:
    result = run_cli("coverage", "job.py", "--gaps", cwd=pipeline)
    assert result.returncode == 0, result.stderr
    lines = [line.strip() for line in result.stdout.splitlines() if line.startswith("  ")]
    assert lines == [
        "results atp 2021-12-21..2021-12-31 failed: timeout: read timed out (11)",
        "results atp 2022-01-10 thin: 2 records, neighbours have ~40 (1)",
        "results wta 2022-01-10 thin: 2 records, neighbours have ~40 (1)",
        "rolling atp 2021-12-21..2022-01-06 blocked: waits for failed results (17)",
    ]
    gated = run_cli("coverage", "job.py", "--gaps", "--fail-on-gaps", cwd=pipeline)
    assert gated.returncode == 1


def test_json_and_html_reports_carry_the_same_classes(pipeline: Path) -> None:
    as_json = run_cli("coverage", "job.py", "--format", "json", cwd=pipeline)
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    counts = {s["stage"]: s["counts"] for s in report["stages"]}
    assert counts["results"] == {
        "done": 108, "empty": 3, "thin": 2, "failed": 11, "stale": 0, "running": 0,
        "blocked": 0, "missing": 0,
    }  # fmt: skip
    assert (counts["rolling"]["blocked"], counts["rolling"]["missing"]) == (17, 0)
    assert report["bucket"] == "day"
    days = next(s for s in report["stages"] if s["stage"] == "results")["buckets"]
    assert days["2021-12-25"] == {"failed": 1, "empty": 1}
    assert days["2022-01-25"] == {"empty": 2}
    assert days["2021-12-21"] == {"failed": 1, "done": 1}
    states = {(g["stage"], g["state"], g["first"], g["last"], g["count"]) for g in report["gaps"]}
    assert ("results", "failed", "2021-12-21", "2021-12-31", 11) in states
    assert ("rolling", "blocked", "2021-12-21", "2022-01-06", 17) in states

    page = pipeline / "coverage.html"
    as_html = run_cli("coverage", "job.py", "--format", "html", "-o", str(page), cwd=pipeline)
    assert as_html.returncode == 0, as_html.stderr
    html = page.read_text()
    by_state = Counter(re.findall(r"<i class=(\w+)>", html))
    # One square per day per (stage, tour): 62 days x 2 tours x 2 partitioned stages.
    assert sum(by_state.values()) == 248
    assert by_state == Counter(done=215, empty=3, thin=2, failed=11, blocked=17)
    assert "results atp 2021-12-21..2021-12-31 failed" in html


def test_missing_only_fills_exactly_the_gaps(pipeline: Path) -> None:
    """After the cause is fixed, --missing-only runs the 11 failed partitions and the 17
    that waited for them, and nothing else; then coverage has no gaps left."""
    (pipeline / "fixed").write_text("")
    result = run_cli("run", "job.py", "--missing-only", "--progress", "none", cwd=pipeline)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "filling 28 gap(s): 17 blocked, 11 failed" in result.stdout
    assert executed(pipeline) == Counter(results=11, rolling=17)
    after = run_cli("coverage", "job.py", "--fail-on-gaps", "--format", "json", cwd=pipeline)
    assert after.returncode == 0
    report = json.loads(after.stdout)
    assert all(
        s["counts"]["missing"]
        == s["counts"]["blocked"]
        == s["counts"]["failed"]
        == s["counts"]["stale"]
        == 0
        for s in report["stages"]
    )
    again = run_cli("run", "job.py", "--missing-only", "--progress", "none", cwd=pipeline)
    assert again.returncode == 0 and "nothing to fill" in again.stdout


def test_a_redone_upstream_partition_makes_its_window_stale_and_reruns_it(
    pipeline: Path,
) -> None:
    """Redo one day of results: the 7 rolling days whose windows hold it show as stale,
    and the next run redoes exactly those 7."""
    (pipeline / "fixed").write_text("")
    assert run_cli("run", "job.py", "--missing-only", "--progress", "none", cwd=pipeline)
    (pipeline / "executions.log").unlink()
    reset = run_cli(
        "reset", "job.py", "--stage", "results", "-p", "2022-01-05/tour=atp", "--yes",
        cwd=pipeline,
    )  # fmt: skip
    assert reset.returncode == 0, reset.stdout + reset.stderr
    redo = run_cli("run", "job.py", "--stage", "results", "--progress", "none", cwd=pipeline)
    assert redo.returncode == 0, redo.stdout + redo.stderr
    assert executed(pipeline) == Counter(results=1)
    gaps = run_cli("coverage", "job.py", "--gaps", "--thin", "0", cwd=pipeline)
    lines = [line.strip() for line in gaps.stdout.splitlines() if line.startswith("  ")]
    assert lines == ["rolling atp 2022-01-05..2022-01-11 stale: an input was redone since (7)"]
    rerun = run_cli("run", "job.py", "--start-from", "results", "--progress", "none", cwd=pipeline)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert executed(pipeline) == Counter(results=1, rolling=7)
    clean = run_cli("coverage", "job.py", "--gaps", "--thin", "0", cwd=pipeline)
    assert "gaps: none" in clean.stdout


def test_bad_coverage_options_are_one_line_errors(pipeline: Path) -> None:
    for args, needle in (
        (["--by", "week"], "unknown --by 'week'"),
        (["--format", "xml"], "unknown --format 'xml'"),
        (["--stage", "nope"], "unknown stage 'nope'"),
        (["--start-from", "nope"], "unknown stage 'nope' in --start-from"),
    ):
        result = run_cli("coverage", "job.py", *args, cwd=pipeline)
        assert result.returncode == 2, args
        assert needle in result.stderr and len(result.stderr.strip().splitlines()) == 1, (
            result.stderr
        )
