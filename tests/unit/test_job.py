"""Jobs and stages: declaration, validation, stage selection and loading job files."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import pytest

from backfill.errors import ConfigError
from backfill.job import Job, load_job
from backfill.partitions import daily, monthly
from backfill.retry import RetryPolicy

DAYS = daily("2013-01-01", "2013-01-03")


def one_line(excinfo: pytest.ExceptionInfo[ConfigError]) -> str:
    """The message of a ConfigError, checked to be a single non-empty line."""
    message = str(excinfo.value)
    assert message
    assert "\n" not in message
    return message


def write(tmp_path: Path, source: str, name: str = "job.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(source))
    return path


# --- declaring stages -------------------------------------------------------------------


def test_bare_stage_decorator_registers_with_defaults():
    """`@job.stage` registers the function under its name with the job's partitions."""
    job = Job("tennis", partitions=DAYS)

    @job.stage
    def fetch(ctx, partition):
        """Fetch one day of results.

        More detail that is not part of the description.
        """

    stage = job.stages["fetch"]
    assert fetch.__name__ == "fetch"  # the decorator returns the function itself
    assert stage.fn is fetch
    assert stage.partitions is DAYS
    assert (stage.concurrency, stage.timeout, stage.retry) == (4, None, RetryPolicy())
    assert stage.description == "Fetch one day of results."
    assert not stage.is_async


def test_stage_decorator_with_options():
    """Options given to `@job.stage(...)` override name, partitions and limits."""
    sink = object()
    job = Job("tennis", partitions=DAYS, sink=sink)  # type: ignore[arg-type]
    months = monthly("2013-01-01", "2013-12-31")
    policy = RetryPolicy(attempts=2)

    @job.stage(name="results.v2", partitions=months, concurrency=8, timeout=30, retry=policy)
    async def fetch(ctx, partition):
        return []

    stage = job.stages["results.v2"]
    assert list(job.stages) == ["results.v2"]
    assert stage.fn is fetch
    assert stage.partitions is months
    assert (stage.concurrency, stage.timeout, stage.retry) == (8, 30, policy)
    assert stage.sink is sink
    assert stage.is_async


def test_stage_sink_overrides_job_sink():
    """A stage's own sink wins over the job's."""
    job_sink, stage_sink = object(), object()
    job = Job("tennis", partitions=DAYS, sink=job_sink)  # type: ignore[arg-type]
    job.stage(name="own", sink=stage_sink)(lambda ctx, partition: [])  # type: ignore[arg-type]
    assert job.stages["own"].sink is stage_sink


def test_async_generator_stage_is_async():
    """An `async def` generator stage counts as async."""
    job = Job("tennis", partitions=DAYS)

    @job.stage
    async def rows(ctx, partition):
        yield {"a": 1}

    assert job.stages["rows"].is_async


def test_duplicate_stage_name_is_a_config_error():
    """Declaring two stages with one name is refused and the first stays registered."""
    job = Job("tennis", partitions=DAYS)

    @job.stage
    def fetch(ctx, partition):
        return []

    with pytest.raises(ConfigError) as excinfo:
        job.stage(name="fetch")(lambda ctx, partition: [])
    assert "twice" in one_line(excinfo)
    assert job.stages["fetch"].fn is fetch


@pytest.mark.parametrize("name", ["1fetch", "has space", "a/b", "fetch!"])
def test_bad_stage_names_are_config_errors(name: str):
    """Stage names that are not identifiers are refused, and nothing is registered."""
    job = Job("tennis", partitions=DAYS)
    with pytest.raises(ConfigError) as excinfo:
        job.stage(name=name)(lambda ctx, partition: [])
    assert repr(name) in one_line(excinfo)
    assert job.stages == {}


def test_lambda_without_name_is_a_config_error():
    """A lambda has no usable name, so registering it without `name=` is refused."""
    job = Job("tennis", partitions=DAYS)
    with pytest.raises(ConfigError) as excinfo:
        job.stage(lambda ctx, partition: [])
    assert "<lambda>" in one_line(excinfo)


@pytest.mark.parametrize("name", ["", "1job", "my job"])
def test_bad_job_names_are_config_errors(name: str):
    """Job names must start with a letter and use letters, digits, `_ . -`."""
    with pytest.raises(ConfigError) as excinfo:
        Job(name, partitions=DAYS)
    assert "job name" in one_line(excinfo)


def test_non_positive_lease_is_a_config_error():
    """A lease of zero seconds is refused."""
    with pytest.raises(ConfigError, match="lease_seconds"):
        Job("tennis", partitions=DAYS, lease_seconds=0)


@pytest.mark.parametrize("concurrency", [0, -1])
def test_concurrency_below_one_is_a_config_error(concurrency: int):
    """A stage concurrency below 1 is refused."""
    job = Job("tennis", partitions=DAYS)
    with pytest.raises(ConfigError) as excinfo:
        job.stage(name="fetch", concurrency=concurrency)(lambda ctx, partition: [])
    assert "concurrency must be at least 1" in one_line(excinfo)


@pytest.mark.parametrize("timeout", [0, -5.0])
def test_non_positive_timeout_is_a_config_error(timeout: float):
    """A stage timeout of zero or less is refused."""
    job = Job("tennis", partitions=DAYS)
    with pytest.raises(ConfigError) as excinfo:
        job.stage(name="fetch", timeout=timeout)(lambda ctx, partition: [])
    assert "timeout must be positive" in one_line(excinfo)


def test_stage_without_partitions_is_a_config_error():
    """A stage with no partitions on it or on the job is refused, saying where to add them."""
    job = Job("tennis")
    with pytest.raises(ConfigError) as excinfo:
        job.stage(name="fetch")(lambda ctx, partition: [])
    assert "partitions=" in one_line(excinfo)


# --- select_stages ----------------------------------------------------------------------


def three_stages() -> Job:
    job = Job("tennis", partitions=DAYS)
    for name in ("fetch", "parse", "load"):
        job.stage(name=name)(lambda ctx, partition: [])
    return job


@pytest.mark.parametrize("names", [None, [], ()])
def test_select_stages_without_names_is_every_stage_in_order(names):
    """No names selects every stage in declaration order."""
    assert [s.name for s in three_stages().select_stages(names)] == ["fetch", "parse", "load"]


def test_select_stages_keep_declaration_order_without_duplicates():
    """Named stages come back in declaration order (upstream before downstream), once."""
    selected = three_stages().select_stages(["load", "fetch", "load"])
    assert [s.name for s in selected] == ["fetch", "load"]


def test_select_stages_unknown_name_lists_known_stages():
    """An unknown stage name is refused, naming it and every stage the job has."""
    with pytest.raises(ConfigError) as excinfo:
        three_stages().select_stages(["fetch", "nope"])
    message = one_line(excinfo)
    assert "'nope'" in message
    assert "fetch, parse, load" in message


# --- load_job ---------------------------------------------------------------------------

GOOD = """\
from backfill import Job, daily

job = Job("tennis", partitions=daily("2013-01-01", "2013-01-03"))


@job.stage
def fetch(ctx, partition):
    return []
"""

TWO_JOBS = """\
from backfill import Job, daily

first = Job("first", partitions=daily("2013-01-01", "2013-01-03"))
second = Job("second", partitions=daily("2013-01-01", "2013-01-03"))
not_a_job = 42


@first.stage
def a(ctx, partition):
    return []


@second.stage
def b(ctx, partition):
    return []
"""


def test_load_job_from_a_file_path(tmp_path: Path):
    """A path to a job file loads the one Job it defines, with its stages."""
    job = load_job(str(write(tmp_path, GOOD)))
    assert job.name == "tennis"
    assert list(job.stages) == ["fetch"]


def test_load_job_with_path_and_name(tmp_path: Path):
    """`path.py:NAME` picks that Job among several."""
    path = write(tmp_path, TWO_JOBS)
    assert load_job(f"{path}:second").name == "second"
    assert load_job(f"{path}:first").name == "first"


def test_load_job_with_a_name_that_is_not_a_job(tmp_path: Path):
    """`path.py:NAME` naming something that is not a Job, or nothing, is refused."""
    path = write(tmp_path, TWO_JOBS)
    for attr in ("not_a_job", "missing"):
        with pytest.raises(ConfigError) as excinfo:
            load_job(f"{path}:{attr}")
        assert f"no backfill.Job named {attr!r}" in one_line(excinfo)


def test_load_job_same_job_under_two_names_is_not_ambiguous(tmp_path: Path):
    """One Job bound to two module names is still one job."""
    path = write(tmp_path, GOOD + "\nalias = job\n")
    assert load_job(str(path)).name == "tennis"


def test_load_job_can_import_helpers_beside_the_file(tmp_path: Path):
    """A job file may import a module next to it, and `sys.path` is restored afterwards."""
    write(tmp_path, "START = '2013-01-01'\n", name="bf_test_job_helpers.py")
    path = write(
        tmp_path,
        GOOD.replace('"2013-01-01"', "bf_test_job_helpers.START").replace(
            "from backfill import", "import bf_test_job_helpers\nfrom backfill import"
        ),
    )
    before = list(sys.path)
    try:
        job = load_job(str(path))
    finally:
        sys.modules.pop("bf_test_job_helpers", None)
    assert str(job.partitions.start) == "2013-01-01"  # type: ignore[union-attr]
    assert sys.path == before


def test_load_job_missing_file(tmp_path: Path):
    """A job file that does not exist is refused, naming the path."""
    missing = tmp_path / "nope.py"
    with pytest.raises(ConfigError) as excinfo:
        load_job(str(missing))
    message = one_line(excinfo)
    assert str(missing) in message
    assert "does not exist" in message


def test_load_job_not_a_python_file(tmp_path: Path):
    """A path that is not a `.py` file is refused."""
    path = write(tmp_path, GOOD, name="job.txt")
    with pytest.raises(ConfigError) as excinfo:
        load_job(str(path))
    assert "not a Python file" in one_line(excinfo)


def test_load_job_syntax_error_names_the_line(tmp_path: Path):
    """A syntax error is reported with its line number, on one line."""
    path = write(tmp_path, "from backfill import Job\n\njob = Job('x'\ndef broken(:\n")
    with pytest.raises(ConfigError) as excinfo:
        load_job(str(path))
    message = one_line(excinfo)
    assert "syntax error" in message
    assert re.search(r"at line [34]\b", message)


def test_load_job_exception_at_import_names_it_and_the_line(tmp_path: Path):
    """An exception while importing the file is reported with its type, text and line."""
    path = write(tmp_path, "import os\n\nraise ValueError('boom')\n")
    with pytest.raises(ConfigError) as excinfo:
        load_job(str(path))
    message = one_line(excinfo)
    assert "ValueError: boom" in message
    assert "at line 3" in message
    assert str(path) in message


def test_load_job_multiline_exception_still_gives_one_line(tmp_path: Path):
    """An exception whose text spans lines is still reported as a one-line ConfigError."""
    path = write(tmp_path, "raise RuntimeError('first line\\nsecond line')\n")
    with pytest.raises(ConfigError) as excinfo:
        load_job(str(path))
    assert "first line" in one_line(excinfo)


def test_load_job_config_error_in_file_names_the_file(tmp_path: Path):
    """A ConfigError raised by the job file itself is passed on, prefixed with the file."""
    path = write(tmp_path, GOOD.replace("2013-01-03", "2013-13-03"))
    with pytest.raises(ConfigError) as excinfo:
        load_job(str(path))
    message = one_line(excinfo)
    assert message.startswith(f"job file {path}: ")
    assert "YYYY-MM-DD" in message


def test_load_job_file_without_a_job(tmp_path: Path):
    """A file that defines no Job is refused, saying how to create one."""
    path = write(tmp_path, "from backfill import Job\n\nX = 1\n")
    with pytest.raises(ConfigError) as excinfo:
        load_job(str(path))
    assert "defines no backfill.Job" in one_line(excinfo)


def test_load_job_file_with_two_jobs_asks_to_pick_one(tmp_path: Path):
    """A file with several Jobs and no `:NAME` is refused, listing them."""
    path = write(tmp_path, TWO_JOBS)
    with pytest.raises(ConfigError) as excinfo:
        load_job(str(path))
    message = one_line(excinfo)
    assert "several jobs (first, second)" in message
    assert "PATH:NAME" in message


def test_load_job_without_stages(tmp_path: Path):
    """A Job with no stages is refused, saying to declare one."""
    path = write(tmp_path, "from backfill import Job, daily\n\njob = Job('empty')\n")
    with pytest.raises(ConfigError) as excinfo:
        load_job(str(path))
    message = one_line(excinfo)
    assert "'empty' has no stages" in message
    assert "@job.stage" in message


def test_load_job_unknown_module():
    """A `module:ATTR` target whose module cannot be imported is refused."""
    with pytest.raises(ConfigError) as excinfo:
        load_job("bf_no_such_module_xyz:job")
    assert "cannot import job module 'bf_no_such_module_xyz'" in one_line(excinfo)
