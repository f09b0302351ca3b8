"""A fleet of ``backfill worker`` processes on one PostgreSQL ledger, against the replay API.

Each test runs real worker subprocesses on a fresh schema and checks the flights table
(a SQLite file all workers write to) for the exact row count and no duplicate keys.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import sqlite3
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from backfill.demo.data import FLIGHT_KEY, FLIGHTS_TOTAL
from backfill.demo.server import ReplayConfig, ReplayServer
from conftest import backfill_cmd, cli_env, run_cli
from pg_support import fresh_schema, private_cluster
from wire_stamps import WireStamps

pytestmark = pytest.mark.slow

JOB = """
import os
from backfill.demo.flights import job

job.lease_seconds = float(os.environ.get("FLEET_LEASE", "60"))
"""


@pytest.fixture
def state() -> Iterator[str]:
    with fresh_schema() as url:
        yield url


def replay(rate: float) -> ReplayServer:
    server = ReplayServer(ReplayConfig(rate_limit=rate, seed=7))
    server.start()
    return server


def start_workers(
    n: int, tmp_path: Path, state: str, api: str, rate: float, *args: str, lease: float = 60
) -> list[subprocess.Popen[str]]:
    (tmp_path / "job.py").write_text(JOB)
    env = cli_env(
        {
            "FLIGHTS_API": api,
            "FLIGHTS_DB": str(tmp_path / "flights.db"),
            "FLIGHTS_RATE": str(rate),
            "FLIGHTS_CONCURRENCY": "8",
            "FLEET_LEASE": str(lease),
            "BACKFILL_STATE": state,
        }
    )
    return [
        subprocess.Popen(
            [*backfill_cmd(), "worker", "job.py", "--progress", "none", *args],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(n)
    ]


def finish(workers: list[subprocess.Popen[str]], timeout: float = 120) -> list[int | None]:
    deadline = time.monotonic() + timeout
    codes = []
    for proc in workers:
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"worker {proc.pid} did not finish in {timeout:g} s")
        codes.append(proc.returncode)
    return codes


def done(state: str) -> int:
    try:
        with psycopg.connect(state, connect_timeout=2) as conn:
            row = conn.execute(
                "SELECT count(*) FROM backfill_partitions WHERE status IN ('done', 'empty')"
            ).fetchone()
            return int(row[0]) if row else 0
    except psycopg.Error:
        return 0


def wait_for_done(state: str, at_least: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while done(state) < at_least:
        assert time.monotonic() < deadline, f"fewer than {at_least} partitions done in time"
        time.sleep(0.05)


def table_rows(tmp_path: Path) -> tuple[int, int]:
    with sqlite3.connect(tmp_path / "flights.db") as conn:
        rows = conn.execute("SELECT count(*) FROM flights").fetchone()[0]
        cols = ", ".join(FLIGHT_KEY)
        distinct = conn.execute(f"SELECT count(*) FROM (SELECT DISTINCT {cols} FROM flights)")
        return rows, distinct.fetchone()[0]


def ledger_rows(state: str) -> dict[str, Any]:
    with psycopg.connect(state) as conn:
        statuses = dict(
            conn.execute("SELECT status, count(*) FROM backfill_partitions GROUP BY 1").fetchall()
        )
        claims = conn.execute("SELECT max(claims) FROM backfill_partitions").fetchone()
        finished = conn.execute("SELECT sum(finished) FROM backfill_workers").fetchone()
    return {"statuses": statuses, "max_claims": claims[0], "finished": finished[0]}


def test_four_workers_backfill_the_year_exactly_once(tmp_path: Path, state: str) -> None:
    """4 workers on the full-year demo pipeline: all 733 partitions (3 reference tables,
    365 days of flights, 365 daily summaries) done, each leased exactly once, 336,776
    rows and no duplicate keys."""
    server = replay(100)
    try:
        workers = start_workers(4, tmp_path, state, server.url, 100)
        codes = finish(workers)
    finally:
        server.stop()
    assert codes == [0, 0, 0, 0], [p.stderr.read() if p.stderr else "" for p in workers]
    assert table_rows(tmp_path) == (FLIGHTS_TOTAL, FLIGHTS_TOTAL)
    ledger = ledger_rows(state)
    assert ledger == {"statuses": {"done": 733}, "max_claims": 1, "finished": 733}


def test_a_killed_worker_loses_only_its_lease(tmp_path: Path, state: str) -> None:
    """SIGKILL one of 4 workers mid-run: the others finish its partitions once its lease
    expires; exact rows, no duplicates, and `status` shows the killed worker as dead."""
    server = replay(100)
    try:
        workers = start_workers(4, tmp_path, state, server.url, 100, lease=3)
        wait_for_done(state, 80)
        victim = workers[0]
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        codes = finish(workers[1:])
    finally:
        server.stop()
    assert codes == [0, 0, 0], [p.stderr.read() if p.stderr else "" for p in workers[1:]]
    assert table_rows(tmp_path) == (FLIGHTS_TOTAL, FLIGHTS_TOTAL)
    assert ledger_rows(state)["statuses"] == {"done": 733}
    status = run_cli("status", "job.py", "--state", state, cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    rows = [line for line in status.stdout.splitlines() if f" {victim.pid} " in line]
    assert len(rows) == 1 and "dead" in rows[0], status.stdout
    assert "1 dead worker(s)" in status.stdout


def test_workers_ride_out_a_postgres_restart(tmp_path: Path) -> None:
    """PostgreSQL restarts mid-run: the workers reconnect with backoff and finish;
    nothing lost, nothing duplicated. The server is a cluster of the test's own: the
    shared one on 5432 is never restarted."""
    server = replay(100)
    try:
        with private_cluster() as cluster:
            workers = start_workers(4, tmp_path, cluster.url, server.url, 100)
            wait_for_done(cluster.url, 60)
            cluster.pg_ctl("restart", "-m", "fast")
            codes = finish(workers)
            statuses = ledger_rows(cluster.url)["statuses"]
    finally:
        server.stop()
    assert codes == [0, 0, 0, 0], [p.stderr.read() if p.stderr else "" for p in workers]
    assert table_rows(tmp_path) == (FLIGHTS_TOTAL, FLIGHTS_TOTAL)
    assert statuses == {"done": 733}


@pytest.mark.xdist_group("cpu_heavy")  # real time: never beside chromium (see test_browser.py)
def test_four_workers_share_one_rate_limit(tmp_path: Path, state: str) -> None:
    """4 workers on a resource of R requests/s: the API never sees more than R + burst
    requests in any one-second window, and answers none of them 429.

    Arrivals are the kernel's receive stamps (a proxy in front of the API): the API's own
    event loop, in this process, notes a request only when it gets to it, which on a
    loaded machine made requests sent 50 ms apart look simultaneous."""
    rate, burst = 20, 1
    server = replay(rate)
    wire = WireStamps(server.url)
    try:
        workers = start_workers(4, tmp_path, state, wire.url, rate, "--to", "2013-02-15")
        codes = finish(workers)
        stats = server.stats.as_dict()
    finally:
        wire.close()
        server.stop()
    assert codes == [0, 0, 0, 0], [p.stderr.read() if p.stderr else "" for p in workers]
    assert wire.unstamped == 0
    times = sorted(wire.times)
    assert len(times) >= stats["requests"], (len(times), stats)
    busiest = max(sum(1 for t in times if s <= t < s + 1.0) for s in times)
    assert busiest <= rate + burst, f"{busiest} requests in one second"
    assert busiest >= rate - 3, f"only {busiest} requests in the busiest second"
    assert stats["rate_limited"] == 0


class PasswordRefusingServer:
    """Speaks just enough of the PostgreSQL protocol to ask for a password and refuse it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                self.refuse(conn)

    @staticmethod
    def refuse(conn: socket.socket) -> None:
        while True:
            length, code = struct.unpack("!ii", conn.recv(8))
            if code in (80877103, 80877104):  # SSLRequest, GSSENCRequest: not here
                conn.sendall(b"N")
                continue
            conn.recv(length - 8)
            break
        conn.sendall(b"R" + struct.pack("!ii", 8, 3))  # cleartext password, please
        conn.recv(1)  # "p", the password message
        length = struct.unpack("!i", conn.recv(4))[0]
        conn.recv(length - 4)
        fields = b"".join(
            tag + text.encode() + b"\0"
            for tag, text in (
                (b"S", "FATAL"),
                (b"V", "FATAL"),
                (b"C", "28P01"),
                (b"M", 'password authentication failed for user "postgres"'),
            )
        )
        conn.sendall(b"E" + struct.pack("!i", len(fields) + 5) + fields + b"\0")

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("problem", ["password", "database", "url"])
def test_a_bad_state_url_is_one_line_and_exit_2(tmp_path: Path, state: str, problem: str) -> None:
    """Wrong password, missing database, malformed URL: one line naming it, exit 2, and
    the password never printed."""
    refusing = PasswordRefusingServer()
    base = state.split("?")[0].rsplit("/", 1)[0].replace("postgres@", "postgres:Sup3rSecret@")
    url = {
        "password": f"postgresql://postgres:Sup3rSecret@127.0.0.1:{refusing.port}/test",
        "database": f"{base}/no_such_database",
        "url": f"{base}/test?sslmode=sometimes",
    }[problem]
    expected = {
        "password": "refused the password for user 'postgres'",
        "database": "database 'no_such_database' does not exist",
        "url": "not a valid PostgreSQL URL",
    }[problem]
    (tmp_path / "job.py").write_text(JOB)
    try:
        result = run_cli("worker", "job.py", "--state", url, cwd=tmp_path, timeout=60)
    finally:
        refusing.close()
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Sup3rSecret" not in result.stderr + result.stdout
