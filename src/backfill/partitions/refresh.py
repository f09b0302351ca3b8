"""How far back a keep-current run redoes a stage's finished partitions every run
(``refresh_last=``): a number of days (calendar days of the spec's zone), or a duration
(``"36h"``, ``"2d"``, a ``timedelta``) measured back from the end of the newest finished
partition."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from backfill.errors import ConfigError
from backfill.partitions.windows import Partition

__all__ = ["RefreshWindow", "parse_refresh"]

_UNITS = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1)}
_DURATION = re.compile(r"(\d+)\s*(m|min|h|hours?|d|days?)")


@dataclass(frozen=True, slots=True)
class RefreshWindow:
    """``days`` calendar days, or ``duration`` of time, back from the newest finished
    partition's end."""

    days: int | None = None
    duration: timedelta | None = None

    def __str__(self) -> str:
        if self.days is not None:
            return f"{self.days} day" + ("" if self.days == 1 else "s")
        assert self.duration is not None
        hours = self.duration / timedelta(hours=1)
        return f"{hours:g}h"

    def holds(self, partition: Partition, newest: Partition) -> bool:
        """Whether ``partition`` lies in the window that ends where ``newest`` ends."""
        if self.days is not None:
            first: date = newest.end - timedelta(days=self.days - 1)
            return partition.end >= first
        assert self.duration is not None
        bound: datetime = newest.ends - self.duration
        return partition.ends > bound


def parse_refresh(value: int | str | timedelta | None, *, what: str) -> RefreshWindow | None:
    """``3`` (days), ``"3d"``, ``"36h"``, ``"90m"`` or a ``timedelta`` as a window; None
    stays None."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{what}: refresh_last takes days (3) or a duration ('36h'), not a bool")
    if isinstance(value, int):
        if value < 1:
            raise ConfigError(f"{what}: refresh_last must be at least 1 day")
        return RefreshWindow(days=value)
    if isinstance(value, timedelta):
        if value <= timedelta(0):
            raise ConfigError(f"{what}: refresh_last must be a positive duration")
        return RefreshWindow(duration=value)
    m = _DURATION.fullmatch(str(value).strip().lower())
    if m is None or int(m[1]) < 1:
        raise ConfigError(
            f"{what}: refresh_last {value!r} is not a number of days nor a duration; "
            "write 3, '3d', '36h' or '90m'"
        )
    n, unit = int(m[1]), m[2][0]
    if unit == "d":
        return RefreshWindow(days=n)
    return RefreshWindow(duration=n * _UNITS[unit])
