"""Entity resolution: the indexed resolver against a plain O(n) rapidfuzz scan.

    .venv/bin/python bench/entities_bench.py                 # 100,000 aliases, 10,000 queries
    .venv/bin/python bench/entities_bench.py --scan-queries 300   # the scan on 300 of them
    .venv/bin/python bench/entities_bench.py --quick         # 20,000 aliases, 2,000 queries

A labelled set made from a fixed seed with Faker (``backfill.entities.labelled``):
``--people`` canonical people, each stored under its canonical name and
``--aliases-per-person`` variants (100,000 aliases by default), and ``--queries`` new
variants (a tenth of them naming somebody not stored). Each case decides every query
(``match_now``: the decision, nothing recorded) and is scored against the truth: recall
is the share of queries about a stored person linked to that person; precision the share
of links that are right. The scan (the approach the resolver replaces: every alias scored
with rapidfuzz's WRatio, the best one linked at >= 90) takes a tenth of a second per
query; ``--scan-queries N`` runs it on the first N queries only.

Cases: ``sqlite`` (the store in a SQLite file, candidates from the in-memory blocking
index), ``postgres`` (pg_trgm's GIN index on the aliases' words, a name a query),
``postgres-batch`` (the same, ``--batch`` names a query: ``match_many``, the path of
``resolve_many``), ``postgres-memory`` (PostgreSQL store, the in-memory index), ``scan``;
PostgreSQL cases need a server (``--postgres URL``, default the test server) and are
skipped, said so, without one. It prints one Markdown table with
the machine's load beside each figure, and asserts no timing.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from rapidfuzz import fuzz, process

import _machine
from backfill.entities.labelled import LabelledSet, labelled_set
from backfill.entities.match import Method
from backfill.entities.normalise import fold
from backfill.entities.resolver import EntityResolver, EntitySpec

ACCEPTED = (Method.EXTERNAL_ID, Method.EXACT, Method.FUZZY)


@dataclass
class Row:
    case: str
    queries: int
    seconds: float
    recall: float
    precision: float
    load: float
    note: str = ""

    @property
    def rate(self) -> float:
        return self.queries / self.seconds


def _score(pairs: list[tuple[int | None, int | None]]) -> tuple[float, float]:
    """(recall, precision) of (truth, linked) pairs."""
    positives = sum(truth is not None for truth, _ in pairs)
    linked = [(truth, got) for truth, got in pairs if got is not None]
    correct = sum(truth == got for truth, got in linked)
    return correct / max(positives, 1), correct / max(len(linked), 1)


def load(resolver: EntityResolver, data: LabelledSet) -> list[int]:
    people = [
        {"name": p.name, "country": p.country, "birth_year": p.birth_year} for p in data.people
    ]
    ids: list[int] = []
    for at in range(0, len(people), 5_000):
        ids += resolver.add_many(people[at : at + 5_000], "register")
    variants = [
        (ids[truth], name, None) for name, truth in data.aliases if name != data.people[truth].name
    ]
    for at in range(0, len(variants), 5_000):
        resolver.add_aliases(variants[at : at + 5_000], source="sources")
    return ids


def indexed(
    case: str, resolver: EntityResolver, data: LabelledSet, ids: list[int], batch: int = 0
) -> Row:
    """Decide every query, one name at a time (``match_now``) or, with ``batch``, that
    many at once (``match_many``, the path of ``resolve_many``)."""
    resolver.match_now(data.queries[0].name, source="web")  # the index is built here
    load_avg = os.getloadavg()[0]
    started = time.perf_counter()
    if batch:
        matches = []
        for at in range(0, len(data.queries), batch):
            chunk = data.queries[at : at + batch]
            matches += resolver.match_many(
                [{"name": q.name, **q.features} for q in chunk], source="web"
            )
    else:
        matches = [
            resolver.match_now(query.name, source="web", **query.features) for query in data.queries
        ]
    seconds = time.perf_counter() - started
    pairs = [
        (
            None if query.truth is None else ids[query.truth],
            match.entity_id if match.method in ACCEPTED else None,
        )
        for query, match in zip(data.queries, matches, strict=True)
    ]
    recall, precision = _score(pairs)
    return Row(case, len(pairs), seconds, recall, precision, max(load_avg, os.getloadavg()[0]))


def scan(data: LabelledSet, queries: int) -> Row:
    names = [fold(name) for name, _ in data.aliases]
    owners = [truth for _, truth in data.aliases]
    load_avg = os.getloadavg()[0]
    pairs: list[tuple[int | None, int | None]] = []
    started = time.perf_counter()
    for query in data.queries[:queries]:
        best = process.extractOne(fold(query.name), names, scorer=fuzz.WRatio, score_cutoff=90)
        pairs.append((query.truth, owners[best[2]] if best is not None else None))
    seconds = time.perf_counter() - started
    recall, precision = _score(pairs)
    return Row(
        "scan (rapidfuzz WRatio over every alias)", len(pairs), seconds, recall, precision,
        max(load_avg, os.getloadavg()[0]),
    )  # fmt: skip


def postgres_url(given: str | None) -> str | None:
    try:
        import psycopg
    except ImportError:
        return None
    url = given or os.environ.get(
        "BACKFILL_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
    )
    try:
        with psycopg.connect(url, connect_timeout=3, autocommit=True) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error:
        return None
    return url


def run_postgres(
    cases: list[tuple[str, int]], url: str, data: LabelledSet, index: str
) -> list[Row]:
    """Each case (its label, its batch size) on one store loaded once."""
    import psycopg

    schema = f"bf_entities_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in url else "?"
    schema_url = f"{url}{separator}options=-csearch_path%3D{schema}"
    try:
        resolver = EntityResolver(EntitySpec("players", schema_url, index=index))
        if index == "trigram" and not resolver.store.trigram:
            raise SystemExit("pg_trgm is not available on this server")
        ids = load(resolver, data)
        rows = [indexed(case, resolver, data, ids, batch) for case, batch in cases]
        resolver.close()
        return rows
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def table(rows: list[Row], baseline: Row | None) -> list[str]:
    out = [
        "| case | queries | q/s | x scan | recall | precision | load (1 min) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ratio = f"{row.rate / baseline.rate:,.0f}x" if baseline else "-"
        out.append(
            f"| {row.case} | {row.queries:,} | {row.rate:,.0f} | {ratio} | {row.recall:.4f} | "
            f"{row.precision:.4f} | {row.load:.2f} |"
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--people", type=int, default=25_000)
    parser.add_argument("--aliases-per-person", type=int, default=3)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument(
        "--scan-queries", type=int, default=None, help="Queries for the scan (default: all)."
    )
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--postgres", default=None)
    parser.add_argument("--cases", default="sqlite,postgres,postgres-batch,postgres-memory,scan")
    parser.add_argument(
        "--batch", type=int, default=100, help="Names a batch in postgres-batch (default 100)."
    )
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.people, args.queries, args.scan_queries = 5_000, 2_000, 300
    if args.scan_queries is None:
        args.scan_queries = args.queries
    cases = set(args.cases.split(","))
    started = time.perf_counter()
    data = labelled_set(
        args.people, seed=args.seed, aliases_per_person=args.aliases_per_person,
        queries=args.queries,
    )  # fmt: skip
    print(
        f"labelled set: {len(data.people):,} people, {len(data.aliases):,} aliases, "
        f"{len(data.queries):,} queries (seed {args.seed}, made in "
        f"{time.perf_counter() - started:.1f} s)",
        file=sys.stderr,
    )
    rows: list[Row] = []
    baseline = None
    if "scan" in cases:
        baseline = scan(data, args.scan_queries)
        print(f"scan done: {baseline.rate:.1f} q/s", file=sys.stderr)
    if "sqlite" in cases:
        with tempfile.TemporaryDirectory() as tmp:
            resolver = EntityResolver(
                EntitySpec("players", f"sqlite:///{Path(tmp) / 'entities.db'}")
            )
            ids = load(resolver, data)
            rows.append(
                indexed("indexed: SQLite store, in-memory blocking index", resolver, data, ids)
            )
            resolver.close()
        print("sqlite done", file=sys.stderr)
    url = postgres_url(args.postgres)
    trigram = [
        (label, batch)
        for case, label, batch in (
            ("postgres", "indexed: PostgreSQL, pg_trgm GIN on words, a name a query", 0),
            (
                "postgres-batch",
                f"indexed: PostgreSQL, pg_trgm GIN on words, {args.batch} names a query "
                "(resolve_many)",
                args.batch,
            ),
        )
        if case in cases
    ]
    memory = [("indexed: PostgreSQL store, in-memory blocking index", 0)]
    for name, index, labels in (
        ("postgres", "trigram", trigram),
        ("postgres-memory", "memory", memory if "postgres-memory" in cases else []),
    ):
        if not labels:
            continue
        if url is None:
            print(f"{name}: skipped, no PostgreSQL server answers", file=sys.stderr)
            continue
        rows += run_postgres(labels, url, data, index)
        print(f"{name} done", file=sys.stderr)
    if baseline is not None:
        rows.append(baseline)
    lines = [
        "",
        f"{len(data.aliases):,} aliases of {len(data.people):,} people; {len(data.queries):,} "
        f"queries ({args.scan_queries:,} for the scan); seed {args.seed}",
        "",
        *table(rows, baseline),
        "",
        "Machine:",
        *_machine.facts(),
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
