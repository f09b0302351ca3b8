"""The collaborators of the job model on their own: the stage graph over a plain mapping of
stages, the checked HTTP options of a resource and the secrets a job declares, and
importing the job package without the engine."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from backfill.errors import ConfigError
from backfill.job import Needs, Stage
from backfill.job.graph import dependencies, downstream, select_stages, upstream
from backfill.job.resources import declared_secrets, http_options
from backfill.partitions import daily, monthly, reference

DAYS = daily("2013-01-01", "2013-01-31")


def stage(name: str, *needs: Needs, partitions: Any = DAYS) -> Stage:
    """A stage that does nothing, needing ``needs``."""
    return Stage(name=name, fn=lambda ctx, p: None, partitions=partitions, needs=needs)


# a <- b <- c, and d alone; "m" a reference stage that b also needs.
STAGES = {
    "m": stage("m", partitions=reference()),
    "a": stage("a", partitions=monthly("2013-01-01", "2013-12-31")),
    "b": stage("b", Needs("a", lookback=2), Needs("m", whole=True)),
    "c": stage("c", Needs("b")),
    "d": stage("d"),
}


def options(**given: Any) -> dict[str, Any]:
    """http_options with defaults, overridden by ``given``."""
    defaults: dict[str, Any] = dict(
        timeout=None,
        default_timeout=30.0,
        retries=2,
        headers=None,
        params=None,
        secrets=(),
        base_url=None,
        allowed_hosts=(),
        cross_origin="strip",
        max_body=1000,
        deadline=None,
        hedge=True,
        start_rate=None,
    )
    return http_options("resource 'api'", **(defaults | given))


def test_upstream_and_downstream_follow_needs_through_other_stages() -> None:
    """c needs b directly and a and m through b, in declaration order; a is needed by b and c."""
    assert upstream(STAGES, "c") == ["m", "a", "b"]
    assert downstream(STAGES, "a") == ["b", "c"]
    assert upstream(STAGES, "d") == downstream(STAGES, "d") == []


def test_dependencies_carry_the_upstream_grain_and_its_longest_window() -> None:
    """A daily stage over a monthly one looks back up to 30 days before a day; a whole
    dependency names no dimensions."""
    by_stage = {d.stage: d for d in dependencies(STAGES, STAGES["b"])}
    assert (by_stage["a"].grain, by_stage["a"].span_days, by_stage["a"].lookback) == (
        "month",
        30,
        2,
    )
    assert by_stage["m"].whole and by_stage["m"].dims == ()


def test_select_stages_from_one_skipping_another() -> None:
    """--start-from a adds everything downstream of it; --skip drops a stage again."""
    chosen = select_stages("j", STAGES, None, start_from=["a"], skip=["b"])
    assert [s.name for s in chosen] == ["a", "c"]
    with pytest.raises(ConfigError, match="leave no stage of job 'j'"):
        select_stages("j", STAGES, ["d"], skip=["d"])


def test_http_options_default_the_timeout_and_check_each_option() -> None:
    """The job's timeout applies when the resource gives none; a bad option is named."""
    assert options()["timeout"] == 30.0
    assert options(timeout=5)["timeout"] == 5
    with pytest.raises(ConfigError, match="resource 'api': cross_origin='keep'"):
        options(cross_origin="keep")
    with pytest.raises(ConfigError, match="resource 'api': max_body"):
        options(max_body=True)


def test_declared_secrets_are_named_where_they_are_declared() -> None:
    """Header values and listed secrets are secrets, named by resource, kind and name."""
    found = declared_secrets(
        {"api": options(headers={"Authorization": "Bearer abcdef"}, secrets=("xyz123",))},
        STAGES.values(),
    )
    assert [(s.where, s.value) for s in found] == [
        ("api.headers.Authorization", "Bearer abcdef"),
        ("api.secrets.0", "xyz123"),
    ]


def test_importing_the_job_package_loads_no_engine() -> None:
    """The engine is imported only when a job is run (it imports the job model itself)."""
    code = "import sys, backfill.job; print(*sorted(sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert not [m for m in done.stdout.split() if m.startswith("backfill.engine")]
