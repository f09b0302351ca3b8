"""Choosing some of a job's partitions: the :class:`Selection` and building one from
command-line input (``--from``, ``--to``, keys, ``--where dim=value``), checked against
the partitions a spec declares."""

from __future__ import annotations

import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING

from backfill.errors import ConfigError
from backfill.partitions.windows import Partition, parse_date

if TYPE_CHECKING:
    from backfill.partitions.specs import PartitionSpec

__all__ = ["FOUND_KEY_CHARS", "Selection", "select"]

# The characters of the key a discovering stage gives what it finds (``Discover(key)``):
# the key of a found partition is ``<its discoverer's key>/<name>=<found key>``, so
# stripping these from its end leaves ``<its discoverer's key>/<name>=``.
FOUND_KEY_CHARS = string.ascii_letters + string.digits + "_.:-"


@dataclass(frozen=True, slots=True)
class Selection:
    """A subset of a job's partitions chosen on the command line.

    Every given criterion must hold: the window overlaps ``[start, end]``, the key is one
    of ``keys`` or names a partition found by one of them (``found``, when any are
    given), and each named dimension takes one of its values.

    ``found`` holds ``<discovering partition's key>/<name>=``: the partitions a selected
    archive page finds for a stage declared ``discovered(..., name=<name>)``, whether
    they are on record yet or get discovered during the run.
    """

    start: date | None = None
    end: date | None = None
    keys: frozenset[str] = frozenset()
    dims: Mapping[str, frozenset[str]] = field(default_factory=dict)
    found: frozenset[str] = frozenset()

    @property
    def is_everything(self) -> bool:
        return (
            self.start is None
            and self.end is None
            and not self.keys
            and not self.dims
            and not self.found
        )

    @property
    def by_key(self) -> bool:
        """Whether it names its partitions by key (``keys`` or ``found``)."""
        return bool(self.keys or self.found)

    def matches(self, partition: Partition) -> bool:
        if self.start is not None and partition.end < self.start:
            return False
        if self.end is not None and partition.start > self.end:
            return False
        if (
            self.by_key
            and partition.key not in self.keys
            and partition.key.rstrip(FOUND_KEY_CHARS) not in self.found
        ):
            return False
        values = partition.dim_map
        return all(values.get(dim) in allowed for dim, allowed in self.dims.items())

    def describe(self) -> str:
        """The selection in words, e.g. ``from 2013-01-02, tour=atp,wta`` or ``everything``."""
        parts: list[str] = []
        if self.start and self.end:
            parts.append(f"{self.start} to {self.end}")
        elif self.start:
            parts.append(f"from {self.start}")
        elif self.end:
            parts.append(f"until {self.end}")
        if self.keys:
            n = len(self.keys)
            parts.append(f"{n:,} partition key" + ("" if n == 1 else "s"))
        if self.found:
            n = len(self.found)
            parts.append(f"what {n:,} partition" + (" finds" if n == 1 else "s find"))
        for dim, allowed in self.dims.items():
            parts.append(f"{dim}={','.join(sorted(allowed))}")
        return ", ".join(parts) or "everything"


def select(
    spec: PartitionSpec,
    *,
    start: str | date | None = None,
    end: str | date | None = None,
    keys: Iterable[str] = (),
    where: Iterable[str] = (),
) -> Selection:
    """Build a :class:`Selection` of ``spec``'s partitions from command-line style input,
    and check it (see :meth:`PartitionSpec.selection`)."""
    sel_start = parse_date(start, what="--from") if start is not None else None
    sel_end = parse_date(end, what="--to") if end is not None else None
    if sel_start and sel_end and sel_start > sel_end:
        raise ConfigError(
            f"--from {sel_start} is after --to {sel_end}; give a --from on or before --to"
        )
    key_set = frozenset(keys)
    for key in sorted(key_set):
        if spec.get(key) is None:
            raise ConfigError(
                f"unknown partition {key!r}; keys of this job look like "
                f"{spec.example_key()!r} and lie within {spec.start}..{spec.end}"
            )
    dims: dict[str, set[str]] = {}
    for item in where:
        name, sep, values = item.partition("=")
        name = name.strip()
        if not sep or not name or not values.strip():
            raise ConfigError(f"--where {item!r} must read DIMENSION=VALUE[,VALUE...]")
        if name not in spec.dims:
            known = ", ".join(spec.dims) or "none"
            raise ConfigError(f"unknown dimension {name!r} in --where; this job has: {known}")
        for value in (v.strip() for v in values.split(",")):
            if value not in spec.dims[name]:
                raise ConfigError(
                    f"dimension {name!r} has no value {value!r}; "
                    f"use one of {', '.join(spec.dims[name])}"
                )
            dims.setdefault(name, set()).add(value)
    selection = Selection(sel_start, sel_end, key_set, {k: frozenset(v) for k, v in dims.items()})
    if not selection.is_everything and next(spec.partitions(selection), None) is None:
        raise ConfigError(
            f"no partition matches the selection ({selection.describe()}); "
            f"this job covers {spec.start}..{spec.end}"
        )
    return selection
