"""The suite's own guard: the tests of an xdist_group never run beside each other, even
when the scheduler spreads them over workers (pytest 9.2 with pytest-xdist 3.8 did)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).resolve().parent.parent / "conftest.py"

GROUPED = """
import json, os, time
import pytest

pytestmark = pytest.mark.xdist_group("heavy")

def _record(name):
    start = time.monotonic()
    time.sleep(0.4)
    span = [name, os.environ.get("PYTEST_XDIST_WORKER"), start, time.monotonic()]
    with open(os.environ["SPANS"], "a") as f:
        f.write(json.dumps(span) + "\\n")

def test_one(): _record("one")
def test_two(): _record("two")
def test_three(): _record("three")
def test_four(): _record("four")
"""


def test_tests_of_one_group_run_one_at_a_time_across_workers(tmp_path: Path) -> None:
    """Four tests of one group, given to two workers one by one (``--dist load``, as if
    grouping were lost): each runs alone, start to end."""
    (tmp_path / "conftest.py").write_text(CONFTEST.read_text())
    (tmp_path / "test_grouped.py").write_text(GROUPED)
    spans = tmp_path / "spans.jsonl"
    env = {**os.environ, "SPANS": str(spans), "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2"),
            *("--dist", "load", "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path)),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    runs = sorted((json.loads(line) for line in spans.read_text().splitlines()), key=lambda r: r[2])
    assert [r[0] for r in sorted(runs)] == ["four", "one", "three", "two"]
    assert len({r[1] for r in runs}) == 2, "both workers took tests of the group"
    for before, after in itertools.pairwise(runs):
        assert after[2] >= before[3], f"{after[0]} started before {before[0]} ended: {runs}"
