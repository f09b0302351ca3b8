"""to_mapping / to_mappings: what a stage may return as a record, and what it may not."""

from __future__ import annotations

from dataclasses import dataclass

import pydantic
import pytest

from backfill.errors import PermanentError
from backfill.sinks import to_mapping, to_mappings


@dataclass
class Flight:
    carrier: str
    flight: int


class Race(pydantic.BaseModel):
    course: str
    runners: int


def test_a_mapping_is_taken_as_it_is() -> None:
    """A dict (or any mapping) is the record itself, not a copy."""
    record = {"k": 1}
    assert to_mapping(record) is record


def test_dataclasses_and_pydantic_models_become_dicts_of_their_fields() -> None:
    """A dataclass instance and a pydantic model give their fields as a mapping."""
    assert to_mapping(Flight("AA", 11)) == {"carrier": "AA", "flight": 11}
    assert to_mapping(Race(course="Ascot", runners=9)) == {"course": "Ascot", "runners": 9}


@pytest.mark.parametrize("record", [("AA", 11), "AA", 11, Flight])
def test_anything_else_fails_its_partition_naming_the_type(record: object) -> None:
    """A tuple, text, a number or a dataclass class (not an instance) is a bad record."""
    with pytest.raises(PermanentError, match="records must be dicts") as caught:
        to_mapping(record)
    assert caught.value.category == "bad_record"
    assert type(record).__name__ in str(caught.value)


def test_to_mappings_keeps_plain_dicts_and_converts_the_rest_in_order() -> None:
    """Plain dicts pass through untouched; other records are converted where they stand."""
    first = {"carrier": "UA", "flight": 1}
    result = to_mappings([first, Flight("AA", 11)])
    assert result[0] is first
    assert result == [first, {"carrier": "AA", "flight": 11}]
    with pytest.raises(PermanentError, match="a stage returned a int"):
        to_mappings([first, 3])
