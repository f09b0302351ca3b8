"""Suite-wide collection order: with ``-n 2`` a worker takes the next test as soon as it
is free, so the longest work goes first and short tests fill in around it, instead of a
minute-long test starting last while the other worker has nothing left to do.

The tests of an ``xdist_group`` (real time, and chromium: see tests/acceptance/
test_browser.py) run one at a time across the suite's workers: ``--dist loadgroup``
gives a group to one worker, and a lock held for each such test keeps them apart
whatever the scheduler does (pytest 9.2 with pytest-xdist 3.8 silently spread them over
every worker: the real-time rate tests ran beside chromium and failed)."""

from __future__ import annotations

import contextlib
import fcntl
import os
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
    """The lock file the tests of ``group`` take in turn (one per machine and user)."""
    return Path(tempfile.gettempdir()) / f"backfill-tests-{os.getuid()}-group-{group}.lock"


# Per group: the lock's descriptor in this process, and how many holders it has (a
# grouped module holds it for its module-scoped fixtures, each of its tests again).
_held: dict[str, tuple[int, int]] = {}


@contextlib.contextmanager
def _group_lock(group: str) -> Iterator[None]:
    """Held while no other process holds it; again in this process at no cost. Opened
    without truncating and never through a symbolic link (the temp directory is
    shared)."""
    if group in _held:
        fd, holders = _held[group]
        _held[group] = (fd, holders + 1)
    else:
        fd = os.open(group_lock_path(group), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        _held[group] = (fd, 1)
    try:
        yield
    finally:
        fd, holders = _held[group]
        if holders > 1:
            _held[group] = (fd, holders - 1)
        else:
            del _held[group]
            os.close(fd)  # (closing it releases the lock)


def _group(node: pytest.Item | pytest.Collector) -> str | None:
    marker = node.get_closest_marker("xdist_group")
    if marker is None:
        return None
    return str(marker.args[0] if marker.args else marker.kwargs.get("name", "default"))


@contextlib.contextmanager
def _held_for(node: pytest.Item | pytest.Collector) -> Iterator[None]:
    """The lock of ``node``'s group held meanwhile, when it has one."""
    group = _group(node)
    if group is None:
        yield
    else:
        with _group_lock(group):
            yield


@pytest.fixture(autouse=True, scope="module")
def _its_group_for_the_module(request: pytest.FixtureRequest) -> Iterator[None]:
    """A module of an ``xdist_group`` (its ``pytestmark``) holds the group's lock from
    its first module-scoped fixture (a site server, chromium's install) to its last."""
    with _held_for(request.node):
        yield


@pytest.fixture(autouse=True)
def _one_of_its_group_at_a_time(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test of an ``xdist_group`` runs while no other test of that group does, in any
    worker (or any other pytest run on this machine by the same user)."""
    with _held_for(request.node):
        yield
