"""Partition durations: percentiles in bounded memory, however many partitions."""

from __future__ import annotations

import random

from backfill.events import PartitionFinished
from backfill.ledger import Status
from backfill.runstats import Durations, RunStats


def test_percentiles_are_exact_over_the_first_values() -> None:
    """Up to ``exact`` durations, p50 and p95 are values that were added."""
    durations = Durations(exact=100)
    for i in range(1, 101):
        durations.add(float(i))
    assert durations.summary() == {"count": 100, "p50": 51.0, "p95": 96.0, "max": 100.0}


def test_past_the_exact_values_percentiles_stay_within_a_percent_in_fixed_memory() -> None:
    """200,000 durations from 1 ms to 10 s: p50 and p95 within 1 % of the true ones, the
    max exact, and a histogram of at most about a thousand buckets, no list of values."""
    rng = random.Random(7)
    values = [10 ** rng.uniform(-3, 1) for _ in range(200_000)]
    durations = Durations()
    for value in values:
        durations.add(value)
    ordered = sorted(values)
    summary = durations.summary()
    assert summary["count"] == 200_000
    assert summary["max"] == max(values)
    for q, name in ((0.5, "p50"), (0.95, "p95")):
        true = ordered[int(q * len(ordered))]
        assert abs(summary[name] - true) <= 0.01 * true, (name, summary[name], true)
    assert durations.values is None
    assert len(durations.buckets) <= 1000


def test_the_run_sums_its_stages_exact_and_histogram_alike() -> None:
    """A run's figures are its stages' together: counts, max, slowest, and p50 from a
    stage past its exact values merged with one still exact."""
    stats = RunStats(["a", "b"])
    for i in range(3000):
        stats(PartitionFinished("a", f"a{i}", Status.DONE, 1, 1.0 + i % 3, 1))
    stats(PartitionFinished("b", "b0", Status.FAILED, 0, 60.0, 1))
    run = stats.as_record()["run"]
    assert (run["done"], run["failed"], run["records"]) == (3000, 1, 3000)
    assert run["max"] == 60.0
    assert run["slowest"][0] == ["b0", 60.0]
    assert abs(run["p50"] - 2.0) <= 0.02
    assert sum(run["buckets"]) == 3001
