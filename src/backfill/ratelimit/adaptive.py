"""The rate a resource runs at, learned from what the source accepts."""

from __future__ import annotations

import collections
import itertools
import math


class AdaptiveRate:
    """The rate a resource runs at, learned from the source under a ceiling.

    Every resource with a per-second rate has one. Declared (``ramp=False``), it starts at
    the declared rate, which stays its ceiling: a source that refuses requests at that
    rate (a stricter bucket than declared, or latency jitter that bunches requests on the
    way to a strict one) lowers it, and it creeps back up while the source is healthy.
    Adaptive (``ramp=True``), it starts low and ramps up fast (the rate grows sixfold every
    second, never past four times what actually got through) until the first 429.

    What a 429 does depends on what the last answers say:

    * refused now and then (four accepted or more since the rate last came down, that
      decrease's echoes aside): the rate is about right
      and requests bunched on the way; it goes 3 % down, and the creep upwards, one
      step of 1 % at a time, slows down (each step waits twice as long, up to a minute).
      Further down, 15 % at most, when the refusals' cadence says the source takes
      less (what it took between two refusals, per second: a bucket of three or five
      hides a rate 20-30 % over its limit and refuses one request at a time; see
      _cadence);
    * mostly refused: it drops to just under what the source measurably accepted (or,
      too soon after a pause to time it, to what it accepted over the whole cycle), then
      *searches* upwards in steps of 10 %, each held for a second or 4 requests and
      taken only once the client used it (90 % of it went: a step the client could
      not send says nothing of the source); the step that draws a 429 is taken back,
      and the search ends there (the creep upwards then waits four times its usual
      interval).

    A ramp's first 429, every answer before it accepted, drops the rate just under what
    got through over the last half second. When more 429s follow from the requests then
    on their way, the source's bucket had let the ramp far past its limit: the search
    goes straight back to a hair under what got through (it did), then on in steps of
    5 % up to the ramp's rate, as what got through over a ramp falls short of the limit
    (84/s of 100 over real HTTP); the step that draws a 429 there is taken back and 8 %
    more (a bucket that big hides a step's few percent over its limit for a second or
    two, so the step before may have been over it too). A lone 429 (a bucket of one
    refuses at once, when what got through was still the ramp's own pace) leaves the
    search its 10 % steps. A drop to under what was measured to get through while mostly
    refused (about the limit, then) keeps its search under that.

    The 429s of requests sent at the rate before a decrease (before the first start the
    slower rate spaced) are its echoes: they say how far over the limit that rate was,
    not that the slower one is. Every echo counts in that estimate (a source seconds
    away answers for seconds of them); the echoes of a decrease to a rate long accepted
    (a jitter step, the end of a search) change nothing.

    A rate is judged by the answers of requests sent at it, when answers say when their
    requests went (``sent``): a 429 never leaves the rate above just under the one its
    request went at (a ramp or a search went on while the answer was on its way), and a
    search step waits for most of its own answers before the next.

    Refused all along for seconds (an outage, maintenance), the rate halves at each
    refusal, but when the source took twenty requests or more since its last outage, no
    further than a request every quarter of the outage's length so far (at most fifteen
    seconds apart, and under what it took in the seconds before); the first accepted
    again takes it back to half of that, and a search doubles it up from there (down
    within seconds of the start, up to the rate run just before: a start slow under load
    counts under it). Down within the run's first requests, too few taken to keep a rate
    through it, the limit is found again once the source is back: a declared rate
    doubles back up towards the rate run before, an adaptive one ramps again from its
    start rate. An outage that cut an adaptive ramp short (its first 429 was the
    outage's) leaves no limit found: back at what the ramp had taken, the search goes on
    upwards in its steps until a 429.

    Refusals in a row (two or more over a second or more, none accepted between: a
    source down for a few seconds, too few refusals to count as an outage, or a window
    used up until its reset) say the source refused, not how fast it takes: each halved
    the rate, which a slow declared rate (1/s) never came back from. Once a request sent
    after them is accepted, the rate goes back to where the run's first refusal left it
    and searches on, as after an outage, to the rate that refusal came at (the one a way
    back up was heading to, when the run cut it short). Not when the run ended the way
    the runs before did, the same share taken over each cycle: a fixed window kept, its
    rate set by what it takes (see back_to), nor through an outage, whose own way back
    up knows what the source took for long. A step of that way up that draws a 429
    caps the next one at the step before (a source whose limit fell near zero takes a
    request now and then, and each would start another), and leaves what the source
    took for long as it was. Three refusals over four seconds, none accepted, are an
    outage too (at 1/s, the rate halved at each, a fourth came fifteen seconds in).

    A rate found (no search or way back up under way) that is far under what the source
    took before (under 70 % of ``_sustained``: the most, over the run, of the least of
    three separate ten whole seconds without a 429, so that a bucket's savings, spent in
    seconds after a pause, do not count) searches back up towards its ceiling in the usual
    steps once it has held, no 429, for fifteen seconds, sixty requests and twenty times
    the longest pause a 429 caused: a limit that dipped (the source's own load, a
    neighbour's backfill) may be back, and the creep, 1 % a step, took many minutes to
    get there (20/s dipping to 5/s for half a minute: 4.6/s minutes after it was back).
    A 429 before the search is back at ``_sustained`` takes the rate back to where it
    began, its first step kept if that one held; the next search waits twice as long (up
    to ten minutes) and takes a first step half as big (down to 1 %). Back there, the
    search goes on as any does; a 429 that takes the rate far under again counts as the
    search refused, and ten whole seconds without a 429 at it make the next search a
    fresh one. The creep goes on meanwhile: a limit that fell for good, or rose again
    under what the source once took, is still crept to.

    With nothing to go by yet, a 429 takes a declared rate 10 % down, a ramping one back
    to the step before its last growth (the start rate: 10 % under it) the first time and
    by half after that, and searches from there. A search never steps more than halfway to
    the rate that drew the 429 (a limit right under it is approached, not crossed), and
    ends 3-4 % under it (the jitter margin).
    """

    _JITTER_STEP = 0.97
    _SEARCH_STEP = 1.10
    _PAST_STEP = 1.05
    _PAST_BACK = 0.92
    _CREEP_STEP = 0.01
    _MAX_CREEP_EVERY = 60.0
    # Healthy for _PROBE_EVERY seconds (no 429) at under _PROBE_UNDER of what the source
    # took before, the rate searches back up (see _probe_due), its first step
    # _PROBE_STEP; each search that draws a 429 doubles the wait before the next, up to
    # _PROBE_LONGEST, and halves its first step, down to _CREEP_STEP.
    _PROBE_UNDER = 0.7
    _PROBE_EVERY = 15.0
    _PROBE_LONGEST = 600.0
    _PROBE_STEP = 0.10
    # Refusals in a row over _OUTAGE_GAP seconds, none accepted: the source refused all (a
    # limit that fell still takes some requests every second or so).
    _OUTAGE_RUN = 4
    _OUTAGE_GAP = 2.0
    # Through an outage the rate comes down no further than one request every quarter of
    # the outage's length so far (at most _OUTAGE_LONGEST apart), under what the source
    # took just before; once _ARMED_AFTER requests were accepted since the last outage.
    _OUTAGE_SHARE = 0.25
    _OUTAGE_LONGEST = 15.0
    _ARMED_AFTER = 20
    # A header's figure refused at soon after it was taken (within _TOLD_SPAN seconds,
    # _TOLD_REFUSALS times in a row) only caps the rate for _TOLD_WAIT seconds, doubled
    # each time it is refused again soon after it was taken back, up to
    # _TOLD_WAIT_LONGEST.
    # A ramp grows only while the client starts this share of its step's turns at least.
    _RAMP_USED = 0.7
    _TOLD_REFUSALS = 2
    _TOLD_SPAN = 2.0
    _TOLD_WAIT = 5.0
    _TOLD_WAIT_LONGEST = 40.0

    def __init__(
        self,
        start: float,
        *,
        floor: float = 0.05,
        ceiling: float = 10_000.0,
        margin: float = 0.9,
        ramp: bool = True,
    ) -> None:
        self.rate = min(max(start, floor), ceiling)
        self.floor = floor
        self.ceiling = ceiling
        self.margin = margin
        self.ramp = ramp
        # Known to be about the source's limit (None while ramping up to find it).
        self.threshold: float | None = None if ramp else self.rate
        self.decreases = 0
        self._resumed = False  # started at what a run before learned (see resume)
        self._accepted: collections.deque[float] = collections.deque()
        # The last answers since the last decrease: accepted (True) or refused (False).
        self._outcomes: collections.deque[bool] = collections.deque(maxlen=20)
        self._measure_from = -math.inf
        self._last_update: float | None = None
        # Since _last_update (see _restart): requests accepted, those of them sent since
        # (known once answers say when their requests went: _sent_known), and started.
        self._step_answers = 0
        self._step_own = 0
        self._step_starts = 0
        self._starts_known = False  # on_start is called: the client says what it sends
        self._sent_known = False  # answers say when their requests went
        # Answers of the last decrease's echoes (requests sent before the first start the
        # rate it brought spaced), once answers say when their requests went.
        self._echoes_accepted = 0
        self._echoes_refused = 0
        self._dropped_to = self.rate  # the rate the last decrease brought
        self._last_decrease = -math.inf
        # The most the source took for ten whole seconds since the last decrease (see
        # settled), and when the last answer came.
        self._held = 0.0
        self._answer_at = -math.inf
        # Searching upwards from a coarse estimate: the last rate that drew no 429.
        self._good: float | None = None
        self._creep_every: float | None = None
        # Searching back up towards what the source took before (see _probe_due), from
        # where, how long a healthy rate waits before the next such search, and its first
        # step.
        self._probing = False
        self._probe_from = self.rate
        self._probe_every = self._PROBE_EVERY
        self._probe_step = self._PROBE_STEP
        # When the search back up under way got back to that best (None: not yet), and
        # since when the rate is far under it (see _far_under; inf: it is not).
        self._probe_reached: float | None = None
        self._far_since = math.inf
        self._since_decrease = 0  # requests accepted since the last decrease
        self._since_decrease_own = 0  # of them, sent since (known when answers say)
        # The best rate the source took for long: the most that got through in ten whole
        # seconds without a 429, at most the rate run then (see _prove).
        self._proven = 0.0
        # The most the source took in each of three separate ten whole seconds without a
        # 429 (see _prove), and the longest pause a 429 caused.
        self._sustained = 0.0
        self._longest_pause = 0.0
        self._refused_run = 0  # 429s since the last accepted answer
        self._accepted_at = -math.inf  # when that was
        self._accepted_sent = -math.inf  # when its request went (when answers say)
        self._run_sent = -math.inf  # when the first of those 429s' requests went
        self._run_last = -math.inf  # ... and the last
        # The rate the run's first 429 came at, and the rate it left (see _back_from_run).
        self._run_rate = self.rate
        self._run_left = self.rate
        self._run_proven = 0.0
        # A way back up after a run of refusals under way, and the step before the last
        # one refused (the next goes no further: a source whose limit fell near zero
        # takes a request now and then, and each would start another).
        self._run_search = False
        self._run_cap = math.inf
        # Since the last way back up, _OUTAGE_RUN 429s in a row over two seconds at least.
        self._outage = False
        # What the source took per second before the last outage (0: not known, or not
        # floored), and requests accepted since it began (see _outage_began).
        self._took = 0.0
        self._ran = 0.0  # the rate run when the last outage began (see _outage_began)
        self._ran_before = 0.0
        # The limit was found again after an outage early in the run (once a run: see
        # _on_success).
        self._found_again = False
        self._outages = 0  # outages begun (see _outage_began)
        self._taken_before = False  # answers were accepted before the last outage
        # When a ramp last drew its first 429, and whether the last outage cut a ramp
        # short: nothing sent after that 429 came was accepted (see _outage_began).
        self._ramp_ended = -math.inf
        self._cut_ramp = False
        self._start = self.rate
        self._ok_since_outage = 0
        self._first_ok = math.inf  # the first accepted answer
        # The last limit a source's header stated (per second); the lowest figure a
        # request sent at the rate it set was refused at, only a cap until _told_until,
        # and how long that lasts (see on_header_limit).
        self._told: float | None = None
        self._told_refused: float | None = None
        self._told_until = -math.inf
        self._told_wait = self._TOLD_WAIT
        # When the header's figure last raised the rate, whether a refusal at it was
        # counted since, and the refusals in a row that came soon after it did.
        self._told_raised_at = -math.inf
        self._told_counted = True
        self._told_quick = 0
        # Answers accepted per whole second of the last eleven: [second, count].
        self._per_second: collections.deque[list[int]] = collections.deque(maxlen=11)
        # What the source took over the last three separate ten whole seconds without a
        # 429, and when the last of them ended (see _prove: _sustained).
        self._windows: collections.deque[float] = collections.deque(maxlen=3)
        self._windows_end = -math.inf
        self._recovering = False  # searching back up to _proven after an outage
        self._paused = 0.0  # how long the last decrease's 429 paused the resource
        self._rate_before = self.rate  # the rate the last decrease came down from
        self._answered: collections.deque[float] = collections.deque()  # every answer
        # Ramping: the rate before the last growth step (accepted at, as far as known).
        self._ramp_prev = self.rate * 0.9
        self._grown_at = math.inf  # when a ramp last grew (inf: not since it began)
        # The rate that drew the 429 a search started from: the search stays under it.
        self._bad: float | None = None
        self._searched = False  # the last decrease ended a search
        # What got through before a ramp's first 429 (see on_rate_limited), and whether
        # it was measured over the ramp (short of the limit) or while refused (about it).
        self._got_through: float | None = None
        self._over_ramp = False
        # The rate that drew a ramp's 429s, while the search stays under what got through
        # (an estimate, not a 429): past it, the search goes on in small steps up to this.
        self._past_estimate: float | None = None
        self._small_steps = False
        # The first start the rate spaced after its last decrease (set by its pace).
        self.paced_from = -math.inf
        self._earlier = -math.inf  # the same for the decrease before the last
        # The rates run at, each from when, and whether a source's header set it: (since,
        # rate, told), the last ones (see rate_at).
        self._history: collections.deque[tuple[float, float, bool]] = collections.deque(
            [(-math.inf, self.rate, False)], maxlen=256
        )
        # When the last requests started (when the client says), when the last refused
        # ones went, and when those that brought the rate down went (see _cadence).
        self._starts: collections.deque[float] = collections.deque(maxlen=1024)
        self._refused_sent: collections.deque[float] = collections.deque(maxlen=512)
        self._decreased_sent: collections.deque[float] = collections.deque(maxlen=6)

    def settled(self) -> float | None:
        """What a later run may start at (see :meth:`resume`): the rate the source taught
        this one, as it runs now (a search's last step accepted, while it searches) or
        the most it took for ten whole seconds, once the source has taken twenty
        requests or more since it was last down. None when
        it taught nothing, or nothing that holds: a ramp that met no 429 yet, a declared
        rate never refused (the next run starts at its declared rate, as this one did),
        a source down or on its way back up (the floor an outage took the rate to, or
        the first second's count after it, would start the next run there)."""
        if self.threshold is None or self._outage or self._recovering or self._run_search:
            return None
        if not self.ramp and self.decreases == 0 and not self._resumed:
            return None
        if self._ok_since_outage < self._ARMED_AFTER:
            return None
        now = self._good if self._good is not None else self.rate
        # What the source took for ten whole seconds, when more: since the last decrease
        # (a limit that fell for good, or a bucket's savings early on, is not the source's
        # now); over the whole run when it came down in the run's last ten seconds (a
        # limit that dipped as the run ended: a correct 5/s left 0.16/s on record).
        recent = self._answer_at - self._last_decrease < 10.0
        took = self._proven if recent else self._held
        if recent and self._far_since <= self._answer_at - 10.0:
            # Far under what the source took before for ten seconds and more (a limit
            # that fell, searched back up in vain): the decrease was a search's refusal,
            # not a dip as the run ended.
            took = self._held
        return max(now, min(took, self.ceiling))

    def resume(self, rate: float) -> None:
        """Start a declared rate at ``rate``, what a run before learned of the source
        (see :meth:`settled`), under the ceiling, and search upwards from there, not
        refused down to it again. What a run learned may be stale (a limit that dipped
        as it ended, a source since sped up), so the search goes on towards the declared
        rate in steps of 10 %, each held a second or four requests; the step that draws
        a 429 is taken back and the search ends there, as any search does. (An adaptive
        rate is not resumed here: it ramps again, from half the limit a run found; see
        Pace.resume.)"""
        self.rate = self.threshold = min(max(rate, self.floor), self.ceiling)
        self._resumed = True
        self._ramp_prev = self._dropped_to = self._rate_before = self.rate
        self._run_rate = self._run_left = self.rate
        self._history = collections.deque([(-math.inf, self.rate, False)], maxlen=256)
        if self.rate < self.ceiling:
            self._good, self._bad = self.rate, self.ceiling

    @property
    def catch_up(self) -> float:
        """The share of an interval a start taken late (a busy loop or CPU woke its turn
        after its instant) may take back from the next one: half the room between the
        rate and the one its last 429 came at, at most 5 %.

        Spaced from the late start, every late turn is time lost for good: a few
        milliseconds a turn at 20/s on a busy machine, 3-6 % of the rate. Taken back
        from the next turn, the two come closer than the rate's interval, never closer
        than that of a rate halfway (harmonic) between it and the one refused. Only an
        adaptive rate that came down from a 429, whose search or creep is not under way
        from an outage: a declared rate runs at its ceiling (a strict source's bucket
        of one refuses anything closer), and a ramp knows no rate refused yet.
        """
        if not self.ramp or self.threshold is None or self.decreases == 0:
            return 0.0
        if self._outage or self._recovering or self._told is not None:
            # (A source that states its limit is run a hair under it, as declared.)
            return 0.0
        return min(0.05, max(0.0, 0.5 * (1.0 - self.rate / self._rate_before)))

    def _accepted_rate(self, now: float) -> tuple[float, float] | None:
        """What the source accepted per second over the last half second (or ~8
        requests' worth at low rates), and the share of its answers refused, shrunk
        towards none (one refused in six is a noisy sample); None when too little was
        answered to tell. When we send faster than the source accepts, the first is its
        limit; longer windows would average in the ramp that led up to it."""
        window = self._window()
        start = max(self._measure_from, now - window)
        self._forget(now)
        span = now - start
        count = sum(1 for t in self._accepted if t >= start)
        offered = sum(1 for t in self._answered if t >= start)
        if span < 0.5 * window or count < 5:
            return None
        return count / span, (offered - count) / (offered + 1)

    def _window(self) -> float:
        return max(0.5, 8.0 / max(self.rate, 1e-9))

    def _forget(self, now: float) -> None:
        """Drop the answers older than any measure looks back (they would pile up
        between 429s: a long healthy run has no 429 at all): the window, a search's
        step held up to twice its second."""
        horizon = now - max(self._window(), 2.0)
        for log in (self._accepted, self._answered):
            while log and log[0] < horizon:
                log.popleft()

    def rate_at(self, instant: float) -> float | None:
        """The rate run at ``instant`` (None: too long ago to tell; the last 256 changes
        are kept)."""
        for since, rate, _ in reversed(self._history):
            if since <= instant:
                return rate
        return None

    def rose_between(self, start: float, end: float) -> bool:
        """Whether the rate run at ``end`` is one it went up to by its own steps (a search,
        the creep, a ramp) since ``start``; not one a source's header set, which may
        overstate its limit."""
        before: float | None = None
        rose = in_force_told = False
        for since, rate, told in self._history:
            if since > end:
                break
            if since > start and before is not None and rate > before and not told:
                rose = True
            before = rate
            in_force_told = told
        return rose and not in_force_told

    def _ramp_untried(self) -> bool:
        """Whether a 429 is a ramp's first after it grew, too few answers to measure what
        got through: the answers before it were accepted at the ramp's slower rates and
        say nothing of the one it grew to. A source a second away refused a ramp at three
        times its limit; read as a strict source's jitter at about the right rate, it
        came down 3 %, then 10 % at each 429 after, seconds over its limit. (A ramp's
        first 429 before it grew at all says its start rate is over the limit, as any
        rate refused now and then is.)"""
        return self.ramp and self.threshold is None and self._grown_at < math.inf

    def _noted(self, now: float, changed: bool, *, told: bool = False) -> bool:
        if self._history[-1][1] != self.rate:
            self._history.append((now, self.rate, told))
        return changed

    def on_rate_limited(self, now: float, resume_at: float, *, sent: float | None = None) -> bool:
        """A 429 (or a clearly congested source): slow down; True when the rate changed.
        Never faster than just under the rate its request was sent at, when that was
        slower (a ramp, or a search, went on while the answer was on its way)."""
        changed = self._on_rate_limited(now, resume_at, sent)
        if self._refused_run == 1:
            self._run_left = self.rate
        return self._noted(now, changed)

    def _on_rate_limited(self, now: float, resume_at: float, sent: float | None) -> bool:
        """See :meth:`on_rate_limited`.

        ``resume_at`` is when traffic restarts after the pause this 429 caused (``now``:
        none); ``sent``, when known, is when the refused request went: one sent after the
        last decrease (and not before the first start the rate it brought spaced: its turn
        was taken at the rate before) was refused at the rate decreased to, and is no
        echo of it.
        """
        self._answer_at = max(self._answer_at, now)
        if sent is not None and sent < self._earlier:
            # Sent before an earlier decrease spaced its first start, answered late: that
            # one's echo, which says nothing of the last one.
            return False
        self._outcomes.append(False)
        self._answered.append(now)
        self._refused_run += 1
        if sent is not None:
            self._refused_sent.append(sent)
        if self._told is not None and now >= self._told_until:
            went = self.rate_at(sent) if sent is not None else self.rate
            if went is None or went >= 0.95 * min(self.ceiling, 0.98 * self._told):
                self._header_refusal(now)
        sent_when = now if sent is None else sent
        if self._refused_run == 1:
            self._run_sent = self._run_last = sent_when
            self._run_rate = self.rate_at(sent_when) or self.rate
            if self._recovering and self._bad is not None:
                # A way back up under way: the run may be another outage, not the limit.
                self._run_rate = max(self._run_rate, self._bad)
            self._run_proven = self._proven
        else:
            self._run_last = max(self._run_last, sent_when)
        if not self._outage and (
            (self._refused_run >= self._OUTAGE_RUN and now - self._accepted_at >= self._OUTAGE_GAP)
            or (self._refused_run >= 3 and now - self._accepted_at >= 2.0 * self._OUTAGE_GAP)
        ):
            self._outage_began()
        if (
            now - self._last_decrease < 1.0
            if sent is None
            else sent < max(self._last_decrease, self.paced_from)
        ):
            # The same burst of 429s: the requests that were on their way answer now
            # (known by when they went, however late they answer; else by answering
            # within a second), and how many of them are refused says how far over the
            # limit they were sent. They went at the rate before: no refusal at this one.
            if self._got_through is not None and self._bad is not None:
                # More than one refused after a ramp's first 429: its bucket had let the
                # ramp far past the limit. The search stays under what got through (about
                # the limit), past it only in small steps when it was measured over the
                # ramp (short of the limit).
                if self._over_ramp and self._got_through < self._bad:
                    self._past_estimate = self._bad
                self._bad = min(self._bad, self._got_through)
                self._got_through = None
            if sent is None:
                refused, answered = self._outcomes.count(False), len(self._outcomes)
            else:
                # Every echo (a source seconds away answers for seconds of them, and
                # the share among the last few swings): the estimate only sharpens.
                self._echoes_refused += 1
                refused = self._echoes_refused
                answered = refused + self._echoes_accepted
            # Shrunk towards none refused: a handful of answers is a noisy sample; and
            # never all of them (an outage's echoes would take the rate to its floor,
            # and a search from there back to a live source's limit takes hours).
            share = min(refused / (answered + 1), 20.0 / 21.0)
            known = sent is not None and self._good is None
            if answered < 4 or share <= 0.3 or (known and (answered < 8 or share <= 0.5)):
                # (Known by when they went, echoes of a decrease to a rate known to be
                # accepted, the last search's or a jitter step's, say little of it: a
                # bucket of one refuses every other request sent a hair too fast. Most
                # of them refused, the source's limit fell far under it.)
                return False
            target = max(self.floor, self._rate_before * (1.0 - share))
            if sent is not None:
                # The latest estimate, never above the decrease's own (it may rise back
                # towards it: the first echoes may be the unluckiest).
                target = min(target, self._dropped_to)
            target = self._floored(target, now)
            if sent is not None:
                if abs(target - self.rate) < 1e-9 * self.rate:
                    return False
            elif target >= self.rate:
                return False
            self.threshold = self.rate = target
            self._good = target
            if self._probing and self._far_under():
                # (A search back up that got back there, then far under again: see below.)
                self._probe_failed()
            # The search's first step is held a second too, from when traffic restarts
            # (the answers meanwhile went at the rate before).
            self._restart(max(now, self._last_update or now))
            return True
        # A search back up (see _probe_due) refused before it got back to what the source
        # took before: the limit is still under that, and its steps, a second each, may
        # have gone past it unrefused for a while (a bucket of five lets 10 % over 2.5/s
        # through for twenty seconds). The rate goes back to where the search began, its
        # first step kept when that one held; the next search waits twice as long and its
        # first step is half this one's. (Refused after it got back there: see the end.)
        probed_back: float | None = None
        if self._probing and self._probe_reached is None:
            first_step = self._probe_from * (1.0 + self._probe_step)
            probed_back = max(self._probe_from, min(self._good or self.rate, first_step))
            self._probe_step = max(self._CREEP_STEP, 0.5 * self._probe_step)
            self._probe_failed()
        was_recovering = self._recovering
        if was_recovering:
            # Refused on the way back up after an outage: the source's limit fell under
            # the rate it took before, or it is not quite back. What it took on the way
            # up is what it is known to take (proven anew after ten healthy seconds): no
            # second way up.
            self._recovering = False
            if self._run_search:
                # The way back up after a run of refusals (see _back_from_run): the next
                # one goes no further than the step before, and what the source took for
                # long (an outage's to come back to) stands.
                self._run_search = False
                self._run_cap = self._good or self.rate
            else:
                self._proven = min(self._proven, self._good or self.rate)
                self._took = min(self._took, self._good or self.rate)
                self._ran = min(self._ran, self._good or self.rate)
        # Accepted since the last decrease: every other 429 since was one of its echoes
        # (any other is a decrease), so this one is the only refusal at the rate it brought.
        accepted_since = self._outcomes.count(True)
        measured = self._accepted_rate(now)
        accepted = measured[0] if measured is not None else None
        refused_share = measured[1] if measured is not None else 0.0
        # Refused again soon after a pause (the active part of the cycle shorter than
        # the pause itself): what it accepted over the whole cycle, pause included.
        span = now - self._last_decrease
        cycle = (
            self._since_decrease / span
            if self._since_decrease >= 4 and span > 0 and span - self._paused < 1.5 * self._paused
            else None
        )
        search = True
        got_through: float | None = None
        over_ramp = False
        if self.ramp and self.threshold is None and accepted is not None:
            # The first 429 of a ramp: the source's bucket let the ramp past its limit
            # unrefused until it ran dry, so every answer before this one was accepted;
            # what got through over the last half second is about the limit (a little
            # over: the bucket's savings went too). Search up from under it; more 429s
            # of this burst keep the search under it.
            target, got_through, over_ramp = self.margin * accepted, accepted, True
        elif self._good is not None and self._good < self.rate:
            # The search's last step drew it: the rate before that step is the limit.
            # Creeping above it is a gamble (a 429 costs a whole pause): slowly.
            # (On the way back up after an outage: the search goes on from there in
            # ordinary steps, under the rate refused.)
            target, search = self._good, was_recovering
            if self._small_steps:
                # Past a ramp's estimate, its bucket known to let a ramp far past its
                # limit: a bucket that big hides a step's few percent over the limit for
                # a while (ten, 5 % over 100/s: two seconds), so the step before, held a
                # second, may have been over it too: back a step further. (A bucket of
                # one refuses the first request over its limit: the step before was
                # under it.)
                target *= self._PAST_BACK
            if not search and probed_back is None:
                # (Not after a search back up refused: the creep, on its own pace, is
                # what follows a limit that rose again under what the source once took.)
                self._creep_every = min(self._MAX_CREEP_EVERY, 4.0 * self._creep_base())
        elif accepted is not None and refused_share > 0.15:
            # Clearly sending faster than the source accepts: this refusal at the rate
            # run at, after the last decrease's echoes said the rate before was far over
            # (they count here; one refused in six answers is no clear sign: it drew a
            # drop to a sixth of the rate, one in seven a jitter step). Likewise, under
            # what got through, and more 429s of this burst keep the search under it.
            target = self.margin * accepted
        elif (
            cycle is not None
            and cycle < 0.85 * self.rate
            and accepted is None
            and not self._searched
        ):
            # Refused again soon after the last 429's pause, each time once the burst its
            # bucket saved up meanwhile was spent (too few answers since to time them):
            # about its limit got through over the whole cycle. At most halve, then
            # search.
            target = self.margin * max(cycle, 0.5 * self.rate)
        elif (accepted_since >= 4 or self._searched) and not self._ramp_untried():
            # (Or the first 429 after a search ended on the step above: the rate is the
            # last one accepted, a hair too close to a strict limit. Not a ramp's first
            # after it grew: see _ramp_untried.)
            # Refused now and then at about the pace it accepts: a little too fast for a
            # strict bucket, or requests bunched on the way. A step down of 3 %, up to 10 %
            # when the last 429 was only moments and a few dozen requests ago (at 100/s, one
            # in three hundred refused says the rate is not 10 % over: a busy source, late
            # unevenly, refuses that many at its own limit); the creep back up slows.
            active = span - self._paused
            recent = min(0.3 / active, 3.0 / max(1, self._since_decrease)) if active > 0 else 0.1
            down = min(0.1, max(1.0 - self._JITTER_STEP, recent))
            if self._searched:
                # The search ended a step under the rate that drew its 429: the limit is
                # known to lie between, and this one is the way's jitter.
                down = 1.0 - self._JITTER_STEP
            target, search = self.rate * (1.0 - down), False
            cadence = self._cadence(sent)
            if cadence is not None and cadence < target:
                # The refusals' cadence says the limit is further under: there, 15 % a
                # refusal at most (a source that refuses now and then for other reasons,
                # its other clients', says a little less than the rate; now and then, by
                # chance, much less).
                target = max(self._CADENCE_DOWN * self.rate, cadence)
            self._creep_every = min(self._MAX_CREEP_EVERY, 2.0 * self._creep_base())
        elif (
            not self.ramp
            and self._since_decrease >= 10
            and (self.decreases == 0 or span - self._paused > 1.0)
        ):
            # Too early to measure, but plenty got through at this declared rate:
            # trust it, a little less.
            target = self.rate * 0.9
        elif self.ramp and self.threshold is None and self._since_decrease >= 1:
            # The first 429 of a ramp, with requests accepted before it: the step before
            # the last growth was accepted (at the start rate: 10 % under it), less the
            # margin a strict bucket needs against the way's jitter; at most a third of
            # the rate down (answers too sparse to trust let one step grow up to 16-fold,
            # and the search climbs 10 % a step). At most halving took a slow source's
            # ramp from 5 to 11/s back to 5.5/s only: a second 429 and pause.
            target = max(self.rate / 3.0, self._JITTER_STEP * min(self._ramp_prev, 0.9 * self.rate))
        else:
            # Refused almost at once (after a pause, or from the start): far too fast.
            target = self.rate * 0.5
        if self.ramp and self.threshold is None:
            self._ramp_ended = now
        self._searched = self._good is not None and self._good < self.rate
        self._bad = self.rate if search else None
        self._got_through = got_through
        self._over_ramp = over_ramp
        self._past_estimate = None
        self._small_steps = False
        if probed_back is not None:
            target = min(target, probed_back)
        if sent is not None:
            sent_at = self.rate_at(sent)
            if sent_at is not None and sent_at < self.rate:
                target = min(target, self._JITTER_STEP * sent_at)
        target = self._floored(target, now)
        self._rate_before = self.rate
        self.threshold = self.rate = max(self.floor, min(self.ceiling, target))
        self._good = self.rate if search else None
        self.decreases += 1
        if sent is not None:
            self._decreased_sent.append(sent)
        self._earlier = max(self._last_decrease, self.paced_from)
        self._last_decrease = now
        self._held = 0.0
        self._paused = max(0.0, resume_at - now)
        self._longest_pause = max(self._longest_pause, self._paused)
        self._measure_from = resume_at
        self._accepted.clear()
        self._answered.clear()
        self._outcomes.clear()
        self._echoes_accepted = self._echoes_refused = 0
        self._dropped_to = self.rate
        self._since_decrease = self._since_decrease_own = 0
        if self._probing and self._far_under():
            # Back at what the source took, then refused far under it again: no proof.
            self._probe_failed()
        self._mark_far(now)
        self._restart(resume_at)
        return True

    _CADENCE_HORIZON = 60.0
    _CADENCE_TAKEN = 8
    _CADENCE_ACTIVE = 2.0
    _CADENCE_DOWN = 0.85

    def _cadence(self, sent: float | None) -> float | None:
        """What the source takes per second, told by the cadence of its refusals (None:
        nothing to tell it by): the requests taken between an earlier refusal that
        brought the rate down and this one, per second between them.

        A token bucket refuses a request only with less than one token left, so at two
        refusals it held under one: what it took between them is what it refilled, its
        limit times the time between, give or take a request, whatever its size. A
        refusal now and then at a rate over the limit behind a bucket of three or five
        is no way's jitter: the bucket hid the excess for seconds or tens of seconds,
        and each 3 % step down cost another refusal (1/s behind a bucket of three, a
        rate 20 % over took four refusals and a minute to come down).

        Only over a stretch the client sent at the rate run now or faster (under it, a
        bucket refills unused, and what it took says how fast the client went), with no
        bunch of refusals in it (see _bunched), long enough to count (eight requests
        taken, two seconds of sending), within the last minute. A gap in the sending
        longer than a request at the estimate (a pause after a 429, a client waiting on
        its own work) may have let a small bucket fill and spill: it counts as a
        request's worth, not as time (an estimate on the high side, so it never takes
        the rate under the limit for that); so does the time before the oldest start
        kept (at 100/s, the last ten seconds' are). The longest such stretch, the most
        requests, tells it best.
        """
        if sent is None or not self._starts_known:
            return None
        best: float | None = None
        for first in reversed(self._decreased_sent):
            span = sent - first
            if span > self._CADENCE_HORIZON:
                break
            if span <= 0.0:
                continue
            if self._ran_under(first, sent, 0.99 * self.rate):
                break
            if self._bunched(first, sent):
                break
            went = [t for t in self._starts if first < t < sent]
            # (Refusals of starts no longer kept are not taken from those kept.)
            oldest = self._starts[0] if went else sent
            taken = len(went) - sum(
                1 for t in self._refused_sent if first < t < sent and t >= oldest
            )
            if taken < self._CADENCE_TAKEN:
                continue
            edges = [first, *went, sent]
            gaps = [later - earlier for earlier, later in itertools.pairwise(edges)]
            estimate = taken / span
            counted, active = taken, span
            for _ in range(3):
                spills = [gap for gap in gaps if gap * estimate > 1.0]
                counted, active = taken - len(spills), span - sum(spills)
                if counted <= 0 or active <= 0.0:
                    break
                estimate = counted / active
            if counted >= self._CADENCE_TAKEN and active >= self._CADENCE_ACTIVE:
                best = estimate
        return best

    def _bunched(self, start: float, end: float) -> bool:
        """Whether two requests sent within two intervals of each other (half a second
        at least) were refused between ``start`` and ``end``, or just before: not a
        bucket running dry now and then, which refuses one at a time, but a source that
        refused a bunch (its loop stalled, and what came meanwhile reached its bucket
        together), whose stalls waste what it refills."""
        near = max(2.0 / self.rate, 0.5)
        refused = sorted(t for t in self._refused_sent if start - near <= t <= end)
        return any(later - earlier < near for earlier, later in itertools.pairwise(refused))

    def _ran_under(self, start: float, end: float, rate: float) -> bool:
        """Whether the rate run was under ``rate`` at any time between ``start`` and
        ``end`` (or is not known then)."""
        at = self.rate_at(start)
        if at is None or at < rate:
            return True
        return any(start < since < end and run < rate for since, run, _ in self._history)

    def _outage_began(self) -> None:
        """Refused all along for seconds: the source is down, or its limit fell far.

        When the source took requests for a while before (``_ARMED_AFTER`` accepted since
        the last outage), what it took per second over the three whole seconds before
        the last of them, and over the ten (at most the rate run then), is kept: through
        the outage the rate comes down no further than one request every quarter of the
        outage's length so far, under it (see _outage_floor), and once a request is
        accepted again the rate searches back up towards it. Halved at every refusal, a
        declared 100/s reached a fraction of a request a second within seconds and took a
        minute to come back after twenty seconds of maintenance. A source whose limit
        fell near zero takes a request now and then: the way back up draws a 429, the
        rate kept falls to what it took on the way up, and the next outage is not
        floored (too little accepted)."""
        self._outage = True
        self._outages += 1
        took = span = 0.0
        # The rate the last request accepted went at (answers of requests sent before
        # the outage come in after its first refusals brought the rate down).
        ran = self.rate_at(self._accepted_sent) or 0.0
        if self._ok_since_outage >= self._ARMED_AFTER:
            # Over the last three whole seconds and the last ten (or those since the
            # first answer counted, when fewer): a window's opening burst (a source
            # that takes 50 requests per fixed 10 s window and refuses the rest) got
            # through faster than the source takes.
            last = math.floor(self._accepted_at)
            rates = [
                sum(n for s, n in self._per_second if math.floor(since) <= s < last)
                / (last - since)
                for since in (max(self._first_ok, last - 3), max(self._first_ok, last - 10))
                if last - since >= 0.5
            ]
            span = self._accepted_at - self._first_ok
            if not rates and span >= 0.25:
                # Down within a second or so of the first answer, before half a whole
                # second was counted (every answer since the first is this outage's
                # history): they all count, over the time between.
                rates = [(self._ok_since_outage - 1) / span]
            elif rates and min(rates) == 0.0:
                # Nothing taken in the whole seconds before the last answer's (a fixed
                # window's burst went in it, the seconds before refused: read as
                # nothing taken, the rate fell to a request every few seconds): over
                # the ten seconds up to the last answer, its own second with them.
                since = max(self._first_ok, last - 10)
                counted = sum(n for s, n in self._per_second if math.floor(since) <= s <= last)
                rates = [(counted - 1) / max(self._accepted_at - since, 1.0)]
            took = min(min(rates, default=0.0), ran)
        self._took = took
        self._ran = took
        # The source took requests before (a revoked key takes none: it is never back).
        self._taken_before = self._first_ok < math.inf
        # A ramp the outage cut short: its first 429 was the outage's, and nothing sent
        # since was accepted. What it took was the ramp's way up, not the source's limit.
        self._cut_ramp = self.ramp and self._ramp_ended >= self._accepted_sent
        # The most run before this outage's refusals brought the rate down.
        self._ran_before = max(
            (r for since, r, _ in self._history if since <= self._accepted_at), default=ran
        )
        counted_from = max(self._first_ok, self._accepted_at - 10.0)
        if took > 0.0 and not self.ramp and not self._came_down(counted_from, self._accepted_at):
            # A declared rate the source never refused over the seconds counted: what
            # got through says how fast the client went, not how fast the source takes
            # (a client slow to start, or slow all along on a loaded machine, counted a
            # fraction of the rate: the way back up stopped there, then crept up 1 % at a
            # time). The way back up goes on to the rate run then; a step of it the
            # source refuses ends it at the step before (see _on_rate_limited). (A ramp's
            # rate, or one a 429 brought down, may have gone through on a bucket's
            # savings, far over the source's limit: what the source took says more. So
            # does it for a fixed window's later cycles, whose refusals brought the rate
            # down; the first cycle's opening burst went at the rate run, and the way
            # back up goes on to that.)
            self._ran = max(took, ran)
        self._ok_since_outage = 0

    def _came_down(self, start: float, end: float) -> bool:
        """Whether the rate came down between ``start`` and ``end`` (a 429, or a header's
        lower figure)."""
        before: float | None = None
        for since, rate, _ in self._history:
            if since > end:
                break
            if since > start and before is not None and rate < before:
                return True
            before = rate
        return False

    def _floored(self, target: float, now: float) -> float:
        """``target`` for the rate, through an outage no lower than its floor (see
        _outage_floor), and never raised by it: the floor only stops the fall."""
        return max(target, min(self.rate, self._outage_floor(now)))

    @property
    def _best_taken(self) -> float:
        """The best rate the source took: for long (_proven), or just before the last
        outage (_took)."""
        return max(self._proven, self._took)

    def _outage_floor(self, now: float) -> float:
        """The least rate through an outage: one request every quarter of its length so
        far (from the last accepted answer), at most _OUTAGE_LONGEST apart, and a hair
        under what the source took before it (0: no floor)."""
        if not self._outage or self._recovering:
            return 0.0
        if self._took > 0.0:
            took = self._took
        elif self._taken_before and not self._found_again and self._outages == 1:
            # The run's first outage, too few taken before it to know a rate: under the
            # rate run before it.
            took = self._ran_before
        else:
            return 0.0
        gap = min(self._OUTAGE_LONGEST, self._OUTAGE_SHARE * (now - self._accepted_at))
        return min(self._JITTER_STEP * took, 1.0 / max(gap, 1e-9))

    def _prove(self, now: float) -> None:
        """Count an accepted answer; the most that got through in ten whole seconds
        without a 429 is a rate the source takes (``_proven``)."""
        self._mark_far(now)
        second = math.floor(now)
        counts = self._per_second
        if counts and counts[-1][0] == second:
            counts[-1][1] += 1
            return
        counts.append([second, 1])
        # A new second began: the ten before it are whole.
        first = second - 10
        if first < self._last_decrease:
            return
        got = sum(n for s, n in counts if first <= s < second) / 10.0
        # At most the rate run over those seconds: a backlog answered at once (after a
        # stall) got through no faster than it went.
        run = max((r for since, r, _ in self._history if first <= since < second), default=0.0)
        run = max(run, self.rate_at(first) or 0.0)
        self._proven = max(self._proven, min(got, run))
        self._held = max(self._held, min(got, run))
        # Ten whole seconds apart from the last ones counted (see _far_under): the least
        # of the last three such is what the source took, not what a bucket saved (its
        # savings, spent at the rate run after a pause or a decrease, last a few seconds:
        # a bucket of two hundred let 20/s through for twenty in front of 10/s).
        if first >= self._windows_end:
            self._windows_end = second
            self._windows.append(min(got, run))
            if len(self._windows) == self._windows.maxlen:
                self._sustained = max(self._sustained, min(self._windows))
            if (
                self._probing
                and self._probe_reached is not None
                and first >= self._probe_reached
                and not self._far_under()
            ):
                # Back at what the source took before, and ten whole seconds without a
                # 429 since: the search back up is proven (see _probed).
                self._probed()

    def _recovered(self, now: float) -> bool:
        """Whether the source is back after an outage (refusals in a row, none accepted
        between: a source whose limit fell refuses some and takes the rest): the rate is
        under half the best the source took (for long, see _proven, or just before the
        outage, see _outage_began), and two requests were accepted since the last
        decrease (one after a floored outage: its requests may be seconds apart), one of
        them sent since (or, when answers do not say when their requests went, two
        seconds after it and its pause)."""
        if (
            not self._outage
            or self._recovering
            or self.threshold is None
            or self.rate >= 0.5 * self._best_taken
        ):
            return False
        if self._since_decrease < (1 if self._took > 0.0 else 2):
            return False
        if self._sent_known:
            return self._since_decrease_own >= 1
        return now - self._last_decrease >= self._paused + 2.0

    def _found_again_after(self, sent: float | None) -> bool:
        """Whether an accepted answer ends an outage that began within the run's first
        requests (too few taken to keep a rate through it), under the rate run before it:
        a request sent after the first refused (the source took requests before, so no
        revoked key), once a run (see _on_success). (Under it at all: the probes through
        the run's first outage may hold the rate at half of it, or more.)"""
        return (
            self._outage
            and self._took <= 0.0
            and not self._found_again
            and self._taken_before
            and (sent is None or sent > self._run_sent)
            and self.rate < self._JITTER_STEP * self._ran_before
        )

    def _back_from_run(self, run: int, now: float, sent: float | None) -> bool:
        """Accepted again after a run of refusals (two or more over a second or more,
        none accepted between: a source down for a while, or a window used up until its
        reset): the refusals after the run's first say the source refused, not how fast
        it takes. The rate goes back to where the first left it, and searches on towards
        the rate it came at (doubling, then half the way left at each step, each held a
        request and a quarter second), a step that draws a 429 ending the search at the
        step before (see _on_rate_limited) and capping the next such search there. Not
        while a ramp runs, nor through an outage: each has its own way up."""
        if (
            sent is None
            or run < 2
            or self._outage
            or self.threshold is None
            or self._recovering
            or sent <= self._run_last
            or self._run_last - self._run_sent < 1.0
            or self.rate >= self._JITTER_STEP * min(self.ceiling, self._run_rate)
        ):
            return False
        toward = min(self.ceiling, self._run_rate, self._run_cap)
        if self.rate >= self._JITTER_STEP * toward:
            return False
        self._proven = max(self._proven, self._run_proven)
        self.threshold = self.rate = min(toward, max(self.rate, self._run_left))
        self._recovering = self._run_search = True
        self._good, self._bad = self.rate, toward
        self._past_estimate = None
        self._small_steps = False
        self._restart(now)
        return True

    def _creep_base(self) -> float:
        # Crossing the limit costs a 429 and a Retry-After pause, so cycles must be long
        # for the pause (and the 429s) to stay a small fraction of the time.
        every = self._creep_every or max(6.0, 12.5 / max(self.threshold or self.rate, 1e-9))
        return every

    def _probe_due(self, now: float) -> bool:
        """Whether a rate found (no search, ramp or way back up under way) searches back
        up: far under what the source took before (see _far_under; a jitter step under a
        strict limit is not: the source never took more), no 429 for as long as a search
        waits (see _probe_wait), not told its limit by a header."""
        if self.threshold is None or self._good is not None or self._told is not None:
            return False
        if self._probing or self._outage or self._recovering or self._run_search:
            return False
        if not self._far_under():
            return False
        return now - self._last_decrease >= self._probe_wait()

    def _probe_wait(self) -> float:
        """How long a rate far under holds, no 429, before it searches back up: sixty
        requests at least (a search may cost a 429 or two), and twenty times the longest
        pause a 429 caused (a source asking half a minute makes each search refused cost
        that much)."""
        return max(self._probe_every, 60.0 / self.rate, 20.0 * self._longest_pause)

    def _mark_far(self, now: float) -> None:
        """Note since when the rate is far under what the source took before."""
        if not self._far_under():
            self._far_since = math.inf
        elif self._far_since == math.inf:
            self._far_since = now

    def _probe_failed(self) -> None:
        """A search back up (see _probe_due) was refused before it proved itself: the next
        one waits twice as long."""
        self._probing, self._probe_reached = False, None
        self._probe_every = min(self._PROBE_LONGEST, 2.0 * self._probe_every)

    def _probed(self) -> None:
        """A search back up (see _probe_due) got back to what the source took before, and
        ten whole seconds without a 429 followed at it: the next one, after another dip,
        waits and steps as the first did."""
        self._probing, self._probe_reached = False, None
        self._probe_every, self._probe_step = self._PROBE_EVERY, self._PROBE_STEP

    def _far_under(self) -> bool:
        """Whether the rate is far under what the source took before (``_sustained``: the
        most, over the run, of the least of three separate ten whole seconds without a
        429; see _prove): a search back up finds out whether that holds again (see
        _probe_due)."""
        return self.rate < self._PROBE_UNDER * min(self.ceiling, self._sustained)

    def on_start(self, now: float) -> None:
        """A request starts (the client says so: a search's step counts them)."""
        self._starts_known = True
        self._starts.append(now)
        if self._last_update is not None and now >= self._last_update:
            self._step_starts += 1

    def back_to(self, rate: float, now: float) -> bool:
        """The source took requests again after a run of refusals, and ``rate`` over
        the whole cycle since the run before (a fixed window's count over its period, see
        WindowWatch): the rate goes back to that at least (a hair under), whatever the
        refusals halved it to; a search goes on from there. Through an outage it is what
        the source took before it, which the way back up searches towards (see
        _recovered). True when the rate changed. (Not while a ramp runs: it has its own
        way up.)"""
        if self.threshold is None:
            return False
        target = min(self.ceiling, self._JITTER_STEP * rate)
        if self._outage:
            # Come back from as from any outage (see _recovered: it waits for a request
            # sent since, the answers of those sent through it may still be coming),
            # towards this at least.
            self._took = max(self._took, target)
            self._ran = max(self._ran, target)
            return False
        if target <= self.rate:
            return False
        self.threshold = self.rate = target
        if self._good is not None:
            # A search goes on from here (not as a search back up after a dip: its start
            # is no rate to go back to now).
            self._good = target
            self._probing, self._probe_reached = False, None
        self._restart(now)
        return self._noted(now, True)

    def on_header_limit(self, rate: float, now: float) -> bool:
        """The server told us its limit: use it (a hair below, for clock skew); True when
        the rate changed.

        A figure requests sent at the rate it set were refused at, or one no more than
        10 % lower, only caps the rate for five seconds or more (see _header_refused): a header
        may overstate the limit (an account's figure in front of a stricter one per
        endpoint or address), and taken back after every 429 (every answer carries it)
        it drew a 429 and a pause every second or so: stated 150/s where 100/s got
        through, 28 % of the limit got through. A figure lower still, or a higher one, is
        taken at once. (At slow rates, a bucket of one and the way's jitter, an honest
        figure may be taken for one that overstates: 0.98 of it is too fast there, and
        the learned rate under it does better.)"""
        self._told = rate
        refused = self._told_refused
        if refused is not None and rate > 1.01 * refused:
            # The source raised its figure: taken at once, the past forgotten.
            self._told_refused, self._told_until = None, -math.inf
            self._told_wait = self._TOLD_WAIT
        elif refused is not None and now < self._told_until and rate >= 0.9 * refused:
            capped = min(self.rate, max(self.floor, rate * 0.98))
            if capped >= self.rate:
                return False
            self.threshold = self.rate = capped
            return self._noted(now, True, told=True)
        before = self.rate
        self._header_limit(rate, now)
        if self.rate > before:
            self._told_raised_at, self._told_counted = now, False
        return self._noted(now, self.rate != before, told=True)

    def _header_refusal(self, now: float) -> None:
        """A request sent at the rate the source's header set was refused. Soon after the
        figure raised the rate, each time it did, _TOLD_REFUSALS times in a row, and
        with under 85 % of it accepted in each of the last three whole seconds, the
        figure overstates the source's limit (a busy source refuses one now and then at
        its own limit, seconds apart on average, and the burst a stall lets through at
        once counts once)."""
        if self._told_counted or self._told is None:
            return
        self._told_counted = True
        second = math.floor(now)
        best = max((n for s, n in self._per_second if second - 3 <= s < second), default=0)
        stated = min(self.ceiling, 0.98 * self._told)
        if now - self._told_raised_at > self._TOLD_SPAN or best >= 0.85 * stated:
            # Long after, or most of the figure got through in one of the last three
            # whole seconds: the source's jitter, not a figure it does not keep.
            self._told_quick = 0
            return
        self._told_quick += 1
        if self._told_quick >= self._TOLD_REFUSALS:
            self._told_quick = 0
            self._header_refused(now)

    def _header_refused(self, now: float) -> None:
        """A request sent at the rate a header's figure set was refused: the figure only
        caps the rate for a while (the source's limit may have dipped, or its header
        overstates it). Refused again soon after it was taken back (within the wait
        before), it overstates: twice as long, up to forty seconds (one 429 and pause per
        cycle; an honest figure whose limit dipped for minutes is taken again within
        them); else five seconds (an honest figure, the source's limit back after a
        short dip, is taken again within them)."""
        told = self._told
        assert told is not None
        again = self._told_refused is not None and now - self._told_until < self._told_wait
        self._told_wait = (
            min(self._TOLD_WAIT_LONGEST, 2.0 * self._told_wait) if again else self._TOLD_WAIT
        )
        self._told_refused = told if not again else min(told, self._told_refused or told)
        self._told_until = now + self._told_wait

    def _header_limit(self, rate: float, now: float) -> None:
        self.threshold = self.rate = max(self.floor, min(self.ceiling, rate * 0.98))
        self._good = self._bad = self._past_estimate = None
        self._small_steps = self._recovering = self._run_search = False
        # (A search back up under way ends: the source said where the rate is.)
        self._probing, self._probe_reached = False, None
        self._restart(now)

    def on_success(self, now: float, *, sent: float | None = None, window: bool = False) -> bool:
        """An accepted request (``sent``: when it went, when known; ``window``: it ends
        a run of refusals the way the runs before ended, a fixed window kept: see
        WindowWatch); return True when the rate changed."""
        return self._noted(now, self._on_success(now, sent, window))

    def _on_success(self, now: float, sent: float | None, window: bool) -> bool:
        run = self._refused_run
        self._accepted.append(now)
        self._answered.append(now)
        self._outcomes.append(True)
        self._refused_run, self._accepted_at = 0, now
        self._answer_at = max(self._answer_at, now)
        self._accepted_sent = now if sent is None else sent
        self._since_decrease += 1
        self._ok_since_outage += 1
        self._first_ok = min(self._first_ok, now)
        self._forget(now)
        if self._last_update is None:
            self._measure_from = now
            self._restart(now)
            return False
        if now >= self._last_update:
            self._step_answers += 1
        if sent is not None:
            self._sent_known = True
            if sent >= self._last_update:
                # Sent at the rate run at now: a step is judged by its own answers.
                self._step_own += 1
            elif self._earlier <= sent < max(self._last_decrease, self.paced_from):
                # (Sent before an earlier decrease: that one's echo, as its 429s are.)
                self._echoes_accepted += 1
            if sent >= max(self._last_decrease, self.paced_from):
                self._since_decrease_own += 1
        self._prove(now)
        if self._found_again_after(sent):
            # Down within the run's first requests (too few taken since the start to
            # keep a rate through the outage), and back: the rate, halved at every
            # refusal, was a request every second or two, and crept up from there for
            # minutes. The limit is found again as at the start: an adaptive rate
            # ramps, a declared one doubles back up towards the rate run before (each
            # step held a request and a quarter second). Once a run: a source whose
            # limit fell near zero takes a request now and then, and each would start
            # another way up.
            self._found_again, self._outage = True, False
            before = self.rate
            if self.ramp:
                # From the start rate, as at the start (a first step from a request every
                # two seconds to the ramp's least cap drew a 429 from a strict bucket).
                self.threshold = None
                self.rate = min(self.ceiling, max(self.rate, self._start))
                self._ramp_prev, self._grown_at = self.rate, math.inf
                self._good = self._bad = self._past_estimate = None
                self._recovering = self._small_steps = self._run_search = False
            else:
                # (From where the first refusal of the outage left it at least: the
                # outage's, not the source's pace, took it lower.)
                self._recovering, self._run_search = True, False
                self.threshold = self.rate = min(
                    self.ceiling,
                    max(2.0 * self.rate, self._run_left),
                    max(self.rate, self._ran_before),
                )
                self._good, self._bad = self.rate, max(self.rate, self._ran_before)
                self._past_estimate = None
                self._small_steps = False
            self._restart(now)
            return self.rate != before
        if self._recovered(now):
            # Far under a rate the source took, and taken again: it refused everything
            # for a while (an outage, maintenance) and is back. Search back up towards
            # that rate: from half of what it took just before a floored outage (see
            # _outage_began), else from up to a quarter of what it took for long (at
            # most four times the rate now); doubling, then half the way left at each
            # step, each held a request and a quarter second at least (a search from
            # here in steps of a tenth, each held four, took minutes, and the creep
            # hours). A step that draws a 429 says the source's limit fell, or it is not
            # quite back: the rate remembered falls to the step before (see
            # _on_rate_limited).
            self._recovering, self._outage, self._run_search = True, False, False
            before, best = self.rate, self._best_taken
            jump = 0.5 * best if self._took > 0.0 else min(0.25 * best, 4.0 * self.rate)
            self.threshold = self.rate = min(self.ceiling, max(self.rate, jump))
            self._good, self._bad = self.rate, max(best, self._ran)
            self._past_estimate = None
            self._small_steps = False
            self._restart(now)
            return self.rate != before
        if not window and self._back_from_run(run, now, sent):
            return True
        if (
            self._outage
            and (sent is None or sent > self._run_sent)
            and self.rate >= 0.5 * self._best_taken
        ):
            # Taken again, a request sent after one refused, and the rate is still most
            # of what the source took: the outage is over, and nothing to search back.
            self._outage = False
        elapsed = now - self._last_update
        if self.threshold is None:
            if elapsed < 0.25:
                return False
            if self._starts_known and self._step_starts < self._RAMP_USED * self.rate * elapsed - 1:
                # The client sent far less than the rate (its CPU busy with other work, its
                # concurrency full, nothing to send): the step says nothing of the source
                # past what went. Grown on, a ramp on a loaded machine reached 376/s while
                # 80 a second went; when the CPU came back, a burst of 429s, a drop to
                # what got through under load (54/s of 100) and seconds of search back
                # up. Held until the client sends the rate's turns.
                self._restart(now)
                return False
            # Grow no further than four times what actually got through in the last half
            # second: when concurrency or the client itself is the bottleneck, a rate of
            # thousands would only make the first 429 measure the wrong thing.
            recent = 2.0 * sum(1 for t in self._accepted if t >= now - 0.5)
            cap = max(4.0 * recent, 2.0 * self.floor, 4.0)
            grown = min(self.ceiling, max(self.rate, min(self.rate * 6.0**elapsed, cap)))
            if grown > self.rate:
                # (Held at its cap, the rate before the last growth stays what it was.)
                self._ramp_prev = self.rate
                self._grown_at = now
            self.rate = grown
        elif self.rate >= self.ceiling:
            self._restart(now)
            return False
        elif self._good is not None:
            # (On the way back up after an outage, a request and a quarter second: the
            # source took the rate searched for just before it.)
            hold = max(0.25, 1.0 / self.rate) if self._recovering else max(1.0, 4.0 / self.rate)
            if elapsed < hold:
                return False
            # Used: 90 % of the step went (counted as they start, when the client says;
            # else as they are answered).
            went = self._step_starts if self._starts_known else self._step_answers
            used = went / elapsed >= 0.9 * self.rate
            if used and self._sent_known and self._step_own < 0.72 * self.rate * hold:
                # Its own answers are not in yet (a source seconds away answers for the
                # step before long into this one): judged once most of a hold's are.
                return False
            if not used:
                # The step was not used (the client or its concurrency sent less): it
                # says nothing of the source, and the next would go past a rate never
                # tried. Held again.
                self._restart(now)
                return False
            self._good = self.rate
            bad = self._bad
            if self._past_estimate is not None and bad is not None:
                # Under what got through while the ramp ran: it got through, so straight
                # there (a hair under; the step before let the bucket refill).
                step = max(self.rate, self._JITTER_STEP * bad)
            else:
                step = self.rate * (self._PAST_STEP if self._small_steps else self._SEARCH_STEP)
                if self._recovering and bad is not None and bad > self.rate:
                    # Doubling, then (below) half the way left at each step.
                    step = 2.0 * self.rate
                if bad is not None and bad > self.rate:
                    step = min(step, (self.rate + bad) / 2.0, self._JITTER_STEP * bad)
            self.rate = max(self.rate, min(self.ceiling, step))
            self.threshold = self.rate
            if (
                self._probing
                and self._probe_reached is None
                and self.rate >= min(self.ceiling, self._sustained)
            ):
                # Back at what the source took before: the search goes on as any does;
                # ten whole seconds without a 429 there make the next one a fresh one
                # (see _prove and _probed).
                self._probe_reached = now
            if self.rate >= self.ceiling or (bad is not None and self.rate >= 0.96 * bad):
                if self._past_estimate is not None and self.rate < self.ceiling:
                    # At what got through while the ramp ran: an estimate, not a 429
                    # (measured over a ramp, it falls short of the limit: 84/s of 100
                    # over real HTTP). Go on in small steps up to the ramp's own rate.
                    self._bad, self._past_estimate = self._past_estimate, None
                    self._small_steps = True
                elif self._cut_ramp and self._recovering and self.rate < self.ceiling:
                    # Back at what a ramp the outage cut short had taken: no limit was
                    # found. The search goes on upwards in its usual steps until a 429.
                    self._bad, self._recovering, self._cut_ramp = None, False, False
                else:
                    # At the ceiling, or all but at the rate that drew the 429: searched.
                    self._good = self._bad = None
                    if self._run_search:
                        self._run_search, self._run_cap = False, math.inf
                    self._recovering = False
        else:
            if self._probe_due(now):
                # Healthy for long, far under what the source took before: its limit
                # dipped (its own load, a neighbour's backfill) and may be back. The creep,
                # 1 % a step six seconds or more apart, took minutes (20/s dipping to 5/s
                # for half a minute: 4.6/s two minutes after it was back). Search back up
                # in the usual steps, each held a second or four requests, towards the
                # ceiling (a 429 before it is back: see _on_rate_limited).
                self._probing, self._probe_from = True, self.rate
                self._good, self._bad = self.rate, None
                self._past_estimate = None
                step = 1.0 + self._probe_step
                self.threshold = self.rate = min(self.ceiling, self.rate * step)
                self._restart(now)
                return True
            every = self._creep_base()
            if elapsed < every:
                return False
            if self._creep_every is not None:
                # The last step drew no 429: step a little sooner next time.
                self._creep_every = max(0.0, 0.9 * self._creep_every) or None
                if self._creep_every is not None and self._creep_every < 6.0:
                    self._creep_every = None
            self.rate = min(self.ceiling, self.rate + self._CREEP_STEP * self.threshold)
            if self.ramp and self.rate > 1.1 * self.threshold / self.margin:
                # 10 % past the old limit without a 429: the limit rose or was
                # underestimated; ramp up quickly again.
                self.threshold = None
                self._ramp_prev, self._grown_at = self.rate, math.inf
        self._restart(now)
        return True

    def _restart(self, now: float) -> None:
        """The rate's next change is timed from ``now``, its step's answers counted
        from there (those of one instant with it too: answers come in batches)."""
        self._last_update = now
        self._step_answers = self._step_own = self._step_starts = 0
