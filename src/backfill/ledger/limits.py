"""Resource schedules kept in the ledger: the booking algorithm, once for every dialect.

A resource's per-second rate and its quotas, when they are shared (by the workers of a
fleet, by several jobs, or by the runs that follow one another on a state), live in
three tables: the resource's schedule (its next theoretical start, a pause, and the pace
a fleet learned its starts need), and per
quota a ring of its last ``count`` starts. A ledger runs :func:`take_starts` inside one
transaction that locks the resource's row, through a ``query`` function that executes
its own dialect's named queries (``lock_resource``, ``insert_resource``, ``set_tat``,
``set_paused``, ``set_pace``, ``lock_quota``, ``quota_starts``, ``record_quota_starts``,
``set_quota_taken``); :func:`resume` likewise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from backfill.ratelimit import book_block
from backfill.ratelimit.fleetpace import FleetPace, Report, book_at

__all__ = ["Query", "QuotaUse", "quota_use", "resume", "take_starts"]

# Runs one named query of the ledger's dialect with named parameters; returns its rows.
Query = Callable[[str, Mapping[str, Any]], Sequence[Sequence[Any]]]


def take_starts(
    query: Query,
    scope: str,
    resource: str,
    *,
    count: int,
    interval: float,
    tolerance: float,
    quotas: Sequence[tuple[int, float]] = (),
    max_pause: float = math.inf,
    margin: float = 0.0,
    horizon: float = math.inf,
    learn: Report | None = None,
) -> tuple[list[float], float, float, float]:
    """Book ``count`` starts of ``resource`` in ``scope`` (a job's name, or ``*`` for a
    resource every job shares).

    Returns, in seconds from the database's now, when each start is due (0: at once) and
    until when the resource is paused; then that now itself (epoch seconds on the
    database's clock), and the rate booked at (0 for quotas only). ``interval`` 0 books
    quotas only; with ``learn``, starts are booked at the pace the schedule learned (see
    :func:`~backfill.ratelimit.fleetpace.fleet_pace`; ``interval`` is the declared
    rate's, the least), after what the booking worker reports (instants in epoch
    seconds).
    Each quota of (count, period) keeps a ring of the last ``count`` starts: start number
    m replaces number m - count, and may not come before that one has left the quota's
    window, widened by
    ``margin`` seconds (what the starts' holders may send early or late). A stored pause
    reaching more than ``max_pause`` seconds ahead is cut to it, and stored so.

    Starts due more than ``horizon`` seconds ahead are not booked: when not even the
    first is due that soon, none is, and the one offset returned (above ``horizon``)
    is when the first could be: ask again then.
    """
    key = {"job": scope, "name": resource}
    rows = query("lock_resource", key)
    if not rows:
        query("insert_resource", key)
        rows = query("lock_resource", key)
    tat, paused, now = (float(v) for v in rows[0][:3])
    if learn is not None and interval:
        learned = FleetPace.loads(rows[0][3])
        pace, interval, tolerance = book_at(
            learned, learn, now=now, interval=interval, tolerance=tolerance, tat=tat, paused=paused
        )
        if pace != learned:
            query("set_pace", {**key, "pace": pace.dumps()})
    if paused > now + max_pause:
        # Left by an earlier run, or by a process with a longer cap (a hostile
        # RateLimit-Reset of 31 years, say): cut, and the schedule booked behind it too.
        paused = now + max_pause
        tat = min(tat, paused)
        query("set_paused", {**key, "paused": paused})
        query("set_tat", {**key, "tat": tat})
    kept = [str(row[0]) for row in query("quota_names", key)] if quotas else []
    rings = []
    others: dict[str, int] = {}
    for size, period in quotas:
        name = f"{size}/{period:g}"
        quota = {**key, "quota": name}
        taken = int(query("lock_quota", quota)[0][0])
        siblings = _siblings(kept, name, period)
        if taken == 0 and siblings:
            taken = _seed(query, key, quota, size, siblings)
        others.update(siblings)
        slots = [(taken + i) % size for i in range(count)]
        stored = {int(s): float(t) for s, t in query("quota_starts", {**quota, "slots": slots})}
        previous = [stored.get(slot) if taken + i >= size else None for i, slot in enumerate(slots)]
        rings.append((quota, period, taken, slots, previous))
    booked_tat, starts = book_block(
        now=now,
        # Quotas alone never wait for a rate someone else books on the same schedule.
        tat=tat if interval else 0.0,
        paused_until=paused,
        count=count,
        interval=interval,
        tolerance=tolerance,
        earlier=[(period + margin, previous) for _, period, _, _, previous in rings],
    )
    rate = 1.0 / interval if interval else 0.0
    soon = sum(1 for start in starts if start - now <= horizon)
    if not soon:
        return [starts[0] - now], paused - now, now, rate
    if soon < count:
        # Booked up to the horizon: the rate's next instant follows the last one kept.
        booked_tat = starts[soon - 1] + interval if interval else booked_tat
        starts = starts[:soon]
    if interval:
        query("set_tat", {**key, "tat": booked_tat})
    for (size, _), (quota, _, taken, _, _) in zip(quotas, rings, strict=True):
        _record(query, quota, size, taken, starts)
        others.pop(quota["quota"], None)
    for name, size in others.items():
        quota = {**key, "quota": name}
        _record(query, quota, size, int(query("lock_quota", quota)[0][0]), starts)
    return [start - now for start in starts], paused - now, now, rate


def _siblings(kept: Sequence[str], name: str, period: float) -> dict[str, int]:
    """The other windows kept for the same period (another count: a job that shares the
    resource and declares another, or this job before its declaration changed), by name,
    with their counts."""
    found = {}
    for other in kept:
        count, _, of = other.partition("/")
        if other != name and of == f"{period:g}" and count.isdigit():
            found[other] = int(count)
    return found


def _seed(
    query: Query,
    key: Mapping[str, Any],
    quota: Mapping[str, Any],
    size: int,
    siblings: Mapping[str, int],
) -> int:
    """A window used for the first time starts with the latest starts the same period's
    other windows kept (up to its own count): what the current window has spent is
    spent, whichever count it was declared with. How many it starts with."""
    # Every start since a window was kept is in it: the one of the largest count holds
    # the most (starts made at one instant are several, not one).
    largest = max(siblings, key=lambda name: siblings[name])
    seen = sorted(float(t) for (t,) in query("quota_ring", {**key, "quota": largest}))[-size:]
    if seen:
        query("record_quota_starts", {**quota, "slots": list(range(len(seen))), "starts": seen})
        query("set_quota_taken", {**quota, "taken": len(seen)})
    return len(seen)


def _record(
    query: Query, quota: Mapping[str, Any], size: int, taken: int, starts: Sequence[float]
) -> None:
    """Record ``starts`` in a window of ``size`` that ``taken`` starts went into before:
    one this booking checks, or another count for the same period (each count declared
    holds over every job's starts)."""
    kept = list(starts[-size:])
    first = taken + len(starts) - len(kept)
    slots = [(first + i) % size for i in range(len(kept))]
    query("record_quota_starts", {**quota, "slots": slots, "starts": kept})
    query("set_quota_taken", {**quota, "taken": taken + len(starts)})


def resume(query: Query, scope: str, resource: str) -> float | None:
    """End ``resource``'s stored pause now, with the schedule booked behind it; the seconds
    the pause still had, or None when it was not paused."""
    key = {"job": scope, "name": resource}
    rows = query("lock_resource", key)
    if not rows:
        return None
    tat, paused, now = (float(v) for v in rows[0][:3])
    if paused <= now:
        return None
    query("set_paused", {**key, "paused": 0.0})
    query("set_tat", {**key, "tat": min(tat, now)})
    return paused - now


class QuotaUse(NamedTuple):
    """How much of a quota the current window has spent: ``used`` starts since ``period``
    ago; ``frees_at`` when the oldest of them leaves the window (epoch seconds, None when
    none is in it); ``now`` the database's clock."""

    used: int
    frees_at: float | None
    now: float


def quota_use(
    query: Query, scope: str, resource: str, quotas: Sequence[tuple[int, float]]
) -> dict[str, QuotaUse]:
    """Per quota (``"COUNT/PERIOD"``), what its current window has spent (read only)."""
    now = float(query("clock", {})[0][0])
    result = {}
    for size, period in quotas:
        name = f"{size}/{period:g}"
        starts = [
            float(t)
            for (t,) in query("quota_ring", {"job": scope, "name": resource, "quota": name})
            if float(t) > now - period
        ]
        result[name] = QuotaUse(len(starts), min(starts) + period if starts else None, now)
    return result
