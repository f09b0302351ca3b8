"""The pace a fleet books a resource's starts at, learned once for the whole fleet from
what its workers' requests were answered, and kept with the schedule they share."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Sequence

# Where a declared burst of one starts, as a share of it (as one process starts: see
# Pace._new_learned_start).
STRICT_START = 0.97
# A refusal of a start booked at the pace, the rate about right: a step down, bigger the
# first time in front of a strict source (the margin its jitter needs unknown yet).
STEP_DOWN = 0.97
FIRST_DOWN = 0.9
# Clearly over: more than this share of the answers to starts booked at the pace
# refused, of at least MEASURED answers, some accepted (none: a source down), spread
# among them (see _over).
OVER_SHARE = 0.15
MEASURED = 12
# Clearly over, it comes down at most to this share of itself at once (a strict source
# refuses every other request at a rate a hair over its limit, and more at a rate a
# hair under it that the way's jitter bunches: the share accepted is no measure there).
MOST_DOWN = 0.5
# A search upwards after coming down from clearly over: steps of SEARCH_STEP, each held
# SEARCH_HOLD seconds and SEARCH_ANSWERS accepted answers of its own, none refused.
SEARCH_STEP = 1.10
SEARCH_HOLD = 1.0
SEARCH_ANSWERS = 4
# Held with no refusal, the pace creeps up CREEP of the declared rate a step, each after
# max(6 s, 12.5 requests) at first, doubled by every step down (up to CREEP_LONGEST).
CREEP = 0.01
CREEP_LONGEST = 60.0
# Never under this share of the declared rate.
FLOOR = 0.01
# The answers kept to judge the pace by; the workers remembered.
KEPT = 64
WORKERS = 16
# A limit a header says is run at this share of it (see AdaptiveRate.on_header_limit);
# not said for TOLD_FORGET seconds, it is forgotten.
TOLD_SHARE = 0.98
TOLD_FORGET = 60.0
# A worker is alone when no other booked for this long.
ALONE = 5.0
# Nobody booked for IDLE seconds, or for NEW_RUN seconds and NEW_RUN_STARTS intervals of
# the pace: a new run (or one restarted), which searches up from the pace left.
IDLE = 60.0
NEW_RUN = 5.0
NEW_RUN_STARTS = 10
# Held under PROBE_UNDER of its ceiling without a decrease for PROBE_EVERY seconds, it
# searches up (a limit back after a dip, or risen); each search refused doubles the wait
# (up to PROBE_LONGEST).
PROBE_UNDER = 0.7
PROBE_EVERY = 30.0
PROBE_LONGEST = 600.0


def _new_run(pace: FleetPace, now: float, tat: float, paused: float) -> bool:
    """Whether nobody booked lately, nor was held by a pause meanwhile (a Retry-After
    holds every worker): the pace was left by a run before."""
    if tat < now - IDLE and paused < now - IDLE:
        return True
    last = max((t for _, t in pace.workers), default=None)
    quiet = max(NEW_RUN, NEW_RUN_STARTS / pace.rate)
    return last is not None and max(last, paused) < now - quiet


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _over(answers: Sequence[tuple[float, bool]]) -> bool:
    """Whether ``answers`` (by instant) say the pace is clearly over the source's limit:
    more than OVER_SHARE of at least MEASURED refused, spread among the accepted (a
    refused one followed by an accepted one for every four refused, two at least), as
    requests sent faster than a source takes them are. A source that went down refuses
    every request from some instant on, and one back takes every request from some
    instant on: neither is a limit."""
    if len(answers) < MEASURED:
        return False
    refused = sum(1 for _, accepted in answers if not accepted)
    if refused <= OVER_SHARE * (len(answers) + 1):
        return False
    back = sum(1 for (_, before), (_, after) in itertools.pairwise(answers) if after and not before)
    return back >= max(2, refused / 4)


@dataclasses.dataclass(frozen=True, slots=True)
class FleetPace:
    """A fleet's pace (instants on the schedule's clock): ``rate`` (0: none learned yet);
    when it last changed (``changed``: answers to starts booked before were answers at
    another pace) and last came down (``down``: a refusal of a start booked before it
    was one at a faster pace); how long it must hold before it creeps up
    (``creep_every``, 0: the usual); while it searches upwards, the rate it came down
    from (``bad``, 0: no search) and the step before the one it is at (``good``, 0: none
    yet); the last limit a source said in a header (``told``, 0: none) and when it was
    last said (``told_at``); how long it must hold far under its ceiling before it
    searches up again (``probe_every``, 0: the usual); the instant from which answers
    count (``counted``: its last change other than a step of the margin or the creep,
    a few percent that do not change what the share refused says); the worker whose own
    rate it follows while that
    one books alone (``alone``, "": none); the last answers (sent, accepted) to starts
    booked since ``counted``, by instant; and the workers that booked lately (an id,
    when)."""

    rate: float = 0.0
    changed: float = 0.0
    down: float = 0.0
    creep_every: float = 0.0
    bad: float = 0.0
    good: float = 0.0
    told: float = 0.0
    told_at: float = 0.0
    probe_every: float = 0.0
    counted: float = 0.0
    alone: str = ""
    answers: tuple[tuple[float, bool], ...] = ()
    workers: tuple[tuple[str, float], ...] = ()

    def dumps(self) -> str:
        """As kept in the ledger."""
        numbers = dataclasses.astuple(self)[:10]
        answers = [[sent, int(ok)] for sent, ok in self.answers]
        return json.dumps([*numbers, self.alone, answers, [list(w) for w in self.workers]])

    @classmethod
    def loads(cls, text: str | None) -> FleetPace:
        """As kept in the ledger; a fresh pace for none, or for anything not one (a row
        edited by hand, another version's: a negative figure, an id that is no text)."""
        try:
            *numbers, alone, answers, workers = json.loads(text or "null")
            if len(numbers) != 10 or not all(_finite(v) and v >= 0 for v in numbers):
                return cls()
            if not isinstance(alone, str):
                return cls()
            kept = tuple((float(sent), bool(ok)) for sent, ok in answers if _finite(sent))
            seen = tuple((str(w), float(t)) for w, t in workers if _finite(t))
        except (ValueError, TypeError):
            return cls()
        rate, changed, down, creep_every, bad, good, told, told_at, probe_every, counted = (
            float(v) for v in numbers
        )
        return cls(
            rate,
            changed,
            down,
            creep_every,
            bad,
            good,
            told,
            told_at,
            probe_every,
            counted,
            alone[:64],
            kept[-KEPT:],
            seen[-WORKERS:],
        )

    @property
    def ok(self) -> int:
        return sum(1 for _, accepted in self.answers if accepted)

    def _creep_wait(self) -> float:
        # As one process's learned rate creeps (see AdaptiveRate._creep_base).
        return self.creep_every or max(6.0, 12.5 / self.rate)


@dataclasses.dataclass(frozen=True, slots=True)
class Report:
    """What a worker tells the fleet's pace with a booking (see :func:`fleet_pace`): the
    answers to its starts since the last one (sent, accepted) and the refusals among
    them that came a hair early (instants on the schedule's clock), the limit its
    source said in a header, who it is and the rate it learned on its own."""

    answers: Sequence[tuple[float, bool]] = ()
    early: Sequence[float] = ()
    told: float | None = None
    worker: str | None = None
    own: float | None = None


def fleet_pace(
    pace: FleetPace,
    *,
    now: float,
    declared: float,
    burst: int,
    answers: Sequence[tuple[float, bool]] = (),
    early: Sequence[float] = (),
    tat: float = -math.inf,
    paused: float = -math.inf,
    told: float | None = None,
    worker: str | None = None,
    own: float | None = None,
) -> FleetPace:
    """``pace`` at ``now`` for a resource declared ``declared`` per second with ``burst``,
    after the ``answers`` to starts booked at the given instants (accepted or refused
    with a 429) and the refusals of the starts booked at ``early`` instants that came a
    hair early (a worker took the rate for about right: see Resource.observe). ``tat``
    is the schedule's next instant: starts booked up to it were booked at the pace
    before any change now (workers book a little ahead), those after at the new one;
    ``paused``: until when the schedule is paused (a Retry-After holds every worker).
    ``told``: the limit the source said in a header since (RateLimit-*), per second.
    ``worker`` books, and has learned ``own`` from its own answers.

    One process learns from its own answers the margin its source needs (a bucket of one,
    and requests bunched on the way by a few milliseconds) and a declared rate the
    source does not take. A fleet's workers each see a share of the answers, while the
    schedule they share spaces their starts: booked at the declared rate, four workers
    at a correct 20/s in front of a bucket of one had a fifth of their requests refused
    and reached a seventh of the limit, and two declared three times too fast a third.
    So the fleet learns once, on its schedule, as one process would:

    * a refusal that came a hair early, of a start booked at the pace (one booked before
      its last decrease is an echo of that), takes it 3 % down (10 % the first time in
      front of a strict source) and doubles the time it must hold before it creeps up
      again, 1 % of the declared rate a step;
    * more than 15 % of at least twelve answers to starts booked at the pace refused,
      spread among those accepted (see _over): it was clearly over the source's limit,
      and comes down to just under what got through (the pace times the share
      accepted), then searches back up in steps of 10 %, each held a second and four
      answers of its own accepted, until a refusal takes it back to the step before (or
      it is back at the declared rate);
    * a source that refuses every request from some instant on is down, and one that
      takes every request from some instant on is back: neither says anything of its
      limit, and the pace stays (the workers' pauses hold the requests);
    * a limit the source says in a header under the pace is taken at once, a hair
      under it (as one process takes it), and any search ends there; the pace stays
      under it until the source has not said it for a minute;

    * held under 70 % of its ceiling, no decrease for 30 s, it searches up (a limit back
      after a dip, or risen), each search refused doubling that wait (up to ten
      minutes); a figure a header says over the pace is searched up to, not taken;

    it starts a hair under a declared burst of one, as one process does, and a pace
    nobody booked at for a while (a run before left it, or a run restarted) searches
    back up from there.

    A worker that books alone (no other one booked for ALONE seconds) sees every answer,
    and knows more of its source than the fleet's pace does (its way out of an outage, a
    header refused, a Retry-After): the pace follows the rate it learned (``own``). Not
    at once: it first books at the pace as it is, which the worker takes up as its own
    rate (see LedgerRate.take), so that a rate it learned from its share of the answers
    while others booked too, or that it starts a run at, is never the fleet's.

    >>> fleet_pace(FleetPace(), now=100.0, declared=20.0, burst=1).rate
    19.4
    >>> down = fleet_pace(FleetPace(20.0, 90.0, 90.0), now=100.0, declared=20.0, burst=5,
    ...                   early=[99.9, 99.95])
    >>> round(down.rate, 2), down.down, down.creep_every
    (19.4, 100.0, 12.0)
    >>> round(fleet_pace(down, now=112.0, declared=20.0, burst=5, tat=111.9).rate, 2)
    19.6
    >>> over = fleet_pace(FleetPace(15.0, 90.0, 90.0), now=100.0, declared=15.0, burst=1,
    ...                   answers=[(95.0 + i / 4, i % 3 == 0) for i in range(15)])
    >>> over.rate, over.bad
    (7.5, 15.0)
    """
    since = max(now, tat)
    if max(pace.changed, pace.down, pace.counted, pace.told_at) > since:
        # Kept instants past the schedule's next one: a database clock stepped back, or a
        # failover to a skewed host. Forgotten, or no refusal would count for as long.
        pace = dataclasses.replace(pace, changed=0.0, down=0.0, counted=0.0, told_at=0.0)
    floor = FLOOR * declared
    if told is not None and _finite(told) and told > 0:
        pace = dataclasses.replace(pace, told_at=now)
    elif pace.told and now - pace.told_at > TOLD_FORGET:
        # Not said for a minute: the source's limit may have risen (or the header gone
        # with a proxy); searched for again, from here.
        pace = dataclasses.replace(pace, told=0.0, bad=declared, good=0.0, changed=since)
    ceiling = min(declared, max(floor, TOLD_SHARE * pace.told)) if pace.told else declared
    learned = _learned(
        pace, since, now, declared, ceiling, burst, answers, early, tat, paused, told, worker, own
    )
    # Whatever was kept (a search's step before, under a declared rate since lowered),
    # never over the ceiling (a figure said now included) nor under the floor.
    if learned.told:
        ceiling = min(declared, max(floor, TOLD_SHARE * learned.told))
    return dataclasses.replace(learned, rate=min(ceiling, max(floor, learned.rate)))


def _learned(
    pace: FleetPace,
    since: float,
    now: float,
    declared: float,
    ceiling: float,
    burst: int,
    answers: Sequence[tuple[float, bool]],
    early: Sequence[float],
    tat: float,
    paused: float,
    told: float | None,
    worker: str | None,
    own: float | None,
) -> FleetPace:
    """See :func:`fleet_pace` (its rate not yet kept within the floor and ``ceiling``,
    the declared rate or a hair under what a header said)."""
    floor = FLOOR * declared
    if not pace.rate:
        # None learned yet: from the declared rate (its creep timed from now).
        start = declared * (STRICT_START if burst == 1 else 1.0)
        pace = dataclasses.replace(pace, rate=start, changed=now, counted=now)
    elif STEP_DOWN * ceiling > pace.rate and not pace.bad and _new_run(pace, now, tat, paused):
        # Nobody booked for a while (a run before left it there, or a run restarted): what
        # it learned may be stale (a limit that dipped as it ended, a source since sped
        # up, a declared rate raised), so it searches back up, not only creeps (what
        # the answers said so far still counts).
        pace = dataclasses.replace(pace, changed=now, bad=ceiling, good=0.0)
    if worker is not None:
        others = tuple((w, t) for w, t in pace.workers if w != worker and t >= now - ALONE)
        pace = dataclasses.replace(pace, workers=(*others[-(WORKERS - 1) :], (worker, now)))
    else:
        others = ()
    if (
        told is not None
        and _finite(told)
        and told > 0
        and (not pace.told or abs(told - pace.told) > 0.01 * pace.told)
    ):
        said = min(declared, max(floor, TOLD_SHARE * told))
        if said >= pace.rate:
            # A figure said anew, over the pace: searched up to (a figure that flaps
            # between two values would otherwise throw away what 429s taught), unless a
            # search was refused lately (as a search after holding far under waits).
            if pace.bad or now - pace.down < (pace.probe_every or PROBE_EVERY):
                return dataclasses.replace(pace, told=told)
            return dataclasses.replace(
                pace, told=told, bad=said, good=0.0, changed=since, counted=since, answers=()
            )
        # Under it: taken at once, and the pace learns under it from there.
        return dataclasses.replace(
            pace,
            rate=said,
            changed=since,
            down=since,
            bad=0.0,
            good=0.0,
            told=told,
            counted=since,
            answers=(),
        )
    if worker is not None:
        if others:
            if pace.alone and STEP_DOWN * ceiling > pace.rate and not pace.bad:
                # No longer alone: the rate the worker learned alone is where the fleet
                # goes on from; learned from a run's first answers (one 429 halved it,
                # as one process does), it searches up as one process would.
                pace = dataclasses.replace(pace, changed=now, bad=ceiling, good=0.0)
            pace = dataclasses.replace(pace, alone="")
        elif own is not None and pace.alone != worker:
            # Alone from now on: it first takes up the pace as it is (see fleet_pace).
            return dataclasses.replace(pace, alone=worker)
        elif own is not None and _finite(own) and own > 0:
            if own == pace.rate:
                return pace
            down = since if own < pace.rate else pace.down
            return dataclasses.replace(
                pace, rate=own, changed=since, down=down, counted=since, answers=()
            )
    fresh = sorted(answer for answer in answers if answer[0] >= pace.counted)
    kept = tuple(sorted(pace.answers + tuple(fresh)))[-KEPT:] if fresh else pace.answers
    pace = dataclasses.replace(pace, answers=kept)
    rate = pace.rate
    if _over(kept):
        # Clearly over: just under what got through, and a search back up from there.
        got = rate * pace.ok / len(kept)
        return dataclasses.replace(
            pace,
            rate=max(floor, MOST_DOWN * rate, STEP_DOWN * got),
            changed=since,
            down=since,
            creep_every=min(CREEP_LONGEST, 2.0 * pace._creep_wait()),
            bad=rate,
            good=0.0,
            counted=since,
            answers=(),
        )
    stepped = pace.bad and pace.good
    step_refused = any(not accepted and sent >= pace.changed for sent, accepted in kept)
    if any(instant >= pace.down for instant in early) or (stepped and step_refused):
        waits = min(CREEP_LONGEST, 2.0 * pace._creep_wait())
        if stepped:
            # A search's step refused: back to the step before, and the search ends there
            # (the next search after holding far under waits twice as long).
            return dataclasses.replace(
                pace,
                rate=pace.good,
                changed=since,
                down=since,
                creep_every=waits,
                bad=0.0,
                good=0.0,
                probe_every=min(PROBE_LONGEST, 2.0 * (pace.probe_every or PROBE_EVERY)),
            )
        step = FIRST_DOWN if burst == 1 and not pace.down else STEP_DOWN
        return dataclasses.replace(
            pace, rate=max(floor, rate * step), changed=since, down=since, creep_every=waits
        )
    if pace.bad:
        # A step is judged by the answers to its own starts.
        step_ok = sum(1 for sent, accepted in kept if accepted and sent >= pace.changed)
        # (Never past a hair under the rate that drew the decrease: the jitter's margin,
        # as one process's search ends.)
        top = min(STEP_DOWN * pace.bad, ceiling)
        if top <= rate:
            return dataclasses.replace(pace, bad=0.0, good=0.0)
        if now - pace.changed >= SEARCH_HOLD and step_ok >= SEARCH_ANSWERS:
            up = max(rate, min(top, rate * SEARCH_STEP))
            return dataclasses.replace(
                pace,
                rate=up,
                changed=since,
                bad=pace.bad if up < top else 0.0,
                good=rate,
                probe_every=pace.probe_every if up < top else 0.0,
            )
        return pace
    if (
        rate < PROBE_UNDER * ceiling
        and now - pace.down >= (pace.probe_every or PROBE_EVERY)
        and now - pace.changed >= SEARCH_HOLD
    ):
        # Held far under its ceiling, no refusal for a while: the source's limit may be
        # back after a dip, or have risen; searched for (the creep takes many minutes).
        return dataclasses.replace(pace, changed=since, bad=ceiling, good=0.0)
    if rate < ceiling and now - pace.changed >= pace._creep_wait():
        # Held: a step up, and the next one a little sooner.
        every = 0.9 * pace.creep_every
        return dataclasses.replace(
            pace,
            rate=rate + CREEP * declared,
            changed=since,
            creep_every=every if every >= 6.0 else 0.0,
        )
    return pace


def book_at(
    pace: FleetPace,
    report: Report,
    *,
    now: float,
    interval: float,
    tolerance: float,
    tat: float,
    paused: float,
) -> tuple[FleetPace, float, float]:
    """``pace`` after ``report``, and the interval and tolerance the schedule books its
    starts at (``interval`` and ``tolerance``: the declared rate's and its burst's, the
    least spacing); see :func:`fleet_pace`."""
    learned = fleet_pace(
        pace,
        now=now,
        declared=1.0 / interval,
        burst=1 + round(tolerance / interval),
        answers=report.answers,
        early=report.early,
        tat=tat,
        paused=paused,
        told=report.told,
        worker=report.worker,
        own=report.own,
    )
    return learned, 1.0 / learned.rate, tolerance / (learned.rate * interval)
