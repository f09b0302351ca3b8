"""The ``backfill`` command (and ``python -m backfill``), signals handled from the start.

SIGINT and SIGTERM are caught before anything heavy is imported (the package imports its
names lazily): outside a run, an interrupt at any moment ends the command with one line
on stderr and exit code 130, never a traceback. Nothing is lost: the ledger survives even
``kill -9``, and what a run did is on record. During a run the runner takes both signals
over: the first stops it gracefully, the second at once (see ``backfill.engine.entry``).
"""

import signal
import sys

__all__ = ["INTERRUPTED_LINE", "Interrupted", "main"]

INTERRUPTED_LINE = "interrupted; nothing was lost: run the same command again to resume"
_EXIT_INTERRUPTED = 130
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """SIGINT or SIGTERM outside a run. Not an Exception, and not a KeyboardInterrupt
    (which click would turn into "Aborted!" and exit 1), so nothing on the way out
    swallows it."""


def _interrupt(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def _interrupted_by(exc: BaseException) -> bool:
    """Whether ``exc`` is an interrupt, or was raised because of one: a signal that lands
    while Python builds a class during an import comes out wrapped ("Error calling
    __set_name__ ...", a RuntimeError whose cause is the interrupt)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, Interrupted):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _exit_interrupted() -> None:
    # A second signal while the line is written must not become a traceback.
    for signum in _SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    print(INTERRUPTED_LINE, file=sys.stderr, flush=True)
    raise SystemExit(_EXIT_INTERRUPTED) from None


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    for signum in _SIGNALS:
        signal.signal(signum, _interrupt)
    try:
        from backfill.cli import main as cli_main

        cli_main(argv)
    except Interrupted:
        _exit_interrupted()
    except BaseException as exc:
        if isinstance(exc, SystemExit) or not _interrupted_by(exc):
            raise
        _exit_interrupted()


if __name__ == "__main__":  # pragma: no cover
    main()
