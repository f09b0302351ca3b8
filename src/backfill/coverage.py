"""Coverage: which partitions of which stages are done, and which are not and why.

Every partition a job declares (in the selection) gets one state:

* ``done``    -- finished with records (or a stage that writes nothing);
* ``empty``   -- legitimately nothing there (the stage said so, e.g. no games that day);
* ``thin``    -- done, but with far fewer records per day than its neighbours (same
  stage and dimensions, up to 7 partitions either side): suspicious, worth a look;
* ``failed``  -- failed, with its category and message;
* ``stale``   -- finished, but an input it was computed from has been redone since;
* ``running`` -- leased by a worker right now;
* ``blocked`` -- pending, but waiting for a failed input: nothing runs it until that
  input is retried (``backfill retry --failed``); ``status`` counts it the same way;
* ``missing`` -- not done yet: never run, or released.

The report is read-only: it never changes the ledger.
"""

from __future__ import annotations

import dataclasses
import html
import json
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from enum import StrEnum
from typing import Any

from backfill.job import Job, Stage
from backfill.ledger import CoverageRow, Ledger, Status
from backfill.partitions import Grain, Order, Partition, Selection
from backfill.secrets import Masker
from backfill.textsafe import visible

__all__ = [
    "Coverage",
    "Gap",
    "PartitionState",
    "State",
    "collect",
    "pick_bucket",
    "to_html",
    "to_json",
]

NEIGHBOURS = 7
DEFAULT_THIN = 0.25


class State(StrEnum):
    DONE = "done"
    EMPTY = "empty"
    THIN = "thin"
    FAILED = "failed"
    STALE = "stale"
    RUNNING = "running"
    BLOCKED = "blocked"
    MISSING = "missing"


# Worst first: a bucket shows the worst state of its partitions.
SEVERITY = (
    State.FAILED,
    State.BLOCKED,
    State.MISSING,
    State.STALE,
    State.RUNNING,
    State.THIN,
    State.DONE,
    State.EMPTY,
)
# What `run --missing-only` fills.
GAP_STATES = frozenset({State.MISSING, State.BLOCKED, State.FAILED, State.STALE})


@dataclass(frozen=True, slots=True)
class PartitionState:
    stage: str
    key: str
    start: date
    end: date
    dims: tuple[tuple[str, str], ...]
    state: State
    reason: str = ""
    group: str = ""  # what consecutive partitions must share to form one gap range
    records: int | None = None
    whole: bool = True  # False for a window cut by the range's start or end
    expected: float | None = None  # for a thin one: what its neighbours' rate gives


@dataclass(frozen=True, slots=True)
class Gap:
    """A run of consecutive partitions of one stage (and dimension values) in one state:
    the labels of its first and last partitions, and its first and last days."""

    stage: str
    dims: tuple[tuple[str, str], ...]
    first: str
    last: str
    state: State
    reason: str
    count: int
    start: date
    end: date

    @property
    def span(self) -> str:
        """``2013-W12..2015-W52`` from label to label; where an end is a window cut by
        the range (its label is already a range of days), the days: ``2013-03-18..2015-12-31``."""
        if self.first == self.last:
            return self.first
        if ".." in self.first or ".." in self.last:
            return f"{self.start.isoformat()}..{self.end.isoformat()}"
        return f"{self.first}..{self.last}"

    def describe(self) -> str:
        where = " ".join(v for _, v in self.dims)
        label = " ".join(p for p in (self.stage, where, self.span) if p)
        reason = f": {self.reason}" if self.reason else ""
        return f"{label} {self.state.value}{reason} ({self.count:,})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "dims": dict(self.dims),
            "first": self.first,
            "last": self.last,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "state": self.state.value,
            "reason": self.reason,
            "count": self.count,
        }


@dataclass(slots=True)
class Coverage:
    job: str
    stages: list[Stage]
    partitions: dict[str, list[PartitionState]] = field(default_factory=dict)

    def counts(self, stage: str) -> dict[State, int]:
        found = Counter(p.state for p in self.partitions[stage])
        return {s: found.get(s, 0) for s in State}

    def gaps(self, states: Iterable[State] | None = None) -> list[Gap]:
        """Compressed runs of not-done partitions (and thin ones), per stage and dims."""
        wanted = set(states) if states is not None else set(State) - {State.DONE, State.EMPTY}
        gaps: list[Gap] = []
        for stage in self.stages:
            by_dims: dict[tuple[tuple[str, str], ...], list[PartitionState]] = defaultdict(list)
            for item in self.partitions[stage.name]:
                by_dims[item.dims].append(item)
            for dims, items in by_dims.items():
                current: list[PartitionState] = []
                p: PartitionState | None
                for p in [*items, None]:
                    if current and (
                        p is None or p.state is not current[0].state or p.group != current[0].group
                    ):
                        head = current[0]
                        if head.state in wanted:
                            gaps.append(
                                Gap(
                                    stage.name,
                                    dims,
                                    _label(head),
                                    _label(current[-1]),
                                    head.state,
                                    _reason(current),
                                    len(current),
                                    head.start,
                                    current[-1].end,
                                )
                            )
                        current = []
                    if p is not None:
                        current.append(p)
        return gaps

    def gap_keys(self) -> dict[str, set[str]]:
        """Per stage, the keys `run --missing-only` fills: missing, failed and stale."""
        return {
            stage: {p.key for p in items if p.state in GAP_STATES}
            for stage, items in self.partitions.items()
        }

    def span(self) -> tuple[date, date] | None:
        days = [
            (p.start, p.end)
            for s in self.stages
            if not s.reference
            for p in self.partitions[s.name]
        ]
        if not days:
            return None
        return min(d[0] for d in days), max(d[1] for d in days)


def _label(p: PartitionState) -> str:
    return p.key.split("/", 1)[0]


def _reason(run: Sequence[PartitionState]) -> str:
    """One reason for a run of partitions: theirs when they share it; for thin ones the
    span of their records and of what their neighbours have; else what they share."""
    head = run[0]
    if len({p.reason for p in run}) == 1:
        return head.reason
    if head.state is State.THIN:
        records = [p.records or 0 for p in run]
        expected = [round(p.expected or 0) for p in run]
        return (
            f"{_span(min(records), max(records))} records, "
            f"neighbours have ~{_span(min(expected), max(expected))}"
        )
    return head.group


def _span(low: int, high: int) -> str:
    return f"{low:,}" if low == high else f"{low:,}–{high:,}"


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


# -- buckets ---------------------------------------------------------------------------

Bucket = str  # "day", "month" or "year"


def pick_bucket(coverage: Coverage) -> Bucket:
    """Days for up to about a year, months up to 30 years, years beyond."""
    span = coverage.span()
    if span is None:
        return "year"
    days = (span[1] - span[0]).days + 1
    if days <= 400:
        return "day"
    if days <= 366 * 30:
        return "month"
    return "year"


def worst(states: Iterable[State]) -> State | None:
    present = set(states)
    return next((s for s in SEVERITY if s in present), None)


def rows(coverage: Coverage, bucket: Bucket) -> list[tuple[str, str, list[State | None]]]:
    """The matrix: (stage and dims, period, one cell per column) per row.

    ``day``: a row per month, 31 columns; ``month``: a row per year, 12 columns;
    ``year``: one row, a column per year. A cell holds the worst state of the
    partitions that start in it (None: no partition starts there).
    """
    span = coverage.span()
    result: list[tuple[str, str, list[State | None]]] = []
    for stage in coverage.stages:
        items = coverage.partitions[stage.name]
        if stage.reference:
            result.append((stage.name, "all", [worst(p.state for p in items)]))
            continue
        by_dims: dict[tuple[tuple[str, str], ...], list[PartitionState]] = defaultdict(list)
        for p in items:
            by_dims[p.dims].append(p)
        for dims, parts in by_dims.items():
            name = " ".join([stage.name, *(v for _, v in dims)])
            cells: dict[tuple[str, int], list[State]] = defaultdict(list)
            for p in parts:
                period, column = _place(p.start, bucket, span)
                cells[(period, column)].append(p.state)
            for period, width in _periods(span, bucket):
                row = [
                    worst(cells[(period, c)]) if (period, c) in cells else None
                    for c in range(width)
                ]
                result.append((name, period, row))
    return result


def _place(day: date, bucket: Bucket, span: tuple[date, date] | None) -> tuple[str, int]:
    if bucket == "day":
        return f"{day.year:04d}-{day.month:02d}", day.day - 1
    if bucket == "month":
        return f"{day.year:04d}", day.month - 1
    return "years", day.year - (span[0].year if span else day.year)


def _periods(span: tuple[date, date] | None, bucket: Bucket) -> list[tuple[str, int]]:
    if span is None:
        return []
    first, last = span
    if bucket == "day":
        periods = []
        cursor = first.replace(day=1)
        while cursor <= last:
            periods.append((f"{cursor.year:04d}-{cursor.month:02d}", 31))
            cursor = (cursor + timedelta(days=32)).replace(day=1)
        return periods
    if bucket == "month":
        return [(f"{y:04d}", 12) for y in range(first.year, last.year + 1)]
    return [("years", last.year - first.year + 1)]


def column_labels(coverage: Coverage, bucket: Bucket) -> list[str]:
    """Headers of the matrix's columns."""
    if bucket == "day":
        return [f"{d}" for d in range(1, 32)]
    if bucket == "month":
        return ["J", "F", "M", "A", "M", "J", "J", "A", "S", "O", "N", "D"]
    span = coverage.span()
    return [str(y) for y in range(span[0].year, span[1].year + 1)] if span else []


# -- JSON and HTML -----------------------------------------------------------------------


def to_json(coverage: Coverage, bucket: Bucket) -> str:
    stages = []
    for stage in coverage.stages:
        buckets: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for p in coverage.partitions[stage.name]:
            buckets[_bucket_label(p.start, bucket, stage.reference)][p.state.value] += 1
        stages.append(
            {
                "stage": stage.name,
                "reference": stage.reference,
                "counts": {s.value: n for s, n in coverage.counts(stage.name).items()},
                "buckets": {k: dict(v) for k, v in sorted(buckets.items())},
            }
        )
    document = {
        "job": coverage.job,
        "bucket": bucket,
        "stages": stages,
        "gaps": [g.as_dict() for g in coverage.gaps()],
    }
    return json.dumps(document, indent=2)


def _bucket_label(day: date, bucket: Bucket, reference: bool) -> str:
    if reference:
        return "all"
    if bucket == "day":
        return day.isoformat()
    if bucket == "month":
        return f"{day.year:04d}-{day.month:02d}"
    return f"{day.year:04d}"


COLOURS = {
    State.DONE: "#2da44e",
    State.EMPTY: "#c8d1da",
    State.THIN: "#bf8700",
    State.FAILED: "#cf222e",
    State.STALE: "#8250df",
    State.RUNNING: "#0969da",
    State.BLOCKED: "#fd8c73",
    State.MISSING: "#eef1f4",
}


def to_html(coverage: Coverage) -> str:
    """A self-contained page: per stage its counts, then a square per partition coloured
    by its state, daily partitions as a calendar per year and longer ones (weeks, months,
    years) as a row; hovering a square tells its key, state and reason; then the gaps.

    It stays small however many partitions there are (under 20 bytes each): a square is
    an element whose class is its state, and what hovering tells is put together by a
    few lines of script from its row's first day (or labels) and reasons, each reason
    written once for a run of equal ones.
    """
    parts: list[str] = []
    esc = _html_text
    for stage in coverage.stages:
        items = coverage.partitions[stage.name]
        counts = coverage.counts(stage.name)
        summary = " · ".join(f"{n:,} {s.value}" for s, n in counts.items() if n)
        parts.append(f"<section><h2>{esc(stage.name)}</h2><p class=sum>{esc(summary)}</p>")
        if stage.reference:
            p = items[0] if items else None
            state = p.state if p else State.MISSING
            reason = f" ({p.reason})" if p and p.reason else ""
            parts.append(
                f'<p><span class="sq {state.value}"></span> '
                f"all: {esc(state.value)}{esc(reason)}</p></section>"
            )
            continue
        by_dims: dict[tuple[tuple[str, str], ...], list[PartitionState]] = defaultdict(list)
        for p in items:
            by_dims[p.dims].append(p)
        daily = stage.partitions.grain is Grain.DAY
        for dims, parts_of in by_dims.items():
            where = " ".join(f"{k}={v}" for k, v in dims)
            suffix = "".join(f"/{k}={v}" for k, v in dims)
            by_year: dict[int, list[PartitionState]] = defaultdict(list)
            for p in parts_of:
                by_year[p.start.year].append(p)
            if daily:
                if dims:
                    parts.append(f"<h3>{esc(where)}</h3>")
                parts.extend(_day_grid(year, days, suffix) for year, days in by_year.items())
            elif stage.partitions.grain is Grain.YEAR:
                parts.append(_row(where, parts_of, suffix))
            else:
                parts.extend(
                    _row(f"{where} {year}".strip(), row, suffix) for year, row in by_year.items()
                )
        parts.append("</section>")
    gaps = coverage.gaps()
    gap_items = "".join(f"<li>{esc(g.describe())}</li>" for g in gaps) or "<li>none</li>"
    legend = "".join(f'<span class="sq {s.value}"></span>{s.value} ' for s in State)
    colours = "\n".join(f".{s.value} {{ background: {COLOURS[s]}; }}" for s in State)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>coverage: {esc(coverage.job)}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 2em; color: #1f2328; }}
.sq, .g i, .r i {{ display: inline-block; width: 11px; height: 11px; border-radius: 2px; }}
.sq {{ margin: 1px; vertical-align: middle; }}
.cal {{ display: flex; gap: 6px; align-items: flex-start; margin: .3em 0; }}
.cal .y {{ font-size: 11px; color: #57606a; min-width: 3em; }}
.g {{ display: grid; grid-template-rows: repeat(7, 11px); grid-auto-flow: column;
      grid-auto-columns: 11px; gap: 2px; margin-bottom: .6em; }}
.r {{ display: flex; flex-wrap: wrap; gap: 2px; max-width: 60em; }}
.g i:not([class]) {{ visibility: hidden; }}
.sum {{ color: #57606a; }}
{colours}
</style></head><body>
<h1>coverage: {esc(coverage.job)}</h1>
<p>{legend}</p>
{"".join(parts)}
<h2>gaps</h2><ul id="gaps">{gap_items}</ul>
<script>
"use strict";
// A square's key, state and reason, from its row: data-s the first day of a calendar
// (data-o blank squares before it) or data-k the labels of a row; data-p the dimension
// values; data-r [count, reason] for each run of squares with the same reason.
document.addEventListener("mouseover", event => {{
  const square = event.target;
  if (square.tagName !== "I" || !square.className || square.title) return;
  const row = square.parentElement.dataset;
  const index = [...square.parentElement.children].indexOf(square) - Number(row.o || 0);
  let label;
  if (row.s) {{
    const [y, m, d] = row.s.split("-").map(Number);
    label = new Date(Date.UTC(y, m - 1, d + index)).toISOString().slice(0, 10);
  }} else {{
    label = JSON.parse(row.k)[index];
  }}
  let reason = "", seen = 0;
  for (const [count, text] of JSON.parse(row.r)) {{
    seen += count;
    if (index < seen) {{ reason = text; break; }}
  }}
  square.title = `${{label}}${{row.p}}: ${{square.className}}` + (reason ? ` (${{reason}})` : "");
}});
</script>
</body></html>
"""


def _html_text(text: str) -> str:
    """Text from the ledger for HTML: markup escaped, and control characters shown (the
    page may well be written to a terminal: ``coverage --format html`` prints it)."""
    return html.escape(visible(text))


def _data(value: Any) -> str:
    """A value as JSON for an HTML attribute (in double quotes), its text shown as
    :func:`_html_text` shows it."""
    return html.escape(json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def _runs(reasons: Iterable[str]) -> str:
    """[[count, reason], ...] for runs of equal reasons, as :func:`_data`."""
    runs: list[list[Any]] = []
    for reason in reasons:
        if runs and runs[-1][1] == reason:
            runs[-1][0] += 1
        else:
            runs.append([1, reason])
    return _data(runs)


def _square(p: PartitionState | None) -> str:
    return f"<i class={p.state.value}></i>" if p is not None else "<i></i>"


def _day_grid(year: int, days: list[PartitionState], suffix: str) -> str:
    """A year of daily partitions like a contribution calendar: weeks as columns,
    weekdays as rows; days without a partition stay blank."""
    by_day = {p.start: p for p in days}
    first, last = min(by_day), max(by_day)
    span = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    blank = first.weekday()
    squares = "<i></i>" * blank + "".join(_square(by_day.get(day)) for day in span)
    reasons = _runs(visible(by_day[d].reason) if d in by_day else "" for d in span)
    return (
        f"<div class=cal><span class=y>{year}</span><div class=g data-s={first.isoformat()} "
        f'data-o={blank} data-p="{html.escape(suffix)}" data-r="{reasons}">{squares}</div></div>'
    )


def _row(label: str, partitions: list[PartitionState], suffix: str) -> str:
    """Partitions longer than a day (weeks, months, years), a square each, in order."""
    labels = _data([_label(p) for p in partitions])
    reasons = _runs(visible(p.reason) for p in partitions)
    squares = "".join(_square(p) for p in partitions)
    return (
        f"<div class=cal><span class=y>{_html_text(label)}</span><div class=r "
        f'data-k="{labels}" data-p="{html.escape(suffix)}" data-r="{reasons}">{squares}</div>'
        "</div>"
    )
