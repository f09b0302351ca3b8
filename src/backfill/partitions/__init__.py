"""Partitions: time windows over a date range, crossed with static dimensions.

A partition is the unit of work and of record. Its key is stable and readable:

* ``2013-01-01`` (day), ``2013-W01`` (ISO week), ``2013-01`` (month), ``2013`` (year);
* ``2024-03-31T01`` (hour: the UTC hour, so keys never skip nor repeat when clocks change);
* a window clipped by the range's start or end names its days: ``2013-01-15..2013-01-31``;
* static dimensions follow in declaration order: ``2013-01-01/tour=atp/region=gb``.

Example::

    >>> spec = daily("2013-01-01", "2013-01-03", tour=["atp", "wta"])
    >>> [p.key for p in spec][:3]
    ['2013-01-01/tour=atp', '2013-01-01/tour=wta', '2013-01-02/tour=atp']
    >>> len(spec)
    6

The package holds the calendar (grains, dates, windows, keys and the :class:`Partition`
value) in ``windows``, the specs that declare a job's partitions in ``specs``, and the
selection of some of them from command-line input in ``selection``.
"""

from backfill.partitions.selection import Selection
from backfill.partitions.specs import (
    PartitionSpec,
    ReferenceSpec,
    daily,
    hourly,
    monthly,
    reference,
    weekly,
    yearly,
)
from backfill.partitions.windows import (
    REFERENCE_KEY,
    Grain,
    Order,
    Partition,
    parse_date,
    parse_grain,
    parse_order,
)

__all__ = [
    "REFERENCE_KEY",
    "Grain",
    "Order",
    "Partition",
    "PartitionSpec",
    "ReferenceSpec",
    "Selection",
    "daily",
    "hourly",
    "monthly",
    "parse_date",
    "parse_grain",
    "parse_order",
    "reference",
    "weekly",
    "yearly",
]
