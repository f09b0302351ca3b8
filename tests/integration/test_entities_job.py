"""``job.entities`` and ``ctx.entities`` in a real run: stages resolve names while they
load, their records carry the ids, and one resolver serves the whole run."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from backfill import Job, daily
from backfill.entities.run import RunEntities
from backfill.errors import ConfigError
from backfill.ledger import open_ledger
from backfill.sinks import table
from backfill.testing import run_job

# Three days of results, each naming its players as a different site would.
RESULTS = {
    "2024-01-01": [("Novak Djoković", "Carlos Alcaraz", "SRB", "ESP")],
    "2024-01-02": [("DJOKOVIC Novak", "Jannik Sinner", "SRB", "ITA")],
    "2024-01-03": [("Sinner J.", "Alcaraz Carlos", "ITA", "ESP")],
}


def _job(tmp_path: Path) -> Job:
    db = tmp_path / "tennis.db"
    job = Job(
        "tennis",
        partitions=daily("2024-01-01", "2024-01-03"),
        sink=table(f"sqlite:///{db}", "matches", key=["day"]),
    )
    job.entities("players", references=["matches.winner_id", "matches.loser_id"])

    @job.stage(concurrency=1)
    async def matches(ctx, partition):  # type: ignore[no-untyped-def]
        players = ctx.entities("players")
        out = []
        for winner, loser, w_country, l_country in RESULTS[partition.key]:
            out.append(
                {
                    "day": partition.key,
                    "winner_id": await players.resolve(winner, source="site", country=w_country),
                    "loser_id": await players.resolve(loser, source="site", country=l_country),
                }
            )
        return out

    return job


def test_stage_records_carry_the_resolved_ids(tmp_path: Path) -> None:
    """Names spelled three ways resolve to three players, stored beside the table."""
    job = _job(tmp_path)
    result = run_job(job, open_ledger(":memory:"))
    assert result.exit_code == 0, result.message
    with sqlite3.connect(tmp_path / "tennis.db") as conn:
        rows = conn.execute("SELECT day, winner_id, loser_id FROM matches ORDER BY day").fetchall()
        names = dict(conn.execute("SELECT id, name FROM bf_entities").fetchall())
    (_, djokovic, alcaraz), (_, djokovic2, sinner), (_, sinner2, alcaraz2) = rows
    assert djokovic == djokovic2 and sinner == sinner2 and alcaraz == alcaraz2
    assert len({djokovic, alcaraz, sinner}) == 3
    assert names == {djokovic: "Novak Djoković", alcaraz: "Carlos Alcaraz", sinner: "Jannik Sinner"}


def test_one_resolver_per_kind_and_run(tmp_path: Path) -> None:
    """The run's entities client makes one resolver per kind and refuses unknown kinds."""
    job = _job(tmp_path)
    run = RunEntities(job)
    assert run.resolver("players") is run.resolver("players")
    with pytest.raises(ConfigError, match="declares no entity kind 'horses'"):
        run.resolver("horses")


def test_entities_declarations_are_checked(tmp_path: Path) -> None:
    """A kind needs a database, a good name and references; a password is a secret."""
    job = Job("plain", partitions=daily("2024-01-01", "2024-01-01"))
    with pytest.raises(ConfigError, match="needs a database"):
        job.entities("players")
    with pytest.raises(ConfigError, match="must start with a letter"):
        job.entities("bad kind", database="sqlite:///x.db")
    with pytest.raises(ConfigError, match="must name a table and its column"):
        job.entities("players", database="sqlite:///x.db", references=["winner_id"])
    with pytest.raises(ConfigError, match="review <= accept"):
        job.entities("players", database="sqlite:///x.db", accept=0.5, review=0.9)
    spec = job.entities("players", database="postgresql://me:hunter2@db/tennis")
    assert spec.database.endswith("/tennis")
    assert "hunter2" in job.secrets
    assert "hunter2" not in job.masker().mask("postgresql://me:hunter2@db/tennis")
    with pytest.raises(ConfigError, match="twice"):
        job.entities("players", database="sqlite:///y.db")
    other = _job(tmp_path)
    assert other.entity_kinds["players"].database == f"sqlite:///{tmp_path / 'tennis.db'}"


def test_resolve_many_batches_a_partition_and_plain_def_stages_resolve_now(
    tmp_path: Path,
) -> None:
    """A batch resolves like one name at a time; a def stage uses resolve_now."""
    db = tmp_path / "racing.db"
    job = Job(
        "racing",
        partitions=daily("2024-05-01", "2024-05-02"),
        sink=table(f"sqlite:///{db}", "runners", key=["day", "horse_id"]),
    )
    job.entities("horses")
    cards = {
        "2024-05-01": ["Frankel", "Enable", "Sea The Stars"],
        "2024-05-02": ["FRANKEL", "Sea-the-Stars", "Baaeed"],
    }

    @job.stage(concurrency=1)
    async def runners(ctx, partition):  # type: ignore[no-untyped-def]
        ids = await ctx.entities("horses").resolve_many(
            [{"name": n, "country": "GB"} for n in cards[partition.key]], source="card"
        )
        return [{"day": partition.key, "horse_id": i} for i in ids]

    @job.stage(concurrency=1, needs=["runners"])
    def owners(ctx, partition):  # type: ignore[no-untyped-def]
        horses = ctx.entities("horses")
        found = horses.resolve_now("Frankel", source="owners", country="GB")
        return [{"day": partition.key, "horse_id": found.entity_id}]

    result = run_job(job, open_ledger(":memory:"))
    assert result.exit_code == 0, result.message
    with sqlite3.connect(db) as conn:
        by_day = {
            day: sorted(i for d, i in conn.execute("SELECT day, horse_id FROM runners") if d == day)
            for day in cards
        }
        names = dict(conn.execute("SELECT id, name FROM bf_entities").fetchall())
    assert len(names) == 4
    frankel = next(i for i, n in names.items() if n == "Frankel")
    stars = next(i for i, n in names.items() if n == "Sea The Stars")
    assert frankel in by_day["2024-05-02"] and stars in by_day["2024-05-02"]


def test_a_name_without_letters_fails_its_own_partition_only(tmp_path: Path) -> None:
    """Garbage from a source fails that partition (category entity_name), not the run."""
    db = tmp_path / "tennis.db"
    job = Job(
        "garbage",
        partitions=daily("2024-01-01", "2024-01-02"),
        sink=table(f"sqlite:///{db}", "matches", key=["day"]),
    )
    job.entities("players")
    names = {"2024-01-01": "Novak Djokovic", "2024-01-02": "--- ?"}

    @job.stage(concurrency=1)
    async def matches(ctx, partition):  # type: ignore[no-untyped-def]
        pid = await ctx.entities("players").resolve(names[partition.key], source="site")
        return [{"day": partition.key, "player_id": pid}]

    ledger = open_ledger(":memory:")
    result = run_job(job, ledger)
    assert result.exit_code == 1
    assert (result.counts["matches"].done, result.counts["matches"].failed) == (1, 1)
    failed = [e for e in ledger.entries(job.name, "matches") if e.status == "failed"]
    assert failed and failed[0].error_category == "entity_name"
    assert "has no letters" in (failed[0].error_message or "")
