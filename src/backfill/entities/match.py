"""From scored candidates to a decision: link, review, or a new entity.

Above ``accept`` a name is linked to the best entity, unless another entity scores
within ``margin`` of it (two people the name fits equally: that is for a human); between
``review`` and ``accept`` it is queued for review; below ``review`` it is somebody new.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from backfill.entities.keys import IndexedAlias
from backfill.entities.score import feature_adjustment, name_score
from backfill.errors import ConfigError

__all__ = ["Candidate", "Method", "Thresholds", "decide", "rank"]


class Method(StrEnum):
    """How a name was resolved."""

    EXTERNAL_ID = "external_id"
    EXACT = "exact"
    FUZZY = "fuzzy"
    REVIEW = "review"
    NEW = "new"
    MANUAL = "manual"


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Where the scores divide: ``accept`` links, ``review`` queues, below is new."""

    accept: float = 0.9
    review: float = 0.75
    margin: float = 0.03

    def __post_init__(self) -> None:
        if not 0.0 < self.review <= self.accept <= 1.0:
            raise ConfigError(
                f"entity thresholds need 0 < review <= accept <= 1 (got review={self.review}, "
                f"accept={self.accept})"
            )
        if not 0.0 <= self.margin < 1.0:
            raise ConfigError(f"entity margin must be in [0, 1) (got {self.margin})")


@dataclass(frozen=True, slots=True)
class Candidate:
    """An entity a name may be, through its most alike alias, and the score."""

    entity_id: int
    alias_id: int
    alias: str
    score: float


def rank(
    words: tuple[str, ...],
    features: Mapping[str, str],
    aliases: Iterable[IndexedAlias],
    limit: int = 5,
) -> list[Candidate]:
    """The best ``limit`` entities for a name, best first, each by its most alike alias."""
    best: dict[int, Candidate] = {}
    for alias in aliases:
        score = name_score(words, alias.words)
        if features:
            score += feature_adjustment(features, alias.features)
        known = best.get(alias.entity_id)
        if known is None or score > known.score:
            best[alias.entity_id] = Candidate(
                alias.entity_id, alias.alias_id, " ".join(alias.words), round(score, 4)
            )
    ordered = sorted(best.values(), key=lambda c: (-c.score, c.entity_id))
    return ordered[:limit]


def decide(ranked: list[Candidate], thresholds: Thresholds) -> tuple[Method, Candidate | None]:
    """What to do with a name given its ranked candidates."""
    if not ranked or ranked[0].score < thresholds.review:
        return Method.NEW, None
    top = ranked[0]
    clear = len(ranked) < 2 or top.score - ranked[1].score >= thresholds.margin
    if top.score >= thresholds.accept and clear:
        return Method.FUZZY, top
    return Method.REVIEW, top
