"""The review queue of a kind, as a person works through it: each unsure name with its
candidates (their names and scores), and the three answers: accept a candidate (the
provisional entity is merged into it), reject them all (the provisional entity is a new
one), or merge two entities found to be one."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from backfill.entities.store import EntityStore, MergeResult, ReviewRow
from backfill.errors import ConfigError

__all__ = ["ReviewItem", "ReviewQueue"]


@dataclass(frozen=True, slots=True)
class ReviewItem:
    """A pending review: the name, its source, its provisional entity, and the candidate
    entities (id, canonical name, score), best first."""

    id: int
    name: str
    source: str
    provisional: int
    score: float
    candidates: tuple[tuple[int, str, float], ...]


class ReviewQueue:
    """The review queue of ``kind`` in ``store``; a merge moves the rows of
    ``references`` (``"table.column"``) too."""

    def __init__(self, store: EntityStore, kind: str, references: Sequence[str] = ()) -> None:
        self.store = store
        self.kind = kind
        self.references = tuple(references)

    def pending(self) -> list[ReviewItem]:
        """The pending reviews, oldest first."""
        return [self._item(row) for row in self.store.reviews(self.kind)]

    def _item(self, row: ReviewRow) -> ReviewItem:
        candidates = []
        for candidate in row.candidates:
            entity_id = self.store.live(int(candidate["entity_id"]))
            entity = self.store.entity(entity_id)
            name = entity.name if entity is not None else str(candidate["alias"])
            candidates.append((entity_id, name, float(candidate["score"])))
        return ReviewItem(row.id, row.name, row.source, row.entity_id, row.score, tuple(candidates))

    def accept(self, review_id: int, entity_id: int | None = None) -> MergeResult:
        """The reviewed name is ``entity_id`` (by default its best candidate): its
        provisional entity, aliases and referencing rows are merged into it."""
        row = self._row(review_id)
        if entity_id is None:
            if not row.candidates:
                raise ConfigError(f"review {review_id} has no candidate; name the entity")
            entity_id = self.store.live(int(row.candidates[0]["entity_id"]))
        return self.store.accept(review_id, entity_id, self.references)

    def reject(self, review_id: int) -> None:
        """None of the candidates: the provisional entity stays, as a real one."""
        self._row(review_id)
        self.store.confirm(review_id)

    def merge(self, winner: int, loser: int) -> MergeResult:
        """Merge entity ``loser`` into ``winner`` (aliases, reviews, referencing rows)."""
        return self.store.merge(self.kind, winner, loser, self.references)

    def _row(self, review_id: int) -> ReviewRow:
        row = self.store.review(review_id)
        if row is None or row.kind != self.kind:
            raise ConfigError(
                f"no {self.kind} review {review_id}; `backfill entities review` lists them"
            )
        return row
