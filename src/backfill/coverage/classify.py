"""Classifying a job's declared partitions against the ledger: one state and reason each,
and ``thin`` for done partitions with far fewer records than their neighbours."""

from __future__ import annotations

import dataclasses
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence

from backfill.coverage.model import Coverage, PartitionState, State
from backfill.job import Job, Stage
from backfill.ledger import CoverageRow, Ledger, Status
from backfill.partitions import DiscoveredSpec, Grain, Order, Partition, Selection
from backfill.secrets import Masker

NEIGHBOURS = 7
DEFAULT_THIN = 0.25


def _counted(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def collect(
    job: Job,
    ledger: Ledger,
    stages: Sequence[Stage],
    selection: Selection | None = None,
    *,
    thin: float = DEFAULT_THIN,
) -> Coverage:
    """Every partition the selected stages declare, classified against the ledger (its
    messages masked: the report is shown and saved)."""
    coverage = Coverage(job.name, list(stages))
    shown = job.masker(ledger.url)
    for stage in stages:
        sel = None if stage.reference else selection
        recorded = {
            row.key: _masked(row, shown) for row in ledger.coverage_rows(job.name, stage.name, sel)
        }
        needs = job.dependencies(stage)
        stale = ledger.stale_keys(job.name, stage.name, needs, sel) if needs else set()
        blocked = ledger.blocked_keys(job.name, stage.name, needs, sel) if needs else {}
        if stage.discovered_from is not None:
            states = _discovered(job, ledger, stage, sel, recorded, shown)
        else:
            states = [
                _classify(stage.name, p, recorded.get(p.key), stale, blocked)
                for p in _declared(stage, sel)
            ]
        coverage.partitions[stage.name] = _mark_thin(states, thin)
    return coverage


def _masked(row: CoverageRow, shown: Masker) -> CoverageRow:
    """The row with its message masked before it is shortened: a cut could leave part of
    a secret that masking would no longer recognise."""
    if not row.error_message:
        return row
    return dataclasses.replace(row, error_message=shown.mask(row.error_message))


def _declared(stage: Stage, selection: Selection | None) -> Iterable[Partition]:
    return stage.partitions.partitions(selection, order=Order.OLDEST)


def _discovered(
    job: Job,
    ledger: Ledger,
    stage: Stage,
    selection: Selection | None,
    recorded: dict[str, CoverageRow],
    shown: Masker,
) -> list[PartitionState]:
    """A discovered stage's partitions: those on record, grouped under the partition
    that found them (its window and dimensions), and in place of what an unfinished
    discoverer has yet to find, one line for it: missing, or blocked when it failed."""
    spec = stage.partitions
    assert isinstance(spec, DiscoveredSpec) and stage.discovered_from is not None
    source = stage.discovered_from
    parent_selection = None if spec.grain is Grain.ALL else selection
    parents = {
        item.key: _masked(item, shown)
        for item in ledger.coverage_rows(job.name, source, parent_selection)
    }
    children: dict[str, list[CoverageRow]] = defaultdict(list)
    for item in recorded.values():
        children[spec.parent_key(item.key)].append(item)
    states: list[PartitionState] = []
    declared = spec.parent.partitions(parent_selection, order=Order.OLDEST) if spec.parent else ()
    for parent in declared:
        row = parents.get(parent.key)
        finished = row is not None and row.status in (Status.DONE, Status.EMPTY)
        for child in children.pop(parent.key, []):
            found = Partition(child.key, child.start, child.end, parent.grain, child.dims)
            states.append(_classify(stage.name, found, child, set(), {}))
        if finished:
            continue
        if row is not None and row.status is Status.FAILED:
            states.append(
                _unfound(
                    stage.name,
                    parent,
                    State.BLOCKED,
                    f"waits for failed {source} {parent.key}",
                    f"waits for failed {source}",
                )
            )
        else:
            states.append(
                _unfound(
                    stage.name,
                    parent,
                    State.MISSING,
                    f"not discovered yet ({source} {parent.key})",
                    "never",
                )
            )
    # Found by a partition its spec no longer declares (a narrowed range): still shown.
    for rows in children.values():
        for child in rows:
            found = Partition(child.key, child.start, child.end, spec.grain, child.dims)
            states.append(_classify(stage.name, found, child, set(), {}))
    return states


def _unfound(
    stage: str, parent: Partition, state: State, reason: str, group: str
) -> PartitionState:
    """What a discoverer that has not finished has yet to find, under its key."""
    return PartitionState(
        stage,
        parent.key,
        parent.start,
        parent.end,
        parent.dims,
        state,
        reason,
        group,
        None,
        parent.whole,
    )


def _classify(
    stage: str,
    p: Partition,
    row: CoverageRow | None,
    stale: set[str],
    blocked: dict[str, str],
) -> PartitionState:
    def state(value: State, reason: str = "", group: str = "") -> PartitionState:
        records = row.records if row is not None else None
        return PartitionState(
            stage, p.key, p.start, p.end, p.dims, value, reason, group, records, p.whole
        )

    if row is None:
        return state(State.MISSING, "never run", "never")
    status = row.status
    if status is Status.DONE or status is Status.EMPTY:
        if p.key in stale:
            return state(State.STALE, "an input was redone since", "stale")
        if status is Status.EMPTY:
            return state(State.EMPTY, row.error_message or "", "empty")
        return state(State.DONE)
    if status is Status.FAILED:
        category = row.error_category or "error"
        message = (row.error_message or "").strip()
        if len(message) > 120:
            message = message[:119] + "…"
        return state(State.FAILED, f"{category}: {message}" if message else category, category)
    if status is Status.RUNNING:
        return state(State.RUNNING, "", "running")
    # Pending.
    if row.error_category == "stale":
        return state(State.STALE, "an input was redone since", "stale")
    if p.key in blocked:
        upstream = blocked[p.key].split(" ", 1)[0]
        return state(
            State.BLOCKED, f"waits for failed {blocked[p.key]}", f"waits for failed {upstream}"
        )
    if row.finished_at is not None or row.error_category:
        return state(State.MISSING, "released, not finished", "never")
    return state(State.MISSING, "never run", "never")


def _mark_thin(states: list[PartitionState], ratio: float) -> list[PartitionState]:
    """Done partitions with fewer than ``ratio`` x the records their days should hold
    become thin: what they should hold is the median records per day of their
    neighbours (same dimensions) times their own days, so a window cut by the range's
    ends (a first ISO week of one day) is measured by its days, not against whole ones.
    Below 4 expected records nothing is judged."""
    if ratio <= 0:
        return states
    by_dims: dict[tuple[tuple[str, str], ...], list[int]] = defaultdict(list)
    for index, p in enumerate(states):
        if p.state is State.DONE and p.records is not None:
            by_dims[p.dims].append(index)
    result = list(states)
    for indexes in by_dims.values():
        rates = [(states[i].records or 0) / _days(states[i]) for i in indexes]
        for pos, index in enumerate(indexes):
            around = rates[max(0, pos - NEIGHBOURS) : pos] + rates[pos + 1 : pos + 1 + NEIGHBOURS]
            if len(around) < 2:
                continue
            p = states[index]
            records = p.records or 0
            expected = statistics.median(around) * _days(p)
            if expected >= 4 and records < ratio * expected:
                if p.whole:
                    reason = f"{_counted(records, 'record')}, neighbours have ~{expected:,.0f}"
                else:
                    reason = (
                        f"{_counted(records, 'record')} in {_counted(_days(p), 'day')}, "
                        f"neighbours have ~{expected:,.0f} for as many days"
                    )
                result[index] = dataclasses.replace(
                    p, state=State.THIN, reason=reason, group="thin", expected=expected
                )
    return result


def _days(p: PartitionState) -> int:
    return (p.end - p.start).days + 1
