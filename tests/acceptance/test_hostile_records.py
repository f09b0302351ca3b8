"""A source sends hostile records: each fails only its own partition, with table and field
named; the rest of the run is written; once the source is fixed, ``retry --failed``
completes exactly those partitions, without a duplicate row. On SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conftest import executions, run_cli
from pg_support import fresh_schema

HOSTILE_JOB = """
import os
from pathlib import Path

from backfill import Job, daily, table

HERE = Path(__file__).parent
job = Job(
    "hostile",
    partitions=daily("2013-01-01", "2013-01-20"),
    sink=table(os.environ["SINK_URL"], "items", mode="append"),
)
# Which partitions the source sends a hostile record for, and of which kind.
KINDS = dict(zip((3, 7, 11, 15, 19), os.environ["HOSTILE_KINDS"].split(",")))


def hostile(kind, record):
    if kind == "case":
        return {**record, "Value": 1}
    if kind == "reserved":
        return {**record, "_partition": "2013-01-01"}
    if kind == "too_many":
        return {**record, **{f"extra{i}": i for i in range(2000)}}
    if kind == "long_name":
        return {**record, "x" * 64: 1}
    if kind == "bigint":
        return {**record, "value": 2**64 + 1}
    if kind == "surrogate":
        return {**record, "label": "caf\\udce9"}
    raise ValueError(kind)


@job.stage(concurrency=20)
async def fetch(ctx, partition):
    with (HERE / "executions.log").open("a") as log:
        log.write(partition.key + "\\n")
    records = [
        {"day": partition.key, "n": n, "value": n * 10, "label": f"row {n}"}
        for n in range(4)
    ]
    kind = KINDS.get(partition.start.day)
    if kind is not None and not (HERE / "fixed").exists():
        records[1] = hostile(kind, records[1])
    return records
"""

KEYS = [f"2013-01-{d:02d}" for d in range(1, 21)]
BAD = {"2013-01-03": 0, "2013-01-07": 1, "2013-01-11": 2, "2013-01-15": 3, "2013-01-19": 4}
STATE = ".backfill/state.db"

# Per database: the five kinds of hostile record, and what each failure must name.
KINDS = {
    "sqlite": [
        ("case", "bad_field", "'Value' of table items and"),
        ("reserved", "reserved_field", "field '_partition' of table items is reserved"),
        (
            "too_many",
            "too_many_fields",
            "table items would have 2,005 columns, more than the 2,000 SQLite",
        ),
        ("bigint", "bad_value", "field 'value' of table items holds an integer of 65 bits"),
        ("surrogate", "bad_value", "field 'label' of table items holds text with a lone"),
    ],
    "postgresql": [
        ("reserved", "reserved_field", "field '_partition' of table items is reserved"),
        ("too_many", "too_many_fields", "2,005 columns, more than the 1,600 PostgreSQL"),
        ("long_name", "bad_field", "field '" + "x" * 64 + "' of table items is 64 bytes"),
        ("bigint", "bad_value", "field 'value' of table items holds an integer of 65 bits"),
        ("surrogate", "bad_value", "field 'label' of table items holds text with a lone"),
    ],
}


@pytest.fixture(params=["sqlite", "postgresql"])
def sink(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(database kind, sink URL): a SQLite file, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield "sqlite", f"sqlite:///{tmp_path / 'out.db'}"
        return
    with fresh_schema() as url:
        yield "postgresql", url


def _rows(kind: str, url: str) -> list[tuple[Any, ...]]:
    sql = "SELECT _partition, day, n, value, label FROM items ORDER BY _partition, n"
    if kind == "sqlite":
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return conn.execute(sql).fetchall()
    with psycopg.connect(url) as conn:
        return [tuple(r) for r in conn.execute(sql).fetchall()]


def _ledger(workdir: Path) -> dict[str, tuple[str, str | None, str | None]]:
    with sqlite3.connect(workdir / STATE) as conn:
        rows = conn.execute(
            "SELECT key, status, error_category, error_message FROM backfill_partitions"
        ).fetchall()
    return {key: (status, category, message) for key, status, category, message in rows}


def _expected_rows(keys: list[str]) -> list[tuple[Any, ...]]:
    return [(k, k, n, n * 10, f"row {n}") for k in sorted(keys) for n in range(4)]


def test_hostile_records_fail_only_their_partitions_and_retry_completes_them(
    tmp_path: Path, sink: tuple[str, str]
) -> None:
    """20 partitions, 5 of them with a hostile record each: exit 1, 15 done, 5 failed with
    table and field named, exactly the 15 partitions' rows; a retry before the fix touches
    only the 5 and changes nothing; after the fix, retry --failed: exit 0, all 20 done,
    exactly their rows, none twice."""
    kind, url = sink
    kinds = KINDS[kind]
    (tmp_path / "job.py").write_text(textwrap.dedent(HOSTILE_JOB))
    env = {"SINK_URL": url, "HOSTILE_KINDS": ",".join(k for k, _, _ in kinds)}

    first = run_cli("run", "job.py", "--progress", "none", cwd=tmp_path, env=env)
    assert first.returncode == 1, first.stdout + first.stderr
    ledger = _ledger(tmp_path)
    assert Counter(status for status, _, _ in ledger.values()) == {"done": 15, "failed": 5}
    for key, index in BAD.items():
        status, category, message = ledger[key]
        _, want_category, words = kinds[index]
        assert (status, category) == ("failed", want_category), message
        assert message is not None and words in message and key in message, message
        assert "\n" not in message
    healthy = [k for k in KEYS if k not in BAD]
    assert _rows(kind, url) == _expected_rows(healthy)
    status = run_cli("status", "job.py", cwd=tmp_path, env=env)
    assert status.returncode == 0, status.stdout + status.stderr
    assert all(key in status.stdout for key in BAD), status.stdout
    assert all(category in status.stdout for _, category, _ in kinds), status.stdout

    # The source is not fixed yet: a retry runs the five again, and only them.
    again = run_cli("retry", "job.py", "--failed", "--progress", "none", cwd=tmp_path, env=env)
    assert again.returncode == 1, again.stdout + again.stderr
    runs = executions(tmp_path)
    assert {k for k, n in runs.items() if n == 2} == set(BAD)
    assert _rows(kind, url) == _expected_rows(healthy)

    (tmp_path / "fixed").touch()
    fixed = run_cli("retry", "job.py", "--failed", "--progress", "none", cwd=tmp_path, env=env)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    runs = executions(tmp_path)
    assert {k for k, n in runs.items() if n == 3} == set(BAD)
    assert sum(runs.values()) == 20 + 5 + 5
    assert Counter(s for s, _, _ in _ledger(tmp_path).values()) == {"done": 20}
    assert _rows(kind, url) == _expected_rows(KEYS)

    # Nothing left to do: another run writes nothing and doubles nothing.
    last = run_cli("run", "job.py", "--progress", "none", cwd=tmp_path, env=env)
    assert last.returncode == 0, last.stdout + last.stderr
    assert sum(executions(tmp_path).values()) == 30
    assert _rows(kind, url) == _expected_rows(KEYS)
