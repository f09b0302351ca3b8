"""Log lines from the event stream, and the logging set-up the command line uses.

The library only *emits*: :class:`EventLog` is an event subscriber that writes one
standard-library log record per event (loggers under ``backfill``), with the event's
fields as structured extras; the runner binds ``run_id``, ``job``, ``worker``, ``stage``
and ``partition`` in structlog's contextvars. Nothing here runs unless asked:
:func:`configure_logging` is for applications (the ``backfill`` CLI calls it) and turns
every record, the library's and the stage functions' alike, into structlog output.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterable, Mapping, MutableMapping
from pathlib import Path
from typing import Any, Literal, TextIO

import structlog

from backfill.errors import is_disk_full
from backfill.events import (
    Event,
    PartitionFinished,
    PartitionRetrying,
    PartitionsDiscovered,
    PartitionStarted,
    ResourceChanged,
    RunFinished,
    RunStarted,
    RunStopping,
    Tick,
    WorkerJoined,
    WorkerLost,
)
from backfill.ledger import Status
from backfill.secrets import Masker
from backfill.textsafe import visible

__all__ = ["EventLog", "LogFormat", "configure_logging", "log_file_handler"]

LogFormat = Literal["console", "json"]

_log = logging.getLogger("backfill.events")
# Compared once per partition (a global is cheaper than the enum's class).
_DONE = Status.DONE

# The events EventLog writes lines for (or sums up).
_LOGGED = (
    PartitionFinished,
    PartitionStarted,
    Tick,
    PartitionRetrying,
    RunStarted,
    RunFinished,
    RunStopping,
    ResourceChanged,
    WorkerJoined,
    WorkerLost,
    PartitionsDiscovered,
)


class _DoneTally:
    """Partitions of one stage done since the last ``partitions done`` line."""

    __slots__ = ("count", "duration", "first", "last", "records", "requests")

    def __init__(self, key: str) -> None:
        self.count = 0
        self.records = 0
        self.requests = 0
        self.duration = 0.0
        self.first = key
        self.last = key

    def add(self, event: PartitionFinished) -> None:
        self.count += 1
        self.records += event.records
        self.requests += event.requests
        self.duration += event.duration
        self.last = event.key


class EventLog:
    """An event subscriber writing one log record per event.

    Partition starts are DEBUG and outcomes INFO, so a file at INFO holds one line per
    partition; a console at WARNING stays quiet (the progress display, ``backfill status``
    and the dashboard already report failures and pauses) but for lost workers.

    ``each_partition=False`` (what ``backfill run`` does without ``-v``): a partition done
    is counted, not written; a ``partitions done`` line per stage sums them up every
    second (on the run's ticks) and before the run's end. Every other outcome (failed,
    empty) and every retry keeps its own line, and starts are not logged at all. At a
    few tens of thousands of partitions a second, formatting a line each was most of a
    run's time.
    """

    def __init__(self, *, each_partition: bool = True) -> None:
        self.each_partition = each_partition
        self._done: dict[str, _DoneTally] = {}
        # What it reads (see EventBus): partition starts only when it writes them.
        self.events: tuple[type, ...] = tuple(
            kind for kind in _LOGGED if each_partition or kind is not PartitionStarted
        )

    def __call__(self, event: Event) -> None:
        if isinstance(event, PartitionFinished):
            if not self.each_partition and event.status is _DONE:
                tally = self._done.get(event.stage)
                if tally is None:
                    tally = self._done[event.stage] = _DoneTally(event.key)
                tally.add(event)
                return
            level = logging.DEBUG if event.status is Status.PENDING else logging.INFO
            fields: dict[str, Any] = {
                "status": event.status.value,
                "records": event.records,
                "duration": round(event.duration, 4),
                "attempts": event.attempts,
                "requests": event.requests,
                "rate_limited": event.rate_limited,
            }
            if event.category is not None:
                fields["category"] = event.category
                fields["error"] = event.message
            self._emit(level, f"partition {event.status.value}", event.stage, event.key, fields)
        elif isinstance(event, PartitionStarted):
            if self.each_partition:
                self._emit(logging.DEBUG, "partition started", event.stage, event.key, {})
        elif isinstance(event, Tick):
            self.write_done()
        elif isinstance(event, PartitionRetrying):
            fields = {
                "attempt": event.attempt,
                "delay": round(event.delay, 3),
                "category": event.category,
                "error": event.message,
            }
            self._emit(logging.INFO, "partition retrying", event.stage, event.key, fields)
        elif isinstance(event, RunStarted):
            self._emit(logging.INFO, "run started", None, None, {})
        elif isinstance(event, RunFinished):
            self.write_done()
            fields = {
                "status": event.status,
                "exit_code": event.exit_code,
                "elapsed": round(event.elapsed, 3),
            }
            if event.message:
                fields["error"] = event.message
            self._emit(logging.INFO, "run finished", None, None, fields)
        elif isinstance(event, RunStopping):
            self.write_done()
            fields = {"reason": event.reason, "immediate": event.immediate}
            self._emit(logging.INFO, "run stopping", None, None, fields)
        elif isinstance(event, ResourceChanged):
            fields = {"resource": event.resource, "what": event.what, "seconds": event.seconds}
            self._emit(logging.INFO, "resource changed", None, None, fields)
        elif isinstance(event, WorkerJoined):
            fields = {"host": event.host, "pid": event.pid}
            self._emit(logging.INFO, "worker joined", None, None, fields)
        elif isinstance(event, WorkerLost):
            fields = {"lost_worker": event.worker_id, "released": event.released}
            self._emit(logging.WARNING, "worker lost", None, None, fields)
        elif isinstance(event, PartitionsDiscovered):
            fields = {"found_for": event.stage, "added": event.added}
            self._emit(logging.INFO, "partitions discovered", event.source, event.key, fields)

    def write_done(self) -> None:
        """One ``partitions done`` line per stage for the partitions counted since the
        last one: how many, their records, requests and summed duration, and the first
        and last keys among them."""
        tallies, self._done = self._done, {}
        for stage, tally in tallies.items():
            fields: dict[str, Any] = {
                "count": tally.count,
                "records": tally.records,
                "requests": tally.requests,
                "duration": round(tally.duration, 4),
                "first": tally.first,
                "last": tally.last,
                # Written where no partition's context is bound (a tick, the run's end),
                # but the field says it outright: these lines are about many.
                "partition": None,
            }
            self._emit(logging.INFO, "partitions done", stage, None, fields)

    @staticmethod
    def _emit(
        level: int, message: str, stage: str | None, key: str | None, fields: dict[str, Any]
    ) -> None:
        if not _log.isEnabledFor(level):
            return
        # The runner's contextvars already say which stage and partition; an event may be
        # emitted outside that partition's task (e.g. a release at shutdown), so say it.
        if stage is not None:
            fields["stage"] = stage
        if key is not None:
            fields["partition"] = key
        _log.log(level, message, extra=fields)


# -- set-up, for applications ------------------------------------------------------------


_Secrets = Iterable[str] | Masker


def _masker(secrets: _Secrets) -> Masker:
    return secrets if isinstance(secrets, Masker) else Masker(secrets)


def _redactor(masker: Masker) -> structlog.types.Processor:
    """A processor masking the declared secrets, and whatever looks secret, in every
    value of the line (the formatted traceback included)."""

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            return masker.mask(value)
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, Mapping):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        # Bytes and objects are rendered by their repr: mask that (e.g. a raw header).
        return masker.mask(repr(value))

    def processor(
        logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for name, value in event_dict.items():
            if name != "_record" and name != "_from_structlog":
                event_dict[name] = clean(value)
        return event_dict

    return processor


def _formatter(fmt: LogFormat, secrets: _Secrets, colors: bool) -> logging.Formatter:
    renderer: structlog.types.Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = _shown_as_text(
            structlog.dev.ConsoleRenderer(
                colors=colors, exception_formatter=structlog.dev.plain_traceback
            )
        )
    pre_chain: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.ExtraAdder(),
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=pre_chain,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _redactor(_masker(secrets)),
            renderer,
        ],
    )


# The console renderer prints these as they are, the exceptions over several lines; the
# other fields' values it shows through repr() when they hold a space or a quote.
_COLUMNS = frozenset({"event", "timestamp", "level", "logger", "logger_name"})
_MULTILINE = frozenset({"exception", "stack"})


class _Quoted:
    """A field's text, always shown through repr(), which escapes every character that
    is not printable."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return repr(self.text)


def _shown_as_text(renderer: structlog.types.Processor) -> structlog.types.Processor:
    """``renderer`` for a terminal: control characters in keys and values (a source's
    error, a partition key) are shown as escapes, so a line cannot clear the screen or
    retitle the window. JSON lines need none of this: JSON escapes them itself."""

    def shown(key: str, value: Any) -> Any:
        if not isinstance(value, str) or value.isprintable():
            return value
        if key in _COLUMNS or key in _MULTILINE:
            return visible(value, multiline=key in _MULTILINE)
        return _Quoted(value)

    def render(
        logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> str | bytes | bytearray | Mapping[str, Any] | tuple[Any, ...]:
        return renderer(logger, method, {visible(k): shown(k, v) for k, v in event_dict.items()})

    return render


class _LogFile(logging.FileHandler):
    """A file handler that a full disk (or any failed write) cannot break: the first
    failure prints one warning on stderr and the file is written no more. The run goes
    on; logging's "--- Logging error ---" tracebacks, one per record, never appear, and
    closing never raises."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, encoding="utf-8")
        self._broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self._broken:
            super().emit(record)

    def flush(self) -> None:
        if self._broken:
            return
        try:
            super().flush()
        except OSError as exc:
            self._give_up(exc)

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            self._give_up(error)
        else:
            super().handleError(record)

    def close(self) -> None:
        try:
            super().close()
        except OSError as exc:
            self._give_up(exc)

    def _give_up(self, error: OSError) -> None:
        if self._broken:
            return
        self._broken = True
        reason = "the disk is full" if is_disk_full(error) else error.strerror or str(error)
        print(
            f"warning: cannot write the log file {visible(self.baseFilename)} ({reason}); "
            "the run goes on without it",
            file=sys.stderr,
            flush=True,
        )
        stream, self.stream = self.stream, None
        if stream is not None:
            # Its buffer cannot be written either; closing still frees the descriptor.
            with contextlib.suppress(OSError):
                stream.close()


def log_file_handler(
    path: Path, *, level: int = logging.INFO, secrets: _Secrets = ()
) -> logging.Handler:
    """A handler writing JSON lines to ``path`` (its directory is created). A write that
    fails (e.g. a full disk) warns once on stderr and stops the file, never the run.
    ``secrets`` (values, or a :class:`~backfill.secrets.Masker`) are masked in every line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = _LogFile(path)
    handler.setLevel(level)
    handler.setFormatter(_formatter("json", secrets, colors=False))
    return handler


def configure_logging(
    fmt: LogFormat = "console",
    *,
    level: int = logging.WARNING,
    stream: TextIO | None = None,
    secrets: _Secrets = (),
) -> logging.Handler:
    """Route every log record through structlog to ``stream`` (stderr by default):
    human-readable with ``fmt="console"``, one JSON object per line with ``"json"``.

    ``secrets`` (values, or a :class:`~backfill.secrets.Masker`) are masked in every line,
    as is whatever looks secret. Replaces the root logger's handlers and returns the new
    one. The ``backfill``
    loggers pass everything down to DEBUG, so handlers (e.g. a per-run file from
    :func:`log_file_handler`) choose their own level.
    """
    if fmt not in ("console", "json"):
        raise ValueError(f"unknown log format {fmt!r}; use console or json")
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setLevel(level)
    handler.setFormatter(_formatter(fmt, secrets, colors=stream.isatty()))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("backfill").setLevel(logging.DEBUG)
    return handler
