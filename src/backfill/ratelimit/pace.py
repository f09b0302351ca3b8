"""The pace of a resource: its declared rates and quotas, the rate learned under them, and
what requests' answers teach it."""

from __future__ import annotations

import math

from backfill.ratelimit.adaptive import AdaptiveRate
from backfill.ratelimit.limits import QUOTA_PERIOD, Limit, Tell
from backfill.ratelimit.schedule import Schedule
from backfill.ratelimit.windows import WindowWatch

# Where a declared rate of burst 1 starts, as a share of it (see Pace._new_learned).
_STRICT_START = 0.97
# How late, unevenly, requests may reach a source (its loop, the way there) that a
# declared burst keeps room for (see Pace.run_burst).
JITTER_ROOM = 0.05
# The longest window of a limit a source states (RateLimit-Policy) taken as a pace;
# longer ones are quotas (see Pace.on_header_limit).
HEADER_PACE_WINDOW = 60.0
# The share of an interval a turn woken late takes back from the next one at a rate run
# one at a time too fast for requests to be spaced again where they are written (see
# Schedule.take_back).
FAST_TAKE_BACK = 0.5
# ... once the source took this many answers in a row since its last 429 (see
# Pace.on_success).
TAKE_BACK_AFTER = 200


class Pace:
    """When a resource's next request may start as far as its rates and quotas go (its
    :class:`Schedule`), and the rate it actually runs at (``learned``): an
    :class:`AdaptiveRate` under the declared rate, none for a resource of quotas only.
    A declared rate the source does not accept is said once a run through ``tell``."""

    def __init__(
        self,
        limits: list[Limit],
        *,
        burst: int,
        adaptive: bool,
        start_rate: float | None,
        tell: Tell,
    ) -> None:
        self.limits = limits
        self.burst = burst
        self.adaptive = adaptive
        self._start_rate = start_rate
        self._tell = tell
        # The burst run at: part of a declared burst is kept in hand. A full bucket sent
        # at once and then the rate leaves a bucket of the same size no room for the way's
        # jitter: requests reach it up to tens of milliseconds late, unevenly (a busy
        # source's loop stalls, and what came meanwhile meets the bucket at once, behind
        # requests that met it on time), so requests written an interval apart come
        # closer; one refused costs a whole Retry-After pause, or the rate. Kept in hand:
        # JITTER_ROOM seconds of requests at the declared rate, one at least, half the
        # burst at most.
        self.run_burst = burst - min(
            burst // 2, max(1, math.ceil(JITTER_ROOM * (self.declared_rate or 0.0)))
        )
        self.learned = self._new_learned()
        self.schedule = Schedule(
            limits, burst, None if self.learned is None else self.learned.rate, self.run_burst
        )
        self._said_slower = False
        self.resumed = False  # started at what a run before learned (see resume)
        self.found: float | None = None  # the limit a run before found (adaptive)
        self._latency_ewma: float | None = None
        self._latency_floor: float | None = None
        self._latency_samples = 0
        self._spaced = 0  # the learned rate's decreases whose first start is known
        # The source refused a turn taken back from a late one (see refused_taken_back).
        self.strict_spacing = False
        # Answers accepted since the last 429, until turns are taken back (see on_success).
        self._clean = 0
        # What the source took over each cycle of its refusals (a fixed window's count).
        self.window = WindowWatch()

    @property
    def declared_rate(self) -> float | None:
        """The strictest per-second rate declared (None: adaptive without one, or quotas
        only)."""
        return min((lim.rate for lim in self.limits if lim.period <= QUOTA_PERIOD), default=None)

    def _new_learned(self, start: float | None = None) -> AdaptiveRate | None:
        """The rate a run runs at, from ``start`` (by default where a run starts told
        nothing of the source)."""
        primary = self.declared_rate
        if start is None:
            start = self._new_learned_start()
        if start is None:
            return None
        if self.adaptive:
            return AdaptiveRate(start, ceiling=primary or 10_000.0)
        assert primary is not None
        return AdaptiveRate(start, ceiling=primary, ramp=False)

    def _new_learned_start(self) -> float | None:
        primary = self.declared_rate
        if self.adaptive:
            return self._start_rate or primary or 5.0
        if primary is None:
            return None
        # Burst 1 declares a source that takes one request per interval, no more: its own
        # bucket may be just as strict, and the way there jitters. Start a hair under the
        # declared rate (short jobs finish before a 429 could teach the margin); creeping
        # up while healthy, it reaches the declared rate within seconds.
        return primary * _STRICT_START if self.burst == 1 else primary

    def reset(self) -> None:
        """Forget bookings, the fleet and what was learned (a new run starts)."""
        self.schedule.reset()
        self.learned = self._new_learned()
        self._spaced = 0
        self.strict_spacing = False
        self._clean = 0
        self.schedule.take_back(0.0)
        self.window = WindowWatch()
        if self.learned is not None and self.schedule.pace is not None:
            self.schedule.pace.set_rate(self.learned.rate, self.run_burst)
        self._said_slower = False
        self.resumed = False
        self.found = None

    def resume(self, rate: float) -> bool:
        """Start where a run before left the rate (``rate``, see
        :meth:`AdaptiveRate.settled`), and say so once; True when it does. A declared
        rate starts there, never over where it would start told nothing, and searches
        upwards (see :meth:`AdaptiveRate.resume`). An adaptive one ramps again, from
        half the limit found when that is over its start rate: what a run found may be
        stale either way, and a ramp finds the limit from there within a second or two,
        through the 429s any ramp draws (resumed at the limit, or searching up from it,
        a limit that had since halved drew three times the 429s and several pauses); a
        limit found under its start rate is started at, searching upwards as a declared
        rate does. Either way the limit found is what ``plan`` counts at."""
        learned, start = self.learned, self._new_learned_start()
        if learned is None or start is None:
            return False
        declared = self.declared_rate
        what = ""
        if self.adaptive:
            self.found = rate
            if 0.5 * rate > start:
                begin = min(0.5 * rate, declared or math.inf)
                self.learned = self._new_learned(begin)
                what = (
                    f"starts at {begin:.3g}/s, half the limit the last run found "
                    f"({rate:.3g}/s), and ramps up from there"
                )
            elif rate < start:
                # Under its start rate (a 2/s source, started at 5/s: 6 % refused as each
                # run ramped again): from there, searching upwards, as a declared rate.
                learned.resume(rate)
                what = f"starts at {learned.rate:.3g}/s, the limit the last run found"
        else:
            if rate >= start:
                return False
            learned.resume(rate)
            if declared is not None and learned.rate < 0.9 * declared:
                self._said_slower = True
                what = (
                    f"declared {declared:g}/s is more than the source accepted in the last "
                    f"run: starts at {learned.rate:.3g}/s, the rate it learned"
                )
        self.resumed = True
        if self.schedule.pace is not None and self.learned is not None:
            self.schedule.pace.set_rate(self.learned.rate, self.run_burst)
        if what:
            self._tell(what, 0.0, "rate")
        return True

    def follow(self, rate: float, now: float) -> None:
        """Run at ``rate``, the pace a fleet books at (see
        :func:`~backfill.ratelimit.fleetpace.fleet_pace`), searching upwards from it as
        a rate a run before learned does: the rate this process learned is then the
        fleet's when it books alone, and a declared rate the fleet does not run at is
        said once, as one process says it."""
        learned = self.learned
        if learned is None or self.adaptive:
            return
        learned.resume(rate)
        self._paced(now)

    def description(self) -> str:
        """The declared limits, and the rate run at when it differs (see
        :meth:`Resource.rate_description`)."""
        parts = [str(lim) for lim in self.limits]
        learned = self.learned
        if learned is not None and self.adaptive:
            parts.append(f"adaptive, now {learned.rate:.2f}/s")
            if self.found is not None and learned.threshold is None:
                # (Ramping towards it: once this run finds the limit, its own rate says.)
                parts[-1] += f" ({self.found:.3g}/s found by the last run)"
        elif learned is not None and learned.rate < 0.995 * learned.ceiling:
            parts[0] += f" (running at {learned.rate:.3g}/s)"
        return ", ".join(parts)

    @property
    def rate(self) -> float:
        """The sustained rate run at now (see :attr:`Resource.rate`)."""
        rates = [lim.rate for lim in self.limits if lim.period <= QUOTA_PERIOD]
        if self.learned is not None:
            rates.append(self.learned.rate)
        return min(rates or [lim.rate for lim in self.limits] or [math.inf])

    def seconds_for(self, requests: float) -> float:
        """The least time ``requests`` need (see :meth:`Resource.seconds_for`)."""
        rates = [lim.rate for lim in self.limits if lim.period <= QUOTA_PERIOD]
        if self.learned is not None and (self.adaptive or self.resumed):
            # (A declared rate otherwise starts a hair under it, and is there in seconds;
            # started at what a run before learned, it runs there. An adaptive one ramps
            # to the limit a run before found within a second or two.)
            ramping = self.found is not None and self.learned.threshold is None
            rates.append(self.found if ramping else self.learned.rate)  # type: ignore[arg-type]
        seconds = requests / min(rates) if rates else 0.0
        for lim in self.limits:
            if lim.period > QUOTA_PERIOD and requests > lim.count:
                seconds = max(seconds, (math.ceil(requests / lim.count) - 1) * lim.period)
        return seconds

    @property
    def rate_interval(self) -> float:
        """Seconds between starts at the per-second rate declared (0: none declared)."""
        rates = [lim.rate for lim in self.limits if lim.period <= QUOTA_PERIOD]
        return 1.0 / min(rates) if rates else 0.0

    # -- what answers teach it -------------------------------------------------------

    def on_latency(self, latency: float | None, now: float) -> None:
        """An adaptive rate slows down when the source starts queueing."""
        learned = self.learned
        if (
            latency is not None
            and learned is not None
            and self.adaptive
            and self._latency_rising(latency)
            and learned.on_rate_limited(now, now)
        ):
            self._slowed(learned, now)

    def on_refused(self, now: float, resume_at: float, *, sent: float | None = None) -> bool:
        """A 429 of a request sent at ``sent`` (None: not known); traffic restarts at
        ``resume_at``. True when it took the learned rate a small step down (10 % at
        most): the rate was about right, and the request came a hair early (what a
        fleet's pace learns from: see :func:`~backfill.ratelimit.fleetpace.fleet_pace`),
        not a limit far under it or a source down (it came further down)."""
        learned = self.learned
        if learned is None:
            return False
        self.window.refused(now if sent is None else sent)
        if self._clean < TAKE_BACK_AFTER:
            self._clean = 0
        before = learned.rate
        if not learned.on_rate_limited(now, resume_at, sent=sent):
            return False
        self._slowed(learned, now)
        return 0.9 * before <= learned.rate < before

    @property
    def catch_up(self) -> float:
        """The share of an interval a start taken late takes back from the next one (see
        :attr:`AdaptiveRate.catch_up`)."""
        pace = self.schedule.pace
        return 0.0 if pace is None else pace.catch_up

    @property
    def _take_back(self) -> float:
        """What a turn woken late takes back (see :meth:`Schedule.take_back`): at a burst
        of one (declared, or an adaptive resource's); a declared burst keeps room of its
        own, and one of two, run one at a time, keeps its second request for the way's
        jitter."""
        return FAST_TAKE_BACK if self.burst == 1 else 0.0

    @property
    def took_back(self) -> bool:
        """Whether turns woken late have been taken back this run (a declared burst of
        one, two hundred answers in a row: see on_success)."""
        return self._take_back > 0.0 and self._clean >= TAKE_BACK_AFTER

    def refused_taken_back(self) -> None:
        """The source refused a start closer than an interval to the one before: it is
        strict about its spacing, and a turn woken late takes nothing back from the next
        for the rest of the run (see :meth:`Schedule.take_back`)."""
        self.strict_spacing = True
        self.schedule.take_back(0.0)

    def next_start(self, now: float) -> float:
        """The earliest the rate run at lets the next request start."""
        pace = self.schedule.pace
        return now if pace is None else pace.earliest(now)

    def _slowed(self, learned: AdaptiveRate, now: float) -> None:
        """The learned rate came down: requests not yet started go at it; one sent
        before the first start a decrease spaces was spaced at the rate before it (the
        burst of 429s that follows adjusts the decrease, and is all its echo)."""
        self._paced(now)
        if learned.decreases != self._spaced:
            self._spaced = learned.decreases
            learned.paced_from = self.next_start(now)

    def on_start(self, now: float) -> None:
        """A request starts now."""
        learned = self.learned
        if learned is not None:
            learned.on_start(now)
            if self.schedule.pace is not None:
                # (An outage may begin, or a header be taken, with the rate unchanged.)
                self.schedule.pace.catch_up = learned.catch_up

    def on_success(self, now: float, *, sent: float | None = None) -> None:
        """An accepted request (``sent``: when it went, when known)."""
        learned = self.learned
        if learned is None:
            return
        if self._clean < TAKE_BACK_AFTER:
            self._clean += 1
            if self._clean == TAKE_BACK_AFTER and not self.strict_spacing:
                # Two hundred answers in a row (two seconds at 100/s): turns woken late
                # take time back from now on (see Schedule.take_back). Not sooner: a
                # strict source that the way's jitter makes refuse one request in a
                # hundred or two would refuse the first taken back too, and a run's
                # first 429s, with little history, cut the rate hard. Taken back from
                # a run's start, a strict bucket of one at 25-100/s refused twice as
                # often in five-second runs (8-24 of 1,600-4,100 -> 19-35); after two
                # hundred answers, as often at 25-50/s (8-23), 24 -> 32 at 100/s.
                self.schedule.take_back(self._take_back)
        window = self.window
        window.accepted(now if sent is None else sent)
        changed = learned.on_success(now, sent=sent, window=window.steady)
        if window.cycle is not None and learned.back_to(window.cycle, now):
            # Back after a run of refusals, a whole cycle since the last one: at least
            # what the source took over that cycle (see AdaptiveRate.back_to).
            changed = True
        if changed:
            self._paced(now)

    def on_header_limit(self, limit: int | None, window: float | None, now: float) -> None:
        """The source said its limit: ``limit`` requests per ``window`` seconds. Over a
        window of a minute or less it is a pace, taken at once; over a longer one (5000
        an hour, 1000 a day) a quota, which no pace should spread over its whole window
        (1000 a day is one request every 86 s): requests go at the resource's own rate
        until the source says none remain (RateLimit-Remaining: 0), and wait for its
        reset then. So does a window of absurd length."""
        if (
            self.learned is not None
            and limit
            and window
            and window <= HEADER_PACE_WINDOW
            and self.learned.on_header_limit(limit / window, now)
        ):
            self._paced(now)

    def _paced(self, now: float) -> None:
        """The learned rate changed: requests not yet started go at the new one. A
        declared rate the source does not accept is said once a run."""
        learned = self.learned
        assert learned is not None and self.schedule.pace is not None
        self.schedule.pace.set_rate(learned.rate, self.run_burst, now, catch_up=learned.catch_up)
        if not self.adaptive and not self._said_slower and learned.rate < 0.9 * learned.ceiling:
            self._said_slower = True
            self._tell(
                f"declared {learned.ceiling:g}/s is more than the source accepts: running at "
                f"{learned.rate:.3g}/s",
                0.0,
                "rate",
            )

    def _latency_rising(self, latency: float) -> bool:
        """True when latency has quadrupled over its healthy level, by 200 ms or more: the
        source is queueing (a busy client machine alone must not look like that)."""
        self._latency_ewma = (
            latency if self._latency_ewma is None else 0.9 * self._latency_ewma + 0.1 * latency
        )
        if self._latency_floor is None or self._latency_ewma < self._latency_floor:
            self._latency_floor = self._latency_ewma
        self._latency_samples += 1
        return (
            self._latency_samples > 20
            and self._latency_floor > 0
            and self._latency_ewma > 4 * self._latency_floor + 0.2
        )
