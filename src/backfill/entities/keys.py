"""The in-memory blocking index: which stored aliases are worth scoring against a name.

Every word of two letters or more gives keys: its skeleton (romanisations made one), and
for longer words the skeleton's first and last four letters (a typo rarely touches both
ends), and with each other word's first letter. A query collects the aliases
that share its keys, rarest keys weighted most, and only the best few are scored: the
work per query follows the number of candidates, not the number of aliases.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from backfill.entities.normalise import skeleton

__all__ = ["BlockingIndex", "IndexedAlias", "blocking_keys"]

# Keys this common (a first name shared by thousands) are consulted only when a name has
# no rarer key: they would cost more to count than they tell.
_COMMON = 4_000


def blocking_keys(words: Sequence[str]) -> set[str]:
    """The blocking keys of a name's folded words: of each word of two letters or more,
    its skeleton (see :func:`~backfill.entities.normalise.skeleton`) and the skeleton's
    two ends; of each pair of a long word and another, the long word's skeleton with the
    other's first letter (so "d nistor" finds the Nistors whose name begins with D first,
    not every Nistor)."""
    keys: set[str] = set()
    for at, word in enumerate(words):
        if len(word) < 2:
            continue
        bones = skeleton(word)
        keys.add(bones)
        if len(bones) >= 5:
            keys.add(bones[:4] + "<")
            keys.add(">" + bones[-4:])
        if len(word) >= 4:
            for other_at, other in enumerate(words):
                if other_at != at:
                    keys.add(f"{bones}+{other[0]}")
    return keys


@dataclass(frozen=True, slots=True)
class IndexedAlias:
    """An alias as the index knows it, with its entity's features."""

    alias_id: int
    entity_id: int
    words: tuple[str, ...]
    features: Mapping[str, str] = field(default_factory=dict)


class BlockingIndex:
    """Aliases by blocking key, in memory; ``candidates`` for a name's words."""

    def __init__(self) -> None:
        self._postings: dict[str, list[int]] = {}
        self._aliases: dict[int, IndexedAlias] = {}
        self.high_water = 0

    def __len__(self) -> int:
        return len(self._aliases)

    def __contains__(self, alias_id: int) -> bool:
        return alias_id in self._aliases

    def add(self, alias: IndexedAlias) -> None:
        """Index ``alias`` (again: its entity may have changed through a merge)."""
        known = self._aliases.get(alias.alias_id)
        self._aliases[alias.alias_id] = alias
        self.high_water = max(self.high_water, alias.alias_id)
        if known is not None and known.words == alias.words:
            return
        for key in blocking_keys(alias.words):
            self._postings.setdefault(key, []).append(alias.alias_id)

    def move(self, loser: int, winner: int, features: Mapping[str, str]) -> None:
        """Point the aliases of entity ``loser`` at ``winner`` (a merge)."""
        for alias_id, alias in list(self._aliases.items()):
            if alias.entity_id in (loser, winner):
                self._aliases[alias_id] = IndexedAlias(alias_id, winner, alias.words, features)

    def candidates(self, words: Sequence[str], limit: int = 24) -> list[IndexedAlias]:
        """Up to ``limit`` aliases sharing the most (and the rarest) keys with ``words``."""
        postings = [p for p in (self._postings.get(k) for k in blocking_keys(words)) if p]
        if not postings:
            return []
        rare = [p for p in postings if len(p) <= _COMMON]
        if rare:
            postings = rare
        weights: dict[int, float] = {}
        get = weights.get
        for posting in postings:
            weight = 1.0 / math.log(2.0 + len(posting))
            for alias_id in posting:
                weights[alias_id] = get(alias_id, 0.0) + weight
        if len(weights) > limit:
            best = sorted(weights.items(), key=lambda item: item[1], reverse=True)[:limit]
        else:
            best = list(weights.items())
        return [self._aliases[alias_id] for alias_id, _ in best]
