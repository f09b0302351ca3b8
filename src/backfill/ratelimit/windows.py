"""A fixed window that a source keeps without saying so, learned from its refusals."""

from __future__ import annotations

import math

__all__ = ["WindowWatch"]


class WindowWatch:
    """Tells a fixed window (N requests per T seconds, the rest refused until the next
    window begins, no header to say so) from a source's answers, and the pace that keeps
    it: N / T.

    A *return* is the first request accepted that was sent after a run of refusals that
    spanned a second or more (two refusals at least, none accepted between): a window's
    reset, found. Between two returns lies a *cycle*: the requests accepted that were sent
    from the first return up to the second, over the time between. Two cycles in a row
    that agree (periods and counts within a fifth of each other) are a window kept; an
    outage, or two, do not repeat like that. Its pace holds for ``_HOLD`` periods, then
    the window is learned again (the source may have changed it). A request refused
    while the pace holds, sent at it, says it was wrong (or the window changed): forgotten.

    Halving the rate at each refusal (the way to ride out an outage) left the rate
    behind a window wherever its reset happened to find it: a declared 5/s in front of
    15 requests per 10 s took 280-420 of 450 in five minutes, by seed; a declared 1.2/s
    in front of 60 a minute, 68 % of it.
    """

    _LONG_RUN = 1.0
    _AGREE = 0.2
    _HOLD = 10

    def __init__(self) -> None:
        # The run of refusals going on: the instant its first refused request was sent,
        # and how many were refused.
        self._run_from: float | None = None
        self._run_last = 0.0  # when its last refused request was sent
        self._run_refused = 0
        # The last return (a sent instant), what was accepted since (sent since it), and
        # the cycles before: (period, accepted).
        self._return: float | None = None
        self._reset: float | None = None  # when the last return's reset came (a guess)
        self._counted = 0
        self._counting_from = math.inf  # the return's own request was sent then
        self._cycles: list[tuple[float, int]] = []
        # The pace of the last cycle, set at each return that completes one (else None).
        self.cycle: float | None = None
        # The pace learned (requests a second) and until when it holds; when it was taken.
        self.pace: float | None = None
        self._until = -math.inf
        self._since = math.inf

    def holds(self, now: float) -> bool:
        """Whether a pace learned holds at ``now``."""
        if self.pace is not None and now >= self._until:
            self.forget()
        return self.pace is not None

    def forget(self) -> None:
        """Drop the pace learned and the cycles it was learned from."""
        self.pace, self._until, self._since = None, -math.inf, math.inf
        self._cycles.clear()

    def refused(self, sent: float) -> bool:
        """A request sent at ``sent`` was refused; True when that says the pace learned
        was wrong (it was sent while the pace held), which is then forgotten."""
        if self._run_from is None or sent < self._run_from:
            self._run_from = sent
        self._run_last = sent if self._run_refused == 0 else max(self._run_last, sent)
        self._run_refused += 1
        if self.pace is not None and sent >= self._since:
            self.forget()
            return True
        return False

    def accepted(self, sent: float, now: float) -> float | None:
        """A request sent at ``sent`` was accepted (answered ``now``); the pace learned,
        when this return completes two cycles that agree (else None)."""
        learned, self.cycle = None, None
        if self._run_from is not None and sent > self._run_from:
            # Sent after the run's first refusal: the run is over (an echo sent before it,
            # answered late, is not).
            long = self._run_refused >= 2 and sent - self._run_from >= self._LONG_RUN
            self._run_from, self._run_refused = None, 0
            if long:
                learned = self._returned(sent, self._run_last, now)
                self._counting_from = sent
        if self._return is None:
            # The first answer accepted: the first cycle is counted from it.
            self._return = self._counting_from = sent
        if sent >= self._counting_from:
            self._counted += 1
        return learned

    def _returned(self, at: float, last_refused: float, now: float) -> float | None:
        """A return: its request sent ``at``, the run's last refused one ``last_refused``."""
        # The reset itself came between the run's last refused request and this one:
        # halfway, as good a guess as any (cycles between such guesses err either way).
        reset = (at + last_refused) / 2.0
        if self._return is not None and at > self._return:
            if self._reset is not None:
                self._cycles = [*self._cycles[-1:], (reset - self._reset, self._counted)]
            # The reset came after the last refused request, and the last one at or
            # before the return before: the cycle took longer than the time between
            # them. Over that, an estimate a little high: a rate too high is refused
            # again, and measured again; one too low never is.
            shortest = last_refused - self._return
            if self._counted >= 2 and shortest >= self._LONG_RUN:
                self.cycle = self._counted / shortest
        self._return, self._reset, self._counted = at, reset, 0
        if len(self._cycles) < 2 or self.pace is not None:
            return None
        (p1, c1), (p2, c2) = self._cycles
        if min(c1, c2) < 2 or min(p1, p2) < self._LONG_RUN:
            return None
        if abs(p1 - p2) > self._AGREE * max(p1, p2) or abs(c1 - c2) > self._AGREE * max(c1, c2):
            return None
        self.pace = (c1 + c2) / (p1 + p2)
        self._until = at + self._HOLD * (p1 + p2) / 2.0
        # (Requests on their way meanwhile went at the rate before.)
        self._since = now
        return self.pace
