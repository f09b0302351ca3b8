"""Entity resolution: one id per real-world thing (a player, a horse) however sources
spell it, resolved while a backfill loads.

A job declares a kind with ``job.entities("players", ...)``; a stage resolves names with
``await ctx.entities("players").resolve(name, source="atp", country="SRB")``. Order: the
source's external id, the exact normalised name, then fuzzy candidates from a blocking
index (pg_trgm on PostgreSQL) scored with rapidfuzz; unsure names get a provisional id
and wait in a review queue (``backfill entities review``). Needs ``backfill[entities]``.
"""

from __future__ import annotations

from backfill.entities.match import Candidate, Method, Thresholds
from backfill.entities.resolver import EntityResolver, EntitySpec, Match, Resolution
from backfill.entities.review import ReviewItem, ReviewQueue
from backfill.entities.store import EntityStore, MergeResult, Stats, open_store

__all__ = [
    "Candidate",
    "EntityResolver",
    "EntitySpec",
    "EntityStore",
    "Match",
    "MergeResult",
    "Method",
    "Resolution",
    "ReviewItem",
    "ReviewQueue",
    "Stats",
    "Thresholds",
    "open_store",
]
