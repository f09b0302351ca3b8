"""ctx.log: the fields a stage passes in ``extra=`` reach the JSON log beside the run,
stage and partition it is bound to."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backfill import Context, Job, Partition, daily
from backfill.logs import configure_logging, log_file_handler
from backfill.testing import run_job


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Restore the root logger and the backfill logger after a test configures them."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLogger("backfill").level)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    logging.getLogger("backfill").setLevel(saved[2])


def lines_of(text: str, event: str) -> list[dict[str, Any]]:
    return [x for x in map(json.loads, text.splitlines()) if x["event"] == event]


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_extra_fields_reach_the_json_log(root_logging: None, kind: str) -> None:
    """`ctx.log.info(..., extra={...})` writes the caller's fields, and the line still
    carries run, stage and partition; in `async def` and plain `def` stages alike."""
    stream = io.StringIO()
    configure_logging("json", level=logging.INFO, stream=stream)
    job = Job("extras", partitions=daily("2013-01-01", "2013-01-02"))

    def body(ctx: Context, partition: Partition) -> None:
        ctx.log.info("page fetched", extra={"page": 3, "rows": 500, "url": "/v1/x"})

    if kind == "async":

        @job.stage
        async def fetch(ctx: Context, partition: Partition) -> None:
            body(ctx, partition)

    else:

        @job.stage
        def fetch(ctx: Context, partition: Partition) -> None:
            body(ctx, partition)

    result = run_job(job)
    found = lines_of(stream.getvalue(), "page fetched")
    assert len(found) == 2
    for line in found:
        assert (line["page"], line["rows"], line["url"]) == (3, 500, "/v1/x")
        assert line["run_id"] == result.run_id
        assert line["stage"] == "fetch"
    assert {line["partition"] for line in found} == {"2013-01-01", "2013-01-02"}


def test_extra_fields_never_overwrite_the_bound_ones(root_logging: None) -> None:
    """A caller's `stage`, `partition`, `run_id`, `event` or a LogRecord attribute such as
    `name` cannot replace what the line is about: the bound values stay, the caller's
    are kept as `extra_NAME`, and the call never raises."""
    stream = io.StringIO()
    configure_logging("json", level=logging.INFO, stream=stream)
    job = Job("extras", partitions=daily("2013-01-01", "2013-01-01"))

    @job.stage
    async def fetch(ctx: Context, partition: Partition) -> None:
        ctx.log.info(
            "clash",
            extra={
                "stage": "mine",
                "partition": "p",
                "run_id": "r",
                "event": "e",
                "name": "n",
                "ok": True,
            },
        )

    result = run_job(job)
    assert result.exit_code == 0
    (line,) = lines_of(stream.getvalue(), "clash")
    assert (line["stage"], line["partition"], line["run_id"]) == (
        "fetch",
        "2013-01-01",
        result.run_id,
    )
    assert (line["extra_stage"], line["extra_partition"], line["extra_run_id"]) == (
        "mine",
        "p",
        "r",
    )
    assert (line["extra_event"], line["extra_name"], line["ok"]) == ("e", "n", True)


def test_extra_fields_reach_the_run_s_log_file(root_logging: None, tmp_path: Path) -> None:
    """The per-run JSON log file holds the caller's fields too."""
    configure_logging("console", level=logging.WARNING, stream=io.StringIO())
    handler = log_file_handler(tmp_path / "run.jsonl")
    logging.getLogger().addHandler(handler)
    job = Job("extras", partitions=daily("2013-01-01", "2013-01-01"))

    @job.stage
    async def fetch(ctx: Context, partition: Partition) -> None:
        ctx.log.info("saved", extra={"table": "matches", "rows": 42})

    try:
        run_job(job)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    (line,) = lines_of((tmp_path / "run.jsonl").read_text(), "saved")
    assert (line["table"], line["rows"], line["partition"]) == ("matches", 42, "2013-01-01")
