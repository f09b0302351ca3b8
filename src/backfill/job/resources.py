"""What a job declares of its sources beside their limits: the options of each resource's
HTTP client, checked, and every secret the job declares (in those options and in the
URLs of its tables)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from backfill.errors import ConfigError
from backfill.job.stages import Stage
from backfill.secrets import Secret, url_secrets
from backfill.sources import CrossOrigin

__all__ = ["declared_secrets", "http_options"]


def http_options(
    owner: str,
    *,
    timeout: float | None,
    default_timeout: float,
    retries: int,
    headers: dict[str, str] | None,
    params: dict[str, str] | None,
    secrets: tuple[str, ...],
    base_url: str | None,
    allowed_hosts: Sequence[str],
    cross_origin: CrossOrigin,
    max_body: int,
    deadline: float | None,
    hedge: bool,
    start_rate: float | None,
) -> dict[str, Any]:
    """The options of the HTTP client of a resource (``owner`` names it in errors), each
    checked, its ``timeout`` the job's ``default_timeout`` when not given (see
    :meth:`backfill.job.Job.resource`)."""
    if retries < 0:
        raise ConfigError(f"{owner}: retries must not be negative")
    # Imported here: declaring a job must not load the HTTP client.
    from backfill.sources.origins import allowed_origins

    allowed_origins(base_url, allowed_hosts, owner=owner)
    if cross_origin not in ("strip", "refuse"):
        raise ConfigError(
            f"{owner}: cross_origin={cross_origin!r} is not a policy; use 'strip' (follow "
            "links to other origins without credentials) or 'refuse'"
        )
    if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 1:
        raise ConfigError(f"{owner}: max_body must be a positive number of bytes")
    for option, value in (("deadline", deadline), ("timeout", timeout)):
        if value is not None and not (isinstance(value, int | float) and 0 < value < math.inf):
            raise ConfigError(f"{owner}: {option} must be a positive number of seconds")
    if start_rate is not None and not (
        isinstance(start_rate, int | float) and 0 < start_rate < math.inf
    ):
        raise ConfigError(f"{owner}: start_rate must be a positive number of requests/s")
    return {
        "timeout": timeout if timeout is not None else default_timeout,
        "retries": retries,
        "headers": dict(headers or {}),
        "params": dict(params or {}),
        "secrets": tuple(secrets),
        "base_url": base_url,
        "allowed_hosts": tuple(allowed_hosts),
        "cross_origin": cross_origin,
        "max_body": max_body,
        "deadline": deadline,
        "hedge": hedge,
    }


def declared_secrets(
    options: Mapping[str, Mapping[str, Any]], stages: Iterable[Stage]
) -> tuple[Secret, ...]:
    """Every secret of a job, named by where it is declared: each header and param value
    of each resource's ``options`` (whatever its name), its ``secrets``, and the passwords
    in the URLs of the tables of its ``stages``."""
    found: list[Secret] = []
    for resource, declared in options.items():
        for kind in ("headers", "params"):
            for name, value in declared[kind].items():
                if value is not None:
                    found.append(Secret(f"{resource}.{kind}.{name}", str(value)))
        for index, value in enumerate(declared["secrets"]):
            found.append(Secret(f"{resource}.secrets.{index}", value))
    sinks = {id(s): s for stage in stages for s in stage.sinks}
    for sink in sinks.values():
        # Sinks that have a URL (PostgreSQL tables) may carry a password in it.
        url = getattr(sink, "url", None)
        if isinstance(url, str):
            found += url_secrets(url, f"sink.{sink.name}")
    return tuple(s for s in found if s.value)
