"""Which database a ledger or a sink lives in, as a value: equal identities are one
database, so a partition's rows and its done-mark can commit in one transaction."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DatabaseIdentity"]


@dataclass(frozen=True, slots=True)
class DatabaseIdentity:
    """A database, named without secrets.

    ``location``: for SQLite the resolved file path (two spellings of one file are one
    database); for PostgreSQL ``HOST:PORT/DBNAME``. ``user`` and ``options`` count too
    for PostgreSQL: the tables an unqualified name reaches depend on the role (a
    ``"$user"`` schema) and on the options (a search_path), so the same server and
    database seen through other ones is another set of tables.
    """

    dialect: str
    location: str
    user: str = ""
    options: str = ""

    def __str__(self) -> str:
        if self.dialect == "sqlite":
            return f"sqlite:{self.location}"
        who = f"{self.user}@" if self.user else ""
        extra = f"?options={self.options}" if self.options else ""
        return f"{self.dialect}://{who}{self.location}{extra}"
