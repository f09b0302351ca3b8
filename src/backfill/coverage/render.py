"""The coverage report as a JSON document and as a self-contained HTML page."""

from __future__ import annotations

import html
import json
from collections import defaultdict
from collections.abc import Iterable
from datetime import date, timedelta
from typing import Any

from backfill.coverage.matrix import Bucket
from backfill.coverage.model import Coverage, PartitionState, State, window_label
from backfill.partitions import Grain
from backfill.textsafe import visible


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
    labels = _data([window_label(p) for p in partitions])
    reasons = _runs(visible(p.reason) for p in partitions)
    squares = "".join(_square(p) for p in partitions)
    return (
        f"<div class=cal><span class=y>{_html_text(label)}</span><div class=r "
        f'data-k="{labels}" data-p="{html.escape(suffix)}" data-r="{reasons}">{squares}</div>'
        "</div>"
    )
