"""The leases one worker holds, and until when each is certainly still its own.

A lease is proven in the ledger when the worker begins its partition (``Ledger.begin``)
and pushed back by every renewal. Between two proofs the worker may write for the
partition without asking the ledger again, but only for part of a lease: the rest is
kept for clocks that disagree between machines and for the write itself. A worker that
was stalled (SIGSTOP, a long GC or VM pause, a ledger outage) past that point asks again
before its next write, and one whose lease passed on writes nothing more.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["LeaseBook", "LeaseLost"]

# The part of a lease a proof vouches for; the last third is the safety margin.
_CERTAIN = 2 / 3
_NEVER = float("-inf")


class LeaseLost(Exception):
    """Raised into a partition's work when its lease has passed to another worker."""

    def __init__(self, key: str) -> None:
        super().__init__(f"the lease of partition {key} passed to another worker")
        self.key = key


class LeaseBook:
    """Per claim id, the monotonic time until which its lease is certainly held.

    Example::

        book = LeaseBook(60.0)
        book.proven([7], since=100.0)
        book.certain(7, now=130.0)   # True: proven 30 s ago, vouched for 40 s
        book.certain(7, now=141.0)   # False: ask the ledger (Ledger.begin) again
    """

    def __init__(self, lease_seconds: float) -> None:
        self.span = lease_seconds * _CERTAIN
        self._until: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self._until)

    def proven(self, ids: Iterable[int], *, since: float) -> None:
        """The ledger confirmed these leases in a call that started at ``since``."""
        self._until.update(dict.fromkeys(ids, since + self.span))

    def renewed(self, *, since: float, done: float) -> None:
        """A renewal of all the owner's leases ran from ``since`` to ``done``: it pushed
        back every lease that was still certain when it finished. One that was not (the
        worker was stalled, or the ledger slow) may have passed on before the renewal
        reached it, so it stays uncertain until proven again."""
        until = since + self.span
        for claim_id, old in self._until.items():
            if done < old:
                self._until[claim_id] = until

    def certain(self, claim_id: int, *, now: float) -> bool:
        return now < self._until.get(claim_id, _NEVER)

    def forget(self, claim_id: int) -> None:
        self._until.pop(claim_id, None)
