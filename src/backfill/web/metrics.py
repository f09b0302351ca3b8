"""``/metrics``: the job's figures in Prometheus' text format, read from the ledger.

Labels are few and bounded: job, stage, resource, status/outcome; never a partition key.
Partition and record counters are the ledger's own counts (live while a run works);
requests, retries, 429s and the partition-duration histogram add up the run metrics of
every finished run (``counts["stats"]`` of each run record).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from backfill.job import Job
from backfill.ledger import Ledger
from backfill.runstats import DURATION_BUCKETS, stage_stats

__all__ = ["LedgerCollector", "render_metrics"]

# Runs read back for the run-derived counters.
_RUN_HISTORY = 100_000


class LedgerCollector(Collector):
    """Collects one job's metrics from a ledger at scrape time."""

    def __init__(self, job: Job, ledger: Ledger) -> None:
        self.job = job
        self.ledger = ledger

    def collect(self) -> Iterator[Metric]:
        job = self.job.name
        names = list(self.job.stages)
        counts = self.ledger.counts(job, names)
        partitions = GaugeMetricFamily(
            "backfill_partitions",
            "Partitions in the ledger by status (missing: not planned yet).",
            labels=["job", "stage", "status"],
        )
        finished = CounterMetricFamily(
            "backfill_partitions_finished",
            "Partitions finished, by outcome, as the ledger records them.",
            labels=["job", "stage", "outcome"],
        )
        records = CounterMetricFamily(
            "backfill_records",
            "Records written, as the ledger records them.",
            labels=["job", "stage"],
        )
        for name in names:
            c = counts[name]
            missing = max(0, len(self.job.stages[name].partitions) - c.total)
            for status, value in (
                ("pending", c.pending),
                ("running", c.running),
                ("done", c.done),
                ("empty", c.empty),
                ("failed", c.failed),
                ("missing", missing),
            ):
                partitions.add_metric([job, name, status], value)
            for outcome, value in (("done", c.done), ("empty", c.empty), ("failed", c.failed)):
                finished.add_metric([job, name, outcome], value)
            records.add_metric([job, name], c.records)
        yield partitions
        yield finished
        yield records
        yield from self._from_runs(names)
        workers = GaugeMetricFamily(
            "backfill_workers", "Workers alive (heartbeating) on the job.", labels=["job"]
        )
        workers.add_metric([job], len(self.ledger.workers(job)))
        yield workers

    def _from_runs(self, names: list[str]) -> Iterator[Metric]:
        job = self.job.name
        labels = ["job", "stage", "resource"]
        requests = CounterMetricFamily(
            "backfill_requests", "HTTP requests made by finished runs.", labels=labels
        )
        rate_limited = CounterMetricFamily(
            "backfill_rate_limited",
            "Requests answered 429 (rate limited) in finished runs.",
            labels=labels,
        )
        retries = CounterMetricFamily(
            "backfill_retries", "Partition retries in finished runs.", labels=labels
        )
        runs = CounterMetricFamily(
            "backfill_runs", "Runs, by final status.", labels=["job", "status"]
        )
        durations = HistogramMetricFamily(
            "backfill_partition_duration_seconds",
            "Time partitions took (finished runs), from claim to outcome.",
            labels=labels,
        )
        totals = {name: {"requests": 0, "rate_limited": 0, "retries": 0} for name in names}
        buckets = {name: [0] * (len(DURATION_BUCKETS) + 1) for name in names}
        sums = dict.fromkeys(names, 0.0)
        by_status: dict[str, int] = {}
        for run in self.ledger.runs(job, limit=_RUN_HISTORY):
            by_status[run.status] = by_status.get(run.status, 0) + 1
            for name, figures in stage_stats(run.counts).items():
                if name not in totals:
                    continue
                for field in totals[name]:
                    totals[name][field] += int(figures.get(field, 0))
                stored = figures.get("buckets") or []
                if len(stored) == len(buckets[name]):
                    buckets[name] = [a + int(b) for a, b in zip(buckets[name], stored, strict=True)]
                sums[name] += float(figures.get("duration_sum", 0.0))
        for name in names:
            values = [job, name, self.job.stages[name].resource or ""]
            requests.add_metric(values, totals[name]["requests"])
            rate_limited.add_metric(values, totals[name]["rate_limited"])
            retries.add_metric(values, totals[name]["retries"])
            cumulative, running = [], 0
            for bound, count in zip((*DURATION_BUCKETS, float("inf")), buckets[name], strict=True):
                running += count
                cumulative.append((_bound(bound), float(running)))
            durations.add_metric(values, cumulative, sums[name])
        for status, count in sorted(by_status.items()):
            runs.add_metric([job, status], count)
        yield requests
        yield rate_limited
        yield retries
        yield durations
        yield runs


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


def render_metrics(job: Job, ledger: Ledger) -> bytes:
    """The exposition text for ``job`` (a fresh registry: nothing global is touched),
    masked like everything else the dashboard serves."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(job, ledger))
    text = generate_latest(registry).decode()
    return job.masker(ledger.url).mask(text).encode()
