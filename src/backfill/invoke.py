"""How stage functions are called: the calling conventions, and the pools they run in.

:class:`Invoker` calls a stage function the way its kind asks (``async def``, async
generator, plain ``def`` on a thread, or in a worker process), within its timeout.

Threads for plain ``def`` stages, with timeouts that a healthy call never pays for.

Python cannot stop a thread: a call that outlives its timeout runs on until it returns.
A thread pool that keeps such a call's thread makes every later call queue behind it,
and a timeout started at submission then expires before the call has even begun. Here:

* a call's timeout counts from the moment it starts on its thread;
* a call whose caller gave up (timed out or cancelled) is *abandoned*: its result is
  discarded when it returns, and a new thread takes its place at once, so the next call
  starts without waiting for it;
* at most ``max_abandoned`` abandoned calls are replaced at a time. Beyond that bound
  (said once, in a warning) an abandoned call keeps its thread until it returns, and a
  call waiting for a thread while such calls hold them waits at most its own timeout:
  a source that hangs every call fails its partitions; it never stalls the run.

Threads are daemons, so a process whose work is over exits without waiting for calls
it gave up on.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import importlib
import inspect
import itertools
import logging
import multiprocessing
import queue
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Generic, TypeVar

from backfill.clock import Deadline, current_deadline
from backfill.context import Context
from backfill.job import Stage, load_job_module

__all__ = ["Invoker", "StageThreads"]

T = TypeVar("T")

_log = logging.getLogger("backfill.invoke")


class _Call(Generic[T]):
    """One call's way through the threads; its flags are guarded by the owner's lock."""

    __slots__ = (
        "abandoned",
        "args",
        "began",
        "context",
        "finished",
        "fn",
        "loop",
        "replaced",
        "result",
        "withdrawn",
    )

    def __init__(
        self, fn: Callable[..., T], args: tuple[Any, ...], loop: asyncio.AbstractEventLoop
    ) -> None:
        self.fn = fn
        self.args = args
        self.loop = loop
        # The caller's context: log lines of the call carry its run, stage and partition.
        self.context = contextvars.copy_context()
        self.result: asyncio.Future[T] = loop.create_future()
        self.withdrawn = False  # the caller gave up before a thread took the call
        self.began: float | None = None  # when a thread took it (time.monotonic())
        self.finished = False
        self.abandoned = False  # the caller gave up while the call ran
        self.replaced = False  # ... and a new thread took its thread's place


class StageThreads:
    """Runs plain functions on ``threads`` daemon threads for asyncio callers.

    Example::

        threads = StageThreads(4)
        rows = await threads.call(fetch_day, ctx, time_limit=30)  # TimeoutError after 30 s
        threads.shutdown()
    """

    def __init__(
        self, threads: int, *, max_abandoned: int | None = None, name: str = "backfill-stage"
    ) -> None:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        self.size = threads
        self.max_abandoned = max(16, 2 * threads) if max_abandoned is None else max_abandoned
        self._name = name
        self._numbers = itertools.count(1)
        self._queue: queue.SimpleQueue[_Call[Any] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._warned = False
        # Abandoned calls still running: those whose thread was replaced, and those
        # (beyond the bound) that still hold a thread the others need.
        self._replaced = 0
        self._holding = 0
        for _ in range(threads):
            self._start_thread()

    @property
    def abandoned(self) -> int:
        """Calls given up on that have not returned yet."""
        with self._lock:
            return self._replaced + self._holding

    # A time limit, not the caller's asyncio.timeout(): it must start when the call does,
    # which only this class knows.
    async def call(self, fn: Callable[..., T], /, *args: Any, time_limit: float | None) -> T:
        """``fn(*args)`` on a thread; TimeoutError once it has run ``time_limit`` seconds."""
        if self._closed:
            raise RuntimeError("these stage threads are shut down")
        loop = asyncio.get_running_loop()
        job: _Call[T] = _Call(fn, args, loop)
        self._queue.put(job)
        try:
            if time_limit is None:
                return await job.result
            return await self._within(job, time_limit)
        except BaseException:
            self._give_up(job)
            raise

    async def _within(self, job: _Call[T], time_limit: float) -> T:
        """``job``'s result, or TimeoutError once it has run ``time_limit`` seconds on its
        thread. The thread notes when it took the call, and the wait is lengthened by
        the time the call waited for it: no second wake-up of the loop per call.

        Threads busy with live calls free up or are replaced, so the wait for one is not
        bounded; while abandoned calls beyond the bound hold threads, it is bounded by
        the call's time limit."""
        wait = time_limit
        while True:
            done, _ = await asyncio.wait({job.result}, timeout=wait)
            if done:
                return job.result.result()
            with self._lock:
                began = job.began
                if began is None and self._holding:
                    raise TimeoutError(
                        f"no thread became free within {time_limit:g} s: {self._holding} "
                        "call(s) that timed out still hold theirs"
                    )
            if began is None:
                wait = time_limit
                continue
            wait = began + time_limit - time.monotonic()
            if wait <= 0:
                raise TimeoutError(f"the call ran longer than {time_limit:g} s")

    def _give_up(self, job: _Call[Any]) -> None:
        """The caller stopped waiting: withdraw a call not started yet; abandon one that
        runs, replacing its thread while the bound allows."""
        # Nobody awaits the result any more: one settled later is dropped, not reported
        # as an exception never retrieved.
        job.result.cancel()
        warn = False
        with self._lock:
            if job.began is None:
                job.withdrawn = True
            if job.finished or job.withdrawn or job.abandoned:
                return
            job.abandoned = True
            if self._closed:
                return
            if self._replaced < self.max_abandoned:
                self._replaced += 1
                job.replaced = True
            else:
                self._holding += 1
                warn = not self._warned
                self._warned = True
        if job.replaced:
            self._start_thread()
        elif warn:
            _log.warning(
                "%d calls of plain def stages that timed out are still running on their "
                "threads; until they return, a call that times out keeps its thread and "
                "later partitions wait for one (at most their timeout)",
                self.max_abandoned,
            )

    def shutdown(self) -> None:
        """Stop the threads once their current calls return; calls not started never
        run. Nothing waits for them."""
        with self._lock:
            self._closed = True
        for _ in range(self.size + self.max_abandoned):
            self._queue.put(None)

    def _start_thread(self) -> None:
        thread = threading.Thread(
            target=self._serve, name=f"{self._name}-{next(self._numbers)}", daemon=True
        )
        thread.start()

    def _serve(self) -> None:
        while True:
            job = self._queue.get()
            if job is None or not self._run(job):
                return

    def _run(self, job: _Call[Any]) -> bool:
        """Run one call (or refuse it, once shut down); False when this thread must end:
        its place was taken while it ran a call given up on."""
        with self._lock:
            if job.withdrawn:
                return True
            if self._closed:
                _deliver(job, None, RuntimeError("these stage threads are shut down"))
                return True
            job.began = time.monotonic()
        result: Any = None
        error: BaseException | None = None
        try:
            result = job.context.run(job.fn, *job.args)
        except BaseException as exc:
            error = exc
        with self._lock:
            job.finished = True
            if job.abandoned and job.replaced:
                self._replaced -= 1
            elif job.abandoned:
                self._holding -= 1
        if not job.abandoned:
            _deliver(job, result, error)
            return True
        job.context.run(_log.debug, "a call given up on returned; its result is discarded")
        return not job.replaced and not self._closed


def _deliver(job: _Call[Any], result: Any, error: BaseException | None) -> None:
    with contextlib.suppress(RuntimeError):  # the caller's loop is closed
        job.loop.call_soon_threadsafe(_settle, job.result, result, error)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Invoker:
    """Calls the stage functions of one run, each by its kind, in the pools it needs.

    ``concurrency`` gives each stage's number of partitions at once: as many threads
    (plain ``def`` stages) or processes (``executor="process"``) are started.
    """

    def __init__(self, stages: list[Stage], concurrency: Callable[[Stage], int]) -> None:
        # Decided once per stage, not per partition (inspect's checks are not free).
        self._kinds = {s.name: _kind(s.fn) for s in stages}
        sync_threads = sum(
            concurrency(s) for s in stages if not s.is_async and s.executor == "thread"
        )
        self._threads = StageThreads(sync_threads) if sync_threads else None
        processes = [s for s in stages if s.executor == "process"]
        self._processes = (
            _process_pool(sum(concurrency(s) for s in processes), processes) if processes else None
        )

    async def call(self, stage: Stage, ctx: Context) -> Any:
        """What the stage function returns (or yields, collected) for ``ctx``'s partition."""
        kind = self._kinds[stage.name]
        if kind == "async" and stage.timeout is None:
            # The common case, without a wrapper coroutine.
            return await stage.fn(ctx, ctx.partition)
        return await self._call_slow(stage, ctx, kind)

    async def _call_slow(self, stage: Stage, ctx: Context, kind: str) -> Any:
        fn = stage.fn
        if kind == "asyncgen":

            async def collect() -> list[object]:
                gen: AsyncIterator[object] = fn(ctx, ctx.partition)
                return [item async for item in gen]

            coro: Any = collect()
        elif kind == "async":

            async def call_async() -> Any:
                return await fn(ctx, ctx.partition)

            coro = call_async()
        elif stage.executor == "process":
            loop = asyncio.get_running_loop()
            assert self._processes is not None
            coro = loop.run_in_executor(self._processes, _call_in_process, fn, ctx.for_process())
        else:
            assert self._threads is not None
            # Timed from the call's start on its thread; a call that times out gives its
            # thread up, so the partitions after it never pay for it.
            return await self._threads.call(_call_sync, fn, ctx, time_limit=stage.timeout)
        if stage.timeout is not None:
            async with asyncio.timeout(stage.timeout) as timeout:
                # Waits for a resource's turns stop this clock (see Deadline).
                current_deadline.set(Deadline(timeout))
                try:
                    return await coro
                finally:
                    current_deadline.set(None)
        return await coro

    def shutdown(self) -> None:
        if self._threads is not None:
            # Threads of sync stages cannot be cancelled; nothing waits for stragglers.
            self._threads.shutdown()
        if self._processes is not None:
            self._processes.shutdown(wait=False, cancel_futures=True)


def _kind(fn: Any) -> str:
    if inspect.isasyncgenfunction(fn):
        return "asyncgen"
    if inspect.iscoroutinefunction(fn):
        return "async"
    return "sync"


def _call_sync(fn: Any, ctx: Context) -> Any:
    result = fn(ctx, ctx.partition)
    if inspect.isgenerator(result):
        return list(result)
    return result


def _call_in_process(fn: Any, ctx: Any) -> Any:
    """Run a stage function in a worker process; what it returns travels back pickled."""
    result = fn(ctx, ctx.partition)
    if inspect.isgenerator(result) or (
        result is not None and not isinstance(result, dict | list | tuple) and _iterable(result)
    ):
        return list(result)
    return result


def _iterable(value: Any) -> bool:
    return isinstance(value, Iterable) and not isinstance(value, str | bytes)


def _process_pool(workers: int, stages: list[Stage]) -> ProcessPoolExecutor:
    """Worker processes for CPU-bound stages, started fresh (``spawn``: forking a process
    that runs threads and an event loop is unsafe), each loading the job's module."""
    modules = {}
    for stage in stages:
        name = getattr(stage.fn, "__module__", None)
        module = sys.modules.get(name) if name else None
        if name and name != "__main__":
            modules[name] = getattr(module, "__file__", None)
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_process,
        initargs=(modules,),
    )


def _init_process(modules: dict[str, str | None]) -> None:
    """In a fresh worker process: make each stage function's module importable under the
    name it was pickled with (a job file is loaded the way ``load_job`` loaded it)."""
    for name, path in modules.items():
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except ImportError:
            if path is None:
                raise
            load_job_module(Path(path))
