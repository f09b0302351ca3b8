"""How alike two names are, and what the context features say: a score from 0 to 1.

Words are paired, longest first, each with the most alike unused word of the other name
(rapidfuzz's normalised Indel similarity), so word order does not matter; an initial
matches a word it begins; a word left without a partner (a middle name, a second
surname) costs less than a word spelled wrong, but an initial left without one costs as
much as it would have earned. Features (country, birth year, tour)
known on both sides nudge the score up when they agree and down hard when they differ.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rapidfuzz.distance import Indel

from backfill.entities.normalise import skeleton

__all__ = ["FEATURE_AGREES", "FEATURE_DIFFERS", "feature_adjustment", "name_score"]

# An initial matching the word it begins: almost, not quite, as good as the word.
_INITIAL = 0.92
_INITIAL_WEIGHT = 2.0
# A word of one name with no partner in the other counts this share of its length.
_UNPAIRED = 0.35
# Below this, two words are not a pair (both count as unpaired).
_PAIR_FLOOR = 0.6
FEATURE_AGREES = 0.02
FEATURE_DIFFERS = 0.25


# Two words of one skeleton (spelled by two romanisations) are nearly the same word.
_ROMANISED = 0.97


def _similarity(a: str, b: str) -> float:
    """How alike two words are; an initial (or a two- or three-letter abbreviation, as a
    romanised initial such as "Ie" for "Є" is) against a word it begins counts as
    ``_INITIAL``."""
    short, long = (a, b) if len(a) <= len(b) else (b, a)
    if len(short) <= 3 and len(long) > len(short):
        if long.startswith(short) or skeleton(long).startswith(skeleton(short)):
            return _INITIAL
        if len(short) == 1:
            return 0.0
    plain = Indel.normalized_similarity(a, b)
    if plain >= _ROMANISED:
        return plain
    return max(plain, _ROMANISED * Indel.normalized_similarity(skeleton(a), skeleton(b)))


def _is_abbreviation(a: str, b: str) -> bool:
    return min(len(a), len(b)) <= 3 and len(a) != len(b)


def name_score(query: Sequence[str], candidate: Sequence[str]) -> float:
    """How alike two names are, given as their folded words: 1.0 for the same words in
    any order, about 0.98 for "n djokovic" against "novak djokovic"."""
    if not query or not candidate:
        return 0.0
    free = list(candidate)
    paired = 0.0
    total = 0.0
    for word in sorted(query, key=len, reverse=True):
        best = 0.0
        best_at = -1
        for at, other in enumerate(free):
            if other:
                sim = _similarity(word, other)
                if sim > best:
                    best, best_at = sim, at
        if best_at >= 0 and best >= _PAIR_FLOOR:
            other = free[best_at]
            free[best_at] = ""
            short = best == _INITIAL and _is_abbreviation(word, other)
            weight = _INITIAL_WEIGHT if short else float(max(len(word), len(other)))
            paired += weight * best
            total += weight
        else:
            total += _unpaired(word)
    total += sum(_unpaired(w) for w in free if w)
    return paired / total if total else 0.0


def _unpaired(word: str) -> float:
    # An initial without a partner contradicts ("n djokovic" is not "m djokovic"); a long
    # word without one is more likely a middle name or a second surname left out.
    return _INITIAL_WEIGHT if len(word) <= 3 else _UNPAIRED * len(word)


def feature_adjustment(query: Mapping[str, str], candidate: Mapping[str, str]) -> float:
    """What the context features add to a name's score: a little for each feature both
    sides know and agree on, a lot off for each they know and disagree on."""
    change = 0.0
    for name, value in query.items():
        known = candidate.get(name)
        if known is not None:
            change += FEATURE_AGREES if known == value else -FEATURE_DIFFERS
    return change
