"""Progress is a stream of events; displays, logs and metrics subscribe to it.

Events are frozen, slotted dataclasses. Subscribers are plain callables; one that raises
is reported once and dropped, so a broken display never breaks a run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from backfill._quickinit import quick_init
from backfill.ledger import StageCounts, Status

__all__ = [
    "Event",
    "EventBus",
    "FleetCounts",
    "PartitionFinished",
    "PartitionRetrying",
    "PartitionStarted",
    "ResourceChanged",
    "RunFinished",
    "RunStarted",
    "RunStopping",
    "Tick",
    "WorkerJoined",
    "WorkerLost",
]

log = logging.getLogger("backfill")


@dataclass(frozen=True, slots=True)
class RunStarted:
    run_id: str
    job: str
    worker_id: str
    at: float
    counts: Mapping[str, StageCounts] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WorkerJoined:
    """This worker registered in the ledger and takes part in the job."""

    worker_id: str
    job: str
    host: str
    pid: int


@dataclass(frozen=True, slots=True)
class WorkerLost:
    """Another worker of the job was found dead; its leased partitions were released."""

    worker_id: str
    released: int


# Made per partition: quick_init sets its slots (see backfill._quickinit).
@quick_init
@dataclass(frozen=True, slots=True)
class PartitionStarted:
    """A partition was claimed from the ledger and its stage function is about to run."""

    stage: str
    key: str


@dataclass(frozen=True, slots=True)
class PartitionRetrying:
    stage: str
    key: str
    attempt: int
    delay: float
    category: str
    message: str


# Made per partition: quick_init sets its slots (see backfill._quickinit).
@quick_init
@dataclass(frozen=True, slots=True)
class PartitionFinished:
    """A partition ended: done, empty, failed, or ``pending`` when released unfinished."""

    stage: str
    key: str
    status: Status
    records: int
    duration: float
    attempts: int
    category: str | None = None
    message: str | None = None
    # Requests its stage made through ``ctx.http``, and how many were answered 429.
    requests: int = 0
    rate_limited: int = 0


@dataclass(frozen=True, slots=True)
class RunStopping:
    reason: str
    immediate: bool = False


@dataclass(frozen=True, slots=True)
class ResourceChanged:
    """A resource paused (Retry-After), waits for a used-up quota, its circuit breaker
    opened or closed, or it runs below its declared rate.

    ``kind`` is ``paused``, ``quota``, ``circuit_open``, ``circuit_closed`` or ``rate``;
    ``seconds`` how long the pause or wait lasts (for ``circuit_open``: until the first
    probe); ``what`` says it in a sentence.
    """

    resource: str
    what: str
    seconds: float
    kind: str = "paused"


@dataclass(frozen=True, slots=True)
class PartitionsDiscovered:
    """Partition ``key`` of stage ``source`` found ``added`` new partitions of ``stage``
    (see :mod:`backfill.partitions.discovered`): that stage's total grows."""

    stage: str
    source: str
    key: str
    added: int


@dataclass(frozen=True, slots=True)
class FleetCounts:
    """The whole fleet's counts per stage, read from the ledger by a worker every few
    seconds: what its display shows, rather than its own share."""

    counts: Mapping[str, StageCounts]


@dataclass(frozen=True, slots=True)
class Tick:
    """A second went by: displays that report on a cadence do so even when nothing
    happens (a source that is down)."""

    at: float


@dataclass(frozen=True, slots=True)
class RunFinished:
    run_id: str
    status: str
    exit_code: int
    elapsed: float
    counts: Mapping[str, StageCounts] = field(default_factory=dict)
    message: str | None = None


Event = (
    RunStarted
    | WorkerJoined
    | WorkerLost
    | PartitionStarted
    | PartitionRetrying
    | PartitionFinished
    | RunStopping
    | ResourceChanged
    | RunFinished
    | Tick
    | FleetCounts
    | PartitionsDiscovered
)
Subscriber = Callable[[Event], None]


def _hears(subscriber: Subscriber, kind: type) -> bool:
    """Whether ``subscriber`` takes events of ``kind``: those of the kinds it names in an
    ``events`` attribute (a tuple of event classes), or every event if it names none."""
    kinds = getattr(subscriber, "events", None)
    return kinds is None or issubclass(kind, tuple(kinds))


class EventBus:
    """Hands each event to the subscribers that take its kind.

    A subscriber may name the kinds it reads in an ``events`` attribute (a tuple of event
    classes); it then hears only those, and an event nobody takes need not be made at all
    (see :meth:`wants`): at tens of thousands of partitions a second, a start event per
    partition that no display shows was a measurable part of a run's time.
    """

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        # Per event class, the subscribers that take it, worked out on first use.
        self._routes: dict[type, tuple[Subscriber, ...]] = {}

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Add a subscriber; return a function that removes it."""
        self._subscribers.append(subscriber)
        self._routes.clear()

        def unsubscribe() -> None:
            self._drop(subscriber)

        return unsubscribe

    @property
    def has_subscribers(self) -> bool:
        return bool(self._subscribers)

    def wants(self, kind: type) -> bool:
        """Whether any subscriber takes events of ``kind``."""
        route = self._routes.get(kind)
        return bool(route if route is not None else self._route(kind))

    def emit(self, event: Event) -> None:
        route = self._routes.get(type(event))
        if route is None:
            route = self._route(type(event))
        for subscriber in route:
            try:
                subscriber(event)
            except Exception:
                log.exception("event subscriber %r failed; it is removed", subscriber)
                self._drop(subscriber)

    def _route(self, kind: type) -> tuple[Subscriber, ...]:
        route = self._routes.get(kind)
        if route is None:
            route = self._routes[kind] = tuple(s for s in self._subscribers if _hears(s, kind))
        return route

    def _drop(self, subscriber: Subscriber) -> None:
        if subscriber in self._subscribers:
            self._subscribers.remove(subscriber)
            self._routes.clear()
