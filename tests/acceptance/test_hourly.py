"""Hourly partitions through the whole engine: a London day with 25 hours runs 25 keyed
partitions, a daily stage waits for its day's hours, and a keep-current run with
refresh_last="3h" after a day change fetches the new day's hours and the last 3 old ones."""

from __future__ import annotations

import sqlite3
import textwrap
from collections import Counter
from pathlib import Path

from conftest import run_cli

JOB = """
import os
from pathlib import Path

from backfill import Job, hourly, daily, needs, table

HERE = Path(__file__).parent
OUT = f"sqlite:///{HERE / 'out.db'}"

job = Job("ticks", tz="Europe/London")


@job.stage(
    partitions=hourly("2024-10-26", "yesterday"),
    refresh_last="3h",
    sink=table(OUT, "hours", key=["hour"]),
)
def hours(ctx, partition):
    with (HERE / "fetches.log").open("a") as log:
        log.write(partition.key + "\\n")
    return [{"hour": partition.key, "day": partition.start.isoformat(),
             "version": os.environ.get("SOURCE_VERSION", "1")}]


@job.stage(partitions=daily("2024-10-26", "yesterday"), needs=["hours"],
           sink=table(OUT, "days", key=["day"]))
def days(ctx, partition):
    with sqlite3_connect() as db:
        (n,) = db.execute("SELECT count(*) FROM hours WHERE day = ?",
                          (partition.key,)).fetchone()
    return [{"day": partition.key, "hours": n}]


def sqlite3_connect():
    import sqlite3
    return sqlite3.connect(HERE / "out.db")
"""


def _fetched(workdir: Path) -> Counter[str]:
    log = workdir / "fetches.log"
    found = Counter(log.read_text().split()) if log.exists() else Counter()
    log.unlink(missing_ok=True)
    return found


def test_hourly_partitions_across_the_autumn_change_and_a_keep_current_refresh(
    tmp_path: Path,
) -> None:
    """26-27 October 2024 in London: 24 + 25 hours, each key once; the daily stage counts
    each day's hours after they are in; the next day brings 24 new hours plus the last 3
    refreshed, and the day they fall on is summed again."""
    (tmp_path / "job.py").write_text(textwrap.dedent(JOB))
    day_one = {"BACKFILL_NOW": "2024-10-28T06:00:00+00:00"}
    first = run_cli("run", "job.py", "--progress", "none", cwd=tmp_path, env=day_one)
    assert first.returncode == 0, first.stdout + first.stderr
    fetched = _fetched(tmp_path)
    assert len(fetched) == 49 and set(fetched.values()) == {1}
    assert "2024-10-27T00" in fetched and "2024-10-27T01" in fetched  # 01:00 BST, 01:00 GMT
    with sqlite3.connect(tmp_path / "out.db") as db:
        assert dict(db.execute("SELECT day, hours FROM days")) == {
            "2024-10-26": 24,
            "2024-10-27": 25,
        }

    day_two = {"BACKFILL_NOW": "2024-10-29T06:00:00+00:00", "SOURCE_VERSION": "2"}
    second = run_cli(
        "run", "job.py", "--through", "yesterday", "--progress", "none", cwd=tmp_path, env=day_two
    )
    assert second.returncode == 0, second.stdout + second.stderr
    fetched = _fetched(tmp_path)
    refreshed = {"2024-10-27T21", "2024-10-27T22", "2024-10-27T23"}
    new = {f"2024-10-28T{h:02d}" for h in range(24)}
    assert set(fetched) == refreshed | new
    assert set(fetched.values()) == {1}
    with sqlite3.connect(tmp_path / "out.db") as db:
        assert dict(db.execute("SELECT day, hours FROM days")) == {
            "2024-10-26": 24,
            "2024-10-27": 25,
            "2024-10-28": 24,
        }
        versions = dict(db.execute("SELECT hour, version FROM hours"))
    assert len(versions) == 73
    assert {h for h, v in versions.items() if v == "2"} == refreshed | new
    status = run_cli("status", "job.py", cwd=tmp_path, env=day_two)
    assert "hours: newest done 2024-10-28T23, 6h 00m behind" in status.stdout, status.stdout
    coverage = run_cli("coverage", "job.py", "--fail-on-gaps", cwd=tmp_path, env=day_two)
    assert coverage.returncode == 0, coverage.stdout + coverage.stderr
