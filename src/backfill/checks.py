"""Partition checks: assertions on what a stage produced for one partition.

A stage declares them with ``checks=[...]``; they run on the partition's records before
the records are written. Every result is stored with the partition in the ledger, and a
failing check fails the partition with the check's category (nothing of it is written)::

    from backfill import checks

    @job.stage(sink=flights, checks=[
        checks.min_rows(100),                         # INSUFFICIENT_DATA below 100 rows
        checks.max_null_rate("arr_delay", 0.05),      # INCOMPLETE_DATA above 5 % nulls
        checks.check(lambda records, p: len({r["origin"] for r in records}) == 3,
                     name="three_airports", category="MISSING_AIRPORT"),
    ])

A custom check is any ``fn(records, partition)`` returning True/None (pass), False
(fail), or a string (fail, with that message); it may raise to fail as well.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from backfill.errors import ConfigError
from backfill.partitions import Partition

__all__ = [
    "Check",
    "CheckResult",
    "check",
    "max_null_rate",
    "min_rows",
    "results_json",
]

Records = Sequence[Mapping[str, Any]]
CheckFunction = Callable[[Records, Partition], Any]


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The verdict of one check on one partition."""

    name: str
    ok: bool
    category: str
    detail: str = ""
    value: float | None = None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "ok": self.ok}
        if self.value is not None:
            data["value"] = self.value
        if not self.ok:
            data["category"] = self.category
            data["detail"] = self.detail
        return data


@dataclass(frozen=True, slots=True)
class Check:
    """A named check with the category its failure gets. ``table`` limits it to the
    records of one table of a stage that writes several."""

    name: str
    fn: Callable[[Records, Partition], CheckResult]
    category: str
    table: str | None = None

    def run(self, records: Records, partition: Partition) -> CheckResult:
        try:
            return self.fn(records, partition)
        except Exception as exc:
            detail = " ".join(f"{type(exc).__name__}: {exc}".split())
            return CheckResult(self.name, False, self.category, f"the check raised {detail}")


def min_rows(n: int, *, table: str | None = None, category: str = "INSUFFICIENT_DATA") -> Check:
    """At least ``n`` records in the partition."""
    if n < 0:
        raise ConfigError(f"min_rows({n}): give a count of 0 or more")
    name = f"min_rows({n})"

    def run(records: Records, partition: Partition) -> CheckResult:
        count = len(records)
        if count >= n:
            return CheckResult(name, True, category, value=count)
        return CheckResult(name, False, category, f"{count} row(s), at least {n} expected", count)

    return Check(name, run, category, table)


def max_null_rate(
    column: str, rate: float, *, table: str | None = None, category: str = "INCOMPLETE_DATA"
) -> Check:
    """At most ``rate`` (0..1) of the records lack ``column`` or hold None/NaN there."""
    if not 0 <= rate <= 1:
        raise ConfigError(f"max_null_rate({column!r}, {rate}): give a rate between 0 and 1")
    name = f"max_null_rate({column},{rate:g})"

    def run(records: Records, partition: Partition) -> CheckResult:
        if not records:
            return CheckResult(name, True, category, value=0.0)
        nulls = 0
        for record in records:
            value = record.get(column)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                nulls += 1
        observed = nulls / len(records)
        if observed <= rate:
            return CheckResult(name, True, category, value=round(observed, 6))
        return CheckResult(
            name,
            False,
            category,
            f"{observed:.1%} of {len(records)} row(s) have no {column!r}, at most {rate:.1%} "
            "allowed",
            round(observed, 6),
        )

    return Check(name, run, category, table)


def check(
    fn: CheckFunction,
    *,
    name: str | None = None,
    category: str = "PROCESSING_ERROR",
    table: str | None = None,
) -> Check:
    """A custom check: ``fn(records, partition)`` returns True/None to pass, False or a
    message to fail."""
    label: str = name or str(getattr(fn, "__name__", "check"))
    if label == "<lambda>":
        label = "check"

    def run(records: Records, partition: Partition) -> CheckResult:
        verdict = fn(records, partition)
        if verdict is None or verdict is True:
            return CheckResult(label, True, category)
        if isinstance(verdict, str):
            return CheckResult(label, False, category, verdict)
        if verdict is False:
            return CheckResult(label, False, category, "returned False")
        raise TypeError(f"return True, False, None or a message, not {type(verdict).__name__}")

    return Check(label, run, category, table)


def as_check(value: Check | CheckFunction) -> Check:
    """A declared check as is; a plain function wrapped by :func:`check`."""
    if isinstance(value, Check):
        return value
    if callable(value):
        return check(value)
    raise ConfigError(f"checks= takes checks or functions, not {type(value).__name__}")


def results_json(results: Sequence[CheckResult]) -> str | None:
    """The stored form of a partition's check results."""
    if not results:
        return None
    return json.dumps([r.as_dict() for r in results], separators=(",", ":"))
