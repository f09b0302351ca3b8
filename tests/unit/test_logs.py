"""Log lines: events become structured records bound to run, stage and partition."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from backfill import Context, Job, Partition, PermanentError, daily
from backfill.events import EventBus
from backfill.logs import EventLog, configure_logging, log_file_handler
from backfill.testing import run_job

SECRET = "s3cr3t-k3y-42"


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Restore the root logger and the backfill logger after a test configures them."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLogger("backfill").level)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    logging.getLogger("backfill").setLevel(saved[2])


def sample_job() -> Job:
    job = Job("logs", partitions=daily("2013-01-01", "2013-01-04"))

    @job.stage
    async def fetch(ctx: Context, partition: Partition) -> list[dict[str, str]]:
        ctx.log.info("fetched %s", partition.key)
        if partition.key == "2013-01-02":
            raise PermanentError(f"GET http://127.0.0.1/x?api_key={SECRET} answered 404")
        return [{"day": partition.key}]

    return job


def test_json_lines_parse_and_carry_run_stage_partition_and_worker(root_logging: None) -> None:
    """Every line is a JSON object; partition lines name run, stage, partition, worker."""
    stream = io.StringIO()
    configure_logging("json", level=logging.INFO, stream=stream)
    bus = EventBus()
    bus.subscribe(EventLog())
    result = run_job(sample_job(), bus=bus)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    about_partitions = [x for x in lines if x["event"].startswith(("partition", "fetched"))]
    assert len(about_partitions) == 8  # four "fetched" lines, four outcomes
    for line in about_partitions:
        assert line["run_id"] == result.run_id
        assert line["stage"] == "fetch"
        assert line["partition"].startswith("2013-01-0")
        assert line["worker"].endswith(result.run_id)
    assert {x["event"] for x in lines} >= {"run started", "run finished", "partition failed"}


def test_no_secret_reaches_a_log_line(root_logging: None) -> None:
    """A secret given to configure_logging, and any api_key=... pair, is masked."""
    stream = io.StringIO()
    configure_logging("console", level=logging.DEBUG, stream=stream, secrets=[SECRET])
    bus = EventBus()
    bus.subscribe(EventLog())
    run_job(sample_job(), bus=bus)
    logging.getLogger("backfill.test").warning("token is %s", SECRET)
    text = stream.getvalue()
    assert "partition failed" in text
    assert "api_key=***" in text
    assert SECRET not in text


def test_console_level_filters_and_unknown_format_is_refused(root_logging: None) -> None:
    """At WARNING the console shows no per-partition lines; a bad format is an error."""
    stream = io.StringIO()
    configure_logging("console", level=logging.WARNING, stream=stream)
    bus = EventBus()
    bus.subscribe(EventLog())
    run_job(sample_job(), bus=bus)
    assert "partition" not in stream.getvalue()
    with pytest.raises(ValueError, match="unknown log format"):
        configure_logging("xml", stream=stream)  # type: ignore[arg-type]


def test_plain_function_stages_log_with_the_run_context(root_logging: None) -> None:
    """A `def` stage runs in a thread, yet its lines still carry worker and partition."""
    stream = io.StringIO()
    configure_logging("json", level=logging.INFO, stream=stream)
    job = Job("sync", partitions=daily("2013-01-01", "2013-01-03"))

    @job.stage
    def fetch(ctx: Context, partition: Partition) -> None:
        logging.getLogger("mine").info("working")

    result = run_job(job)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    working = [x for x in lines if x["event"] == "working"]
    assert len(working) == 3
    assert {x["partition"] for x in working} == {"2013-01-01", "2013-01-02", "2013-01-03"}
    assert all(x["worker"].endswith(result.run_id) for x in working)


def test_a_log_file_that_cannot_be_written_degrades_with_one_warning(
    root_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A log file on a full disk (/dev/full answers ENOSPC): one warning on stderr naming
    it, no "--- Logging error ---", later records dropped quietly, and close() is quiet."""
    handler = log_file_handler(Path("/dev/full"))
    logger = logging.getLogger("backfill.test.full")
    logger.addHandler(handler)
    try:
        for n in range(5):
            logger.warning("line %d", n)
    finally:
        logger.removeHandler(handler)
        handler.close()
    err = capsys.readouterr().err
    assert "Logging error" not in err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "/dev/full" in lines[0]
    assert lines[0].startswith("warning: ")
