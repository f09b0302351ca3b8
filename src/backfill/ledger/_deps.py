"""SQL for stage dependencies, once for every dialect (which spells its dates and JSON).

Each dependency becomes a subquery over the upstream stage's rows (alias ``a``),
correlated with the downstream row (alias ``p``). Upstream rows are found through the
``(stage_id, window_start)`` index: a window overlapping ``[lo, p.window_end]`` starts
no earlier than ``lo`` minus the longest upstream window, which bounds the scan.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from backfill.ledger.models import Dependency

if TYPE_CHECKING:
    from backfill.ledger.dialect import Dialect

FINISHED = "('done', 'empty')"
# Upstream rows a downstream partition waits for.
UNFINISHED = f"a.status NOT IN {FINISHED}"
# Upstream rows that make a finished downstream partition stale: being redone, or
# redone after it.
NEWER = (
    f"(a.status IN ('pending', 'running') OR (a.status IN {FINISHED} "
    "AND a.finished_at > p.finished_at))"
)
FAILED = "a.status = 'failed'"
STALE_MESSAGE = "an upstream partition was redone; run again"


def inputs(dep: Dependency, index: int, dialect: Dialect, condition: str) -> tuple[str, str]:
    """``FROM ... WHERE ...`` over ``dep``'s upstream rows of partition ``p`` that meet
    ``condition``, and the name of the parameter that carries the upstream stage id."""
    name = f"dep_{index}"
    where = [f"a.stage_id = {dialect.param(name)}", condition]
    if not dep.whole:
        low = dialect.window_low(dep)
        where += [
            f"a.window_start >= {dialect.days_before(low, dep.span_days)}",
            "a.window_start <= p.window_end",
            f"a.window_end >= {low}",
        ]
        where += [f"{dialect.dim('a', d)} = {dialect.dim('p', d)}" for d in dep.dims]
    return "FROM backfill_partitions AS a WHERE " + " AND ".join(where), name


def ready_filter(
    needs: Sequence[Dependency], stage_ids: Sequence[int | None], dialect: Dialect
) -> tuple[str, dict[str, Any]]:
    """``AND NOT EXISTS (...)`` per dependency: the partition's inputs are all finished.

    A dependency whose stage was never planned (id None) has nothing to wait for.
    """
    sql: list[str] = []
    params: dict[str, Any] = {}
    for i, (dep, stage_id) in enumerate(zip(needs, stage_ids, strict=True)):
        if stage_id is None:
            continue
        body, name = inputs(dep, i, dialect, UNFINISHED)
        sql.append(f" AND NOT EXISTS (SELECT 1 {body})")
        params[name] = stage_id
    return "".join(sql), params


def any_input(
    needs: Sequence[Dependency],
    stage_ids: Sequence[int | None],
    dialect: Dialect,
    condition: str,
) -> tuple[str, dict[str, Any]]:
    """``(EXISTS (...) OR ...)``: some input of the partition meets ``condition``."""
    sql: list[str] = []
    params: dict[str, Any] = {}
    for i, (dep, stage_id) in enumerate(zip(needs, stage_ids, strict=True)):
        if stage_id is None:
            continue
        body, name = inputs(dep, i, dialect, condition)
        sql.append(f"EXISTS (SELECT 1 {body})")
        params[name] = stage_id
    return ("(" + " OR ".join(sql) + ")" if sql else "FALSE"), params


def first_input(
    needs: Sequence[Dependency],
    stage_ids: Sequence[int | None],
    dialect: Dialect,
    condition: str,
) -> tuple[str, dict[str, Any]]:
    """An expression naming one input that meets ``condition`` as ``STAGE KEY`` (or NULL)."""
    parts: list[str] = []
    params: dict[str, Any] = {}
    for i, (dep, stage_id) in enumerate(zip(needs, stage_ids, strict=True)):
        if stage_id is None:
            continue
        body, name = inputs(dep, i, dialect, condition)
        label = dep.stage.replace("'", "''")
        key = f"'{label} ' || a.key"
        parts.append(f"(SELECT {key} {body} ORDER BY a.window_start LIMIT 1)")
        params[name] = stage_id
    if not parts:
        return "NULL", params
    return (f"coalesce({', '.join(parts)})" if len(parts) > 1 else parts[0]), params


def inputs_query(
    template: str,
    where: str,
    needs: Sequence[Dependency],
    stage_ids: Sequence[int | None],
    dialect: Dialect,
    condition: str,
) -> tuple[str, dict[str, Any]]:
    """``template`` with its selection ``{where}`` and its ``{inputs}`` (some input meets
    ``condition``) or ``{first}`` (the first such input) filled in, and their parameters."""
    if "{first}" in template:
        expr, params = first_input(needs, stage_ids, dialect, condition)
        return template.format(where=where, first=expr), params
    expr, params = any_input(needs, stage_ids, dialect, condition)
    return template.format(where=where, inputs=expr), params
