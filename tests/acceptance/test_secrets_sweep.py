"""The secrets sweep: a job's planted secrets, echoed back by a hostile source in every way
it can, appear nowhere the engine shows or stores text, on SQLite and PostgreSQL states."""

from __future__ import annotations

import base64
import json
import re
import secrets
import sqlite3
import subprocess
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx
import psycopg
import pytest

from backfill.ledger import open_ledger
from conftest import backfill_cmd, cli_env, run_cli
from pg_support import fresh_schema

JOB = """
import os

from backfill import FatalError, Job, NextUrl, PermanentError, RetryPolicy, daily, table

API = os.environ["SWEEP_API"]
AUTH, XKEY, TENANT, PARAM = (os.environ[n] for n in ("AUTH", "XKEY", "TENANT", "PARAM"))

job = Job("sweep", partitions=daily("2013-01-01", "2013-01-08"))
job.resource(
    "sweep_api",
    rate="50/s",
    concurrency=4,
    retries=0,
    timeout=10,
    headers={"Authorization": f"Bearer {AUTH}", "X-API-Key": XKEY, "X-Tenant": TENANT},
    params={"api_key": PARAM},
)
rows = table(os.environ["SWEEP_SINK"], "sweep_rows", mode="append")


@job.stage(resource="sweep_api", sink=rows, concurrency=4, retry=RetryPolicy(attempts=2, base=0))
async def pages(ctx, partition):
    day = partition.key
    if ctx.checkpoint:
        ctx.log.info("resuming from %s", ctx.checkpoint)
    if os.environ.get("SWEEP_FATAL") and day == "2013-01-08":
        raise FatalError(f"the source revoked api_key={PARAM} (Bearer {AUTH}, {TENANT})")
    if day == "2013-01-06":
        raise ValueError(
            f"cannot parse {API}/p/{day}/1?api_key={PARAM} sent with Authorization: {AUTH} "
            f"and X-API-Key {XKEY}"
        )
    async for page in ctx.http.paginate(
        f"{API}/p/{day}/1", pagination=NextUrl(next_field="next", data="data"),
        resume_from=ctx.checkpoint,
    ):
        if page.body.get("error"):
            ctx.log.warning("the source says %s", page.body["error"])
            raise PermanentError(page.body["error"], category="SOURCE")
        ctx.log.info("page %s of %s: %s", page.number, day, page.body.get("note"))
        await ctx.write(page.records)
        await ctx.save_checkpoint(page.next)
"""


@dataclass
class Planted:
    """The secrets the job declares; ``state`` and ``sink`` passwords where a URL has one."""

    auth: str = field(default_factory=lambda: "tokAUTH" + secrets.token_hex(8))
    xkey: str = field(default_factory=lambda: "xkeyXAPI" + secrets.token_hex(8))
    tenant: str = field(default_factory=lambda: "tenantCUSTOM" + secrets.token_hex(8))
    param: str = field(default_factory=lambda: "paramKEY" + secrets.token_hex(8))
    passwords: list[str] = field(default_factory=list)

    def all(self) -> list[str]:
        return [self.auth, self.xkey, self.tenant, self.param, *self.passwords]

    def echo(self) -> str:
        """What a hostile source says back: every credential it was sent, bare."""
        return (
            f"denied: key {self.param} token {self.auth} Authorization: Bearer {self.auth} "
            f"xkey {self.xkey} tenant {self.tenant}"
        )


class HostileSource:
    """A loopback API that echoes the credentials it receives: in reason phrases, error
    bodies, next links (hence checkpoints), 429s with Retry-After and 500s.

    Days 1 and 7 page through an echoing next link (7 then fails for good, keeping its
    checkpoint), 2 likewise until ``fixed``, 3 answers 429 once, 4 a 404, 5 an error in
    a 200, 6 fails in the stage itself, 8 answers 500.
    """

    def __init__(self, planted: Planted) -> None:
        self.planted = planted
        self.fixed = False
        self.paths: list[str] = []
        self.hits: dict[str, int] = {}
        self.lock = threading.Lock()
        source = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                source.answer(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HostileSource:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def answer(self, request: BaseHTTPRequestHandler) -> None:
        p = self.planted
        parts = urlsplit(request.path)
        with self.lock:
            self.paths.append(request.path)
            self.hits[parts.path] = self.hits.get(parts.path, 0) + 1
            hits = self.hits[parts.path]
        match = re.fullmatch(r"/p/2013-01-0(\d)/(\d)", parts.path)
        if match is None:
            return self.send(request, 404, {"error": "no such page"})
        day, page = int(match.group(1)), int(match.group(2))
        rows = [{"day": day, "page": page, "n": i} for i in range(3)]
        echoed_next = f"/p/2013-01-0{day}/2?api_key={p.param}&echo={p.tenant}&t={p.auth}&x={p.xkey}"
        if day in (1, 2, 7) and page == 1:
            return self.send(request, 200, {"data": rows, "next": echoed_next, "note": p.echo()})
        if (day == 2 and not self.fixed) or day == 7:
            return self.send(request, 500, {"error": p.echo()}, reason=f"Broken {p.echo()}")
        if day == 3 and hits == 1:
            return self.send(
                request, 429, {"error": p.echo()}, reason=f"Slow {p.echo()}", retry_after="1"
            )
        if day == 4:
            return self.send(request, 404, {"error": p.echo()}, reason=f"Gone {p.echo()}")
        if day == 5:
            return self.send(request, 200, {"data": [], "error": p.echo()})
        if day == 8:
            return self.send(request, 500, {"error": p.echo()}, reason=f"Down {p.echo()}")
        return self.send(request, 200, {"data": rows, "next": None, "note": p.echo()})

    @staticmethod
    def send(
        request: BaseHTTPRequestHandler,
        status: int,
        body: object,
        *,
        reason: str | None = None,
        retry_after: str | None = None,
    ) -> None:
        data = json.dumps(body).encode()
        request.send_response(status, reason)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        if retry_after is not None:
            request.send_header("Retry-After", retry_after)
        request.end_headers()
        request.wfile.write(data)


def _with_password(url: str, planted: Planted) -> str:
    """``url`` with a password in its userinfo: its own, else a planted one (the test
    server trusts loopback, so any password is accepted)."""
    parts = urlsplit(url)
    if parts.password:
        planted.passwords.append(parts.password)
        return url
    password = "pgPASS" + secrets.token_hex(8)
    planted.passwords.append(password)
    user = parts.username or "postgres"
    netloc = f"{user}:{password}@{parts.hostname}:{parts.port or 5432}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _dump_sqlite(path: Path) -> str:
    """Every column of every row of every table of a SQLite file."""
    with sqlite3.connect(path) as conn:
        tables = [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return "\n".join(
            f"{t}: {row!r}" for t in tables for row in conn.execute(f'SELECT * FROM "{t}"')
        )


def _dump_postgres(url: str) -> str:
    """Every column of every row of every table of the URL's schema (its search_path)."""
    with psycopg.connect(url) as conn:
        tables = [
            n
            for (n,) in conn.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema()"
            )
        ]
        assert any(t.startswith("backfill_") for t in tables), tables
        return "\n".join(
            f"{t}: {row!r}" for t in tables for row in conn.execute(f'SELECT * FROM "{t}"')
        )


def _dashboard(workdir: Path, state: str, env: dict[str, str]) -> dict[str, str]:
    """The dashboard's page, snapshot and /metrics, from `backfill serve` on a free port."""
    proc = subprocess.Popen(
        [*backfill_cmd(), "serve", "job.py", "--state", state, "--port", "0"],
        cwd=workdir,
        env=cli_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert match is not None, line
        base = match.group(0)
        found = {
            f"GET {path}": httpx.get(base + path, timeout=30).text
            for path in ("", "api/snapshot", "metrics")
        }
        assert '"failures"' in found["GET api/snapshot"]
        assert "backfill_partitions" in found["GET metrics"]
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    found["serve stdout"] = line + out
    found["serve stderr"] = err
    return found


def _sweep(workdir: Path, state: str, sink: str, planted: Planted) -> dict[str, str]:
    """Run the job against the hostile source (fail, resume, stop on a fatal error), then
    read every output; return each text by where it came from."""
    texts: dict[str, str] = {}
    (workdir / "job.py").write_text(textwrap.dedent(JOB))
    with HostileSource(planted) as source:
        env = {
            "SWEEP_API": source.url,
            "SWEEP_SINK": sink,
            "AUTH": planted.auth,
            "XKEY": planted.xkey,
            "TENANT": planted.tenant,
            "PARAM": planted.param,
        }
        common = ("--state", state, "--log-dir", "logs", "-vv")

        def cli(name: str, *args: str, extra: dict[str, str] | None = None) -> int:
            result = run_cli(*args, cwd=workdir, env={**env, **(extra or {})}, timeout=180)
            texts[f"{name} stdout"] = result.stdout
            texts[f"{name} stderr"] = result.stderr
            return result.returncode

        assert cli("run", "run", "job.py", "--progress", "plain", *common) == 1, texts
        source.fixed = True
        assert cli("retry", "retry", "job.py", "--failed", "--progress", "plain", *common) == 1
        fatal = cli(
            "fatal", "retry", "job.py", "--failed", "--partition", "2013-01-08",
            "--progress", "plain", *common, extra={"SWEEP_FATAL": "1"},
        )  # fmt: skip
        assert fatal == 2, texts["fatal stderr"]
        # The checkpointed partition resumed at its second page, with the real key.
        resumed = [p for p in source.paths if p.startswith("/p/2013-01-02/2")]
        assert resumed, source.paths
        for path in resumed:
            assert parse_qs(urlsplit(path).query)["api_key"] == [planted.param], path
        assert not any("backfill-secret" in p for p in source.paths)

    for name, args in {
        "status": ["status", "job.py"],
        "runs": ["runs", "job.py"],
        "plan": ["plan", "job.py"],
        "coverage": ["coverage", "job.py"],
        "coverage --gaps": ["coverage", "job.py", "--gaps"],
        "coverage json": ["coverage", "job.py", "--format", "json"],
        "coverage html": ["coverage", "job.py", "--format", "html", "-o", "coverage.html"],
    }.items():
        assert cli(name, *args, "--state", state) == 0, texts[f"{name} stderr"]
    assert "SOURCE" in texts["status stdout"]
    texts["coverage.html"] = (workdir / "coverage.html").read_text()
    log_files = sorted((workdir / "logs").glob("*.jsonl"))
    assert len(log_files) == 3
    for path in log_files:
        texts[f"log file {path.name}"] = path.read_text()
    assert "the source says" in "".join(texts[f"log file {p.name}"] for p in log_files)
    texts.update(_dashboard(workdir, state, env))
    return texts


def _leaks(texts: dict[str, str], planted: Planted) -> list[str]:
    """Where each planted secret (or its base64 form) was found."""
    found = []
    for secret in planted.all():
        forms = {secret, base64.b64encode(secret.encode()).decode().rstrip("=")}
        found += [
            f"{secret} in {where}" for where, text in texts.items() for f in forms if f in text
        ]
    return found


def test_no_planted_secret_appears_anywhere_with_a_sqlite_state(tmp_path: Path) -> None:
    """SQLite state: no planted secret in any output, log file, ledger or sink table, raw
    state file bytes, or the dashboard's page, snapshot and /metrics."""
    planted = Planted()
    state = tmp_path / "state.db"
    texts = _sweep(tmp_path, f"sqlite:///{state}", str(tmp_path / "rows.db"), planted)
    texts["ledger tables"] = _dump_sqlite(state)
    texts["sink tables"] = _dump_sqlite(tmp_path / "rows.db")
    for path in tmp_path.glob("state.db*"):
        texts[f"raw {path.name}"] = path.read_bytes().decode("latin-1")
    leaks = _leaks(texts, planted)
    assert not leaks, "\n".join(leaks)
    # Echoed secrets were sealed, not dropped (the resource's own params never reach a
    # saved next link: the echoed header values do).
    for tables in (texts["ledger tables"], texts["sink tables"]):
        assert "~backfill-secret:sweep_api." in tables


@pytest.fixture
def pg_schema() -> Iterator[str]:
    with fresh_schema() as url:
        yield url


def test_no_planted_secret_appears_anywhere_with_a_postgres_state(
    tmp_path: Path, pg_schema: str
) -> None:
    """PostgreSQL state and sink, each URL with a password: no planted secret in any
    output, log file, table of the schema (ledger and sink), or the dashboard."""
    planted = Planted()
    state = _with_password(pg_schema, planted)
    sink = _with_password(pg_schema, planted)
    texts = _sweep(tmp_path, state, sink, planted)
    texts["schema tables"] = _dump_postgres(pg_schema)
    leaks = _leaks(texts, planted)
    assert not leaks, "\n".join(leaks)
    assert "~backfill-secret:sweep_api." in texts["schema tables"]


OLD_JOB = """
import os

from backfill import Job, PermanentError, RetryPolicy, daily

job = Job("older", partitions=daily("2013-01-01", "2013-01-03"))
if os.environ.get("DECLARED"):
    job.resource("api", rate="1/s", headers={"X-Tenant": "tenant-secret-4711"})


@job.stage(retry=RetryPolicy(attempts=1))
def fetch(ctx, partition):
    if partition.key == "2013-01-02":
        raise PermanentError("the source echoed tenant-secret-4711", category="ECHO")
    return []
"""


def test_messages_stored_in_clear_are_masked_wherever_they_are_shown(tmp_path: Path) -> None:
    """A failure recorded before its secret was declared (or by an older version) is
    masked in status, coverage (text, JSON, HTML), and the state URL's password in runs."""
    (tmp_path / "job.py").write_text(textwrap.dedent(OLD_JOB))
    assert run_cli("run", "job.py", "--progress", "none", cwd=tmp_path).returncode == 1
    with sqlite3.connect(tmp_path / ".backfill" / "state.db") as conn:
        stored = conn.execute("SELECT error_message FROM backfill_partitions").fetchall()
    assert ("the source echoed tenant-secret-4711",) in stored
    declared = {"DECLARED": "1"}
    shown = {
        " ".join(args): run_cli(*args, cwd=tmp_path, env=declared)
        for args in (
            ("status", "job.py"),
            ("coverage", "job.py", "--gaps"),
            ("coverage", "job.py", "--format", "json"),
            ("coverage", "job.py", "--format", "html"),
        )
    }
    for args, result in shown.items():
        assert result.returncode == 0, (args, result.stderr)
        assert "tenant-secret-4711" not in result.stdout + result.stderr, args
        assert "the source echoed ***" in result.stdout, args


def test_runs_never_shows_the_state_password(tmp_path: Path, pg_schema: str) -> None:
    """`backfill runs` on a state without runs names the state URL, password masked."""
    (tmp_path / "job.py").write_text(textwrap.dedent(OLD_JOB))
    planted = Planted()
    state = _with_password(pg_schema, planted)
    open_ledger(state).close()  # a ledger, with no runs of this job
    result = run_cli("runs", "job.py", "--state", state, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no runs of job older recorded in postgresql://" in result.stdout
    assert _leaks({"stdout": result.stdout, "stderr": result.stderr}, planted) == []
