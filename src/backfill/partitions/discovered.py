"""Partitions the data discovers rather than the calendar: a stage yields
:class:`Discover` for each thing it finds (a tournament on a year's archive page), and a
stage declared with ``partitions=discovered("tournaments")`` gets one partition per find.

A discovered partition lives in the window of the partition that found it, with its
dimensions, under that partition's key plus one segment (``1990/tour=atp/tournament=339``),
and carries what was found out about it as ``partition.params``. It is planned into the
ledger when its discoverer finishes, and from then on is a partition like any other.

Example::

    @job.stage(partitions=yearly("1968-01-01", "2024-12-31", tour=["atp", "wta"]))
    async def tournaments(ctx, partition):
        for t in await archive(partition.date.year, partition["tour"]):
            yield Discover(t["number"], {"name": t["name"], "url": t["url"]})

    @job.stage(partitions=discovered("tournaments", name="tournament"))
    async def results(ctx, partition):
        return await draws(partition.params["url"])
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from backfill.errors import ConfigError, PermanentError
from backfill.partitions.selection import FOUND_KEY_CHARS, Selection
from backfill.partitions.specs import PartitionSpec
from backfill.partitions.windows import NO_PARAMS, Grain, Order, Partition

__all__ = ["MAX_PARAMS", "Discover", "DiscoveredSpec", "discovered", "params_json"]

_KEY = re.compile(rf"^[{re.escape(FOUND_KEY_CHARS)}]{{1,200}}$")
# What one discovered partition may carry, encoded: a source cannot fill the ledger.
MAX_PARAMS = 64 * 1024


@dataclass(frozen=True, slots=True)
class Discover:
    """A partition a stage found for the stages declared ``discovered(<that stage>)``.

    ``key`` names it among its discoverer's finds (letters, digits and ``_ . : -``);
    ``params`` (JSON values) is what the stage that runs it gets as ``partition.params``.
    Finding the same key again adds nothing (the first params stay).
    """

    key: str
    params: Mapping[str, Any] = field(default_factory=lambda: NO_PARAMS)

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not _KEY.match(self.key):
            raise PermanentError(
                f"Discover key {str(self.key)[:80]!r} must be 1 to 200 letters, digits or _ . : -",
                category="discover",
            )
        if not isinstance(self.params, Mapping):
            raise PermanentError(
                f"Discover({self.key!r}) params must be a mapping, not "
                f"{type(self.params).__name__}",
                category="discover",
            )


def params_json(found: Discover) -> str | None:
    """The params as the ledger keeps them; a PermanentError (of the discovering
    partition only) when they are not JSON or too large."""
    if not found.params:
        return None
    try:
        text = json.dumps(dict(found.params), separators=(",", ":"), sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise PermanentError(
            f"Discover({found.key!r}) params are not JSON values: {exc}", category="discover"
        ) from None
    if len(text) > MAX_PARAMS:
        raise PermanentError(
            f"Discover({found.key!r}) params take {len(text):,} bytes as JSON, more than "
            f"{MAX_PARAMS:,}; keep only what the stage needs",
            category="discover",
        )
    return text


class DiscoveredSpec(PartitionSpec):
    """The partitions of a stage that ``source`` discovers (see :func:`discovered`).

    Nothing is declared up front: iterating it yields nothing, and the ledger holds what
    was found. Bound to the source's spec when the stage is declared, it has that spec's
    grain, range and dimensions (for selections, ``--where`` and dependencies).
    """

    __slots__ = ("name", "parent", "source")

    def __init__(self, source: str, name: str, parent: PartitionSpec | None = None) -> None:
        if not _KEY.match(name) or "=" in name or "/" in name:
            raise ConfigError(
                f"discovered({source!r}, name={name!r}): the name may use only letters, "
                "digits and _ . : -"
            )
        self.source = source
        self.name = name
        self.parent = parent
        base = parent or PartitionSpec(Grain.DAY, date(1, 1, 1), date(9999, 12, 31))
        self.grain = base.grain
        self.start, self.end = base.start, base.end
        self.order = base.order
        self.dims = dict(base.dims)
        self.ranges = dict(base.ranges)
        self.tz = base.tz
        self._given = (base.start, base.end)
        self._given_dims = {}

    def in_zone(self, tz: str | None) -> PartitionSpec:
        """In the discovering spec's zone (given to it, when it names none)."""
        if self.parent is None:
            return self
        return DiscoveredSpec(self.source, self.name, self.parent.in_zone(tz))

    def through(self, end: str | date) -> PartitionSpec:
        """Within the discovering spec moved to ``end`` (a keep-current run)."""
        if self.parent is None:
            return self
        return DiscoveredSpec(self.source, self.name, self.parent.through(end))

    def bound(self, parent: PartitionSpec) -> DiscoveredSpec:
        """This spec in the windows and dimensions of its source stage's spec."""
        if isinstance(parent, DiscoveredSpec):
            raise ConfigError(
                f"stage {self.source!r} has discovered partitions itself; a stage may "
                "discover from a stage of calendar (or reference) partitions only"
            )
        return DiscoveredSpec(self.source, self.name, parent)

    def __repr__(self) -> str:
        return f"discovered({self.source!r}, name={self.name!r})"

    def windows(self, order: Order | None = None) -> Iterator[tuple[date, date]]:
        return iter(())

    def window_count(self) -> int:
        return 0

    def __len__(self) -> int:
        return 0

    def __bool__(self) -> bool:
        # A declaration, though it holds nothing yet: ``partitions or default`` keeps it.
        return True

    def partitions(
        self, selection: Selection | None = None, order: Order | None = None
    ) -> Iterator[Partition]:
        return iter(())

    def parent_key(self, key: str) -> str:
        """The key of the partition that discovered ``key``."""
        return key.rpartition("/")[0]

    def get(self, key: str) -> Partition | None:
        """The partition with this key if it could have been discovered (whether or not
        it was: only the ledger knows)."""
        head, _, tail = key.rpartition("/")
        name, sep, value = tail.partition("=")
        if not sep or name != self.name or not _KEY.match(value) or self.parent is None:
            return None
        found = self.parent.get(head)
        if found is None:
            return None
        return Partition(key, found.start, found.end, found.grain, found.dims, found.tz)

    def child(self, parent: Partition, found: Discover) -> Partition:
        """The partition ``found`` by ``parent``."""
        return Partition(
            f"{parent.key}/{self.name}={found.key}",
            parent.start,
            parent.end,
            parent.grain,
            parent.dims,
            parent.tz,
            found.params,
        )

    def selection(
        self,
        *,
        start: str | date | None = None,
        end: str | date | None = None,
        keys: Iterable[str] = (),
        where: Iterable[str] = (),
    ) -> Selection:
        """A selection checked against the discovering spec (dates, dimensions) and this
        one's key shape: which of its partitions exist only the ledger knows."""
        wanted = frozenset(keys)
        for key in sorted(wanted):
            if self.get(key) is None:
                raise ConfigError(
                    f"unknown partition {key!r}; keys of this stage look like "
                    f"{self.example_key()!r}"
                )
        if self.parent is None:
            return Selection(keys=wanted)
        base = self.parent.selection(start=start, end=end, where=where)
        return Selection(base.start, base.end, wanted, base.dims)

    def example_key(self) -> str:
        first = self.parent.example_key() if self.parent is not None else "2020-01-01"
        return f"{first}/{self.name}=..."


def discovered(source: str, *, name: str = "item") -> DiscoveredSpec:
    """One partition per :class:`Discover` the stage ``source`` yields (declared above
    this one), keyed ``<source partition key>/<name>=<found key>``."""
    return DiscoveredSpec(source, name)
