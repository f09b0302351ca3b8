"""The demo end to end: the real replay API, killed and resumed."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from conftest import backfill_cmd, cli_env, run_cli

KEY = "year, month, day, carrier, flight, origin"


def done_partitions(state: Path) -> int:
    if not state.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute(
                "SELECT count(*) FROM backfill_partitions WHERE status = 'done'"
            ).fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_demo_killed_at_random_points_resumes_to_the_exact_row_set(tmp_path: Path) -> None:
    """SIGKILL at several random points of the three-stage pipeline, then a final run:
    every partition done, exactly 336,776 flights, no duplicate keys, every reference
    table complete, and the daily summary equal to a direct SQL aggregate."""
    seed = int(os.environ.get("BACKFILL_TEST_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    demo_dir = tmp_path / "demo"
    state = demo_dir / "state.db"
    args = [*backfill_cmd(), "demo", "--dir", str(demo_dir), "--rate", "100", "--progress", "plain"]
    # 733 partitions: 3 reference, 365 days of flights, 365 days of airport_daily.
    thresholds = [rng.randint(5, 230), rng.randint(250, 480), rng.randint(500, 720)]
    for threshold in thresholds:
        proc = subprocess.Popen(
            args, cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 120
        while done_partitions(state) < threshold and proc.poll() is None:
            assert time.monotonic() < deadline, f"no progress (seed {seed})"
            time.sleep(0.02)
        # A little random extra, so the kill can land mid-write as well as between writes.
        time.sleep(rng.uniform(0, 0.3))
        proc.kill()
        proc.wait(timeout=30)
        assert proc.returncode in (-9, 0), (
            f"seed {seed}: {proc.stderr.read() if proc.stderr else ''}"
        )

    final = run_cli(
        "demo",
        "--dir",
        str(demo_dir),
        "--rate",
        "100",
        "--progress",
        "plain",
        cwd=tmp_path,
        timeout=300,
    )
    assert final.returncode == 0, f"seed {seed}\n{final.stdout}\n{final.stderr}"
    assert "flights 365 of 365 done" in final.stdout
    assert "336,776 (expected 336,776)" in final.stdout
    assert "airport_daily matches the same aggregate computed in SQL" in final.stdout

    with sqlite3.connect(demo_dir / "flights.db") as conn:
        rows = conn.execute("SELECT count(*) FROM flights").fetchone()[0]
        distinct = conn.execute(f"SELECT count(*) FROM (SELECT DISTINCT {KEY} FROM flights)")
        assert (rows, distinct.fetchone()[0]) == (336_776, 336_776), f"seed {seed}"
        tables = {
            name: conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
            for name in ("airlines", "airports", "planes", "airport_daily")
        }
        assert tables == {
            "airlines": 16,
            "airports": 1458,
            "planes": 3322,
            "airport_daily": 1095,
        }, f"seed {seed}"
        matching = conn.execute(
            "SELECT count(*) FROM airport_daily AS a JOIN ("
            "  SELECT printf('%04d-%02d-%02d', year, month, day) AS d, origin, count(*) AS n,"
            "         avg(dep_delay) AS delay"
            "  FROM flights GROUP BY 1, 2"
            ") AS f ON f.d = a.date AND f.origin = a.origin AND f.n = a.flights"
            " AND abs(f.delay - a.avg_dep_delay) < 1e-9"
        ).fetchone()[0]
        assert matching == 1095, f"seed {seed}"
    with sqlite3.connect(state) as conn:
        statuses = dict(conn.execute("SELECT status, count(*) FROM backfill_partitions GROUP BY 1"))
    assert statuses == {"done": 733}, f"seed {seed}"


def test_demo_writes_to_postgresql_with_the_exact_row_count(tmp_path: Path) -> None:
    """`backfill demo --sink postgresql://...` fills a PostgreSQL table: exact rows, no dups."""
    import uuid

    import psycopg

    base = os.environ.get("BACKFILL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        admin = psycopg.connect(base, autocommit=True, connect_timeout=3)
    except psycopg.Error as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI needs PostgreSQL at {base}: {exc}")
        pytest.skip(f"no PostgreSQL at {base}: {exc}")
    schema = f"bf_demo_{uuid.uuid4().hex[:8]}"
    admin.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in base else "?"
    url = f"{base}{sep}options=-csearch_path%3D{schema}"
    try:
        result = run_cli(
            "demo", "--fresh", "--calm", "--progress", "plain", "--dir", str(tmp_path / "d"),
            "--sink", url, cwd=tmp_path, timeout=240,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert "336,776 (expected 336,776)" in result.stdout
        assert "airport_daily matches the same aggregate computed in SQL" in result.stdout
        summary = admin.execute(f"SELECT count(*) FROM {schema}.airport_daily").fetchone()
        assert summary == (1095,)
        count = admin.execute(f"SELECT count(*) FROM {schema}.flights").fetchone()
        distinct = admin.execute(
            f"SELECT count(*) FROM (SELECT DISTINCT year, month, day, carrier, flight, origin "
            f"FROM {schema}.flights) d"
        ).fetchone()
        assert count == distinct == (336_776,)
    finally:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")
        admin.close()


def lost_partitions(state: Path) -> dict[str, int]:
    with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5) as conn:
        return dict(
            conn.execute(
                "SELECT key, lost_leases FROM backfill_partitions WHERE lost_leases > 0 "
                "OR error_category = 'worker_lost'"
            ).fetchall()
        )


@pytest.mark.slow
def test_demo_killed_again_and_again_at_the_same_point_repairs_itself(tmp_path: Path) -> None:
    """Four SIGKILLs, each the same way into its run (80 partitions past where the run
    began), then `backfill demo`: exact. The demo's data never kills it, so a killed
    demo's partitions go back unsuspected and no day ever ends failed as worker_lost."""
    demo_dir = tmp_path / "demo"
    state = demo_dir / "state.db"
    # --calm: no latency, so each run gets 80 partitions in within a second or two.
    args = [*backfill_cmd(), "demo", "--dir", str(demo_dir), "--calm", "--progress", "none"]
    env = cli_env()
    for _ in range(4):
        begun = done_partitions(state)
        proc = subprocess.Popen(
            args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 120
        while done_partitions(state) < begun + 80 and proc.poll() is None:
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.02)
        proc.kill()
        proc.wait(timeout=30)
    lost = lost_partitions(state)
    assert max(lost.values(), default=0) < 3, lost
    final = run_cli(
        "demo", "--dir", str(demo_dir), "--calm", "--progress", "none", cwd=tmp_path, timeout=300
    )
    assert final.returncode == 0, f"{final.stdout}\n{final.stderr}"
    assert "flights 365 of 365 done" in final.stdout
    assert "336,776 (expected 336,776)" in final.stdout
    with sqlite3.connect(demo_dir / "flights.db") as conn:
        rows = conn.execute("SELECT count(*) FROM flights").fetchone()[0]
        distinct = conn.execute(f"SELECT count(*) FROM (SELECT DISTINCT {KEY} FROM flights)")
        assert (rows, distinct.fetchone()[0]) == (336_776, 336_776)
