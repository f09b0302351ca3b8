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

from backfill.freshness import freshness
from backfill.job import Job
from backfill.ledger import Ledger
from backfill.report import Report, build_report
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
        # The same report status and the dashboard render (see backfill.report).
        report = build_report(self.job, self.ledger, failures=False)
        partitions = GaugeMetricFamily(
            "backfill_partitions",
            "Partitions by status (leased: held by a worker; blocked: waiting for a failed "
            "input; missing: not planned yet).",
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
        stalled = GaugeMetricFamily(
            "backfill_stalled",
            "1 when nothing of the stage has finished for long while work is left.",
            labels=["job", "stage"],
        )
        for r in report.stages:
            for status, value in (
                ("pending", r.pending),
                ("leased", r.leased),
                ("blocked", r.blocked),
                ("done", r.done),
                ("empty", r.empty),
                ("failed", r.failed),
                ("missing", r.missing),
            ):
                partitions.add_metric([job, r.name, status], value)
            for outcome, value in (("done", r.done), ("empty", r.empty), ("failed", r.failed)):
                finished.add_metric([job, r.name, outcome], value)
            records.add_metric([job, r.name], r.records)
            stalled.add_metric([job, r.name], 1.0 if r.stalled else 0.0)
        yield partitions
        yield finished
        yield records
        yield stalled
        yield self._freshness()
        yield from self._resources(report)
        yield from self._from_runs(names)
        workers = GaugeMetricFamily(
            "backfill_workers", "Workers alive (heartbeating) on the job.", labels=["job"]
        )
        workers.add_metric([job], sum(1 for w in report.workers if not w.dead))
        yield workers

    def _freshness(self) -> Metric:
        gauge = GaugeMetricFamily(
            "backfill_freshness_seconds",
            "Seconds from the end of the stage's newest done partition to now (absent "
            "before anything is done).",
            labels=["job", "stage"],
        )
        for f in freshness(self.job, self.ledger):
            if f.lag is not None:
                gauge.add_metric([self.job.name, f.stage], f.lag)
        return gauge

    def _resources(self, report: Report) -> Iterator[Metric]:
        """What the live workers say their resources are doing."""
        job = self.job.name
        labels = ["job", "resource"]
        rate = GaugeMetricFamily(
            "backfill_resource_rate", "Requests/s the resource runs at now.", labels=labels
        )
        circuit = GaugeMetricFamily(
            "backfill_resource_circuit_open",
            "1 while the resource's circuit is open.",
            labels=labels,
        )
        holding = GaugeMetricFamily(
            "backfill_resource_holding",
            "1 while the resource holds requests back (circuit, pause, used-up quota).",
            labels=labels,
        )
        for r in report.resources:
            if r.rate is not None:
                rate.add_metric([job, r.name], r.rate)
            circuit.add_metric([job, r.name], 0.0 if r.circuit == "closed" else 1.0)
            holding.add_metric([job, r.name], 1.0 if r.holding(report.at) else 0.0)
        yield rate
        yield circuit
        yield holding

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
