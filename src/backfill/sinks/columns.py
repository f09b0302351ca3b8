"""Column names and types every adapter shares: the engine's own columns and the names
reserved for them, case folding as SQLite compares names, and the portable column types a
value maps to (and how two of them widen into one)."""

from __future__ import annotations

import datetime as dt
import decimal
import string
from collections.abc import Mapping

PARTITION_COLUMN = "_partition"
# The checkpoint in force when ctx.write wrote a row (NULL before the first one).
PAGE_COLUMN = "_page"

# What the engine keeps in its own columns, by their case-folded names: a field spelled
# like one would override (or be confused with) the engine's tag.
RESERVED = {
    PARTITION_COLUMN: "the engine's partition tag (_partition)",
    PAGE_COLUMN: "the engine's checkpoint tag (_page)",
}
# SQLite folds the case of ASCII letters only, and so does this.
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def fold(name: str) -> str:
    """A column name as SQLite compares them: ASCII letters case-folded."""
    return name.translate(_ASCII_LOWER)


# Portable column types; adapters map them onto their own SQL types.
LOGICAL_TYPES = ("boolean", "integer", "real", "text", "blob", "date", "timestamp", "json")


def logical_type(value: object) -> str | None:
    """The portable column type for a Python value (None for None)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float | decimal.Decimal):
        return "real"
    if isinstance(value, str):
        return "text"
    if isinstance(value, bytes | bytearray | memoryview):
        return "blob"
    if isinstance(value, dt.datetime):
        return "timestamp"
    if isinstance(value, dt.date):
        return "date"
    if isinstance(value, Mapping | list | tuple):
        return "json"
    return "text"


def widen(a: str | None, b: str | None) -> str | None:
    """The one column type that holds values of types ``a`` and ``b`` (None: no value yet)."""
    if a is None or a == b:
        return b
    if b is None:
        return a
    if {a, b} == {"integer", "real"}:
        return "real"
    if {a, b} <= {"boolean", "integer"}:
        return "integer"
    return "text"
