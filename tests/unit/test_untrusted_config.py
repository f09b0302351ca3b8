"""What a job may declare about an untrusted source, and what it may not."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from backfill import Job, daily
from backfill.errors import ConfigError
from backfill.job import load_job
from backfill.ratelimit import Limit, Resource, parse_limit


def job() -> Job:
    return Job("j", partitions=daily("2013-01-01", "2013-01-02"))


@pytest.mark.parametrize(
    "rate",
    [
        float("nan"),
        float("inf"),
        -1.0,
        0.0,
        0.0000001,
        1e-320,
        "0.0000001/s",
        pytest.param("1" + "0" * 400 + "/s", id="10**400/s"),
        pytest.param("1/1" + "0" * 400 + "s", id="1/(10**400)s"),
        Limit(float("nan"), 1.0),
    ],
    ids=repr,
)
def test_a_rate_that_is_not_a_usable_number_is_refused(rate: Any) -> None:
    """NaN, infinity, zero, negative rates and rates rounding to one request in months
    are refused with one sentence naming the rate, numeric or written."""
    with pytest.raises(ConfigError, match=r"^rate ") as excinfo:
        parse_limit(rate)
    assert "\n" not in str(excinfo.value)
    with pytest.raises(ConfigError):
        job().resource("api", rate=rate)


@pytest.mark.parametrize("rate", [5, 0.5, "1/day", "10000/day", "30 per 5 min", 1 / 86400])
def test_slow_but_real_rates_are_accepted(rate: Any) -> None:
    """Rates down to one request a week are still rates."""
    assert parse_limit(rate).rate > 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"base_url": "api.example.com"}, "must start with http:// or https://"),
        ({"base_url": "https://u:p@api.example.com"}, "must not carry a user"),
        ({"base_url": "https://api.example.com/?key=1"}, "must not carry a user, a query"),
        ({"allowed_hosts": "cdn.example.com"}, "must be a list of hosts"),
        ({"allowed_hosts": ["cdn.example.com/path"]}, "must be a host, host:port"),
        ({"allowed_hosts": [""]}, "is not a host name"),
        ({"allowed_hosts": ["ftp://cdn.example.com"]}, "must start with http:// or https://"),
        ({"cross_origin": "allow"}, "is not a policy"),
        ({"max_wait": float("nan")}, "max_wait must be a positive number of seconds"),
        ({"max_wait": 0}, "max_wait must be a positive number of seconds"),
        ({"max_body": 0}, "max_body must be a positive number of bytes"),
        ({"max_body": 1.5}, "max_body must be a positive number of bytes"),
        ({"deadline": float("inf")}, "deadline must be a positive number of seconds"),
        ({"deadline": -1}, "deadline must be a positive number of seconds"),
        ({"start_rate": float("nan"), "adaptive": True}, "start_rate must be a positive"),
    ],
)
def test_bad_resource_options_are_one_sentence_naming_the_resource(
    options: dict[str, Any], message: str
) -> None:
    """Each malformed source option is refused at declaration, naming the resource."""
    options.setdefault("rate", "5/s")
    with pytest.raises(ConfigError) as excinfo:
        job().resource("api", **options)
    assert message in str(excinfo.value)
    assert "'api'" in str(excinfo.value)


def test_resource_options_reach_the_declaration() -> None:
    """Declared origins, policy and bounds are kept for the resource's HTTP client."""
    declared = job()
    resource = declared.resource(
        "api",
        rate="5/s",
        base_url="https://api.example.com",
        allowed_hosts=["cdn.example.com:8443"],
        cross_origin="refuse",
        max_wait=60,
        max_body=1024,
        deadline=5,
    )
    assert resource.max_wait == 60.0
    options = declared.http_options["api"]
    assert options["allowed_hosts"] == ("cdn.example.com:8443",)
    assert (options["cross_origin"], options["max_body"], options["deadline"]) == (
        "refuse",
        1024,
        5,
    )


def test_the_default_max_wait_is_an_hour() -> None:
    """A resource caps the waits a source asks for at 3600 s unless told otherwise."""
    assert Resource("api", rate="5/s").max_wait == 3600.0


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ("sys.exit(0)", "sys.exit(0)"),
        ("sys.exit('bye')", "sys.exit('bye')"),
        ("raise SystemExit(3)", "sys.exit(3)"),
    ],
)
def test_a_job_file_that_exits_at_import_is_a_config_error(
    tmp_path: Path, line: str, shown: str
) -> None:
    """A job file calling sys.exit while it is imported is one sentence naming the call
    and its line, not a silent exit of the command."""
    path = tmp_path / "job.py"
    path.write_text(f"import sys\n\n{line}\n")
    with pytest.raises(ConfigError) as excinfo:
        load_job(str(path))
    message = str(excinfo.value)
    assert f"exits while it is imported ({shown} at line 3)" in message
    assert "__main__" in message
    assert "\n" not in message


def test_a_job_file_raising_a_base_exception_is_a_config_error(tmp_path: Path) -> None:
    """A BaseException other than KeyboardInterrupt raised at import is a load failure with
    its line, not an escape from the command."""
    path = tmp_path / "job.py"
    path.write_text(
        textwrap.dedent(
            """
            class Odd(BaseException):
                pass

            raise Odd("not an Exception")
            """
        )
    )
    with pytest.raises(ConfigError, match=r"failed to load at line 5: Odd: not an Exception"):
        load_job(str(path))
