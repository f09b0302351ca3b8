"""Partitions a stage discovers for another: planned as they are found, run once with
their params, resumed, retried, reported and covered like any other."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from backfill import ConfigError, Context, Discover, Job, Partition, RunOptions, discovered, yearly
from backfill import coverage as cov
from backfill.ledger import Ledger, Status, open_ledger
from backfill.report import stage_counts
from backfill.testing import MemorySink, run_job, set_testing

# Tournaments on each (year, tour) archive page: (number, name, matches).
ARCHIVE: dict[tuple[int, str], list[tuple[str, str, int]]] = {
    (1990, "atp"): [("339", "Wimbledon", 3), ("520", "Roland Garros", 2)],
    (1990, "wta"): [("339", "Wimbledon", 4)],
    (1991, "atp"): [("339", "Wimbledon", 1), ("580", "Australian Open", 2)],
    (1991, "wta"): [],
}


class Tennis:
    """A job over ARCHIVE, counting what each stage was called for."""

    def __init__(self, archive: dict[tuple[int, str], list[tuple[str, str, int]]]) -> None:
        self.archive = archive
        self.calls: Counter[str] = Counter()
        self.fail: set[str] = set()
        self.sink = MemorySink(key=["tournament", "match"], name="matches")
        self.job = Job("tennis", partitions=yearly("1990-01-01", "1991-12-31", tour=["atp", "wta"]))
        job = self.job

        @job.stage
        async def tournaments(ctx: Context, partition: Partition) -> Any:
            self.calls[f"archive {partition.key}"] += 1
            year, tour = partition.date.year, partition["tour"]
            for number, name, matches in self.archive[(year, tour)]:
                yield Discover(number, {"name": name, "matches": matches, "tour": tour})

        @job.stage(partitions=discovered("tournaments", name="t"), sink=self.sink)
        async def results(ctx: Context, partition: Partition) -> list[dict[str, Any]]:
            self.calls[partition.key] += 1
            if partition.key in self.fail:
                raise ValueError("the draw is garbled")
            p = partition.params
            return [
                {"tournament": partition.key, "match": m, "name": p["name"], "tour": p["tour"]}
                for m in range(p["matches"])
            ]

    def run(self, ledger: Ledger, options: RunOptions | None = None) -> Any:
        with set_testing(True):
            return run_job(self.job, ledger, options)


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return open_ledger(f"sqlite:///{tmp_path / 'state.db'}")


def test_each_discovered_partition_runs_once_with_its_params(ledger: Ledger) -> None:
    """Every tournament on an archive page runs once, with what the page said about it,
    and no archive page is read twice."""
    tennis = Tennis(ARCHIVE)
    result = tennis.run(ledger)
    assert result.exit_code == 0, result.message
    assert all(n == 1 for n in tennis.calls.values())
    assert sum(1 for k in tennis.calls if k.startswith("archive")) == 4
    assert len(tennis.sink.rows) == 3 + 2 + 4 + 1 + 2
    row = tennis.sink.rows[("1990/tour=wta/t=339", 3)]
    assert (row["name"], row["tour"]) == ("Wimbledon", "wta")
    assert result.counts["results"].done == 5


def test_a_rerun_discovers_nothing_new_and_runs_nothing_again(ledger: Ledger) -> None:
    """A second run plans no partition twice and redoes no finished one."""
    tennis = Tennis(ARCHIVE)
    assert tennis.run(ledger).exit_code == 0
    calls = dict(tennis.calls)
    again = tennis.run(ledger)
    assert again.exit_code == 0
    assert tennis.calls == calls
    assert ledger.counts("tennis", ["results"])["results"].total == 5


def test_rediscovery_adds_only_what_is_new(ledger: Ledger) -> None:
    """Discovery run again over a page that grew adds its new tournament only; the
    others are not planned twice nor run again."""
    archive = {k: list(v) for k, v in ARCHIVE.items()}
    tennis = Tennis(archive)
    assert tennis.run(ledger).exit_code == 0
    archive[(1991, "wta")].append(("999", "New Open", 2))
    ledger.requeue("tennis", ["tournaments"], [Status.DONE, Status.EMPTY])
    assert tennis.run(ledger).exit_code == 0
    assert tennis.calls["1991/tour=wta/t=999"] == 1
    assert tennis.calls["1990/tour=atp/t=339"] == 1
    assert tennis.calls["archive 1990/tour=atp"] == 2
    assert ledger.counts("tennis", ["results"])["results"].total == 6
    assert len(tennis.sink.rows) == 14


def test_a_failed_discovered_partition_is_retried_like_any_other(ledger: Ledger) -> None:
    """A discovered partition that failed stays failed with its reason and runs again,
    with its params, once requeued."""
    tennis = Tennis(ARCHIVE)
    tennis.fail.add("1991/tour=atp/t=580")
    first = tennis.run(ledger)
    assert first.exit_code == 1
    (entry,) = ledger.entries("tennis", "results", status=Status.FAILED)
    assert entry.key == "1991/tour=atp/t=580"
    assert "garbled" in (entry.error_message or "")
    tennis.fail.clear()
    assert ledger.requeue("tennis", ["results"]) == 1
    assert tennis.run(ledger).exit_code == 0
    assert tennis.calls["1991/tour=atp/t=580"] == 2
    assert ("1991/tour=atp/t=580", 1) in tennis.sink.rows


def test_only_the_selected_discoverers_find_partitions(ledger: Ledger) -> None:
    """A selection of the discovering stage's windows and dimensions selects what they
    found too; status counts no discovered partition as missing."""
    tennis = Tennis(ARCHIVE)
    selection = tennis.job.stages["tournaments"].partitions.selection(
        start="1990-01-01", end="1990-12-31", where=["tour=atp"]
    )
    result = tennis.run(ledger, RunOptions(selection=selection))
    assert result.exit_code == 0, result.message
    assert sorted(k for k in tennis.calls if "/t=" in k) == [
        "1990/tour=atp/t=339",
        "1990/tour=atp/t=520",
    ]
    counts = stage_counts(tennis.job, ledger, list(tennis.job.stages.values()), None)
    assert counts["results"][0].done == 2
    assert counts["results"][1] == 0


def test_coverage_groups_found_partitions_under_their_discoverer(ledger: Ledger) -> None:
    """Coverage lists what each archive page found in its window, and in place of an
    archive page not read yet, one missing line naming it."""
    tennis = Tennis(ARCHIVE)
    selection = tennis.job.stages["tournaments"].partitions.selection(where=["tour=atp"])
    tennis.run(ledger, RunOptions(selection=selection))
    found = cov.collect(tennis.job, ledger, [tennis.job.stages["results"]])
    states = {p.key: p for p in found.partitions["results"]}
    assert states["1990/tour=atp/t=339"].state is cov.State.DONE
    assert states["1990/tour=atp/t=339"].start.isoformat() == "1990-01-01"
    assert states["1990/tour=atp/t=339"].dims == (("tour", "atp"),)
    assert states["1990/tour=wta"].state is cov.State.MISSING
    assert "not discovered yet" in states["1990/tour=wta"].reason
    assert "1991/tour=wta" in states
    assert list(states)[:3] == ["1990/tour=atp/t=339", "1990/tour=atp/t=520", "1990/tour=wta"]


def test_discover_without_a_stage_to_take_it_stops_the_run(ledger: Ledger) -> None:
    """Yielding Discover from a stage nobody discovers from is a configuration error
    naming the fix."""
    job = Job("lonely", partitions=yearly("1990-01-01", "1990-12-31"))

    @job.stage
    async def archive(ctx: Context, partition: Partition) -> Any:
        yield Discover("1")

    with set_testing(True):
        result = run_job(job, ledger)
    assert result.exit_code == 2
    assert "partitions=discovered('archive')" in (result.message or "")


def test_a_find_with_params_that_are_not_json_fails_its_discoverer_only(
    ledger: Ledger,
) -> None:
    """What a page yields can fail at most the partition that read it."""
    archive = {k: list(v) for k, v in ARCHIVE.items()}
    tennis = Tennis(archive)
    job = tennis.job
    stage = job.stages["tournaments"]

    async def broken(ctx: Context, partition: Partition) -> Any:
        if partition.key == "1990/tour=wta":
            yield Discover("1", {"when": object()})
            return
        async for item in stage.fn(ctx, partition):
            yield item

    import dataclasses

    job.stages["tournaments"] = dataclasses.replace(stage, fn=broken)
    result = tennis.run(ledger)
    assert result.exit_code == 1
    (entry,) = ledger.entries("tennis", "tournaments", status=Status.FAILED)
    assert entry.key == "1990/tour=wta"
    assert "not JSON" in (entry.error_message or "")
    assert ledger.counts("tennis", ["results"])["results"].done == 4


def test_a_bad_discover_key_is_one_sentence() -> None:
    """A key with a slash or nothing in it names what a key may hold."""
    from backfill import PermanentError

    with pytest.raises(PermanentError, match="letters, digits"):
        Discover("a/b")
    with pytest.raises(PermanentError, match="letters, digits"):
        Discover("")


def test_discovered_from_an_undeclared_stage_is_refused() -> None:
    """The discovering stage must be declared above."""
    job = Job("j", partitions=yearly("1990-01-01", "1990-12-31"))
    with pytest.raises(ConfigError, match="not declared above"):

        @job.stage(partitions=discovered("archive"))
        async def results(ctx: Context, partition: Partition) -> None:
            return None


def test_a_discovered_stage_waits_for_its_discoverer_in_the_graph() -> None:
    """The discovered stage is downstream of its discoverer, with no ledger dependency
    (rerunning discovery does not make its finds stale)."""
    tennis = Tennis(ARCHIVE)
    job = tennis.job
    assert job.upstream("results") == ["tournaments"]
    assert job.downstream("tournaments") == ["results"]
    assert job.dependencies(job.stages["results"]) == ()
    assert [s.name for s in job.select_stages(None, start_from=["tournaments"])] == [
        "tournaments",
        "results",
    ]


def test_a_discovered_spec_takes_its_discoverers_windows_and_dimensions() -> None:
    """Bound to its source's spec it shares its grain, range and dimensions, names
    itself by its source, declares nothing up front and recognises its keys."""
    spec = Tennis(ARCHIVE).job.stages["results"].partitions
    assert (spec.grain.value, str(spec.start), list(spec.dims)) == ("year", "1990-01-01", ["tour"])
    assert repr(spec) == "discovered('tournaments', name='t')"
    assert list(spec) == [] and len(spec) == 0
    assert spec.get("1990/tour=atp/t=339") is not None
    assert spec.get("1990/tour=atp/x=339") is None
    assert spec.get("1989/tour=atp/t=339") is None


def test_discovering_from_a_discovered_stage_is_refused() -> None:
    """A chain of discoveries needs a calendar at its root."""
    job = Tennis(ARCHIVE).job
    with pytest.raises(ConfigError, match="discover from a stage of calendar"):

        @job.stage(partitions=discovered("results"))
        async def deeper(ctx: Context, partition: Partition) -> None:
            return None


def test_a_selection_of_discovered_partitions_is_checked_against_the_discoverer() -> None:
    """Dates and dimensions are the discoverer's; a key must have the discovered shape."""
    spec = Tennis(ARCHIVE).job.stages["results"].partitions
    chosen = spec.selection(keys=["1990/tour=atp/t=339"], where=["tour=atp"])
    assert chosen.keys == {"1990/tour=atp/t=339"} and chosen.dims == {"tour": {"atp"}}
    with pytest.raises(ConfigError, match=r"look like '1990/tour=atp/t=\.\.\.'"):
        spec.selection(keys=["1990/tour=atp"])
    with pytest.raises(ConfigError, match="no value 'itf'"):
        spec.selection(where=["tour=itf"])


def test_discovered_partitions_grow_their_stage_total_on_the_progress_display() -> None:
    """What a partition finds adds to the total of the stage that runs it."""
    from backfill.events import PartitionsDiscovered, RunStarted
    from backfill.ledger import StageCounts
    from backfill.progress import ProgressState

    state = ProgressState()
    state.apply(RunStarted("r", "tennis", "w", 0.0, {"results": StageCounts("results")}))
    state.apply(PartitionsDiscovered("results", "tournaments", "1990/tour=atp", 3))
    state.apply(PartitionsDiscovered("results", "tournaments", "1991/tour=atp", 2))
    assert state.stages["results"].total == 5


def test_a_run_says_how_many_partitions_each_discoverer_found(ledger: Ledger) -> None:
    """Each find of new partitions is an event naming the stage, the discoverer and how
    many were new; a rerun finds none new."""
    from backfill.events import EventBus, PartitionsDiscovered

    tennis = Tennis(ARCHIVE)
    seen: list[PartitionsDiscovered] = []
    bus = EventBus()
    bus.subscribe(lambda e: seen.append(e) if isinstance(e, PartitionsDiscovered) else None)
    with set_testing(True):
        run_job(tennis.job, ledger, bus=bus)
    assert sorted((e.key, e.added) for e in seen) == [
        ("1990/tour=atp", 2),
        ("1990/tour=wta", 1),
        ("1991/tour=atp", 2),
    ]
    seen.clear()
    ledger.requeue("tennis", ["tournaments"], [Status.DONE, Status.EMPTY])
    with set_testing(True):
        run_job(tennis.job, ledger, bus=bus)
    assert seen == []
