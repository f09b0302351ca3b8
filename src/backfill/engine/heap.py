"""What a run starts with, kept out of the cyclic collector's way while it runs."""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_runs = 0
# Whether the first of the runs now going froze the heap (not when the process had
# frozen it itself).
_froze = False


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Objects that exist when a run starts (modules, the job, the process's own state)
    outlive its requests; yet every full collection scans them all, on the event loop:
    13-18 ms in the demo, every couple of seconds at 100 requests a second, one of them
    on the run's first answers. ``gc.freeze()`` takes them out of the collector's view
    for the run, ``gc.unfreeze()`` gives them back after it (a cycle among them that
    became garbage meanwhile is collected then).

    Runs nested or side by side in one process: the first to start freezes, the last to
    end gives back. A heap the process froze itself (a server before it forks) is left
    as it is.
    """
    global _runs, _froze
    with _lock:
        _runs += 1
        if _runs == 1:
            _froze = gc.get_freeze_count() == 0
            if _froze:
                gc.freeze()
    try:
        yield
    finally:
        with _lock:
            _runs -= 1
            if _runs == 0 and _froze:
                _froze = False
                gc.unfreeze()
