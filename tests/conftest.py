"""Suite-wide collection order: with ``-n 2`` a worker takes the next test as soon as it
is free, so the longest work goes first and short tests fill in around it, instead of a
minute-long test starting last while the other worker has nothing left to do.

The tests of an ``xdist_group`` (real time, and chromium: see tests/acceptance/
test_browser.py) run one at a time across the suite's workers: ``--dist loadgroup``
gives a group to one worker, and a lock held for each such test keeps them apart
whatever the scheduler does (pytest 9.2 with pytest-xdist 3.8 silently spread them over
every worker: the real-time rate tests ran beside chromium and failed)."""

from __future__ import annotations

import fcntl
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


def _first(item: pytest.Item) -> int:
    """0: a group run on one worker, one test after another (the real-time and browser
    tests, minutes together); 1: a test marked slow; 2: the rest."""
    if item.get_closest_marker("xdist_group") is not None:
        return 0
    if item.get_closest_marker("slow") is not None:
        return 1
    return 2


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_first)  # stable: each kind keeps the order it was collected in


def group_lock_path(group: str) -> Path:
    """The lock file the tests of ``group`` take in turn (one per machine)."""
    return Path(tempfile.gettempdir()) / f"backfill-tests-group-{group}.lock"


@pytest.fixture(autouse=True)
def _one_of_its_group_at_a_time(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test of an ``xdist_group`` runs while no other test of that group does, in any
    worker (or any other pytest run on this machine)."""
    marker = request.node.get_closest_marker("xdist_group")
    if marker is None:
        yield
        return
    group = str(marker.args[0] if marker.args else marker.kwargs.get("name", "default"))
    with open(group_lock_path(group), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
