"""The sink writer rides out a lost destination (a database restarting) for as long as
the documented reconnect window, on a simulated clock."""

from __future__ import annotations

import asyncio
import types
from collections.abc import Sequence
from typing import Any

import pytest

from backfill import writer as writer_module
from backfill.errors import SinkError, TransientError
from backfill.ledger import Outcome, Status
from backfill.partitions import daily
from backfill.retry import RECONNECT_SECONDS
from backfill.sinks import Rows, SinkConnection
from backfill.writer import TRANSIENT_ATTEMPTS, SinkWriter


class FakeTime:
    """``time`` for the writer's thread: sleeps advance a simulated clock at once."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def time(self) -> float:
        return 1_000.0 + self.now


class Connection:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.raw: Any = None

    def begin(self) -> None:
        self.server.begins += 1

    def commit(self) -> None:
        if self.server.clock.now < self.server.down_until:
            raise TransientError("server closed the connection", category="sink_unreachable")

    def rollback(self) -> None:
        pass

    def close(self) -> None:
        pass


class Server:
    """A table whose database is down until ``down_until`` on the simulated clock."""

    name = "t"
    database = "fake://db"
    description = "table t in fake://db"

    def __init__(self, clock: FakeTime, down_until: float) -> None:
        self.clock = clock
        self.down_until = down_until
        self.begins = 0
        self.rows: list[Any] = []

    def connect(self) -> SinkConnection:
        return Connection(self)

    def write(self, conn: SinkConnection, batch: Sequence[Rows]) -> int:
        for rows in batch:
            self.rows.extend(rows.records)
        return sum(len(rows.records) for rows in batch)


def write_once(sink: Server) -> Any:
    part = next(iter(daily("2013-01-01", "2013-01-01")))

    async def hand_over() -> Any:
        writer = SinkWriter("me")
        await writer.open([sink])  # type: ignore[list-item]
        try:
            return await writer.write(
                [sink],  # type: ignore[list-item]
                part,
                {"t": [{"day": part.key}]},
                Outcome(1, Status.DONE),
                first=True,
                urgent=True,
            )
        finally:
            await writer.close()

    return asyncio.run(hand_over())


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    namespace = types.SimpleNamespace(monotonic=fake.monotonic, sleep=fake.sleep, time=fake.time)
    monkeypatch.setattr(writer_module, "time", namespace)
    return fake


def test_a_destination_down_for_most_of_the_reconnect_window_is_written_once_back(
    clock: FakeTime,
) -> None:
    """A database that refuses writes for longer than the first attempts take (a restart
    on a busy machine) is retried, on a new transaction each time, until it is back."""
    sink = Server(clock, down_until=RECONNECT_SECONDS - 10)
    result = write_once(sink)
    assert result.error is None
    assert sink.begins > TRANSIENT_ATTEMPTS
    assert clock.now >= RECONNECT_SECONDS - 10
    assert sink.rows[-1] == {"day": "2013-01-01"}


def test_a_destination_gone_for_longer_than_the_window_stops_with_one_sentence(
    clock: FakeTime,
) -> None:
    """Past the reconnect window the write fails as a SinkError naming the table, the
    time waited and the last reason."""
    sink = Server(clock, down_until=10 * RECONNECT_SECONDS)
    with pytest.raises(SinkError) as caught:
        write_once(sink)
    message = str(caught.value)
    assert "cannot write table t in fake://db" in message
    assert "server closed the connection" in message
    assert f"{RECONNECT_SECONDS:g} s" in message
    assert RECONNECT_SECONDS - 6 <= clock.now <= RECONNECT_SECONDS
