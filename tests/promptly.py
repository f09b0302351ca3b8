"""Scheduling the side of a real-time test whose timing it measures ahead of the rest of a
loaded machine (tests in parallel, their subprocesses), where the system lets us (as
root; elsewhere nothing changes).

What such a test measures is what the engine does with time, not how much CPU a busy
machine leaves it: the engine starved of CPU is tested on virtual time (``LateClock``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

NICER = 10


def scheduled_first() -> None:
    """This process goes before busier ones from now on (a subprocess's ``preexec_fn``)."""
    with contextlib.suppress(OSError):
        os.nice(-NICER)


def _threads() -> list[int]:
    """This process's threads (Linux gives each its own priority), else the process."""
    tasks = Path("/proc/self/task")
    return [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else [0]


@contextlib.contextmanager
def promptly() -> Iterator[None]:
    """This process's threads (a server in a thread of the test's own included, and the
    threads started meanwhile) scheduled ahead of the machine's other work for the
    block's duration, then as before."""
    before: dict[int, int] = {}
    caller = os.getpriority(os.PRIO_PROCESS, 0)
    for thread in _threads():
        with contextlib.suppress(OSError):
            was = os.getpriority(os.PRIO_PROCESS, thread)
            os.setpriority(os.PRIO_PROCESS, thread, was - NICER)
            before[thread] = was
    try:
        yield
    finally:
        # Again until none is left ahead: a thread still ahead may start another (ahead
        # too) after a pass listed the threads.
        for _ in range(10):
            moved = False
            for thread in _threads():
                with contextlib.suppress(OSError):
                    was = before.get(thread, caller)
                    if os.getpriority(os.PRIO_PROCESS, thread) != was:
                        os.setpriority(os.PRIO_PROCESS, thread, was)
                        moved = True
            if not moved:
                break
