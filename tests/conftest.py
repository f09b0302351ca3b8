"""Suite-wide collection order: with ``-n 2`` a worker takes the next test as soon as it
is free, so the longest work goes first and short tests fill in around it, instead of a
minute-long test starting last while the other worker has nothing left to do."""

from __future__ import annotations

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
