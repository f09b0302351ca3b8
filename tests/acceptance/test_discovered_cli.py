"""Partitions found by a discovering stage, chosen from the command line: `run
--missing-only` runs what an archive page it reads finds in the same run, and
`--partition` takes an archive page's key (with what it finds) or a found partition's
key, whichever stage comes first."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from conftest import run_cli

JOB = """
import json
from pathlib import Path

from backfill import Discover, Job, RetryPolicy, discovered, yearly

HERE = Path(__file__).parent
ARCHIVE = {
    "1990/tour=atp": ["339", "520"],
    "1990/tour=wta": ["339"],
    "1991/tour=atp": ["339", "580"],
    "1991/tour=wta": ["700"],
}

job = Job("tennis", partitions=yearly("1990-01-01", "1991-12-31", tour=["atp", "wta"]))


def called(what):
    with open(HERE / "calls.txt", "a") as calls:
        calls.write(what + "\\n")


@job.stage(retry=RetryPolicy(attempts=1))
async def tournaments(ctx, partition):
    called("archive " + partition.key)
    if partition["tour"] == "wta" and (HERE / "wta-down").exists():
        raise RuntimeError("the WTA archive is down")
    for number in ARCHIVE[partition.key]:
        yield Discover(number, {"number": int(number)})


@job.stage(partitions=discovered("tournaments", name="t"))
async def results(ctx, partition):
    called(partition.key)
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "job.py").write_text(JOB)
    return tmp_path


def calls(site: Path) -> Counter[str]:
    path = site / "calls.txt"
    found = Counter(path.read_text().split("\n")) if path.exists() else Counter()
    found.pop("", None)
    path.unlink(missing_ok=True)
    return found


def test_missing_only_runs_what_an_unread_archive_page_finds_in_the_same_run(
    site: Path,
) -> None:
    """Two archive pages failed, so their tournaments were never found: one
    --missing-only run reads them and runs each tournament they list; then no gap is
    left and a second --missing-only has nothing to fill."""
    (site / "wta-down").write_text("")
    first = run_cli("run", "job.py", "--progress", "none", cwd=site)
    assert first.returncode == 1, first.stdout + first.stderr
    assert sum(1 for c in calls(site) if "/t=" in c) == 4
    (site / "wta-down").unlink()
    fill = run_cli("run", "job.py", "--missing-only", "--progress", "none", cwd=site)
    assert fill.returncode == 0, fill.stdout + fill.stderr
    assert calls(site) == Counter(
        {"archive 1990/tour=wta": 1, "archive 1991/tour=wta": 1, "1990/tour=wta/t=339": 1,
         "1991/tour=wta/t=700": 1}
    )  # fmt: skip
    gaps = run_cli("coverage", "job.py", "--fail-on-gaps", cwd=site)
    assert gaps.returncode == 0, gaps.stdout + gaps.stderr
    again = run_cli("run", "job.py", "--missing-only", "--progress", "none", cwd=site)
    assert again.returncode == 0 and "nothing to fill" in again.stdout
    assert calls(site) == Counter()


def test_partition_takes_an_archive_pages_key_or_a_found_partitions_key(site: Path) -> None:
    """--partition of an archive page runs it and what it finds, nothing else; a found
    partition's key is taken with both stages selected (the discovering one first), and
    a key of neither shape is one sentence naming both, exit 2. A reset found partition
    is kept as pending (only its archive page could plan it again) and runs again."""
    one = run_cli("run", "job.py", "--partition", "1991/tour=atp", "--progress", "none", cwd=site)
    assert one.returncode == 0, one.stdout + one.stderr
    assert calls(site) == Counter(
        {"archive 1991/tour=atp": 1, "1991/tour=atp/t=339": 1, "1991/tour=atp/t=580": 1}
    )
    # Found ones are on record now: run one again from its own key, after a reset.
    reset = run_cli(
        "reset", "job.py", "--stage", "results", "--partition", "1991/tour=atp/t=580", "--yes",
        cwd=site,
    )  # fmt: skip
    assert reset.returncode == 0, reset.stdout + reset.stderr
    found = run_cli(
        "run", "job.py", "--partition", "1991/tour=atp/t=580", "--progress", "none", cwd=site
    )
    assert found.returncode == 0, found.stdout + found.stderr
    assert calls(site) == Counter({"1991/tour=atp/t=580": 1})
    bad = run_cli("run", "job.py", "--partition", "1991/t=580", "--progress", "none", cwd=site)
    assert bad.returncode == 2
    message = bad.stderr.strip()
    assert "\n" not in message
    assert message.endswith("look like '1990/tour=atp' or '1990/tour=atp/t=...'")
