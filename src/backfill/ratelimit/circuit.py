"""A resource's circuit breaker: no requests to a source that keeps failing, but for a
probe every few seconds."""

from __future__ import annotations

import collections


class CircuitBreaker:
    """Opens when the error rate over the last ``window`` requests crosses ``threshold``.

    While open the resource hands out no reservations; after ``cooldown`` seconds one
    probe request is let through (half-open): success closes the circuit, failure opens it
    again for twice as long, up to ``max_cooldown``: a few seconds, so a source that comes
    back is used again within seconds, at the cost of one request every few seconds
    while it is down.
    """

    def __init__(
        self,
        *,
        threshold: float = 0.5,
        window: int = 20,
        min_requests: int = 10,
        cooldown: float = 2.0,
        max_cooldown: float = 5.0,
    ) -> None:
        self.threshold = threshold
        self.window = window
        self.min_requests = min_requests
        self.base_cooldown = cooldown
        self.cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.results: collections.deque[bool] = collections.deque(maxlen=window)
        self.open_until: float | None = None
        self.probing = False
        self.probes = 0  # probes sent: which one is out
        self.opened = 0

    @property
    def is_open(self) -> bool:
        return self.open_until is not None

    def record(self, ok: bool, now: float) -> str | None:
        """Record a result; return "opened" or "closed" when the state changes."""
        if self.probing:
            self.probing = False
            if ok:
                self.open_until = None
                self.cooldown = self.base_cooldown
                self.results.clear()
                return "closed"
            self.cooldown = min(self.max_cooldown, self.cooldown * 2)
            self.open_until = now + self.cooldown
            return None
        if self.open_until is not None:
            return None
        self.results.append(ok)
        if len(self.results) < self.min_requests:
            return None
        errors = self.results.count(False)
        if errors / len(self.results) >= self.threshold:
            self.open_until = now + self.cooldown
            self.opened += 1
            return "opened"
        return None

    def renewed(self) -> CircuitBreaker:
        """A closed breaker of the same settings (a new run starts)."""
        return CircuitBreaker(
            threshold=self.threshold,
            window=self.window,
            min_requests=self.min_requests,
            cooldown=self.base_cooldown,
            max_cooldown=self.max_cooldown,
        )

    @property
    def status(self) -> str:
        """``closed``, ``open`` or ``probing`` (its probe is out)."""
        if self.open_until is None:
            return "closed"
        return "probing" if self.probing else "open"

    def take_probe(self) -> int:
        """Send the open circuit's probe: its number."""
        self.probing = True
        self.probes += 1
        return self.probes

    def drop_probe(self, probe: int) -> None:
        """Probe ``probe`` (0: none) ended without an answer the breaker counts (cancelled,
        its stage timed out, a 429): the next request probes instead, not none ever."""
        if probe and self.probing and self.probes == probe:
            self.probing = False

    def opened_message(self) -> str:
        """What listeners are told when the circuit opens."""
        first, most = self.cooldown, self.max_cooldown
        then = f", then at most {most:g} s apart" if most > first else ""
        return f"circuit open: too many errors; probing every {first:g} s{then}"
