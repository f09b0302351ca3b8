"""A fixed window that a source keeps without saying so, seen in its refusals."""

from __future__ import annotations

__all__ = ["WindowWatch"]


class WindowWatch:
    """What a source took over each cycle of its refusals: a fixed window (N requests
    per T seconds, the rest refused until the next window begins, no header to say so)
    takes N per cycle of T.

    A *return* is the first request accepted that was sent after a run of refusals that
    spanned ``_LONG_RUN`` seconds or more (two refusals at least, none accepted between):
    a window's reset, found. At each return, ``cycle`` is what was accepted since the
    return before (since the first answer, for the first) over the time from that return
    to the reset, which came between the run's last refusal and this return: halfway.
    (Up to the last refusal, the figure was high by as much as the run's spacing, which
    its refusals had halved the rate for: a window that fell drew twice the refusals.)

    Halving the rate at each refusal (the way to ride out an outage) left the rate behind
    a window wherever its reset happened to find it: a declared 2/s in front of 15
    requests per 10 s took 291 of 450 in five minutes.
    """

    _LONG_RUN = 1.0

    def __init__(self) -> None:
        # The run of refusals going on: the instants its first and last refused requests
        # were sent, and how many were refused.
        self._run_from: float | None = None
        self._run_last = 0.0
        self._run_refused = 0
        # The last return (when its request was sent) and what was accepted since.
        self._return: float | None = None
        self._counted = 0
        # What the source took over the cycle a return completed, said at that return,
        # and whether it is about what the cycle before took (a window kept: steady).
        self.cycle: float | None = None
        self.steady = False
        self._last_cycle: float | None = None
        self._last_counted = 0

    def _like_last(self, cycle: float, counted: int) -> bool:
        """Whether a cycle is like the one before: about as many taken (a window's count:
        how long its refusals held the rate back after it varies with the rate they
        left), or about the same rate."""
        last = self._last_cycle
        if last is None:
            return False
        return (
            abs(counted - self._last_counted) <= 0.15 * self._last_counted
            or abs(cycle - last) <= 0.15 * last
        )

    def refused(self, sent: float) -> None:
        """A request sent at ``sent`` was refused."""
        if self._run_from is None or sent < self._run_from:
            self._run_from = sent
        self._run_last = sent if self._run_refused == 0 else max(self._run_last, sent)
        self._run_refused += 1

    def accepted(self, sent: float) -> None:
        """A request sent at ``sent`` was accepted (``cycle`` says what a return found)."""
        self.cycle = None
        self.steady = False
        if self._run_from is not None and sent > self._run_from:
            # Sent after the run's first refusal: the run is over (an echo sent before it,
            # answered late, is not).
            long = self._run_refused >= 2 and sent - self._run_from >= self._LONG_RUN
            self._run_from, self._run_refused = None, 0
            if long:
                if self._return is not None:
                    took = (self._run_last + sent) / 2.0 - self._return
                    if self._counted >= 2 and took >= self._LONG_RUN:
                        cycle = self.cycle = self._counted / took
                        self.steady = self._like_last(cycle, self._counted)
                        self._last_cycle, self._last_counted = cycle, self._counted
                self._return, self._counted = sent, 0
        if self._return is None:
            # The first answer accepted: the first cycle is counted from it.
            self._return = sent
        if sent >= self._return:
            self._counted += 1
