"""quick_init: the value objects made per partition keep every behaviour of a frozen,
slotted dataclass with the faster __init__."""

from __future__ import annotations

import dataclasses
import pickle
from dataclasses import dataclass, field
from datetime import date

import pytest

from backfill._quickinit import quick_init
from backfill.events import PartitionFinished
from backfill.ledger import Claim, Outcome, Status
from backfill.partitions import Partition
from backfill.partitions.windows import NO_PARAMS, Grain


@quick_init
@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    count: int = 0
    note: str | None = None


def test_arguments_by_position_and_keyword_and_defaults_fill_the_fields() -> None:
    """Positional, keyword and defaulted arguments land in their own fields."""
    assert Sample("a") == Sample(name="a", count=0, note=None)
    assert Sample("a", 2, note="x") == Sample(note="x", count=2, name="a")
    assert (Sample("a", 2).name, Sample("a", 2).count, Sample("a", 2).note) == ("a", 2, None)
    with pytest.raises(TypeError):
        Sample()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Sample("a", 1, "x", 4)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Sample("a", colour="red")  # type: ignore[call-arg]


def test_the_object_stays_frozen_hashable_comparable_and_picklable() -> None:
    """Assignment is refused; hash, equality, repr, replace and pickling are the
    dataclass's own."""
    sample = Sample("a", 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sample.count = 2  # type: ignore[misc]
    assert hash(sample) == hash(Sample("a", 1))
    assert repr(sample) == "Sample(name='a', count=1, note=None)"
    assert dataclasses.replace(sample, count=5) == Sample("a", 5)
    assert pickle.loads(pickle.dumps(sample)) == sample
    assert not hasattr(sample, "__dict__")


def test_a_class_it_cannot_speed_up_is_refused_when_defined() -> None:
    """A mutable or unslotted dataclass, a default factory or __post_init__ is a TypeError."""
    with pytest.raises(TypeError):

        @quick_init
        @dataclass(slots=True)
        class Mutable:
            name: str

    with pytest.raises(TypeError):

        @quick_init
        @dataclass(frozen=True)
        class Unslotted:
            name: str

    with pytest.raises(TypeError):

        @quick_init
        @dataclass(frozen=True, slots=True)
        class Factory:
            names: list[str] = field(default_factory=list)

    with pytest.raises(TypeError):

        @quick_init
        @dataclass(frozen=True, slots=True)
        class Checked:
            name: str

            def __post_init__(self) -> None:
                pass


def test_the_engines_value_objects_keep_their_fields_and_defaults() -> None:
    """Partition, Claim, Outcome and PartitionFinished, made the quick way, hold what
    they are given and their defaults."""
    day = date(2013, 1, 1)
    part = Partition("2013-01-01/tour=atp", day, day, Grain.DAY, (("tour", "atp"),))
    assert (part.key, part.start, part.end, part.grain) == (
        "2013-01-01/tour=atp",
        day,
        day,
        Grain.DAY,
    )
    assert part.dims == (("tour", "atp"),) and part.tz is None and part.params is NO_PARAMS
    assert part == Partition("2013-01-01/tour=atp", day, day, Grain.DAY, (("tour", "atp"),))
    claim = Claim(7, "fetch", "2013-01-01", day, day, (), 1, 2)
    assert (claim.attempts, claim.claims, claim.checkpoint, claim.params) == (1, 2, None, None)
    outcome = Outcome(7, Status.DONE, 1, 3, 0.5)
    assert (outcome.records, outcome.duration, outcome.requests, outcome.checks) == (
        3,
        0.5,
        0,
        None,
    )
    assert dataclasses.replace(outcome, requests=4).requests == 4
    event = PartitionFinished("fetch", "2013-01-01", Status.FAILED, 0, 0.1, 2, "gone", "no day")
    assert (event.category, event.message, event.requests, event.rate_limited) == (
        "gone",
        "no day",
        0,
        0,
    )
