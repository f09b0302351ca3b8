"""A stage's records on their way to its tables: routed per table, and checked."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from backfill.checks import CheckResult, results_json
from backfill.errors import ConfigError
from backfill.job import Stage
from backfill.ledger import Outcome, Status
from backfill.partitions import Partition
from backfill.sinks import Mode, Record, to_mappings

__all__ = ["check", "needs_write", "rows_for", "sink_mode", "tables_of"]


def tables_of(stage: Stage, result: Any) -> dict[str, list[Record]]:
    """What a stage function returned, as records per table."""
    if stage.multi_table:
        if result is None:
            return {}
        if not isinstance(result, Mapping):
            raise ConfigError(
                f"stage {stage.name} writes several tables; return {{table name: records}}"
                f", not a {type(result).__name__}"
            )
        tables: dict[str, list[Record]] = {}
        for name, items in result.items():
            tables.update(rows_for(stage, to_mappings(items), name))
        return tables
    if result is None:
        return rows_for(stage, [], None)
    if isinstance(result, dict) or not isinstance(result, Iterable):
        result = [result]
    return rows_for(stage, to_mappings(result), None)


def rows_for(stage: Stage, records: list[Record], table: str | None) -> dict[str, list[Record]]:
    """Records keyed by the table they go to (a stage without a sink: key "")."""
    sinks = stage.sinks
    if table is None:
        if stage.multi_table:
            raise ConfigError(
                f"stage {stage.name} writes several tables; name one: ctx.write(records, "
                f"table=...) (its tables: {', '.join(s.name for s in sinks)})"
            )
        return {sinks[0].name if sinks else "": records}
    if all(s.name != table for s in sinks):
        known = ", ".join(s.name for s in sinks) or "none"
        raise ConfigError(
            f"stage {stage.name} returned rows for table {table!r}, which it does not "
            f"declare (its tables: {known})"
        )
    return {table: records}


def sink_mode(sink: Any) -> Mode:
    """A sink's write mode (custom sinks without a spec are treated as upserts)."""
    spec = getattr(sink, "spec", None)
    return spec.mode if spec is not None else Mode.UPSERT


def needs_write(stage: Stage, rows: Mapping[str, list[Record]]) -> bool:
    """Whether a finished partition has anything to write."""
    # Replace-partition and append write even no rows: the partition's old ones go.
    return bool(stage.sinks) and (
        any(rows.values()) or any(sink_mode(s) is not Mode.UPSERT for s in stage.sinks)
    )


def check(
    stage: Stage,
    partition: Partition,
    rows: Mapping[str, list[Record]],
    outcome: Outcome,
    *,
    mask: Callable[[str], str],
    clean: Callable[[str], str],
) -> Outcome:
    """Run the stage's checks on the partition's records; the first failing one fails
    the partition with its category (and nothing of it is written)."""
    results: list[CheckResult] = []
    for spec in stage.checks:
        if spec.table is not None:
            records: list[Record] = rows.get(spec.table, [])
        elif len(rows) == 1:
            records = next(iter(rows.values()))
        else:
            records = [r for table_rows in rows.values() for r in table_rows]
        result = spec.run(records, partition)
        results.append(dataclasses.replace(result, detail=mask(result.detail)))
    stored = results_json(results)
    failed = next((r for r in results if not r.ok), None)
    if failed is None:
        return dataclasses.replace(outcome, checks=stored)
    return dataclasses.replace(
        outcome,
        status=Status.FAILED,
        records=0,
        error_category=failed.category,
        error_message=clean(f"check {failed.name} failed: {failed.detail}"),
        checks=stored,
    )
