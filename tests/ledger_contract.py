"""The contract every ledger adapter honours.

An adapter's test module subclasses :class:`LedgerContract` and provides a ``ledger``
fixture (a fresh, empty ledger) and a ``second_ledger`` fixture (another connection to
the same store, as a second process or machine would have).
"""

from __future__ import annotations

import contextlib
import itertools
import threading

import pytest

from backfill.ledger import (
    MAX_LOST_LEASES,
    Dependency,
    Ledger,
    Outcome,
    ResetCounts,
    RunRecord,
    SharedCompletion,
    Status,
    WorkerRecord,
)
from backfill.partitions import (
    Discover,
    Order,
    Selection,
    daily,
    discovered,
    monthly,
    reference,
    yearly,
)
from backfill.ratelimit.fleetpace import Report

JOB = "contract"
STAGE = "fetch"
SPEC = daily("2013-01-01", "2013-01-10", tour=["atp", "wta"])  # 20 partitions


def claim(ledger: Ledger, owner: str, limit: int = 100, now: float = 1000.0, **kw: object) -> list:
    return ledger.claim(
        JOB, STAGE, owner, limit=limit, lease_seconds=60.0, now=now, run_id="r1", **kw
    )  # type: ignore[arg-type]


def finish(ledger: Ledger, owner: str, claims: list, status: Status = Status.DONE) -> int:
    return ledger.complete(
        owner,
        [Outcome(c.id, status, attempts=1, records=3, duration=0.5) for c in claims],
        now=1001.0,
    )


def settle(ledger: Ledger, stage: str, keys: set[str], status: Status, now: float) -> None:
    """Claim ``stage`` and finish exactly the partitions in ``keys`` with ``status``."""
    got = ledger.claim(JOB, stage, "up", limit=10_000, lease_seconds=60.0, now=now, run_id="r0")
    ledger.complete(
        "up",
        [
            Outcome(c.id, status if c.key in keys else Status.PENDING, attempts=1, records=5)
            for c in got
        ],
        now=now,
    )


def ready_keys(
    ledger: Ledger,
    stage: str,
    needs: list[Dependency],
    *,
    scan: int | None,
    order: Order = Order.OLDEST,
) -> list[str]:
    """Keys of ``stage`` claimable now with ``scan`` (claimed, then released again)."""
    got = ledger.claim(
        JOB,
        stage,
        "down",
        limit=10_000,
        lease_seconds=60.0,
        now=2000.0,
        run_id="r1",
        needs=needs,
        scan=scan,
        order=order,
    )
    ledger.complete("down", [Outcome(c.id, Status.PENDING, attempts=0) for c in got], now=2000.0)
    return sorted(c.key for c in got)


def ready(ledger: Ledger, stage: str, needs: list[Dependency], now: float = 2000.0) -> list[str]:
    """Keys of ``stage`` claimable now (claimed, then released again)."""
    got = ledger.claim(
        JOB, stage, "down", limit=10_000, lease_seconds=60.0, now=now, run_id="r1", needs=needs
    )
    ledger.complete("down", [Outcome(c.id, Status.PENDING, attempts=0) for c in got], now=now)
    return [c.key for c in got]


DAY_DEP = Dependency("a", grain="day")


class LedgerContract:
    def test_a_second_connection_to_the_store_names_the_same_database(
        self, ledger: Ledger, second_ledger: Ledger
    ) -> None:
        """Both offer the exactly-once path, and for one database: a sink there gets a
        completer from either."""
        assert isinstance(ledger, SharedCompletion)
        assert isinstance(second_ledger, SharedCompletion)
        assert ledger.identity == second_ledger.identity

    # -- planning -------------------------------------------------------------------------

    def test_plan_inserts_each_partition_once(self, ledger: Ledger) -> None:
        """Planning twice records every partition once, all pending."""
        assert ledger.plan(JOB, STAGE, SPEC) == 20
        assert ledger.plan(JOB, STAGE, SPEC) == 0
        counts = ledger.counts(JOB, [STAGE])[STAGE]
        assert (counts.pending, counts.total) == (20, 20)

    def test_discovered_partitions_carry_their_params_and_are_planned_once(
        self, ledger: Ledger
    ) -> None:
        """A discovered partition keeps its discoverer's window, dimensions and the
        params it was found with; finding it again (other params) adds nothing."""
        spec = discovered("archive", name="t").bound(
            yearly("1990-01-01", "1991-12-31", tour=["atp"])
        )
        (parent,) = [p for p in spec.parent.partitions() if p.key == "1990/tour=atp"]
        found = [Discover("339", {"name": "Wimbledon", "draw": [1, 2]}), Discover("7")]
        assert ledger.plan(JOB, STAGE, [spec.child(parent, f) for f in found]) == 2
        again = [Discover("339", {"name": "changed"}), Discover("8")]
        assert ledger.plan(JOB, STAGE, [spec.child(parent, f) for f in again]) == 1
        got = {c.key: c for c in claim(ledger, "me")}
        assert sorted(got) == ["1990/tour=atp/t=339", "1990/tour=atp/t=7", "1990/tour=atp/t=8"]
        first = got["1990/tour=atp/t=339"].partition(spec.grain)
        assert first.params == {"name": "Wimbledon", "draw": [1, 2]}
        assert (first.start.isoformat(), first.end.isoformat()) == ("1990-01-01", "1990-12-31")
        assert first.dims == (("tour", "atp"),)
        assert got["1990/tour=atp/t=7"].partition(spec.grain).params == {}
        assert spec.get("1990/tour=atp/t=339") == first

    def test_a_selection_of_what_partitions_find_takes_their_finds_only(
        self, ledger: Ledger
    ) -> None:
        """``Selection.found`` selects the partitions found by the named discoverers (by
        their keys, as the ledger holds them), beside the keys named, and not another
        discoverer's finds."""
        spec = discovered("archive", name="t").bound(
            yearly("1990-01-01", "1991-12-31", tour=["atp", "wta"])
        )
        parents = {p.key: p for p in spec.parent.partitions()}
        for key, numbers in (("1990/tour=atp", "339 7"), ("1991/tour=wta", "339 8.1:x-y")):
            children = [spec.child(parents[key], Discover(n)) for n in numbers.split()]
            ledger.plan(JOB, STAGE, children)
        chosen = Selection(
            keys=frozenset({"1990/tour=wta/t=1"}), found=frozenset({"1991/tour=wta/t="})
        )
        keys = sorted(e.key for e in ledger.entries(JOB, STAGE, selection=chosen))
        assert keys == ["1991/tour=wta/t=339", "1991/tour=wta/t=8.1:x-y"]
        assert ledger.counts(JOB, [STAGE], chosen)[STAGE].total == 2
        assert all(chosen.matches(spec.get(k)) for k in keys)  # type: ignore[arg-type]
        assert not chosen.matches(spec.get("1990/tour=atp/t=339"))  # type: ignore[arg-type]

    def test_plan_of_a_longer_range_adds_only_new_partitions(self, ledger: Ledger) -> None:
        """Extending the range plans only the partitions not yet recorded."""
        ledger.plan(JOB, STAGE, daily("2013-01-01", "2013-01-05"))
        assert ledger.plan(JOB, STAGE, daily("2013-01-01", "2013-01-08")) == 3

    def test_plan_streams_a_large_lazy_spec(self, ledger: Ledger) -> None:
        """A spec larger than one planning chunk is planned completely."""
        spec = daily("1950-01-01", "2013-12-31")  # 23,376 days
        assert ledger.plan(JOB, STAGE, spec) == len(spec)

    def test_a_plan_already_recorded_under_its_fingerprint_inserts_nothing(
        self, ledger: Ledger, second_ledger: Ledger
    ) -> None:
        """Once a plan went through, the same fingerprint skips the partitions (even when
        given others), from any connection; a new fingerprint plans again."""
        assert ledger.plan(JOB, STAGE, SPEC, fingerprint=repr(SPEC)) == 20
        wider = daily("2013-01-01", "2013-01-12", tour=["atp", "wta"])
        assert second_ledger.plan(JOB, STAGE, wider, fingerprint=repr(SPEC)) == 0
        assert ledger.counts(JOB, [STAGE])[STAGE].total == 20
        assert second_ledger.plan(JOB, STAGE, wider, fingerprint=repr(wider)) == 4
        assert ledger.plan(JOB, "second", SPEC, fingerprint=repr(SPEC)) == 20

    def test_a_plan_that_stopped_half_way_records_no_fingerprint(self, ledger: Ledger) -> None:
        """A plan interrupted between chunks leaves its fingerprint unrecorded, so the
        next plan with it inserts the rest."""
        spec = daily("1950-01-01", "2013-12-31")

        def broken() -> object:
            for i, partition in enumerate(spec):
                if i == len(spec) - 10:
                    raise KeyboardInterrupt
                yield partition

        with contextlib.suppress(KeyboardInterrupt):
            ledger.plan(JOB, STAGE, broken(), fingerprint=repr(spec))  # type: ignore[arg-type]
        assert ledger.plan(JOB, STAGE, spec, fingerprint=repr(spec)) >= 10
        assert ledger.counts(JOB, [STAGE])[STAGE].total == len(spec)

    def test_reset_forgets_the_fingerprint_so_the_next_plan_restores_rows(
        self, ledger: Ledger
    ) -> None:
        """Partitions forgotten by reset come back with the next plan of the same spec."""
        ledger.plan(JOB, STAGE, SPEC, fingerprint=repr(SPEC))
        selection = SPEC.selection(start="2013-01-01", end="2013-01-02")
        assert ledger.reset(JOB, [STAGE], selection).removed == 4
        assert ledger.plan(JOB, STAGE, SPEC, fingerprint=repr(SPEC)) == 4
        assert ledger.plan(JOB, STAGE, SPEC, fingerprint=repr(SPEC)) == 0
        assert ledger.counts(JOB, [STAGE])[STAGE].total == 20

    # -- lost leases ----------------------------------------------------------------------

    def test_a_partition_whose_lease_keeps_expiring_ends_failed(self, ledger: Ledger) -> None:
        """A partition whose lease expires MAX_LOST_LEASES times in a row while it runs
        is failed as worker_lost, with the reason, instead of being handed out forever;
        a requeue gives it a fresh count."""
        ledger.plan(JOB, STAGE, daily("2013-01-01", "2013-01-02"))
        now = 1000.0
        doomed, healthy = ledger.claim(
            JOB, STAGE, "w0", limit=2, lease_seconds=10, now=now, run_id="r"
        )
        assert ledger.begin("w0", [(doomed.id, doomed.claims)]) == {doomed.id}
        ledger.complete("w0", [Outcome(healthy.id, Status.DONE)], now=now)
        for i in range(1, MAX_LOST_LEASES):
            now += 11
            # Back in the pool as a suspect: only a claim of suspects takes it.
            assert (
                ledger.claim(JOB, STAGE, "any", limit=5, lease_seconds=10, now=now, run_id="r")
                == []
            )
            (again,) = ledger.claim(
                JOB, STAGE, f"w{i}", limit=5, lease_seconds=10, now=now, run_id="r", suspects=True
            )
            assert again.key == doomed.key
            assert ledger.begin(f"w{i}", [(again.id, again.claims)]) == {again.id}
        now += 11
        last = ledger.claim(
            JOB, STAGE, "last", limit=5, lease_seconds=10, now=now, run_id="r", suspects=True
        )
        assert last == []
        (failed,) = ledger.entries(JOB, STAGE, status=Status.FAILED)
        assert failed.key == doomed.key
        assert failed.error_category == "worker_lost"
        assert f"expired {MAX_LOST_LEASES} times in a row" in (failed.error_message or "")
        assert ledger.requeue(JOB, [STAGE]) == 1
        got = ledger.claim(JOB, STAGE, "new", limit=5, lease_seconds=10, now=now, run_id="r")
        assert len(got) == 1

    def test_a_partition_whose_workers_keep_dying_ends_failed(self, ledger: Ledger) -> None:
        """Released as lost (its holder died running it), a partition counts a lost lease
        each time; the MAX_LOST_LEASES-th fails it as worker_lost, while a normal release
        or a finished attempt in between starts the count again."""
        ledger.plan(JOB, STAGE, daily("2013-01-01", "2013-01-01"))

        def take(owner: str, **kw: object) -> list:
            got = claim(ledger, owner, **kw)
            ledger.begin(owner, [(c.id, c.claims) for c in got])
            return got

        assert len(take("dead0")) == 1
        assert ledger.release_owner("dead0", lost=True) == 1
        assert claim(ledger, "any") == []  # a suspect now
        for i in range(1, MAX_LOST_LEASES - 1):
            assert len(take(f"dead{i}", suspects=True)) == 1
            assert ledger.release_owner(f"dead{i}", lost=True) == 1
        (got,) = take("calm", suspects=True)
        assert ledger.release_owner("calm") == 1  # the run ended: not a death
        (got,) = take("dead-last", suspects=True)
        assert ledger.release_owner("dead-last", lost=True) == 1
        (failed,) = ledger.entries(JOB, STAGE, status=Status.FAILED)
        assert failed.error_category == "worker_lost"
        assert f"died {MAX_LOST_LEASES} times in a row" in (failed.error_message or "")
        assert ledger.requeue(JOB, [STAGE]) == 1
        (got,) = take("w")  # requeued: no longer a suspect
        assert ledger.release_owner("w", lost=True) == 1
        (got,) = take("w2", suspects=True)
        ledger.complete("w2", [Outcome(got.id, Status.PENDING, attempts=0)], now=1001.0)
        (got,) = claim(ledger, "w3")  # an attempt that ended cleared the suspicion
        assert ledger.counts(JOB, [STAGE])[STAGE].running == 1

    def test_a_death_counts_only_against_the_partitions_it_was_running(
        self, ledger: Ledger
    ) -> None:
        """A dead worker's claimed but unstarted partitions go back to the pool clean:
        only those it had begun become suspects, and however often a worker dies
        holding a partition it never started, that partition is never worker_lost."""
        ledger.plan(JOB, STAGE, daily("2013-01-01", "2013-01-03"))
        for i in range(MAX_LOST_LEASES + 1):
            got = claim(ledger, f"dead{i}")
            if i == 0:
                started = got[0]
                assert ledger.begin(f"dead{i}", [(started.id, started.claims)]) == {started.id}
            assert ledger.release_owner(f"dead{i}", lost=True) == len(got)
        assert ledger.entries(JOB, STAGE, status=Status.FAILED) == []
        # The begun one is a suspect; the two never started are claimed as usual.
        assert sorted(c.key for c in claim(ledger, "calm")) == ["2013-01-02", "2013-01-03"]
        assert [c.key for c in claim(ledger, "calm", suspects=True)] == [started.key]

    def test_an_expired_lease_suspects_only_a_begun_partition(self, ledger: Ledger) -> None:
        """When leases expire, the partitions their holder had begun come back as
        suspects and the rest of its batch as ordinary pending partitions."""
        ledger.plan(JOB, STAGE, daily("2013-01-01", "2013-01-02"))
        begun, idle = claim(ledger, "hung", now=1000.0)
        ledger.begin("hung", [(begun.id, begun.claims)])
        assert [c.key for c in claim(ledger, "next", now=1061.0)] == [idle.key]
        assert [c.key for c in claim(ledger, "next", now=1061.0, suspects=True)] == [begun.key]

    def test_a_checkpoint_saved_clears_the_suspicion(self, ledger: Ledger) -> None:
        """A partition that saved a checkpoint made progress since it was last lost: its
        next death counts as the first, so one killed from outside now and then while it
        pages never ends worker_lost; one that dies before any progress still does."""
        ledger.plan(JOB, STAGE, daily("2013-01-01", "2013-01-01"))
        for i in range(MAX_LOST_LEASES + 2):
            (got,) = claim(ledger, f"dead{i}", suspects=i > 0)
            assert ledger.begin(f"dead{i}", [(got.id, got.claims)]) == {got.id}
            assert ledger.save_checkpoint(f"dead{i}", got.id, f"page-{i}")
            assert ledger.release_owner(f"dead{i}", lost=True) == 1
        assert ledger.entries(JOB, STAGE, status=Status.FAILED) == []
        (got,) = claim(ledger, "resumed", suspects=True)
        assert got.checkpoint == f"page-{MAX_LOST_LEASES + 1}"

    def test_begin_returns_only_leases_still_held(self, ledger: Ledger) -> None:
        """begin is a fence: a worker paused past its lease gets nothing back once its
        partition went to another worker, nor for a lease it held before a later claim
        of its own; the current holder does."""
        ledger.plan(JOB, STAGE, daily("2013-01-01", "2013-01-01"))
        (old,) = claim(ledger, "a", now=1000.0)
        (new,) = claim(ledger, "b", now=1061.0)
        assert ledger.begin("a", [(old.id, old.claims)]) == set()
        assert ledger.begin("b", [(new.id, new.claims)]) == {new.id}
        assert ledger.release_owner("b") == 1
        (again,) = claim(ledger, "a", now=1100.0)
        assert ledger.begin("a", [(old.id, old.claims)]) == set()  # the earlier lease
        assert ledger.begin("a", [(again.id, again.claims)]) == {again.id}
        assert ledger.begin("a", []) == set()

    def test_jobs_and_stages_are_isolated(self, ledger: Ledger) -> None:
        """The same stage name in two jobs, or two stages of one job, share nothing."""
        ledger.plan(JOB, STAGE, SPEC)
        ledger.plan("other", STAGE, daily("2013-01-01", "2013-01-02"))
        ledger.plan(JOB, "second", daily("2013-01-01", "2013-01-03"))
        assert ledger.counts(JOB, [STAGE])[STAGE].total == 20
        assert ledger.counts("other", [STAGE])[STAGE].total == 2
        assert ledger.counts(JOB, ["second"])["second"].total == 3
        assert ledger.counts(JOB, ["never"])["never"].total == 0

    # -- claiming -------------------------------------------------------------------------

    def test_claim_leases_at_most_limit_oldest_first(self, ledger: Ledger) -> None:
        """A claim returns up to ``limit`` partitions in window order, marked running."""
        ledger.plan(JOB, STAGE, SPEC)
        claims = claim(ledger, "a", limit=5)
        assert [c.key for c in claims] == [p.key for p in list(SPEC)[:5]]
        assert all(c.claims == 1 and c.attempts == 0 for c in claims)
        counts = ledger.counts(JOB, [STAGE])[STAGE]
        assert (counts.running, counts.pending) == (5, 15)

    def test_claim_newest_first(self, ledger: Ledger) -> None:
        """Newest-first order claims the latest windows first."""
        ledger.plan(JOB, STAGE, SPEC)
        claims = claim(ledger, "a", limit=4, order=Order.NEWEST)
        assert {c.start.isoformat() for c in claims} == {"2013-01-10", "2013-01-09"}

    def test_claims_carry_window_and_dimensions(self, ledger: Ledger) -> None:
        """A claim rebuilds its partition: key, window and dimension values."""
        ledger.plan(JOB, STAGE, monthly("2013-01-15", "2013-03-31", region=["gb", "ire"]))
        first = claim(ledger, "a", limit=1)[0]
        part = first.partition(None)
        assert part.key == "2013-01-15..2013-01-31/region=gb"
        assert (part.start.isoformat(), part.end.isoformat()) == ("2013-01-15", "2013-01-31")
        assert part["region"] == "gb"

    def test_two_owners_never_claim_the_same_partition(self, ledger: Ledger) -> None:
        """Alternating claims by two owners lease disjoint sets covering everything."""
        ledger.plan(JOB, STAGE, SPEC)
        a, b = [], []
        while True:
            got_a = claim(ledger, "a", limit=3)
            got_b = claim(ledger, "b", limit=3)
            if not got_a and not got_b:
                break
            a += got_a
            b += got_b
        keys_a, keys_b = {c.key for c in a}, {c.key for c in b}
        assert not keys_a & keys_b
        assert len(keys_a | keys_b) == 20

    def test_claim_respects_a_selection(self, ledger: Ledger) -> None:
        """Only partitions in the selection (dates, dims, keys) are claimed."""
        ledger.plan(JOB, STAGE, SPEC)
        sel = SPEC.selection(start="2013-01-03", end="2013-01-04", where=["tour=wta"])
        assert sorted(c.key for c in claim(ledger, "a", selection=sel)) == [
            "2013-01-03/tour=wta",
            "2013-01-04/tour=wta",
        ]
        keys = SPEC.selection(keys=["2013-01-09/tour=atp"])
        assert [c.key for c in claim(ledger, "a", selection=keys)] == ["2013-01-09/tour=atp"]

    def test_finished_partitions_are_not_claimed_again(self, ledger: Ledger) -> None:
        """Done, empty and failed partitions are never handed out again."""
        ledger.plan(JOB, STAGE, SPEC)
        claims = claim(ledger, "a", limit=20)
        ledger.complete(
            "a",
            [
                Outcome(c.id, [Status.DONE, Status.EMPTY, Status.FAILED][i % 3])
                for i, c in enumerate(claims)
            ],
            now=1001.0,
        )
        assert claim(ledger, "b", now=10_000.0) == []

    # -- leases ---------------------------------------------------------------------------

    def test_expired_lease_is_claimable_by_another_owner(self, ledger: Ledger) -> None:
        """After the lease of a begun partition expires, it goes to the next claimant of
        suspects."""
        ledger.plan(JOB, STAGE, daily("2013-01-01", "2013-01-01"))
        first = claim(ledger, "a", now=1000.0)
        ledger.begin("a", [(first[0].id, first[0].claims)])
        assert claim(ledger, "b", now=1030.0, suspects=True) == []  # lease alive
        stolen = claim(ledger, "b", now=1061.0, suspects=True)
        assert [c.key for c in stolen] == [first[0].key]
        assert stolen[0].claims == 2

    def test_outcome_from_a_former_owner_is_rejected(self, ledger: Ledger) -> None:
        """A worker whose lease passed on cannot overwrite the new owner's work."""
        ledger.plan(JOB, STAGE, daily("2013-01-01", "2013-01-01"))
        first = claim(ledger, "a", now=1000.0)
        assert len(claim(ledger, "b", now=1061.0)) == 1
        assert finish(ledger, "a", first, Status.FAILED) == 0
        assert ledger.counts(JOB, [STAGE])[STAGE].running == 1

    def test_renew_keeps_the_lease(self, ledger: Ledger) -> None:
        """Renewing pushes back the expiry, so nobody else can claim the partition."""
        ledger.plan(JOB, STAGE, daily("2013-01-01", "2013-01-01"))
        claim(ledger, "a", now=1000.0)
        assert ledger.renew("a", lease_seconds=60.0, now=1050.0) == 1
        assert claim(ledger, "b", now=1090.0) == []
        assert len(claim(ledger, "b", now=1111.0)) == 1

    def test_release_owner_returns_its_partitions(self, ledger: Ledger) -> None:
        """A dead owner's partitions go back to pending at once."""
        ledger.plan(JOB, STAGE, SPEC)
        claim(ledger, "dead", limit=7)
        claim(ledger, "alive", limit=2)
        assert ledger.release_owner("dead") == 7
        counts = ledger.counts(JOB, [STAGE])[STAGE]
        assert (counts.pending, counts.running) == (18, 2)

    # -- completion -----------------------------------------------------------------------

    def test_complete_records_everything(self, ledger: Ledger) -> None:
        """Status, attempts, records, duration and the error are stored per partition."""
        ledger.plan(JOB, STAGE, SPEC)
        c = claim(ledger, "a", limit=2)
        applied = ledger.complete(
            "a",
            [
                Outcome(c[0].id, Status.DONE, attempts=2, records=42, duration=1.5),
                Outcome(
                    c[1].id,
                    Status.FAILED,
                    attempts=5,
                    duration=9.0,
                    error_category="http_404",
                    error_message="GET /x answered 404",
                ),
            ],
            now=2000.0,
        )
        assert applied == 2
        done = ledger.entries(JOB, STAGE, status=Status.DONE)
        assert [(e.key, e.attempts, e.records, e.duration) for e in done] == [
            (c[0].key, 2, 42, 1.5)
        ]
        failed = ledger.entries(JOB, STAGE, status=Status.FAILED)[0]
        assert (failed.key, failed.error_category, failed.error_message, failed.attempts) == (
            c[1].key,
            "http_404",
            "GET /x answered 404",
            5,
        )
        assert failed.finished_at == 2000.0
        assert failed.run_id == "r1"

    def test_pending_outcome_releases_without_finishing(self, ledger: Ledger) -> None:
        """Releasing (interrupt) returns the partition to pending and keeps its attempts."""
        ledger.plan(JOB, STAGE, daily("2013-01-01", "2013-01-01"))
        c = claim(ledger, "a")
        ledger.complete("a", [Outcome(c[0].id, Status.PENDING, attempts=1)], now=1001.0)
        counts = ledger.counts(JOB, [STAGE])[STAGE]
        assert (counts.pending, counts.finished) == (1, 0)
        again = claim(ledger, "b", now=1002.0)
        assert (again[0].attempts, again[0].claims) == (1, 2)

    def test_counts_sum_records_and_respect_selection(self, ledger: Ledger) -> None:
        """Counts add up records and can be restricted to a selection."""
        ledger.plan(JOB, STAGE, SPEC)
        finish(ledger, "a", claim(ledger, "a", limit=6))
        all_counts = ledger.counts(JOB, [STAGE])[STAGE]
        assert (all_counts.done, all_counts.records) == (6, 18)
        sel = SPEC.selection(where=["tour=atp"])
        atp = ledger.counts(JOB, [STAGE], sel)[STAGE]
        assert (atp.done, atp.total) == (3, 10)
        assert all_counts.recent_finished == 6
        plain = ledger.counts(JOB, [STAGE], recent=False)[STAGE]
        assert (plain.done, plain.records, plain.total) == (6, 18, 20)
        assert (plain.recent_finished, plain.rate) == (0, None)

    def test_unfinished_tells_pending_and_running_rows_from_finished_ones(
        self, ledger: Ledger, second_ledger: Ledger
    ) -> None:
        """unfinished: some partition is pending or running (only running, if asked),
        within a selection, seen from any connection."""
        assert not ledger.unfinished(JOB, STAGE)  # never planned
        ledger.plan(JOB, STAGE, SPEC)
        assert ledger.unfinished(JOB, STAGE)
        assert not ledger.unfinished(JOB, STAGE, running_only=True)
        early = SPEC.selection(end="2013-01-05")
        late = SPEC.selection(start="2013-01-06")
        held = claim(ledger, "a", limit=10)  # 2013-01-01 to 05, both tours
        assert second_ledger.unfinished(JOB, STAGE, early, running_only=True)
        assert not second_ledger.unfinished(JOB, STAGE, late, running_only=True)
        finish(ledger, "a", held)
        assert not second_ledger.unfinished(JOB, STAGE, early)
        assert second_ledger.unfinished(JOB, STAGE, late)
        assert not second_ledger.unfinished(JOB, STAGE, running_only=True)
        finish(ledger, "b", claim(ledger, "b", limit=10))
        assert not second_ledger.unfinished(JOB, STAGE)
        assert not ledger.unfinished(JOB, "never planned")

    def test_failure_groups_by_category_with_an_example(self, ledger: Ledger) -> None:
        """Failures are grouped by category, biggest first, each with one example."""
        ledger.plan(JOB, STAGE, SPEC)
        c = claim(ledger, "a", limit=5)
        cats = ["timeout", "timeout", "timeout", "http_404", "http_404"]
        ledger.complete(
            "a",
            [
                Outcome(x.id, Status.FAILED, error_category=cat, error_message=f"{cat} on {x.key}")
                for x, cat in zip(c, cats, strict=True)
            ],
            now=1001.0,
        )
        groups = ledger.failure_groups(JOB, [STAGE])
        assert [(g.category, g.count) for g in groups] == [("timeout", 3), ("http_404", 2)]
        assert groups[0].example_message == f"timeout on {groups[0].example_key}"

    def test_checkpoint_is_kept_until_the_partition_finishes(self, ledger: Ledger) -> None:
        """A saved checkpoint comes back with the next claim, and is cleared once done."""
        ledger.plan(JOB, STAGE, daily("2013-01-01", "2013-01-01"))
        (first,) = claim(ledger, "a")
        assert first.checkpoint is None
        assert ledger.save_checkpoint("a", first.id, "page-2")
        assert not ledger.save_checkpoint("intruder", first.id, "page-9")
        ledger.complete("a", [Outcome(first.id, Status.PENDING, requests=4)], now=1001.0)
        (again,) = claim(ledger, "b", now=1002.0)
        assert again.checkpoint == "page-2"
        ledger.complete("b", [Outcome(again.id, Status.DONE, requests=3)], now=1003.0)
        ledger.requeue(JOB, [STAGE], [Status.DONE])
        (third,) = claim(ledger, "c", now=1004.0)
        assert third.checkpoint is None

    def test_requests_are_summed_per_partition_for_planning(self, ledger: Ledger) -> None:
        """Requests spent add up per partition; finished ones feed the average."""
        ledger.plan(JOB, STAGE, SPEC)
        claims = claim(ledger, "a", limit=4)
        ledger.complete(
            "a",
            [Outcome(c.id, Status.DONE, requests=2 + i) for i, c in enumerate(claims)],
            now=1001.0,
        )
        assert ledger.request_stats(JOB, STAGE) == (4, 3.5)
        assert ledger.request_stats(JOB, "never") == (0, None)

    # -- maintenance ----------------------------------------------------------------------

    def test_requeue_returns_failed_partitions_to_pending(self, ledger: Ledger) -> None:
        """Requeue moves failed (or empty) partitions back to pending, within the selection."""
        ledger.plan(JOB, STAGE, SPEC)
        finish(ledger, "a", claim(ledger, "a", limit=4), Status.FAILED)
        finish(ledger, "a", claim(ledger, "a", limit=2), Status.EMPTY)
        sel = SPEC.selection(where=["tour=atp"])
        assert ledger.requeue(JOB, [STAGE], [Status.FAILED], sel) == 2
        assert ledger.requeue(JOB, [STAGE], [Status.FAILED]) == 2
        assert ledger.requeue(JOB, [STAGE], [Status.EMPTY]) == 2
        counts = ledger.counts(JOB, [STAGE])[STAGE]
        assert (counts.failed, counts.empty, counts.pending) == (0, 0, 20)
        assert ledger.entries(JOB, STAGE, status=Status.PENDING)[0].error_category is None

    def test_reset_forgets_all_but_running(self, ledger: Ledger) -> None:
        """Reset deletes recorded partitions, leaving those a live run holds."""
        ledger.plan(JOB, STAGE, SPEC)
        finish(ledger, "a", claim(ledger, "a", limit=4))
        claim(ledger, "b", limit=3)
        assert ledger.reset(JOB, [STAGE]) == ResetCounts(removed=17, stale=0)
        counts = ledger.counts(JOB, [STAGE])[STAGE]
        assert (counts.total, counts.running) == (3, 3)

    # -- runs and workers -----------------------------------------------------------------

    def test_runs_are_recorded_and_listed_newest_first(self, ledger: Ledger) -> None:
        """A run's options, end, status, exit code and counts survive the round trip."""
        for i in range(3):
            ledger.start_run(
                RunRecord(f"run{i}", JOB, 100.0 + i, "host", 42, "run", {"stages": ["fetch"]})
            )
        ledger.finish_run("run1", now=200.0, status="failed", exit_code=1, counts={"done": 7})
        runs = ledger.runs(JOB)
        assert [r.id for r in runs] == ["run2", "run1", "run0"]
        run1 = runs[1]
        assert (run1.status, run1.exit_code, run1.finished_at) == ("failed", 1, 200.0)
        assert run1.counts == {"done": 7} and run1.options == {"stages": ["fetch"]}
        assert runs[0].status == "running" and runs[0].finished_at is None

    def test_workers_register_beat_and_stop(self, ledger: Ledger) -> None:
        """Workers are listed while active, with their last heartbeat."""
        ledger.register_worker(WorkerRecord("w1", JOB, "h1", 1, 10.0, 10.0, None))
        ledger.register_worker(WorkerRecord("w2", JOB, "h2", 2, 11.0, 11.0, None))
        ledger.heartbeat("w1", now=50.0)
        ledger.stop_worker("w2", now=60.0)
        active = ledger.workers(JOB)
        assert [(w.id, w.heartbeat_at) for w in active] == [("w1", 50.0)]
        assert len(ledger.workers(JOB, active_only=False)) == 2

    def test_a_worker_taken_for_dead_that_beats_again_is_active_again(self, ledger: Ledger) -> None:
        """Another worker's reaper marks a worker stopped when it was silent past its lease
        (it stalled); once it beats again it is listed as active: seen by status and by
        the fleet's concurrency shares, which otherwise split the whole limit among the
        others while it goes on sending."""
        ledger.register_worker(WorkerRecord("w1", JOB, "h1", 1, 10.0, 10.0, None))
        ledger.register_worker(WorkerRecord("w2", JOB, "h2", 2, 11.0, 11.0, None))
        ledger.stop_worker("w1", now=200.0)  # w2's reaper: w1 silent since 10.0
        assert [w.id for w in ledger.workers(JOB)] == ["w2"]
        ledger.heartbeat("w1", now=205.0)
        active = {w.id: w for w in ledger.workers(JOB)}
        assert sorted(active) == ["w1", "w2"]
        assert (active["w1"].heartbeat_at, active["w1"].stopped_at) == (205.0, None)

    def test_a_heartbeat_records_what_the_workers_resources_are_doing(self, ledger: Ledger) -> None:
        """A heartbeat with the resources' state puts it on record; one without keeps the
        last (a beat that only renews leases says nothing new about them)."""
        ledger.register_worker(WorkerRecord("w1", JOB, "h1", 1, 10.0, 10.0, None))
        state = '{"api":{"circuit":"open","circuit_since":40.0}}'
        ledger.heartbeat("w1", now=50.0, resources=state)
        ledger.heartbeat("w1", now=60.0)
        (worker,) = ledger.workers(JOB)
        assert (worker.heartbeat_at, worker.resources) == (60.0, state)

    def test_workers_count_the_partitions_they_finish(self, ledger: Ledger) -> None:
        """Each worker's record counts what it finished; releases are not counted."""
        ledger.register_worker(WorkerRecord("w1", JOB, "h1", 1, 10.0, 10.0, None))
        ledger.plan(JOB, STAGE, SPEC)
        claims = claim(ledger, "w1", limit=5)
        done = [Outcome(c.id, Status.DONE) for c in claims[:3]]
        ledger.complete("w1", [*done, Outcome(claims[3].id, Status.PENDING)], now=1001.0)
        ledger.complete("w1", [Outcome(claims[4].id, Status.FAILED)], now=1002.0)
        assert [w.finished for w in ledger.workers(JOB)] == [4]

    # -- concurrency ----------------------------------------------------------------------

    def test_concurrent_claimants_on_two_connections_never_share(
        self, ledger: Ledger, second_ledger: Ledger
    ) -> None:
        """Threads claiming through two connections lease each partition exactly once."""
        spec = daily("2010-01-01", "2013-12-31")
        ledger.plan(JOB, STAGE, spec)
        seen: dict[str, list[str]] = {"a": [], "b": []}

        def work(store: Ledger, owner: str) -> None:
            while batch := claim(store, owner, limit=25):
                seen[owner] += [c.key for c in batch]
                finish(store, owner, batch)

        threads = [
            threading.Thread(target=work, args=(ledger, "a")),
            threading.Thread(target=work, args=(second_ledger, "b")),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not set(seen["a"]) & set(seen["b"])
        assert len(seen["a"]) + len(seen["b"]) == len(spec)
        assert ledger.counts(JOB, [STAGE])[STAGE].done == len(spec)

    # -- dependencies ---------------------------------------------------------------------

    def test_a_partition_waits_for_the_same_upstream_partition(self, ledger: Ledger) -> None:
        """Only partitions whose upstream partition is done or empty can be claimed."""
        ledger.plan(JOB, "a", daily("2013-01-01", "2013-01-05"))
        ledger.plan(JOB, "b", daily("2013-01-01", "2013-01-05"))
        assert ready(ledger, "b", [DAY_DEP]) == []
        settle(ledger, "a", {"2013-01-01"}, Status.DONE, 1000.0)
        settle(ledger, "a", {"2013-01-03"}, Status.EMPTY, 1001.0)
        assert ready(ledger, "b", [DAY_DEP]) == ["2013-01-01", "2013-01-03"]
        assert len(ready(ledger, "b", [])) == 5

    def test_a_bounded_scan_looks_for_ready_partitions_among_the_first_pending_only(
        self, ledger: Ledger, second_ledger: Ledger
    ) -> None:
        """scan=N checks the first N pending partitions in claim order (either order),
        no further; a stage without needs claims as usual."""
        ledger.plan(JOB, "a", daily("2013-01-01", "2013-01-10"))
        ledger.plan(JOB, "b", daily("2013-01-01", "2013-01-10"))
        later = {f"2013-01-{d:02d}" for d in range(6, 11)}
        settle(ledger, "a", later, Status.DONE, 1000.0)

        def keys(scan: int | None, order: Order = Order.OLDEST) -> list[str]:
            return ready_keys(ledger, "b", [DAY_DEP], scan=scan, order=order)

        assert keys(3) == []
        assert keys(7) == ["2013-01-06", "2013-01-07"]
        assert keys(None) == sorted(later)
        assert keys(2, Order.NEWEST) == ["2013-01-09", "2013-01-10"]
        held = second_ledger.claim(
            JOB,
            "b",
            "other",
            limit=1,
            lease_seconds=60.0,
            now=2000.0,
            run_id="r2",
            needs=[DAY_DEP],
            scan=6,
        )
        assert [c.key for c in held] == ["2013-01-06"]
        # Leased rows are no longer pending: the next scan of 6 reaches one row further.
        assert keys(6) == ["2013-01-07"]
        assert len(ready_keys(ledger, "b", [], scan=1)) == 9

    def test_a_lookback_waits_for_every_earlier_partition_of_the_window(
        self, ledger: Ledger
    ) -> None:
        """With lookback 2, a day needs itself and the two days before (those planned)."""
        ledger.plan(JOB, "a", daily("2013-01-01", "2013-01-06"))
        ledger.plan(JOB, "b", daily("2013-01-01", "2013-01-06"))
        settle(
            ledger, "a", {"2013-01-01", "2013-01-02", "2013-01-03", "2013-01-05"}, Status.DONE, 1
        )
        dep = Dependency("a", grain="day", lookback=2)
        assert ready(ledger, "b", [dep]) == ["2013-01-01", "2013-01-02", "2013-01-03"]

    def test_grains_map_onto_each_other(self, ledger: Ledger) -> None:
        """A month needs every day of it; a day needs its month."""
        ledger.plan(JOB, "a", daily("2013-01-01", "2013-02-28"))
        ledger.plan(JOB, "b", monthly("2013-01-01", "2013-02-28"))
        january = {f"2013-01-{d:02d}" for d in range(1, 32)}
        settle(ledger, "a", january - {"2013-01-31"}, Status.DONE, 1)
        assert ready(ledger, "b", [DAY_DEP]) == []
        settle(ledger, "a", {"2013-01-31"}, Status.DONE, 2)
        assert ready(ledger, "b", [DAY_DEP]) == ["2013-01"]

        ledger.plan(JOB, "c", daily("2013-01-30", "2013-02-02"))
        settle(ledger, "b", {"2013-01"}, Status.DONE, 3)
        month = Dependency("b", grain="month", span_days=30)
        assert ready(ledger, "c", [month]) == ["2013-01-30", "2013-01-31"]
        by_month = Dependency("b", grain="month", span_days=30, lookback=1)
        assert ready(ledger, "c", [by_month]) == ["2013-01-30", "2013-01-31"]

    def test_dimensions_are_matched(self, ledger: Ledger) -> None:
        """A partition waits only for upstream partitions with its own dimension values."""
        ledger.plan(JOB, "a", daily("2013-01-01", "2013-01-02", tour=["atp", "wta"]))
        ledger.plan(JOB, "b", daily("2013-01-01", "2013-01-02", tour=["atp", "wta"]))
        settle(ledger, "a", {"2013-01-01/tour=atp", "2013-01-02/tour=wta"}, Status.DONE, 1)
        dep = Dependency("a", grain="day", dims=("tour",))
        assert sorted(ready(ledger, "b", [dep])) == ["2013-01-01/tour=atp", "2013-01-02/tour=wta"]

    def test_a_whole_stage_dependency_waits_for_all_of_it(self, ledger: Ledger) -> None:
        """A stage that needs a reference stage waits until its one partition is done."""
        ledger.plan(JOB, "ref", reference())
        ledger.plan(JOB, "b", daily("2013-01-01", "2013-01-03"))
        whole = Dependency("ref", whole=True)
        assert ready(ledger, "b", [whole]) == []
        settle(ledger, "ref", {"all"}, Status.DONE, 1)
        assert len(ready(ledger, "b", [whole, DAY_DEP])) == 3  # "a" never planned: no wait

    def test_failed_inputs_block_and_are_named(self, ledger: Ledger) -> None:
        """A partition whose input failed cannot run; blocked_keys names the input."""
        ledger.plan(JOB, "a", daily("2013-01-01", "2013-01-03"))
        ledger.plan(JOB, "b", daily("2013-01-01", "2013-01-03"))
        settle(ledger, "a", {"2013-01-02"}, Status.FAILED, 1)
        settle(ledger, "a", {"2013-01-01", "2013-01-03"}, Status.DONE, 2)
        assert ready(ledger, "b", [DAY_DEP]) == ["2013-01-01", "2013-01-03"]
        assert ledger.blocked_keys(JOB, "b", [DAY_DEP]) == {"2013-01-02": "a 2013-01-02"}

    def test_unfinished_with_needs_counts_only_claimable_pending_rows(self, ledger: Ledger) -> None:
        """unfinished(needs=...): a pending partition counts only when its inputs are all
        finished; one waiting for a failed (or a pending) input is no work to wait for."""
        ledger.plan(JOB, "a", daily("2013-01-01", "2013-01-02"))
        ledger.plan(JOB, "b", daily("2013-01-01", "2013-01-02"))
        assert ledger.unfinished(JOB, "b")
        assert not ledger.unfinished(JOB, "b", needs=[DAY_DEP])  # inputs pending
        settle(ledger, "a", {"2013-01-01"}, Status.FAILED, 1)
        assert not ledger.unfinished(JOB, "b", needs=[DAY_DEP])  # one failed, one pending
        settle(ledger, "a", {"2013-01-02"}, Status.DONE, 2)
        assert ledger.unfinished(JOB, "b", needs=[DAY_DEP])  # 2013-01-02 is ready
        first_day = daily("2013-01-01", "2013-01-02").selection(keys=["2013-01-01"])
        assert not ledger.unfinished(JOB, "b", first_day, needs=[DAY_DEP])

    def test_redone_inputs_make_finished_partitions_stale(self, ledger: Ledger) -> None:
        """Inputs pending again, or finished after the partition, mark it stale."""
        ledger.plan(JOB, "a", daily("2013-01-01", "2013-01-03"))
        ledger.plan(JOB, "b", daily("2013-01-01", "2013-01-03"))
        every = {"2013-01-01", "2013-01-02", "2013-01-03"}
        settle(ledger, "a", every, Status.DONE, 10)
        settle(ledger, "b", every, Status.DONE, 20)
        assert ledger.stale_keys(JOB, "b", [DAY_DEP]) == set()
        ledger.requeue(
            JOB,
            ["a"],
            [Status.DONE],
            daily("2013-01-02", "2013-01-02").selection(keys=["2013-01-02"]),
        )
        assert ledger.stale_keys(JOB, "b", [DAY_DEP]) == {"2013-01-02"}
        settle(ledger, "a", {"2013-01-02"}, Status.DONE, 30)  # redone after b's run
        assert ledger.stale_keys(JOB, "b", [DAY_DEP]) == {"2013-01-02"}
        assert ledger.mark_stale(JOB, "b", [DAY_DEP]) == 1
        rows = {r.key: r for r in ledger.coverage_rows(JOB, "b")}
        assert rows["2013-01-02"].status is Status.PENDING
        assert rows["2013-01-02"].error_category == "stale"
        assert ready(ledger, "b", [DAY_DEP], now=3000.0) == ["2013-01-02"]
        assert ledger.mark_stale(JOB, "b", [DAY_DEP]) == 0

    def test_reset_marks_what_was_computed_from_forgotten_partitions_stale(
        self, ledger: Ledger
    ) -> None:
        """Reset, told the downstream stages' dependencies, marks their finished
        partitions computed from a forgotten one stale in the same call (pending,
        category stale) and leaves the rest done."""
        spec = daily("2013-01-01", "2013-01-05")
        every = {p.key for p in spec}
        ledger.plan(JOB, "a", spec)
        ledger.plan(JOB, "b", spec)
        settle(ledger, "a", every, Status.DONE, 10)
        settle(ledger, "b", every, Status.DONE, 20)
        lookback = Dependency("a", grain="day", lookback=1)
        counts = ledger.reset(
            JOB, ["a"], spec.selection(keys=["2013-01-02"]), downstream={"b": [lookback]}
        )
        assert counts == ResetCounts(removed=1, stale=2)
        rows = {r.key: r for r in ledger.coverage_rows(JOB, "b")}
        stale = {k for k, r in rows.items() if r.error_category == "stale"}
        assert stale == {"2013-01-02", "2013-01-03"}
        assert all(rows[k].status is Status.PENDING for k in stale)
        assert all(rows[k].status is Status.DONE for k in every - stale)
        assert {r.key for r in ledger.coverage_rows(JOB, "a")} == every - {"2013-01-02"}
        again = ledger.reset(JOB, ["a"], spec.selection(keys=["2013-01-04"]))
        assert again == ResetCounts(removed=1, stale=0)

    def test_coverage_rows_carry_status_records_and_checks(self, ledger: Ledger) -> None:
        """Coverage reads every recorded partition with what happened to it."""
        ledger.plan(JOB, STAGE, daily("2013-01-01", "2013-01-03", tour=["atp"]))
        (first, *_) = claim(ledger, "w", limit=1)
        stored = '[{"name":"min_rows(1)","ok":false,"category":"INSUFFICIENT_DATA"}]'
        failed = Outcome(
            first.id,
            Status.FAILED,
            error_category="INSUFFICIENT_DATA",
            error_message="check min_rows(1) failed",
            checks=stored,
        )
        ledger.complete("w", [failed], now=5.0)
        rows = list(ledger.coverage_rows(JOB, STAGE))
        assert [r.key for r in rows] == [
            "2013-01-01/tour=atp",
            "2013-01-02/tour=atp",
            "2013-01-03/tour=atp",
        ]
        assert rows[0].status is Status.FAILED and rows[0].checks == stored
        assert rows[0].error_category == "INSUFFICIENT_DATA" and rows[0].finished_at == 5.0
        assert rows[0].dims == (("tour", "atp"),) and str(rows[0].start) == "2013-01-01"
        assert rows[1].status is Status.PENDING and rows[1].records is None
        assert list(ledger.coverage_rows(JOB, "never")) == []

    def test_window_counts_group_a_stage_by_window_and_status(self, ledger: Ledger) -> None:
        """Calendars read, per window, how many partitions (tours together) are in each
        status, pending rows marked stale apart, in window order."""
        ledger.plan(JOB, "a", daily("2013-01-01", "2013-01-02"))
        ledger.plan(JOB, "b", daily("2013-01-01", "2013-01-03", tour=["atp", "wta"]))
        settle(ledger, "a", {"2013-01-01", "2013-01-02"}, Status.DONE, 10)
        done = {"2013-01-01/tour=atp", "2013-01-01/tour=wta", "2013-01-02/tour=atp"}
        settle(ledger, "b", done, Status.DONE, 20)
        first = daily("2013-01-01", "2013-01-01").selection(keys=["2013-01-01"])
        ledger.requeue(JOB, ["a"], [Status.DONE], first)
        assert ledger.mark_stale(JOB, "b", [DAY_DEP]) == 2
        got = ledger.claim(
            JOB, "b", "w", limit=1, lease_seconds=60.0, now=30.0, run_id="r2", needs=[DAY_DEP]
        )
        assert [c.key for c in got] == ["2013-01-02/tour=wta"]
        counts = ledger.window_counts(JOB, "b")
        assert [(str(c.start), str(c.end), c.status, c.stale, c.count) for c in counts] == [
            ("2013-01-01", "2013-01-01", Status.PENDING, True, 2),
            ("2013-01-02", "2013-01-02", Status.DONE, False, 1),
            ("2013-01-02", "2013-01-02", Status.RUNNING, False, 1),
            ("2013-01-03", "2013-01-03", Status.PENDING, False, 2),
        ]
        assert ledger.window_counts(JOB, "never") == []

    # -- resource schedules (SharedLimits) ---------------------------------------------

    def test_a_quota_is_booked_across_connections(
        self, ledger: Ledger, second_ledger: Ledger
    ) -> None:
        """Two connections (two machines, or a run and the one after it) booking against
        one 3-per-minute quota: the fourth start waits a minute after the first, whoever
        booked which."""
        book = {"count": 2, "interval": 0.1, "tolerance": 0.0, "quotas": [(3, 60.0)]}
        due_a, _, now_a, _ = ledger.take_starts("j", "api", **book)  # type: ignore[attr-defined]
        due_b, _, now_b, _ = second_ledger.take_starts("j", "api", **book)  # type: ignore[attr-defined]
        a0, a1 = (now_a + due for due in due_a)
        b0, b1 = (now_b + due for due in due_b)
        assert a1 - a0 == pytest.approx(0.1, abs=0.002)
        assert b0 < a0 + 1.0  # the third start of the minute goes on the rate alone
        assert b1 >= a0 + 60.0 - 0.002  # the fourth waits for the first to leave the window
        assert b1 < a0 + 61.0

    def test_starts_of_one_schedule_are_spaced_whoever_books_them(
        self, ledger: Ledger, second_ledger: Ledger
    ) -> None:
        """Blocks booked from two connections make one schedule: six starts, 0.5 s apart."""
        book = {"count": 3, "interval": 0.5, "tolerance": 0.0}
        due_a, _, now_a, _ = ledger.take_starts("j", "api", **book)  # type: ignore[attr-defined]
        due_b, _, now_b, _ = second_ledger.take_starts("j", "api", **book)  # type: ignore[attr-defined]
        starts = sorted([now_a + d for d in due_a] + [now_b + d for d in due_b])
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert all(gap == pytest.approx(0.5, abs=0.002) for gap in gaps), gaps

    def test_the_pace_a_fleet_learns_is_kept_with_its_schedule(
        self, ledger: Ledger, second_ledger: Ledger
    ) -> None:
        """Booked with ``learn``, starts go at the pace the schedule learned: a hair under
        a strict declared rate at first; a refusal one connection reports a hair early
        spaces the starts the other books further (10 % the first time), and the rate
        booked at comes back with them. Without ``learn`` the declared rate books."""
        book = {"interval": 0.1, "tolerance": 0.0, "learn": Report()}
        due, _, now, rate = ledger.take_starts("j", "api", count=2, **book)  # type: ignore[attr-defined]
        assert rate == pytest.approx(9.7)
        assert due[1] - due[0] == pytest.approx(1 / 9.7, abs=1e-4)
        _, _, _, rate = second_ledger.take_starts(  # type: ignore[attr-defined]
            "j",
            "api",
            count=1,
            **{**book, "learn": Report([(now + due[0], False)], [now + due[0]])},
        )
        assert rate == pytest.approx(9.7 * 0.9)
        due, _, _, rate = ledger.take_starts("j", "api", count=2, **book)  # type: ignore[attr-defined]
        assert rate == pytest.approx(9.7 * 0.9)
        assert due[1] - due[0] == pytest.approx(1 / (9.7 * 0.9), abs=1e-4)
        due, _, _, rate = ledger.take_starts(  # type: ignore[attr-defined]
            "j", "api", count=2, interval=0.1, tolerance=0.0
        )
        assert rate == pytest.approx(10.0)
        assert due[1] - due[0] == pytest.approx(0.1, abs=1e-4)

    def test_quotas_alone_go_at_once_and_leave_the_rate_alone(self, ledger: Ledger) -> None:
        """Booked without a rate (interval 0), starts are due at once until the quota is
        spent, and a rate booked on the same schedule afterwards is not held back."""
        due, _, first, _ = ledger.take_starts(  # type: ignore[attr-defined]
            "j", "api", count=4, interval=0.0, tolerance=0.0, quotas=[(4, 3600.0)]
        )
        assert due == pytest.approx([0.0] * 4, abs=0.002)
        more, _, then, _ = ledger.take_starts(  # type: ignore[attr-defined]
            "j", "api", count=1, interval=0.0, tolerance=0.0, quotas=[(4, 3600.0)]
        )
        # The fifth start waits for the first to leave the hour (instants, not offsets:
        # the second booking happens a moment after the first).
        assert then + more[0] == pytest.approx(first + 3600.0, abs=0.002)
        paced, _, _, _ = ledger.take_starts("j", "api", count=2, interval=1.0, tolerance=0.0)  # type: ignore[attr-defined]
        assert paced == pytest.approx([0.0, 1.0], abs=0.002)

    def test_a_start_due_beyond_the_horizon_is_not_booked(self, ledger: Ledger) -> None:
        """A quota used up (3 a minute): a start due a minute ahead is not booked, only
        said, so a run that stops while waiting for it leaves the window as it was; asked
        again, it is the same instant, and nothing of the quota was spent meanwhile."""
        book = {"interval": 0.0, "tolerance": 0.0, "quotas": [(3, 60.0)], "horizon": 1.0}
        due, _, first, _ = ledger.take_starts("j", "api", count=3, **book)  # type: ignore[attr-defined]
        assert due == pytest.approx([0.0] * 3, abs=0.002)
        for _ in range(2):
            later, _, now, _ = ledger.take_starts("j", "api", count=2, **book)  # type: ignore[attr-defined]
            assert len(later) == 1
            assert now + later[0] == pytest.approx(first + 60.0, abs=0.002)
        (use,) = ledger.quota_use("j", "api", [(3, 60.0)]).values()  # type: ignore[attr-defined]
        assert use.used == 3

    def test_a_quota_s_window_is_widened_by_the_margin_asked(self, ledger: Ledger) -> None:
        """Starts may reach the source a little early or late: with a margin of half a
        second, the fourth start of a 3-per-10-seconds quota waits 10.5 s, not 10."""
        book = {"interval": 0.0, "tolerance": 0.0, "quotas": [(3, 10.0)], "margin": 0.5}
        _, _, first, _ = ledger.take_starts("j", "api", count=3, **book)  # type: ignore[attr-defined]
        (fourth,), _, now, _ = ledger.take_starts("j", "api", count=1, **book)  # type: ignore[attr-defined]
        assert now + fourth == pytest.approx(first + 10.5, abs=0.002)

    def test_every_count_declared_for_a_period_holds_over_every_start(
        self, ledger: Ledger, second_ledger: Ledger
    ) -> None:
        """Two jobs share a resource (scope ``*``) and declare different quotas for one
        period, 3 an hour and 5 an hour: the one that comes second finds the first's 3
        spent (2 more now, the next in an hour), and the first, asked again, finds its
        window full of both's starts."""
        book = {"interval": 0.0, "tolerance": 0.0}
        due, _, first, _ = ledger.take_starts("*", "api", count=3, quotas=[(3, 3600.0)], **book)  # type: ignore[attr-defined]
        assert due == pytest.approx([0.0] * 3, abs=0.002)
        due, _, now, _ = second_ledger.take_starts(  # type: ignore[attr-defined]
            "*", "api", count=3, quotas=[(5, 3600.0)], **book
        )
        assert due[:2] == pytest.approx([0.0, 0.0], abs=0.002)
        assert now + due[2] == pytest.approx(first + 3600.0, abs=0.002)
        (later,), _, then, _ = ledger.take_starts("*", "api", count=1, quotas=[(3, 3600.0)], **book)  # type: ignore[attr-defined]
        assert then + later >= now + 3600.0 - 0.002

    def test_a_quota_declared_lower_keeps_what_its_window_spent(self, ledger: Ledger) -> None:
        """A job spent 3 of its 10 a minute, then its quota is declared 2 a minute: the
        window is spent, and the next start waits for it."""
        book = {"interval": 0.0, "tolerance": 0.0}
        _, _, first, _ = ledger.take_starts("j", "api", count=3, quotas=[(10, 60.0)], **book)  # type: ignore[attr-defined]
        (due,), _, now, _ = ledger.take_starts("j", "api", count=1, quotas=[(2, 60.0)], **book)  # type: ignore[attr-defined]
        assert now + due == pytest.approx(first + 60.0, abs=0.002)

    def test_a_pause_holds_every_connection_and_only_its_scope(
        self, ledger: Ledger, second_ledger: Ledger
    ) -> None:
        """A pause booked through one connection delays the starts another books on the
        same schedule; the schedule of another scope (a shared resource's ``*``) is free."""
        for scope in ("j", "*"):
            ledger.take_starts(scope, "api", count=1, interval=0.1, tolerance=0.0)  # type: ignore[attr-defined]
        ledger.pause_resource("j", "api", 30.0)  # type: ignore[attr-defined]
        due, paused, _, _ = second_ledger.take_starts(  # type: ignore[attr-defined]
            "j", "api", count=1, interval=0.1, tolerance=0.0
        )
        assert paused >= 29.0 and due[0] >= 29.0
        free, paused_free, _, _ = second_ledger.take_starts(
            "*", "api", count=1, interval=0.1, tolerance=0.0
        )  # type: ignore[attr-defined]
        assert free[0] < 1.0 and paused_free <= 0.0
