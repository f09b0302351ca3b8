"""What differs between the databases a ledger runs on, and nothing else.

:class:`~backfill.ledger.algorithm.SQLLedger` holds the algorithm once; a
:class:`Dialect` supplies its named queries (``sql/DIALECT_queries.sql``), its schema
and numbered migrations, and the pieces of SQL and values that are spelled differently:
placeholders, date arithmetic, JSON, lists, and the batch statements of plan, complete
and begin.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from datetime import date
from importlib import resources
from typing import Any

from backfill.errors import LedgerError
from backfill.ledger import limits
from backfill.ledger.models import Dependency, Outcome
from backfill.partitions import Partition, Selection
from backfill.partitions.selection import FOUND_KEY_CHARS

__all__ = ["Dialect", "check_version", "load_queries", "load_script", "statements"]


def load_script(path: str) -> str:
    """A file of ``backfill/ledger/sql/``."""
    return resources.files("backfill.ledger").joinpath(f"sql/{path}").read_text()


def load_queries(dialect: str) -> dict[str, str]:
    """The named queries of ``sql/DIALECT_queries.sql`` (``-- name: NAME`` blocks)."""
    queries: dict[str, str] = {}
    for block in re.split(r"^-- name: ", load_script(f"{dialect}_queries.sql"), flags=re.M)[1:]:
        name, _, body = block.partition("\n")
        queries[name.strip()] = body.strip()
    return queries


def statements(script: str) -> list[str]:
    """A schema script's statements, comments removed (they may hold semicolons)."""
    code = "\n".join(line.split("--", 1)[0] for line in script.splitlines())
    return [s.strip() for s in code.split(";") if s.strip()]


def check_version(found: int, current: int, url: str, *, reader: bool) -> bool:
    """Whether a ledger of schema version ``found`` is current (True) or must be migrated
    (False); a newer one is refused, and so is an older one for a ``reader`` (which never
    migrates)."""
    if found > current:
        raise LedgerError(
            f"state {url} has schema version {found}, newer than this "
            f"backfill understands ({current}); upgrade backfill"
        )
    if found < current and reader:
        raise LedgerError(
            f"state {url} has schema version {found}, older than this backfill's "
            f"({current}); run `backfill run` once to upgrade it"
        )
    return found == current


class Dialect(ABC):
    """One database's spelling of the ledger's SQL. Stateless: ledgers share one."""

    #: Names the files under ``sql/``: ``NAME_queries.sql``, ``NAME_schema.sql``,
    #: ``NAME_migrations/NNNN.sql``.
    name: str
    schema_version: int

    def __init__(self) -> None:
        self.queries = load_queries(self.name)
        self.schema = load_script(f"{self.name}_schema.sql")
        self.migrations = {
            version: load_script(f"{self.name}_migrations/{version:04d}.sql")
            for version in range(2, self.schema_version + 1)
        }

    def upgrade_scripts(self, found: int | None) -> list[str]:
        """What turns a ledger of version ``found`` (None: no tables yet) into a current one."""
        if found is None:
            return [self.schema]
        return [self.migrations[v] for v in range(found + 1, self.schema_version + 1)]

    # -- SQL text ------------------------------------------------------------------

    @abstractmethod
    def param(self, name: str) -> str:
        """The placeholder of the named parameter ``name``."""

    @abstractmethod
    def days_before(self, expr: str, days: int) -> str:
        """The date ``days`` days before the date ``expr``."""

    @abstractmethod
    def window_low(self, dep: Dependency) -> str:
        """The first day a needed upstream window may end on: the partition ``p``'s
        start, moved back ``dep.lookback`` units of ``dep.grain`` (months and years from
        the start of the unit)."""

    @abstractmethod
    def dim(self, alias: str, name: str) -> str:
        """The value of dimension ``name`` (a validated identifier) of row ``alias``."""

    @abstractmethod
    def dim_by_param(self, param: str) -> str:
        """The value of the dimension whose name is in parameter ``param``."""

    @abstractmethod
    def in_list(self, expr: str, param: str) -> str:
        """``expr`` is one of the values of the list parameter ``param``."""

    # -- values --------------------------------------------------------------------

    @abstractmethod
    def list_value(self, values: Sequence[Any]) -> Any:
        """A list, as a parameter of this dialect."""

    @abstractmethod
    def date_value(self, day: date) -> Any:
        """A date, as a parameter of this dialect."""

    @abstractmethod
    def dim_value(self, name: str) -> Any:
        """A dimension's name, as :meth:`dim_by_param` reads it."""

    @abstractmethod
    def date_of(self, raw: Any) -> date:
        """A date column's value as a date."""

    @abstractmethod
    def dims_of(self, raw: Any) -> tuple[tuple[str, str], ...]:
        """A dims column's value as (name, value) pairs."""

    # -- statements on a connection, inside its open transaction --------------------

    @abstractmethod
    def plan(self, conn: Any, stage_id: int, chunk: Sequence[Partition], memo: Any) -> int:
        """Insert the partitions not yet recorded; how many were new. ``memo`` (a dict
        the caller keeps for one plan) caches encoded values across chunks."""

    @abstractmethod
    def complete(self, conn: Any, owner: str, outcomes: Sequence[Outcome], now: float) -> int:
        """Record outcomes of partitions ``owner`` holds; how many applied."""

    @abstractmethod
    def complete_on(
        self, conn: Any, owner: str, outcomes: Sequence[Outcome], now: float
    ) -> set[int]:
        """Record outcomes; the ids applied (those whose lease ``owner`` still held)."""

    @abstractmethod
    def begin_on(self, conn: Any, owner: str, leases: Sequence[tuple[int, int]]) -> set[int]:
        """Mark leases begun; the ids ``owner`` still holds."""

    def complete_in_sink(
        self, conn: Any, owner: str, outcomes: Sequence[Outcome], now: float
    ) -> set[int]:
        """:meth:`complete_on` on a sink's connection, in the sink's transaction."""
        return self.complete_on(conn, owner, outcomes, now)

    def begin_in_sink(self, conn: Any, owner: str, leases: Sequence[tuple[int, int]]) -> set[int]:
        """:meth:`begin_on` on a sink's connection, in the sink's transaction."""
        return self.begin_on(conn, owner, leases)

    def query(self, conn: Any) -> limits.Query:
        """Named queries of this dialect on ``conn``, as :mod:`backfill.ledger.limits`
        runs them (lists bound through :meth:`list_value`)."""

        def run(name: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
            bound = {k: self.list_value(v) if isinstance(v, list) else v for k, v in params.items()}
            cursor = conn.execute(self.queries[name], bound)
            return cursor.fetchall() if cursor.description is not None else []

        return run

    def selection_sql(self, selection: Selection | None) -> tuple[str, dict[str, Any]]:
        """A SQL fragment (``AND ...``) and its parameters for a selection."""
        if selection is None or selection.is_everything:
            return "", {}
        clauses: list[str] = []
        params: dict[str, Any] = {}
        if selection.start is not None:
            clauses.append(f"window_end >= {self.param('sel_start')}")
            params["sel_start"] = self.date_value(selection.start)
        if selection.end is not None:
            clauses.append(f"window_start <= {self.param('sel_end')}")
            params["sel_end"] = self.date_value(selection.end)
        if selection.by_key:
            by_key = self.in_list("key", "sel_keys")
            params["sel_keys"] = self.list_value(sorted(selection.keys))
            if selection.found:
                # A found partition's key less its found key: its discoverer's and name.
                parent = self.in_list(f"rtrim(key, '{FOUND_KEY_CHARS}')", "sel_found")
                by_key = f"({by_key} OR {parent})"
                params["sel_found"] = self.list_value(sorted(selection.found))
            clauses.append(by_key)
        for i, (dim, allowed) in enumerate(sorted(selection.dims.items())):
            clauses.append(self.in_list(self.dim_by_param(f"sel_dim_name_{i}"), f"sel_dim_{i}"))
            params[f"sel_dim_name_{i}"] = self.dim_value(dim)
            params[f"sel_dim_{i}"] = self.list_value(sorted(allowed))
        return "".join(f" AND {c}" for c in clauses), params
