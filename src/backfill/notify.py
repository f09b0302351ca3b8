"""Notifications through Apprise (``backfill[notify]``): one dependency that reaches
Slack, Discord, Teams, e-mail, ntfy, plain JSON webhooks and many more by URL.

A :class:`Notifier` is told of a run's end (its summary; when it failed, the top failure
categories), of a circuit that opened and a quota used up (as a subscriber of the event
stream), and of gaps a keep-current run left. What it sends is masked by the job's
masker (the URLs' own tokens are secrets of the job). Each kind of notice is sent at most
once per ``min_interval`` seconds, so a flapping source does not flood a channel; the
ones held back are counted in the next. With ``memory`` (a small JSON file beside the
run logs) the interval holds across runs too: a job started every few minutes by cron
against a source that is down sends one notice per interval, not one per run. Sending
happens on a thread of its own: a notifier that fails is logged, one that hangs is given
up after ``timeout`` seconds, and neither ever changes the run or its exit code.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backfill._optional import require_apprise
from backfill.engine.result import RunResult, RunStatus
from backfill.errors import ConfigError
from backfill.events import Event, ResourceChanged
from backfill.ledger import FailureGroup
from backfill.secrets import Masker

__all__ = ["DEFAULT_MIN_INTERVAL", "DEFAULT_TIMEOUT", "Notice", "Notifier", "run_notice"]

log = logging.getLogger("backfill.notify")

DEFAULT_MIN_INTERVAL = 300.0
DEFAULT_TIMEOUT = 20.0


@dataclass(frozen=True, slots=True)
class Notice:
    """One message: ``kind`` (``run_finished``, ``run_failed``, ``circuit_open``,
    ``quota``, ``gaps``) decides its flood interval; ``failure`` its look."""

    kind: str
    title: str
    body: str
    failure: bool = False


def run_notice(job: str, result: RunResult, failures: Sequence[FailureGroup] = ()) -> Notice:
    """The notice of a run's end: its summary, and its top failure categories."""
    counts = result.counts.values()
    done = sum(c.done for c in counts)
    empty = sum(c.empty for c in counts)
    failed = sum(c.failed for c in counts)
    left = sum(c.pending + c.running for c in counts)
    lines = [
        f"run {result.run_id}: {result.status.value}, exit code {result.exit_code}",
        f"{result.executed:,} partition(s) run, {result.records:,} records, "
        f"{result.retries:,} retries in {result.elapsed:.0f}s",
        f"selection: {done:,} done, {empty:,} empty, {failed:,} failed, {left:,} left",
    ]
    if result.message:
        lines.append(result.message)
    top = sorted(failures, key=lambda g: -g.count)[:3]
    if top:
        lines.append("top failure categories:")
        lines += [
            f"  {g.stage} {g.category}: {g.count:,} (e.g. {g.example_key}: {g.example_message})"
            for g in top
        ]
    ok = result.status is RunStatus.DONE
    return Notice(
        "run_finished" if ok else "run_failed",
        f"backfill {job}: run {result.status.value}",
        "\n".join(lines),
        failure=not ok,
    )


class Notifier:
    """Sends notices to Apprise URLs, at most one of a kind per ``min_interval``.

    Example::

        notifier = Notifier(["ntfy://backfill-alerts"], job="results", masker=job.masker())
        notifier.post(Notice("gaps", "backfill results: gaps", "3 days missing"))
        notifier.close()
    """

    # The only events it reads (see EventBus).
    events = (ResourceChanged,)

    def __init__(
        self,
        urls: Sequence[str],
        *,
        job: str,
        masker: Masker,
        min_interval: float = DEFAULT_MIN_INTERVAL,
        timeout: float = DEFAULT_TIMEOUT,
        clock: Callable[[], float] = time.time,
        memory: Path | None = None,
    ) -> None:
        require_apprise("notifications")
        import apprise

        self.job = job
        self._masker = masker
        self._min_interval = min_interval
        self._timeout = timeout
        self._clock = clock
        self._targets: list[tuple[str, Any]] = []
        for url in dict.fromkeys(urls):
            # The service's own object, not an Apprise set: a set sends through a pool
            # of threads the interpreter waits for at exit, so a hung service would hold
            # the command long after its timeout.
            target = apprise.Apprise.instantiate(url)
            if target is None:
                raise ConfigError(
                    f"notification URL {masker.mask(url)} is not one Apprise knows; check its "
                    "scheme and parts (see the Apprise URL list)"
                )
            self._targets.append((masker.mask(url), target))
        self._apprise = apprise
        self._memory = memory
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._recall()
        self._queue: queue.Queue[Notice | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self.sent = 0
        self.failed = 0

    @property
    def enabled(self) -> bool:
        return bool(self._targets)

    def __call__(self, event: Event) -> None:
        """The event-stream side: circuits that open and quotas used up."""
        if not isinstance(event, ResourceChanged):
            return
        if event.kind == "circuit_open":
            title = f"backfill {self.job}: circuit of {event.resource} opened"
        elif event.kind == "quota":
            title = f"backfill {self.job}: quota of {event.resource} used up"
        else:
            return
        self.post(Notice(event.kind, title, event.what, failure=True))

    def post(self, notice: Notice) -> bool:
        """Queue ``notice`` unless one of its kind went out less than ``min_interval``
        ago (then it is counted, and said with the next one); return whether queued."""
        if not self._targets:
            return False
        now = self._clock()
        last = self._last.get(notice.kind)
        if last is not None and now - last < self._min_interval:
            self._held[notice.kind] = self._held.get(notice.kind, 0) + 1
            self._remember()
            return False
        self._last[notice.kind] = now
        held = self._held.pop(notice.kind, 0)
        body = notice.body
        if held:
            body += f"\n({held} more like this held back in the last {self._min_interval:.0f}s)"
        masked = Notice(
            notice.kind, self._masker.mask(notice.title), self._masker.mask(body), notice.failure
        )
        self._remember()
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._send_all, name="backfill-notify", daemon=True
            )
            self._thread.start()
        self._queue.put(masked)
        return True

    def _recall(self) -> None:
        if self._memory is None:
            return
        try:
            kept = json.loads(self._memory.read_text())
            self._last = {str(k): float(v) for k, v in kept.get("last", {}).items()}
            self._held = {str(k): int(v) for k, v in kept.get("held", {}).items()}
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("notifications: ignoring %s (%s)", self._memory, exc)

    def _remember(self) -> None:
        if self._memory is None:
            return
        try:
            self._memory.parent.mkdir(parents=True, exist_ok=True)
            scratch = self._memory.with_name(self._memory.name + ".tmp")
            scratch.write_text(json.dumps({"last": self._last, "held": self._held}))
            os.replace(scratch, self._memory)
        except OSError as exc:
            log.warning("notifications: cannot keep %s (%s)", self._memory, exc)

    def close(self) -> None:
        """Wait for the queued notices, at most ``timeout`` seconds in all; a notifier
        still busy then is logged and left behind (its thread dies with the process)."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(self._timeout)
        if self._thread.is_alive():
            log.warning(
                "notifications: no answer within %.0fs; the run's result stands", self._timeout
            )

    def _send_all(self) -> None:
        while (notice := self._queue.get()) is not None:
            for shown, target in self._targets:
                self._send(shown, target, notice)

    def _send(self, shown: str, target: Any, notice: Notice) -> None:
        kind = self._apprise.NotifyType.FAILURE if notice.failure else self._apprise.NotifyType.INFO
        try:
            ok = bool(target.notify(title=notice.title, body=notice.body, notify_type=kind))
        except Exception as exc:
            self.failed += 1
            log.warning("notification to %s failed: %s", shown, self._masker.mask(f"{exc!r}")[:300])
            return
        if ok:
            self.sent += 1
        else:
            self.failed += 1
            log.warning("notification to %s was not delivered", shown)
