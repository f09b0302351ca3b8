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
    """Aliases by blocking key, by exact key and by entity, in memory; ``candidates`` for
    a name's words, ``exact`` for its key."""

    def __init__(self) -> None:
        self._postings: dict[str, list[int]] = {}
        self._aliases: dict[int, IndexedAlias] = {}
        self._by_norm: dict[str, list[int]] = {}
        self._by_entity: dict[int, list[int]] = {}
        self.high_water = 0

    def __len__(self) -> int:
        return len(self._aliases)

    def __contains__(self, alias_id: int) -> bool:
        return alias_id in self._aliases

    def add(self, alias: IndexedAlias) -> None:
        """Index ``alias``; an alias known already is left as it is."""
        if alias.alias_id in self._aliases:
            return
        self._aliases[alias.alias_id] = alias
        self.high_water = max(self.high_water, alias.alias_id)
        self._by_norm.setdefault(" ".join(alias.words), []).append(alias.alias_id)
        self._by_entity.setdefault(alias.entity_id, []).append(alias.alias_id)
        for key in blocking_keys(alias.words):
            self._postings.setdefault(key, []).append(alias.alias_id)

    def move(self, loser: int, winner: int, features: Mapping[str, str]) -> None:
        """Point the aliases of entity ``loser`` at ``winner`` (a merge)."""
        moved = self._by_entity.pop(loser, [])
        kept = self._by_entity.setdefault(winner, [])
        kept.extend(moved)
        for alias_id in kept:
            alias = self._aliases[alias_id]
            self._aliases[alias_id] = IndexedAlias(alias_id, winner, alias.words, features)

    def features_of(self, entity_id: int) -> Mapping[str, str]:
        """The features of an entity the index holds aliases of."""
        for alias_id in self._by_entity.get(entity_id, ()):
            return self._aliases[alias_id].features
        return {}

    def exact(self, norm: str) -> dict[int, Mapping[str, str]]:
        """The entities (and their features) with an alias whose key is ``norm``."""
        return {
            self._aliases[a].entity_id: self._aliases[a].features
            for a in self._by_norm.get(norm, ())
        }

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
