"""`backfill entities review|merge|stats` run as a user runs them."""

from __future__ import annotations

import json
import sqlite3
import textwrap
from pathlib import Path

from backfill.entities.resolver import EntityResolver, EntitySpec
from conftest import run_cli

JOB = """
from backfill import Job, daily
from backfill.sinks import table

job = Job("tennis", partitions=daily("2024-01-01", "2024-01-02"),
          sink=table("sqlite:///{db}", "matches", key=["day"]))
job.entities("players", references=["matches.winner_id"])


@job.stage
async def matches(ctx, partition):
    return []
"""


def _setup(tmp_path: Path) -> tuple[Path, int, int]:
    db = tmp_path / "tennis.db"
    (tmp_path / "job.py").write_text(textwrap.dedent(JOB.format(db=db)))
    resolver = EntityResolver(EntitySpec("players", f"sqlite:///{db}"))
    novak = resolver.add_now("Novak Djokovic", source="atp", country="SRB")
    unsure = resolver.resolve_now("Djokovic", source="espn")
    resolver.close()
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE matches (day TEXT, winner_id INTEGER)")
        conn.execute("INSERT INTO matches VALUES ('2024-01-01', ?)", (unsure.entity_id,))
    return db, novak, unsure.entity_id


def test_review_lists_the_queue_and_accept_merges(tmp_path: Path) -> None:
    """The queue shows candidates with scores; --accept merges, rows follow."""
    db, novak, provisional = _setup(tmp_path)
    listed = run_cli("entities", "review", "job.py", "players", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "Djokovic" in listed.stdout and "Novak Djokovic" in listed.stdout
    queue = json.loads(
        run_cli("entities", "review", "job.py", "players", "--json", cwd=tmp_path).stdout
    )
    assert queue[0]["provisional_id"] == provisional
    assert queue[0]["candidates"][0]["entity_id"] == novak
    assert 0.75 <= queue[0]["candidates"][0]["score"] < 0.9

    accepted = run_cli(
        "entities", "review", "job.py", "players", "--accept", str(queue[0]["review"]),
        cwd=tmp_path,
    )  # fmt: skip
    assert accepted.returncode == 0, accepted.stderr
    assert f"merged {provisional} into {novak}" in accepted.stdout
    assert "1 in matches.winner_id" in accepted.stdout
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT winner_id FROM matches").fetchall() == [(novak,)]
    empty = run_cli("entities", "review", "job.py", "players", cwd=tmp_path)
    assert "no players to review" in empty.stdout


def test_reject_merge_and_stats(tmp_path: Path) -> None:
    """--reject keeps the provisional entity; merge moves it; stats counts it all."""
    _, novak, provisional = _setup(tmp_path)
    rejected = run_cli("entities", "review", "job.py", "players", "--reject", "1", cwd=tmp_path)
    assert rejected.returncode == 0, rejected.stderr
    figures = json.loads(run_cli("entities", "stats", "job.py", "--json", cwd=tmp_path).stdout)
    assert figures[0]["entities"] == 2 and figures[0]["pending_reviews"] == 0

    merged = run_cli(
        "entities", "merge", "job.py", "players", str(novak), str(provisional), cwd=tmp_path
    )
    assert merged.returncode == 0, merged.stderr
    assert f"merged {provisional} into {novak}: 1 alias(es)" in merged.stdout
    table = run_cli("entities", "stats", "job.py", cwd=tmp_path)
    assert table.returncode == 0 and "players" in table.stdout
    figures = json.loads(run_cli("entities", "stats", "job.py", "--json", cwd=tmp_path).stdout)
    assert (figures[0]["entities"], figures[0]["merged"], figures[0]["aliases"]) == (1, 1, 2)


def test_bad_input_is_one_sentence_and_exit_2(tmp_path: Path) -> None:
    """An unknown kind, review or entity is one line on stderr, exit 2, nothing changed."""
    db, novak, _ = _setup(tmp_path)
    before = sqlite3.connect(db).execute("SELECT COUNT(*) FROM bf_entity_aliases").fetchone()
    for args, says in [
        (("review", "job.py", "horses"), "declares no entity kind 'horses'"),
        (("review", "job.py", "players", "--accept", "99"), "no players review 99"),
        (("review", "job.py", "players", "--accept", "1", "--reject", "1"), "not both"),
        (("merge", "job.py", "players", str(novak), "999"), "no players entity 999"),
        (("merge", "job.py", "players", str(novak), str(novak)), "into itself"),
    ]:
        done = run_cli("entities", *args, cwd=tmp_path)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert says in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    after = sqlite3.connect(db).execute("SELECT COUNT(*) FROM bf_entity_aliases").fetchone()
    assert before == after


def test_read_commands_on_a_store_without_tables_make_none(tmp_path: Path) -> None:
    """stats and review before any run: one line, exit 2, and no database made."""
    db = tmp_path / "tennis.db"
    (tmp_path / "job.py").write_text(textwrap.dedent(JOB.format(db=db)))
    for args in (("stats", "job.py"), ("review", "job.py", "players")):
        done = run_cli("entities", *args, cwd=tmp_path)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert "has no entity tables yet" in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not db.exists()
    sqlite3.connect(db).close()  # an empty database file: still no tables made
    done = run_cli("entities", "stats", "job.py", cwd=tmp_path)
    assert done.returncode == 2 and "has no entity tables yet" in done.stderr, done.stderr
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == []
