"""What a source sends is shown as text: never read as Rich markup, never sent to the
terminal as an escape sequence, in the progress displays, console logs and reports."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from backfill import Context, Job, Partition, PermanentError, RetryPolicy, daily
from backfill import coverage as cov
from backfill.events import (
    PartitionFinished,
    ResourceChanged,
    RunStarted,
    RunStopping,
)
from backfill.ledger import StageCounts, Status, open_ledger
from backfill.logs import configure_logging, log_file_handler
from backfill.progress import LiveProgress, PlainProgress
from backfill.testing import run_job

EVIL = "[/bold] \x1b[2J\x07 evil"
SHOWN = "[/bold] \\x1b[2J\\x07 evil"
# Sequences the attacker wants the terminal to act on: clear screen, bell, window title.
ATTACKS = ("\x1b[2J", "\x07", "\x1b]0;", "\x9b")
STYLE = re.compile(r"\x1b\[[0-9;]*m")


def assert_harmless(text: str) -> None:
    for seq in ATTACKS:
        assert seq not in text, f"{seq!r} reached the output: {text!r}"


def started() -> RunStarted:
    counts = {"fetch": StageCounts("fetch", pending=3)}
    return RunStarted(run_id="r1", job="evil", worker_id="w1", at=0.0, counts=counts)


def failed(message: str = EVIL, category: str = "BAD[/red]\x1b]0;title\x07") -> PartitionFinished:
    return PartitionFinished(
        "fetch",
        "2013-01-03",
        Status.FAILED,
        0,
        duration=0.1,
        attempts=1,
        category=category,
        message=message,
    )


def test_plain_progress_escapes_control_characters() -> None:
    """A failure line in plain mode shows ESC and BEL as escapes, never the bytes."""
    out = io.StringIO()
    plain = PlainProgress(out, interval=3600)
    plain(started())
    plain(failed())
    plain(ResourceChanged("api", "paused by \x1b[31m\x9b0m", 2.0))
    plain(RunStopping("fatal: \x1b]0;pwned\x07"))
    text = out.getvalue()
    assert_harmless(text)
    assert "\x1b" not in text
    assert f"failed fetch 2013-01-03: BAD[/red]\\x1b]0;title\\x07: {SHOWN}" in text
    assert "paused by \\x1b[31m\\x9b0m" in text


def test_live_progress_renders_markup_and_escapes_as_text() -> None:
    """The live table's caption shows what a resource and a stop reason say, as text."""
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=200)
    live = LiveProgress(console)
    live.state.apply(started())
    live.state.apply(ResourceChanged("api", "paused [/bold] \x1b[2J\x07", 30.0))
    live.state.apply(RunStopping("fatal: [red]\x1b]0;pwned\x07"))
    console.print(live.__rich__())
    text = buffer.getvalue()
    assert_harmless(text)
    plain = STYLE.sub("", text)
    assert "\x1b" not in plain
    plain = " ".join(plain.split())  # the caption wraps at the table's width
    assert "paused [/bold] \\x1b[2J\\x07" in plain
    assert "fatal: [red]\\x1b]0;pwned\\x07" in plain


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLogger("backfill").level)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    logging.getLogger("backfill").setLevel(saved[2])


def test_console_log_lines_escape_control_characters(root_logging: None) -> None:
    """Console log lines (the renderer for people) show a source's ESC and BEL escaped,
    in the message, in extra fields and in a traceback, which keeps its line breaks."""
    stream = io.StringIO()
    configure_logging("console", level=logging.INFO, stream=stream)
    log = logging.getLogger("backfill.test")
    log.warning("got %s", EVIL, extra={"body": "x\x1b]0;title\x07y", "n": "a\x9bb"})
    try:
        raise ValueError("boom \x1b[2J")
    except ValueError:
        log.exception("stage failed")
    text = stream.getvalue()
    assert_harmless(text)
    assert "\x1b" not in text
    assert SHOWN in text
    assert "x\\x1b]0;title\\x07y" in text
    assert "boom \\x1b[2J" in text
    assert "Traceback (most recent call last):\n" in text


def test_json_log_lines_keep_the_text_faithfully(root_logging: None) -> None:
    """JSON log lines carry the source's text exactly (escaped by JSON, not altered)."""
    stream = io.StringIO()
    configure_logging("json", level=logging.INFO, stream=stream)
    logging.getLogger("backfill.test").warning("got %s", EVIL)
    assert_harmless(stream.getvalue())
    assert json.loads(stream.getvalue())["event"] == f"got {EVIL}"


def evil_job() -> Job:
    job = Job("evil", partitions=daily("2013-01-01", "2013-01-05"))

    @job.stage(retry=RetryPolicy(attempts=1, base=0.0))
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, str]]:
        if partition.start.day == 3:
            raise PermanentError(EVIL, category="BAD[/red]")
        return [{"day": partition.key}]

    return job


def test_coverage_reports_show_text_and_keep_json_faithful() -> None:
    """The coverage HTML shows the message escaped for HTML and the terminal; its JSON
    carries it exactly."""
    job = evil_job()
    ledger = open_ledger(":memory:")
    run_job(job, ledger)
    report = cov.collect(job, ledger, list(job.stages.values()), None)
    page = cov.to_html(report)
    assert_harmless(page)
    assert "[/bold] \\x1b[2J\\x07 evil" in page
    document = json.loads(cov.to_json(report, "day"))
    assert any(gap["reason"].endswith(EVIL) for gap in document["gaps"])
    assert_harmless(cov.to_json(report, "day"))
    report.partitions["fetch"] = [
        dataclasses.replace(p, reason="<script>alert(1)</script>")
        if p.state is cov.State.FAILED
        else p
        for p in report.partitions["fetch"]
    ]
    page = cov.to_html(report)
    assert "<script>alert(1)" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_a_log_file_warning_shows_its_path_as_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The one warning about a log file that cannot be written shows a --log-dir with
    escapes in it escaped."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    target = tmp_path / "logs\x1b[2J\x07" / "run.jsonl"
    target.parent.mkdir()
    target.symlink_to("/dev/full")
    handler = log_file_handler(target)
    logger = logging.getLogger("backfill.test.full")
    logger.addHandler(handler)
    try:
        logger.warning("a line")
    finally:
        logger.removeHandler(handler)
        handler.close()
    err = capsys.readouterr().err
    assert_harmless(err)
    assert "logs\\x1b[2J\\x07" in err
