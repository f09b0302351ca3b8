"""Progress displays: duration formatting, event folding, plain log lines and the live table."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from backfill import progress as progress_module
from backfill.events import (
    FleetCounts,
    PartitionFinished,
    PartitionRetrying,
    PartitionStarted,
    ResourceChanged,
    RunFinished,
    RunStarted,
    RunStopping,
    Tick,
)
from backfill.ledger import StageCounts, Status
from backfill.progress import LiveProgress, PlainProgress, ProgressState, format_duration

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def started(**counts: StageCounts) -> RunStarted:
    return RunStarted(run_id="r1", job="tennis", worker_id="w1", at=0.0, counts=counts)


def finished(
    stage: str, key: str, status: Status, records: int = 0, **kw: str
) -> PartitionFinished:
    return PartitionFinished(stage, key, status, records, duration=0.1, attempts=1, **kw)


RUN_FINISHED = RunFinished(run_id="r1", status="done", exit_code=0, elapsed=1.0)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (float("inf"), "-"),
        (float("nan"), "-"),
        (0, "0s"),
        (42, "42s"),
        (59.6, "1m00s"),
        (725, "12m05s"),
        (3600, "1h00m"),
        (11040, "3h04m"),
        (-3, "0s"),
    ],
)
def test_format_duration(seconds: float | None, text: str):
    """Durations read `42s`, `12m05s`, `3h04m`; unknown ones read `-`."""
    assert format_duration(seconds) == text


# --- ProgressState ----------------------------------------------------------------------


def test_run_started_seeds_totals_from_stage_counts():
    """`RunStarted` counts seed each stage's total, done, empty, failed and records."""
    state = ProgressState()
    state.apply(
        started(fetch=StageCounts("fetch", pending=6, done=2, empty=1, failed=1, records=9))
    )
    s = state.stages["fetch"]
    assert (s.total, s.done, s.empty, s.failed, s.records) == (10, 2, 1, 1, 9)
    assert s.finished == 4
    assert s.remaining == 6


def test_partition_events_move_running_and_finished_counts():
    """Started raises `running`; done/empty/failed lower it and raise their own count."""
    state = ProgressState()
    state.apply(started(fetch=StageCounts("fetch", pending=5)))
    for key in "abc":
        state.apply(PartitionStarted("fetch", key))
    s = state.stages["fetch"]
    assert s.running == 3
    state.apply(finished("fetch", "a", Status.DONE, records=7))
    state.apply(finished("fetch", "b", Status.EMPTY))
    state.apply(finished("fetch", "c", Status.FAILED, category="http_404", message="gone"))
    assert (s.running, s.done, s.empty, s.failed, s.records) == (0, 1, 1, 1, 7)
    assert s.remaining == 2


def test_pending_release_does_not_count_as_finished():
    """A partition released as PENDING stops running but does not count as finished."""
    state = ProgressState()
    state.apply(started(fetch=StageCounts("fetch", pending=3)))
    state.apply(PartitionStarted("fetch", "a"))
    state.apply(finished("fetch", "a", Status.PENDING))
    s = state.stages["fetch"]
    assert s.running == 0
    assert s.finished == 0
    assert s.remaining == 3
    assert len(s.samples) == 0


def test_remaining_never_goes_negative():
    """More finishes than the seeded total leave `remaining` at zero."""
    state = ProgressState()
    state.apply(started(fetch=StageCounts("fetch", pending=1)))
    state.apply(finished("fetch", "a", Status.DONE))
    state.apply(finished("fetch", "b", Status.DONE))
    assert state.stages["fetch"].remaining == 0


def test_retries_stopping_and_finish_are_recorded():
    """Retries are counted, and the stopping reason and final event are kept."""
    state = ProgressState()
    state.apply(
        PartitionRetrying("fetch", "a", attempt=1, delay=0.5, category="timeout", message="x")
    )
    state.apply(RunStopping("interrupted"))
    state.apply(RUN_FINISHED)
    assert state.stages["fetch"].retries == 1
    assert state.stopping == "interrupted"
    assert state.finished is RUN_FINISHED


# --- PlainProgress ----------------------------------------------------------------------


def stage_lines(text: str, stage: str = "fetch") -> list[str]:
    return [line for line in text.splitlines() if f"] {stage}: " in line]


def test_plain_progress_reports_each_stage_at_start():
    """At `RunStarted` it announces the run and writes one line per stage with counts and ETA."""
    out = io.StringIO()
    plain = PlainProgress(out, interval=3600)
    plain(
        started(
            fetch=StageCounts("fetch", pending=8, done=2),
            load=StageCounts("load", pending=10),
        )
    )
    text = out.getvalue()
    assert "run r1 of job tennis started" in text
    (fetch,) = stage_lines(text, "fetch")
    assert "fetch: 2/10 (20%)" in fetch
    assert "done 2" in fetch
    assert "failed 0" in fetch
    assert "ETA" in fetch
    assert len(stage_lines(text, "load")) == 1


def test_plain_progress_lists_failed_partitions_with_category_and_message():
    """A failed partition gets its own line with stage, key, category and message."""
    out = io.StringIO()
    plain = PlainProgress(out, interval=3600)
    plain(started(fetch=StageCounts("fetch", pending=2)))
    plain(finished("fetch", "2013-01-02", Status.FAILED, category="http_404", message="not found"))
    assert "failed fetch 2013-01-02: http_404: not found" in out.getvalue()


def test_plain_progress_caps_the_failures_listed():
    """Only the first `failures_shown` failed partitions are listed individually."""
    out = io.StringIO()
    plain = PlainProgress(out, interval=3600, failures_shown=1)
    plain(started(fetch=StageCounts("fetch", pending=2)))
    plain(finished("fetch", "k1", Status.FAILED, category="timeout", message="slow"))
    plain(finished("fetch", "k2", Status.FAILED, category="timeout", message="slow"))
    text = out.getvalue()
    assert "failed fetch k1" in text
    assert "failed fetch k2" not in text


def test_plain_progress_throttles_lines_and_reports_at_run_finished():
    """Between reports it stays quiet; `RunFinished` always writes the final counts."""
    out = io.StringIO()
    plain = PlainProgress(out, interval=3600)
    plain(started(fetch=StageCounts("fetch", pending=2)))
    plain(PartitionStarted("fetch", "a"))
    plain(finished("fetch", "a", Status.DONE, records=3))
    plain(finished("fetch", "b", Status.EMPTY))
    assert len(stage_lines(out.getvalue())) == 1
    plain(RUN_FINISHED)
    lines = stage_lines(out.getvalue())
    assert len(lines) == 2
    assert "fetch: 2/2 (100%) done 1 empty 1 failed 0" in lines[-1]
    assert "ETA 0s" in lines[-1]


def test_plain_progress_writes_stopping_reason():
    """`RunStopping` is written as a line with its reason."""
    out = io.StringIO()
    plain = PlainProgress(out, interval=3600)
    plain(RunStopping("fatal: credentials refused"))
    assert "stopping: fatal: credentials refused" in out.getvalue()


# --- LiveProgress -----------------------------------------------------------------------


def make_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=120), out


def test_live_progress_renders_a_table_with_stage_and_counts():
    """The rendered table shows each stage's name and done/empty/failed/left counts."""
    console, out = make_console()
    live = LiveProgress(console)
    live.state.apply(
        started(
            fetch=StageCounts("fetch", pending=1234, done=5678, empty=3, failed=2),
            load=StageCounts("load", pending=4),
        )
    )
    live.state.apply(RunStopping("interrupted"))
    console.print(live.__rich__())
    text = ANSI.sub("", out.getvalue())
    fetch = next(line for line in text.splitlines() if "fetch" in line)
    assert "5,678" in fetch
    assert "1,234" in fetch
    assert "load" in text
    assert "elapsed" in text
    assert "stopping (interrupted)" in text


def test_live_progress_starts_on_run_started_and_stops_on_run_finished():
    """The live display starts with the run, draws the stages, and stops when it ends."""
    console, out = make_console()
    live = LiveProgress(console)
    live(started(fetch=StageCounts("fetch", pending=2)))
    try:
        assert live._live is not None
        live(PartitionStarted("fetch", "a"))
        live(finished("fetch", "a", Status.DONE))
        live(RUN_FINISHED)
        assert live._live is None
    finally:
        live.close()
    assert "fetch" in ANSI.sub("", out.getvalue())


def test_live_progress_close_is_safe_before_start_and_twice():
    """`close()` does nothing before a run started and is idempotent after one."""
    console, _ = make_console()
    idle = LiveProgress(console)
    idle.close()
    assert idle._live is None
    live = LiveProgress(console)
    live(started(fetch=StageCounts("fetch", pending=1)))
    live.close()
    live.close()
    assert live._live is None


def test_live_progress_says_a_rate_the_source_does_not_accept_once_above_the_table():
    """A declared rate the source refuses, or a run that starts at the rate the last one
    learned, is said in the live display too (as in plain output and the log), once,
    as a line above the table; it does not hide a pause that holds requests back."""
    console, out = make_console()
    live = LiveProgress(console)
    live(started(fetch=StageCounts("fetch", pending=2)))
    try:
        live(ResourceChanged("api", "paused (429) for 1.0s", 1.0, "paused"))
        what = "declared 15/s is more than the source accepts: running at 7.3/s"
        live(ResourceChanged("api", what, 0.0, "rate"))
        (holdup,) = live.state.holdups(live.state.started)
        assert holdup.startswith("api paused (429)")
        live(RUN_FINISHED)
    finally:
        live.close()
    text = ANSI.sub("", out.getvalue())
    assert text.count(f"api: {what}") == 1


def test_live_progress_shows_a_source_s_words_as_text_not_markup():
    """A rate message quotes nothing from a source today, but whatever it says is
    printed as text: markup and escapes in it are shown, not obeyed."""
    console, out = make_console()
    live = LiveProgress(console)
    live(ResourceChanged("api[bold]", "running at [red]1/s\x1b[2J", 0.0, "rate"))
    live.close()
    text = out.getvalue()
    assert "api[bold]: running at [red]1/s\\x1b[2J" in ANSI.sub("", text)
    assert "\x1b[2J" not in text


def test_format_duration_counts_days_for_long_runs():
    """Durations of two days and more read in days and hours."""
    assert format_duration(21 * 86400 + 4 * 3600) == "21d04h"
    assert format_duration(47 * 3600) == "47h00m"


# --- stalls -----------------------------------------------------------------------------


class Now:
    """The progress module's clock, moved by hand."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.t = 1000.0
        monkeypatch.setattr(progress_module.time, "monotonic", lambda: self.t)
        monkeypatch.setattr(progress_module.time, "time", lambda: 1_700_000_000.0 + self.t)


def steady(plain: PlainProgress | ProgressState, now: Now, count: int) -> None:
    """``count`` partitions of fetch done, one every 0.5 s."""
    for i in range(count):
        now.t += 0.5
        event = finished("fetch", f"k{i}", Status.DONE)
        if isinstance(plain, PlainProgress):
            plain(event)
        else:
            plain.apply(event)


def test_a_stage_where_nothing_finishes_is_stalled_with_its_resources_reason(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Partitions finished every 0.5 s, then none for 30 s while the api's circuit is
    open: no rate, no ETA (nothing says when it ends), and the stall is said with the
    circuit and since when, not a rate from before the outage."""
    now = Now(monkeypatch)
    state = ProgressState()
    state.apply(started(fetch=StageCounts("fetch", pending=100)))
    steady(state, now, 20)
    stage = state.stages["fetch"]
    assert stage.rate(now.t) == pytest.approx(2.0, rel=0.2)
    state.apply(
        ResourceChanged(
            "api", "circuit open: too many errors; probing every 2 s", 2.0, "circuit_open"
        )
    )
    now.t += 30.0
    assert stage.rate(now.t) is None
    assert stage.eta(now.t, state.wait(now.t)) is None
    note = state.stall_note(stage, now.t)
    assert note is not None and note.startswith("stalled 30s: api circuit open since ")
    assert "probing every 2 s" in note
    state.apply(ResourceChanged("api", "circuit closed", 0.0, "circuit_closed"))
    assert state.holdups(now.t) == []


def test_a_quota_wait_of_known_length_is_in_the_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stalled on a quota that frees up in an hour: the ETA is that hour plus the rest
    at the pace before the stall."""
    now = Now(monkeypatch)
    state = ProgressState()
    state.apply(started(fetch=StageCounts("fetch", pending=40)))
    steady(state, now, 20)
    state.apply(ResourceChanged("api", "quota used up (20/day): resumes ...", 3600.0, "quota"))
    now.t += 60.0
    stage = state.stages["fetch"]
    eta = stage.eta(now.t, state.wait(now.t))
    assert eta == pytest.approx(3540.0 + 20 / 2.0, rel=0.05)


def test_a_run_started_into_a_spent_quota_shows_the_wait_in_its_eta(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Restarted while the quota (5 a day) the run before spent still holds for an hour:
    nothing finished yet, so no pace; the ETA is the hour plus the day the ten partitions
    left need of the quota (it was unknown, "-"), in the plain lines too."""
    from backfill.ratelimit import Resource

    now = Now(monkeypatch)
    out = io.StringIO()
    plain = PlainProgress(out, interval=10.0)
    plain.state.floors = {"fetch": Resource("api", limits=["5/day"]).seconds_for}
    plain(started(fetch=StageCounts("fetch", pending=10)))
    plain(ResourceChanged("api", "quota used up (5/day): resumes ...", 3600.0, "quota"))
    now.t += 10.0
    stage = plain.state.stages["fetch"]
    eta = plain.state.eta(stage, now.t)
    assert eta is not None and 3590.0 + 86_400.0 <= eta < 3600.0 + 2 * 86_400.0
    plain(Tick(now.t))
    assert "ETA -" not in stage_lines(out.getvalue())[-1]


def test_the_eta_is_never_less_than_a_quota_needs_for_what_is_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """5 requests every 20 s, 361 partitions left: a window's five went out in two
    seconds, a rate that would end in minutes; the ETA says the 72 windows still
    needed (24 minutes), in the plain lines too."""
    from backfill.ratelimit import Resource

    now = Now(monkeypatch)
    out = io.StringIO()
    plain = PlainProgress(out, interval=10.0)
    resource = Resource("api", limits=["5/20s"])
    plain.state.floors = {"fetch": resource.seconds_for}
    plain(started(fetch=StageCounts("fetch", pending=366)))
    steady(plain, now, 5)
    stage = plain.state.stages["fetch"]
    assert stage.remaining == 361
    assert stage.eta(now.t, None) == pytest.approx(361 / 2.0, rel=0.3)  # the window's burst
    assert plain.state.eta(stage, now.t) == pytest.approx(72 * 20.0)
    now.t += 10.0
    plain(Tick(now.t))
    assert "ETA 24m00s" in stage_lines(out.getvalue())[-1]


def test_plain_progress_keeps_its_cadence_while_nothing_happens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With only ticks coming (a source that is down), a line comes every interval, on
    its own cadence, and says the stage is stalled and why."""
    now = Now(monkeypatch)
    out = io.StringIO()
    plain = PlainProgress(out, interval=10.0)
    plain(started(fetch=StageCounts("fetch", pending=100)))
    steady(plain, now, 10)
    plain(
        ResourceChanged(
            "api", "circuit open: too many errors; probing every 2 s", 2.0, "circuit_open"
        )
    )
    before = len(stage_lines(out.getvalue()))
    for _ in range(60):
        now.t += 1.0
        plain(Tick(now.t))
    lines = stage_lines(out.getvalue())[before:]
    assert len(lines) == 6
    assert "stalled" in lines[-1] and "api circuit open since" in lines[-1]
    assert "ETA -" in lines[-1]


def test_a_worker_of_a_fleet_shows_the_fleets_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that finished 10 of the fleet's 100 partitions, told that the fleet has
    finished 90: its line says 90/100, with the fleet's rate, not its own share."""
    now = Now(monkeypatch)
    out = io.StringIO()
    plain = PlainProgress(out, interval=3600)
    plain(started(fetch=StageCounts("fetch", pending=100)))
    plain(FleetCounts({"fetch": StageCounts("fetch", pending=60, done=40)}))
    steady(plain, now, 10)  # this worker's own finishes no longer move the counts
    now.t += 5.0
    plain(FleetCounts({"fetch": StageCounts("fetch", pending=10, done=90)}))
    plain(RUN_FINISHED)
    last = stage_lines(out.getvalue())[-1]
    assert "fetch: 90/100 (90%) done 90" in last
    assert "rate 5.0/s" in last or "rate 5.1/s" in last


def test_a_run_s_displays_know_what_each_stage_s_limits_need() -> None:
    """The floors a run gives its displays: per stage through a resource with limits,
    its partitions at their declared requests each (two here: 10 partitions are 20
    requests, four windows of 5/20s, the first at once); none for a stage without one."""
    from backfill import Job, daily
    from backfill.estimate import limit_floors

    job = Job("j", partitions=daily("2013-01-01", "2013-01-31"))
    job.resource("api", limits=["5/20s"], concurrency=2)

    @job.stage(resource="api", requests_per_partition=2)
    async def fetch(ctx: object, partition: object) -> list[dict[str, int]]:
        return []

    @job.stage(needs=["fetch"])
    def summary(ctx: object, partition: object) -> list[dict[str, int]]:
        return []

    floors = limit_floors(job)
    assert set(floors) == {"fetch"}
    assert floors["fetch"](10) == pytest.approx(60.0)


def test_another_resource_s_pause_is_not_added_to_a_moving_stage_s_eta(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """fetch moves at 2/s through its own resource (20/s) with 100 left; another
    resource, which it does not use, is paused for an hour: its ETA stays 50 s."""
    from backfill.ratelimit import Resource

    now = Now(monkeypatch)
    state = ProgressState()
    state.floors = {"fetch": Resource("a", rate="20/s").seconds_for}
    state.apply(started(fetch=StageCounts("fetch", pending=120)))
    steady(state, now, 20)
    state.apply(ResourceChanged("b", "paused (429)", 3600.0, "paused"))
    stage = state.stages["fetch"]
    assert state.eta(stage, now.t) == pytest.approx(100 / 2.0, rel=0.1)
