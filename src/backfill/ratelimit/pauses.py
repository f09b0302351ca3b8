"""When a resource holds every request, and why: a Retry-After, a quota used up, a pause
another worker of the fleet saw."""

from __future__ import annotations

import math

from backfill.clock import Clock, format_duration, format_wall
from backfill.ratelimit.limits import Limit, Tell


class Pauses:
    """A resource's pause (``until`` on its clock's ``monotonic`` scale, and its
    ``reason``) and its quota waits; each pause and each quota wait is said once
    through ``tell``. ``count`` is how many pauses began."""

    __slots__ = ("_tell", "count", "quota_wait_until", "reason", "until")

    def __init__(self, tell: Tell) -> None:
        self._tell = tell
        self.until = -math.inf
        self.reason: str | None = None
        self.count = 0
        self.quota_wait_until = -math.inf

    def reset(self) -> None:
        """No pause, no quota wait (a new run starts); ``count`` is the caller's."""
        self.quota_wait_until = -math.inf
        self.reason = None
        self.until = -math.inf

    def hold_until(self, until: float, reason: str, clock: Clock) -> None:
        """Hold requests until ``until`` (extends, never stacks); a pause that begins is
        said."""
        seconds = until - clock.monotonic()
        if seconds <= 0:  # a wait already over (a Retry-After date in the past): none
            return
        if until > self.until + 1e-3:
            was_paused = self.until > clock.monotonic()
            self.until = until
            self.reason = reason
            if not was_paused:
                self.count += 1
                self._tell(f"paused ({reason})", seconds, "paused")

    def say_quota_wait(self, until: float, quotas: list[Limit], clock: Clock) -> None:
        """Say once per wait that a quota is used up, and when requests resume."""
        if abs(until - self.quota_wait_until) < 1.0:
            return
        self.quota_wait_until = until
        now = clock.monotonic()
        wall = clock.time()
        spent = ", ".join(str(q) for q in quotas) or "quota"
        self._tell(
            f"quota used up ({spent}): resumes {format_wall(wall + until - now, wall)} "
            f"(in {format_duration(until - now)})",
            until - now,
            "quota",
        )
