"""Resources for any client: a concurrency alone is a resource, and any call takes turns."""

from __future__ import annotations

import asyncio
import itertools
import math

import pytest

from backfill.errors import ConfigError
from backfill.ratelimit import Resource
from virtual_time import FakeClock


def test_a_concurrency_alone_is_a_resource():
    """`Resource("warehouse", concurrency=15)` is valid, and says what it limits."""
    warehouse = Resource("warehouse", concurrency=15, clock=FakeClock())
    assert warehouse.concurrency == 15
    assert warehouse.rate == math.inf
    assert warehouse.rate_description() == "15 at once"
    assert repr(warehouse) == "Resource('warehouse', rate=15 at once)"
    state = warehouse.state()
    assert state["declared"] is None and state["rate"] is None
    assert warehouse.seconds_for(1000) == 0.0


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({}, "needs a rate (e.g. rate='5/s'), a concurrency"),
        ({"concurrency": 0}, "concurrency must be at least 1"),
        ({"concurrency": math.nan}, "concurrency must be at least 1"),
        ({"concurrency": 2.5}, "concurrency must be at least 1"),
        ({"concurrency": True}, "concurrency must be at least 1"),
        ({"rate": math.nan, "concurrency": 4}, "must be a positive number"),
        ({"rate": 0, "concurrency": 4}, "must be a positive number"),
        ({"concurrency": 4, "burst": 0}, "burst must be at least 1"),
    ],
)
def test_nonsense_limits_are_refused_in_one_sentence(options: dict[str, object], says: str):
    """No limit at all, a zero, NaN or fractional concurrency, a zero rate: one clear line."""
    with pytest.raises(ConfigError, match=says.replace("(", r"\(").replace(")", r"\)")) as info:
        Resource("warehouse", **options)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_turns_of_a_concurrency_only_resource_never_exceed_it():
    """Twelve callers of a resource of concurrency 3: never more than 3 inside, none paced."""
    clock = FakeClock()
    warehouse = Resource("warehouse", concurrency=3, clock=clock)
    inside = most = 0
    began: list[float] = []

    async def query() -> None:
        nonlocal inside, most
        async with warehouse.turn():
            inside += 1
            most = max(most, inside)
            began.append(clock.t)
            await clock.sleep(1.0)
            inside -= 1

    async def main() -> None:
        await asyncio.gather(*(query() for _ in range(12)))

    asyncio.run(main())
    assert most == 3
    assert sorted(began) == [0.0] * 3 + [1.0] * 3 + [2.0] * 3 + [3.0] * 3


def test_turns_of_a_rated_resource_keep_its_rate():
    """Calls of any client through `turn()` start no faster than the resource's rate."""
    clock = FakeClock()
    api = Resource("api", rate="4/s", burst=1, clock=clock)
    began: list[float] = []

    async def call() -> None:
        async with api.turn():
            began.append(clock.t)

    async def main() -> None:
        await asyncio.gather(*(call() for _ in range(9)))

    asyncio.run(main())
    gaps = [b - a for a, b in itertools.pairwise(began)]
    assert len(began) == 9 and min(gaps) >= 0.25 - 1e-9
    assert api.requests == 9


def test_a_new_run_puts_the_resource_on_its_clock():
    """`reset(clock=...)` makes the run's clock the resource's; without one it keeps its own."""
    mine, runs = FakeClock(), FakeClock()
    api = Resource("api", rate="5/s", clock=mine)
    api.reset()
    assert api.clock is mine
    api.reset(clock=runs)
    assert api.clock is runs
