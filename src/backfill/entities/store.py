"""Where a kind's entities live, beside the sink: canonical entities, their aliases (name,
source, external id, how each was matched and how well), the review queue, and merges.

One SQL algorithm for every database (:class:`EntityStore`); what differs lives in a
dialect: SQLite (:class:`SQLiteEntityStore`) and PostgreSQL (:class:`PostgresEntityStore`,
with pg_trgm's GIN index on the aliases' words for fuzzy candidates when the role may
create the extension).
A store is one connection: every worker and thread opens its own.

Concurrency: an entity's key (its name's words in order, with its features) is unique per
kind, so two workers meeting one new name both try to create it and one of them fails with
:class:`Conflict`; the resolver then looks again and finds the other's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import re
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from backfill._sqlite import retry_locked
from backfill.entities.keys import IndexedAlias
from backfill.errors import BackfillError, ConfigError, SinkError
from backfill.secrets import mask_url

__all__ = [
    "AliasRow",
    "Conflict",
    "EntityRow",
    "EntityStore",
    "MergeResult",
    "PostgresEntityStore",
    "ReviewRow",
    "SQLiteEntityStore",
    "Stats",
    "open_store",
]

log = logging.getLogger("backfill.entities")

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")

# The version of the tables this code reads and writes: sql/schema.sql is version 1, and
# sql/migrations/N.DIALECT.sql (where a dialect has one) brings a store to version N.
SCHEMA_VERSION = 2

_ALIAS_COLUMNS = "a.id, a.entity_id, a.norm, e.features"


_NO_TABLES = "{} has no entity tables yet: a run of a job that resolves entities makes them"


class Conflict(BackfillError):
    """Another worker created the same entity first (its key is taken): look again."""


@dataclass(frozen=True, slots=True)
class EntityRow:
    """A canonical entity."""

    id: int
    kind: str
    name: str
    features: dict[str, str]
    provisional: bool
    merged_into: int | None


@dataclass(frozen=True, slots=True)
class AliasRow:
    """One way a source names an entity, and how it was matched."""

    id: int
    entity_id: int
    name: str
    source: str
    external_id: str | None
    method: str
    score: float | None


@dataclass(frozen=True, slots=True)
class ReviewRow:
    """A name the resolver was unsure of: the provisional entity it got, the candidates."""

    id: int
    kind: str
    entity_id: int
    alias_id: int
    name: str
    source: str
    score: float
    candidates: list[dict[str, Any]]
    status: str
    decided_entity: int | None


@dataclass(frozen=True, slots=True)
class MergeResult:
    """What a merge moved: aliases, reviews closed, and rows per referencing column."""

    winner: int
    loser: int
    aliases: int
    reviews: int
    rows: dict[str, int]


@dataclass(frozen=True, slots=True)
class Stats:
    """A kind's figures."""

    kind: str
    entities: int
    provisional: int
    merged: int
    aliases: int
    by_method: dict[str, int]
    pending_reviews: int


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@lru_cache(maxsize=65_536)
def _features(text: str | None) -> dict[str, str]:
    loaded = json.loads(text) if text else {}
    return {str(k): str(v) for k, v in loaded.items()}


def _quote(name: str) -> str:
    return ".".join(f'"{part}"' for part in name.split("."))


def check_reference(reference: str) -> tuple[str, str]:
    """``"table.column"`` (or ``"schema.table.column"``) split into table and column; a
    ConfigError when it is not one."""
    table, sep, column = reference.rpartition(".")
    if not sep or not _IDENTIFIER.match(table) or not _IDENTIFIER.match(column):
        raise ConfigError(
            f"entity reference {reference!r} must name a table and its column, like "
            "'matches.winner_id'"
        )
    return table, column


class EntityStore:
    """The entity tables of one database, through one connection (the algorithm; a
    subclass is a dialect)."""

    placeholder = "?"
    id_type = "INTEGER PRIMARY KEY AUTOINCREMENT"
    #: The name of the dialect's migration files (sql/migrations/N.DIALECT.sql).
    dialect = "sqlite"
    #: Whether fuzzy candidates come from the database (pg_trgm) rather than memory.
    trigram = False
    #: Whether rows commit in the order of their ids (one writer at a time, as in SQLite):
    #: then an id skipped is never filled later.
    ordered_commits = True
    description = "entity store"

    # -- the dialect's part ---------------------------------------------------------------
    def _execute(self, sql: str, params: Sequence[object] = ()) -> Any:
        raise NotImplementedError

    def _is_conflict(self, exc: Exception) -> bool:
        raise NotImplementedError

    def _is_database_error(self, exc: Exception) -> bool:
        raise NotImplementedError

    def _begin(self) -> None:
        raise NotImplementedError

    def _commit(self) -> None:
        raise NotImplementedError

    def _rollback(self) -> None:
        raise NotImplementedError

    def _table_exists(self, table: str) -> bool:
        raise NotImplementedError

    def _script(self, script: str) -> None:
        """Run a migration file (inside a transaction)."""
        raise NotImplementedError

    def _lock(self, name: str) -> None:
        """Hold, until the transaction ends, the turn named ``name``."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def trigram_candidates(
        self, kind: str, norms: Sequence[str], limit: int
    ) -> list[list[IndexedAlias]]:
        """For each of ``norms``, the aliases alike it by the database's trigram index of
        words (PostgreSQL only), in one query."""
        raise NotImplementedError

    def lock_kind(self, kind: str) -> None:
        """Hold, until the transaction ends, the turn to make entities of ``kind``."""
        self._lock(f"backfill.entities:{kind}")

    # -- the algorithm -------------------------------------------------------------------
    def _sql(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def query(self, sql: str, params: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = self._execute(self._sql(sql), params).fetchall()
        return rows

    def _run(self, sql: str, params: Sequence[object] = ()) -> int:
        cursor = self._execute(self._sql(sql), params)
        return int(cursor.rowcount or 0)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction: committed at the end of the block, rolled back on an error
        (a unique key taken by another worker is :class:`Conflict`)."""
        self._begin()
        try:
            yield
        except Exception as exc:
            self._rollback()
            if self._is_conflict(exc):
                raise Conflict("another worker created this entity first") from exc
            if self._is_database_error(exc):
                reason = " ".join(str(exc).split()) or type(exc).__name__
                raise SinkError(f"{self.description}: {reason}") from exc
            raise
        else:
            self._commit()

    def ensure_schema(self) -> None:
        """Create the tables when missing, and bring tables of an older version up to this
        code's, one worker at a time (workers starting together may still race to create
        them: the losers look again); refuse tables of a newer version than this code's."""
        files = resources.files("backfill.entities").joinpath("sql")
        text = files.joinpath("schema.sql").read_text()
        script = "\n".join(x for x in text.splitlines() if not x.lstrip().startswith("--"))
        for attempt in range(5):
            try:
                with self.transaction():
                    self._lock("backfill.entities schema")
                    for statement in script.format(id_type=self.id_type).split(";"):
                        if statement.strip():
                            self._execute(statement)
                    rows = self.query("SELECT MAX(version) FROM bf_entity_schema")
                    version = rows[0][0]
                    if version is not None and int(version) > SCHEMA_VERSION:
                        raise ConfigError(
                            f"{self.description} holds entity tables of version {version}, "
                            f"newer than this backfill's ({SCHEMA_VERSION}): upgrade backfill"
                        )
                    # A new store is made as version 1 and upgraded like an old one.
                    for step in range(int(version or 1) + 1, SCHEMA_VERSION + 1):
                        migration = files.joinpath(f"migrations/{step}.{self.dialect}.sql")
                        if migration.is_file():
                            self._script(migration.read_text())
                    if version is None:
                        self._run(
                            "INSERT INTO bf_entity_schema (version) VALUES (?)", (SCHEMA_VERSION,)
                        )
                    elif int(version) < SCHEMA_VERSION:
                        log.info(
                            "%s: entity tables upgraded from version %s to %s",
                            self.description, version, SCHEMA_VERSION,
                        )  # fmt: skip
                        self._run("UPDATE bf_entity_schema SET version = ?", (SCHEMA_VERSION,))
                return
            except Conflict:
                if attempt == 4:
                    raise

    def _open(self, *, create: bool) -> None:
        """Make or upgrade the tables (see :meth:`ensure_schema`); with ``create`` false
        (a command that only reads or settles what a run recorded), a store without them
        is a ConfigError and is left as it was."""
        if not create and not self._table_exists("bf_entity_schema"):
            self.close()
            raise ConfigError(_NO_TABLES.format(self.description))
        self.ensure_schema()

    def analyze(self) -> None:
        """Refresh the planner's statistics (after a large load)."""
        self._execute("ANALYZE bf_entity_aliases")
        self._execute("ANALYZE bf_entities")

    def live(self, entity_id: int) -> int:
        """The entity ``entity_id`` is now (itself, or the one it was merged into)."""
        rows = self.query("SELECT merged_into FROM bf_entities WHERE id = ?", (entity_id,))
        if rows and rows[0][0] is not None:
            return int(rows[0][0])
        return entity_id

    def entity(self, entity_id: int) -> EntityRow | None:
        rows = self.query(
            "SELECT id, kind, name, features, provisional, merged_into FROM bf_entities "
            "WHERE id = ?",
            (entity_id,),
        )
        if not rows:
            return None
        row = rows[0]
        return EntityRow(
            int(row[0]),
            row[1],
            row[2],
            _features(row[3]),
            bool(row[4]),
            None if row[5] is None else int(row[5]),
        )

    def by_external_id(self, kind: str, source: str, external_id: str) -> int | None:
        """The entity that ``source`` calls ``external_id``."""
        rows = self.query(
            "SELECT entity_id FROM bf_entity_aliases WHERE kind = ? AND source = ? "
            "AND external_id = ?",
            (kind, source, external_id),
        )
        return int(rows[0][0]) if rows else None

    def merged_count(self, kind: str) -> int:
        """How many entities of ``kind`` were merged into others."""
        rows = self.query(
            "SELECT COUNT(*) FROM bf_entities WHERE kind = ? AND merged_into IS NOT NULL",
            (kind,),
        )
        return int(rows[0][0])

    def merges(self, kind: str) -> dict[int, int]:
        """Every merged entity of ``kind`` and the one it is now."""
        rows = self.query(
            "SELECT id, merged_into FROM bf_entities WHERE kind = ? AND merged_into IS NOT NULL",
            (kind,),
        )
        return {int(r[0]): int(r[1]) for r in rows}

    def by_key(self, kind: str, key: str) -> int | None:
        """The entity whose key (name and features) is ``key``."""
        rows = self.query("SELECT id FROM bf_entities WHERE kind = ? AND key = ?", (kind, key))
        return int(rows[0][0]) if rows else None

    def by_norm(self, kind: str, norm: str) -> list[tuple[int, dict[str, str]]]:
        """The entities (and their features) some source spelled as ``norm``."""
        rows = self.query(
            "SELECT DISTINCT e.id, e.features FROM bf_entity_aliases a "
            "JOIN bf_entities e ON e.id = a.entity_id WHERE a.kind = ? AND a.norm = ?",
            (kind, norm),
        )
        return [(int(r[0]), _features(r[1])) for r in rows]

    def by_norms(
        self, kind: str, norms: Sequence[str]
    ) -> dict[str, list[tuple[int, dict[str, str]]]]:
        """:meth:`by_norm` for many names in one query."""
        found: dict[str, list[tuple[int, dict[str, str]]]] = {}
        if not norms:
            return found
        marks = ", ".join("?" * len(norms))
        rows = self.query(
            "SELECT DISTINCT a.norm, e.id, e.features FROM bf_entity_aliases a "
            f"JOIN bf_entities e ON e.id = a.entity_id WHERE a.kind = ? AND a.norm IN ({marks})",
            (kind, *norms),
        )
        for norm, entity_id, features in rows:
            found.setdefault(norm, []).append((int(entity_id), _features(features)))
        return found

    def aliases_since(self, kind: str, after: int, also: Sequence[int] = ()) -> list[IndexedAlias]:
        """The aliases of ``kind`` with an id above ``after`` or among ``also``, with their
        entity's features, for the in-memory index."""
        extra = f" OR a.id IN ({', '.join(str(int(i)) for i in also)})" if also else ""
        rows = self.query(
            f"SELECT {_ALIAS_COLUMNS} FROM bf_entity_aliases a JOIN bf_entities e "
            f"ON e.id = a.entity_id WHERE a.kind = ? AND (a.id > ?{extra}) ORDER BY a.id",
            (kind, after),
        )
        return [
            IndexedAlias(int(r[0]), int(r[1]), tuple(r[2].split()), _features(r[3])) for r in rows
        ]

    def _insert_id(self, sql: str, params: Sequence[object]) -> int:
        rows = self._execute(self._sql(sql + " RETURNING id"), params).fetchall()
        return int(rows[0][0])

    def create_entity(
        self,
        kind: str,
        *,
        name: str,
        key: str,
        features: Mapping[str, str],
        provisional: bool = False,
    ) -> int:
        """A new entity (inside a transaction); :class:`Conflict` when its key is taken."""
        return self._insert_id(
            "INSERT INTO bf_entities (kind, key, name, features, provisional, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (kind, key, name, json.dumps(dict(features), sort_keys=True), int(provisional), _now()),
        )

    def add_alias(
        self,
        kind: str,
        entity_id: int,
        *,
        name: str,
        norm: str,
        source: str,
        external_id: str | None,
        method: str,
        score: float | None,
    ) -> int | None:
        """Record that ``source`` names ``entity_id`` so (inside a transaction); the alias's
        id, or None when it was known already (its external id kept, or added)."""
        rows = self._execute(
            self._sql(
                "INSERT INTO bf_entity_aliases (kind, entity_id, name, norm, source, "
                "external_id, method, score, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (kind, norm, source, entity_id) DO NOTHING RETURNING id"
            ),
            (kind, entity_id, name, norm, source, external_id, method, score, _now()),
        ).fetchall()
        if rows:
            return int(rows[0][0])
        if external_id is not None:
            self._run(
                "UPDATE bf_entity_aliases SET external_id = ? WHERE kind = ? AND source = ? "
                "AND norm = ? AND entity_id = ? AND external_id IS NULL",
                (external_id, kind, source, norm, entity_id),
            )
        return None

    def add_words(self, kind: str, norms: Sequence[str]) -> None:
        """Before a transaction adds many aliases: add their words for the trigram index,
        in sorted order (PostgreSQL; see sql/migrations/2.postgresql.sql)."""

    def add_review(
        self,
        kind: str,
        *,
        entity_id: int,
        alias_id: int,
        name: str,
        source: str,
        score: float,
        candidates: Sequence[Mapping[str, object]],
    ) -> int:
        """Queue a name for review (inside a transaction)."""
        return self._insert_id(
            "INSERT INTO bf_entity_reviews (kind, entity_id, alias_id, name, source, score, "
            "candidates, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (kind, entity_id, alias_id, name, source, score, json.dumps(list(candidates)), _now()),
        )

    def reviews(self, kind: str, status: str | None = "pending") -> list[ReviewRow]:
        """The review queue of ``kind``, oldest first (``status=None``: every review)."""
        if status is None:
            return self._reviews("kind = ?", (kind,))
        return self._reviews("kind = ? AND status = ?", (kind, status))

    def review(self, review_id: int) -> ReviewRow | None:
        """One review, whatever its status."""
        found = self._reviews("id = ?", (review_id,))
        return found[0] if found else None

    def _reviews(self, where: str, params: Sequence[object]) -> list[ReviewRow]:
        rows = self.query(
            "SELECT id, kind, entity_id, alias_id, name, source, score, candidates, status, "
            f"decided_entity FROM bf_entity_reviews WHERE {where} ORDER BY id",
            params,
        )
        return [
            ReviewRow(
                int(r[0]),
                r[1],
                int(r[2]),
                int(r[3]),
                r[4],
                r[5],
                float(r[6]),
                json.loads(r[7]),
                r[8],
                None if r[9] is None else int(r[9]),
            )
            for r in rows
        ]

    def confirm(self, review_id: int) -> None:
        """Reject a review's candidates: its provisional entity is a real one."""
        review = self._pending(review_id)
        with self.transaction():
            self._run("UPDATE bf_entities SET provisional = 0 WHERE id = ?", (review.entity_id,))
            self._close_review(review_id, "rejected", review.entity_id)

    def accept(self, review_id: int, entity_id: int, references: Sequence[str]) -> MergeResult:
        """Accept that a reviewed name is ``entity_id``: its provisional entity is merged
        into it (aliases and referencing rows follow) in one transaction."""
        review = self._pending(review_id)
        with self.transaction():
            result = self._merge(review.kind, entity_id, review.entity_id, references)
            self._close_review(review_id, "accepted", result.winner)
        return result

    def _pending(self, review_id: int) -> ReviewRow:
        review = self.review(review_id)
        if review is None:
            raise ConfigError(f"no review {review_id}; `backfill entities review` lists them")
        if review.status != "pending":
            raise ConfigError(f"review {review_id} is {review.status} already")
        return review

    def _close_review(self, review_id: int, status: str, entity_id: int) -> None:
        self._run(
            "UPDATE bf_entity_reviews SET status = ?, decided_entity = ?, decided_at = ? "
            "WHERE id = ?",
            (status, entity_id, _now(), review_id),
        )

    def merge(self, kind: str, winner: int, loser: int, references: Sequence[str]) -> MergeResult:
        """Merge entity ``loser`` into ``winner`` in one transaction: every alias, every
        pending review and every row of the ``references`` (``"table.column"``) pointing
        at ``loser`` points at ``winner`` after; ``loser`` remembers where it went. Again
        for a ``loser`` merged into ``winner`` already, it moves the rows that still point
        at it."""
        with self.transaction():
            return self._merge(kind, winner, loser, references)

    def _merge(self, kind: str, winner: int, loser: int, references: Sequence[str]) -> MergeResult:
        for which, entity_id in (("winner", winner), ("loser", loser)):
            row = self.entity(entity_id)
            if row is None or row.kind != kind:
                raise ConfigError(f"no {kind} entity {entity_id} (the {which} of the merge)")
            # Merging again what was merged into the same winner moves only the rows
            # written with the old id since (a running job in the moment of the merge).
            if row.merged_into is not None and not (which == "loser" and row.merged_into == winner):
                raise ConfigError(
                    f"{kind} entity {entity_id} was merged into {row.merged_into} already; "
                    f"merge {row.merged_into} instead"
                )
        if winner == loser:
            raise ConfigError(f"cannot merge {kind} entity {winner} into itself")
        # A spelling both entities have is kept once, the winner's (with the loser's
        # external id when the winner's alias has none).
        self._run(
            "UPDATE bf_entity_aliases SET external_id = (SELECT l.external_id FROM "
            "bf_entity_aliases l WHERE l.entity_id = ? AND l.kind = bf_entity_aliases.kind "
            "AND l.source = bf_entity_aliases.source AND l.norm = bf_entity_aliases.norm) "
            "WHERE entity_id = ? AND external_id IS NULL",
            (loser, winner),
        )
        self._run(
            "DELETE FROM bf_entity_aliases WHERE entity_id = ? AND EXISTS (SELECT 1 FROM "
            "bf_entity_aliases w WHERE w.entity_id = ? AND w.kind = bf_entity_aliases.kind "
            "AND w.source = bf_entity_aliases.source AND w.norm = bf_entity_aliases.norm)",
            (loser, winner),
        )
        aliases = self._run(
            "UPDATE bf_entity_aliases SET entity_id = ? WHERE entity_id = ?", (winner, loser)
        )
        self._run("UPDATE bf_entities SET merged_into = ? WHERE merged_into = ?", (winner, loser))
        self._run(
            "UPDATE bf_entities SET merged_into = ?, provisional = 0 WHERE id = ?",
            (winner, loser),
        )
        self._run("UPDATE bf_entities SET provisional = 0 WHERE id = ?", (winner,))
        reviews = self._run(
            "UPDATE bf_entity_reviews SET status = 'merged', decided_entity = ?, decided_at = ? "
            "WHERE entity_id = ? AND status = 'pending'",
            (winner, _now(), loser),
        )
        rows: dict[str, int] = {}
        for reference in references:
            table, column = check_reference(reference)
            if self._table_exists(table):
                rows[reference] = self._run(
                    f"UPDATE {_quote(table)} SET {_quote(column)} = ? WHERE {_quote(column)} = ?",
                    (winner, loser),
                )
            else:
                rows[reference] = 0
        return MergeResult(winner, loser, aliases, reviews, rows)

    def aliases(self, entity_id: int) -> list[AliasRow]:
        rows = self.query(
            "SELECT id, entity_id, name, source, external_id, method, score FROM "
            "bf_entity_aliases WHERE entity_id = ? ORDER BY id",
            (entity_id,),
        )
        return [AliasRow(int(r[0]), int(r[1]), r[2], r[3], r[4], r[5], r[6]) for r in rows]

    def stats(self, kind: str) -> Stats:
        """How many entities, provisional ones, merged ones, aliases (by how they were
        matched) and pending reviews ``kind`` has."""
        entities, provisional, merged = self.query(
            "SELECT COALESCE(SUM(CASE WHEN merged_into IS NULL THEN 1 ELSE 0 END), 0), "
            "COALESCE(SUM(CASE WHEN merged_into IS NULL AND provisional = 1 THEN 1 ELSE 0 END), "
            "0), "
            "COALESCE(SUM(CASE WHEN merged_into IS NULL THEN 0 ELSE 1 END), 0) "
            "FROM bf_entities WHERE kind = ?",
            (kind,),
        )[0]
        by_method = {
            str(m): int(n)
            for m, n in self.query(
                "SELECT method, COUNT(*) FROM bf_entity_aliases WHERE kind = ? GROUP BY method "
                "ORDER BY method",
                (kind,),
            )
        }
        pending = self.query(
            "SELECT COUNT(*) FROM bf_entity_reviews WHERE kind = ? AND status = 'pending'",
            (kind,),
        )[0][0]
        return Stats(
            kind,
            int(entities),
            int(provisional),
            int(merged),
            sum(by_method.values()),
            by_method,
            int(pending),
        )

    def kinds(self) -> list[str]:
        return [str(r[0]) for r in self.query("SELECT DISTINCT kind FROM bf_entities ORDER BY 1")]


class SQLiteEntityStore(EntityStore):
    """The entity tables in a SQLite file (WAL; writers wait up to 30 s for each other)."""

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path)
        self.description = f"entity store {self.path}"
        if not create and not self.path.is_file():
            raise ConfigError(_NO_TABLES.format(self.description))
        try:
            self.raw = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30.0
            )
            retry_locked(lambda: self.raw.execute("PRAGMA journal_mode=WAL"))
            self.raw.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise SinkError(f"cannot open {self.description}: {exc}") from exc
        self._open(create=create)

    def _execute(self, sql: str, params: Sequence[object] = ()) -> Any:
        return self.raw.execute(sql, tuple(params))

    def _is_conflict(self, exc: Exception) -> bool:
        return isinstance(exc, sqlite3.IntegrityError) and "UNIQUE" in str(exc)

    def _is_database_error(self, exc: Exception) -> bool:
        return isinstance(exc, sqlite3.Error)

    def _begin(self) -> None:
        self.raw.execute("BEGIN IMMEDIATE")

    def _lock(self, name: str) -> None:
        """Nothing to do: ``BEGIN IMMEDIATE`` holds the file's one write lock."""

    def _script(self, script: str) -> None:
        statement = ""
        for line in script.splitlines(keepends=True):
            statement += line
            if sqlite3.complete_statement(statement):
                self._execute(statement)
                statement = ""

    def _commit(self) -> None:
        self.raw.execute("COMMIT")

    def _rollback(self) -> None:
        if self.raw.in_transaction:
            self.raw.execute("ROLLBACK")

    def _table_exists(self, table: str) -> bool:
        schema, _, name = table.rpartition(".")
        master = f"{_quote(schema)}.sqlite_master" if schema else "sqlite_master"
        return bool(
            self.query(f"SELECT 1 FROM {master} WHERE type = 'table' AND name = ?", (name,))
        )

    def close(self) -> None:
        self.raw.close()


class PostgresEntityStore(EntityStore):
    """The entity tables in a PostgreSQL database, fuzzy candidates from pg_trgm's GIN
    index on the aliases' words when the extension is there or the role may create it
    (``index="auto"``); an in-memory index otherwise, said once in the log.

    ``similarity``: how alike (pg_trgm's similarity) a stored word must be to a word of
    the name to bring its aliases. On the benchmark's set (10,000 queries, 100-name
    batches) recall was 0.9941 at 0.3, 0.9936 at 0.4, 0.9923 at 0.45 and 0.9872 at 0.5,
    precision 0.997-0.998 throughout; the server's time a query 0.23 ms at 0.4, 0.17 at
    0.45 (0.3 costs about a third more than 0.4)."""

    placeholder = "%s"
    id_type = "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"
    dialect = "postgresql"
    ordered_commits = False

    def __init__(
        self, url: str, *, index: str = "auto", similarity: float = 0.45, create: bool = True
    ) -> None:
        import psycopg

        self.url = url
        self.description = f"entity store {mask_url(url)}"
        self._psycopg = psycopg
        try:
            self.raw = psycopg.connect(url, connect_timeout=10, autocommit=True)
        except psycopg.Error as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise SinkError(f"cannot connect to {self.description}: {reason}") from exc
        self._ops = ""
        self._open(create=create)
        if index != "memory":
            self._ops = self._trigram_schema(required=index == "trigram")
            self.trigram = bool(self._ops)
        if self.trigram:
            self.raw.execute(f"SET pg_trgm.similarity_threshold = {float(similarity)}")
            # A batch's candidates are estimated costly enough to be compiled (JIT), which
            # took 40 ms of a 100-name query that runs in a few.
            self.raw.execute("SET jit = off")

    def _trigram_schema(self, *, required: bool) -> str:
        """The schema of pg_trgm (created when missing and the role may), its GIN index on
        the aliases made; "" (and one log line saying why) when it cannot be had."""
        psycopg = self._psycopg
        try:
            self.raw.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        except psycopg.errors.UniqueViolation:
            pass  # another worker created it at the same moment
        except psycopg.Error as exc:
            reason = " ".join(str(exc).split())
            message = (
                f"{self.description}: pg_trgm is not installed and this role may not create "
                f"it ({reason}); fuzzy matching uses an in-memory index instead (ask an "
                "administrator for: CREATE EXTENSION pg_trgm)"
            )
            if required:
                raise ConfigError(message) from exc
            log.warning(message)
            return ""
        row = self.raw.execute(
            "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n "
            "ON n.oid = e.extnamespace WHERE e.extname = 'pg_trgm'"
        ).fetchone()
        if row is None:  # dropped by someone else between the two statements
            return ""
        schema = f'"{row[0]}".'
        with contextlib.suppress(psycopg.errors.UniqueViolation):  # made by another worker
            # fastupdate off: a new word goes into the index at once, not into a pending
            # list that every search reads through until a vacuum (after the benchmark's
            # load, 412 names a second with the list, 1,641 without it).
            self.raw.execute(
                "CREATE INDEX IF NOT EXISTS bf_entity_words_trgm ON bf_entity_words "
                f"USING gin (word {schema}gin_trgm_ops) WITH (fastupdate = off)"
            )
        return schema

    def _execute(self, sql: str, params: Sequence[object] = ()) -> Any:
        return self.raw.execute(sql, tuple(params))

    def add_words(self, kind: str, norms: Sequence[str]) -> None:
        words = sorted({w for norm in norms for w in norm.split()})
        if words:
            self.raw.execute(
                "INSERT INTO bf_entity_words (kind, word) SELECT %s, w FROM unnest(%s::text[]) "
                "AS w ORDER BY w ON CONFLICT DO NOTHING",
                (kind, words),
            )

    def analyze(self) -> None:
        """Statistics, and the visibility map a vacuum sets (outside a transaction): after
        a load, index-only scans of the aliases' words went to the table for every row
        until autovacuum came (the server's time a query, 0.31 ms before a vacuum, 0.26
        after, on the benchmark's set). Without statistics the planner may walk every
        word of the kind rather than use the trigram index."""
        for table in (
            "bf_entity_aliases",
            "bf_entities",
            "bf_entity_words",
            "bf_entity_alias_words",
        ):
            self._execute(f"VACUUM (ANALYZE) {table}")

    def _is_conflict(self, exc: Exception) -> bool:
        return isinstance(exc, self._psycopg.errors.UniqueViolation)

    def _is_database_error(self, exc: Exception) -> bool:
        return isinstance(exc, self._psycopg.Error)

    def _begin(self) -> None:
        self.raw.execute("BEGIN")

    def _lock(self, name: str) -> None:
        self.raw.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (name,))

    def _script(self, script: str) -> None:
        # Without parameters psycopg sends the file as it is, dollar-quoted bodies and all.
        self.raw.execute(script)

    def _commit(self) -> None:
        self.raw.execute("COMMIT")

    def _rollback(self) -> None:
        if not self.raw.closed and not self.raw.broken:
            self.raw.execute("ROLLBACK")

    def _table_exists(self, table: str) -> bool:
        row = self.raw.execute("SELECT to_regclass(%s)", (_quote(table),)).fetchone()
        return row is not None and row[0] is not None

    def trigram_candidates(
        self, kind: str, norms: Sequence[str], limit: int
    ) -> list[list[IndexedAlias]]:
        """Candidates by word, not by whole name: each word of a name (initials left out
        while it has longer ones) finds the stored words alike it through pg_trgm's GIN
        index on the distinct words, small beside one on whole names, where a common first
        name's trigrams made the index recheck thousands of aliases. Each alias holding
        such words scores, per word of the name, its best word's similarity; the best
        ``limit`` by their sum are the name's candidates. All of ``norms`` in one query."""
        if not norms:
            return []
        ops = self._ops
        searches = []
        for norm in norms:
            words = norm.split()
            longer = sorted({w for w in words if len(w) >= 2})
            searches.append(" ".join(longer or sorted(set(words))))
        rows = self.raw.execute(
            f"""
            SELECT n.at, a.id, a.entity_id, a.norm, e.features
            FROM unnest(%(searches)s::text[]) WITH ORDINALITY AS n (search, at)
            CROSS JOIN LATERAL (
                SELECT per.alias_id, sum(per.part) AS score FROM (
                    SELECT aw.alias_id, s.w, max(s.sim) AS part FROM (
                        SELECT q.w, x.word, x.sim
                        FROM unnest(string_to_array(n.search, ' ')) AS q (w)
                        CROSS JOIN LATERAL (
                            SELECT word, {ops}similarity(word, q.w) AS sim
                            FROM bf_entity_words
                            WHERE kind = %(kind)s AND word OPERATOR({ops}%%) q.w
                            OFFSET 0
                        ) x
                    ) s
                    JOIN bf_entity_alias_words aw ON aw.kind = %(kind)s AND aw.word = s.word
                    GROUP BY aw.alias_id, s.w
                ) per
                GROUP BY per.alias_id
                ORDER BY score DESC, per.alias_id
                LIMIT %(limit)s
            ) best
            JOIN bf_entity_aliases a ON a.id = best.alias_id
            JOIN bf_entities e ON e.id = a.entity_id
            ORDER BY n.at, best.score DESC, best.alias_id
            """,
            {"searches": searches, "kind": kind, "limit": limit},
        ).fetchall()
        out: list[list[IndexedAlias]] = [[] for _ in norms]
        for r in rows:
            out[int(r[0]) - 1].append(
                IndexedAlias(int(r[1]), int(r[2]), tuple(r[3].split()), _features(r[4]))
            )
        return out

    def close(self) -> None:
        self.raw.close()


def open_store(database: str, *, index: str = "auto", create: bool = True) -> EntityStore:
    """The entity store of a database URL: ``sqlite:///PATH``, a file path, or
    ``postgresql://...`` (``index``: ``"auto"``, ``"memory"`` or ``"trigram"``, see
    :class:`PostgresEntityStore`). ``create=False``: a store without entity tables is a
    ConfigError, nothing made (the commands that read them)."""
    scheme, sep, rest = database.partition("://")
    if sep and scheme in ("postgresql", "postgres"):
        from backfill._optional import require_postgres

        require_postgres("a PostgreSQL entity store")
        return PostgresEntityStore(database, index=index, create=create)
    if not sep or scheme == "sqlite":
        path = database if not sep else (rest[1:] if rest.startswith("/") else rest)
        if not path:
            raise ConfigError(f"entity database {database!r} names no file; use sqlite:///PATH")
        return SQLiteEntityStore(path, create=create)
    raise ConfigError(
        f"unsupported entity database {scheme}://...; use sqlite:///PATH, a file path, or "
        "postgresql://USER@HOST/DATABASE"
    )
