"""backfill: fast, resumable, observable historical data backfills.

Declare partitions and stages in a job file; ``backfill run`` does the rest::

    from backfill import Job, daily

    job = Job("results", partitions=daily("2020-01-01", "2020-12-31"))

    @job.stage(concurrency=8)
    async def results(ctx, partition):
        return await ctx.http.get_json(f"https://api.example/results/{partition.date}")
"""

from __future__ import annotations

# Names are imported on first use (PEP 562), not with the package: the ``backfill``
# command must handle Ctrl+C before anything heavy is imported, and it imports this
# package first (so not even ``typing`` here). Type checkers see the imports below.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from backfill import checks
    from backfill.backoff import Backoff
    from backfill.context import Context, RunCache
    from backfill.errors import (
        BackfillError,
        ConfigError,
        EmptyPartition,
        FatalError,
        LedgerError,
        PermanentError,
        SinkError,
        StageError,
        TransientError,
    )
    from backfill.job import Job, Needs, Stage, load_job, needs
    from backfill.ledger import Ledger, Status, open_ledger
    from backfill.partitions import (
        Grain,
        Order,
        Partition,
        PartitionSpec,
        Selection,
        daily,
        hourly,
        monthly,
        reference,
        weekly,
        yearly,
    )
    from backfill.ratelimit import Resource
    from backfill.retry import RetryPolicy
    from backfill.runner import Runner, RunOptions, RunResult
    from backfill.sinks import Mode, OnNewField, Sink, table
    from backfill.sinks.postgres import PostgresTable
    from backfill.sinks.sqlite import SQLiteTable
    from backfill.sources.http import Cursor, HttpClient, LinkHeader, NextUrl, Page, PageNumber

__version__ = "0.1.0"

__all__ = [
    "BackfillError",
    "Backoff",
    "ConfigError",
    "Context",
    "Cursor",
    "EmptyPartition",
    "FatalError",
    "Grain",
    "HttpClient",
    "Job",
    "Ledger",
    "LedgerError",
    "LinkHeader",
    "Mode",
    "Needs",
    "NextUrl",
    "OnNewField",
    "Order",
    "Page",
    "PageNumber",
    "Partition",
    "PartitionSpec",
    "PermanentError",
    "PostgresTable",
    "Resource",
    "RetryPolicy",
    "RunCache",
    "RunOptions",
    "RunResult",
    "Runner",
    "SQLiteTable",
    "Selection",
    "Sink",
    "SinkError",
    "Stage",
    "StageError",
    "Status",
    "TransientError",
    "__version__",
    "checks",
    "daily",
    "hourly",
    "load_job",
    "monthly",
    "needs",
    "open_ledger",
    "reference",
    "table",
    "weekly",
    "yearly",
]


_EXPORTS: dict[str, tuple[str, ...]] = {
    "backfill.backoff": ("Backoff",),
    "backfill.context": ("Context", "RunCache"),
    "backfill.errors": (
        "BackfillError",
        "ConfigError",
        "EmptyPartition",
        "FatalError",
        "LedgerError",
        "PermanentError",
        "SinkError",
        "StageError",
        "TransientError",
    ),
    "backfill.job": ("Job", "Needs", "Stage", "load_job", "needs"),
    "backfill.ledger": ("Ledger", "Status", "open_ledger"),
    "backfill.partitions": (
        "Grain",
        "Order",
        "Partition",
        "PartitionSpec",
        "Selection",
        "daily",
        "hourly",
        "monthly",
        "reference",
        "weekly",
        "yearly",
    ),
    "backfill.ratelimit": ("Resource",),
    "backfill.retry": ("RetryPolicy",),
    "backfill.runner": ("Runner", "RunOptions", "RunResult"),
    "backfill.sinks": ("Mode", "OnNewField", "Sink", "table"),
    "backfill.sinks.sqlite": ("SQLiteTable",),
    # psycopg is imported only by jobs that write to PostgreSQL.
    "backfill.sinks.postgres": ("PostgresTable",),
    "backfill.sources.http": (
        "Cursor",
        "HttpClient",
        "LinkHeader",
        "NextUrl",
        "Page",
        "PageNumber",
    ),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name: str) -> Any:
    import importlib

    if name == "checks":
        return importlib.import_module("backfill.checks")
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'backfill' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
