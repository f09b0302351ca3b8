"""Requests counted per partition: what a stage's run statistics and its timeout say."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass


@dataclass(slots=True)
class RequestTally:
    """Requests made for one partition, how many the source refused as rate limited, and
    the last transient error it answered."""

    requests: int = 0
    rate_limited: int = 0
    # What the source last did wrong: a stage that times out says it.
    last_error: str | None = None


# The tally of the partition whose task is running (set by the runner).
partition_requests: contextvars.ContextVar[RequestTally | None] = contextvars.ContextVar(
    "backfill_partition_requests", default=None
)
