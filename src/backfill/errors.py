"""The exception hierarchy.

One root, :class:`BackfillError`. Two families live under it:

* errors the *engine* raises for bad input or a broken environment
  (:class:`ConfigError`, :class:`LedgerError`, :class:`SinkError`), each a one-sentence
  message that says what to fix;
* errors a *stage* raises to classify what went wrong with one partition
  (:class:`TransientError`, :class:`PermanentError`, :class:`FatalError`) or to say that
  nothing exists for it (:class:`EmptyPartition`).
"""

from __future__ import annotations

import errno
import os
from typing import TypeGuard


class BackfillError(Exception):
    """Root of every error raised by backfill."""


class ConfigError(BackfillError):
    """Bad input: a job file, an option, a date range. Exit code 2, nothing changed."""


class LedgerError(BackfillError):
    """The ledger (state database) cannot be opened, read or written."""


class SinkError(BackfillError):
    """The destination cannot be written."""


class StageError(BackfillError):
    """Base of the errors a stage raises to classify a failure.

    ``category`` is a short, stable, low-cardinality label (``timeout``, ``http_404``,
    ``INCOMPLETE_DATA``) used to group failures in ``backfill status``.
    """

    default_category = "error"

    def __init__(self, message: str, *, category: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.category = category or self.default_category


class TransientError(StageError):
    """Worth retrying: a network error, a timeout, a 429 or 5xx, a truncated body.

    ``retry_after`` (seconds) is a hint from the source, e.g. a ``Retry-After`` header;
    the retry policy waits at least that long before the next attempt.
    """

    default_category = "transient"

    def __init__(
        self, message: str, *, category: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, category=category)
        self.retry_after = retry_after


class PermanentError(StageError):
    """Retrying will not help this partition: fail it with a reason and go on."""

    default_category = "permanent"


class FatalError(StageError):
    """Nothing will work until someone acts (credentials refused, destination gone).

    The run stops cleanly: in-flight partitions are released, not failed.
    """

    default_category = "fatal"


class EmptyPartition(BackfillError):
    """Raised by a stage when nothing exists for the partition (e.g. no games that day).

    The partition is recorded as *empty* with the reason: done, not failed, not missing.
    """

    def __init__(self, reason: str = "no data") -> None:
        super().__init__(reason)
        self.reason = reason


def is_disk_full(exc: BaseException) -> TypeGuard[OSError]:
    """Whether ``exc`` is the operating system saying the disk (or a quota) is full."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_message(path: str | os.PathLike[str] | None) -> str:
    """The one sentence for a full disk: fatal, never worth retrying."""
    where = f" writing {os.fspath(path)}" if path is not None else ""
    return f"disk full{where}; free space and run again"
