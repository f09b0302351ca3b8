"""`backfill entities review|merge|stats`: the entity kinds a job declares, their review
queue, merges, and figures."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, ParamSpec, TypeVar

import typer
from rich.table import Table

from backfill._optional import require_entities
from backfill.cli._common import Command, JobArg, _Group, app, fail, out, shown
from backfill.errors import BackfillError, ConfigError
from backfill.job import Job, load_job

if TYPE_CHECKING:
    # Imported where used: the entities extra (rapidfuzz, anyascii) is not the core's,
    # and every command of `backfill` loads this module.
    from backfill.entities.review import ReviewQueue
    from backfill.entities.store import MergeResult, Stats

P = ParamSpec("P")
R = TypeVar("R")

entities_app = typer.Typer(
    name="entities",
    cls=_Group,
    no_args_is_help=True,
    help="Entity resolution: review the unsure names, merge entities, figures.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(entities_app, name="entities")

KindArg = Annotated[str, typer.Argument(metavar="KIND", help="Entity kind (players, horses).")]


def _errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Library errors as one line on stderr and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except BackfillError as exc:
            raise fail(str(exc)) from None

    return wrapper


@contextmanager
def _masked(job: Job) -> Iterator[None]:
    """The job's secrets (an entity database's password) masked in any error."""
    try:
        yield
    except BackfillError as exc:
        raise BackfillError(job.masker().mask(str(exc))) from exc


@contextmanager
def _queue(job: Job, kind: str) -> Iterator[ReviewQueue]:
    require_entities()
    from backfill.entities.review import ReviewQueue
    from backfill.entities.store import open_store

    spec = job.entity_kinds.get(kind)
    if spec is None:
        declared = ", ".join(sorted(job.entity_kinds)) or "none"
        raise ConfigError(
            f"job {job.name!r} declares no entity kind {kind!r} (declared: {declared})"
        )
    # The in-memory index: reviewing creates no extension or index on the server; and no
    # tables: the commands read or settle what a run recorded.
    store = open_store(spec.database, index="memory", create=False)
    try:
        yield ReviewQueue(store, kind, spec.references)
    finally:
        store.close()


def _moved(result: MergeResult) -> str:
    rows = ", ".join(f"{n} in {ref}" for ref, n in result.rows.items()) or "no referencing rows"
    return (
        f"merged {result.loser} into {result.winner}: {result.aliases} alias(es), "
        f"{result.reviews} review(s), rows: {rows}"
    )


@entities_app.command("review", cls=Command)
@_errors
def review(
    job_path: JobArg,
    kind: KindArg,
    accept: Annotated[
        int | None,
        typer.Option("--accept", metavar="REVIEW", help="Accept this review's best candidate."),
    ] = None,
    entity: Annotated[
        int | None,
        typer.Option("--entity", metavar="ID", help="With --accept: link to this entity instead."),
    ] = None,
    reject: Annotated[
        int | None,
        typer.Option("--reject", metavar="REVIEW", help="Reject every candidate: a new entity."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The queue as JSON.")] = False,
) -> None:
    """The review queue of KIND: each unsure name, its provisional id and its candidates
    with their scores; or settle one review.

    Accepting merges the provisional entity into the candidate (its aliases and the rows
    of the kind's references follow, in one transaction); rejecting keeps it as a new one.

    [bold]Examples[/]

      backfill entities review jobs/tennis.py players
      backfill entities review jobs/tennis.py players --accept 12
      backfill entities review jobs/tennis.py players --accept 12 --entity 4051
      backfill entities review jobs/tennis.py players --reject 13
    """
    if accept is not None and reject is not None:
        raise ConfigError("give --accept or --reject, not both")
    if entity is not None and accept is None:
        raise ConfigError("--entity goes with --accept REVIEW")
    job = load_job(job_path)
    with _masked(job), _queue(job, kind) as queue:
        if accept is not None:
            out.print(shown(f"review {accept}: " + _moved(queue.accept(accept, entity))))
            return
        if reject is not None:
            queue.reject(reject)
            out.print(shown(f"review {reject}: rejected; its provisional entity is a new one"))
            return
        items = queue.pending()
        if as_json:
            print(
                json.dumps(
                    [
                        {
                            "review": item.id,
                            "name": item.name,
                            "source": item.source,
                            "provisional_id": item.provisional,
                            "score": item.score,
                            "candidates": [
                                {"entity_id": e, "name": n, "score": s}
                                for e, n, s in item.candidates
                            ],
                        }
                        for item in items
                    ],
                    ensure_ascii=False,
                )
            )
            return
        if not items:
            out.print(shown(f"no {kind} to review"))
            return
        grid = Table(title=f"{len(items)} {kind} to review")
        for column in ("review", "name", "source", "provisional id", "candidates (id name score)"):
            grid.add_column(column)
        for item in items:
            candidates = "\n".join(f"{e} {n} {s:.3f}" for e, n, s in item.candidates) or "-"
            grid.add_row(
                str(item.id), shown(item.name), shown(item.source), str(item.provisional),
                shown(candidates),
            )  # fmt: skip
        out.print(grid)


@entities_app.command("merge", cls=Command)
@_errors
def merge(
    job_path: JobArg,
    kind: KindArg,
    winner: Annotated[int, typer.Argument(metavar="KEEP", help="The entity id to keep.")],
    loser: Annotated[int, typer.Argument(metavar="MERGED", help="The entity id merged into it.")],
) -> None:
    """Merge entity MERGED into KEEP: its aliases, pending reviews and the rows of the
    kind's references (job.entities(..., references=[...])) move, in one transaction.

    [bold]Examples[/]

      backfill entities merge jobs/tennis.py players 4051 5177
    """
    job = load_job(job_path)
    with _masked(job), _queue(job, kind) as queue:
        out.print(shown(_moved(queue.merge(winner, loser))))


@entities_app.command("stats", cls=Command)
@_errors
def stats(
    job_path: JobArg,
    kind: Annotated[
        str | None, typer.Argument(metavar="[KIND]", help="One kind (default: every one).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The figures as JSON.")] = False,
) -> None:
    """Per entity kind: entities, provisional ones, merged ones, aliases by how they were
    matched (external id, exact, fuzzy, review, new, manual) and pending reviews.

    [bold]Examples[/]

      backfill entities stats jobs/tennis.py
    """
    job = load_job(job_path)
    kinds = [kind] if kind is not None else sorted(job.entity_kinds)
    if not kinds:
        raise ConfigError(f"job {job.name!r} declares no entity kind (job.entities(...))")
    figures = []
    for name in kinds:
        with _masked(job), _queue(job, name) as queue:
            figures.append(queue.store.stats(name))
    if as_json:
        print(json.dumps([vars_of(f) for f in figures]))
        return
    grid = Table()
    for column in (
        "kind",
        "entities",
        "provisional",
        "merged",
        "aliases",
        "by method",
        "to review",
    ):
        grid.add_column(column)
    for f in figures:
        methods = ", ".join(f"{m} {n:,}" for m, n in f.by_method.items()) or "-"
        grid.add_row(
            f.kind, f"{f.entities:,}", f"{f.provisional:,}", f"{f.merged:,}", f"{f.aliases:,}",
            methods, f"{f.pending_reviews:,}",
        )  # fmt: skip
    out.print(grid)


def vars_of(figures: Stats) -> dict[str, object]:
    return {
        "kind": figures.kind,
        "entities": figures.entities,
        "provisional": figures.provisional,
        "merged": figures.merged,
        "aliases": figures.aliases,
        "by_method": figures.by_method,
        "pending_reviews": figures.pending_reviews,
    }
