"""The resolver of one entity kind: a name from a source to an entity id.

Order: the source's external id; the exact normalised name (case, diacritics and
scripts, punctuation and word order folded) when it fits exactly one entity whose
features do not contradict; then fuzzy candidates (pg_trgm's GIN index on the aliases'
words on PostgreSQL, an in-memory blocking index otherwise) scored word by word with
rapidfuzz. Above ``accept`` the name is linked; between ``review`` and ``accept`` it gets
a provisional entity and a place in the review queue (the run goes on); below, a new
entity.

Example::

    resolver = EntityResolver(EntitySpec("players", "sqlite:///tennis.db"))
    player_id = resolver.resolve_now("DJOKOVIC Novak", source="atp", country="SRB")
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from backfill.entities.keys import BlockingIndex, IndexedAlias
from backfill.entities.match import Candidate, Method, Thresholds, decide, rank
from backfill.entities.normalise import feature_key, fold, name_key
from backfill.entities.store import (
    Conflict,
    EntityStore,
    MergeResult,
    check_reference,
    open_store,
)
from backfill.errors import BackfillError, ConfigError, PermanentError, TransientError
from backfill.job.stages import NAME

__all__ = ["EntityResolver", "EntitySpec", "Match", "Resolution"]

# Looks again after a conflict at most this often (a conflict means another worker just
# made what this one was making: the next look finds it).
_ATTEMPTS = 8
# PostgreSQL hands ids out in order but commits them in any order, so an alias of a lower
# id than the highest seen may still appear: ids skipped are looked for again for this
# long (a rolled-back insert, or one that met a conflict, leaves a gap for good), and at
# most this many.
_GAP_SECONDS = 10.0
# The in-memory index reads other workers' new aliases and merges at most this often
# (the entities this resolver makes join it at once), and whenever a name looks new:
# before an entity is made the index is brought up to date, so a name two workers meet
# at once is one entity (the unique key settles a true tie). Only a link may miss, for
# this long, a spelling another worker recorded; it then links as it would have.
_REFRESH_SECONDS = 0.25
_GAPS = 2_000
_CANDIDATES = 24
# Names whose exact matches and trigram candidates are read in one query each
# (resolve_many).
_BATCH = 500
# A load this large changes the tables enough for the planner to need new statistics
# (without them PostgreSQL may scan the aliases instead of using the trigram index).
_ANALYZE_AFTER = 1_000
_INDEXES = ("auto", "memory", "trigram")


@dataclass(frozen=True, slots=True)
class EntitySpec:
    """A job's entity kind: where its tables are, the thresholds, the tables pointing at
    it (``"table.column"``, moved by a merge), and how fuzzy candidates are found."""

    kind: str
    database: str
    thresholds: Thresholds = field(default_factory=Thresholds)
    references: tuple[str, ...] = ()
    index: str = "auto"

    def __post_init__(self) -> None:
        if not NAME.match(self.kind):
            raise ConfigError(
                f"entity kind {self.kind!r} must start with a letter and use only letters, "
                "digits, _ . -"
            )
        for reference in self.references:
            check_reference(reference)
        if self.index not in _INDEXES:
            raise ConfigError(f"entity index {self.index!r} must be one of {', '.join(_INDEXES)}")


@dataclass(frozen=True, slots=True)
class Resolution:
    """What a name resolved to, and why: ``method`` (external_id, exact, fuzzy, review,
    new), the score of the link (1.0 for exact ones), the candidates that were weighed."""

    entity_id: int
    method: Method
    score: float
    provisional: bool = False
    review_id: int | None = None
    candidates: tuple[Candidate, ...] = ()


@dataclass(frozen=True, slots=True)
class Match:
    """What a name would resolve to, recording nothing: ``entity_id`` is the entity
    linked (or, under review, the best candidate; None for somebody new)."""

    method: Method
    entity_id: int | None
    score: float
    candidates: tuple[Candidate, ...] = ()


def _features(given: Mapping[str, object]) -> dict[str, str]:
    return {k: fold(str(v)) for k, v in sorted(given.items()) if v is not None and str(v) != ""}


@dataclass(frozen=True, slots=True)
class _Looked:
    """What the database said of a name of a batch: the entities it names exactly (with
    their features), and its fuzzy candidates (None: not read, as it named one entity)."""

    exact: Sequence[tuple[int, Mapping[str, str]]]
    candidates: Sequence[IndexedAlias] | None


def _item(given: str | Mapping[str, Any]) -> tuple[str, str | int | None, dict[str, Any]]:
    """A name of a batch (a name, or a mapping with ``name``, optionally ``external_id``
    and features) as its name, external id and features."""
    if isinstance(given, str):
        return given, None, {}
    features = dict(given)
    name = features.pop("name")
    return name, features.pop("external_id", None), features


class EntityResolver:
    """Resolves names of one kind against its store; thread-safe (one lock around the
    store's connection), cached for the resolver's life (a run).

    ``store`` defaults to opening ``spec.database``; pass one to share a connection.
    """

    def __init__(self, spec: EntitySpec, store: EntityStore | None = None) -> None:
        self.spec = spec
        self.store = store if store is not None else open_store(spec.database, index=spec.index)
        self._owns_store = store is None
        self._index: BlockingIndex | None = None
        # Alias ids skipped so far (and since when), see _GAP_SECONDS.
        self._gaps: dict[int, float] = {}
        self._refreshed = float("-inf")
        # The highest alias id read from the store (the index also holds this resolver's
        # own newer ones, so its own high water would skip others' committed meanwhile).
        self._seen = 0
        # How many merged entities the index and the cache know of, and since when.
        self._merged = 0
        self._merges_checked = float("-inf")
        self._cache: dict[tuple[object, ...], Resolution] = {}
        self._lock = threading.Lock()
        self.cache_hits = 0

    @property
    def kind(self) -> str:
        return self.spec.kind

    def close(self) -> None:
        if self._owns_store:
            self.store.close()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    # -- from a stage --------------------------------------------------------------------
    async def resolve(
        self,
        name: str,
        *,
        source: str,
        external_id: str | int | None = None,
        **features: object,
    ) -> int:
        """The entity id of ``name`` as ``source`` writes it (``external_id``: the
        source's own id for it; ``features``: country, birth_year, tour, ...)."""
        resolution = await self.resolution(name, source=source, external_id=external_id, **features)
        return resolution.entity_id

    async def resolution(
        self,
        name: str,
        *,
        source: str,
        external_id: str | int | None = None,
        **features: object,
    ) -> Resolution:
        """Like :meth:`resolve`, with how and how well the name was matched."""
        return await asyncio.to_thread(
            self.resolve_now, name, source=source, external_id=external_id, **features
        )

    async def resolve_many(
        self, names: Iterable[str | Mapping[str, Any]], *, source: str
    ) -> list[int]:
        """The entity ids of many names at once (one trip to the resolver's thread), e.g.
        a partition's players; each item is a name or a mapping with ``name`` and
        optionally ``external_id`` and features."""
        items = list(names)

        def run() -> list[int]:
            return [r.entity_id for r in self.resolve_many_now(items, source=source)]

        return await asyncio.to_thread(run)

    # -- known entities ------------------------------------------------------------------
    def add_now(
        self,
        name: str,
        *,
        source: str,
        external_id: str | int | None = None,
        **features: object,
    ) -> int:
        """Declare a known entity (a master list, a federation's register): created as
        it is, never matched fuzzily against others; the same one again when its name and
        features (or the source's external id) are known already."""
        return self.add_many([{"name": name, "external_id": external_id, **features}], source)[0]

    def add_many(self, items: Iterable[Mapping[str, Any]], source: str) -> list[int]:
        """:meth:`add_now` for many (each a mapping with ``name``, optionally
        ``external_id`` and features), in one transaction."""
        rows = []
        for item in items:
            given = dict(item)
            name = str(given.pop("name"))
            external = given.pop("external_id", None)
            folded = _features(given)
            norm = name_key(name)
            if not norm:
                raise BackfillError(f"{self.kind}: cannot add {name!r}, which has no letters")
            rows.append((name, norm, None if external is None else str(external), folded))
        with self._lock:
            try:
                with self.store.transaction():
                    self.store.add_words(self.kind, [row[1] for row in rows])
                    added = [self._add(*row, source=source) for row in rows]
                if len(rows) >= _ANALYZE_AFTER:
                    self.store.analyze()
                return added
            except Conflict:
                # Another worker added some of them meanwhile: one at a time, looking again.
                out = []
                for row in rows:
                    for _ in range(_ATTEMPTS):
                        try:
                            with self.store.transaction():
                                out.append(self._add(*row, source=source))
                            break
                        except Conflict:
                            continue
                    else:
                        raise BackfillError(f"{self.kind}: {row[0]!r} kept conflicting") from None
                return out

    def _add(
        self, name: str, norm: str, external: str | None, features: dict[str, str], *, source: str
    ) -> int:
        store, kind = self.store, self.kind
        found = store.by_external_id(kind, source, external) if external is not None else None
        key = f"{norm}|{feature_key(features)}"
        if found is None:
            found = store.by_key(kind, key)
        entity_id = (
            store.live(found)
            if found is not None
            else store.create_entity(kind, name=name, key=key, features=features)
        )
        store.add_alias(
            kind, entity_id, name=name, norm=norm, source=source,
            external_id=external, method=Method.MANUAL, score=None,
        )  # fmt: skip
        return entity_id

    def add_alias(
        self, entity_id: int, name: str, *, source: str, external_id: str | int | None = None
    ) -> None:
        """Record that ``source`` writes ``name`` for ``entity_id`` (a known alias)."""
        self.add_aliases([(entity_id, name, external_id)], source=source)

    def add_aliases(
        self, aliases: Iterable[tuple[int, str, str | int | None]], *, source: str
    ) -> None:
        """Record known aliases ``(entity_id, name, external_id)`` of ``source`` in one
        transaction."""
        given = list(aliases)
        with self._lock, self.store.transaction():
            self.store.add_words(self.kind, [name_key(name) for _, name, _ in given])
            for entity_id, name, external_id in given:
                self.store.add_alias(
                    self.kind, self.store.live(entity_id), name=name, norm=name_key(name),
                    source=source, external_id=None if external_id is None else str(external_id),
                    method=Method.MANUAL, score=None,
                )  # fmt: skip
        if len(given) >= _ANALYZE_AFTER:
            self.store.analyze()

    # -- the algorithm -------------------------------------------------------------------
    def resolve_now(
        self,
        name: str,
        *,
        source: str,
        external_id: str | int | None = None,
        **features: object,
    ) -> Resolution:
        """Resolve on this thread (a plain ``def`` stage, a script, a benchmark)."""
        return self._resolve_item(name, source, external_id, features, None)

    def resolve_many_now(
        self, names: Iterable[str | Mapping[str, Any]], *, source: str
    ) -> list[Resolution]:
        """:meth:`resolve_now` for many names (each a name or a mapping with ``name`` and
        optionally ``external_id`` and features), in order; with pg_trgm, what the
        database says of every name not resolved yet in this run (exact matches, fuzzy
        candidates) comes in two queries.

        That is read before the first name is resolved, so a person met twice in one
        batch is found the second time by the look in the database that precedes making
        an entity, as another worker's new entity is."""
        items = [_item(n) for n in names]
        todo = [
            name_key(name)
            for name, external, features in items
            if isinstance(name, str)
            and self._cache_key(name, source, external, features) not in self._cache
        ]
        found = self._prefetch(todo)
        out = []
        for name, external, features in items:
            looked = found.get(name_key(name)) if isinstance(name, str) else None
            out.append(self._resolve_item(name, source, external, features, looked))
        return out

    def _prefetch(self, norms: Sequence[str]) -> dict[str, _Looked]:
        """What the database says of ``norms`` (the entities each names exactly; the fuzzy
        candidates of those that name not exactly one), in two queries a ``_BATCH``;
        nothing with the in-memory index, which answers at once."""
        if not self.store.trigram:
            return {}
        store, kind = self.store, self.kind
        distinct = sorted({n for n in norms if n})
        found: dict[str, _Looked] = {}
        with self._lock:
            for at in range(0, len(distinct), _BATCH):
                chunk = distinct[at : at + _BATCH]
                exact = store.by_norms(kind, chunk)
                fuzzy = [n for n in chunk if len({e for e, _ in exact.get(n, ())}) != 1]
                lists = store.trigram_candidates(kind, fuzzy, _CANDIDATES)
                candidates = dict(zip(fuzzy, lists, strict=True))
                for norm in chunk:
                    found[norm] = _Looked(exact.get(norm, []), candidates.get(norm))
        return found

    def _cache_key(
        self, name: str, source: str, external: str | int | None, features: Mapping[str, object]
    ) -> tuple[object, ...]:
        external = None if external is None else str(external)
        return (source, name, external, tuple(_features(features).items()))

    def _resolve_item(
        self,
        name: str,
        source: str,
        external_id: str | int | None,
        features: Mapping[str, object],
        looked: _Looked | None,
    ) -> Resolution:
        if not isinstance(name, str) or not fold(name):
            # What a source sent fails its own partition only.
            raise PermanentError(
                f"{self.kind}: cannot resolve {name!r}, which has no letters",
                category="entity_name",
            )
        folded = _features(features)
        external = None if external_id is None else str(external_id)
        key = self._cache_key(name, source, external, features)
        if time.monotonic() - self._merges_checked >= _REFRESH_SECONDS:
            with self._lock:
                self._follow_merges()
        cached = self._cache.get(key)
        if cached is not None:
            self.cache_hits += 1
            return cached
        with self._lock:
            for _ in range(_ATTEMPTS):
                try:
                    resolution = self._resolve(name, source, external, folded, looked)
                    break
                except Conflict:
                    looked = None  # another worker's new entity: look again in the database
                    continue
            else:
                raise TransientError(
                    f"{self.kind}: {name!r} kept conflicting with other workers' new entities",
                    category="entity_conflict",
                )
        self._cache[key] = resolution
        return resolution

    def match_now(
        self,
        name: str,
        *,
        source: str,
        external_id: str | int | None = None,
        **features: object,
    ) -> Match:
        """What :meth:`resolve_now` would decide for ``name``, recording nothing (a dry
        run, a benchmark)."""
        with self._lock:
            return self._match(
                name, name_key(name), source, None if external_id is None else str(external_id),
                _features(features),
            )  # fmt: skip

    def match_many(self, names: Iterable[str | Mapping[str, Any]], *, source: str) -> list[Match]:
        """What :meth:`resolve_many_now` would decide for each name, recording nothing."""
        items = [_item(n) for n in names]
        found = self._prefetch([name_key(name) for name, _, _ in items])
        out = []
        with self._lock:
            for name, external, features in items:
                norm = name_key(name)
                known = None if external is None else str(external)
                out.append(
                    self._match(
                        name, norm, source, known, _features(features), looked=found.get(norm)
                    )
                )
        return out

    def _match(
        self,
        name: str,
        norm: str,
        source: str,
        external: str | None,
        features: dict[str, str],
        *,
        fresh: bool = False,
        looked: _Looked | None = None,
    ) -> Match:
        """The decision for a name. With the in-memory index, names are looked up in
        memory (refreshed every ``_REFRESH_SECONDS``); ``fresh`` refreshes it and takes
        exact matches from the database, as :meth:`_resolve` does before it creates an
        entity. ``looked``: what the database said of the name, read for a batch (not used
        when ``fresh``)."""
        store, kind = self.store, self.kind
        if external is not None:
            found = store.by_external_id(kind, source, external)
            if found is not None:
                # Aliases always name a live entity (a merge moves them).
                return Match(Method.EXTERNAL_ID, found, 1.0)
        index = None if store.trigram else self._memory(fresh=fresh)
        if index is not None and not fresh:
            known: Iterable[tuple[int, Mapping[str, str]]] = index.exact(norm).items()
        elif looked is not None and not fresh:
            known = looked.exact
        else:
            # The database is the truth a new entity is checked against.
            known = store.by_norm(kind, norm)
        exact = [
            entity_id
            for entity_id, given in known
            if all(given.get(k, v) == v for k, v in features.items())
        ]
        if len(exact) == 1:
            return Match(Method.EXACT, exact[0], 1.0)
        if index is not None:
            aliases: Sequence[IndexedAlias] = index.candidates(norm.split(), _CANDIDATES)
        elif looked is not None and looked.candidates is not None and not fresh:
            aliases = looked.candidates
        else:
            aliases = store.trigram_candidates(kind, [norm], _CANDIDATES)[0]
        ranked = tuple(rank(tuple(norm.split()), features, aliases))
        method, best = decide(list(ranked), self.spec.thresholds)
        if best is None:
            return Match(method, None, 1.0, ranked)
        return Match(method, best.entity_id, best.score, ranked)

    def _resolve(
        self,
        name: str,
        source: str,
        external: str | None,
        features: dict[str, str],
        looked: _Looked | None = None,
    ) -> Resolution:
        store, kind = self.store, self.kind
        norm = name_key(name)
        match = self._match(name, norm, source, external, features, looked=looked)
        if match.method not in (Method.NEW, Method.REVIEW):
            return self._found(match, name, norm, source, external)
        # About to make an entity: one worker of the kind at a time, and each looks again
        # (in the database) once it holds the turn, so two workers meeting one person
        # at once, by one name or two spellings of it, make one entity.
        with store.transaction():
            store.lock_kind(kind)
            match = self._match(name, norm, source, external, features, fresh=True)
            if match.method not in (Method.NEW, Method.REVIEW):
                return self._found(match, name, norm, source, external, in_transaction=True)
            method, ranked = match.method, match.candidates
            review = method is Method.REVIEW
            entity_id = store.create_entity(
                kind,
                name=name,
                key=f"{norm}|{feature_key(features)}",
                features=features,
                provisional=review,
            )
            alias_id = store.add_alias(
                kind, entity_id, name=name, norm=norm, source=source,
                external_id=external, method=method, score=match.score,
            )  # fmt: skip
            review_id = None
            if review and alias_id is not None:
                review_id = store.add_review(
                    kind,
                    entity_id=entity_id,
                    alias_id=alias_id,
                    name=name,
                    source=source,
                    score=match.score,
                    candidates=[
                        {"entity_id": c.entity_id, "alias": c.alias, "score": c.score}
                        for c in ranked
                    ],
                )
        self._indexed(alias_id, entity_id, norm, features)
        return Resolution(entity_id, method, match.score, review, review_id, ranked)

    def _found(
        self,
        match: Match,
        name: str,
        norm: str,
        source: str,
        external: str | None,
        *,
        in_transaction: bool = False,
    ) -> Resolution:
        """Record the alias of a name linked to an entity found; its resolution."""
        assert match.entity_id is not None
        if match.method is Method.EXTERNAL_ID:
            external = None  # known already, by the alias that matched
        if in_transaction:
            entity_id = self._record(match.entity_id, name, norm, source, external, match)
        else:
            with self.store.transaction():
                entity_id = self._record(match.entity_id, name, norm, source, external, match)
        return Resolution(entity_id, match.method, match.score, candidates=match.candidates)

    def _record(
        self,
        entity_id: int,
        name: str,
        norm: str,
        source: str,
        external: str | None,
        match: Match,
    ) -> int:
        """Record the alias (inside a transaction); the entity's id now (an index can be
        a moment behind another worker's merge). The entity is in the index already (by
        another alias); this alias joins it at the next refresh."""
        entity_id = self.store.live(entity_id)
        self.store.add_alias(
            self.kind, entity_id, name=name, norm=norm, source=source,
            external_id=external, method=match.method, score=match.score,
        )  # fmt: skip
        return entity_id

    def _indexed(
        self, alias_id: int | None, entity_id: int, norm: str, features: dict[str, str]
    ) -> None:
        """Put the alias of an entity this resolver just made in its in-memory index, so
        that the next variant of the name finds it at once."""
        if self._index is not None and alias_id is not None:
            self._index.add(IndexedAlias(alias_id, entity_id, tuple(norm.split()), features))

    def _memory(self, *, fresh: bool) -> BlockingIndex:
        """The in-memory index, with what other workers recorded (new aliases, merges)
        read in when ``fresh`` or when ``_REFRESH_SECONDS`` have passed."""
        store, kind = self.store, self.kind
        index = self._index
        if index is None:
            index = self._index = BlockingIndex()
        now = time.monotonic()
        if not fresh and now - self._refreshed < _REFRESH_SECONDS:
            return index
        self._refreshed = now
        gaps = self._gaps
        for gap in [g for g, since in gaps.items() if now - since > _GAP_SECONDS]:
            del gaps[gap]
        if len(gaps) > _GAPS:
            for gap in sorted(gaps)[: len(gaps) - _GAPS]:
                del gaps[gap]
        seen = self._seen
        for alias in store.aliases_since(kind, seen, tuple(gaps)):
            gaps.pop(alias.alias_id, None)
            if alias.alias_id > seen + 1 and not store.ordered_commits:
                first = max(seen + 1, alias.alias_id - _GAPS)
                gaps.update(dict.fromkeys(range(first, alias.alias_id), now))
            seen = max(seen, alias.alias_id)
            index.add(alias)
        self._seen = seen
        self._follow_merges()
        return index

    def _follow_merges(self) -> None:
        """Apply merges made since the last look (by a reviewer, another worker) to the
        index and to the run's cache, so that names resolved before a merge resolve to
        the entity merged into from now on."""
        self._merges_checked = time.monotonic()
        merged = self.store.merged_count(self.kind)
        if merged == self._merged:
            return
        merges = self.store.merges(self.kind)
        if self._index is not None:
            for loser, winner in merges.items():
                self._index.move(loser, winner, self._index.features_of(winner))
        self._cache = {
            key: replace(resolution, entity_id=merges[resolution.entity_id])
            if resolution.entity_id in merges
            else resolution
            for key, resolution in self._cache.items()
        }
        self._merged = merged

    # -- review and merge ----------------------------------------------------------------
    def merge(self, winner: int, loser: int) -> MergeResult:
        """Merge entity ``loser`` into ``winner`` (see :meth:`EntityStore.merge`)."""
        with self._lock:
            result = self.store.merge(self.kind, winner, loser, self.spec.references)
            self._follow_merges()
            return result
